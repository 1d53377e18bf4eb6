"""Decoding JPEGs on the model's device (nvJPEG on CUDA), exercised here on the CPU through the same code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clipzs.api import ZeroShotClassifier
from clipzs.device_decode import DeviceGeometry, read_jpeg
from clipzs.errors import UsageError
from tests.conftest import ModelFiles
from tests.corpus import write_bad_inputs, write_tricky_images
from tests.test_tiny_clip import CLASSES, MIN_ACCURACY, drawn_folder


@pytest.fixture(scope="module")
def tiny(tiny_clip: ModelFiles) -> ZeroShotClassifier:
    zsc = ZeroShotClassifier.from_pretrained(
        None, str(tiny_clip.checkpoint), model_config=tiny_clip.config, device="cpu"
    )
    zsc.build(CLASSES, "simple", use_cache=False)
    return zsc


def test_device_decoding_keeps_top_1(tiny: ZeroShotClassifier, tmp_path: Path) -> None:
    truth = drawn_folder(tmp_path / "shapes", per_class=5, seed=21, size=96, fmt="jpg")
    paths = list(truth)
    on_device = list(tiny.classify_paths(paths, use_cache=False, device_decode=True))
    on_cpu = list(tiny.classify_paths(paths, use_cache=False, device_decode=False))
    assert [p.label for p in on_device] == [p.label for p in on_cpu]
    assert max(abs(a.score - b.score) for a, b in zip(on_device, on_cpu, strict=True)) < 0.05  # type: ignore[operator]
    assert sum(p.label == truth[Path(p.path)] for p in on_device) / len(paths) >= MIN_ACCURACY


def test_what_the_device_cannot_do_exactly_goes_to_the_cpu(tiny: ZeroShotClassifier, tmp_path: Path) -> None:
    """Rotated, CMYK, PNG, corrupt: decoded (or reported) by the CPU path, with the same answers and reasons."""
    tricky = write_tricky_images(tmp_path / "tricky")
    bad = write_bad_inputs(tmp_path / "bad")
    assert read_jpeg(next(p for p in tricky if p.name == "exif-rotated.jpg")) is None
    assert read_jpeg(next(p for p in tricky if p.name == "cmyk.jpg")) is None
    paths = [*tricky, *bad]
    on_device = list(tiny.classify_paths(paths, use_cache=False, device_decode=True))
    on_cpu = list(tiny.classify_paths(paths, use_cache=False, device_decode=False))
    assert [(p.path, p.error) for p in on_device] == [(p.path, p.error) for p in on_cpu]
    assert sum(p.error is not None for p in on_device) == len(bad)


def test_geometry_matches_the_pil_preprocess(tiny: ZeroShotClassifier, photos: list[Path]) -> None:
    from torchvision.io import ImageReadMode, decode_jpeg

    pixels = tiny.model.pixels
    assert pixels is not None
    geometry = DeviceGeometry.of(pixels.geometry)
    assert geometry is not None and geometry.size == tiny.model.image_size
    from PIL import Image

    for photo in photos[:3]:
        expected = torch.from_numpy(tiny.model.prepare(Image.open(photo).convert("RGB"))).float()  # type: ignore[arg-type]
        data = torch.frombuffer(bytearray(photo.read_bytes()), dtype=torch.uint8)
        got = geometry.apply(decode_jpeg(data, mode=ImageReadMode.RGB)).float()
        assert got.shape == expected.shape
        assert (got - expected).abs().mean().item() < 3  # same filter, other code: a few levels at most


def test_images_of_one_size_are_resized_together_with_the_same_result(photos: list[Path]) -> None:
    from torchvision.io import ImageReadMode, decode_jpeg

    from clipzs.device_decode import JpegBytes, decode_batch

    jpegs = [JpegBytes(p, torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8)) for p in photos]
    decoded = [decode_jpeg(j.data, mode=ImageReadMode.RGB) for j in jpegs]
    mixed = [decoded[0], decoded[1], decoded[0].flip(-1), decoded[2], decoded[1]]  # sizes repeat, out of order
    assert len({tuple(x.shape) for x in mixed}) < len(mixed)
    geometry = DeviceGeometry(64)
    one_by_one = [geometry.apply(image) for image in mixed]
    together = geometry.apply_many(mixed)
    assert all(torch.equal(a, b) for a, b in zip(one_by_one, together, strict=True))
    assert all(x.shape == (64, 64, 3) for x in together)
    batch = decode_batch(jpegs[:3], torch.device("cpu"), geometry)
    assert all(torch.equal(a, b) for a, b in zip(batch, [*one_by_one[:2], one_by_one[3]], strict=True))  # type: ignore[arg-type]


def test_device_decoding_needs_the_usual_preprocess(tiny: ZeroShotClassifier) -> None:
    pixels = tiny.model.pixels
    tiny.model.pixels = None
    try:
        with pytest.raises(UsageError, match="resize-and-crop"):
            list(tiny.classify_paths([Path("x.jpg")], device_decode=True))
    finally:
        tiny.model.pixels = pixels
