"""What the caches know a model and an image file by: a changed one must never be served the old one's answers."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
from typer.testing import CliRunner

from clipzs.api import ZeroShotClassifier
from clipzs.cli import app
from clipzs.errors import EXIT_OK, ClassifierError
from clipzs.features import FileKey
from clipzs.images import Draft
from clipzs.model import load_model, split_preprocess
from tests.conftest import ModelFiles, jsonl
from tests.corpus import photo
from tests.test_tiny_clip import MIN_ACCURACY, drawn_folder
from tests.tinyclip.shapes import CLASSES, draw


def config_like(base: Path, path: Path, **changes: object) -> Path:
    """``base``'s model config with some keys changed (nested dicts merged), written to ``path``."""
    config = json.loads(base.read_text(encoding="utf-8"))
    for key, value in changes.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def test_one_checkpoint_built_two_ways_is_two_models(rand_clip: ModelFiles, tmp_path: Path) -> None:
    """QuickGELU has no weights of its own: the same file loads into a model that computes otherwise."""
    gelu = load_model(None, str(rand_clip.checkpoint), model_config=rand_clip.config, device="cpu")
    quick_config = config_like(rand_clip.config, tmp_path / "quick" / rand_clip.config.name, quick_gelu=True)
    quick = load_model(None, str(rand_clip.checkpoint), model_config=quick_config, device="cpu")
    assert gelu.name == quick.name
    assert gelu.fingerprint.split("|")[0] == quick.fingerprint.split("|")[0]  # the same weights
    assert gelu.fingerprint != quick.fingerprint

    built = ZeroShotClassifier(gelu).build(["cat", "dog"], "simple", use_cache=False)
    with pytest.raises(ClassifierError, match="built for"):
        built.check_model(quick.fingerprint, quick.name)


def test_a_corrected_config_is_not_served_the_wrong_ones_cache(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    """A config fixed in place (same file name, same weights) gets its own classifier and features."""
    truth = drawn_folder(tmp_path / "shapes", per_class=3, seed=11)
    config = tmp_path / "configs" / tiny_clip.config.name

    def accuracy() -> float:
        args = ["--model-config", str(config), "-p", str(tiny_clip.checkpoint)]
        result = CliRunner().invoke(app, ["classify", str(tmp_path / "shapes"), "-l", ",".join(CLASSES), *args])
        assert result.exit_code == EXIT_OK, result.output
        records = jsonl(result.stdout)
        return sum(r["label"] == truth[Path(str(r["path"]))] for r in records) / len(records)

    config_like(tiny_clip.config, config, vision_cfg={"pool_type": "avg"})  # the wrong pooling: poor answers
    assert accuracy() < MIN_ACCURACY
    shutil.copyfile(tiny_clip.config, config)
    assert accuracy() >= MIN_ACCURACY


def test_a_custom_config_does_not_replace_a_built_in_model(rand_clip: ModelFiles, tmp_path: Path) -> None:
    built_in = open_clip.get_model_config("ViT-B-32")
    impostor = shutil.copyfile(rand_clip.config, tmp_path / "ViT-B-32.json")
    loaded = load_model(None, str(rand_clip.checkpoint), model_config=impostor, device="cpu")
    assert loaded.name == "ViT-B-32"
    assert open_clip.get_model_config("ViT-B-32") == built_in


def test_a_file_replaced_with_its_old_size_and_mtime_is_encoded_again(rand_clip: ModelFiles, tmp_path: Path) -> None:
    """As ``cp -p`` or ``rsync -a`` replace a file: same size (BMPs of one shape), the old mtime put back."""
    path = tmp_path / "picture.bmp"
    photo("chelsea").resize((96, 64)).save(path)
    before = os.stat(path)
    zsc = ZeroShotClassifier(load_model(None, str(rand_clip.checkpoint), model_config=rand_clip.config, device="cpu"))
    [(_, old)] = zsc.encode_paths([path])
    photo("astronaut").resize((96, 64)).save(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size
    [(_, cached)] = zsc.encode_paths([path])
    [(_, fresh)] = zsc.encode_paths([path], use_cache=False)
    assert (cached - fresh).abs().max() < 1e-6  # type: ignore[operator]
    assert (cached - old).abs().max() > 1e-3  # type: ignore[operator]


def test_a_file_key_changes_with_the_files_version(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"one")
    first = FileKey.of(path)
    status = os.stat(path)
    path.write_bytes(b"two")
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert FileKey.of(path) != first
    assert FileKey.of(path) == FileKey.of(path)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, Draft(64)),
        ({"resize_mode": "squash"}, Draft(64, squash=True)),
        ({"resize_mode": "longest"}, None),  # a resize it cannot map: such JPEGs are decoded whole
        ({"interpolation": "bilinear"}, None),
    ],
)
def test_the_draft_follows_the_models_resize(
    rand_clip: ModelFiles, options: dict[str, str], expected: Draft | None
) -> None:
    """Preprocessing as open_clip makes it for pretrained tags that set it (SigLIP's squash, say)."""
    loaded = load_model(None, str(rand_clip.checkpoint), model_config=rand_clip.config, device="cpu")
    preprocess = open_clip.image_transform(64, is_train=False, **options)
    assert dataclasses.replace(loaded, preprocess=preprocess, pixels=split_preprocess(preprocess)).draft == expected


def test_a_drafted_image_is_the_size_torchvisions_resize_gives() -> None:
    """The shorter side to the size, the longer one in proportion, rounded down."""
    assert Draft(224).target(4032, 3024) == (298, 224)
    assert Draft(224).target(1037, 1904) == (224, 411)
    assert Draft(224, squash=True).target(4032, 3024) == (224, 224)


def publish(hub: Path, config: Path, seed: int, commit: str) -> None:
    """A snapshot of the repository me/tiny as a download leaves it in the Hugging Face cache: each file in
    blobs/ under the hash of its content, linked from snapshots/<commit>/, and refs/main naming the commit."""
    import hashlib

    import torch
    from safetensors.torch import save as save_bytes

    repo = hub / "models--me--tiny"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "snapshots" / commit).mkdir(parents=True)
    model_cfg = json.loads(config.read_text(encoding="utf-8"))
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    weights = open_clip.create_model(config.stem).state_dict()
    files = {
        "open_clip_config.json": json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}).encode(),
        "open_clip_model.safetensors": save_bytes({k: v.contiguous() for k, v in weights.items()}),
    }
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (repo / "snapshots" / commit / name).symlink_to(os.path.relpath(blob, repo / "snapshots" / commit))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


def test_a_hub_model_loads_offline_from_its_cache_and_is_known_by_its_files(
    rand_clip: ModelFiles, photos: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HF_HUB_OFFLINE is set (conftest): a cached hf-hub: model loads. A commit that leaves its files as they
    were is the same model; one that changes its weights is another, not served the older one's features."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    publish(tmp_path / "hub", rand_clip.config, seed=0, commit="a" * 40)
    older = ZeroShotClassifier.from_pretrained("hf-hub:me/tiny", "", device="cpu")
    assert older.model.fingerprint.startswith("hf-hub:me/tiny@")
    [(_, old)] = older.encode_paths(photos[:1])
    built = older.build(["cat", "dog"], "simple", use_cache=False)

    publish(tmp_path / "hub", rand_clip.config, seed=0, commit="b" * 40)  # (a README edited, say)
    same = ZeroShotClassifier.from_pretrained("hf-hub:me/tiny", "", device="cpu")
    assert same.model.fingerprint == older.model.fingerprint
    built.check_model(same.model.fingerprint, same.model.name)

    publish(tmp_path / "hub", rand_clip.config, seed=1, commit="c" * 40)
    newer = ZeroShotClassifier.from_pretrained("hf-hub:me/tiny", "", device="cpu")
    assert newer.model.fingerprint != older.model.fingerprint
    [(_, cached)] = newer.encode_paths(photos[:1])
    [(_, fresh)] = newer.encode_paths(photos[:1], use_cache=False)
    assert (cached - fresh).abs().max() < 1e-6  # type: ignore[operator]
    assert (cached - old).abs().max() > 1e-3  # type: ignore[operator]
    with pytest.raises(ClassifierError, match="built for model hf-hub:me/tiny"):
        built.check_model(newer.model.fingerprint, newer.model.name)


def test_a_hub_name_that_is_no_repository_is_one_line(photos: list[Path]) -> None:
    result = CliRunner().invoke(app, ["classify", str(photos[0]), "-l", "a,b", "-m", "hf-hub:me/my model"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "does not name a Hugging Face repository" in result.stderr


def test_a_classifier_file_of_an_older_clipzs_is_taken_for_its_weights(rand_clip: ModelFiles, tmp_path: Path) -> None:
    """Files made before fingerprints named what a model is built from hold the weights' part alone."""
    from clipzs.classifier import Classifier

    gelu = load_model(None, str(rand_clip.checkpoint), model_config=rand_clip.config, device="cpu")
    built = ZeroShotClassifier(gelu).build(["cat", "dog"], "simple", use_cache=False)
    older = Classifier(built.weights, built.labels, {**built.meta, "fingerprint": gelu.fingerprint.split("|")[0]})
    older.save(tmp_path / "older.clf")
    Classifier.load(tmp_path / "older.clf").check_model(gelu.fingerprint, gelu.name)

    quick_config = config_like(rand_clip.config, tmp_path / "quick" / rand_clip.config.name, quick_gelu=True)
    quick = load_model(None, str(rand_clip.checkpoint), model_config=quick_config, device="cpu")
    with pytest.raises(ClassifierError, match="the same weights in a model built otherwise"):
        built.check_model(quick.fingerprint, quick.name)


def test_a_hub_model_whose_download_was_cut_short_says_so(
    rand_clip: ModelFiles, photos: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The config cached without the weights is not a cached model: say what to do, as for one not cached."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    publish(tmp_path / "hub", rand_clip.config, seed=0, commit="a" * 40)
    (tmp_path / "hub" / "models--me--tiny" / "snapshots" / ("a" * 40) / "open_clip_model.safetensors").unlink()
    result = CliRunner().invoke(app, ["classify", str(photos[0]), "-l", "a,b", "-m", "hf-hub:me/tiny"])
    assert result.exit_code == 2
    assert "not in the local cache and HF_HUB_OFFLINE is set" in result.stderr


def shapes_classifier(model: ModelFiles, path: Path) -> Path:
    """A classifier file of two shapes, built by `clipzs build-classifier` for ``model``."""
    args = ["build-classifier", "-l", "red circle,blue square", "-t", "simple", "-o", str(path), *model.args]
    built = CliRunner().invoke(app, args)
    assert built.exit_code == EXIT_OK, built.output
    return path


def test_a_config_copied_under_another_name_is_the_same_model(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    """The config's file name names the model, but open_clip builds the model from the config's contents: a copy
    under another name is the same model, and its classifier files are used with it."""
    clf = shapes_classifier(tiny_clip, tmp_path / "shapes.clf")
    drawn_folder(tmp_path / "images", per_class=1, seed=3)
    (tmp_path / "copy").mkdir()
    copy = shutil.copyfile(tiny_clip.config, tmp_path / "copy" / "tiny_clip_v1.json")
    args = ["-p", str(tiny_clip.checkpoint), "--device", "cpu", "-c", str(clf)]
    result = CliRunner().invoke(app, ["classify", str(tmp_path / "images"), "--model-config", str(copy), *args])
    assert result.exit_code == EXIT_OK, result.output

    changed = config_like(tiny_clip.config, tmp_path / "changed" / "tiny_clip_v1.json", quick_gelu=True)
    result = CliRunner().invoke(app, ["classify", str(tmp_path / "images"), "--model-config", str(changed), *args])
    assert result.exit_code == 2 and "the same weights in a model built otherwise" in result.stderr
    assert str(tiny_clip.config.resolve()) in result.stderr  # the config it was built with, to load it


def test_a_classifier_whose_model_config_is_gone_says_so(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    """After the model's folder is moved, the file's model (named after its config) is no open_clip model: say
    that the config it records is gone and --model-config gives it."""
    (tmp_path / "a").mkdir()
    moved = ModelFiles(
        shutil.copyfile(tiny_clip.config, tmp_path / "a" / tiny_clip.config.name),
        shutil.copyfile(tiny_clip.checkpoint, tmp_path / "a" / tiny_clip.checkpoint.name),
    )
    clf = shapes_classifier(moved, tmp_path / "shapes.clf")
    (tmp_path / "a").rename(tmp_path / "b")
    drawn_folder(tmp_path / "images", per_class=1, seed=3)
    args = ["classify", str(tmp_path / "images"), "-c", str(clf), "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "-p", str(tmp_path / "b" / tiny_clip.checkpoint.name)])
    assert result.exit_code == 2
    assert f"model config {tmp_path / 'a' / tiny_clip.config.name}, which no longer exists" in result.stderr
    assert "--model-config" in result.stderr and "unknown model" not in result.stderr
    config = str(tmp_path / "b" / tiny_clip.config.name)
    result = CliRunner().invoke(
        app, [*args, "-p", str(tmp_path / "b" / tiny_clip.checkpoint.name), "--model-config", config]
    )
    assert result.exit_code == EXIT_OK, result.output


def test_eval_runs_classifier_files_on_their_own_model_beside_a_zero_shot_run(
    tiny_clip: ModelFiles, rand_clip: ModelFiles, tmp_path: Path
) -> None:
    """`-m/-p` (and --model-config) add a zero-shot run: a -c file beside it loads the model it records."""
    clf = shapes_classifier(tiny_clip, tmp_path / "shapes.clf")
    for label in ("red circle", "blue square"):
        folder = tmp_path / "data" / label.replace(" ", "_")
        folder.mkdir(parents=True)
        draw(label, np.random.default_rng(0)).save(folder / "0.png")
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "data"), "-c", str(clf), "-f", "json", *rand_clip.args])
    assert result.exit_code == EXIT_OK, result.output
    runs = json.loads(result.stdout)["runs"]
    assert len(runs) == 2


def test_a_hand_made_classifier_is_told_what_meta_it_needs(tiny: ZeroShotClassifier) -> None:
    """Library advice for a library user: the fingerprint its meta lacks, not command-line options."""
    from clipzs.classifier import Classifier

    assert tiny.classifier is not None
    made = Classifier(weights=tiny.classifier.weights, labels=tiny.classifier.labels)
    with pytest.raises(ClassifierError) as refused:
        ZeroShotClassifier(tiny.model).use(made)
    assert "meta={'fingerprint': zsc.model.fingerprint}" in str(refused.value)
    assert "--model" not in str(refused.value)
    ZeroShotClassifier(tiny.model).use(dataclasses.replace(made, meta={"fingerprint": tiny.model.fingerprint}))
