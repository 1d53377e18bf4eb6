"""Classification that is actually right: the repo's tiny CLIP, trained on drawn shapes, on fresh drawings.

These tests fail when the answers are wrong (a transposed matrix, a wrong normalisation, a shuffled label
order, a broken decoder), not only when the plumbing breaks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clipzs.api import ZeroShotClassifier
from clipzs.cli import app
from clipzs.errors import EXIT_OK, EXIT_USAGE
from tests.conftest import ModelFiles, jsonl
from tests.tinyclip.shapes import CLASSES, draw

MIN_ACCURACY = 0.85


def drawn_folder(folder: Path, per_class: int, seed: int, size: int = 64, fmt: str = "png") -> dict[Path, str]:
    """Fresh drawings, named so that the file name does not give the class away."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in range(per_class):
        for j, label in enumerate(CLASSES):
            path = folder / f"{i * len(CLASSES) + j:04d}.{fmt}"
            draw(label, rng, size=size).save(path, quality=92)  # PNG ignores the JPEG quality
            truth[path] = label
    return truth


@pytest.mark.parametrize("templates", ["simple", "openai-7"])
def test_zero_shot_accuracy_on_fresh_drawings(tiny_clip: ModelFiles, tmp_path: Path, templates: str) -> None:
    truth = drawn_folder(tmp_path / "shapes", per_class=10, seed=2026)
    result = CliRunner().invoke(
        app, ["classify", str(tmp_path / "shapes"), "--labels", ",".join(CLASSES), "-t", templates, *tiny_clip.args]
    )
    assert result.exit_code == EXIT_OK, result.output
    records = jsonl(result.stdout)
    assert len(records) == len(truth) == 120 and len(CLASSES) >= 8
    correct = sum(r["label"] == truth[Path(r["path"])] for r in records)  # type: ignore[arg-type]
    assert correct / len(records) >= MIN_ACCURACY


def test_aliases_and_label_order_do_not_matter(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    """Labels given in reverse with renamed aliases still map each image to the right class."""
    truth = drawn_folder(tmp_path / "shapes", per_class=4, seed=7)
    specs = [f"{label.upper()}={label}" for label in reversed(CLASSES)]
    result = CliRunner().invoke(app, ["classify", str(tmp_path / "shapes"), "-l", ",".join(specs), *tiny_clip.args])
    records = jsonl(result.stdout)
    correct = sum(r["label"] == truth[Path(r["path"])].upper() for r in records)  # type: ignore[arg-type]
    assert correct / len(records) >= MIN_ACCURACY


LONG = "a shape drawn on a plain background in the middle of the picture seen from above: "


@pytest.mark.parametrize(
    ("labels", "why", "told_apart"),
    [
        (  # the model reads 16 tokens: the shapes come after them, so the two labels would always tie
            [LONG + label for label in CLASSES[:2]],
            "their prompts differ only in what its tokenizer does not read (letter case, spacing, or what comes past "
            "the 16 tokens it reads)",
            [label + ": " + LONG for label in CLASSES[:2]],
        ),
        (
            ["Red Circle", "red  circle"],
            "their prompts differ only in what its tokenizer does not read",
            ["red circle", "red disc"],
        ),
        (
            ["round=red circle", "disc=red circle", CLASSES[1]],
            "they have the same prompts",
            ["round=red circle", "disc=red circle|round thing", CLASSES[1]],
        ),
    ],
)
def test_labels_the_model_cannot_tell_apart_are_refused(
    tiny_clip: ModelFiles, tmp_path: Path, labels: list[str], why: str, told_apart: list[str]
) -> None:
    images = [str(path) for path in drawn_folder(tmp_path / "shapes", per_class=1, seed=3)]
    result = CliRunner().invoke(app, ["classify", *images, "-l", ",".join(labels), *tiny_clip.args])
    first, second = (label.split("=")[0] for label in labels[:2])
    assert result.exit_code == EXIT_USAGE and result.stdout == ""
    assert f"labels {first!r} and {second!r} are the same to this model: {why}" in result.stderr
    apart = CliRunner().invoke(app, ["classify", *images, "-l", ",".join(told_apart), *tiny_clip.args])
    assert apart.exit_code == EXIT_OK, apart.output


def test_reduced_scale_jpeg_decoding_keeps_top_1(
    tiny_clip: ModelFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large JPEGs decoded at 1/8 scale give the same top-1 as decoding them whole."""
    from clipzs import api

    truth = drawn_folder(tmp_path / "big", per_class=4, seed=11, size=1024, fmt="jpg")
    zsc = ZeroShotClassifier.from_pretrained(
        None, str(tiny_clip.checkpoint), model_config=tiny_clip.config, device="cpu"
    )
    zsc.build(CLASSES, "simple")
    drafts: list[object] = []
    load = api.load_image
    monkeypatch.setattr(api, "load_image", lambda path, draft=None: drafts.append(draft) or load(path, draft=draft))
    fast = [p.label for p in zsc.classify_paths(list(truth), use_cache=False, fast_decode=True)]
    assert drafts == [zsc.model.draft] * len(truth) and zsc.model.draft is not None  # the pipeline drafts
    exact = [p.label for p in zsc.classify_paths(list(truth), use_cache=False, fast_decode=False)]
    assert drafts[len(truth) :] == [None] * len(truth)
    assert fast == exact
    assert sum(label == truth[p] for label, p in zip(fast, truth, strict=True)) / len(truth) >= MIN_ACCURACY


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_lower_precision_agrees_with_fp32(tiny_clip: ModelFiles, tmp_path: Path, precision: str) -> None:
    """--precision bf16/int8 keeps top-1 on the trained model, and its features are cached apart from fp32 ones."""
    truth = drawn_folder(tmp_path / "shapes", per_class=5, seed=5)
    folder, labels = str(tmp_path / "shapes"), ",".join(CLASSES)
    runner = CliRunner()
    fp32 = jsonl(runner.invoke(app, ["classify", folder, "-l", labels, *tiny_clip.args]).stdout)
    result = runner.invoke(app, ["classify", folder, "-l", labels, "--precision", precision, *tiny_clip.args])
    assert result.exit_code == EXIT_OK, result.output
    other = jsonl(result.stdout)
    assert [r["label"] for r in other] == [r["label"] for r in fp32]
    assert any(a["score"] != b["score"] for a, b in zip(other, fp32, strict=True))  # its own features, not fp32's
    assert sum(r["label"] == truth[Path(r["path"])] for r in other) / len(truth) >= MIN_ACCURACY  # type: ignore[arg-type]
