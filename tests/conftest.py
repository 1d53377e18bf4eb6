"""Shared fixtures: an isolated cache per test, models made here (never downloaded), real photos."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.corpus import write_photos

if TYPE_CHECKING:
    from clipzs.api import ZeroShotClassifier

MODELS = Path(__file__).parent / "models"
TINYCLIP = Path(__file__).parent / "tinyclip"


@dataclass(frozen=True)
class ModelFiles:
    """A model as a user passes it: --model-config CONFIG --pretrained CHECKPOINT."""

    config: Path
    checkpoint: Path

    @property
    def name(self) -> str:
        return self.config.stem

    @property
    def args(self) -> list[str]:
        """CLI options for this model, on the CPU in fp32 (exact) even where a GPU is present."""
        return ["--model-config", str(self.config), "--pretrained", str(self.checkpoint), "--device", "cpu"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own cache directory and never touches the user's or the network: the user's model
    downloads (Hugging Face's cache, ~/.cache/clip) and settings (a Ray cluster, no server) do not leak in."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CLIPZS_CACHE_DIR", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    home = tmp_path_factory.mktemp("home")  # (not in tmp_path, which tests fill with what they look at)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(home / ".cache" / "huggingface"))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / ".cache" / "huggingface" / "hub"))
    if "huggingface_hub.constants" in sys.modules:  # (it reads the environment once, when imported)
        monkeypatch.setattr(sys.modules["huggingface_hub.constants"], "HF_HUB_CACHE", os.environ["HF_HUB_CACHE"])
    for name in ("RAY_ADDRESS", "CLIPZS_NO_SERVER"):
        monkeypatch.delenv(name, raising=False)
    return cache


def _random_model(config: Path, folder: Path, suffix: str = ".pt", seed: int = 0) -> ModelFiles:
    """A randomly initialised open_clip model saved as a plain state dict (or safetensors)."""
    import open_clip
    import torch

    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    model = open_clip.create_model(config.stem)
    checkpoint = folder / f"{config.stem}{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
    else:
        torch.save(model.state_dict(), checkpoint)
    return ModelFiles(config, checkpoint)


@pytest.fixture(scope="session")
def rand_clip(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    """A small randomly initialised CLIP (softmax scores), saved with torch.save."""
    return _random_model(MODELS / "rand-clip.json", tmp_path_factory.mktemp("rand-clip"))


@pytest.fixture(scope="session")
def rand_sigmoid(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    """A small randomly initialised SigLIP-style model (it has a logit_bias: sigmoid scores), as safetensors."""
    return _random_model(MODELS / "rand-sigmoid.json", tmp_path_factory.mktemp("rand-sigmoid"), ".safetensors")


@pytest.fixture(scope="session")
def rand_nocausal(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    """A text tower without a causal mask, pooled at the last position: the trimmed text path must not apply."""
    return _random_model(MODELS / "rand-nocausal.json", tmp_path_factory.mktemp("rand-nocausal"))


@pytest.fixture(scope="session")
def tiny_clip() -> ModelFiles:
    """The tiny CLIP this repo trained on drawn shapes (tests/tinyclip/train.py remakes it)."""
    return ModelFiles(TINYCLIP / "tiny-clip.json", TINYCLIP / "tiny-clip.safetensors")


@pytest.fixture(scope="module")
def tiny(tiny_clip: ModelFiles) -> ZeroShotClassifier:
    """The tiny CLIP on the CPU with a zero-shot classifier of its shape classes."""
    from clipzs.api import ZeroShotClassifier
    from tests.tinyclip.shapes import CLASSES

    zsc = ZeroShotClassifier.from_pretrained(
        None, str(tiny_clip.checkpoint), model_config=tiny_clip.config, device="cpu"
    )
    zsc.build(CLASSES, "simple", use_cache=False)
    return zsc


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Real photos from scikit-image and scikit-learn, as JPEG files."""
    return write_photos(tmp_path_factory.mktemp("photos"))


def jsonl(text: str) -> list[dict[str, object]]:
    """Parse JSON Lines output, one object per non-empty line."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]
