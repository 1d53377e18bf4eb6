"""--resume and the files it carries on: it never harms a file that is not clipzs output, it drops only a line
cut short by a killed run, and file names whose bytes are not UTF-8 are written, and resumed, in every format."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from clipzs.cli import app
from clipzs.errors import EXIT_OK, EXIT_USAGE
from clipzs.output import ParquetWriter
from clipzs.prediction import Prediction
from tests.conftest import ModelFiles, jsonl

BAD_NAME = os.fsdecode(b"bad\xff.jpg")
"""A file name that is not UTF-8: Python holds its 0xff byte as the lone surrogate '\\udcff'."""


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def folder(photos: list[Path], tmp_path: Path) -> Path:
    """Four photos, one of them under a name that is not UTF-8."""
    images = tmp_path / "images"
    images.mkdir()
    for name, photo in zip(["a.jpg", BAD_NAME, "c.jpg", "d.jpg"], photos, strict=False):
        (images / name).write_bytes(photo.read_bytes())
    return images


def classify(folder: Path, out: Path, model: ModelFiles, *more: str) -> tuple[int, str, str]:
    return run("classify", str(folder), "-l", "cat,dog", "-o", str(out), *model.args, *more)


def as_written(path: str, suffix: str) -> str:
    """A path as an output holds it: in CSV and Parquet, an undecodable byte (a lone surrogate) as its escape."""
    return path if suffix == ".jsonl" else path.encode("utf-8", "backslashreplace").decode("utf-8")


def paths_in(out: Path) -> list[str]:
    """The paths a JSON Lines or CSV output holds, read as a user would (strict UTF-8)."""
    text = out.read_bytes().decode("utf-8")
    if out.suffix == ".csv":
        return [row["path"] for row in csv.DictReader(io.StringIO(text, newline=""))]
    return [str(record["path"]) for record in jsonl(text)]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("important.json", b'{\n  "keep": "me",\n  "last": 1\n}'),  # JSON, not JSON Lines, no final newline
        ("blob.jsonl", bytes(range(256)).replace(b"\n", b"")),  # binary, without a newline at all
        ("pets.jsonl", b'{"path": "a.jpg", "label": "cat"}\n{"path": "b.jpg", "label": "dog"}'),  # eval's input
        ("people.csv", b"name,age\nbob,3\nal"),  # another CSV
        ("deep.jsonl", b"[" * 100_000),  # too deep for json to parse
        ("listed.jsonl", b'{"path": "a.jpg", "label": ["cat"], "score": 1, "top_k": []}\n'),  # a label not text
        ("mixed.jsonl", b'{"path": "a.jpg", "label": 1, "score": 1, "top_k": []}\n{"path": "b", "error": {}}\n'),
        ("short.csv", b"path,label,score,error,label_1,score_1\na.jpg,cat,0.9,,cat,0.9\nb.jpg\n"),  # a short row
        ("cut.csv", b'path,label,score,error,label_1,score_1\n"two\nlines.jpg",cat,0.9,,cat,0.9\n"new\n'),
    ],
)
def test_resume_refuses_a_file_that_is_not_clipzs_output_and_leaves_it_untouched(
    tiny_clip: ModelFiles, folder: Path, tmp_path: Path, name: str, content: bytes
) -> None:
    out = tmp_path / name
    out.write_bytes(content)
    code, _, stderr = classify(folder, out, tiny_clip, "--resume")
    assert code == EXIT_USAGE
    kind = "CSV" if name.endswith(".csv") else "JSON Lines"
    assert stderr.strip() == f"clipzs: error: {out} is not a clipzs {kind} output: cannot resume it"
    assert out.read_bytes() == content


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
@pytest.mark.parametrize("torn", ["/half/a lin", "/half/caf\xc3"])  # (the second cut inside a UTF-8 character)
def test_resume_drops_only_a_line_cut_short(
    tiny_clip: ModelFiles, folder: Path, tmp_path: Path, suffix: str, torn: str
) -> None:
    out = tmp_path / f"results{suffix}"
    first = tmp_path / "first"
    first.mkdir()
    for image in sorted(folder.iterdir())[:2]:
        os.link(image, first / image.name)
    assert classify(first, out, tiny_clip)[0] == EXIT_OK
    before = out.read_bytes()
    with open(out, "ab") as f:  # as if killed mid-line
        f.write((b'{"path": "' if suffix == ".jsonl" else b"") + torn.encode("utf-8", "surrogateescape"))
    rerun = [str(first / name) for name in os.listdir(first)]  # the same paths as the first run wrote
    code, _, stderr = run("classify", *rerun, str(folder), "-l", "cat,dog", "-o", str(out), "--resume", *tiny_clip.args)
    assert code == EXIT_OK, stderr
    assert "2 already in" in stderr
    assert out.read_bytes().startswith(before)  # what was whole is kept as it was
    expected = [as_written(path, suffix) for path in rerun + [str(p) for p in folder.iterdir()]]
    assert sorted(paths_in(out)) == sorted(expected)  # each once, none torn


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
@pytest.mark.parametrize(
    "edit",
    [
        lambda b: b.replace(b"\n", b"\n\n", 1),  # a blank line, as an editor leaves a deleted line
        lambda b: b + b"\n",  # a blank last line (echo >> results)
        lambda b: b"\n" + b,  # a blank first line
        lambda b: b"\xef\xbb\xbf" + b,  # saved again by an editor that marks UTF-8 so (Notepad)
        lambda b: b.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"),  # Windows line ends
    ],
    ids=["blank-line", "blank-last-line", "blank-first-line", "bom", "crlf"],
)
def test_resume_carries_on_an_output_saved_again_by_an_editor(
    tiny_clip: ModelFiles, folder: Path, tmp_path: Path, suffix: str, edit: Any
) -> None:
    """What an editor does to a file it saves is no reason to refuse it: each image is still there once."""
    out = tmp_path / f"results{suffix}"
    first = sorted(folder.iterdir())[:2]
    assert run("classify", *map(str, first), "-l", "cat,dog", "-o", str(out), *tiny_clip.args)[0] == EXIT_OK
    out.write_bytes(edit(out.read_bytes()))
    code, _, stderr = classify(folder, out, tiny_clip, "--resume")
    assert code == EXIT_OK, stderr
    assert "2 already in" in stderr
    text = out.read_bytes().removeprefix(b"\xef\xbb\xbf").decode("utf-8").lstrip("\n")  # (DictReader: header first)
    if suffix == ".csv":
        written = [row["path"] for row in csv.DictReader(io.StringIO(text, newline="")) if row["path"]]
    else:
        written = [str(record["path"]) for record in jsonl(text)]
    assert sorted(written) == sorted(as_written(str(p), suffix) for p in folder.iterdir())


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_names_that_are_not_utf8_are_written_whole_in_every_format_and_resumed(
    tiny_clip: ModelFiles, folder: Path, tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"results{suffix}"
    code, _, stderr = classify(folder, out, tiny_clip)
    assert code == EXIT_OK, stderr
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        paths = pq.read_table(out).column("path").to_pylist()  # pyarrow reads strings as strict UTF-8
    else:
        paths = paths_in(out)
    bad = str(folder / BAD_NAME)
    expected = [str(folder / name) for name in ("a.jpg", "c.jpg", "d.jpg")]
    if suffix == ".jsonl":  # JSON's own escape: the very name, and from it the file's bytes
        assert bad in paths and os.fsencode(bad).endswith(b"bad\xff.jpg")
    else:  # no escapes of their own: the undecodable byte marked as its escape
        assert as_written(bad, suffix).endswith("bad\\udcff.jpg") and as_written(bad, suffix) in paths
    assert len(paths) == 4 and set(expected) <= set(paths)
    written = sorted(p.name for p in out.iterdir()) if out.is_dir() else out.read_bytes()
    code, _, stderr = classify(folder, out, tiny_clip, "--resume")
    assert code == EXIT_OK and "4 already in" in stderr and "0 to go" in stderr
    assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else out.read_bytes()) == written


def test_a_name_that_is_not_utf8_is_valid_json_on_stdout(tiny_clip: ModelFiles, folder: Path) -> None:
    command = [sys.executable, "-m", "clipzs", "classify", str(folder), "-l", "cat,dog", "-q", *tiny_clip.args]
    done = subprocess.run(command, capture_output=True, timeout=300)
    assert done.returncode == EXIT_OK, done.stderr
    paths = [os.fsencode(json.loads(line)["path"]) for line in done.stdout.decode("utf-8").splitlines()]
    assert os.fsencode(folder / BAD_NAME) in paths and len(paths) == 4


@pytest.mark.parametrize("content", [b"junk\n", b""])
def test_resume_names_a_damaged_parquet_part_and_leaves_the_folder_as_it_was(
    tiny_clip: ModelFiles, folder: Path, tmp_path: Path, content: bytes
) -> None:
    out = tmp_path / "results.parquet"
    assert classify(folder, out, tiny_clip)[0] == EXIT_OK
    damaged = out / "part-00001-000000000.parquet"
    damaged.write_bytes(content)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, stderr = classify(folder, out, tiny_clip, "--resume")
    assert code == EXIT_USAGE
    assert stderr.strip() == f"clipzs: error: {damaged} is not a readable clipzs Parquet part: cannot resume {out}"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_refuses_a_parquet_part_that_is_not_clipzs(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipzs.errors import UsageError

    out = tmp_path / "results.parquet"
    out.mkdir()
    pq.write_table(pa.table({"name": ["bob"]}), out / "part-00000.parquet")
    with pytest.raises(UsageError, match=r"part-00000\.parquet is not a readable clipzs Parquet part"):
        ParquetWriter.written_paths(out)


def test_a_parquet_part_moved_away_never_gets_another_written_over_it(tmp_path: Path) -> None:
    """Parts 0, 1, 2 with part 1 moved away (say, damaged): a resumed run adds parts, it never replaces one."""
    import pyarrow.parquet as pq

    out = tmp_path / "results.parquet"
    writer = ParquetWriter(out, rows_per_part=1)
    for name in ("a", "b", "c"):
        writer.write(Prediction(name, error="unreadable"))
    writer.close()
    (out / "part-00001.parquet").unlink()
    writer = ParquetWriter(out, rows_per_part=1)
    writer.write(Prediction("b", error="unreadable"))
    writer.close()
    assert sorted(pq.read_table(out).column("path").to_pylist()) == ["a", "b", "c"]


def test_resume_into_a_file_given_as_parquet_says_only_what_is_wrong(tiny_clip: ModelFiles, folder: Path) -> None:
    cfile = folder.parent / "cfile"
    cfile.write_bytes(b"mine")
    code, _, stderr = run("classify", str(folder), "-l", "cat,dog", "-o", str(cfile), "-f", "parquet", "--resume")
    assert code == EXIT_USAGE
    assert len(stderr.strip().splitlines()) == 1 and "resuming" not in stderr and "folder" in stderr
    assert cfile.read_bytes() == b"mine"


def test_resume_into_a_csv_keeps_its_columns(tiny_clip: ModelFiles, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    first = sorted(folder.iterdir())[:1]
    code, _, _ = run("classify", *map(str, first), "-l", "cat,dog,bird", "-k", "1", "-o", str(out), *tiny_clip.args)
    assert code == EXIT_OK
    before = out.read_bytes()
    code, _, stderr = run("classify", str(folder), "-l", "cat,dog,bird", "-o", str(out), "--resume", *tiny_clip.args)
    assert code == EXIT_USAGE and "holds 1 ranked labels a row and this run would write 3" in stderr
    assert "--top-k 1" in stderr and out.read_bytes() == before  # refused, and the file left as it was

    out.unlink()  # the other way round: fewer ranked labels than the file has columns for, which stay empty
    code, _, _ = run("classify", *map(str, first), "-l", "cat,dog,bird", "-o", str(out), *tiny_clip.args)
    resumed = run("classify", str(folder), "-l", "cat,dog,bird", "-k", "2", "-o", str(out), "--resume", *tiny_clip.args)
    code, _, stderr = resumed
    assert code == EXIT_OK, stderr
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"), newline="")))
    assert len(rows) == 1 + len(list(folder.iterdir())) and {len(row) for row in rows} == {len(rows[0])}


def test_parquet_goes_into_a_new_folder_with_the_folders_above_it(
    tiny_clip: ModelFiles, folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "new" / "results.parquet"
    code, _, stderr = classify(folder, out, tiny_clip)
    assert code == EXIT_OK, stderr
    assert sorted(ParquetWriter.written_paths(out)) == sorted(str(p) for p in folder.iterdir())


def snapshot(out: Path) -> list[tuple[str, bytes]]:
    """An output file's bytes, or those of each file in a Parquet folder."""
    files = sorted(out.rglob("*")) if out.is_dir() else [out]
    return [(str(f), f.read_bytes()) for f in files if f.is_file()]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_resume_refuses_to_mix_in_other_labels(
    tiny_clip: ModelFiles, folder: Path, tmp_path: Path, suffix: str
) -> None:
    """A run resumed with other labels would leave one file holding two classifications."""
    out = tmp_path / f"results{suffix}"
    first = sorted(folder.iterdir())[:2]
    assert run("classify", *map(str, first), "-l", "cat,dog", "-o", str(out), *tiny_clip.args)[0] == EXIT_OK
    before = snapshot(out)
    code, _, stderr = run("classify", str(folder), "-l", "car,boat", "-o", str(out), "--resume", *tiny_clip.args)
    assert code == EXIT_USAGE
    assert "labelled" in stderr and "cannot give" in stderr
    assert snapshot(out) == before
    code, _, _ = run("classify", str(folder), "-l", "dog,cat", "-o", str(out), "--resume", *tiny_clip.args)
    assert code == EXIT_OK  # labels it can give: carried on


def resumed_with(out: Path, folder: Path, model: ModelFiles, *more: str) -> tuple[int, str]:
    code, _, stderr = run("classify", str(folder), "-o", str(out), "--resume", *model.args, *more)
    return code, stderr


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_resume_refuses_other_templates_or_more_labels(
    tiny_clip: ModelFiles, folder: Path, tmp_path: Path, suffix: str
) -> None:
    """Labels the file already holds say nothing of templates, or of labels added since: the scores of the rows
    already written would not be this run's."""
    out = tmp_path / f"results{suffix}"
    first = sorted(folder.iterdir())[:2]
    code, _, _ = run("classify", *map(str, first), "-l", "cat,dog", "-t", "simple", "-o", str(out), *tiny_clip.args)
    assert code == EXIT_OK
    before = snapshot(out)
    code, stderr = resumed_with(out, folder, tiny_clip, "-l", "cat,dog", "-t", "openai-7")
    assert code == EXIT_USAGE
    assert "other templates" in stderr and "1 template," in stderr and "7 templates" in stderr
    code, stderr = resumed_with(out, folder, tiny_clip, "-l", "cat,dog,bird", "-t", "simple")
    assert code == EXIT_USAGE
    assert "other labels" in stderr and "templates" not in stderr.split("than this run's")[0]
    assert snapshot(out) == before
    code, stderr = resumed_with(out, folder, tiny_clip, "-l", "dog,cat", "-t", "simple")
    assert code == EXIT_OK, stderr  # the same classifier, its labels in another order
    assert len(ParquetWriter.written_paths(out) if suffix == ".parquet" else paths_in(out)) == 4


def test_resume_refuses_another_model(
    tiny_clip: ModelFiles, rand_clip: ModelFiles, folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / BAD_NAME.replace(".jpg", ".jsonl")  # (its record is kept under a name that is not UTF-8 too)
    first = sorted(folder.iterdir())[:2]
    assert run("classify", *map(str, first), "-l", "cat,dog", "-o", str(out), *rand_clip.args)[0] == EXIT_OK
    code, stderr = resumed_with(out, folder, tiny_clip, "-l", "cat,dog")
    assert code == EXIT_USAGE
    assert "another model or other weights" in stderr and "rand-clip" in stderr and "tiny-clip" in stderr
    assert resumed_with(out, folder, rand_clip, "-l", "cat,dog")[0] == EXIT_OK


def test_a_file_made_again_under_the_name_is_not_held_to_the_old_record(
    tiny_clip: ModelFiles, folder: Path, tmp_path: Path
) -> None:
    """The record is of the file a run wrote: one written since by other means (here a copy put in its place)
    is resumed as before, on its labels alone."""
    out = tmp_path / "results.jsonl"
    first = sorted(folder.iterdir())[:2]
    assert run("classify", *map(str, first), "-l", "cat,dog", "-t", "simple", "-o", str(out), *tiny_clip.args)[0] == 0
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(out.read_bytes())
    out.unlink()
    copy.rename(out)
    assert resumed_with(out, folder, tiny_clip, "-l", "cat,dog")[0] == EXIT_OK


@pytest.mark.skipif(sys.platform == "win32", reason="needs flock")
@pytest.mark.parametrize("resume", [True, False])
def test_an_output_another_command_is_writing_is_refused_and_left_as_it_is(
    tiny_clip: ModelFiles, folder: Path, tmp_path: Path, resume: bool
) -> None:
    """Two commands writing one output at once (a --resume started twice): each appended every image left, or
    one cut the line the other was writing. The second is refused, before it reads or cuts anything."""
    import fcntl

    out = tmp_path / "results.jsonl"
    assert classify(folder, out, tiny_clip)[0] == EXIT_OK
    before = out.read_bytes()[:-5]  # the first command is writing its last line
    out.write_bytes(before)
    with open(out, "ab") as writing:
        fcntl.flock(writing, fcntl.LOCK_EX)  # as clipzs holds it
        code, _, stderr = classify(folder, out, tiny_clip, *(["--resume"] if resume else []))
    assert code == EXIT_USAGE
    assert (
        stderr.strip()
        == f"clipzs: error: {out} is being written by another command: let it finish, or write another file"
    )
    assert out.read_bytes() == before


@pytest.mark.skipif(sys.platform == "win32", reason="needs flock")
def test_an_output_is_held_while_it_is_written(
    tiny_clip: ModelFiles, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the refusal above relies on: a command holds its output from before it is first written to its end."""
    import fcntl

    from clipzs.output import JsonlWriter

    out = tmp_path / "results.jsonl"
    free: list[bool] = []
    write = JsonlWriter.write

    def probing(self: JsonlWriter, prediction: Prediction) -> None:
        with open(out, "rb") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                free.append(True)
            except BlockingIOError:
                free.append(False)
        write(self, prediction)

    monkeypatch.setattr(JsonlWriter, "write", probing)
    assert classify(folder, out, tiny_clip)[0] == EXIT_OK  # a new file
    assert classify(folder, out, tiny_clip, "--resume")[0] == EXIT_OK  # one there already: nothing left to do
    out.write_bytes(b"")
    assert classify(folder, out, tiny_clip, "--resume")[0] == EXIT_OK  # an empty one
    assert free == [False] * 8


@pytest.mark.skipif(sys.platform == "win32" or not os.access("/dev", os.W_OK), reason="needs flock, -o /dev/null")
def test_dev_null_is_not_held(tiny_clip: ModelFiles, folder: Path) -> None:
    """Only a regular file is held: two commands that send their results to /dev/null do not refuse each other."""
    import fcntl

    with open(os.devnull, "wb") as other:
        fcntl.flock(other, fcntl.LOCK_EX)  # as another command writing /dev/null would hold it
        code, _, stderr = classify(folder, Path(os.devnull), tiny_clip, "-f", "jsonl")
    assert code == EXIT_OK, stderr


def test_no_room_for_the_output_names_it_and_resume_carries_on(
    tiny_clip: ModelFiles, folder: Path, tmp_path: Path
) -> None:
    """A full disk (a file-size limit stands in for one) said only 'No space left on device', naming no file."""
    import resource

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (300, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    out = tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "clipzs", "classify", str(folder), "-l", "cat,dog", "-o", str(out)]
    cut = subprocess.run(
        [*command, *tiny_clip.args], capture_output=True, text=True, timeout=300, preexec_fn=small_files
    )
    assert cut.returncode == EXIT_USAGE and "Traceback" not in cut.stderr, cut.stderr
    assert f"clipzs: error: cannot write {out}: File too large" in cut.stderr and "--resume" in cut.stderr
    assert 0 < out.stat().st_size <= 300
    assert classify(folder, out, tiny_clip, "--resume")[0] == EXIT_OK
    whole = tmp_path / "whole.jsonl"
    assert classify(folder, whole, tiny_clip)[0] == EXIT_OK
    assert jsonl(out.read_text(encoding="utf-8")) == jsonl(whole.read_text(encoding="utf-8"))


def test_resume_with_labels_of_an_output_begun_with_a_classifier_file_of_an_older_clipzs(
    tiny_clip: ModelFiles, folder: Path, tmp_path: Path
) -> None:
    """A classifier file made before fingerprints named the model's config records the weights' part alone; the
    same model, templates and labels are the same classifier, whichever way the run was begun."""
    from clipzs.classifier import Classifier

    clf = tmp_path / "old.clf"
    assert run("build-classifier", "-l", "cat,dog", "-o", str(clf), *tiny_clip.args)[0] == EXIT_OK
    made = Classifier.load(clf)
    old = {**made.meta, "fingerprint": made.meta["fingerprint"].split("|built:")[0]}
    Classifier(made.weights, list(made.labels), meta=old).save(clf)
    out = tmp_path / "results.jsonl"
    first = sorted(folder.iterdir())[:2]
    assert run("classify", *map(str, first), "-c", str(clf), "-o", str(out), *tiny_clip.args)[0] == EXIT_OK
    code, stderr = resumed_with(out, folder, tiny_clip, "-l", "cat,dog")
    assert code == EXIT_OK, stderr
    assert len(paths_in(out)) == 4
