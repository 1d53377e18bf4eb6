"""Decoding JPEGs on the model's device (nvJPEG on CUDA), exercised here on the CPU through the same code."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from clipzs.api import ZeroShotClassifier
from clipzs.device_decode import DeviceGeometry, read_jpeg
from clipzs.errors import UsageError
from tests.corpus import waiting_fifo, write_bad_inputs, write_tricky_images
from tests.test_tiny_clip import MIN_ACCURACY, drawn_folder


@pytest.fixture
def sent_to_device(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files handed to the device decoder (else both sides of a comparison could be the CPU's)."""
    from clipzs import device_decode

    sent: list[str] = []
    decode = device_decode.decode_batch

    def counted(jpegs: Any, *args: Any) -> Any:
        sent.extend(jpeg.path.name for jpeg in jpegs)
        return decode(jpegs, *args)

    monkeypatch.setattr(device_decode, "decode_batch", counted)
    return sent


def test_device_decoding_keeps_top_1(tiny: ZeroShotClassifier, tmp_path: Path, sent_to_device: list[str]) -> None:
    truth = drawn_folder(tmp_path / "shapes", per_class=5, seed=21, size=96, fmt="jpg")
    paths = list(truth)
    on_device = list(tiny.classify_paths(paths, use_cache=False, device_decode=True))
    assert sorted(sent_to_device) == sorted(p.name for p in paths)
    on_cpu = list(tiny.classify_paths(paths, use_cache=False, device_decode=False))
    assert len(sent_to_device) == len(paths)
    assert [p.label for p in on_device] == [p.label for p in on_cpu]
    assert max(abs(a.score - b.score) for a, b in zip(on_device, on_cpu, strict=True)) < 0.05  # type: ignore[operator]
    assert sum(p.label == truth[Path(p.path)] for p in on_device) / len(paths) >= MIN_ACCURACY


def test_what_the_device_cannot_do_exactly_goes_to_the_cpu(
    tiny: ZeroShotClassifier, tmp_path: Path, sent_to_device: list[str]
) -> None:
    """Rotated, CMYK, PNG, corrupt: decoded (or reported) by the CPU path, with the same answers and reasons."""
    tricky = write_tricky_images(tmp_path / "tricky")
    bad = write_bad_inputs(tmp_path / "bad")
    assert read_jpeg(next(p for p in tricky if p.name == "exif-rotated.jpg")) is None
    assert read_jpeg(next(p for p in tricky if p.name == "cmyk.jpg")) is None
    paths = [*tricky, *bad]
    on_device = list(tiny.classify_paths(paths, use_cache=False, device_decode=True))
    assert "UPPER.JPG" in sent_to_device  # a plain JPEG
    assert not {"exif-rotated.jpg", "cmyk.jpg"} & set(sent_to_device)
    assert not [name for name in sent_to_device if not name.lower().endswith((".jpg", ".jpeg"))]
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


XMP_ROTATED = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
)


def jpeg_variants() -> dict[str, bytes]:
    """JPEGs (and not-quite JPEGs) whose headers differ in what decides the device path."""
    from PIL import Image

    photo = Image.new("RGB", (64, 48), (200, 30, 30))

    def encoded(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        return buffer.getvalue()

    def exif(orientation: int | None, endian: str = "<") -> bytes:
        block = Image.Exif()
        block.endian = endian
        block[0x010F] = "camera"  # Make: an EXIF block that is not only the orientation
        if orientation is not None:
            block[0x0112] = orientation
        return block.tobytes()

    variants = {
        "plain": encoded(photo),
        "progressive": encoded(photo, progressive=True),
        "grey": encoded(photo.convert("L")),
        "cmyk": encoded(photo.convert("CMYK")),
        "exif-upright-ii": encoded(photo, exif=exif(1)),
        "exif-upright-mm": encoded(photo, exif=exif(1, ">")),
        "exif-rotated-ii": encoded(photo, exif=exif(6)),
        "exif-rotated-mm": encoded(photo, exif=exif(8, ">")),
        "exif-no-orientation": encoded(photo, exif=exif(None)),
        "xmp-rotated": encoded(photo, xmp=XMP_ROTATED),
        "exif-without-orientation-xmp-rotated": encoded(photo, exif=exif(None), xmp=XMP_ROTATED),
        "mpo": encoded(photo, "MPO", save_all=True, append_images=[photo]),
        "png": encoded(photo, "PNG"),
        "empty": b"",
    }
    variants["truncated-header"] = variants["exif-upright-ii"][:40]
    return variants


def test_the_quick_header_check_never_contradicts_pillow() -> None:
    """plain_jpeg answers from the segment headers where they settle it, and then always as Pillow would."""
    from clipzs.device_decode import _pillow_says_plain, plain_jpeg

    verdicts = {name: (plain_jpeg(data), _pillow_says_plain(data)) for name, data in jpeg_variants().items()}
    for name, (quick, pillow) in verdicts.items():
        assert quick is None or quick == pillow, name
    answered = ["plain", "progressive", "grey", "png", "empty"]
    answered += [name for name in verdicts if name.startswith("exif-") and "xmp" not in name]
    assert all(verdicts[name][0] is not None for name in answered)  # the quick check does the common cases
    assert verdicts["plain"] == verdicts["exif-upright-mm"] == (True, True)
    assert verdicts["exif-rotated-mm"] == (False, False) and verdicts["cmyk"][1] is False
    assert verdicts["xmp-rotated"][1] is False and verdicts["mpo"][1] is False


def test_damaged_headers_are_never_taken_for_plain_jpegs() -> None:
    """Random damage to the header bytes of JPEGs with EXIF blocks: where the quick check says plain, so does
    Pillow (where it says otherwise, the CPU path reads the file and reports what is wrong)."""
    from clipzs.device_decode import _pillow_says_plain, plain_jpeg

    rng = np.random.default_rng(0)
    sources = [data for name, data in jpeg_variants().items() if name.startswith("exif-")]
    trusted = 0
    for i in range(1000):
        data = bytearray(sources[i % len(sources)])
        header = data.index(b"\xff\xda")  # up to the start of the scan
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(2, header))] = int(rng.integers(0, 256))
        if plain_jpeg(data):
            trusted += 1
            assert _pillow_says_plain(data), bytes(data[:200])
    assert trusted > 0  # some damage (a camera name, a padding byte) leaves the answer standing


def with_segments(jpeg: bytes, *segments: tuple[int, bytes]) -> bytes:
    """``jpeg`` with these (marker, payload) segments inserted right after its start-of-image marker."""
    head = b"".join(bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body for marker, body in segments)
    return jpeg[:2] + head + jpeg[2:]


def exif_block(*entries: tuple[int, int, int, bytes]) -> bytes:
    """An APP1 EXIF payload: little-endian TIFF, IFD0 at 8 with (tag, type, count, value) entries."""
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHL", *e[:3]) + e[3] for e in entries)
    return b"Exif\x00\x00II*\x00" + struct.pack("<L", 8) + ifd + struct.pack("<L", 0)


def test_headers_that_pillow_reads_otherwise_are_left_to_it() -> None:
    """Found by review: each of these made the quick check say plain where Pillow does not."""
    from clipzs.device_decode import _pillow_says_plain, plain_jpeg

    jpeg = jpeg_variants()["plain"]
    sof = jpeg.index(b"\xff\xc0")
    upright, rotated_0 = struct.pack("<HH", 1, 0), struct.pack("<HH", 0, 0)
    past_the_end = struct.pack("<L", 60000)
    cases = {
        # Pillow stops reading the EXIF block at the bad offset, so it takes the XMP orientation instead
        "exif cut short, xmp rotated": with_segments(
            jpeg,
            (0xE1, exif_block((0x010F, 2, 8, past_the_end), (0x0112, 3, 1, upright))),
            (0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + XMP_ROTATED),
        ),
        "orientation 0": with_segments(jpeg, (0xE1, exif_block((0x0112, 3, 1, rotated_0)))),
        "photoshop block cut short": with_segments(jpeg, (0xED, b"Photoshop 3.0\x008BIM\x04\x04")),
        "x resolution of one byte": with_segments(
            jpeg, (0xE1, exif_block((0x011A, 7, 1, b"\x05\0\0\0"), (0x0128, 3, 1, struct.pack("<HH", 2, 0))))
        ),
        "height 0": jpeg[: sof + 5] + b"\x00\x00" + jpeg[sof + 7 :],
        "decompression bomb": jpeg[: sof + 5] + struct.pack(">HH", 20000, 20000) + jpeg[sof + 9 :],
        "cut after the scan header's length": jpeg[: jpeg.index(b"\xff\xda") + 4],
    }
    for name, data in cases.items():
        assert _pillow_says_plain(data) is False, name
        assert plain_jpeg(data) is not True, name
    assert plain_jpeg(with_segments(jpeg, (0xE1, exif_block((0x0112, 3, 1, upright))))) is True


def test_only_regular_files_of_a_jpegs_size_are_read_for_the_device(tmp_path: Path) -> None:
    """A directory, an empty file, a huge (sparse) file and a pipe are left unread for the CPU path, at once."""
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "empty.jpg").write_bytes(b"")
    with open(tmp_path / "huge.jpg", "wb") as f:
        f.write(jpeg_variants()["plain"])
        f.truncate(2 << 30)
    os.mkfifo(tmp_path / "pipe.jpg")  # no writer: opening it for reading would block
    for name in ("folder.jpg", "empty.jpg", "huge.jpg", "pipe.jpg"):
        assert read_jpeg(tmp_path / name) is None, name
    (tmp_path / "photo.jpg").write_bytes(jpeg_variants()["plain"])
    assert read_jpeg(tmp_path / "photo.jpg") is not None


def test_a_pipe_is_not_even_opened_for_the_device(tmp_path: Path) -> None:
    """Opening a pipe, even without waiting, lets a writer waiting on it go on (to write into a pipe that is then
    closed); the CPU path reports it unread."""
    with waiting_fifo(tmp_path / "pipe.jpg") as opened:
        assert read_jpeg(tmp_path / "pipe.jpg") is None
        assert not opened.wait(0.3), "the pipe was opened"


def test_an_elongated_jpeg_is_left_to_the_cpu(tiny: ZeroShotClassifier, tmp_path: Path) -> None:
    """Resizing its shorter side to the model's on the device makes a huge image (a 1 x 65,535 JPEG: 224 x 14.7
    million pixels for a 224-pixel model); the CPU path resizes only the part the crop keeps."""
    from PIL import Image

    from clipzs.device_decode import JpegBytes, decode_batch

    drawn = Image.new("RGB", (64, 48), (200, 30, 30))
    paths = [tmp_path / "long.jpg", tmp_path / "plain.jpg"]
    drawn.resize((20, 1000)).save(paths[0])
    drawn.save(paths[1])
    jpegs = [JpegBytes(p, torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8)) for p in paths]
    long, plain = decode_batch(jpegs, torch.device("cpu"), DeviceGeometry(32))
    assert long is None and plain is not None and plain.shape == (32, 32, 3)
    on_device = list(tiny.classify_paths(paths, use_cache=False, device_decode=True))
    on_cpu = list(tiny.classify_paths(paths, use_cache=False, device_decode=False))
    assert [(p.label, p.error) for p in on_device] == [(p.label, p.error) for p in on_cpu]
    assert on_device[0].score == pytest.approx(on_cpu[0].score, abs=1e-5)
