"""Finding images and decoding them robustly into RGB: the file-system edge of the pipeline, no torch."""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from PIL import Image, ImageOps, UnidentifiedImageError

from clipzs.errors import ImageError, UsageError

BASE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga"}
)
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".avif"})
DRAFT_MIN_REDUCTION = 4
"""A JPEG is decoded at reduced scale only when it is at least this many times the size asked for: below
that, the saving is small and the image is decoded whole, exactly as Pillow's plain open would."""
ORIENTATION_TAG = 0x0112
S = TypeVar("S")
T = TypeVar("T")
_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"II*\0": "TIFF",
    b"MM\0*": "TIFF",
    b"BM": "BMP",
}
NEUTRAL_BACKGROUND = (123, 117, 104)
"""Transparent areas are composited on CLIP's mean colour, which the model's normalisation maps to zero."""


@functools.cache
def image_extensions() -> frozenset[str]:
    """File extensions picked up when walking folders; HEIC/AVIF when pillow-heif is installed."""
    try:
        import pillow_heif  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return BASE_EXTENSIONS
    pillow_heif.register_heif_opener()
    if hasattr(pillow_heif, "register_avif_opener"):
        pillow_heif.register_avif_opener()
    return BASE_EXTENSIONS | HEIF_EXTENSIONS


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key putting 'img2' before 'img10'."""
    return tuple((0, int(part)) if part.isdigit() else (1, part.lower()) for part in re.split(r"(\d+)", text))


def walk(folder: Path) -> list[Path]:
    """Image files below a folder, recursively, in natural order.

    Hidden files and folders are skipped, and so are pipes, sockets and devices: opening a pipe waits for a
    writer, which a folder scan must not do (named on the command line, one is read, as ``<(...)`` needs).
    Symbolic links to files are followed; to folders, not (a link loop cannot trap the walk). An unreadable
    subfolder is passed over, as ``os.walk`` does.
    """
    extensions = image_extensions()
    found: list[Path] = []
    pending = [os.fspath(folder)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    elif os.path.splitext(entry.name)[1].lower() in extensions and (
                        entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path))
                    ):  # a regular file, or a link to one; a broken link too, to be reported as missing
                        found.append(Path(entry.path))
        except OSError:
            continue
    return sorted(found, key=lambda p: natural_key(p.relative_to(folder).as_posix()))


def read_path_list(stream: BinaryIO) -> list[str]:
    """Paths from a stream, one per line (LF or CRLF), or NUL-separated when the stream holds a NUL (find -print0).
    Not ``splitlines``: that also splits at form feeds and U+2028, which file names may hold."""
    data = os.fsdecode(stream.read())
    parts = data.split("\0") if "\0" in data else [line.removesuffix("\r") for line in data.split("\n")]
    return [p for p in parts if p]


def discover(inputs: Iterable[str], stdin: BinaryIO | None = None) -> Iterator[Path]:
    """Expand command-line inputs into image paths, in order.

    A folder yields its image files (see ``walk``); '-' yields the paths listed on ``stdin``; anything else
    is yielded as given, so that a missing or unreadable file is reported for that file when it is decoded.
    """
    for item in inputs:
        if item == "-":
            if stdin is None:
                raise UsageError("'-' stands for paths read from stdin, which only `clipzs classify` and `sort` read")
            yield from (Path(p) for p in read_path_list(stdin))
        elif os.path.isdir(item):
            yield from walk(Path(item))
        else:
            yield Path(item)


@dataclass(frozen=True)
class Draft:
    """How a model resizes an image first (bicubic), which lets a large JPEG be decoded at reduced scale and
    resized to the very same size in one step: its shorter side to ``size`` as torchvision's ``Resize(size)``
    does, or with ``squash`` both sides, as ``Resize((size, size))``."""

    size: int
    squash: bool = False

    def target(self, width: int, height: int) -> tuple[int, int]:
        """The size the model's resize gives an upright image of ``width`` x ``height``."""
        if self.squash:
            return self.size, self.size
        if width <= height:
            return self.size, int(self.size * height / width)
        return int(self.size * width / height), self.size

    @property
    def key(self) -> str:
        """What the decoded pixels depend on, for the feature cache's key."""
        return f"{'squash' if self.squash else 'shorter'}={self.size}"


def load_image(path: Path, *, draft: Draft | None = None) -> Image.Image:
    """Decode the first frame of an image file into an upright RGB image, or raise ImageError with the reason.

    ``draft``: a JPEG at least ``DRAFT_MIN_REDUCTION`` times the model's input is decoded at a reduced scale
    (1/2 to 1/8; libjpeg scales in the DCT domain, several times cheaper than decoding a 12-MP photo whole)
    and resized at once to the size the model's resize would give the whole image. The reduced image covers
    the whole one to within a fraction of a pixel (a partly filled last block), which the resize maps exactly,
    so the model crops the same part of the picture as from the whole image.
    """
    image_extensions()  # registers the HEIF/AVIF openers for files named directly, too
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if draft and image.format == "JPEG" and min(image.size) >= DRAFT_MIN_REDUCTION * draft.size:
                    return to_rgb(_upright(_drafted(image, draft)))
                image.load()
                return to_rgb(_upright(image))
    except Image.DecompressionBombError as e:
        raise ImageError(f"too many pixels, refused as a possible decompression bomb ({e})") from e
    except FileNotFoundError as e:
        raise ImageError("no such file") from e
    except IsADirectoryError as e:
        raise ImageError("is a directory") from e
    except PermissionError as e:
        raise ImageError("permission denied") from e
    except UnidentifiedImageError as e:
        raise ImageError(_unidentified_reason(path)) from e
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        raise ImageError(f"corrupt or truncated image ({e})") from e


def from_memory(image: Image.Image) -> Image.Image:
    """An image the caller opened or made, as ``load_image`` gives a file's: upright RGB pixels (of the frame it is
    at), or ImageError when its pixels cannot be read (opened lazily from a truncated file, say, or closed)."""
    try:
        image.load()
        return to_rgb(_upright(image))
    except ImageError:
        raise
    except ValueError as e:
        if "closed image" in str(e):
            raise ImageError("the image was closed before it was classified") from e
        raise ImageError(f"corrupt or truncated image ({e})") from e
    except (OSError, SyntaxError, EOFError, IndexError, TypeError) as e:
        raise ImageError(f"corrupt or truncated image ({e})") from e


def _drafted(image: Image.Image, draft: Draft) -> Image.Image:
    """A JPEG decoded at reduced scale and resized, as stored (``_upright`` turns it), to the size the model's
    resize gives the upright whole image."""
    try:
        turned = image.getexif().get(ORIENTATION_TAG) in (5, 6, 7, 8)  # stored on its side
    except Exception:  # noqa: BLE001 - a broken EXIF block: _upright leaves the image as stored too
        turned = False
    width, height = image.size
    target = draft.target(height, width)[::-1] if turned else draft.target(width, height)
    reduced = image.draft(image.mode, target)
    image.load()
    if reduced is None:
        return image
    return image.resize(target, Image.Resampling.BICUBIC, box=reduced[1])


def _unidentified_reason(path: Path) -> str:
    """Tell an empty file and a damaged header of a known format from a file that is no image at all."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        head = b"?"
    if not head:
        return "empty file"
    for signature, name in _SIGNATURES.items():
        if head.startswith(signature):
            return f"corrupt {name} file: its header cannot be parsed"
    return "not an image, or a format that cannot be read"


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the image as stored rather than losing it."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - any EXIF parsing failure only costs the rotation
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited on ``NEUTRAL_BACKGROUND``."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode.startswith(("I", "F")):
        return _wide_to_rgb(image)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        if rgba.getchannel("A").getextrema() == (0, 0):  # an unused channel (32-bit TGAs often leave it 0,
            return rgba.convert("RGB")  # and viewers show them opaque), not an invisible picture
        background = Image.new("RGBA", rgba.size, (*NEUTRAL_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as e:
        raise ImageError(f"unsupported colour mode {mode}") from e


def _wide_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale to 8 bits, keeping the appearance a viewer would show."""
    import numpy as np

    values = np.asarray(image).astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode.startswith("I;16") or (low >= 0 and 255 < high <= 65535 and image.mode == "I"):
        values = values / 257.0
    elif image.mode == "F" and low >= 0 and high <= 1:
        values = values * 255.0
    elif low < 0 or high > 255:
        values = (values - low) * (255.0 / (high - low or 1.0))
    grey = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8)).convert("RGB")
    key = image.info.get("transparency")
    if not isinstance(key, (int, float)):
        return grey
    opaque = Image.fromarray(np.asarray(image) != key)
    return Image.composite(grey, Image.new("RGB", grey.size, NEUTRAL_BACKGROUND), opaque)


def ordered_map(work: Callable[[S], T], items: Iterable[S], workers: int, window: int = 0) -> Iterator[tuple[S, T]]:
    """Run ``work`` on worker threads, yielding (item, result) in input order.

    At most ``window`` items (default: 8 per worker) are in flight, so memory stays flat however many come;
    a window of two batches lets the threads decode the next batch while the model encodes this one.
    Decoding releases the GIL (Pillow's codecs and resampling), so threads decode in parallel.
    """
    window = window or max(1, workers) * 8
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: collections.deque[tuple[S, concurrent.futures.Future[T]]] = collections.deque()
        for item in items:
            pending.append((item, pool.submit(work, item)))
            if len(pending) >= window:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
