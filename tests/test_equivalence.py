"""clipzs gives open_clip's own numbers: the classifier matrix and per-image scores, through the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES
from PIL import Image
from typer.testing import CliRunner

from clipzs.classifier import Classifier
from clipzs.cli import app
from tests.conftest import ModelFiles, jsonl

CLASSES = ["cat", "rocket", "cup of coffee", "astronaut"]


def reference(name: str, checkpoint: Path, templates: list, photos: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """open_clip's README pipeline: its classifier builder, its preprocess, encode_image, the learned scale."""
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(checkpoint))
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    weights = open_clip.build_zero_shot_classifier(model, tokenizer, CLASSES, templates, device="cpu")
    with torch.no_grad():
        images = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in photos])
        logits = model.logit_scale.exp() * model.encode_image(images, normalize=True) @ weights
        if model.logit_bias is not None:
            return weights, torch.sigmoid(logits + model.logit_bias)
        return weights, logits.softmax(dim=-1)


def scores_by_label(record: dict) -> list[float]:
    got = {entry["label"]: entry["score"] for entry in record["top_k"]}
    return [got[name] for name in CLASSES]


@pytest.mark.parametrize("model_fixture", ["rand_clip", "rand_sigmoid", "rand_nocausal"])
def test_matrix_and_scores_equal_open_clip(
    model_fixture: str, photos: list[Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    files: ModelFiles = request.getfixturevalue(model_fixture)
    open_clip.add_model_config(files.config)
    expected_weights, expected_probs = reference(files.name, files.checkpoint, list(OPENAI_IMAGENET_TEMPLATES), photos)
    runner = CliRunner()
    clf = tmp_path / "classes.clf"
    built = runner.invoke(
        app,
        ["build-classifier", "--labels", ",".join(CLASSES), "--templates", "openai-80", "-o", str(clf), *files.args],
    )
    assert built.exit_code == 0, built.output
    weights = Classifier.load(clf).weights
    assert weights.shape == expected_weights.shape
    assert (weights - expected_weights).abs().max().item() <= 1e-5

    result = runner.invoke(
        app,
        [
            "classify",
            *map(str, photos),
            "--classifier",
            str(clf),
            "--top-k",
            str(len(CLASSES)),
            "-f",
            "jsonl",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    records = jsonl(result.stdout)
    assert [r["path"] for r in records] == [str(p) for p in photos]
    for record, expected in zip(records, expected_probs, strict=True):
        assert scores_by_label(record) == pytest.approx(expected.tolist(), abs=1e-4)
        assert record["label"] == CLASSES[int(expected.argmax())]


def test_sigmoid_scores_are_independent_per_label(rand_sigmoid: ModelFiles, photos: list[Path]) -> None:
    """SigLIP-style models score each label on its own: the scores need not sum to one."""
    result = CliRunner().invoke(
        app, ["classify", str(photos[0]), "--labels", "cat,dog", "-f", "jsonl", *rand_sigmoid.args]
    )
    assert result.exit_code == 0, result.output
    (record,) = jsonl(result.stdout)
    total = sum(entry["score"] for entry in record["top_k"])
    assert total < 0.5  # the random model's bias of -10 puts every sigmoid near zero


def test_real_architecture_vit_b_32(photos: list[Path], tmp_path: Path) -> None:
    """The same equality on a full-size ViT-B-32 (random weights: weights do not change the code path)."""
    torch.manual_seed(1)
    checkpoint = tmp_path / "vit-b-32-random.pt"
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), checkpoint)
    _, expected_probs = reference("ViT-B-32", checkpoint, list(SIMPLE_IMAGENET_TEMPLATES), photos[:3])
    result = CliRunner().invoke(
        app,
        [
            "classify",
            *map(str, photos[:3]),
            "--labels",
            ",".join(CLASSES),
            "--templates",
            "openai-7",
            "--model",
            "ViT-B-32",
            "--pretrained",
            str(checkpoint),
            "-k",
            "4",
            "-f",
            "jsonl",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    for record, expected in zip(jsonl(result.stdout), expected_probs, strict=True):
        assert scores_by_label(record) == pytest.approx(expected.tolist(), abs=1e-4)


@pytest.mark.parametrize(
    ("model_fixture", "trimmed"), [("rand_clip", True), ("rand_sigmoid", True), ("rand_nocausal", False)]
)
def test_text_features_trimmed_to_the_longest_prompt_are_unchanged(
    model_fixture: str, trimmed: bool, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prompts of very different lengths, encoded together: each equals open_clip's full 77-token encoding."""
    from clipzs import model
    from clipzs.model import can_trim_tokens, last_token_index, load_model

    files: ModelFiles = request.getfixturevalue(model_fixture)
    loaded = load_model(None, str(files.checkpoint), model_config=files.config, device="cpu")
    assert can_trim_tokens(loaded.model) is trimmed
    texts = ["a cat.", "!", "a photo of a very long and winding description of an old house by the sea at dusk."]
    texts = [*texts, *(f"a photo of number {i}!" for i in range(300))]  # more than one batch
    with torch.no_grad():
        expected = loaded.model.encode_text(loaded.tokenizer(texts), normalize=True)
    widths: list[int] = []  # each trimmed batch's width: its longest prompt
    trim = model.encode_tokens_trimmed
    monkeypatch.setattr(
        model, "encode_tokens_trimmed", lambda m, t: widths.append(int(last_token_index(t).max()) + 1) or trim(m, t)
    )
    assert (loaded.encode_text(texts) - expected).abs().max().item() <= 1e-5
    assert (len(widths) > 1 and max(widths) < 77) if trimmed else widths == []


def test_split_preprocess_is_bit_exact(rand_clip: ModelFiles, photos: list[Path]) -> None:
    """Geometry on decode threads, then ToTensor and Normalize batched: the same tensor as the preprocess."""
    from clipzs.model import load_model, split_preprocess

    loaded = load_model(None, str(rand_clip.checkpoint), model_config=rand_clip.config, device="cpu")
    assert loaded.pixels is not None
    images = [Image.open(p).convert("RGB") for p in photos[:4]]
    expected = torch.stack([loaded.preprocess(image) for image in images])
    pixels = torch.from_numpy(np.stack([loaded.prepare(image) for image in images]))
    assert pixels.dtype == torch.uint8
    assert torch.equal(loaded.pixels.normalize(pixels), expected)
    assert split_preprocess(lambda image: image) is None  # any other shape keeps the whole preprocess
