"""`clipzs sort`: images into DEST/<label>/, never overwriting, with a manifest that undoes it."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clipzs import sorting
from clipzs.cli import app
from clipzs.errors import EXIT_OK, EXIT_SKIPPED, EXIT_USAGE
from clipzs.sorting import Step, apply, folder_name
from tests.conftest import ModelFiles
from tests.tinyclip.shapes import draw

SHAPES = ["red circle", "blue square", "green triangle"]


def photo_tree(root: Path) -> dict[Path, str]:
    """Drawn shapes in two sub-folders whose file names clash (a/0.png and b/0.png)."""
    rng = np.random.default_rng(3)
    truth = {}
    for sub in ("a", "b"):
        (root / sub).mkdir(parents=True)
        for i, label in enumerate(SHAPES):
            path = root / sub / f"{i}.png"
            draw(label, rng).save(path)
            truth[path] = label
    return truth


def sort(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["sort", *args])
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout, result.stderr


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.suffix == ".png"}


def test_copy_sorts_by_label_and_never_overwrites(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    truth = photo_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    (dest / "red circle").mkdir(parents=True)
    (dest / "red circle" / "0.png").write_bytes(b"already here")
    code, stdout, stderr = sort(str(tmp_path / "src"), str(dest), "-l", ",".join(SHAPES), *tiny_clip.args)
    assert code == EXIT_OK and "sorted (copy) 6 of 6" in stderr
    steps = [json.loads(line) for line in stdout.splitlines()]
    assert len(steps) == 6 and files(tmp_path / "src") == {
        "a/0.png",
        "a/1.png",
        "a/2.png",
        "b/0.png",
        "b/1.png",
        "b/2.png",
    }
    assert (dest / "red circle" / "0.png").read_bytes() == b"already here"  # not overwritten
    assert {"red circle/0-1.png", "red circle/0-2.png"} <= files(dest)  # two clashes, two suffixes
    correct = sum(Path(s["destination"]).parent.name == truth[Path(s["source"])] for s in steps)
    assert correct == 6
    manifest = [json.loads(line) for line in (dest / "clipzs-manifest.jsonl").read_text().splitlines()]
    assert manifest == steps


def test_dry_run_touches_nothing(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    photo_tree(tmp_path / "src")
    code, stdout, stderr = sort(
        str(tmp_path / "src"), str(tmp_path / "dest"), "-l", ",".join(SHAPES), "--dry-run", *tiny_clip.args
    )
    assert code == EXIT_OK and len(stdout.splitlines()) == 6 and "would sort 6" in stderr
    assert not (tmp_path / "dest").exists()
    code, again, stderr = sort(
        str(tmp_path / "src"), str(tmp_path / "dest"), "-l", ",".join(SHAPES), "--dry-run", "-q", *tiny_clip.args
    )
    assert code == EXIT_OK and again == stdout and stderr == ""  # -q: the plan, no summary


def test_move_then_undo_restores_everything(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    photo_tree(tmp_path / "src")
    before = {p: p.read_bytes() for p in (tmp_path / "src").rglob("*.png")}
    dest = tmp_path / "dest"
    code, _, _ = sort(str(tmp_path / "src"), str(dest), "-l", ",".join(SHAPES), "--mode", "move", *tiny_clip.args)
    assert code == EXIT_OK and files(tmp_path / "src") == set() and len(files(dest)) == 6
    code, _, stderr = sort("--undo", str(dest / "clipzs-manifest.jsonl"))
    assert code == EXIT_OK and "6 restored" in stderr
    assert {p: p.read_bytes() for p in (tmp_path / "src").rglob("*.png")} == before and files(dest) == set()


def test_odd_file_names_are_sorted_and_undone(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    """A name that is not UTF-8, and one holding U+2028 (a line separator to str.splitlines, not to JSON)."""
    import os

    photo_tree(tmp_path / "src")
    first, second = sorted((tmp_path / "src").rglob("*.png"))[:2]
    first.rename(first.with_name(os.fsdecode(b"bad\xff.png")))
    second.rename(second.with_name("line\u2028separator.png"))
    before = {p: p.read_bytes() for p in (tmp_path / "src").rglob("*.png")}
    dest = tmp_path / "dest"
    code, stdout, stderr = sort(
        str(tmp_path / "src"), str(dest), "-l", ",".join(SHAPES), "--mode", "move", *tiny_clip.args
    )
    assert code == EXIT_OK, stderr
    steps = [json.loads(line) for line in stdout.split("\n") if line]  # one line a step, valid JSON
    assert len(steps) == 6 and {os.fsdecode(b"bad\xff.png"), "line\u2028separator.png"} <= {
        Path(step["source"]).name for step in steps
    }
    code, _, stderr = sort("--undo", str(dest / "clipzs-manifest.jsonl"))
    assert code == EXIT_OK and "6 restored" in stderr, stderr
    assert {p: p.read_bytes() for p in (tmp_path / "src").rglob("*.png")} == before


def test_min_score_sends_doubtful_images_to_unsorted(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    photo_tree(tmp_path / "src")
    labels = "red circle,red square"  # two labels for three shapes: scores spread out (0.93 to 0.998)
    args = [str(tmp_path / "src"), str(tmp_path / "dest"), "-l", labels, *tiny_clip.args]
    code, plan, _ = sort(*args, "--dry-run")
    scores = sorted(json.loads(line)["score"] for line in plan.splitlines())
    threshold = (scores[2] + scores[3]) / 2  # three above, three below
    assert scores[2] < threshold < scores[3]
    code, stdout, _ = sort(*args, "--min-score", str(threshold), "--mode", "link")
    steps = [json.loads(line) for line in stdout.splitlines()]
    assert code == EXIT_OK and len(steps) == 6
    for step in steps:
        expected = folder_name(step["label"]) if step["score"] >= threshold else "unsorted"
        assert Path(step["destination"]).parent.name == expected, step
        assert Path(step["destination"]).is_symlink()
    assert sum(Path(step["destination"]).parent.name == "unsorted" for step in steps) == 3


def test_undo_of_an_interrupted_sort(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    """A sort killed after writing a step but before doing it, and mid-way through its next manifest line."""
    photo_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    sort(str(tmp_path / "src"), str(dest), "-l", ",".join(SHAPES), "--mode", "move", *tiny_clip.args)
    manifest = dest / "clipzs-manifest.jsonl"
    never_done = {
        "source": str(tmp_path / "x.png"),
        "destination": str(dest / "red circle" / "x.png"),
        "label": "red circle",
        "score": 0.9,
        "mode": "move",
    }
    with open(manifest, "a") as f:
        f.write(json.dumps(never_done) + "\n" + '{"source": "/half/writ')
    code, _, stderr = sort("--undo", str(manifest))
    assert code == EXIT_OK and "6 restored" in stderr and "1 not there" in stderr
    assert len(files(tmp_path / "src")) == 6


def test_sort_usage_errors(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    assert sort(str(tmp_path))[0] == EXIT_USAGE  # no DEST
    code, _, stderr = sort(str(tmp_path), str(tmp_path / "d"), "-l", "a,b", "--mode", "teleport")
    assert code == EXIT_USAGE and "unknown mode" in stderr
    assert sort("--undo", str(tmp_path / "missing.jsonl"))[0] == EXIT_USAGE
    for score in ("nan", "2", "-0.5"):
        code, _, stderr = sort(str(tmp_path), str(tmp_path / "d"), "-l", "a,b", "--min-score", score)
        assert code == EXIT_USAGE and "--min-score must be a number from 0 to 1" in stderr
    photo_tree(tmp_path / "src")
    (tmp_path / "file").write_text("x")
    code, _, stderr = sort(str(tmp_path / "src"), str(tmp_path / "file"), "-l", "a,b", *tiny_clip.args)
    assert code == EXIT_USAGE and "is a file: DEST is the folder" in stderr
    args = ["-l", "cat,Unsorted", "--min-score", "0.5", *tiny_clip.args]
    code, _, stderr = sort(str(tmp_path / "src"), str(tmp_path / "d"), *args)
    assert code == EXIT_USAGE and "would share the folder" in stderr and not (tmp_path / "d").exists()
    assert folder_name("cats/dogs: a?") == "cats_dogs_ a_"


def test_undo_twice_and_folders_left_tidy(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    photo_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    sort(str(tmp_path / "src"), str(dest), "-l", ",".join(SHAPES), "--mode", "move", *tiny_clip.args)
    assert sort("--undo", str(dest / "clipzs-manifest.jsonl"))[0] == EXIT_OK
    assert sorted(p.name for p in dest.iterdir()) == ["clipzs-manifest.jsonl"]  # empty label folders removed
    code, _, stderr = sort("--undo", str(dest / "clipzs-manifest.jsonl"))
    assert code == EXIT_OK and "6 already undone" in stderr and stderr.count("\n") == 1


def test_sort_reads_paths_from_stdin(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    truth = photo_tree(tmp_path / "src")
    listing = "\n".join(str(p) for p in truth)
    result = CliRunner().invoke(
        app, ["sort", "-", str(tmp_path / "dest"), "-l", ",".join(SHAPES), "--dry-run", *tiny_clip.args], input=listing
    )
    assert result.exit_code == EXIT_OK, result.output
    steps = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(step["source"] for step in steps) == sorted(map(str, truth))


def test_a_destination_inside_the_source_is_not_sorted_again(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    photo_tree(tmp_path / "src")
    dest = tmp_path / "src" / "sorted"
    args = ["-l", ",".join(SHAPES), *tiny_clip.args]
    for _ in range(2):
        code, _, stderr = sort(str(tmp_path / "src"), str(dest), "--mode", "link", *args)
        assert code == EXIT_OK and "sorted (link) 6 of 6" in stderr, stderr  # not the links the first run made
    code, _, stderr = sort(str(tmp_path / "src"), str(tmp_path / "src"), *args)
    assert code == EXIT_USAGE and "is the folder being sorted" in stderr


def test_manifest_elsewhere_records_every_sort_into_it_and_undoes_them(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    """--manifest FILE (in a folder not made yet): each sort appends its steps there, not to DEST; a dry run
    writes nothing; --undo FILE puts back the images of every sort it records."""
    photo_tree(tmp_path / "src")
    (tmp_path / "later").mkdir()
    for i, shape in enumerate(SHAPES):  # a second batch, sorted later with the same manifest
        draw(shape, np.random.default_rng(10 + i)).save(tmp_path / "later" / f"{i}.png")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.png")}
    dest, manifest = tmp_path / "dest", tmp_path / "logs" / "sort.jsonl"
    args = ["-l", ",".join(SHAPES), "--mode", "move", "--manifest", str(manifest), *tiny_clip.args]
    code, first, stderr = sort(str(tmp_path / "src"), str(dest), *args)
    assert code == EXIT_OK and "sorted (move) 6 of 6" in stderr, stderr
    assert manifest.read_text() == first and len(first.splitlines()) == 6
    assert not (dest / "clipzs-manifest.jsonl").exists() and len(files(dest)) == 6

    code, plan, _ = sort(str(tmp_path / "later"), str(dest), *args, "--dry-run")
    assert code == EXIT_OK and len(plan.splitlines()) == 3 and manifest.read_text() == first  # touched nothing
    code, second, _ = sort(str(tmp_path / "later"), str(dest), *args)
    assert code == EXIT_OK and second == plan and manifest.read_text() == first + second  # appended, not replaced
    assert files(tmp_path / "src") == files(tmp_path / "later") == set() and len(files(dest)) == 9

    code, _, stderr = sort("--undo", str(manifest))
    assert code == EXIT_OK and "9 restored" in stderr, stderr
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.png")} == before and files(dest) == set()


def test_a_manifest_that_is_not_one_is_refused_and_left_as_it_was(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    """A slip of --manifest onto a file of the user's (a note, one of the images): the steps appended to it
    would change it, and --undo could not read them back. Refused before anything is sorted."""
    photo_tree(tmp_path / "src")
    notes, todo, draft = tmp_path / "notes.txt", tmp_path / "todo.txt", tmp_path / "draft.json"
    notes.write_text("my notes\n")
    todo.write_text("buy milk")  # no line end, as a sort killed mid-line leaves: still no step of one
    draft.write_text('{"milk": ')
    image = tmp_path / "src" / "a" / "1.png"
    args = [str(tmp_path / "src"), str(tmp_path / "dest"), "-l", ",".join(SHAPES), *tiny_clip.args]
    for wrong in (notes, todo, draft, image):
        before = wrong.read_bytes()
        code, stdout, stderr = sort(*args, "--manifest", str(wrong))
        assert code == EXIT_USAGE and stdout == "", stderr
        assert f"{wrong}" in stderr and "give --manifest a new file, or the manifest of an earlier sort" in stderr
        assert wrong.read_bytes() == before and not (tmp_path / "dest").exists()


def test_a_sort_after_an_interrupted_one_can_be_undone(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    """The manifest of a sort killed mid-way through a line, carried on by another sort into it: the new steps
    start a line of their own, and --undo reverses both sorts."""
    photo_tree(tmp_path / "src")
    before = {p: p.read_bytes() for p in (tmp_path / "src").rglob("*.png")}
    manifest = tmp_path / "sort.jsonl"
    args = [str(tmp_path / "dest"), "-l", ",".join(SHAPES), "--mode", "move", "--manifest", str(manifest)]
    assert sort(str(tmp_path / "src" / "a"), *args, *tiny_clip.args)[0] == EXIT_OK
    with open(manifest, "a") as f:
        f.write('{"source": "/half/writ')  # killed here
    code, stdout, _ = sort(str(tmp_path / "src" / "b"), *args, *tiny_clip.args)
    assert code == EXIT_OK and manifest.read_text().endswith(stdout) and len(manifest.read_text().splitlines()) == 6
    code, _, stderr = sort("--undo", str(manifest))
    assert code == EXIT_OK and "6 restored" in stderr, stderr
    assert {p: p.read_bytes() for p in (tmp_path / "src").rglob("*.png")} == before


def test_a_manifest_is_readied_for_more_steps_without_losing_one(tmp_path: Path) -> None:
    """A last line without its line end: a whole step (an editor dropped the line end) is kept, and ended so the
    next step starts a line of its own; one cut short by a killed sort is dropped."""
    from clipzs.sorting import Step, prepare_manifest, read_manifest, step_json

    done, next_one = (Step(f"/src/{i}.png", f"/dest/a/{i}.png", "a", 0.9, "copy") for i in range(2))
    manifest = tmp_path / "sort.jsonl"
    for tail, kept in ((step_json(done), [done]), (step_json(done)[:30], [])):
        manifest.write_text(step_json(done) + "\n" + tail)
        prepare_manifest(manifest)
        with open(manifest, "a") as f:
            f.write(step_json(next_one) + "\n")
        assert read_manifest(manifest) == [done, *kept, next_one]


def test_undo_removes_only_what_is_still_a_copy_or_a_link(tmp_path: Path) -> None:
    """A copy whose source is gone is the only one left, a copy edited since is the user's work, a link replaced
    by a file is a file: undo leaves each, saying why, and removes the copy and the link it can."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    modes = {"gone": "copy", "edited": "copy", "same": "copy", "link": "link", "replaced": "link"}
    for name in modes:
        (src / f"{name}.png").write_bytes(f"image {name}".encode())
    steps = [Step(str(src / f"{n}.png"), str(dest / m / f"{n}.png"), m, 0.9, m) for n, m in modes.items()]
    manifest = dest / "clipzs-manifest.jsonl"
    list(apply(steps, manifest))
    (src / "gone.png").unlink()
    (dest / "copy" / "edited.png").write_bytes(b"image edited, cropped")
    (dest / "link" / "replaced.png").unlink()
    (dest / "link" / "replaced.png").write_bytes(b"a real file now")
    code, _, stderr = sort("--undo", str(manifest))
    assert code == EXIT_OK and "2 removed" in stderr, stderr
    assert f"{dest / 'copy' / 'gone.png'}: left: the source is gone, this copy is the only one" in stderr
    assert f"{dest / 'copy' / 'edited.png'}: left: it differs from its source" in stderr
    assert f"{dest / 'link' / 'replaced.png'}: left: it is not a link now" in stderr
    assert files(dest) == {"copy/gone.png", "copy/edited.png", "link/replaced.png"}
    assert (dest / "copy" / "gone.png").read_bytes() == b"image gone"


def test_a_sort_from_relative_paths_is_undone_from_another_folder(
    tiny_clip: ModelFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest holds absolute paths (as given, not resolved), not ones relative to where the sort ran."""
    photo_tree(tmp_path / "src")
    before = {p: p.read_bytes() for p in (tmp_path / "src").rglob("*.png")}
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = sort("src", "dest", "-l", ",".join(SHAPES), "--mode", "move", *tiny_clip.args)
    steps = [json.loads(line) for line in stdout.splitlines()]
    assert code == EXIT_OK and len(steps) == 6
    assert all(Path(s["source"]).is_relative_to(tmp_path / "src") for s in steps)
    assert all(Path(s["destination"]).is_relative_to(tmp_path / "dest") for s in steps)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, _, stderr = sort("--undo", str(tmp_path / "dest" / "clipzs-manifest.jsonl"))
    assert code == EXIT_OK and "6 restored" in stderr, stderr
    assert {p: p.read_bytes() for p in (tmp_path / "src").rglob("*.png")} == before


@pytest.mark.parametrize("mode", ["copy", "move"])
def test_an_interrupted_copy_leaves_no_part_of_a_file(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during a copy, or during a move across filesystems (a copy, then the source removed): nothing at
    the destination's name, which undo would keep and a later sort would work around, and no temporary left."""
    source, dest = tmp_path / "src" / "0.png", tmp_path / "dest"
    source.parent.mkdir()
    source.write_bytes(b"x" * 100_000)

    def another_filesystem(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def part_then_ctrl_c(src: object, dst: str, **kwargs: object) -> None:
        Path(dst).write_bytes(b"x" * 1000)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "rename", another_filesystem)
    monkeypatch.setattr(sorting.shutil, "copyfile", part_then_ctrl_c)  # the copy that copy2 makes
    step = Step(str(source), str(dest / "a" / "0.png"), "a", 0.9, mode)
    with pytest.raises(KeyboardInterrupt):
        list(apply([step], dest / "clipzs-manifest.jsonl"))
    assert sorted(p.name for p in dest.rglob("*")) == ["a", "clipzs-manifest.jsonl"]  # no 0.png, no temporary
    assert source.read_bytes() == b"x" * 100_000

    monkeypatch.undo()  # no interruption now: still across filesystems for a move
    monkeypatch.setattr(os, "rename", another_filesystem)
    assert list(apply([step], tmp_path / "second.jsonl")) == [step]
    assert (dest / "a" / "0.png").read_bytes() == b"x" * 100_000 and source.exists() == (mode == "copy")
    assert sorted(p.name for p in (dest / "a").iterdir()) == ["0.png"]


@pytest.mark.parametrize("mode", ["copy", "move"])
def test_an_image_listed_twice_is_sorted_once(tiny_clip: ModelFiles, tmp_path: Path, mode: str) -> None:
    """A move of it again would find it gone (and stop the sort half-way); a copy of it again is a duplicate."""
    truth = photo_tree(tmp_path / "src")
    first = next(iter(truth))
    listing = [str(p) for p in truth] + [str(first), str(first.parent / ".." / first.parent.name / first.name)]
    result = CliRunner().invoke(
        app,
        ["sort", "-", str(tmp_path / "dest"), "-l", ",".join(SHAPES), "--mode", mode, *tiny_clip.args],
        input="\n".join(listing),
    )
    assert result.exit_code == EXIT_OK and f"sorted ({mode}) 6 of 6" in result.stderr, result.output
    assert len(files(tmp_path / "dest")) == 6
    assert len((tmp_path / "dest" / "clipzs-manifest.jsonl").read_text().splitlines()) == 6


def test_a_step_that_fails_is_skipped_and_left_out_of_the_manifest(
    tiny_clip: ModelFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image deleted after it was classified: reported as skipped, the others still sorted, and the manifest
    records only the steps that happened, so undo restores them all and reports nothing missing."""
    photo_tree(tmp_path / "src")
    gone = tmp_path / "src" / "a" / "1.png"
    planned = sorting.plan

    def deleted_meanwhile(*args: object, **kwargs: object) -> object:
        for step in planned(*args, **kwargs):  # type: ignore[arg-type]
            if step.source == str(gone):
                gone.unlink()
            yield step

    monkeypatch.setattr(sorting, "plan", deleted_meanwhile)
    dest = tmp_path / "dest"
    code, stdout, stderr = sort(
        str(tmp_path / "src"), str(dest), "-l", ",".join(SHAPES), "--mode", "move", *tiny_clip.args
    )
    assert code == EXIT_SKIPPED and f"skipped {gone}: No such file or directory" in stderr, stderr
    assert "sorted (move) 5 of 6" in stderr and len(files(dest)) == 5
    assert (dest / "clipzs-manifest.jsonl").read_text() == stdout and len(stdout.splitlines()) == 5
    code, _, stderr = sort("--undo", str(dest / "clipzs-manifest.jsonl"))
    assert code == EXIT_OK and stderr == "clipzs: undo: 5 restored\n", stderr
    assert len(files(tmp_path / "src")) == 5


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("red/circle,red_circle", "labels 'red/circle' and 'red_circle' would share the folder 'red_circle'"),
        ("cat,dog,cat.", "labels 'cat' and 'cat.' would share the folder 'cat'"),
        ("Cat,cat", "labels 'Cat' and 'cat' would share a folder on a disk that ignores case ('Cat', 'cat')"),
    ],
)
def test_labels_that_would_share_a_folder_are_refused(
    tiny_clip: ModelFiles, tmp_path: Path, labels: str, message: str
) -> None:
    """Their images would be merged into one folder, which of them had which label lost. Refused before the
    model loads (a missing checkpoint is not reached), and before anything is written."""
    photo_tree(tmp_path / "src")
    args = ["-l", labels, "--model-config", str(tiny_clip.config), "--pretrained", str(tmp_path / "missing.pt")]
    code, stdout, stderr = sort(str(tmp_path / "src"), str(tmp_path / "dest"), *args)
    assert code == EXIT_USAGE and stdout == "" and message in stderr and "rename one" in stderr, stderr
    assert not (tmp_path / "dest").exists()
