"""Finding images and decoding them robustly into RGB: the file-system edge of the pipeline, no torch."""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import os
import re
import stat
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
ELONGATED_RATIO = 16
"""An image more than this many times as long as it is wide (or as wide as long) is resized for the model only
where the model's centre crop keeps it (``resized_crop``), not whole: a 471-byte PNG of 1 x 100,000 pixels was
resized to 32 x 3,200,000 for a 32-pixel model (570 MB more at the peak), a 1 x 10,000 one to 224 x 2,240,000
for a 224-pixel model (2 GB). Other images are resized whole, as open_clip's preprocess does: the same pixels."""
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
OWN_PIPES = ("/dev/fd/", "/proc/self/fd/", "/dev/stdin")
"""Names of this process's own open files: a pipe so named is read (``<(...)``); any other is refused unopened."""
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


@functools.cache
def image_formats() -> tuple[str, ...]:
    """The Pillow formats clipzs decodes: those of the extensions it walks (``image_extensions``), found by their
    content whatever a file's name. Pillow knows more, EPS among them, which it renders by running Ghostscript on
    the file: an interpreter on untrusted input. (A JPEG with several pictures comes out of Pillow's JPEG opener
    as MPO, and is read.)"""
    known = Image.registered_extensions()  # (loads Pillow's plugins, and the HEIF ones registered before)
    return tuple(sorted({known[ext] for ext in image_extensions() if ext in known}))


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key putting 'img2' before 'img10'."""
    return tuple((0, int(part)) if part.isdigit() else (1, part.lower()) for part in re.split(r"(\d+)", text))


def walk(folder: Path) -> list[Path]:
    """Image files below a folder, recursively, in natural order.

    Hidden files and folders are skipped, and so are pipes, sockets and devices: opening a pipe waits for a
    writer, which a folder scan must not do. Symbolic links to files are followed; to folders, not (a link loop
    cannot trap the walk). An unreadable subfolder is passed over, as ``os.walk`` does; an entry that cannot be
    looked at costs that entry alone (``_listed``), never the rest of its folder.
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
                    if _is_folder(entry):
                        pending.append(entry.path)
                    elif os.path.splitext(entry.name)[1].lower() in extensions and _listed(entry):
                        found.append(Path(entry.path))
        except OSError:  # the folder cannot be listed (or stops listing): what it gave so far is kept
            continue
    return sorted(found, key=lambda p: natural_key(p.relative_to(folder).as_posix()))


def _is_folder(entry: os.DirEntry[str]) -> bool:
    """A folder itself, not a link to one; False where the entry cannot be looked at (gone since it was listed)."""
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _listed(entry: os.DirEntry[str]) -> bool:
    """Whether a walk lists an image-named entry: a regular file, or a link to one; a link that leads to nothing
    readable too (missing, a link loop, a folder it may not enter), so that the decoder reports why. Not a pipe,
    socket or device. Looking at a link's target can fail (ELOOP, EACCES): that entry alone is concerned."""
    try:
        if entry.is_file():
            return True
    except OSError:
        pass  # a link loop or a target it may not look at: listed below, to be reported
    try:
        return entry.is_symlink() and not os.path.exists(entry.path)
    except OSError:
        return False


def read_path_list(stream: BinaryIO) -> list[str]:
    """Paths from a stream, one per line (LF or CRLF), or NUL-separated when the stream holds a NUL (find -print0).
    Not ``splitlines``: that also splits at form feeds and U+2028, which file names may hold. An image piped in
    by mistake (``clipzs classify - < photo.jpg``) is refused as such, not read as names of binary junk."""
    raw = stream.read()
    kind = _image_data(raw)
    if kind:
        raise UsageError(f"stdin holds {kind} image data, not a list of paths: name the image file instead")
    data = os.fsdecode(raw)
    parts = data.split("\0") if "\0" in data else [line.removesuffix("\r") for line in data.split("\n")]
    return [p for p in parts if p]


def _image_data(data: bytes) -> str | None:
    """The format of ``data`` when it starts as an image file does (signatures no list of paths starts with):
    PNG, JPEG, GIF, TIFF, WebP, HEIF/AVIF; None otherwise."""
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:8] == b"ftyp":
        return "HEIF/AVIF"
    return next((name for sign, name in _SIGNATURES.items() if len(sign) > 2 and data.startswith(sign)), None)


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

    Only the formats of ``image_formats`` are read, whatever the file's name: Pillow would otherwise hand an EPS
    file named ``.jpg`` to Ghostscript. Only regular files are opened (``_check_readable``).

    ``draft``: a JPEG at least ``DRAFT_MIN_REDUCTION`` times the model's input is decoded at a reduced scale
    (1/2 to 1/8; libjpeg scales in the DCT domain, several times cheaper than decoding a 12-MP photo whole)
    and resized at once to the size the model's resize would give the whole image. The reduced image covers
    the whole one to within a fraction of a pixel (a partly filled last block), which the resize maps exactly,
    so the model crops the same part of the picture as from the whole image.
    """
    _check_readable(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=image_formats()) as image:
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


def _check_readable(path: Path) -> None:
    """Raise ImageError unless ``path`` is a regular file, asking only ``stat``: opening a pipe (FIFO) waits for a
    writer, for good if none comes (and a server with it), and a device such as /dev/zero never ends. One
    exception: a pipe that is this process's own open file (``/dev/fd/N``, ``/dev/stdin``), which is what the
    shell names for ``<(...)`` on the command line, with a writer at its other end."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as e:
        raise ImageError("no such file") from e
    except PermissionError as e:
        raise ImageError("permission denied") from e
    except OSError as e:  # a link loop, a name too long, a file where a folder should be...
        raise ImageError((e.strerror or str(e)).lower()) from e
    except ValueError as e:  # (a NUL in the name)
        raise ImageError(f"not a usable file name ({e})") from e
    if stat.S_ISREG(mode) or (stat.S_ISFIFO(mode) and os.fspath(path).startswith(OWN_PIPES)):
        return
    if stat.S_ISDIR(mode):
        raise ImageError("is a directory")
    kind = "a pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    raise ImageError(f"not a regular file but {kind}, left unread")


def from_memory(image: Image.Image) -> Image.Image:
    """An image the caller opened or made, as ``load_image`` gives a file's: upright RGB pixels (of the frame it is
    at), or ImageError when its pixels cannot be read (opened lazily from a truncated file, say, or closed) or there
    are none (a crop of an empty box: the model's resize would divide by its zero width or height)."""
    if 0 in image.size:
        raise ImageError(f"the image has no pixels ({image.width}x{image.height})")
    try:
        image.load()
        return to_rgb(_upright(image))
    except ImageError:
        raise
    except ValueError as e:
        if "closed image" in str(e):
            raise ImageError("the image was closed before it was classified") from e
        raise ImageError(f"corrupt or truncated image ({e})") from e
    except AssertionError as e:  # Pillow's ``assert self.fp is not None``: opened lazily, its file closed unread
        raise ImageError("the image was closed before it was classified") from e
    except (OSError, SyntaxError, EOFError, IndexError, TypeError) as e:
        raise ImageError(f"corrupt or truncated image ({e})") from e


def resized_crop(
    image: Image.Image, size: int, crop: tuple[int, int], resample: Image.Resampling
) -> Image.Image | None:
    """What torchvision's ``Resize(size)`` (the shorter side to ``size``) then ``CenterCrop(crop)`` (height,
    width) give an image more than ``ELONGATED_RATIO`` times as long as wide, from a resize of only the box that
    the crop keeps: Pillow's filter reads the pixels around the box as a whole resize does, and the result is the
    same to within rounding (a level or two of 255, in a few pixels). None for any other image, whose whole resize
    is cheap, and where the crop would be padded."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if long <= ELONGATED_RATIO * short:
        return None
    new_long = int(size * long / short)  # as torchvision computes it
    new_width, new_height = (size, new_long) if width <= height else (new_long, size)
    crop_height, crop_width = crop
    if crop_width > new_width or crop_height > new_height:
        return None
    top, left = round((new_height - crop_height) / 2.0), round((new_width - crop_width) / 2.0)
    x, y = width / new_width, height / new_height  # source pixels per resized pixel
    box = (left * x, top * y, (left + crop_width) * x, (top + crop_height) * y)
    return image.resize((crop_width, crop_height), resample, box=box)


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
    other = _refused_format(head)
    if other:
        return f"unsupported format {other} (clipzs reads {', '.join(image_formats())})"
    return "not an image, or a format that cannot be read"


def _refused_format(head: bytes) -> str | None:
    """The Pillow format (outside ``image_formats``) whose signature ``head`` starts with, or None. Only
    Pillow's signature checks are asked, which look at these bytes alone: no other opener sees the file."""
    allowed = image_formats()
    for name in Image.ID:
        accept = Image.OPEN[name][1]
        try:
            said = accept(head) if name not in allowed and accept is not None else False
        except Exception:  # noqa: BLE001 - a check that cannot read so few bytes has said nothing
            continue
        if said and not isinstance(said, str):  # (a string is Pillow's reason for refusing it)
            return name
    return None


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
