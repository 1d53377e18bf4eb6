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
import os
import stat
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from clipzs.images import ELONGATED_RATIO, ORIENTATION_TAG

X_RESOLUTION_TAG = 0x011A
MAX_FILE_BYTES = 1 << 30
"""Larger files are left to the CPU path rather than read whole into memory on a decode thread."""
FILES_PER_TASK = 16
"""Files a decode thread reads per task for the device: on 2 CPU threads, 14,600 files/s against 10,500 with a
task per file (``benchmarks/bench.py --parts stages``)."""


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
    """The file's bytes when the device can decode it like the CPU path; None to decode it on the CPU.

    Decode threads run this for every file. ``plain_jpeg`` answers for most files by walking the JPEG's
    segment headers; Pillow is asked only where it cannot tell, since Pillow's parser is Python holding the
    GIL, which many threads then queue for (measured: per-file Pillow checks on 2 to 32 threads ran 2 to 3
    times slower than on one). Only regular files of a JPEG's size that start like a JPEG are read whole: what
    ``stat`` says is no regular file (a pipe, a device) is not even opened, and left to the CPU path, which reads
    a ``<(...)`` pipe once and reports any other (opening a FIFO would let a writer waiting on it go on).
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # replaced by a FIFO since: must not block, nor lose bytes
    except (OSError, ValueError):
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or not 3 <= info.st_size <= MAX_FILE_BYTES:
            return None
        data = bytearray(info.st_size)  # writable, so torch can share it without a copy
        with open(fd, "rb", closefd=False) as f:
            if f.readinto(memoryview(data)[:3]) != 3 or data[:3] != b"\xff\xd8\xff":
                return None  # not a JPEG: not worth reading whole here
            if f.readinto(memoryview(data)[3:]) != len(data) - 3 or f.read(1):
                return None  # the file changed while it was read: the CPU path reads it again
    except (OSError, MemoryError):
        return None
    finally:
        os.close(fd)
    plain = plain_jpeg(data)
    if plain is None:
        plain = _pillow_says_plain(data)
    return JpegBytes(path, torch.frombuffer(data, dtype=torch.uint8)) if plain else None


def _pillow_says_plain(data: bytes | bytearray) -> bool:
    """Pillow's answer to ``plain_jpeg``'s question: a JPEG in RGB or L, with no EXIF orientation to apply."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # as ``images.load_image``
            with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:  # no other opener need see the bytes
                return (
                    image.format == "JPEG"
                    and image.mode in ("RGB", "L")
                    and image.getexif().get(ORIENTATION_TAG, 1) == 1
                )
    except Exception:  # noqa: BLE001 - anything odd is left to the CPU path, which reports it properly
        return False


_SOF_HUFFMAN = (0xC0, 0xC1, 0xC2)  # baseline, extended and progressive Huffman: what nvJPEG decodes
_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
"""Start-of-frame markers: every 0xFFCn but the Huffman and arithmetic tables and 0xFFC8 (reserved)."""
_SEGMENTS = frozenset({*range(0xC0, 0xD0), 0xDA, 0xDB, 0xDC, 0xDD, 0xDF, *range(0xE0, 0xF0), 0xFE} - {0xC8})
"""Markers that Pillow, like the JPEG standard, reads as a length and a segment (0xFFDE it reads as a frame)."""


def plain_jpeg(data: bytes | bytearray) -> bool | None:
    """Whether Pillow would open ``data`` as a JPEG in RGB or L with no orientation to apply, from the segment
    headers alone: True or False where they settle it, None where Pillow must be asked (Adobe, XMP, Photoshop or
    multi-picture segments, several EXIF blocks or one out of the ordinary, a 12-bit, arithmetic-coded, empty or
    oversized frame). Never True where Pillow would say otherwise; tests compare the two on crafted and randomly
    damaged files."""
    if not data.startswith(b"\xff\xd8\xff"):
        return False  # not a JPEG to Pillow either
    pos, size = 2, len(data)
    orientation: int | None = None  # from the EXIF block
    frame: bytes | bytearray = b""
    while True:
        if pos + 4 > size or data[pos] != 0xFF:
            return None  # cut short, or bytes between segments that Pillow would skip: let it
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker not in _SEGMENTS:
            return None  # a marker Pillow does not know, reads without a length, or reads as a frame header
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segment = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(segment) != length - 2 or not _pillow_parses(marker, segment):
            return None
        if marker == 0xDA:  # start of scan: Pillow has read every header it reads
            break
        if marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
            if orientation is not None:
                return None  # Pillow joins the blocks
            orientation = _exif_orientation(bytes(segment[6:]))
            if orientation is None:
                return None
        elif marker == 0xE1 and b"Orientation" in segment:
            return None  # XMP: Pillow reads its orientation wherever EXIF's does not reach
        elif (marker == 0xE2 and segment.startswith(b"MPF\x00")) or marker in (0xED, 0xEE):
            return None  # multi-picture (Pillow may open it as MPO), Photoshop, Adobe (colour transforms)
        elif marker in _FRAMES:
            if frame or marker not in _SOF_HUFFMAN or segment[0] != 8:
                return None
            frame = segment
        pos += 2 + length
    if not frame:
        return None
    height, width, components = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big"), frame[5]
    limit = Image.MAX_IMAGE_PIXELS
    if not height or not width or (limit and width * height > 2 * limit):
        return None  # Pillow refuses it (and the CPU path says why)
    if components not in (1, 3):
        return False  # CMYK and the like: the CPU path converts them
    return orientation in (None, 1)


def _pillow_parses(marker: int, segment: bytes | bytearray) -> bool:
    """Whether Pillow's own parsing of the segments it reads field by field (JFIF, quantisation tables, frame
    header, ICC profile chunks) would go through; where it would not, Pillow refuses the file."""
    if marker == 0xE0 and segment.startswith(b"JFIF"):
        return len(segment) >= 7  # the version it reads unguarded
    if marker == 0xE2 and segment.startswith(b"ICC_PROFILE\x00"):
        return len(segment) >= 14  # the chunk count it reads from the first chunk
    if marker == 0xDB:  # quantisation tables: 65 or 129 bytes each
        pos = 0
        while pos < len(segment):
            pos += 1 + (64 if segment[pos] < 16 else 128)
        return pos == len(segment)
    if marker in _FRAMES:
        return len(segment) >= 6 and len(segment) == 6 + 3 * segment[5] and segment[5] > 0
    return True


def _exif_orientation(tiff: bytes) -> int | None:
    """The orientation tag (0x0112) of an EXIF block's first IFD (1, upright, where it has none), or None where
    the block is out of the ordinary and Pillow must decide: an odd structure, an odd orientation entry, or an
    X resolution that is not a fraction (Pillow reads it while opening, and fails on some such)."""
    order: Literal["little", "big"]
    if tiff.startswith(b"II*\x00"):
        order = "little"
    elif tiff.startswith(b"MM\x00*"):
        order = "big"
    else:
        return None
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd < 8 or ifd + 2 > len(tiff):
        return None
    count = int.from_bytes(tiff[ifd : ifd + 2], order)
    entries = tiff[ifd + 2 : ifd + 2 + 12 * count]
    if len(entries) != 12 * count:
        return None
    orientation = None
    for i in range(0, len(entries), 12):
        tag, kind = int.from_bytes(entries[i : i + 2], order), int.from_bytes(entries[i + 2 : i + 4], order)
        if tag == X_RESOLUTION_TAG and kind != 5:  # not a RATIONAL
            return None
        if tag == ORIENTATION_TAG:
            if orientation is not None or kind != 3 or int.from_bytes(entries[i + 4 : i + 8], order) != 1:
                return None  # twice, or not the one SHORT that cameras write
            orientation = int.from_bytes(entries[i + 8 : i + 10], order)
    return 1 if orientation is None else orientation


def decode_batch(
    jpegs: Sequence[JpegBytes], device: torch.device, geometry: DeviceGeometry
) -> list[torch.Tensor | None]:
    """Decode, resize and crop on the device: uint8 [size, size, 3] each, or None where decoding failed or the
    image is far longer than wide (``_elongated``)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def settle() -> None:
        """Let the current stream finish first. torchvision's CUDA decoder writes its images on a stream of its
        own, without waiting for the current one, into memory it takes from the current stream's pool: memory
        that kernels still queued there (resizing the image before) may be about to read or write."""
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()

    def one(jpeg: JpegBytes) -> torch.Tensor | None:
        settle()
        try:
            image = decode_jpeg(jpeg.data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            return None
        return None if _elongated(image) else geometry.apply(image)

    with warnings.catch_warnings():  # torchvision 0.29 announces that its decoders move to TorchCodec
        warnings.simplefilter("ignore", DeprecationWarning)
        settle()
        try:
            decoded = decode_jpeg([j.data for j in jpegs], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad file fails the whole batch: decode them one by one instead
            return [one(jpeg) for jpeg in jpegs]
    resized = iter(geometry.apply_many([image for image in decoded if not _elongated(image)]))
    return [None if _elongated(image) else next(resized) for image in decoded]


def _elongated(image: torch.Tensor) -> bool:
    """Whether an image is more than ``ELONGATED_RATIO`` times as long as wide: resizing its shorter side to the
    model's size would make a huge image (a 1 x 65,535 JPEG: 224 x 14.7 million pixels), so it is left to the
    CPU path, which resizes only the part the crop keeps (``images.resized_crop``)."""
    height, width = image.shape[-2:]
    return max(height, width) > ELONGATED_RATIO * min(height, width)


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
