"""Linear probes, few-shot and blends on the trained tiny model: they learn what zero-shot cannot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clipzs.classifier import Classifier
from clipzs.cli import app
from clipzs.errors import EXIT_OK, EXIT_USAGE, UsageError
from clipzs.probe import few_shot, fit_probe, held_out_split
from tests.conftest import ModelFiles, jsonl
from tests.tinyclip.shapes import draw

# Words the tiny model never saw in training, for shapes it knows well.
UNSEEN = {"alpha": "red circle", "beta": "blue square", "gamma": "green triangle", "delta": "yellow circle"}


def unseen_tree(root: Path, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for word, shape in UNSEEN.items():
        (root / word).mkdir(parents=True)
        for i in range(per_class):
            draw(shape, rng).save(root / word / f"{i}.png")
    return root


def record_draws(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[int]]]:
    """Watch the seeded draws: each call appends what it picked, ("shots", the indices of the images drawn) or
    ("held out", the indices of the images held out among those it was given)."""
    from clipzs import probe

    draws: list[tuple[str, list[int]]] = []
    real_few_shot, real_split = probe.few_shot, probe.held_out_split

    def few_shot(targets: list[int], shots: int, seed: int) -> list[int]:
        draws.append(("shots", real_few_shot(targets, shots, seed)))
        return draws[-1][1]

    def held_out_split(targets: list[int], seed: int) -> tuple[list[int], list[int]]:
        train, held = real_split(targets, seed)
        draws.append(("held out", held))
        return train, held

    monkeypatch.setattr(probe, "few_shot", few_shot)
    monkeypatch.setattr(probe, "held_out_split", held_out_split)
    return draws


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout, result.stderr


def top1_by_run(report: str) -> dict[str, float]:
    return {run["templates"]: run["top1"] for run in json.loads(report)["runs"]}


def test_a_few_shot_probe_beats_zero_shot_on_unseen_words(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    train = unseen_tree(tmp_path / "train", per_class=10, seed=1)
    test = unseen_tree(tmp_path / "test", per_class=10, seed=2)
    probe = tmp_path / "probe.clf"
    code, _, stderr = cli("probe", "fit", str(train), "-o", str(probe), "--shots", "4", *tiny_clip.args)
    assert code == EXIT_OK and "linear-probe on 16 images" in stderr
    meta = Classifier.load(probe).meta
    assert meta["kind"] == "linear-probe" and meta["shots"] == 4 and meta["c"] > 0

    code, stdout, _ = cli("eval", str(test), "-t", "simple", "-c", str(probe), "-f", "json", *tiny_clip.args)
    assert code == EXIT_OK
    scores = top1_by_run(stdout)
    assert scores["probe.clf (linear-probe)"] >= 0.85
    assert scores["probe.clf (linear-probe)"] >= scores["simple"] + 0.2


def test_a_probe_file_classifies_like_a_zero_shot_one(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    train = unseen_tree(tmp_path / "train", per_class=6, seed=3)
    test = unseen_tree(tmp_path / "test", per_class=3, seed=4)
    probe = tmp_path / "probe.clf"
    code, _, stderr = cli("probe", "fit", str(train), "-o", str(probe), "-t", "simple", *tiny_clip.args)
    assert code == EXIT_OK and "--templates is for --blend's zero-shot part; without --blend it is ignored" in stderr
    code, stdout, _ = cli("classify", str(test), "-c", str(probe), "--device", "cpu", "-k", "4")
    assert code == EXIT_OK
    records = jsonl(stdout)
    assert len(records) == 12 and all(abs(sum(e["score"] for e in r["top_k"]) - 1) < 1e-4 for r in records)
    correct = sum(r["label"] == Path(r["path"]).parent.name for r in records)
    assert correct / len(records) >= 0.85


def test_blend_starts_from_zero_shot(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    """With prompts that name the shapes, the blend keeps zero-shot's knowledge when shots are few."""
    train = unseen_tree(tmp_path / "train", per_class=6, seed=5)
    test = unseen_tree(tmp_path / "test", per_class=8, seed=6)
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{word}={shape}\n" for word, shape in UNSEEN.items()))
    blend = tmp_path / "blend.clf"
    code, _, stderr = cli(
        "probe",
        "fit",
        str(train),
        "-o",
        str(blend),
        "--blend",
        "--labels-file",
        str(labels),
        "--shots",
        "2",
        "-t",
        "simple",
        *tiny_clip.args,
    )
    assert code == EXIT_OK and "zero-shot weight" in stderr
    meta = Classifier.load(blend).meta
    assert meta["kind"] == "blend" and 0 <= meta["alpha"] <= 1 and meta["templates"] == ["a photo of a {}."]
    code, stdout, _ = cli("eval", str(test), "-c", str(blend), "-f", "json", *tiny_clip.args)
    assert code == EXIT_OK and top1_by_run(stdout)["blend.clf (blend)"] >= 0.85


def test_probe_usage_errors(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    (tmp_path / "one" / "only").mkdir(parents=True)
    draw("red circle", np.random.default_rng(0)).save(tmp_path / "one" / "only" / "0.png")
    code, _, stderr = cli("probe", "fit", str(tmp_path / "one"), "-o", str(tmp_path / "x.clf"), *tiny_clip.args)
    assert code == EXIT_USAGE and "two or more" in stderr

    (tmp_path / "one" / "broken").mkdir()  # a class whose only image cannot be read: named, with the reason
    (tmp_path / "one" / "broken" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    code, _, stderr = cli("probe", "fit", str(tmp_path / "one"), "-o", str(tmp_path / "x.clf"), *tiny_clip.args)
    assert code == EXIT_USAGE and "none for 'broken'" in stderr and "0.png: corrupt PNG" in stderr
    assert not (tmp_path / "x.clf").exists()


def test_few_shot_and_split_are_seeded_and_stratified() -> None:
    targets = [0] * 10 + [1] * 3 + [2] * 1
    chosen = few_shot(targets, 2, seed=7)
    assert chosen == few_shot(targets, 2, seed=7) and [targets[i] for i in chosen] == [0, 0, 1, 1, 2]
    train, held = held_out_split(targets, seed=0)
    assert sorted(train + held) == list(range(len(targets)))
    assert [targets[i] for i in held] == [0, 0, 1]  # 20% of each class with two or more images
    for seed in (-1, 1.5, "1"):
        with pytest.raises(UsageError, match="a seed is a whole number"):
            few_shot(targets, 2, seed=seed)  # type: ignore[arg-type]


def test_few_images_of_many_classes_fit_without_sklearn_warnings() -> None:
    import warnings

    from clipzs.probe import fit_logistic

    features = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn warns when classes outnumber half the images: few-shot is that
        fit_logistic(features, np.arange(40) % 30, 30, 1.0)


def test_binary_probe_has_one_column_per_class() -> None:
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(1, 0.3, (20, 8)), rng.normal(-1, 0.3, (20, 8))]).astype(np.float32)
    result = fit_probe(features, [0] * 20 + [1] * 20, 2)
    assert result.classifier.weights.shape == (8, 2) and result.held_out_accuracy == 1.0
    assert (result.classifier.logits(features).argmax(axis=1) == [0] * 20 + [1] * 20).all()


def test_few_shot_curve_against_zero_shot(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    data = unseen_tree(tmp_path / "data", per_class=10, seed=8)
    plot = tmp_path / "curve.png"
    clf, one_shot = tmp_path / "words.clf", tmp_path / "one-shot.txt"  # names that say "-shot" are no probes
    one_shot.write_text("a drawing of a {}.\n")
    assert cli("build-classifier", "-l", ",".join(UNSEEN), "-o", str(clf), *tiny_clip.args)[0] == EXIT_OK
    code, stdout, _ = cli(
        "eval", str(data), "-t", f"simple,{one_shot}", "--shots", "1,2,4", "-c", str(clf), "--plot", str(plot),
        "-f", "json", *tiny_clip.args,
    )  # fmt: skip
    assert code == EXIT_OK
    runs = {run["templates"]: run for run in json.loads(stdout)["runs"]}
    probes = ["1-shot probe", "2-shot probe", "4-shot probe"]
    assert list(runs) == ["simple", str(one_shot), *probes, "words.clf (zero-shot)"]
    assert [runs[name]["shots"] for name in runs] == [None, None, 1, 2, 4, None]
    assert [runs[name]["images"] for name in probes] == [36, 32, 24]  # tested on the other images
    assert runs["4-shot probe"]["top1"] >= max(0.85, runs["simple"]["top1"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli("eval", str(data), "--shots", "2,x", *tiny_clip.args)[0] == EXIT_USAGE
    code, stdout, stderr = cli("eval", str(data), "-t", "simple", "--shots", "2,10", "-f", "json", *tiny_clip.args)
    assert code == EXIT_OK and "10 shots per class leave no image to test on: left out" in stderr  # (10 per class)
    assert [run["shots"] for run in json.loads(stdout)["runs"]] == [None, 2]
    code, _, stderr = cli("eval", str(data), "--shots", "2", "-c", str(clf))  # a classifier file alone: no features
    assert code == EXIT_USAGE and "--shots fits probes on a model's features" in stderr
    for command in (["eval", str(data), "--shots", "2"], ["probe", "fit", str(data), "-o", str(tmp_path / "p.clf")]):
        code, _, stderr = cli(*command, "--seed", "-1", *tiny_clip.args)
        assert code == EXIT_USAGE and "--seed" in stderr, stderr


def test_few_shot_plot_names_the_checkpoint_and_falls_back_to_a_confusion_matrix(
    tiny_clip: ModelFiles, tmp_path: Path
) -> None:
    """The curve's legend names a checkpoint by its file name, as the confusion plot does, not by a path that runs
    off the figure; and where every --shots count is left out, --plot draws the confusion matrix of what was
    measured, not an empty curve. (SVG keeps each text of the figure in a comment.)"""
    data = unseen_tree(tmp_path / "data", per_class=2, seed=11)
    curve = tmp_path / "curve.svg"
    code, _, stderr = cli("eval", str(data), "-t", "simple", "--shots", "1", "--plot", str(curve), *tiny_clip.args)
    assert code == EXIT_OK, stderr
    assert "<!-- tiny-clip (tiny-clip.safetensors) probe -->" in curve.read_text()
    assert str(tiny_clip.checkpoint) not in curve.read_text()

    plot = tmp_path / "plot.svg"
    code, _, stderr = cli("eval", str(data), "-t", "simple", "--shots", "5", "--plot", str(plot), *tiny_clip.args)
    assert code == EXIT_OK and "5 shots per class leave no image to test on: left out" in stderr
    assert "no few-shot probe to draw; --plot shows a confusion matrix instead" in stderr
    assert "<!-- predicted -->" in plot.read_text() and "labelled images per class" not in plot.read_text()


def test_labels_the_model_cannot_tell_apart_are_refused_before_the_images_are_encoded(
    tiny_clip: ModelFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Class folders Cat and cat prompt alike: eval and probe fit --blend said so only once every image was
    encoded (an hour, for ImageNet on a CPU). A plain probe needs no prompts, and fits them."""
    from clipzs.api import ZeroShotClassifier

    rng = np.random.default_rng(12)
    for folder, shape in (("Red_circle", "red circle"), ("red_circle", "blue square")):
        (tmp_path / "data" / folder).mkdir(parents=True)
        for i in range(2):
            draw(shape, rng).save(tmp_path / "data" / folder / f"{i}.png")
    encode = ZeroShotClassifier.encode_paths

    def refuse_to_encode(*args: object, **kwargs: object) -> object:
        raise AssertionError("the images were encoded before the labels were checked")

    monkeypatch.setattr(ZeroShotClassifier, "encode_paths", refuse_to_encode)
    probe = str(tmp_path / "p.clf")
    for command in (["eval", str(tmp_path / "data")], ["probe", "fit", str(tmp_path / "data"), "-o", probe, "--blend"]):
        result = CliRunner().invoke(app, [*command, *tiny_clip.args])
        assert result.exit_code == EXIT_USAGE, result.output
        assert "labels 'Red_circle' and 'red_circle' are the same to this model" in result.stderr
    monkeypatch.setattr(ZeroShotClassifier, "encode_paths", encode)
    assert cli("probe", "fit", str(tmp_path / "data"), "-o", probe, *tiny_clip.args)[0] == EXIT_OK


def test_a_probe_file_works_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Built with relative model paths, the file still names the model absolutely."""
    repo = Path(__file__).resolve().parent.parent
    train = unseen_tree(tmp_path / "train", per_class=3, seed=9)
    probe = tmp_path / "probe.clf"
    monkeypatch.chdir(repo)
    relative = ["--model-config", "tests/tinyclip/tiny-clip.json", "-p", "tests/tinyclip/tiny-clip.safetensors"]
    assert cli("probe", "fit", str(train), "-o", str(probe), *relative, "--device", "cpu")[0] == EXIT_OK
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = cli("classify", str(train / "alpha"), "-c", str(probe), "--device", "cpu")
    assert code == EXIT_OK and len(jsonl(stdout)) == 3


def test_a_probe_of_classes_set_apart_scores_with_confidence() -> None:
    """Every C is 100% accurate on such classes: the choice must not fall to the most regularised probe, whose
    scores are about 1/12 each (and useless for --min-score or `score > 0.8`)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 32))
    targets = np.repeat(np.arange(12), 10)
    features = centres[targets] + rng.normal(scale=0.1, size=(120, 32))
    features = (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)
    result = fit_probe(features, targets, 12)
    assert result.held_out_accuracy == 1.0
    logits = result.classifier.logits(features)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    assert probs.max(axis=1).mean() > 0.8


def test_probe_fit_seed_picks_the_shots_and_the_held_out_images(
    tiny_clip: ModelFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--seed: the same seed draws the same shots and holds out the same of them, and so writes the same probe;
    another seed draws other shots and holds out others."""
    from clipzs.evaluate import load_dataset

    data = unseen_tree(tmp_path / "data", per_class=6, seed=10)
    paths = load_dataset(data).paths
    draws = record_draws(monkeypatch)

    def fit(seed: int, output: Path) -> tuple[list[Path], list[int], Classifier]:
        draws.clear()
        code, _, stderr = cli(
            "probe", "fit", str(data), "-o", str(output), "--shots", "3", "--seed", str(seed), *tiny_clip.args
        )
        assert code == EXIT_OK, stderr
        (_, chosen), (_, held) = draws
        return [paths[i] for i in chosen], held, Classifier.load(output)

    shots, held, probe = fit(1, tmp_path / "first.clf")
    assert sorted(p.parent.name for p in shots) == sorted(list(UNSEEN) * 3) and len(held) == 4  # 1 of 3 a class
    assert probe.meta["seed"] == 1
    again, held_again, same = fit(1, tmp_path / "again.clf")
    assert (again, held_again) == (shots, held)
    assert np.array_equal(same.weights.numpy(), probe.weights.numpy()) and same.bias is not None
    assert probe.bias is not None and np.array_equal(same.bias.numpy(), probe.bias.numpy())
    other, held_other, another = fit(2, tmp_path / "other.clf")
    assert other != shots and held_other != held  # (held: which of each class's 3 shots, by position)
    assert another.meta["seed"] == 2 and not np.array_equal(another.weights.numpy(), probe.weights.numpy())
