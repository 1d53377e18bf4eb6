"""`clipzs eval`: reading labelled folders and files, the metrics by hand, and the command end to end."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from unittest.mock import ANY

import numpy as np
import pytest
from typer.testing import CliRunner

from clipzs.cli import app
from clipzs.errors import EXIT_OK, EXIT_SKIPPED, EXIT_USAGE, UsageError
from clipzs.evaluate import class_labels, load_dataset, metrics
from clipzs.prompts import Label
from tests.conftest import ModelFiles
from tests.test_probe import record_draws
from tests.test_tiny_clip import MIN_ACCURACY
from tests.tinyclip.shapes import CLASSES, draw


def test_metrics_by_hand() -> None:
    scores = np.array(
        [
            [0.7, 0.2, 0.1],  # true 0, predicted 0
            [0.5, 0.4, 0.1],  # true 1, predicted 0 (1 is second)
            [0.1, 0.3, 0.6],  # true 2, predicted 2
            [0.2, 0.5, 0.3],  # true 1, predicted 1
        ]
    )
    m = metrics(scores, [0, 1, 2, 1])
    assert m.top1 == 0.75 and m.top5 == 1.0
    assert m.per_class_recall == [1.0, 0.5, 1.0] and m.support == [1, 2, 1]
    assert m.mean_per_class_recall == pytest.approx(2.5 / 3)
    assert m.confusion == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]

    unseen = metrics(scores[:2, :], [0, 1])  # class 2 has no images (all of them unreadable, say): no recall
    assert unseen.per_class_recall == [1.0, 0.0, None] and unseen.mean_per_class_recall == 0.5


def shapes_tree(root: Path, classes: list[str], per_class: int, seed: int) -> None:
    """A class-per-folder tree of drawn shapes, folder names with underscores ('red_circle')."""
    rng = np.random.default_rng(seed)
    for label in classes:
        folder = root / label.replace(" ", "_")
        folder.mkdir(parents=True)
        for i in range(per_class):
            draw(label, rng).save(folder / f"{i}.png")


def test_dataset_from_folders_csv_and_jsonl(tmp_path: Path) -> None:
    shapes_tree(tmp_path / "tree", CLASSES[:3], per_class=2, seed=1)
    data = load_dataset(tmp_path / "tree")
    assert data.classes == sorted(c.replace(" ", "_") for c in CLASSES[:3])
    assert len(data.paths) == 6 and sorted(data.targets) == [0, 0, 1, 1, 2, 2]
    rows = [(p.relative_to(tmp_path), data.classes[t]) for p, t in zip(data.paths, data.targets, strict=True)]
    (tmp_path / "list.csv").write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    (tmp_path / "list.jsonl").write_text("".join(json.dumps({"path": str(p), "label": lab}) + "\n" for p, lab in rows))
    for listing in ("list.csv", "list.jsonl"):
        other = load_dataset(tmp_path / listing)
        assert other.classes == data.classes and sorted(other.paths) == sorted(data.paths)


def test_each_image_counts_once_and_has_one_label(tmp_path: Path) -> None:
    from clipzs.errors import ClipzsWarning

    shapes_tree(tmp_path / "tree", CLASSES[:2], per_class=2, seed=1)
    a, b = (c.replace(" ", "_") for c in CLASSES[:2])
    rows = [f"tree/{a}/0.png,{a}", f"tree/{a}/1.png,{a}", f"tree/{b}/0.png,{b}", f"tree/{b}/1.png,{b}"]
    (tmp_path / "twice.csv").write_text("path,label\n" + "\n".join([*rows, rows[0], f"{tmp_path}/tree/{a}/0.png,{a}"]))
    with pytest.warns(ClipzsWarning, match="2 images are listed more than once; each counts once"):
        data = load_dataset(tmp_path / "twice.csv")
    assert len(data.paths) == 4  # a repeated row would count twice, and could be both trained and tested on

    (tmp_path / "both.csv").write_text("path,label\n" + "\n".join([*rows, f"tree/{a}/0.png,{b}"]))
    with pytest.raises(UsageError, match=f"labelled both '{a}' and '{b}'"):
        load_dataset(tmp_path / "both.csv")

    (tmp_path / "tree" / "linked").symlink_to(tmp_path / "tree" / a)  # the same images as a second class
    with pytest.raises(UsageError, match="labelled both"):
        load_dataset(tmp_path / "tree")
    (tmp_path / "tree" / "linked").unlink()
    (tmp_path / "tree" / "loose.png").write_bytes((tmp_path / "tree" / a / "0.png").read_bytes())
    with pytest.warns(ClipzsWarning, match="1 images lie beside the class folders"):
        assert len(load_dataset(tmp_path / "tree").paths) == 4


def test_a_folder_of_splits_is_warned_of(tmp_path: Path) -> None:
    """DATA/train/<class>, DATA/val/<class> given as DATA made two classes, 'train' and 'val', prompted as such,
    and figures that mean nothing, without a word. Sub-folders of a class are otherwise its images."""
    import warnings

    from clipzs.errors import ClipzsWarning

    for split, seed in (("train", 1), ("val", 2)):
        shapes_tree(tmp_path / "data" / split, CLASSES[:2], per_class=1, seed=seed)
    with pytest.warns(ClipzsWarning, match=r"class folders train, val all hold their images in the sub-folders"):
        assert load_dataset(tmp_path / "data").classes == ["train", "val"]

    shapes_tree(tmp_path / "nested", CLASSES[:2], per_class=1, seed=3)
    for folder in ("red_circle/day", "red_circle/night", "red_square/day"):  # a class's own sub-folders
        shapes_tree(tmp_path / "nested" / folder, CLASSES[:1], per_class=1, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_dataset(tmp_path / "nested").paths) == 5


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"a": 2, "b": 0}, "without images in .*: b; every class needs an image: put images in, or move it out of"),
        ({"a": 3}, "needs two or more"),
        ({}, "needs two or more"),
    ],
)
def test_bad_folders_say_why(tmp_path: Path, layout: dict[str, int], message: str) -> None:
    for name, count in layout.items():
        (tmp_path / name).mkdir()
        for i in range(count):
            (tmp_path / name / f"{i}.png").write_bytes(b"")
    with pytest.raises(UsageError, match=message):
        load_dataset(tmp_path)


def test_a_class_folder_named_in_another_encoding_is_refused_before_any_work(
    tiny_clip: ModelFiles, tmp_path: Path
) -> None:
    """A folder named in Latin-1 ('caf\\xe9') is a class name that no prompt, JSON or classifier file can hold:
    eval and probe fit said so with a traceback, probe fit only once its training was done."""
    import os

    data = tmp_path / "data"
    shapes_tree(data, CLASSES[:1], per_class=1, seed=1)
    try:
        os.mkdir(os.fsencode(data) + b"/caf\xe9")
    except OSError:
        pytest.skip("this file system takes only UTF-8 names")
    (data / os.fsdecode(b"caf\xe9") / "0.png").write_bytes((data / "red_circle" / "0.png").read_bytes())
    probe = tmp_path / "p.clf"
    for command in (["eval", str(data)], ["probe", "fit", str(data), "-o", str(probe)]):
        result = CliRunner().invoke(app, [*command, *tiny_clip.args])
        assert "Traceback" not in result.output and result.exit_code == EXIT_USAGE, result.output
        assert "the class 'caf\\udce9' is not UTF-8 text" in result.stderr and "rename it" in result.stderr
    assert not probe.exists()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"path": "a\0b.png", "label": "cat"}, r"line 2: the path holds a NUL character"),
        ({"path": "b.png", "label": ["cat"]}, r"line 2: a label is text, not \['cat'\]"),
        ({"path": "b.png", "label": {"name": "cat"}}, r"line 2: a label is text, not \{'name': 'cat'\}"),
        ({"path": "b.png", "label": True}, r"line 2: a label is text, not True"),
        ({"path": 7, "label": "cat"}, r'line 2: expected \{"path": ..., "label": ...\}'),
    ],
)
def test_a_dataset_line_that_cannot_be_one_is_named(tmp_path: Path, line: dict[str, object], message: str) -> None:
    """Not a traceback (a NUL in a path) nor a class named "['cat']"."""
    listing = tmp_path / "list.jsonl"
    listing.write_text(json.dumps({"path": "a.png", "label": "dog"}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(UsageError, match=message):
        load_dataset(listing)
    (tmp_path / "list.csv").write_text('path,label\na.png,dog\n"b\0.png",cat\n')
    with pytest.raises(UsageError, match="line 3: the path holds a NUL character"):
        load_dataset(tmp_path / "list.csv")


def run_eval(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["eval", *args])
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout, result.stderr


def test_eval_equals_a_hand_computation(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    """The figures of `clipzs eval` equal those counted by hand from `clipzs classify` on the same files."""
    classes = CLASSES[:6]
    shapes_tree(tmp_path / "data", classes, per_class=6, seed=4)
    code, stdout, _ = run_eval(str(tmp_path / "data"), "-t", "simple,openai-7", "-f", "json", *tiny_clip.args)
    assert code == EXIT_OK
    report = json.loads(stdout)
    folders = sorted(c.replace(" ", "_") for c in classes)
    assert report["classes"] == folders and [r["templates"] for r in report["runs"]] == ["simple", "openai-7"]

    labels = ",".join(f"{f}={f.replace('_', ' ')}" for f in folders)
    result = CliRunner().invoke(
        app,
        ["classify", str(tmp_path / "data"), "-l", labels, "-t", "simple", "-k", "5", "-f", "jsonl", *tiny_clip.args],
    )
    records = [json.loads(line) for line in result.stdout.splitlines()]
    truth = [Path(r["path"]).parent.name for r in records]
    top1 = sum(r["label"] == t for r, t in zip(records, truth, strict=True)) / len(records)
    top5 = sum(t in [e["label"] for e in r["top_k"]] for r, t in zip(records, truth, strict=True)) / len(records)
    recall = {f: sum(r["label"] == f for r, t in zip(records, truth, strict=True) if t == f) / 6 for f in folders}
    simple = report["runs"][0]
    assert simple["images"] == 36 and simple["top1"] == pytest.approx(top1) and simple["top5"] == pytest.approx(top5)
    assert [c["recall"] for c in simple["per_class"]] == pytest.approx([recall[f] for f in folders])
    assert simple["mean_per_class_recall"] == pytest.approx(sum(recall.values()) / len(folders))
    assert sum(map(sum, simple["confusion"])) == 36 and simple["top1"] >= MIN_ACCURACY


def test_eval_table_plot_and_unreadable_images(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    shapes_tree(tmp_path / "data", CLASSES[:3], per_class=4, seed=5)
    (tmp_path / "data" / "red_circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    plot = tmp_path / "confusion.png"
    code, stdout, stderr = run_eval(str(tmp_path / "data"), "--plot", str(plot), *tiny_clip.args)
    assert code == EXIT_SKIPPED and "skipped" in stderr and "broken.png" in stderr
    assert "top-1" in stdout and "red_circle" in stdout and "confusion matrix" in stdout
    assert str(tiny_clip.checkpoint) in stdout.splitlines()[1]  # in a pipe, the table is not cut to 80 columns
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, stdout, _ = run_eval(str(tmp_path / "data"), "-f", "json", *tiny_clip.args)
    report = json.loads(stdout)  # a report kept in a file says what its figures leave out, as stderr did
    assert code == EXIT_SKIPPED and report["runs"][0]["images"] == 12
    assert report["skipped"] == [{"path": str(tmp_path / "data" / "red_circle" / "broken.png"), "error": ANY}]


def test_eval_usage_errors(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    shapes_tree(tmp_path / "data", CLASSES[:2], per_class=1, seed=6)
    assert run_eval(str(tmp_path / "nowhere"), *tiny_clip.args)[0] == EXIT_USAGE
    code, _, stderr = run_eval(str(tmp_path / "data"), "-t", "simple,nope", *tiny_clip.args)
    assert code == EXIT_USAGE and "unknown template set" in stderr
    for fmt in ("table", "json"):
        code, _, stderr = run_eval(str(tmp_path / "data"), "-t", ",", "-f", fmt, *tiny_clip.args)
        assert code == EXIT_USAGE and "--templates names no template set" in stderr
    code, _, stderr = run_eval(
        str(tmp_path / "data"), "-m", "ViT-B-32", "-m", "ViT-B-16", "-p", "a", "-p", "b", "-p", "c"
    )
    assert code == EXIT_USAGE and "2 --model but 3 --pretrained" in stderr
    code, _, stderr = run_eval(str(tmp_path / "data"), "--plot", str(tmp_path / "c.txt"), *tiny_clip.args)
    assert code == EXIT_USAGE and "matplotlib writes" in stderr and ".png" in stderr  # before any image is encoded


def test_a_dataset_of_which_nothing_can_be_read_names_its_images(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    """Paths of a CSV are read from its own folder: written from elsewhere, none is found; say which and why."""
    shapes_tree(tmp_path / "data", CLASSES[:2], per_class=2, seed=6)
    rows = [f"data/{p.parent.name}/{p.name},{p.parent.name}" for p in sorted((tmp_path / "data").rglob("*.png"))]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "pets.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    code, _, stderr = run_eval(str(tmp_path / "sub" / "pets.csv"), *tiny_clip.args)
    assert code == EXIT_USAGE
    assert "none of the dataset's 4 images could be read" in stderr
    assert str(tmp_path / "sub" / "data") in stderr and "no such file" in stderr and "its own folder" in stderr


def test_a_labels_file_line_that_names_no_class_is_warned_of(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    shapes_tree(tmp_path / "data", CLASSES[:2], per_class=1, seed=6)
    folder = CLASSES[0].replace(" ", "_")
    (tmp_path / "map.txt").write_text(f"{folder}={CLASSES[0]}\nRed_Circl=red circle\n")  # a typo
    code, _, stderr = run_eval(str(tmp_path / "data"), "--labels-file", str(tmp_path / "map.txt"), *tiny_clip.args)
    assert code == EXIT_OK and "clipzs: warning: 1 labels of the labels file name no class" in stderr
    assert "'Red_Circl'" in stderr


def test_a_labels_file_names_a_class_whatever_its_unicode_form() -> None:
    """A folder named on macOS (an accent as a mark after its letter) is the class a labels file written in an
    editor names (the accent a letter of its own): it takes the file's prompts, and no warning says it is not there."""
    folder = "cafe\u0301"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels = class_labels([folder, "tea_room"], [Label("caf\u00e9", ("coffee shop",))])
    assert labels == [Label(folder, ("coffee shop",)), Label("tea_room", ("tea room",))]


def test_a_classifier_label_names_a_class_whatever_its_unicode_form(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    """eval -c: the class of a folder named on macOS is the label 'café' typed in an editor, not one it lacks."""
    shapes_tree(tmp_path / "data", CLASSES[:2], per_class=2, seed=9)
    (tmp_path / "data" / CLASSES[0].replace(" ", "_")).rename(tmp_path / "data" / "cafe\u0301")
    clf = tmp_path / "cafe.clf"
    labels = f"caf\u00e9={CLASSES[0]},{CLASSES[1]}"
    built = CliRunner().invoke(app, ["build-classifier", "-l", labels, "-o", str(clf), *tiny_clip.args])
    assert built.exit_code == EXIT_OK, built.output
    code, stdout, stderr = run_eval(str(tmp_path / "data"), "-c", str(clf), "-f", "json", "--device", "cpu")
    assert code == EXIT_OK, stderr
    assert json.loads(stdout)["runs"][0]["top1"] == 1.0


def test_a_classifier_of_spaced_labels_evaluates_folders_of_underscores(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    """eval prompts the folder red_circle as 'red circle': a classifier built with -l 'red circle,...' fits it."""
    classes = CLASSES[:4]
    shapes_tree(tmp_path / "data", classes, per_class=3, seed=8)
    clf = tmp_path / "shapes.clf"
    built = CliRunner().invoke(app, ["build-classifier", "-l", ",".join(classes), "-o", str(clf), *tiny_clip.args])
    assert built.exit_code == EXIT_OK, built.output
    code, stdout, _ = run_eval(str(tmp_path / "data"), "-c", str(clf), "-f", "json", *tiny_clip.args)
    assert code == EXIT_OK
    assert json.loads(stdout)["runs"][0]["top1"] >= MIN_ACCURACY

    (tmp_path / "data" / "purple_star").mkdir()
    draw(classes[0], np.random.default_rng(0)).save(tmp_path / "data" / "purple_star" / "0.png")
    code, _, stderr = run_eval(str(tmp_path / "data"), "-c", str(clf), *tiny_clip.args)
    assert code == EXIT_USAGE
    assert "no label for the classes purple_star; its labels are" in stderr and repr(classes[0]) in stderr


def test_the_best_run_is_chosen_among_runs_on_every_image_and_many_classes_point_to_json() -> None:
    import io

    from clipzs.evaluate import Run, best_run
    from clipzs.output import render_eval

    classes = [f"class{i}" for i in range(16)]
    truth = np.arange(32) % 16
    right, half = np.eye(16)[truth], np.eye(16)[np.where(np.arange(32) < 16, truth, (truth + 1) % 16)]
    zero_shot = Run("m", "p", "simple", 32, metrics(half, truth))
    probe = Run("m", "p", "8-shot probe", 16, metrics(right[:16], truth[:16]))  # tested on the other 16 only
    assert probe.metrics.top1 > zero_shot.metrics.top1
    assert best_run([zero_shot, probe]) is zero_shot
    table = io.StringIO()
    render_eval([zero_shot, probe], classes, table, "table")
    assert "best run: m (p), simple" in table.getvalue()
    assert "16 classes are too many for a table; --format json or --plot FILE give it" in table.getvalue()


def test_eval_compares_weights_of_one_model_side_by_side(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    """-p repeated: a run per weights, on the same images; the trained ones beat random ones."""
    from tests.conftest import _random_model

    shapes_tree(tmp_path / "data", CLASSES[:4], per_class=4, seed=12)
    untrained = _random_model(tiny_clip.config, tmp_path, ".safetensors", seed=3)
    args = ["--model-config", str(tiny_clip.config), "--device", "cpu", "-t", "simple", "-f", "json"]
    code, stdout, _ = run_eval(
        str(tmp_path / "data"), *args, "-p", str(tiny_clip.checkpoint), "-p", str(untrained.checkpoint)
    )
    assert code == EXIT_OK
    runs = json.loads(stdout)["runs"]
    assert [run["pretrained"] for run in runs] == [str(tiny_clip.checkpoint), str(untrained.checkpoint)]
    assert runs[0]["top1"] >= MIN_ACCURACY > runs[1]["top1"]


def test_eval_seed_picks_the_shots(tiny_clip: ModelFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """eval --shots --seed: the same seed draws the same images for each K (and holds out the same of them), so
    the report is the same; another seed draws other images."""
    data = tmp_path / "data"
    shapes_tree(data, CLASSES[:3], per_class=5, seed=13)
    paths = load_dataset(data).paths
    draws = record_draws(monkeypatch)

    def run(seed: int) -> tuple[list[list[Path]], list[list[int]], str]:
        draws.clear()
        code, stdout, stderr = run_eval(
            str(data), "-t", "simple", "--shots", "1,3", "--seed", str(seed), "-f", "json", *tiny_clip.args
        )
        assert code == EXIT_OK, stderr
        shots = [[paths[i] for i in picked] for kind, picked in draws if kind == "shots"]
        return shots, [picked for kind, picked in draws if kind == "held out"], stdout

    shots, held, report = run(3)
    assert [len(images) for images in shots] == [3, 9] and [len(h) for h in held] == [0, 3]  # (1 shot: none held)
    assert [entry["images"] for entry in json.loads(report)["runs"]] == [15, 12, 6]  # tested on the images not drawn
    assert [entry["seed"] for entry in json.loads(report)["runs"]] == [None, 3, 3]  # the report says how to redo it
    assert run(3) == (shots, held, report)
    other_shots, other_held, _ = run(4)
    assert other_shots[0] != shots[0] and other_shots[1] != shots[1] and other_held[1] != held[1]


def test_every_label_of_a_classifier_competes(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    """A classifier's labels that are no class (a catch-all, say) are not dropped: an image predicted as one is
    wrong, as `classify -c` would have it, and counted apart from the confusion matrix."""
    data = tmp_path / "data"
    shapes_tree(data, CLASSES[:2], per_class=4, seed=21)
    rng = np.random.default_rng(22)
    for i in range(4):  # yellow circles filed as red circles: the classifier's third label fits them better
        draw(CLASSES[9], rng).save(data / "red_circle" / f"y{i}.png")
    clf = tmp_path / "three.clf"
    labels = ",".join([*CLASSES[:2], CLASSES[9]])
    built = CliRunner().invoke(app, ["build-classifier", "-l", labels, "-o", str(clf), *tiny_clip.args])
    assert built.exit_code == EXIT_OK, built.output
    only_the_file = ["-c", str(clf), "--model-config", str(tiny_clip.config), "--device", "cpu"]
    code, stdout, _ = run_eval(str(data), *only_the_file, "-f", "json")
    assert code == EXIT_OK
    [run] = json.loads(stdout)["runs"]

    result = CliRunner().invoke(app, ["classify", str(data), "-c", str(clf), "-f", "jsonl", *tiny_clip.args])
    records = [json.loads(line) for line in result.stdout.splitlines()]
    right = [r["label"] == Path(r["path"]).parent.name.replace("_", " ") for r in records]
    outside = [r["label"] == CLASSES[9] for r in records]
    assert sum(outside) >= 3 and run["top1"] == pytest.approx(sum(right) / len(records))
    assert [c["other"] for c in run["per_class"]] == [sum(outside), 0]  # red_circle, red_square
    assert [sum(row) for row in run["confusion"]] == [8 - sum(outside), 4]
    code, stdout, _ = run_eval(str(data), *only_the_file)
    assert code == EXIT_OK and "(other labels)" in stdout


def test_dataset_labels_are_stripped(tmp_path: Path) -> None:
    (tmp_path / "list.csv").write_text("path,label\na.png,cat \nb.png,cat\nc.png, dog\nd.png,dog\n")
    (tmp_path / "list.jsonl").write_text(
        "".join(
            json.dumps({"path": f"{p}.png", "label": label}) + "\n"
            for p, label in zip("abcd", ["cat ", "cat", " dog", "dog"], strict=True)
        )
    )
    for listing in ("list.csv", "list.jsonl"):
        assert load_dataset(tmp_path / listing).classes == ["cat", "dog"]


def test_eval_plot_refuses_to_overwrite_what_it_reads(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shapes_tree(data, CLASSES[:2], per_class=2, seed=23)
    image = data / "red_circle" / "0.png"
    before = image.read_bytes()
    code, _, stderr = run_eval(str(data), "--plot", str(image), *tiny_clip.args)
    assert code == EXIT_USAGE and "--plot" in stderr and "one of the dataset's images" in stderr
    assert image.read_bytes() == before
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\n" + "".join(f"data/{c}/0.png,{c}\n" for c in ("red_circle", "red_square")))
    code, _, stderr = run_eval(str(listing), "--plot", str(image), *tiny_clip.args)
    assert code == EXIT_USAGE and "one of the dataset's images" in stderr
    assert image.read_bytes() == before


def test_eval_shots_warns_of_classes_left_without_test_images(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shapes_tree(data, CLASSES[:3], per_class=3, seed=24)
    for extra in sorted((data / "red_circle").iterdir())[1:]:
        extra.unlink()  # red_circle: one image, all of it used to train the 1-shot probe
    code, stdout, stderr = run_eval(str(data), "-t", "simple", "--shots", "1", "-f", "json", *tiny_clip.args)
    assert code == EXIT_OK
    assert "clipzs: warning: 1 shots per class leave no image to test on of 1 classes" in stderr
    assert "red_circle" in stderr and "red_square" not in stderr
    assert [run["images"] for run in json.loads(stdout)["runs"]] == [7, 4]


def test_eval_shots_with_an_unreadable_class_names_it_and_keeps_the_zero_shot_run(
    tiny_clip: ModelFiles, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shapes_tree(data, CLASSES[:3], per_class=2, seed=25)
    for image in (data / "red_square").iterdir():
        image.unlink()
    (data / "red_square" / "junk.png").write_bytes(b"junk")
    code, stdout, stderr = run_eval(str(data), "-t", "simple", "--shots", "1", "-f", "json", *tiny_clip.args)
    assert code == EXIT_SKIPPED, stderr
    assert "--shots left out" in stderr and "'red_square'" in stderr and "junk.png" in stderr
    assert [run["templates"] for run in json.loads(stdout)["runs"]] == ["simple"]


def test_eval_table_prints_names_in_brackets_as_they_are() -> None:
    import io

    from clipzs.evaluate import Run
    from clipzs.output import render_eval

    classes = ["circles [old]", "squares [/old]"]
    run = Run("m", "/models/clip [v2]/w.safetensors", "[bold]t", 2, metrics(np.eye(2), [0, 1]))
    table = io.StringIO()
    render_eval([run], classes, table, "table")
    for text in (*classes, "/models/clip [v2]/w.safetensors", "[bold]t"):
        assert text in table.getvalue()


def test_eval_table_keeps_each_class_on_its_row() -> None:
    """A folder name may hold a newline or a tab: escaped, as paths are in classify's output, it no longer splits
    its rows of the recall and confusion tables in two, under the next class's numbers."""
    import io

    from clipzs.evaluate import Run
    from clipzs.output import render_eval

    classes = ["new\nline", "tab\tx"]
    run = Run("m", "p", "simple", 2, metrics(np.eye(2), [0, 1]))
    table = io.StringIO()
    render_eval([run], classes, table, "table")
    lines = table.getvalue().splitlines()
    assert [line.split()[0] for line in lines if "100.0%" in line][1:] == ["new\\nline", "tab\\tx"]
    assert not any(line.strip().startswith(("line", "x ")) for line in lines)


def test_a_confusion_plot_of_many_classes_stays_small(tmp_path: Path) -> None:
    """Hundreds of classes (ImageNet has 1000): no tick labels, and the figure stops growing."""
    import tracemalloc

    from PIL import Image

    from clipzs.evaluate import Run, plot_confusion

    classes = [f"class{i}" for i in range(150)]
    truth = np.arange(300) % 150
    scores = np.eye(151)[np.where(np.arange(300) < 150, truth, 150)]  # half of them predicted as another label
    run = Run("m", "p", "simple", 300, metrics(scores, truth, len(classes)))
    tracemalloc.start()
    plot_confusion(run, classes, tmp_path / "big.png")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    with Image.open(tmp_path / "big.png") as image:
        assert max(image.size) <= 3000  # (150 classes at 0.45 inch each would be 7000 pixels square)
    assert peak < 200_000_000


def test_a_labels_file_of_comments_only_renames_nothing(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    """eval's and probe fit's --labels-file maps classes to prompts: one that maps none leaves each class its
    name, with a warning, and never speaks of --labels, which they do not have. classify, which takes its labels
    from the file, names the file that holds none."""
    shapes_tree(tmp_path / "data", CLASSES[:2], per_class=1, seed=6)
    (tmp_path / "map.txt").write_text("# class=prompt|prompt\n\n")
    code, _, stderr = run_eval(str(tmp_path / "data"), "--labels-file", str(tmp_path / "map.txt"), *tiny_clip.args)
    assert code == EXIT_OK, stderr
    assert f"warning: the labels file {tmp_path / 'map.txt'} holds no labels" in stderr

    args = ["classify", str(tmp_path / "data"), "--labels-file", str(tmp_path / "map.txt"), *tiny_clip.args]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == EXIT_USAGE
    assert f"the labels file {tmp_path / 'map.txt'} holds no labels" in result.stderr


def test_classifier_files_of_one_name_are_told_apart(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    """exp1/shapes.clf and exp2/shapes.clf, measured side by side, were two runs of the same name 'shapes.clf' in
    the table and the JSON: which figures were whose could not be told. They are named by their paths."""
    shapes_tree(tmp_path / "data", CLASSES[:2], per_class=1, seed=6)
    files = [str(tmp_path / folder / "shapes.clf") for folder in ("exp1", "exp2")]
    for file, templates in zip(files, ("simple", "openai-7"), strict=True):
        Path(file).parent.mkdir()
        args = ["build-classifier", "-l", ",".join(CLASSES[:2]), "-t", templates, "-o", file, *tiny_clip.args]
        assert CliRunner().invoke(app, args).exit_code == EXIT_OK
    code, stdout, stderr = run_eval(str(tmp_path / "data"), "-c", files[0], "-c", files[1], "-f", "json")
    assert code == EXIT_OK, stderr
    assert [run["templates"] for run in json.loads(stdout)["runs"]] == [f"{file} (zero-shot)" for file in files]
    code, stdout, stderr = run_eval(str(tmp_path / "data"), "-c", files[0], "-f", "json")  # alone: by its name
    assert code == EXIT_OK and json.loads(stdout)["runs"][0]["templates"] == "shapes.clf (zero-shot)"


def test_eval_warns_that_templates_do_not_apply_to_classifier_files(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    shapes_tree(tmp_path / "data", CLASSES[:2], per_class=1, seed=6)
    clf = tmp_path / "two.clf"
    built = CliRunner().invoke(app, ["build-classifier", "-l", ",".join(CLASSES[:2]), "-o", str(clf), *tiny_clip.args])
    assert built.exit_code == EXIT_OK, built.output
    code, _, stderr = run_eval(str(tmp_path / "data"), "-c", str(clf), "-t", "simple,openai-7", "--device", "cpu")
    assert code == EXIT_OK, stderr
    assert "warning: --templates is for zero-shot runs of a model" in stderr

    code, _, stderr = run_eval(str(tmp_path / "data"), "-c", str(tmp_path / "data"), "--device", "cpu")
    assert code == EXIT_USAGE
    assert f"{tmp_path / 'data'} is a folder, not a classifier file" in stderr
