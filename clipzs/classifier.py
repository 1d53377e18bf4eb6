"""Classifier files: the matrix W [D, C] as safetensors, with JSON metadata saying what made it.

Safetensors holds only tensors and a string header, so a classifier file from someone else cannot run code.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clipzs.cache import atomic_write
from clipzs.errors import ClassifierError, UsageError
from clipzs.prompts import Label

FORMAT = "clipzs-classifier"
FORMAT_VERSION = 1
TENSOR_NAME = "weights"
BIAS_NAME = "bias"


@dataclass(frozen=True)
class Classifier:
    """Class vectors W [D, C] and the labels they stand for, in order: L2-normalised columns for zero-shot; a
    probe's or a blend's fitted weights, with a ``bias``, for trained classifiers."""

    weights: torch.Tensor
    labels: tuple[Label, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    """kind, model, pretrained, fingerprint, open_clip version, templates: what determines the weights."""
    bias: torch.Tensor | None = None
    """Per-class bias [C] of a trained (linear-probe) classifier; None for zero-shot ones."""

    def __post_init__(self) -> None:
        # One made by hand (``Classifier(weights, ['cat', 'dog'], meta=...)``) is checked as a file's contents are,
        # with a UsageError saying what to give: a name alone is a label that is its own alias.
        labels = self.labels
        if isinstance(labels, (str, bytes)) or not isinstance(labels, (list, tuple)):
            raise UsageError(f"labels must be a list, not {labels!r}: Classifier(weights, ['cat', 'dog'], meta=...)")
        if not all(isinstance(label, (str, Label)) for label in labels):
            raise UsageError(f"labels must be names or Label objects, not {list(labels)!r}")
        object.__setattr__(self, "labels", tuple(Label(x, (x,)) if isinstance(x, str) else x for x in labels))
        shape = tuple(self.weights.shape) if isinstance(self.weights, torch.Tensor) else None
        if shape is None or len(shape) != 2 or shape[1] != len(labels):
            raise UsageError(
                f"weights must be a tensor [D, C] with one column per label ({len(labels)}), not "
                f"{list(shape) if shape is not None else type(self.weights).__name__}: torch.stack(vectors, 1)"
            )
        if self.bias is not None and tuple(self.bias.shape) != (len(labels),):
            raise UsageError(f"bias must be a tensor [C] of one number per label ({len(labels)})")

    @property
    def logit_scale(self) -> float | None:
        """The scale of a trained classifier's logits (1: they are used as they are); None: the model's."""
        scale = self.meta.get("logit_scale")
        return None if scale is None else float(scale)

    @property
    def names(self) -> list[str]:
        return [label.name for label in self.labels]

    def save(self, path: Path) -> None:
        """Write the classifier file atomically. A failed write (a full disk) raises OSError, of ``path``:
        safetensors serialises to bytes here and Python writes them, where safetensors' own file writer raises
        an error of its own that names no file."""
        from safetensors.torch import save

        header = {"format": FORMAT, "format_version": FORMAT_VERSION, **self.meta}
        header["labels"] = [{"name": label.name, "aliases": list(label.aliases)} for label in self.labels]
        metadata = {"clipzs": json.dumps(header)}  # ASCII: a path that is not UTF-8 is kept as a \u escape
        tensors = {TENSOR_NAME: self.weights.detach().float().contiguous().cpu()}
        if self.bias is not None:
            tensors[BIAS_NAME] = self.bias.detach().float().contiguous().cpu()
        data = save(tensors, metadata=metadata)

        def write(tmp: Path) -> None:
            tmp.write_bytes(data)

        atomic_write(Path(path), write)

    @classmethod
    def load(cls, path: Path) -> Classifier:
        """Read a classifier file, checking its format; raises ClassifierError with the reason."""
        from safetensors import safe_open

        path = Path(path)
        if path.is_dir():
            raise ClassifierError(
                f"{path} is a folder, not a classifier file: name the file itself (one that `clipzs build-classifier` "
                "or `clipzs probe fit` wrote)"
            )
        if not path.is_file():
            raise ClassifierError(f"classifier file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get("clipzs")
                # Copies: a tensor left mapped from the file would fault (SIGBUS) if the file were cut meanwhile.
                weights = f.get_tensor(TENSOR_NAME).clone() if raw else None
                bias = f.get_tensor(BIAS_NAME).clone() if raw and BIAS_NAME in f.keys() else None  # noqa: SIM118
            header = json.loads(raw) if raw else None
        except Exception as e:
            raise ClassifierError(f"{path} is not a clipzs classifier file ({e})") from e
        if not isinstance(header, dict) or header.get("format") != FORMAT or weights is None:
            raise ClassifierError(f"{path} is not a clipzs classifier file (build one with `clipzs build-classifier`)")
        if header.get("format_version") != FORMAT_VERSION:
            raise ClassifierError(
                f"{path} has classifier format version {header.get('format_version')}; this clipzs reads version "
                f"{FORMAT_VERSION}: rebuild it"
            )
        try:
            labels, weights, bias = _contents(header, weights, bias)
        except ValueError as e:
            raise ClassifierError(f"{path} is damaged: {e}") from e
        meta = {k: v for k, v in header.items() if k not in ("format", "format_version", "labels")}
        return cls(weights=weights, labels=labels, meta=meta, bias=bias)

    @property
    def built_for(self) -> str:
        """The model it names, for messages: 'model NAME with weights TAG-OR-FILE'."""
        return f"model {self.meta.get('model')} with weights {self.meta.get('pretrained') or 'of the hub'}"

    def check_model(
        self,
        fingerprint: str,
        name: str,
        source: str = "this classifier",
        width: int | None = None,
        same: Collection[str] = (),
    ) -> None:
        """Refuse to score with weights made for another model (``LoadedModel.fingerprint``), or (given the
        model's feature ``width``) with a matrix whose rows do not match the model's features. ``same``: other
        fingerprints of the model as loaded (``LoadedModel.fingerprint_named``: its config under the name the
        classifier records).

        A file made before fingerprints named what a model is built from holds the weights' part alone, and is
        taken for those weights, as it was then."""
        stored = self.meta.get("fingerprint")
        if not isinstance(stored, str) or not stored:
            raise ClassifierError(
                f"{source} records no model that it was built for (its meta has no 'fingerprint'), so nothing says "
                f"that its vectors are {name}'s features: for a classifier made by hand from this model's features, "
                "give Classifier(weights, labels, meta={'fingerprint': zsc.model.fingerprint}); a classifier file "
                "from `clipzs build-classifier` or `clipzs probe fit` records it"
            )
        weights = fingerprint.split("|built:")[0]
        older = "|built:" not in stored  # (an hf-hub: model's was its name)
        if stored != fingerprint and stored not in same and not (older and weights.split("@")[0] == stored):
            built = self.built_for
            config = self.meta.get("model_config")
            own = f" (--model-config {config})" if config else ""
            if stored.split("|built:")[0] == weights:
                raise ClassifierError(
                    f"{source} was built for {built}{own}, the same weights in a model built otherwise (another config "
                    f"or options) than {name} as loaded now: rebuild it with the model as it is loaded now, "
                    "or load the one it names"
                )
            raise ClassifierError(
                f"{source} was built for {built}{own}, not for {name} as loaded now: rebuild it for this model, or "
                "load the one it names (without --model/--pretrained)"
            )
        if width is not None and self.weights.shape[0] != width:
            raise ClassifierError(
                f"{source} is damaged: its matrix has {self.weights.shape[0]} rows, but {name} makes features of "
                f"{width} numbers: rebuild it"
            )


TEXT_META = ("kind", "model", "pretrained", "fingerprint", "model_config")
"""Metadata that, where present, is text: it names the model to load and is shown to the user."""


def _contents(
    header: dict[str, Any], weights: torch.Tensor, bias: torch.Tensor | None
) -> tuple[tuple[Label, ...], torch.Tensor, torch.Tensor | None]:
    """The labels, float32 weights and bias of a classifier file's header and tensors; ValueError says what is
    wrong with them."""
    items = header.get("labels", [])
    _require(isinstance(items, list) and len(items) > 0, "it has no labels")
    _require(all(_is_label(item) for item in items), "each label needs a name and a list of aliases")
    labels = tuple(Label(item["name"], tuple(item["aliases"])) for item in items)
    twice = sorted(name for name, times in Counter(label.name for label in labels).items() if times > 1)
    _require(not twice, f"the label {', '.join(map(repr, twice))} is given twice")
    shape, n = tuple(weights.shape), len(labels)
    _require(weights.ndim == 2 and shape[0] > 0 and shape[1] == n, f"its matrix has shape {shape} for {n} labels")
    dtype = str(weights.dtype).removeprefix("torch.")
    _require(weights.is_floating_point(), f"its matrix holds {dtype}, not floating-point numbers")
    _require(bool(torch.isfinite(weights).all()), "its matrix holds infinite or NaN numbers")
    if bias is not None:
        ok = bias.is_floating_point() and tuple(bias.shape) == (n,) and bool(torch.isfinite(bias).all())
        _require(ok, f"its bias (shape {tuple(bias.shape)}, {bias.dtype}) is not {n} finite numbers")
    scale = header.get("logit_scale")
    _require(scale is None or _is_positive(scale), f"its logit_scale {scale!r} is not a positive number")
    wrong = [key for key in TEXT_META if not isinstance(header.get(key, ""), (str, type(None)))]
    _require(not wrong, f"its {', '.join(wrong)} should be text")
    return labels, weights.float(), None if bias is None else bias.float()


def _require(ok: bool, reason: str) -> None:
    if not ok:
        raise ValueError(reason)


def _is_label(item: object) -> bool:
    """A label as the file holds it: {"name": text, "aliases": [text, ...]}. Text may be blank: a probe's class
    folder named "_" is prompted as " "."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
        return False
    aliases = item.get("aliases")
    return isinstance(aliases, list) and len(aliases) > 0 and all(isinstance(alias, str) for alias in aliases)


def _is_positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf
