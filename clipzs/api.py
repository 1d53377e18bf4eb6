"""The library's facade: load a model, build (or load) a classifier, classify images.

    from clipzs import ZeroShotClassifier
    zsc = ZeroShotClassifier.from_pretrained("ViT-B-32-256", "datacomp_s34b_b86k")
    zsc.build(["cat", "dog=dog|puppy"])
    for prediction in zsc.classify(["photos/"]):
        print(prediction.path, prediction.label, prediction.score)

The library never prints and never exits: failures are ClipzsError exceptions, unreadable images are
predictions whose ``error`` says why.
"""

from __future__ import annotations

import contextlib
import itertools
import numbers
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, Union

import numpy as np
import torch
from PIL import Image

from clipzs import scoring
from clipzs.cache import cache_dir, key_of
from clipzs.classifier import FORMAT_VERSION, Classifier
from clipzs.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_TEMPLATES,
    DEFAULT_TOP_K,
    GPU_BATCH_SIZE,
)
from clipzs.device_decode import FILES_PER_TASK, DeviceGeometry, JpegBytes, read_jpeg, resolve
from clipzs.errors import ClassifierError, ClipzsError, ImageError, UsageError
from clipzs.features import FeatureCache, FileKey
from clipzs.images import Draft, discover, from_memory, load_image, ordered_map
from clipzs.model import LoadedModel, load_model
from clipzs.output import shortened
from clipzs.prediction import Prediction
from clipzs.prompts import PLACEHOLDER, Label, check_labels, expand, load_templates, parse_label, parse_templates


class ZeroShotClassifier:
    """A model and, once built or loaded, the classifier it scores images against."""

    def __init__(self, model: LoadedModel, classifier: Classifier | None = None) -> None:
        self.model = model
        self.classifier = classifier

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        pretrained: str | None = None,
        *,
        model_config: str | os.PathLike[str] | None = None,
        device: str = "auto",
        precision: str = "auto",
    ) -> ZeroShotClassifier:
        """Load an open_clip model: ``model`` is its name (None: the one ``model_config`` names, else clipzs's
        default), ``pretrained`` a tag or a local checkpoint file (None: the default model's own weights).
        ``precision``: how the image tower computes (``LoadedModel.with_precision``)."""
        return cls(load_model(model, pretrained, model_config=model_config, device=device, precision=precision))

    @classmethod
    def from_classifier_file(
        cls,
        path: str | os.PathLike[str],
        *,
        model: str | None = None,
        pretrained: str | None = None,
        model_config: str | os.PathLike[str] | None = None,
        device: str = "auto",
        precision: str = "auto",
    ) -> ZeroShotClassifier:
        """Load a classifier file and the model it was built for (or the one given, which must match)."""
        classifier = Classifier.load(Path(path))
        meta = classifier.meta
        other_tag = (
            pretrained and pretrained != meta.get("pretrained") and _is_tag(model or meta.get("model"), pretrained)
        )
        if (model and model != meta.get("model")) or other_tag:  # said now, before weights load or download
            raise ClassifierError(
                f"{path} was built for {classifier.built_for}, not for {model or meta.get('model')} with weights "
                f"{pretrained or meta.get('pretrained')}; rebuild it, or run without --model/--pretrained to use its "
                "own"
            )
        recorded = meta.get("model_config")
        if recorded and model_config is None and not Path(recorded).is_file():  # its model is named after the file
            raise ClassifierError(
                f"{path} was built for {classifier.built_for} from the model config {recorded}, which no longer "
                "exists: give that config (or a copy of it) with --model-config FILE (model_config= in the library)"
            )
        try:
            loaded = load_model(
                model or (None if model_config else meta.get("model")),
                pretrained or meta.get("pretrained", ""),
                model_config=model_config or _existing(meta.get("model_config")),
                device=device,
                precision=precision,
            )
        except ClipzsError as e:
            if model or pretrained or model_config:
                raise
            hint = f"{path} names this model; point at it with --pretrained/--model-config"
            raise type(e)(f"{e} ({hint})") from e
        _check_model(classifier, loaded, str(path))
        return cls(loaded, classifier)

    def build(
        self,
        labels: Iterable[Label | str],
        templates: str | Iterable[str] = DEFAULT_TEMPLATES,
        *,
        use_cache: bool = True,
    ) -> Classifier:
        """Encode every prompt of every label into the classifier matrix; reuse the cached one if present.

        ``labels``: a list of Label objects or specs such as ``"cat"`` / ``"cat=cat|kitten"``. ``templates``: a
        built-in set name, a template file, or a list of templates, read as the lines of a template file are.
        """
        hint = "build(['cat', 'dog=dog|puppy']); for 'cat,dog' as --labels takes it: build(s.split(','))"
        if isinstance(labels, Mapping):  # (iterated, a dict gives its keys: the aliases it maps them to would be lost)
            raise UsageError(
                f"labels must be a list, not a {type(labels).__name__}, whose values would be left out: for names "
                "and their aliases, build([Label(name, tuple(aliases)) for name, aliases in labels.items()])"
            )
        specs = _items(labels, (str, Label), "labels", hint)
        label_objs = check_labels(  # (Label objects as given: a name holding '|' or '=' is no spec to parse again)
            x if isinstance(x, Label) else parse_label(x) for x in specs if isinstance(x, Label) or x.strip()
        )
        template_list = _templates(templates)
        meta = self.meta_for(template_list)
        labelled = [[label.name, list(label.aliases)] for label in label_objs]
        key = key_of({**meta, "labels": labelled, "format_version": FORMAT_VERSION})
        path = cache_dir() / "classifiers" / f"{key}.safetensors"
        if use_cache and path.is_file():
            try:
                self.classifier = Classifier.load(path)
                return self.classifier
            except ClassifierError:
                pass  # a damaged cache entry is rebuilt and replaced below
        self.classifier = self._encode_classifier(label_objs, template_list, meta)
        if use_cache:
            with contextlib.suppress(OSError):  # an unwritable cache costs a rebuild next time, nothing else
                self.classifier.save(path)
        return self.classifier

    def meta_for(self, templates: Sequence[str]) -> dict[str, object]:
        """What determines a classifier built with this model and these templates: its file metadata."""
        import open_clip

        return {
            "kind": "zero-shot",
            "model": self.model.name,
            "pretrained": self.model.pretrained,
            "fingerprint": self.model.fingerprint,
            "model_config": self.model.model_config,
            "open_clip_version": open_clip.__version__,
            "templates": list(templates),
        }

    def _encode_classifier(
        self, labels: Sequence[Label], templates: Sequence[str], meta: dict[str, object]
    ) -> Classifier:
        _check_label_is_read(templates, self.model.tokenize)
        prompts = [expand(label, templates) for label in labels]
        tokens = self.model.tokenize([p for group in prompts for p in group])
        sizes = [len(group) for group in prompts]
        _check_told_apart(labels, prompts, torch.split(tokens, sizes))
        per_label = torch.split(self.model.encode_tokens(tokens), sizes)
        return Classifier(weights=scoring.classifier_matrix(per_label), labels=tuple(labels), meta=meta)

    def use(self, classifier: Classifier) -> None:
        """Score against this classifier from now on; it must have been built for this model's weights."""
        if not isinstance(classifier, Classifier):
            raise UsageError(
                f"use() takes a Classifier, not {classifier!r}: use(Classifier.load(path)) reads a classifier file, "
                "ZeroShotClassifier.from_classifier_file(path) loads one with its model"
            )
        _check_model(classifier, self.model, "this classifier")
        self.classifier = classifier

    def classify(
        self,
        inputs: Iterable[str | os.PathLike[str]],
        *,
        top_k: int = DEFAULT_TOP_K,
        batch_size: int | None = None,
        workers: int | None = None,
    ) -> Iterator[Prediction]:
        """Score images (files, or folders walked recursively) against the classifier, in input order.

        The arguments are checked now; the images are read as the results are iterated.
        """
        items = _items(inputs, (str, os.PathLike), "inputs", "classify(['photo.jpg', 'folder/'])")
        paths = (p for item in items for p in discover([os.fspath(item)]))
        return self.classify_paths(paths, top_k=top_k, batch_size=batch_size, workers=workers)

    def classify_paths(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        top_k: int = DEFAULT_TOP_K,
        batch_size: int | None = None,
        workers: int | None = None,
        use_cache: bool = True,
        fast_decode: bool = True,
        device_decode: bool | None = None,
    ) -> Iterator[Prediction]:
        """Score image files as given (no folder walking), in order; unreadable ones carry their error.

        The options are those of ``encode_paths``; they are checked now, the images read as the results are iterated.
        The classifier is the one current now: a ``build`` or ``use`` before the results are all read changes
        later calls, not these results.
        """
        if self.classifier is None:
            raise UsageError("no classifier: call build(labels) or load a classifier file first")
        classifier = self.classifier  # bound now, not when the results are iterated (they could mix two label sets)
        k = _at_least_one("top_k", top_k)
        encoded = self.encode_paths(
            paths,
            batch_size=batch_size,
            workers=workers,
            use_cache=use_cache,
            fast_decode=fast_decode,
            device_decode=device_decode,
        )
        return (p for group in _batched(encoded, DEFAULT_BATCH_SIZE) for p in self.predict(group, k, classifier))

    def classify_images(
        self,
        images: Iterable[Image.Image],
        *,
        top_k: int = DEFAULT_TOP_K,
        batch_size: int | None = None,
        workers: int | None = None,
    ) -> Iterator[Prediction]:
        """Score images already in memory (PIL images: an upload, a video frame, a dataset's items) against the
        classifier, in order, as files of the same pixels are scored (EXIF orientation applied, any mode).

        A prediction's ``path`` is the file PIL opened the image from, or ""; an image whose pixels cannot be read
        (opened lazily from a truncated file) carries its error. The arguments are checked now; the images are
        read as the results are iterated, against the classifier current now (as ``classify_paths``). Nothing is
        cached: features are cached by file.
        """
        if self.classifier is None:
            raise UsageError("no classifier: call build(labels) or load a classifier file first")
        k = _at_least_one("top_k", top_k)
        hint = "a list such as [Image.open('photo.jpg')] (classify() takes paths)"
        items = _items(images, (Image.Image,), "images", hint)
        return self._classify_images(items, k, *self._batch_and_workers(batch_size, workers), self.classifier)

    def _classify_images(
        self, images: Iterable[Image.Image], k: int, batch_size: int, workers: int, classifier: Classifier
    ) -> Iterator[Prediction]:
        def load(image: Image.Image) -> tuple[str, Image.Image | ImageError]:
            """The image's name and its own copy of its pixels, read in the thread that pulls it from ``images``,
            before the next is pulled: a generator may close it once yielded (``with Image.open(f) as im: yield
            im``; close() frees the pixels of the image itself), and the same lazily opened image may come several
            times (worker threads loading it at once break Pillow). The workers resize and crop."""
            filename = getattr(image, "filename", "")
            name = os.fsdecode(filename) if isinstance(filename, (str, bytes)) else ""
            try:
                rgb = from_memory(image)
            except ImageError as e:
                return name, e
            return name, rgb.copy() if rgb is image else rgb

        def prepare(item: tuple[str, Image.Image | ImageError]) -> np.ndarray | torch.Tensor | ImageError:
            _, pixels = item
            if isinstance(pixels, ImageError):
                return pixels
            try:
                return self.model.prepare(pixels)
            except ImageError as e:
                return e

        loaded = (load(image) for image in images)
        for group in _batched(ordered_map(prepare, loaded, workers, window=2 * batch_size), batch_size):
            pixels = [x for _, x in group if not isinstance(x, ImageError)]
            encoded = iter(self.model.encode_prepared(pixels) if pixels else ())
            yield from self.predict(
                [(name, x if isinstance(x, ImageError) else next(encoded)) for (name, _), x in group], k, classifier
            )

    def encode_paths(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        batch_size: int | None = None,
        workers: int | None = None,
        use_cache: bool = True,
        fast_decode: bool = True,
        device_decode: bool | None = None,
    ) -> Iterator[tuple[Path, torch.Tensor | ImageError]]:
        """L2-normalised image features [D] of each file, in order, or the reason it cannot be read.

        ``use_cache``: read and write the image-feature cache, so an image seen before is not decoded or
        encoded again. ``fast_decode``: decode large JPEGs at reduced scale (see ``images.load_image``).
        ``device_decode``: decode JPEGs on the model's device (see ``device_decode``); by default on CUDA.
        The options are checked now; the files are read as the results are iterated.
        """
        hint = "a list such as [Path('photo.jpg')] (classify() walks folders)"
        files = map(Path, _items(paths, (str, os.PathLike), "paths", hint))
        batch_size, workers = self._batch_and_workers(batch_size, workers)
        draft = self.model.draft if fast_decode else None
        geometry = self._device_geometry(device_decode)
        return self._encode_paths(files, batch_size, workers, draft, geometry, use_cache)

    def _batch_and_workers(self, batch_size: int | None, workers: int | None) -> tuple[int, int]:
        """Images per forward pass and decode threads: as given (checked), or the defaults for the device."""
        on_gpu = self.model.device.type == "cuda"
        return (
            _at_least_one("batch_size", batch_size, GPU_BATCH_SIZE if on_gpu else DEFAULT_BATCH_SIZE),
            _at_least_one("workers", workers, min(32 if on_gpu else 8, os.cpu_count() or 1)),
        )

    def _encode_paths(
        self,
        paths: Iterable[Path],
        batch_size: int,
        workers: int,
        draft: Draft | None,
        geometry: DeviceGeometry | None,
        use_cache: bool,
    ) -> Iterator[tuple[Path, torch.Tensor | ImageError]]:
        """``encode_paths`` once its arguments are checked: a generator, so nothing is read before it is iterated."""
        cache = self._feature_cache(draft, geometry) if use_cache else None

        def decode_on_cpu(path: Path) -> Item:
            try:
                return self.model.prepare(load_image(path, draft=draft))
            except ImageError as e:
                return e

        def prepare(item: tuple[Path, FileKey | None, Cached | None]) -> Item:
            path, _, cached = item
            if cached is not None:
                return cached
            jpeg = read_jpeg(path) if geometry is not None else None
            return jpeg if jpeg is not None else decode_on_cpu(path)

        def prepare_all(items: tuple[tuple[Path, FileKey | None, Cached | None], ...]) -> list[Item]:
            return [prepare(item) for item in items]

        # Reading a JPEG for the device takes microseconds: a task per file would cost more in hand-offs between
        # threads (each taking the GIL) than the reading itself.
        per_task = FILES_PER_TASK if geometry is not None else 1
        try:
            batch: list[tuple[Path, FileKey | None, Item]] = []
            pending = 0
            in_flight = max(2 * batch_size, 8 * workers) // per_task
            tasks = ordered_map(prepare_all, _batched(_with_cached(paths, cache), per_task), workers, in_flight)
            for items, results in tasks:
                for (path, key, _), result in zip(items, results, strict=True):
                    batch.append((path, key, result))
                    pending += not isinstance(result, (Cached, ImageError))
                    if pending >= batch_size or len(batch) >= 4 * batch_size:
                        yield from self._encode_batch(batch, cache, geometry, decode_on_cpu)
                        batch, pending = [], 0
            yield from self._encode_batch(batch, cache, geometry, decode_on_cpu)
        finally:
            if cache is not None:
                cache.close()

    def _device_geometry(self, device_decode: bool | None) -> DeviceGeometry | None:
        """The device-decoding geometry when asked for (by default: on CUDA) and the preprocess allows it."""
        wanted = self.model.device.type == "cuda" if device_decode is None else device_decode
        geometry = DeviceGeometry.of(self.model.pixels.geometry) if wanted and self.model.pixels else None
        if device_decode and geometry is None:
            raise UsageError(
                f"decoding on the device needs the usual resize-and-crop preprocess; {self.model.name} differs"
            )
        return geometry

    def _feature_cache(self, draft: Draft | None, geometry: DeviceGeometry | None) -> FeatureCache | None:
        import open_clip

        # The device decodes whole, but leaves some JPEGs (rotated, CMYK) to the CPU's decoder and its drafts.
        decoder = f"{'device,' if geometry else ''}draft:{draft.key if draft else 'none'}"
        encoder = f"{self.model.fingerprint}|{self.model.cache_tag}|{decoder}|open_clip {open_clip.__version__}"
        return FeatureCache.open(cache_dir() / "features.sqlite3", encoder)

    @property
    def scores_sum_to_one(self) -> bool:
        """Whether scores are a softmax over the labels (one label then always scores 1), not independent
        sigmoids as SigLIP's zero-shot scores are."""
        return self._sums_to_one(self.classifier)

    def _sums_to_one(self, clf: Classifier | None) -> bool:
        return clf is not None and (clf.logit_scale is not None or self.model.logit_bias is None)

    def logits(self, features: torch.Tensor, classifier: Classifier | None = None) -> torch.Tensor:
        """Logits [N, C] of image features [N, D] against the classifier (by default the current one), which rank
        the labels: a zero-shot classifier uses the model's temperature (and SigLIP's bias), a trained one its own
        scale and bias."""
        clf = classifier if classifier is not None else self.classifier
        if clf is None:
            raise UsageError("no classifier: call build(labels) or load a classifier file first")
        if clf.logit_scale is not None:
            return scoring.logits(features, clf.weights, clf.logit_scale, clf.bias)
        return scoring.logits(features, clf.weights, self.model.logit_scale, self.model.logit_bias)

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """Scores [N, C] of image features [N, D]: a softmax of the logits, or an independent sigmoid per label
        for SigLIP's zero-shot scores (``scores_sum_to_one``)."""
        return scoring.probabilities(self.logits(features), sigmoid=not self.scores_sum_to_one)

    def _encode_batch(
        self,
        items: list[tuple[Path, FileKey | None, Item]],
        cache: FeatureCache | None,
        geometry: DeviceGeometry | None,
        decode_on_cpu: Callable[[Path], Item],
    ) -> list[tuple[Path, torch.Tensor | ImageError]]:
        """Encode the batch's decoded images and store their features; cached features pass through."""
        if geometry is not None:
            values = resolve([x for _, _, x in items], self.model.device, geometry, decode_on_cpu)
            items = [(path, key, value) for (path, key, _), value in zip(items, values, strict=True)]
        assert not any(isinstance(x, JpegBytes) for _, _, x in items), "decoded above, or features would shift"
        images = [(key, x) for _, key, x in items if not isinstance(x, (Cached, ImageError, JpegBytes))]
        fresh: Iterator[torch.Tensor] = iter(())
        if images:
            encoded = self.model.encode_prepared([x for _, x in images])
            if cache is not None:
                cache.put_many((key, row.numpy()) for (key, _), row in zip(images, encoded, strict=True) if key)
            fresh = iter(encoded)
        return [
            (path, x if isinstance(x, ImageError) else x.features if isinstance(x, Cached) else next(fresh))
            for path, _, x in items
        ]

    def predict(
        self,
        items: Sequence[tuple[str | Path, torch.Tensor | ImageError]],
        k: int,
        classifier: Classifier | None = None,
    ) -> Iterator[Prediction]:
        """Score features against the classifier (by default the current one): top-k labels per readable image,
        the error otherwise."""
        clf = classifier if classifier is not None else self.classifier
        assert clf is not None
        features = [x for _, x in items if isinstance(x, torch.Tensor)]
        if features:
            logits = self.logits(torch.stack(features), clf)
            values, indices = (t.tolist() for t in scoring.top_k(logits, k, sigmoid=not self._sums_to_one(clf)))
        names = clf.names
        row = 0
        for path, x in items:
            if isinstance(x, ImageError):
                yield Prediction(path=str(path), error=str(x))
                continue
            top = tuple((names[i], v) for i, v in zip(indices[row], values[row], strict=True))
            yield Prediction(path=str(path), label=top[0][0], score=top[0][1], top_k=top)
            row += 1


def _check_model(classifier: Classifier, model: LoadedModel, source: str) -> None:
    """``Classifier.check_model`` for this model, which is also the model its config builds under the name the
    classifier records (a config copied to a file of another name, which names the model, is the same model)."""
    recorded = classifier.meta.get("model")
    renamed = model.fingerprint_named(recorded) if isinstance(recorded, str) and recorded else None
    same = [renamed] if renamed else []
    classifier.check_model(model.fingerprint, model.name, source=source, width=model.feature_width, same=same)


def _check_label_is_read(templates: Sequence[str], tokenize: Callable[[Sequence[str]], torch.Tensor]) -> None:
    """Refuse a template that puts the label past the tokens the text encoder reads (77 for CLIP, fewer for small
    models): its prompt would be the same for every label, and would pull every class towards one vector. Alone,
    it would make every label the same; among others, it would do so without a word."""
    tokens = tokenize([t.replace(PLACEHOLDER, word) for t in templates for word in ("cat", "dog")])
    for template, cat, dog in zip(templates, tokens[0::2], tokens[1::2], strict=True):
        if torch.equal(cat, dog):
            raise UsageError(
                f"the template {shortened(template)!r} puts the label past the {tokens.shape[1]} tokens this model "
                "reads, so its prompt is the same for every label: shorten what comes before its '{}'"
            )


def _check_told_apart(labels: Sequence[Label], prompts: Sequence[list[str]], tokens: Sequence[torch.Tensor]) -> None:
    """Refuse labels whose prompts the text encoder reads alike: their classifier rows would be the same, every
    image would score them equally, and the first would always win. Prompts longer than the model's context
    (77 tokens for CLIP, fewer for small models) are cut there, and tokenizers ignore letter case and spacing, so
    labels that differ only past the cut, or only so, collide."""
    seen: dict[bytes, int] = {}
    for i, rows in enumerate(tokens):
        j = seen.setdefault(rows.numpy().tobytes(), i)
        if j != i:
            why = (
                "they have the same prompts; give each aliases of its own"
                if prompts[i] == prompts[j]
                else "their prompts differ only in what its tokenizer does not read (letter case, spacing, or what "
                f"comes past the {rows.shape[1]} tokens it reads); put what tells them apart first, in other words"
            )
            raise UsageError(f"labels {labels[j].name!r} and {labels[i].name!r} are the same to this model: {why}")


@dataclass(frozen=True)
class Cached:
    """Features [D] of an image read from the feature cache: nothing to decode or encode."""

    features: torch.Tensor


B = TypeVar("B")
Item = Union[Cached, JpegBytes, np.ndarray, torch.Tensor, ImageError]
"""Cached features, a decoded image ready to encode (``LoadedModel.prepare``), or why the file cannot be read."""


def _with_cached(
    paths: Iterable[Path], cache: FeatureCache | None, chunk: int = 256
) -> Iterator[tuple[Path, FileKey | None, Cached | None]]:
    """Each path with its file key and its cached features (None when absent), looked up a chunk at a time."""
    for group in _batched(paths, chunk):
        keys = [FileKey.of(p) if cache is not None else None for p in group]
        found = cache.get_many([k for k in keys if k]) if cache is not None else {}
        for path, key in zip(group, keys, strict=True):
            vector = found.get(key) if key else None
            yield path, key, Cached(torch.from_numpy(vector.copy())) if vector is not None else None


def _batched(items: Iterable[B], n: int) -> Iterator[tuple[B, ...]]:
    iterator = iter(items)
    while group := tuple(itertools.islice(iterator, n)):
        yield group


def _is_tag(model: object, pretrained: str) -> bool:
    """Whether ``pretrained`` is one of open_clip's pretrained tags of ``model`` (not a file, nor a typo)."""
    import open_clip

    return isinstance(model, str) and bool(open_clip.get_pretrained_cfg(model, pretrained))


def _existing(path: str | None) -> str | None:
    return path if path and Path(path).is_file() else None


# The arguments users get wrong, checked when a method is called (not when its results are first iterated) and
# refused with a UsageError that shows the right call, as the README promises, rather than a Python error from
# deep inside (or, worse, a meaningless result).


def _items(value: object, kinds: tuple[type, ...], name: str, example: str) -> Iterator[Any]:
    """The items of an argument that takes several values, each of one of ``kinds``: a list is checked whole
    now, a generator item by item as it is iterated (so that a stream of paths still streams).

    A lone string or path is refused, neither iterated (that would give one label or file per character) nor
    taken as a one-item list: for labels a string could as well mean 'cat,dog' as --labels takes it, or a file of
    labels (as ``templates=`` takes a file), and for inputs accepting it would make the same argument type mean
    one thing in build and another in classify. One rule for both: a list-valued argument takes a list.
    """
    if isinstance(value, (str, bytes, os.PathLike)):
        raise UsageError(f"{name} must be a list, not the single value {value!r}: {example}")
    if not isinstance(value, Iterable):
        raise UsageError(f"{name} must be a list, not {value!r}: {example}")
    checked = (_item(item, kinds, name) for item in value)
    return iter(tuple(checked)) if isinstance(value, Collection) else checked


def _item(item: object, kinds: tuple[type, ...], name: str) -> object:
    if not isinstance(item, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        article = "an" if names[0] in "AEIOU" else "a"
        raise UsageError(f"{name}: each item must be {article} {names}, not {item!r}")
    return item


def _at_least_one(name: str, value: object, default: int | None = None) -> int:
    """A count (top_k, batch_size, workers): a whole number of at least 1; None means the default, if any."""
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise UsageError(f"{name} must be a whole number of at least 1, not {value!r}")
    return int(value)


def _templates(templates: object) -> tuple[str, ...]:
    """A built-in set's name or a template file (a string, as --templates takes), or the templates themselves,
    which are read as the lines of a template file are: the CLI and the library accept the same templates, each
    with exactly one '{}' where the label goes, and refuse the rest with the same message."""
    if isinstance(templates, str):
        return load_templates(templates)
    given = _items(templates, (str,), "templates", "templates='openai-7' or templates=['a photo of {}.']")
    return parse_templates("\n".join(given), "templates=[...]")
