"""Classifier files: the matrix W [D, C] as safetensors, with JSON metadata saying what made it.

Safetensors holds only tensors and a string header, so a classifier file from someone else cannot run code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clipzs.cache import atomic_write
from clipzs.errors import ClassifierError
from clipzs.prompts import Label

FORMAT = "clipzs-classifier"
FORMAT_VERSION = 1
TENSOR_NAME = "weights"
BIAS_NAME = "bias"


@dataclass(frozen=True)
class Classifier:
    """Class vectors W [D, C] (L2-normalised columns) and the labels they stand for, in order."""

    weights: torch.Tensor
    labels: tuple[Label, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    """kind, model, pretrained, fingerprint, open_clip version, templates: what determines the weights."""
    bias: torch.Tensor | None = None
    """Per-class bias [C] of a trained (linear-probe) classifier; None for zero-shot ones."""

    @property
    def logit_scale(self) -> float | None:
        """The scale of a trained classifier's logits (1: they are used as they are); None: the model's."""
        scale = self.meta.get("logit_scale")
        return None if scale is None else float(scale)

    @property
    def names(self) -> list[str]:
        return [label.name for label in self.labels]

    def save(self, path: Path) -> None:
        """Write the classifier file atomically."""
        from safetensors.torch import save_file

        header = {"format": FORMAT, "format_version": FORMAT_VERSION, **self.meta}
        header["labels"] = [{"name": label.name, "aliases": list(label.aliases)} for label in self.labels]
        metadata = {"clipzs": json.dumps(header, ensure_ascii=False)}
        tensors = {TENSOR_NAME: self.weights.detach().float().contiguous().cpu()}
        if self.bias is not None:
            tensors[BIAS_NAME] = self.bias.detach().float().contiguous().cpu()
        atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    @classmethod
    def load(cls, path: Path) -> Classifier:
        """Read a classifier file, checking its format; raises ClassifierError with the reason."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ClassifierError(f"classifier file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get("clipzs")
                weights = f.get_tensor(TENSOR_NAME) if raw else None
                bias = f.get_tensor(BIAS_NAME) if raw and BIAS_NAME in f.keys() else None  # noqa: SIM118
            header = json.loads(raw) if raw else None
        except Exception as e:
            raise ClassifierError(f"{path} is not a clipzs classifier file ({e})") from e
        if not header or header.get("format") != FORMAT or weights is None:
            raise ClassifierError(f"{path} is not a clipzs classifier file (build one with `clipzs build-classifier`)")
        if header.get("format_version") != FORMAT_VERSION:
            raise ClassifierError(
                f"{path} has classifier format version {header.get('format_version')}; this clipzs reads version "
                f"{FORMAT_VERSION}: rebuild it"
            )
        labels = tuple(Label(item["name"], tuple(item["aliases"])) for item in header.pop("labels"))
        if weights.ndim != 2 or weights.shape[1] != len(labels):
            raise ClassifierError(
                f"{path} is damaged: its matrix has shape {tuple(weights.shape)} for {len(labels)} labels"
            )
        for key in ("format", "format_version"):
            header.pop(key)
        return cls(weights=weights, labels=labels, meta=header, bias=bias)

    def check_model(self, fingerprint: str, name: str, source: str = "this classifier") -> None:
        """Refuse to score with weights made for other model weights."""
        if self.meta.get("fingerprint") != fingerprint:
            raise ClassifierError(
                f"{source} was built for model {self.meta.get('model')} with weights {self.meta.get('pretrained')}, "
                f"not for {name} as loaded now; rebuild it, or run without --model/--pretrained to use its own"
            )
