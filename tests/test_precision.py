"""--precision: which precisions each device runs, the bf16 copy of the image tower, and what it leaves alone."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from clipzs.api import ZeroShotClassifier
from clipzs.cli import app
from clipzs.device import cache_tag, resolve_precision
from clipzs.errors import EXIT_USAGE, UsageError
from clipzs.model import load_model
from tests.conftest import ModelFiles

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


def test_auto_is_fp16_on_cuda_and_fp32_elsewhere() -> None:
    assert resolve_precision(CPU) == resolve_precision(MPS) == "fp32"
    assert resolve_precision(CUDA) == "fp16"
    assert resolve_precision(CPU, "bf16") == resolve_precision(CUDA, "bf16") == "bf16"
    assert resolve_precision(CPU, "int8") == "int8"


@pytest.mark.parametrize(
    ("device", "precision", "message"),
    [(CUDA, "int8", "int8 is for the CPU"), (CPU, "fp16", "fp16 is for CUDA"), (MPS, "bf16", "not on mps")],
)
def test_a_precision_the_device_cannot_run_is_a_usage_error(device: torch.device, precision: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        resolve_precision(device, precision)


def test_feature_cache_names_keep_their_earlier_spelling() -> None:
    """Features cached before --precision existed are still found; each precision has its own name."""
    assert cache_tag(CPU, "fp32") == "fp32"
    assert cache_tag(CUDA, "fp16") == "fp16-autocast"
    assert cache_tag(CPU, "int8") == "int8-dynamic"
    assert len({cache_tag(CPU, "bf16"), cache_tag(CUDA, "bf16"), cache_tag(CUDA, "fp32")} | {"fp32"}) == 3


def test_bf16_copies_the_image_tower_and_leaves_the_model_alone(rand_clip: ModelFiles, photos: list[Path]) -> None:
    fp32 = load_model(None, str(rand_clip.checkpoint), model_config=rand_clip.config, device="cpu")
    expected = copy.deepcopy(fp32.model.visual).to(torch.bfloat16)
    bf16 = fp32.with_precision("bf16")
    assert bf16.precision == "bf16" and fp32.precision == "fp32"
    assert all(p.dtype == torch.float32 for p in fp32.model.parameters())  # a server's model stays fp32
    assert bf16.model.transformer is fp32.model.transformer  # the text tower is shared, not copied
    got = dict(bf16.model.visual.state_dict())
    for name, value in expected.state_dict().items():
        assert got[name].dtype == value.dtype and torch.equal(got[name], value), name
    assert torch.equal(bf16.encode_text(["a photo of a cat."]), fp32.encode_text(["a photo of a cat."]))

    zsc = ZeroShotClassifier(fp32)
    zsc_bf16 = ZeroShotClassifier(bf16)
    a = torch.stack([x for _, x in zsc.encode_paths(photos, use_cache=False)])  # type: ignore[misc]
    b = torch.stack([x for _, x in zsc_bf16.encode_paths(photos, use_cache=False)])  # type: ignore[misc]
    assert b.dtype == torch.float32 and not torch.equal(a, b)
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99


def test_asking_for_the_precision_it_has_gives_the_same_model(rand_clip: ModelFiles) -> None:
    fp32 = load_model(None, str(rand_clip.checkpoint), model_config=rand_clip.config, device="cpu")
    assert fp32.with_precision("fp32") is fp32 and fp32.with_precision("auto") is fp32


@pytest.mark.parametrize(("precision", "message"), [("fp16", "fp16 is for CUDA"), ("fp64", "unknown precision")])
def test_the_cli_refuses_a_precision_before_loading_the_model(
    rand_clip: ModelFiles, photos: list[Path], monkeypatch: pytest.MonkeyPatch, precision: str, message: str
) -> None:
    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("clipzs.api.load_model", no_loading)
    result = CliRunner().invoke(
        app, ["classify", str(photos[0]), "-l", "a,b", "--precision", precision, *rand_clip.args]
    )
    assert result.exit_code == EXIT_USAGE
    assert message in result.output and "Traceback" not in result.output


def test_a_server_keeps_a_precision_copy_with_its_model_without_counting_it(
    tiny_clip: ModelFiles, rand_clip: ModelFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room for one model, asking for bf16 and int8 copies must not push out the model they copy."""
    from clipzs import model

    loads: list[str] = []
    real = model._load_model

    def counted(name: str | None, pretrained: str, **kwargs: Any) -> model.LoadedModel:
        loads.append(pretrained)
        return real(name, pretrained, **kwargs)

    def tiny(precision: str) -> model.LoadedModel:
        return model.load_model(
            None, str(tiny_clip.checkpoint), model_config=tiny_clip.config, device="cpu", precision=precision
        )

    monkeypatch.setattr(model, "_load_model", counted)
    model.keep_loaded(1)
    try:
        got = [tiny(p) for p in ("auto", "bf16", "int8", "fp32")]
        assert [m.precision for m in got] == ["fp32", "bf16", "int8", "fp32"]
        assert got[0] is got[3] and len(loads) == 1  # loaded once; the copies made from it, kept beside it
        assert tiny("bf16") is got[1]
        model.load_model(None, str(rand_clip.checkpoint), model_config=rand_clip.config, device="cpu")
        tiny("bf16")
        assert len(loads) == 3  # another model took the one place, and the tiny model's copies went with it
    finally:
        model.keep_loaded(0)


@pytest.mark.parametrize("native", [True, False, None])
def test_bf16_on_a_cpu_without_bfloat16_arithmetic_warns(
    tiny_clip: ModelFiles, photos: list[Path], monkeypatch: pytest.MonkeyPatch, native: bool | None
) -> None:
    monkeypatch.setattr("clipzs.device.cpu_multiplies_bf16", lambda: native)
    result = CliRunner().invoke(
        app, ["classify", str(photos[0]), "-l", "a,b", "--precision", "bf16", "-f", "jsonl", *tiny_clip.args]
    )
    assert result.exit_code == 0, result.output
    assert ("no bfloat16 arithmetic" in result.stderr) is (native is False)  # unknown (not Linux): no warning


def test_the_cpu_flags_are_read_from_proc_cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clipzs import device

    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(device, "Path", lambda _: cpuinfo)
    for text, expected in [
        ("processor : 0\nflags : fpu sse avx512f avx512_bf16 amx_tile\n", True),
        ("processor : 0\nflags : fpu sse avx2\n", False),
        ("processor : 0\nFeatures : fp asimd bf16 i8mm\n", True),  # Arm
        ("processor : 0\n", None),
    ]:
        cpuinfo.write_text(text)
        assert device.cpu_multiplies_bf16() is expected, text
    cpuinfo.unlink()
    assert device.cpu_multiplies_bf16() is None  # not Linux
