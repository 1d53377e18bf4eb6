"""A run over good photos mixed with every kind of bad input: the good are scored, the bad reported, nothing lost."""

from __future__ import annotations

import itertools
from pathlib import Path

from typer.testing import CliRunner

from clipzs.cli import app
from clipzs.errors import EXIT_SKIPPED, EXIT_USAGE
from tests.conftest import ModelFiles, jsonl
from tests.corpus import waiting_fifo, write_bad_inputs, write_tricky_images


def test_bad_inputs_are_reported_and_skipped(rand_clip: ModelFiles, photos: list[Path], tmp_path: Path) -> None:
    bad = write_bad_inputs(tmp_path / "bad")
    tricky = write_tricky_images(tmp_path / "tricky")
    assert len(bad) >= 12
    good = [*photos, *tricky]
    mixed = [p for pair in itertools.zip_longest(good, bad) for p in pair if p is not None]  # good, bad, good, ...
    listing = "\0".join(map(str, mixed))  # NUL-separated, as find -print0 writes: names may hold newlines

    result = CliRunner().invoke(
        app, ["classify", "-", "--labels", "cat,rocket", "-f", "jsonl", *rand_clip.args], input=listing
    )
    assert result.exit_code == EXIT_SKIPPED
    assert "Traceback" not in result.output
    records = jsonl(result.stdout)
    assert [r["path"] for r in records] == [str(p) for p in mixed]  # every input once, in input order
    by_path = {r["path"]: r for r in records}
    for path in good:
        record = by_path[str(path)]
        assert "error" not in record, (path, record)
        assert record["label"] in {"cat", "rocket"} and 0.0 <= record["score"] <= 1.0
    warnings = result.stderr.splitlines()
    for path, keyword in bad.items():
        record = by_path[str(path)]
        assert set(record) == {"path", "error"} and keyword in record["error"].lower(), record
        assert sum(line.startswith(f"clipzs: skipped {path}:") for line in warnings) == 1
    assert f"skipped {len(bad)}" in warnings[-1]


def test_unusable_output_paths_get_one_line_before_the_model_loads(
    rand_clip: ModelFiles, photos: list[Path], tmp_path: Path
) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    folder, file = str(tmp_path / "folder"), str(tmp_path / "file")
    cases = [
        (["classify", str(photos[0]), "-l", "a,b", "-o", f"{tmp_path}/missing/x.csv"], "is not an existing folder"),
        (["classify", str(photos[0]), "-l", "a,b", "-o", folder], "it is a folder"),
        (["classify", str(photos[0]), "-l", "a,b", "-o", file, "-f", "parquet", "--resume"], "it is a file"),
        (["eval", str(photos[0].parent), "--plot", f"{tmp_path}/missing/p.png"], "is not an existing folder"),
        (["build-classifier", "-l", "a,b", "-o", folder], "it is a folder"),
        (["build-classifier", "-l", "a,b", "-o", f"{file}/x.clf"], "is not an existing folder"),
        (["probe", "fit", str(photos[0].parent), "-o", folder], "it is a folder"),
    ]
    for args, message in cases:
        model = ["--model-config", "/nonexistent.json"]
        result = CliRunner().invoke(app, [*args, *model])  # refused before the model config is read
        assert result.exit_code == EXIT_USAGE, (args, result.output)
        assert result.stderr.startswith("clipzs: error: ") and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output and "resuming" not in result.stderr


def test_an_output_that_is_an_input_is_refused_and_left_whole(
    rand_clip: ModelFiles, photos: list[Path], tmp_path: Path
) -> None:
    clf, labels = tmp_path / "pets.clf", tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    assert (
        CliRunner().invoke(app, ["build-classifier", "-l", "cat,dog", "-o", str(clf), *rand_clip.args]).exit_code == 0
    )
    image = tmp_path / photos[0].name
    image.write_bytes(photos[0].read_bytes())
    cases = [
        (["classify", str(image), "-c", str(clf), "-o", str(clf)], clf, "the classifier file"),
        (["classify", str(tmp_path), "--labels-file", str(labels), "-o", str(image)], image, "one of the images"),
        (["classify", str(image), "--labels-file", str(labels), "-o", str(labels)], labels, "the labels file"),
        (["build-classifier", "--labels-file", str(labels), "-o", str(labels)], labels, "the labels file"),
    ]
    for args, victim, what in cases:
        before = victim.read_bytes()
        result = CliRunner().invoke(app, [*args, *rand_clip.args])
        assert result.exit_code == EXIT_USAGE and what in result.stderr, (args, result.output)
        assert victim.read_bytes() == before


def test_the_model_files_and_the_dataset_are_never_the_output(
    rand_clip: ModelFiles, photos: list[Path], tmp_path: Path
) -> None:
    weights, config = tmp_path / rand_clip.checkpoint.name, tmp_path / rand_clip.config.name
    weights.write_bytes(rand_clip.checkpoint.read_bytes())
    config.write_bytes(rand_clip.config.read_bytes())
    model = ["--model-config", str(config), "-p", str(weights), "--device", "cpu"]
    clf = tmp_path / "pets.clf"
    assert CliRunner().invoke(app, ["build-classifier", "-l", "cat,dog", "-o", str(clf), *model]).exit_code == 0
    dataset = tmp_path / "ds.csv"
    dataset.write_text("path,label\n" + "".join(f"{p},{'cat' if i % 2 else 'dog'}\n" for i, p in enumerate(photos)))
    image = photos[0]
    cases = [
        (["build-classifier", "-l", "cat,dog", "-o", str(weights), *model], weights, "the model's weights"),
        (["build-classifier", "-l", "cat,dog", "-o", str(config), *model], config, "the model config"),
        (["classify", str(image), "-l", "cat,dog", "-o", str(weights), *model], weights, "the model's weights"),
        # the classifier file names the weights: no -p on the command line
        (["classify", str(image), "-c", str(clf), "-o", str(weights)], weights, "the model's weights"),
        (["probe", "fit", str(dataset), "-o", str(dataset), *model], dataset, "the dataset"),
        (["probe", "fit", str(dataset), "-o", str(weights), *model], weights, "the model's weights"),
    ]
    for args, victim, what in cases:
        before = victim.read_bytes()
        result = CliRunner().invoke(app, args)
        assert result.exit_code == EXIT_USAGE and what in result.stderr, (args, result.output)
        assert victim.read_bytes() == before


def test_a_classifier_in_use_survives_its_file_being_cut(rand_clip: ModelFiles, tmp_path: Path) -> None:
    from clipzs.classifier import Classifier

    clf = tmp_path / "pets.clf"
    assert (
        CliRunner().invoke(app, ["build-classifier", "-l", "cat,dog", "-o", str(clf), *rand_clip.args]).exit_code == 0
    )
    loaded = Classifier.load(clf)
    expected = loaded.weights.sum().item()
    clf.write_bytes(b"")  # a file mapped into memory would now fault on the next read (SIGBUS)
    assert loaded.weights.sum().item() == expected


def test_entries_a_path_list_or_a_folder_cannot_use_cost_themselves_alone(
    rand_clip: ModelFiles, photos: list[Path], tmp_path: Path
) -> None:
    """A name too long in a path list stopped the run (exit 2); a pipe in it hung the run for good (and a server
    with it); a link loop in a folder hid the rest of the folder. Each is reported, and the rest scored."""
    folder = tmp_path / "folder"
    folder.mkdir()
    for photo in photos[:2]:
        (folder / photo.name).write_bytes(photo.read_bytes())
    (folder / "loop.jpg").symlink_to("loop.jpg")
    long, pipe = tmp_path / ("x" * 300 + ".jpg"), tmp_path / "pipe.jpg"
    with waiting_fifo(pipe) as opened:
        result = CliRunner().invoke(
            app,
            ["classify", "-", str(folder), "-l", "cat,rocket", "-f", "jsonl", *rand_clip.args],
            input=f"{long}\n{pipe}\n{photos[2]}\n",
        )
        assert not opened.wait(0.3), "the pipe was opened"
    assert result.exit_code == EXIT_SKIPPED, result.output
    errors = {r["path"]: r.get("error") for r in jsonl(result.stdout)}
    assert errors == {
        str(long): "file name too long",
        str(pipe): "not a regular file but a pipe, left unread",
        str(photos[2]): None,
        **{str(folder / photo.name): None for photo in photos[:2]},
        str(folder / "loop.jpg"): "too many levels of symbolic links",
    }
    warnings = result.stderr.splitlines()
    assert len([line for line in warnings if line.startswith("clipzs: skipped ")]) == 3
    assert max(map(len, warnings)) < 300  # the long name is shown cut, with its start and its end
    assert "scored 3 of 6 images, skipped 3" in warnings[-1]


def test_an_image_piped_in_instead_of_a_path_list_is_said_to_be_one(rand_clip: ModelFiles, photos: list[Path]) -> None:
    """Its bytes were read as paths, and a kilobyte of them printed as the error."""
    result = CliRunner().invoke(
        app, ["classify", "-", "-l", "cat,rocket", *rand_clip.args], input=photos[0].read_bytes()
    )
    assert result.exit_code == EXIT_USAGE
    said = "stdin holds JPEG image data, not a list of paths: name the image file instead"
    assert result.stderr == f"clipzs: error: {said}\n"
