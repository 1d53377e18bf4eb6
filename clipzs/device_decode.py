"""JPEG decoding on the model's device (nvJPEG through torchvision on CUDA), for when CPU decoders cannot keep
a GPU busy: a ViT-B/32 on one H200 encodes over ten thousand images a second, far more than 16 CPU cores
decode.

Decode threads only read the file and check its header; a batch of JPEGs is then decoded, resized and cropped
on the device. Anything this path does not handle exactly like the CPU path (another format, an EXIF rotation,
CMYK, a header Pillow refuses) goes through the CPU decoder instead, and so does a file the device cannot
decode, so errors are reported with the same reasons. Resizing on the device is the same antialiased bicubic
filter as Pillow's, not the same code: scores differ slightly, and the feature cache keeps them apart.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class JpegBytes:
    """A JPEG file's bytes, checked to be decodable on the device exactly as the CPU path would."""

    path: Path
    data: torch.Tensor  # uint8 [n]


@dataclass(frozen=True)
class DeviceGeometry:
    """open_clip's geometry for the usual preprocess: shorter side to ``size`` (bicubic), centre crop."""

    size: int

    @classmethod
    def of(cls, geometry: Any) -> DeviceGeometry | None:
        """Recognise Compose([Resize(int, bicubic), CenterCrop(size), (convert mode)]); None otherwise."""
        from torchvision.transforms import CenterCrop, InterpolationMode, Resize

        steps = list(getattr(geometry, "transforms", []))
        if len(steps) < 2 or not isinstance(steps[0], Resize) or not isinstance(steps[1], CenterCrop):
            return None
        resize, crop = steps[0], steps[1]
        size = resize.size if isinstance(resize.size, int) else (resize.size[0] if len(resize.size) == 1 else None)
        rest_ok = all(type(step).__name__ == "MaybeConvertMode" for step in steps[2:])
        if (
            size is None
            or resize.interpolation != InterpolationMode.BICUBIC
            or resize.max_size is not None
            or tuple(crop.size) != (size, size)
            or not rest_ok
        ):
            return None
        return cls(size)

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 [3, H, W] (or a batch [N, 3, H, W]) on the device -> uint8 [(N,) size, size, 3], as the PIL
        geometry would give."""
        from torchvision.transforms.v2 import functional as F

        resized = F.resize(image, [self.size], interpolation=F.InterpolationMode.BICUBIC, antialias=True)
        return F.center_crop(resized, [self.size, self.size]).movedim(-3, -1)

    def apply_many(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``apply`` to each image, resizing images of the same size together: one call per size instead of
        one per image, which is what bounds a GPU that encodes thousands of images a second."""
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(tuple(image.shape), []).append(i)
        out: list[torch.Tensor] = list(images)
        for indices in by_size.values():
            batch = self.apply(torch.stack([images[i] for i in indices]))
            for i, pixels in zip(indices, batch, strict=True):
                out[i] = pixels
        return out


def read_jpeg(path: Path) -> JpegBytes | None:
    """The file's bytes when the device can decode it like the CPU path; None to decode it on the CPU."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                return None
            if image.getexif().get(ORIENTATION_TAG, 1) != 1:
                return None
    except Exception:  # noqa: BLE001 - anything odd is left to the CPU path, which reports it properly
        return None
    return JpegBytes(path, torch.frombuffer(bytearray(data), dtype=torch.uint8))


def decode_batch(
    jpegs: Sequence[JpegBytes], device: torch.device, geometry: DeviceGeometry
) -> list[torch.Tensor | None]:
    """Decode, resize and crop on the device: uint8 [size, size, 3] each, or None where decoding failed."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def one(jpeg: JpegBytes) -> torch.Tensor | None:
        try:
            return geometry.apply(decode_jpeg(jpeg.data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            return None

    with warnings.catch_warnings():  # torchvision 0.29 announces that its decoders move to TorchCodec
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            decoded = decode_jpeg([j.data for j in jpegs], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad file fails the whole batch: decode them one by one instead
            return [one(jpeg) for jpeg in jpegs]
    return list(geometry.apply_many(decoded))


def resolve(
    items: Sequence[Any], device: torch.device, geometry: DeviceGeometry, cpu: Callable[[Path], Any]
) -> list[Any]:
    """Replace each JpegBytes in ``items`` by its decoded pixels, or by ``cpu(path)`` where the device failed."""
    jpegs = [item for item in items if isinstance(item, JpegBytes)]
    if not jpegs:
        return list(items)
    decoded = iter(decode_batch(jpegs, device, geometry))
    out: list[Any] = []
    for item in items:
        if isinstance(item, JpegBytes):
            pixels = next(decoded)
            out.append(pixels if pixels is not None else cpu(item.path))
        else:
            out.append(item)
    return out
