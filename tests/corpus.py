"""Deterministic test images made from real photos shipped in packages: plain photos, valid files that are
hard to decode right, and inputs that cannot be decoded at all. Plain functions; test files wrap them."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

PHOTO_MAX_SIDE = 512
TRICKY_SIZE = (300, 200)
"""Upright (width, height) every tricky image must come out at."""
TRANSPARENT_BOX = (0, 0, 75, 200)
"""The fully transparent region (left, top, right, bottom) of the tricky images that have transparency."""
KEY_COLOUR = (0, 255, 0)
"""Colour-key transparency: the colour painted in ``TRANSPARENT_BOX`` and declared transparent."""
GREY_IMAGES = frozenset(
    {"grey.png", "bilevel.png", "grey-alpha.png", "grey16.png", "grey16-transparent.png", "float.tif"}
)
"""Tricky images that hold only the reference's luminance."""
TRANSPARENT_IMAGES = frozenset(
    {"rgba.png", "grey-alpha.png", "palette-transparent.png", "rgb-colour-key.png", "grey16-transparent.png"}
)
"""Tricky images whose ``TRANSPARENT_BOX`` must come out as the neutral background."""

_SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")
_SKLEARN_PHOTOS = ("china", "flower")


def _sklearn_images() -> Path:
    """The folder behind sklearn.datasets.load_sample_images(), found without importing sklearn (~1 s)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("scikit-learn is needed for its sample photos")
    return Path(spec.submodule_search_locations[0], "datasets", "images")


@functools.cache
def _photo(name: str) -> Image.Image:
    image: Image.Image
    if name in _SKLEARN_PHOTOS:
        with Image.open(_sklearn_images() / f"{name}.jpg") as file:
            image = file.convert("RGB")
    else:
        pixels: np.ndarray = getattr(skimage.data, name)()
        image = Image.fromarray(pixels).convert("RGB")
    image.thumbnail((PHOTO_MAX_SIDE, PHOTO_MAX_SIDE), Image.Resampling.LANCZOS)
    return image


def photo(name: str) -> Image.Image:
    """A real RGB photo, at most ``PHOTO_MAX_SIDE`` px on its long side (a fresh copy)."""
    return _photo(name).copy()


def reference() -> Image.Image:
    """The upright RGB photo (a cat, ``TRICKY_SIZE``) every tricky image is made from."""
    return photo("chelsea").resize(TRICKY_SIZE, Image.Resampling.LANCZOS)


def other_frame() -> Image.Image:
    """A different photo of the same size: the second frame or page of multi-frame files."""
    return photo("astronaut").resize(TRICKY_SIZE, Image.Resampling.LANCZOS)


def write_photos(folder: Path) -> list[Path]:
    """Save each real photo as a quality-90 JPEG in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in (*_SKIMAGE_PHOTOS, *_SKLEARN_PHOTOS):
        path = folder / f"{name}.jpg"
        _photo(name).save(path, quality=90)
        paths.append(path)
    return paths


def _with_alpha(image: Image.Image) -> Image.Image:
    alpha = Image.new("L", image.size, 255)
    alpha.paste(0, TRANSPARENT_BOX)
    rgba = image.convert("RGBA" if image.mode == "RGB" else "LA")
    rgba.putalpha(alpha)
    return rgba


def _heic(image: Image.Image, path: Path) -> bool:
    try:
        import pillow_heif  # type: ignore[import-not-found,unused-ignore]

        pillow_heif.from_pillow(image).save(path, quality=90)
    except Exception:  # noqa: BLE001 - no HEIF encoder here: the corpus goes without a HEIC file
        path.unlink(missing_ok=True)
        return False
    return True


def write_tricky_images(folder: Path) -> dict[Path, str]:
    """Write valid but hard-to-decode images into ``folder``; path -> what makes it tricky.

    Each decodes to ``reference()`` (or its luminance, for ``GREY_IMAGES``) at ``TRICKY_SIZE``, with
    ``TRANSPARENT_BOX`` fully transparent in ``TRANSPARENT_IMAGES``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ref, grey = reference(), reference().convert("L")
    palette = _quantized(ref)
    holed = palette.copy()
    holed.putpalette([*(palette.getpalette() or []), 0, 0, 0])
    holed.paste(255, TRANSPARENT_BOX)
    keyed = ref.copy()
    keyed.paste(KEY_COLOUR, TRANSPARENT_BOX)
    sideways = ref.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to view
    grey16 = Image.fromarray(np.maximum(np.asarray(grey, dtype=np.uint16), 1) * 257)  # 0 is the key below
    grey16_keyed = grey16.copy()
    grey16_keyed.paste(0, TRANSPARENT_BOX)
    floats = Image.fromarray(np.asarray(grey, dtype=np.float32) / 255)
    writers: dict[str, tuple[str, Callable[[Path], object]]] = {
        "exif-rotated.jpg": ("JPEG stored sideways, EXIF orientation 6", lambda p: sideways.save(p, exif=exif)),
        "grey.png": ("8-bit greyscale (L)", grey.save),
        "bilevel.png": ("1-bit dithered (1)", lambda p: grey.convert("1").save(p)),
        "palette.png": ("palette (P), no transparency", palette.save),
        "palette-transparent.png": ("palette with a transparent index", lambda p: holed.save(p, transparency=255)),
        "rgba.png": ("RGBA with a transparent region", lambda p: _with_alpha(ref).save(p)),
        "grey-alpha.png": ("greyscale with alpha (LA)", lambda p: _with_alpha(grey).save(p)),
        "rgb-colour-key.png": ("RGB with a tRNS colour key", lambda p: keyed.save(p, transparency=KEY_COLOUR)),
        "cmyk.jpg": ("CMYK JPEG", lambda p: ref.convert("CMYK").save(p, quality=90)),
        "grey16.png": ("16-bit greyscale PNG (I;16)", grey16.save),
        "grey16-transparent.png": ("16-bit greyscale, tRNS key 0", lambda p: grey16_keyed.save(p, transparency=0)),
        "float.tif": ("32-bit float TIFF (F), values in 0..1", floats.save),
        "animated.gif": ("animated GIF: frame 0 is the reference", lambda p: _frames(palette, p)),
        "multipage.tif": ("two-page TIFF: page 0 is the reference", lambda p: _frames(ref, p)),
        "photo.webp": ("lossy WebP", lambda p: ref.save(p, quality=90)),
        "photo ünïcödé 1.png": ("spaces and non-ASCII letters in the name", ref.save),
        "line\nbreak.png": ("a newline in the name", ref.save),
        "UPPER.JPG": ("upper-case extension", lambda p: ref.save(p, quality=90)),
    }
    written = {}
    for name, (description, write) in writers.items():
        write(folder / name)
        written[folder / name] = description
    if _heic(ref, folder / "photo.heic"):
        written[folder / "photo.heic"] = "HEIC (pillow-heif)"
    return written


def _quantized(image: Image.Image) -> Image.Image:
    """255 colours (index 255 left free for a transparent one), by the fast method."""
    return image.quantize(255, method=Image.Quantize.FASTOCTREE)


def _frames(first: Image.Image, path: Path) -> None:
    second = _quantized(other_frame()) if first.mode == "P" else other_frame()
    first.save(path, save_all=True, append_images=[second], duration=100, loop=0)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bytes(width: int, height: int, rows: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = _png_chunk(b"IDAT", zlib.compress(rows))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + idat + _png_chunk(b"IEND", b"")


def _encoded(image: Image.Image, kind: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **options)
    return buffer.getvalue()


def _reads_despite_000(path: Path) -> bool:
    """Whether chmod 000 fails to stop reads (root, or a file system without permissions)."""
    try:
        with open(path, "rb"):
            return True
    except PermissionError:
        return False


def write_bad_inputs(folder: Path) -> dict[Path, str]:
    """Write unreadable inputs into ``folder``: path -> a word the ImageError's reason must contain.

    The permission-denied case is left out where chmod 000 does not stop reads (as root).
    """
    folder.mkdir(parents=True, exist_ok=True)
    ref = reference()
    jpeg, png = _encoded(ref, "JPEG", quality=90), _encoded(ref, "PNG")
    gif = _encoded(_quantized(ref), "GIF")
    idat = png.index(b"IDAT") + 4
    garbage = np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    bomb = _png_bytes(30_000, 30_000, b"\0" * 1_001)  # declares 900 MP in ~100 bytes
    contents = {
        "empty.jpg": (b"", "empty"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "truncated.gif": (gif[: len(gif) // 2], "truncated"),
        "corrupt-body.jpg": (jpeg[:1_000] + garbage, "corrupt"),
        "bad-crc.png": (png[:29] + b"\0\0\0\0" + png[33:], "corrupt"),  # IHDR's CRC zeroed
        "broken-idat.png": (png[: idat + 100] + bytes(200) + png[idat + 300 :], "corrupt"),
        "text.png": (b"just some text, not pixels\n" * 20, "not an image"),
        "random.jpg": (garbage, "not an image"),
        "page.jpeg": (b"<!DOCTYPE html><html><body><img src='cat.jpeg'></body></html>\n", "not an image"),
        "bomb.png": (bomb, "decompression bomb"),
    }
    bad = {}
    for name, (data, keyword) in contents.items():
        (folder / name).write_bytes(data)
        bad[folder / name] = keyword
    (folder / "folder.jpg").mkdir(exist_ok=True)
    bad[folder / "folder.jpg"] = "directory"
    bad[folder / "missing.jpg"] = "no such file"
    dangling = folder / "dangling.jpg"
    dangling.unlink(missing_ok=True)
    dangling.symlink_to(folder / "nowhere.jpg")
    bad[dangling] = "no such file"
    locked = folder / "locked.jpg"
    locked.write_bytes(jpeg)
    os.chmod(locked, 0)
    if _reads_despite_000(locked):
        locked.unlink()
    else:
        bad[locked] = "permission denied"
    return bad


@contextlib.contextmanager
def waiting_fifo(path: Path) -> Iterator[threading.Event]:
    """A named pipe at ``path`` with a writer waiting for a reader: the event is set once anything opens it for
    reading. The writer is there so that code that wrongly opens the pipe goes on (and fails its test) rather than
    wait for ever: it opens the pipe again after each reader, until it is let go on leaving."""
    os.mkfifo(path)
    opened, done = threading.Event(), threading.Event()

    def write() -> None:
        while not done.is_set():
            with open(path, "wb"):  # blocks until a reader opens the pipe; the reader then reads it empty
                opened.set()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    deadline = time.monotonic() + 1  # a reader that comes before the writer waits would go unnoticed
    while time.monotonic() < deadline and not _waiting_for_a_reader(writer):
        time.sleep(0.01)
    try:
        yield opened
    finally:
        done.set()
        for _ in range(50):
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))  # lets the writer's open return
            writer.join(0.1)
            if not writer.is_alive():
                break


def _waiting_for_a_reader(thread: threading.Thread) -> bool:
    """Whether a thread waits in ``open`` for a pipe's reader, where Linux says so (else the caller waits a while)."""
    try:
        with open(f"/proc/self/task/{thread.native_id}/wchan") as f:
            return f.read() == "wait_for_partner"
    except OSError:
        return False
