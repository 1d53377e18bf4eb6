"""The library's arguments: a mistake is a UsageError saying what to write instead, raised when the method is
called (not when its lazy results are first iterated); the right calls, in their various shapes, still work."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from clipzs import ClipzsError, Label, UsageError
from clipzs.api import ZeroShotClassifier
from tests.test_tiny_clip import CLASSES, drawn_folder


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, str]:
    return drawn_folder(tmp_path_factory.mktemp("shapes"), per_class=1, seed=5)


def _build(labels: Any, templates: Any = "simple") -> Callable[[ZeroShotClassifier], object]:
    return lambda zsc: zsc.build(labels, templates, use_cache=False)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (_build("cat,dog"), r"labels must be a list, not the single value 'cat,dog': build\(\['cat'"),
        (_build(None), "labels must be a list, not None"),
        (_build([1, 2]), "labels: each item must be a str or Label, not 1"),
        (_build(["cat", "dog"], ["a photo"]), r"exactly one '\{\}' marking the label: 'a photo'"),
        (_build(["cat", "dog"], ["{} {}"]), r"exactly one '\{\}' marking the label: '\{\} \{\}'"),
        (_build(["cat", "dog"], []), "holds no templates"),
        (_build({"cat": ["kitten"], "dog": ["puppy"]}), "labels must be a list, not a dict, whose values would be"),
        (_build(["cat", "dog"], ["a photo " * 20 + "{}"]), "puts the label past the 16 tokens this model reads"),
        (_build(["cat", "dog"], ["a photo of a {}.", "a photo " * 20 + "{}."]), "puts the label past the 16 tokens"),
        (_build(["cat", "dog"], [None]), "templates: each item must be a str, not None"),
        (_build(["cat", "dog"], None), "templates must be a list, not None"),
        (lambda zsc: zsc.use("l.clf"), r"use\(\) takes a Classifier.*Classifier\.load\(path\)"),
        (lambda zsc: zsc.use(None), "use\\(\\) takes a Classifier"),
    ],
)
def test_build_and_use_mistakes(
    tiny: ZeroShotClassifier, call: Callable[[ZeroShotClassifier], object], message: str
) -> None:
    before = tiny.classifier
    with pytest.raises(UsageError, match=message):
        call(tiny)
    assert tiny.classifier is before  # a refused call changes nothing


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda z: z.classify("imgs/0.png"), r"inputs must be a list, not the single value 'imgs/0.png': classify\(\["),
        (lambda z: z.classify(Path("imgs")), r"inputs must be a list, not the single value PosixPath\('imgs'\)"),
        (lambda z: z.classify(None), "inputs must be a list, not None"),
        (lambda z: z.classify([5]), "inputs: each item must be a str or PathLike, not 5"),
        (lambda z: z.classify(["a.png"], top_k=0), "top_k must be a whole number of at least 1, not 0"),
        (lambda z: z.classify(["a.png"], top_k=1.5), "top_k .* not 1.5"),
        (lambda z: z.classify(["a.png"], top_k="3"), "top_k .* not '3'"),
        (lambda z: z.classify(["a.png"], top_k=True), "top_k .* not True"),
        (lambda z: z.classify(["a.png"], batch_size=0), "batch_size must be a whole number of at least 1, not 0"),
        (lambda z: z.classify(["a.png"], batch_size=-1), "batch_size .* not -1"),
        (lambda z: z.classify(["a.png"], workers=0), "workers must be a whole number of at least 1, not 0"),
        (lambda z: z.classify(["a.png"], workers=-1), "workers .* not -1"),
        (lambda z: z.classify_paths("a.png"), r"paths must be a list.*classify\(\) walks folders"),
        (lambda z: z.classify_paths([Path("a.png")], top_k=None), "top_k .* not None"),
        (lambda z: z.encode_paths(Path("a.png")), "paths must be a list, not the single value"),
        (lambda z: z.encode_paths([b"a.png"]), "paths: each item must be a str or PathLike"),
        (lambda z: z.encode_paths([Path("a.png")], batch_size=2.0), "batch_size .* not 2.0"),
        (lambda z: ZeroShotClassifier(z.model).classify(["a.png"]), r"no classifier: call build\(labels\)"),
    ],
)
def test_classify_mistakes_are_refused_at_call_time(
    tiny: ZeroShotClassifier, call: Callable[[ZeroShotClassifier], object], message: str
) -> None:
    with pytest.raises(UsageError, match=message) as raised:
        call(tiny)  # not iterated: the lazy results must not be needed to hear about the mistake
    assert isinstance(raised.value, ClipzsError)


def test_a_bad_item_in_a_stream_is_refused_when_reached(tiny: ZeroShotClassifier, shapes: dict[Path, str]) -> None:
    first = next(iter(shapes))
    results = tiny.classify(x for x in [first, 7])
    with pytest.raises(UsageError, match="inputs: each item must be a str or PathLike, not 7"):
        list(results)


def test_results_still_stream(tiny: ZeroShotClassifier, shapes: dict[Path, str]) -> None:
    pulled: list[Path] = []

    def paths() -> Iterator[Path]:
        for path in shapes:
            pulled.append(path)
            yield path

    results = tiny.classify(paths(), top_k=2, batch_size=1, workers=1)
    assert pulled == []  # checked at call time, but nothing read until iterated
    predictions = list(results)
    assert [p.path for p in predictions] == [str(p) for p in shapes]
    assert all(p.error is None and len(p.top_k) == 2 for p in predictions)


def test_right_calls_in_other_shapes(tiny: ZeroShotClassifier, shapes: dict[Path, str], tmp_path: Path) -> None:
    zsc = ZeroShotClassifier(tiny.model)
    as_list = zsc.build(list(CLASSES), "simple", use_cache=False).weights
    for labels in (tuple(CLASSES), (x for x in CLASSES), [Label(c, (c,)) for c in CLASSES]):
        assert torch.equal(zsc.build(labels, "simple", use_cache=False).weights, as_list)
    file = tmp_path / "templates.txt"
    file.write_text("# mine\na drawing of a {}.\n\n  a {} shape  \n", encoding="utf-8")
    from_file = zsc.build(CLASSES, str(file), use_cache=False)
    given = zsc.build(CLASSES, ("a drawing of a {}.", "  a {} shape  "), use_cache=False)  # read as the file's lines
    assert given.meta["templates"] == from_file.meta["templates"] == ["a drawing of a {}.", "a {} shape"]
    assert torch.equal(given.weights, from_file.weights)

    assert tiny.classifier is not None
    zsc.use(tiny.classifier)
    folder = next(iter(shapes)).parent
    expected = [(str(p), label) for p, label in shapes.items()]
    by_folder = [(p.path, p.label) for p in zsc.classify([folder], top_k=np.int64(1), batch_size=2)]
    by_str = [(p.path, p.label) for p in zsc.classify_paths([str(p) for p in shapes])]
    assert sorted(by_folder) == sorted(by_str)
    assert sum(got == want for got, want in zip(sorted(by_str), sorted(expected), strict=True)) >= len(expected) - 1
    assert list(zsc.classify([])) == []
    features = [x for _, x in zsc.encode_paths(iter(shapes), use_cache=False)]
    assert all(isinstance(x, torch.Tensor) for x in features)


def test_label_objects_are_built_as_given(tiny: ZeroShotClassifier) -> None:
    """A name holding '|' or '=' (a folder called AC|DC) is no spec to parse again."""
    zsc = ZeroShotClassifier(tiny.model)  # (the shared fixture keeps its classifier for the other tests)
    given = [Label("AC|DC", ("AC|DC",)), Label("a=b", ("a=b",)), Label("a", ("b",))]
    built = zsc.build(given, "simple")
    assert built.labels == tuple(given)
    assert zsc.build(["AC|DC"], "simple").labels == (Label("AC", ("AC", "DC")),)
    with pytest.raises(UsageError, match="not empty"):
        zsc.build([Label("cat", ())], "simple")


def test_a_custom_config_names_its_model_unless_a_name_is_given(tiny_clip: Any) -> None:
    """As --model-config does: no name needed, and the default model's name is not taken for the config's."""
    zsc = ZeroShotClassifier.from_pretrained(
        pretrained=str(tiny_clip.checkpoint), model_config=tiny_clip.config, device="cpu"
    )
    assert zsc.model.name == tiny_clip.config.stem == "tiny-clip"


def test_results_are_scored_against_the_classifier_of_their_call(
    tiny: ZeroShotClassifier, shapes: dict[Path, str]
) -> None:
    """A build() (or use()) after a classify call, before or while its lazy results are read, changes the calls
    that follow, not those results: one stream never mixes two label sets."""
    zsc = ZeroShotClassifier(tiny.model)
    first, then = CLASSES[:2], CLASSES[2:]
    zsc.build(first, "simple", use_cache=False)
    folder = next(iter(shapes)).parent
    calls = [
        zsc.classify([folder], top_k=2),
        zsc.classify_paths(list(shapes), top_k=2, use_cache=False),
        zsc.classify_images([Image.open(path) for path in shapes], top_k=2),
    ]
    zsc.build(then, "simple", use_cache=False)
    for results in calls:
        assert {label for p in results for label, _ in p.top_k} == set(first)
    assert {p.label for p in zsc.classify_paths(list(shapes), use_cache=False)} <= set(then)


@pytest.mark.parametrize("aliases", ["circle", b"circle", ("circle", 1), None])
def test_aliases_are_a_list_not_a_string_read_letter_by_letter(aliases: Any) -> None:
    with pytest.raises(UsageError, match=r"aliases must be a list or tuple of strings, not .*Label\('circle', \("):
        Label("circle", aliases)
    assert Label("cat", ["cat", "kitten"]) == Label("cat", ("cat", "kitten"))  # a list is taken, kept as a tuple


def test_a_classifier_made_by_hand_takes_names_and_says_its_shape(
    tiny: ZeroShotClassifier, shapes: dict[Path, str]
) -> None:
    """Prototype vectors from the model's own features, as the README shows: names for labels, one column each."""
    from clipzs.classifier import Classifier

    paths = list(shapes)[:2]
    vectors = torch.stack([f for _, f in tiny.encode_paths(paths)], 1)  # type: ignore[misc]
    meta = {"fingerprint": tiny.model.fingerprint}
    with pytest.raises(UsageError, match=r"weights must be a tensor \[D, C\] with one column per label \(2\)"):
        Classifier(vectors.T, ["first", "second"], meta=meta)
    with pytest.raises(UsageError, match="labels must be a list, not 'first'"):
        Classifier(vectors, "first", meta=meta)  # type: ignore[arg-type]
    mine = ZeroShotClassifier(tiny.model)
    mine.use(Classifier(vectors, ["first", "second"], meta=meta))
    assert [p.label for p in mine.classify_paths(paths, use_cache=False)] == ["first", "second"]
