"""clipzs: zero-shot image classification with CLIP-family models.

Importing clipzs is cheap: torch and open_clip load only when a model-facing name is first used.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from clipzs.errors import ClassifierError, ClipzsError, ImageError, ModelError, UsageError
from clipzs.prediction import Prediction
from clipzs.prompts import Label, load_templates, parse_labels

try:
    __version__ = version("clipzs")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from clipzs.api import ZeroShotClassifier
    from clipzs.classifier import Classifier
    from clipzs.model import LoadedModel, load_model

__all__ = [
    "Classifier",
    "ClassifierError",
    "ClipzsError",
    "ImageError",
    "Label",
    "LoadedModel",
    "ModelError",
    "Prediction",
    "UsageError",
    "ZeroShotClassifier",
    "load_model",
    "load_templates",
    "parse_labels",
]

_LAZY = {
    "ZeroShotClassifier": "clipzs.api",
    "Classifier": "clipzs.classifier",
    "LoadedModel": "clipzs.model",
    "load_model": "clipzs.model",
}


def __getattr__(name: str) -> Any:
    """Import the torch-backed parts of the API on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clipzs' has no attribute {name!r}")
