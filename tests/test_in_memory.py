"""Images already in memory (PIL images: an upload, a video frame) are scored as files of the same pixels are."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipzs import UsageError
from clipzs.api import ZeroShotClassifier
from tests.corpus import write_tricky_images
from tests.test_tiny_clip import MIN_ACCURACY
from tests.tinyclip.shapes import CLASSES, draw


def test_an_opened_file_scores_as_the_file_does(tiny: ZeroShotClassifier, photos: list[Path], tmp_path: Path) -> None:
    """Every mode, EXIF orientation, transparency, the first frame of an animation: the same pixels, the same
    scores, and the file's name as the path."""
    files = [*sorted(write_tricky_images(tmp_path / "tricky")), *photos]
    expected = list(tiny.classify_paths(files, top_k=3, use_cache=False, fast_decode=False))
    opened = [Image.open(path) for path in files]
    got = list(tiny.classify_images(opened, top_k=3, batch_size=4, workers=2))
    assert [p.path for p in got] == [str(path) for path in files]
    for ours, theirs in zip(got, expected, strict=True):
        assert ours.error is None and theirs.error is None
        assert [label for label, _ in ours.top_k] == [label for label, _ in theirs.top_k]
        assert [score for _, score in ours.top_k] == pytest.approx([score for _, score in theirs.top_k], abs=1e-6)


def test_drawings_made_in_memory_are_classified_right(tiny: ZeroShotClassifier) -> None:
    rng = np.random.default_rng(11)
    truth = [label for _ in range(6) for label in CLASSES]
    images = [draw(label, rng) for label in truth]
    predictions = list(tiny.classify_images(images))
    assert all(p.path == "" and p.error is None for p in predictions)
    assert np.mean([p.label == label for p, label in zip(predictions, truth, strict=True)]) >= MIN_ACCURACY


def test_an_image_that_cannot_be_read_is_reported_and_the_rest_are_scored(
    tiny: ZeroShotClassifier, photos: list[Path]
) -> None:
    data = photos[0].read_bytes()
    truncated = Image.open(io.BytesIO(data[: len(data) // 2]))  # opened lazily: the header reads, the pixels do not
    closed = Image.open(photos[1])
    closed.close()
    good = [Image.open(path) for path in photos[2:4]]
    predictions = list(tiny.classify_images([good[0], truncated, closed, good[1]]))
    assert [p.error is None for p in predictions] == [True, False, False, True]
    assert "truncated" in (predictions[1].error or "")
    assert predictions[2].error == "the image was closed before it was classified"
    assert predictions[0].label and predictions[3].label


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (Image.new("RGB", (8, 8)), r"images must be a list, not <PIL.Image.Image.*\[Image.open"),
        (["photo.jpg"], r"images: each item must be an Image, not 'photo.jpg'"),
        (None, "images must be a list, not None"),
    ],
)
def test_mistakes_are_refused_when_called(tiny: ZeroShotClassifier, images: object, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        tiny.classify_images(images)  # type: ignore[arg-type]


def test_a_generator_may_close_each_image_once_yielded(tiny: ZeroShotClassifier, photos: list[Path]) -> None:
    """The usual idiom: each image is read before the next is asked for, so the with block may close it."""
    pulled: list[Path] = []

    def opened() -> Iterator[Image.Image]:
        for path in photos:
            pulled.append(path)
            with Image.open(path) as image:
                yield image

    expected = [(p.path, p.label) for p in tiny.classify_paths(photos, use_cache=False, fast_decode=False)]
    for workers in (1, 4):
        results = tiny.classify_images(opened(), batch_size=2, workers=workers)
        assert pulled == []  # nothing read before the results are
        assert [(p.path, p.label) for p in results] == expected
        pulled.clear()
    with Image.open(photos[0]) as unread:  # closed before its pixels were read: said, not a traceback
        pass
    assert [p.error for p in tiny.classify_images([unread])] == ["the image was closed before it was classified"]


def test_one_lazily_opened_image_given_many_times(tiny: ZeroShotClassifier, tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    draw(CLASSES[0], np.random.default_rng(3), size=2048).save(path, quality=92)
    image = Image.open(path)  # not loaded: the worker threads must not all load it at once
    predictions = list(tiny.classify_images([image] * 16, batch_size=8, workers=8))
    assert {(p.path, p.error, p.label, p.score) for p in predictions} == {
        (str(path), None, predictions[0].label, predictions[0].score)
    }


def test_an_image_without_pixels_is_reported_and_the_rest_are_scored(tiny: ZeroShotClassifier) -> None:
    """A detector's empty box, cropped: the model's resize would divide by its zero width."""
    photo = draw(CLASSES[0], np.random.default_rng(4))
    predictions = list(tiny.classify_images([photo.crop((0, 0, 32, 32)), photo.crop((10, 10, 10, 40)), photo]))
    assert [p.error for p in predictions] == [None, "the image has no pixels (0x30)", None]
    assert predictions[0].label and predictions[2].label
