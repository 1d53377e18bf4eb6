"""Image discovery and decoding, on real photos, awkward-but-valid files and unreadable inputs."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clipzs.errors import ImageError, UsageError
from clipzs.images import (
    DRAFT_MIN_REDUCTION,
    NEUTRAL_BACKGROUND,
    Draft,
    discover,
    load_image,
    natural_key,
    read_path_list,
    walk,
)
from tests.corpus import (
    GREY_IMAGES,
    TRANSPARENT_BOX,
    TRANSPARENT_IMAGES,
    TRICKY_SIZE,
    other_frame,
    photo,
    reference,
    waiting_fifo,
    write_bad_inputs,
    write_photos,
    write_tricky_images,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tricky_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tricky")
    write_tricky_images(folder)
    return folder


@pytest.fixture(scope="module")
def tricky(tricky_dir: Path) -> dict[str, Image.Image]:
    """Each tricky image's name -> what load_image made of it."""
    return {path.name: load_image(path) for path in sorted(tricky_dir.iterdir())}


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.jpg"
    photo("coffee").resize((4000, 3000), Image.Resampling.BICUBIC).save(path, quality=90)
    return path


def expected(name: str) -> Image.Image:
    """What a tricky image should decode to."""
    image = reference()
    if name in GREY_IMAGES:
        image = image.convert("L").convert("RGB")
    if name in TRANSPARENT_IMAGES:
        image.paste(NEUTRAL_BACKGROUND, TRANSPARENT_BOX)
    return image


def difference(a: Image.Image, b: Image.Image, size: tuple[int, int] = (60, 40)) -> float:
    """Mean absolute difference per channel (0-255) once both are box-shrunk to ``size``."""
    small = [np.asarray(i.convert("RGB").resize(size, Image.Resampling.BOX), dtype=np.float64) for i in (a, b)]
    return float(np.abs(small[0] - small[1]).mean())


def test_photos_are_small_real_jpegs_written_the_same_each_time(photos: list[Path], tmp_path: Path) -> None:
    assert len(photos) >= 8
    assert [p.read_bytes() for p in write_photos(tmp_path)] == [p.read_bytes() for p in photos]
    for path in photos:
        image = load_image(path)
        assert image.mode == "RGB", path.name
        assert max(image.size) <= 512, path.name
        assert np.asarray(image).std() > 20, path.name  # a photo, not a flat fill


def test_tricky_images_load_upright_as_rgb(tricky: dict[str, Image.Image]) -> None:
    assert len(tricky) >= 17
    got = {name: (image.mode, image.size) for name, image in tricky.items()}
    assert {name: shape for name, shape in got.items() if shape != ("RGB", TRICKY_SIZE)} == {}


STORED_MODES = {
    "grey.png": "L",
    "bilevel.png": "1",
    "palette.png": "P",
    "palette-transparent.png": "P",
    "rgba.png": "RGBA",
    "grey-alpha.png": "LA",
    "cmyk.jpg": "CMYK",
    "grey16.png": "I;16",
    "grey16-transparent.png": "I;16",
    "float.tif": "F",
}


def test_tricky_files_are_stored_as_their_names_say(tricky_dir: Path) -> None:
    """Guards the corpus itself: the awkward modes, orientation and frames are really in the files."""
    for name, mode in STORED_MODES.items():
        with Image.open(tricky_dir / name) as stored:
            assert stored.mode == mode, name
    with Image.open(tricky_dir / "exif-rotated.jpg") as stored:
        assert stored.size == TRICKY_SIZE[::-1]
        assert stored.getexif()[0x0112] == 6
    for name in ("animated.gif", "multipage.tif"):
        with Image.open(tricky_dir / name) as stored:
            assert stored.n_frames == 2, name


def test_tricky_images_look_like_the_photo_they_were_made_from(tricky: dict[str, Image.Image]) -> None:
    differences = {name: round(difference(image, expected(name), size=(30, 20)), 1) for name, image in tricky.items()}
    assert {name: d for name, d in differences.items() if d > 4} == {}  # another photo differs by ~70


def test_transparent_regions_become_the_neutral_background(tricky: dict[str, Image.Image]) -> None:
    left, top, right, bottom = TRANSPARENT_BOX
    boxes = {name: np.asarray(tricky[name])[top:bottom, left:right].reshape(-1, 3) for name in TRANSPARENT_IMAGES}
    wrong = {name: box[0].tolist() for name, box in boxes.items() if not (box == NEUTRAL_BACKGROUND).all()}
    assert wrong == {}  # name -> a pixel found there


@pytest.mark.parametrize("name", ["grey16.png", "float.tif"])
def test_wide_greyscale_keeps_its_contrast(tricky: dict[str, Image.Image], name: str) -> None:
    grey = np.asarray(reference().convert("L"), dtype=np.int16)
    got = np.asarray(tricky[name].convert("L"), dtype=np.int16)
    assert np.abs(got - np.maximum(grey, 1)).max() <= 1


def test_cmyk_jpeg_colours_are_plausible(tricky: dict[str, Image.Image]) -> None:
    got = np.asarray(tricky["cmyk.jpg"], dtype=np.float64).mean(axis=(0, 1))
    want = np.asarray(reference(), dtype=np.float64).mean(axis=(0, 1))
    assert np.abs(got - want).max() < 5
    assert difference(tricky["cmyk.jpg"], reference()) < 4


@pytest.mark.parametrize("name", ["animated.gif", "multipage.tif"])
def test_multi_frame_files_give_the_first_frame(tricky: dict[str, Image.Image], name: str) -> None:
    assert difference(tricky[name], reference()) < 3 < difference(tricky[name], other_frame())


def test_heic_loads_without_walking_a_folder_first(tricky_dir: Path) -> None:
    """A .heic named on the command line must decode in a fresh process (HEIF opener registered on demand)."""
    heic = tricky_dir / "photo.heic"
    if not heic.exists():
        pytest.skip("pillow-heif cannot write HEIC here")
    code = "import sys, pathlib, clipzs.images as i; print(i.load_image(pathlib.Path(sys.argv[1])).size)"
    run = subprocess.run([sys.executable, "-c", code, str(heic)], cwd=REPO, capture_output=True, text=True)
    assert run.stdout.strip() == str(TRICKY_SIZE), run.stderr.strip().splitlines()[-1:]


@pytest.mark.parametrize("suffix", [".png", ".tga"])
def test_an_alpha_channel_left_at_zero_is_ignored(tmp_path: Path, suffix: str) -> None:
    """Viewers show such files (often 32-bit BMPs and TGAs) opaque: the picture must not become a flat colour."""
    image = reference().convert("RGBA")
    image.putalpha(0)
    path = tmp_path / f"zero-alpha{suffix}"
    image.save(path)
    assert Image.open(path).mode == "RGBA"
    assert difference(load_image(path), reference()) < 1


def test_bad_inputs_raise_image_error_with_the_reason(tmp_path: Path) -> None:
    problems = {}
    for path, keyword in write_bad_inputs(tmp_path).items():
        try:
            load_image(path)
            problems[path.name] = "loaded without error"
        except ImageError as e:
            if keyword not in str(e).lower() or "\n" in str(e):
                problems[path.name] = f"{str(e)!r} lacks {keyword!r}"
        except Exception as e:  # noqa: BLE001 - any other type escaping is the failure reported
            problems[path.name] = f"{type(e).__name__}: {e}"
    assert problems == {}


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files with mode 000")
def test_bad_inputs_include_permission_denied(tmp_path: Path) -> None:
    assert "permission denied" in write_bad_inputs(tmp_path).values()


@pytest.mark.parametrize("size", [224, 500, 750])
def test_draft_decodes_a_big_jpeg_smaller_but_alike(big_jpeg: Path, size: int) -> None:
    full, draft = load_image(big_jpeg), load_image(big_jpeg, draft=Draft(size))
    assert full.size == (4000, 3000)
    assert draft.size == (size * 4 // 3, size)  # resized as the model's resize would resize the whole image
    assert difference(draft, full, size=(160, 120)) < 2


def model_input(image: Image.Image, draft: Draft) -> np.ndarray:
    """The pixels open_clip's preprocess gives the model (resize, centre crop), as floats."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Resize

    size = (draft.size, draft.size) if draft.squash else draft.size
    geometry = Compose([Resize(size, interpolation=InterpolationMode.BICUBIC), CenterCrop(draft.size)])
    return np.asarray(geometry(image), dtype=np.float64)


@pytest.mark.parametrize("draft", [Draft(224), Draft(224, squash=True)], ids=["shorter", "squash"])
@pytest.mark.parametrize("size", [(2389, 1792), (2890, 1937), (1904, 1037), (4032, 3024), (1808, 2824)])
def test_draft_gives_the_model_the_pixels_of_a_whole_decode(
    tmp_path: Path, size: tuple[int, int], draft: Draft
) -> None:
    """Sides that are no multiple of 8 leave libjpeg's reduced image a partly filled last block: resized as a
    whole, it used to move the model's crop by a pixel (a mean difference of 6 to 11 of 255 here)."""
    path = tmp_path / "photo.jpg"
    photo("astronaut").resize(size, Image.Resampling.BICUBIC).save(path, quality=92)
    drafted = load_image(path, draft=draft)
    assert max(drafted.size) < max(size) // 2  # (decoded at reduced scale)
    assert np.abs(model_input(drafted, draft) - model_input(load_image(path), draft)).mean() < 2


def test_draft_of_a_jpeg_stored_on_its_side(tmp_path: Path) -> None:
    upright = photo("astronaut").resize((2890, 1937), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6  # turn it a quarter clockwise to show it
    path = tmp_path / "sideways.jpg"
    upright.transpose(Image.Transpose.ROTATE_90).save(path, quality=92, exif=exif)
    whole, drafted = load_image(path), load_image(path, draft=Draft(224))
    assert whole.size == upright.size
    assert drafted.size == (int(224 * 2890 / 1937), 224)
    assert np.abs(model_input(drafted, Draft(224)) - model_input(whole, Draft(224))).mean() < 2


def test_draft_needs_a_fourfold_reduction(big_jpeg: Path) -> None:
    """A JPEG less than DRAFT_MIN_REDUCTION times the size asked for is decoded whole, exactly."""
    assert load_image(big_jpeg, draft=Draft(3000 // DRAFT_MIN_REDUCTION + 1)).size == (4000, 3000)


def test_draft_keeps_the_exif_orientation(tricky_dir: Path) -> None:
    image = load_image(tricky_dir / "exif-rotated.jpg", draft=Draft(50))
    assert image.width > image.height == 50  # upright, and no smaller than asked
    assert image.width < TRICKY_SIZE[0]


def test_draft_leaves_other_formats_whole(tricky_dir: Path) -> None:
    assert load_image(tricky_dir / "grey.png", draft=Draft(64)).size == TRICKY_SIZE


def make_tree(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()


def test_walk_recurses_in_natural_order_skipping_hidden_and_non_images(tmp_path: Path) -> None:
    make_tree(
        tmp_path,
        [
            *("a/img10.jpg", "a/img2.jpg", "a/Img1.png", "b/deep/x.webp", "c/IMG3.JPG", "line\nbreak.gif", "d/s.tga"),
            *("notes.txt", "a/img2.jpg.json", "noext", ".hidden.jpg", ".cache/cached.jpg", "a/.thumbs/t.png"),
        ],
    )
    got = [p.relative_to(tmp_path).as_posix() for p in walk(tmp_path)]
    expected = ["a/Img1.png", "a/img2.jpg", "a/img10.jpg", "b/deep/x.webp", "c/IMG3.JPG", "d/s.tga", "line\nbreak.gif"]
    assert got == expected


def test_walk_leaves_pipes_alone_and_follows_links_to_files(tmp_path: Path) -> None:
    make_tree(tmp_path, ["a/real.jpg"])
    os.mkfifo(tmp_path / "a" / "pipe.jpg")  # opening it would wait for a writer forever
    (tmp_path / "link.jpg").symlink_to(tmp_path / "a" / "real.jpg")
    (tmp_path / "pipe-link.jpg").symlink_to(tmp_path / "a" / "pipe.jpg")
    (tmp_path / "broken.jpg").symlink_to(tmp_path / "gone.jpg")  # listed, so that it is reported as missing
    (tmp_path / "loop").symlink_to(tmp_path)  # a link to a folder is not followed: no loop
    got = [p.relative_to(tmp_path).as_posix() for p in walk(tmp_path)]
    assert got == ["a/real.jpg", "broken.jpg", "link.jpg"]


def test_walk_finds_every_tricky_image(tricky_dir: Path) -> None:
    assert sorted(walk(tricky_dir)) == sorted(tricky_dir.iterdir())


def test_natural_key_orders_numbers_by_value() -> None:
    assert sorted(["img10.jpg", "img2.jpg", "IMG1.jpg", "img02b.jpg"], key=natural_key) == [
        "IMG1.jpg",
        "img2.jpg",
        "img02b.jpg",
        "img10.jpg",
    ]


def test_discover_yields_explicit_files_as_given_and_expands_folders(tmp_path: Path) -> None:
    make_tree(tmp_path / "dir", ["b2.png", "b10.png", "skip.txt"])
    inputs = ["missing.jpg", "notes.txt", str(tmp_path / "dir"), "-"]
    got = list(discover(inputs, io.BytesIO(b"from-stdin.jpg\n")))
    assert got == [
        Path("missing.jpg"),
        Path("notes.txt"),
        tmp_path / "dir" / "b2.png",
        tmp_path / "dir" / "b10.png",
        Path("from-stdin.jpg"),
    ]


@pytest.mark.parametrize(
    ("data", "paths"),
    [
        (b"a.jpg\nsub dir/b c.png\n\n", ["a.jpg", "sub dir/b c.png"]),
        (b"a.jpg\r\nb.png\r\n", ["a.jpg", "b.png"]),
        (b"a.jpg\0line\nbreak.png\0", ["a.jpg", "line\nbreak.png"]),
        ("ünï.jpg\n".encode() + b"caf\xe9.jpg\n", ["ünï.jpg", os.fsdecode(b"caf\xe9.jpg")]),
        ("x\u2028y.jpg\npage\x0c2.jpg\nz\x85.jpg\n".encode(), ["x\u2028y.jpg", "page\x0c2.jpg", "z\x85.jpg"]),
    ],
    ids=["newlines", "crlf", "nul-keeps-newline-in-name", "non-utf8-bytes", "only-newlines-end-lines"],
)
def test_dash_reads_a_path_list_from_stdin(data: bytes, paths: list[str]) -> None:
    assert list(discover(["-"], io.BytesIO(data))) == [Path(p) for p in paths]
    assert read_path_list(io.BytesIO(data)) == paths


def test_a_link_loop_costs_that_entry_alone(tmp_path: Path) -> None:
    """A link to itself made the walk give up its whole folder: 1 image of 5 was scored, or none."""
    make_tree(tmp_path, [f"{i}.png" for i in range(5)])
    (tmp_path / "self.png").symlink_to("self.png")  # looking at its target fails: too many levels of links
    assert [p.name for p in walk(tmp_path)] == ["0.png", "1.png", "2.png", "3.png", "4.png", "self.png"]
    with pytest.raises(ImageError, match=r"^too many levels of symbolic links$"):
        load_image(tmp_path / "self.png")


def test_an_entry_or_folder_that_cannot_be_looked_at_costs_itself_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a user who is not root meets them: a link into a folder they may not enter, a folder they may not list."""
    import errno

    make_tree(tmp_path, ["a.png", "b.png", "locked/c.png", "open/d.png"])
    (tmp_path / "denied.png").symlink_to(tmp_path / "locked" / "inner" / "c.png")  # stat: EACCES, not root
    scandir = os.scandir

    class Denied:
        """The link's directory entry as a user who may not enter the folder it leads into sees it."""

        def __init__(self, entry: os.DirEntry[str]) -> None:
            self.name, self.path = entry.name, entry.path

        def is_dir(self, follow_symlinks: bool = True) -> bool:
            return False

        def is_symlink(self) -> bool:
            return True

        def is_file(self, follow_symlinks: bool = True) -> bool:
            raise PermissionError(errno.EACCES, "Permission denied", self.path)

    def listing(path: str) -> object:
        if path.endswith("locked"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        entries = list(scandir(path))
        return contextlib.nullcontext([Denied(e) if e.name == "denied.png" else e for e in entries])

    monkeypatch.setattr(os, "scandir", listing)
    expected = ["a.png", "b.png", "denied.png", "open/d.png"]
    assert [p.relative_to(tmp_path).as_posix() for p in walk(tmp_path)] == expected


def test_pipes_sockets_and_devices_are_reported_without_being_opened(tmp_path: Path) -> None:
    """Opening a pipe waited for a writer for ever (and Ctrl-C with it); /dev/zero never ends."""
    import socket

    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "socket.jpg"))
    with unix, waiting_fifo(tmp_path / "pipe.jpg") as opened:
        for path in (tmp_path / "pipe.jpg", tmp_path / "socket.jpg", Path(os.devnull)):
            with pytest.raises(ImageError, match=r"^not a regular file"):
                load_image(path)
        assert not opened.wait(0.3), "the pipe was opened"


def test_a_pipe_of_this_process_is_read_as_process_substitution_gives_it(tmp_path: Path) -> None:
    """``clipzs classify <(curl ...)`` names /dev/fd/N: a pipe the shell opened, with a writer."""
    data = io.BytesIO()
    reference().save(data, "PNG")
    read, write = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write, data.getvalue()), os.close(write)))
    writer.start()
    try:
        assert load_image(Path(f"/dev/fd/{read}")).size == TRICKY_SIZE
    finally:
        writer.join(5)
        os.close(read)


@pytest.mark.parametrize(
    ("name", "reason"),
    [("x" * 300 + ".jpg", "file name too long"), ("a.jpg/b.jpg", "not a directory")],
    ids=["name-too-long", "file-as-folder"],
)
def test_a_path_that_cannot_be_looked_up_says_why(tmp_path: Path, name: str, reason: str) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match=f"^{reason}$"):
        load_image(tmp_path / name)


def test_only_the_formats_of_the_walked_extensions_are_opened(
    tmp_path: Path, tricky_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EPS content named .jpg went to Pillow's EPS plugin, which runs Ghostscript (when installed) on the file."""
    from PIL import EpsImagePlugin

    def never(*args: object, **kwargs: object) -> None:
        pytest.fail("the EPS plugin was handed the file")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", never)
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "load", never)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", never)
    eps = tmp_path / "x.jpg"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto 10 10 lineto stroke\nshowpage\n")
    with pytest.raises(ImageError, match=r"^unsupported format EPS "):
        load_image(eps)
    from clipzs.images import image_formats

    assert {"JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "TGA"} <= set(image_formats())
    assert not {"EPS", "PDF", "PSD", "ICO"} & set(image_formats())
    mpo = tmp_path / "two-pictures.jpg"  # what cameras with two lenses write: Pillow's JPEG opener makes it MPO
    reference().save(mpo, "MPO", save_all=True, append_images=[other_frame()])
    assert difference(load_image(mpo), reference()) < 3
    png = tmp_path / "png-named.jpg"  # read by its content, as before
    reference().save(png, "PNG")
    assert load_image(png).size == TRICKY_SIZE
    sizes = {p.name: load_image(p).size for p in tricky_dir.iterdir()}  # every awkward but valid file still reads
    assert sizes == dict.fromkeys(sizes, TRICKY_SIZE)


def test_an_image_piped_in_as_a_path_list_is_refused_as_such() -> None:
    data = io.BytesIO()
    reference().save(data, "PNG")
    with pytest.raises(UsageError, match=r"^stdin holds PNG image data, not a list of paths"):
        read_path_list(io.BytesIO(data.getvalue()))
    assert read_path_list(io.BytesIO(b"BMW.jpg\nGIF.png\n")) == ["BMW.jpg", "GIF.png"]  # names are not signatures


def geometry_of(size: int) -> Any:
    """open_clip's PIL preprocess steps for a ``size``-pixel model (resize the shorter side, centre crop), as
    clipzs runs them (``split_preprocess``)."""
    import open_clip

    from clipzs.model import split_preprocess

    pixels = split_preprocess(open_clip.image_transform(size, is_train=False))
    assert pixels is not None
    return pixels.geometry


@pytest.mark.parametrize("size", [32, 224])
def test_an_elongated_image_is_resized_only_where_the_crop_keeps_it(
    size: int, photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 471-byte PNG of 1 x 100,000 pixels was resized whole to 32 x 3.2 million pixels for a 32-pixel model
    before the crop (570 MB), a 1 x 10,000 one to 224 x 2.24 million for a 224-pixel model (2 GB). The pixels are
    the same to within rounding; those of every other image exactly the same."""
    from torchvision.transforms import Compose

    geometry = geometry_of(size)
    whole = Compose(list(geometry.transforms))  # the steps as open_clip runs them
    for path in photos:  # ordinary photos: exactly open_clip's pixels
        image = load_image(path)
        assert np.array_equal(np.asarray(geometry(image)), np.asarray(whole(image))), path.name
    base = photo("astronaut")
    for shape in [(40, 700), (700, 40), (7, 300), (2, 400), (400, 3)]:
        image = base.resize(shape, Image.Resampling.BICUBIC)
        got, want = (np.asarray(g(image), dtype=np.int16) for g in (geometry, whole))
        assert got.shape == want.shape == (size, size, 3), shape
        assert np.abs(got - want).max() <= 2 and np.abs(got - want).mean() < 0.2, shape
    resize = Image.Image.resize
    asked: list[tuple[int, int]] = []

    def resize_small(image: Image.Image, to: tuple[int, int], *args: Any, **kwargs: Any) -> Image.Image:
        asked.append(to)
        assert to[0] * to[1] <= 4 * size * size, f"resized to {to}"  # (before it takes the memory)
        return resize(image, to, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", resize_small)
    for shape in [(1, 100_000), (100_000, 1), (1, 10_000)]:
        assert np.asarray(geometry(Image.new("RGB", shape, (200, 30, 30)))).shape == (size, size, 3)
    assert asked
