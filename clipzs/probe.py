"""Linear probes and few-shot classifiers on image features, as the CLIP paper compares them with zero-shot.

A probe is an L2-regularised logistic regression (scikit-learn) on L2-normalised image features; its
regularisation strength is chosen on a held-out split of the training images, then it is refitted on all of
them. A blend interpolates the zero-shot classifier's logits with the probe's, the mixing weight also chosen on
held-out images: with few shots, the zero-shot prior helps most. Both are linear classifiers, saved in the same
file format as zero-shot ones, so ``classify --classifier`` and ``eval`` use them alike.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipzs.errors import UsageError
from clipzs.prompts import Label, load_templates

if TYPE_CHECKING:
    from clipzs.api import ZeroShotClassifier
    from clipzs.classifier import Classifier
    from clipzs.evaluate import Dataset

C_GRID = tuple(float(c) for c in np.logspace(-2, 4, 13))
"""Inverse regularisation strengths tried on held-out images (the paper sweeps a wide log range)."""
DEFAULT_C = 10.0
"""Used when there are too few images per class to hold any out."""
ALPHA_GRID = tuple(round(a, 2) for a in np.linspace(0, 1, 11))
HELD_OUT = 0.2


@dataclass(frozen=True)
class Linear:
    """Logits = features @ weights + bias, softmax over classes."""

    weights: np.ndarray  # [D, C]
    bias: np.ndarray  # [C]

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weights + self.bias


@dataclass(frozen=True)
class ProbeResult:
    classifier: Linear
    c: float
    alpha: float | None
    held_out_accuracy: float | None


def check_seed(seed: int) -> int:
    """A seed for drawing shots and held-out images is a whole number from 0 (checked before any work)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"a seed is a whole number from 0, not {seed!r}")
    return seed


def few_shot(targets: Sequence[int] | np.ndarray, shots: int, seed: int) -> list[int]:
    """Indices of ``shots`` images per class (all of a class that has fewer), drawn with a seeded generator."""
    rng = np.random.default_rng(check_seed(seed))
    truth = np.asarray(targets)
    chosen: list[int] = []
    for label in np.unique(truth):
        members = np.flatnonzero(truth == label)
        chosen += sorted(rng.choice(members, size=min(shots, len(members)), replace=False).tolist())
    return sorted(chosen)


def held_out_split(targets: Sequence[int] | np.ndarray, seed: int) -> tuple[list[int], list[int]]:
    """A stratified split: about HELD_OUT of each class with two or more images is held out."""
    rng = np.random.default_rng(check_seed(seed))
    truth = np.asarray(targets)
    train: list[int] = []
    held: list[int] = []
    for label in np.unique(truth):
        members = rng.permutation(np.flatnonzero(truth == label))
        count = max(1, round(HELD_OUT * len(members))) if len(members) >= 2 else 0
        held += members[:count].tolist()
        train += members[count:].tolist()
    return sorted(train), sorted(held)


def fit_logistic(features: np.ndarray, targets: np.ndarray, classes: int, c: float) -> Linear:
    """Multinomial logistic regression with L2 penalty, as a Linear over all ``classes``."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError as e:
        raise UsageError("linear probes need scikit-learn: pip install scikit-learn") from e
    present = np.unique(targets)
    if len(present) != classes:
        raise UsageError("every class needs at least one training image")
    model = LogisticRegression(C=c, max_iter=2000)
    with warnings.catch_warnings():  # few images of many classes is what few-shot means: no need to warn of it
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        model.fit(features, targets)
    if classes == 2:  # one logit for class 1 against class 0
        weights = np.stack([np.zeros(features.shape[1]), model.coef_[0]], axis=1)
        bias = np.array([0.0, model.intercept_[0]])
    else:
        weights, bias = model.coef_.T, model.intercept_
    return Linear(weights.astype(np.float32), bias.astype(np.float32))


def accuracy(logits: np.ndarray, targets: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == targets).mean())


def log_loss(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean cross-entropy of the softmax: how much probability the right classes get, not only whether they
    rank first."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(targets)), targets].mean())


def held_out_score(logits: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """What choices on held-out images maximise: accuracy, then (for the many ties of few held-out images, or
    of classes apart) the least log-loss, so that scores mean something: among equally accurate probes the most
    regularised is nearly uniform, each class scoring about 1/classes."""
    return accuracy(logits, targets), -log_loss(logits, targets)


def blend(zero_shot: Linear, probe: Linear, alpha: float) -> Linear:
    """alpha * zero-shot logits + (1 - alpha) * probe logits, as one linear classifier."""
    return Linear(
        alpha * zero_shot.weights + (1 - alpha) * probe.weights, alpha * zero_shot.bias + (1 - alpha) * probe.bias
    )


def fit_probe(
    features: np.ndarray,
    targets: Sequence[int] | np.ndarray,
    classes: int,
    *,
    seed: int = 0,
    zero_shot: Linear | None = None,
) -> ProbeResult:
    """Choose C (and, given a zero-shot classifier, the blend weight) on held-out images, then refit on all."""
    truth = np.asarray(targets)
    train, held = held_out_split(truth, seed)
    trainable = len(held) > 0 and len(np.unique(truth[train])) == classes
    if not trainable:
        c, score = DEFAULT_C, None
    else:
        scored = [
            (
                held_out_score(
                    fit_logistic(features[train], truth[train], classes, c).logits(features[held]), truth[held]
                ),
                -c,
            )
            for c in C_GRID
        ]
        (score, _), negative_c = max(scored)  # (exact ties: the stronger regularisation)
        c = -negative_c
    alpha = None
    if zero_shot is not None:
        alpha = 0.5
        if trainable:
            probe = fit_logistic(features[train], truth[train], classes, c)
            options = [
                (held_out_score(blend(zero_shot, probe, a).logits(features[held]), truth[held]), a) for a in ALPHA_GRID
            ]
            (score, _), alpha = max(options)
    final = fit_logistic(features, truth, classes, c)
    return ProbeResult(
        blend(zero_shot, final, alpha) if zero_shot is not None and alpha is not None else final, c, alpha, score
    )


def train_classifier(
    zsc: ZeroShotClassifier,
    dataset: Dataset,
    labels: Sequence[Label],
    *,
    shots: int | None = None,
    seed: int = 0,
    blend_templates: str | None = None,
    use_cache: bool = True,
) -> tuple[Classifier, ProbeResult, list[tuple[Path, str]]]:
    """Fit a probe (or, with ``blend_templates``, a zero-shot-initialised blend) on the dataset's images.

    ``shots``: keep that many images per class, drawn with ``seed``, for the few-shot setting.
    Returns the classifier, the fit's choices, and the images that could not be read.
    """
    import torch

    from clipzs.classifier import Classifier
    from clipzs.evaluate import encode_dataset

    check_seed(seed)
    zero_shot = None
    if blend_templates:  # (first: labels the model cannot tell apart are refused before the images are encoded)
        built = zsc.build(labels, blend_templates, use_cache=use_cache)
        zero_shot = Linear(built.weights.numpy() * zsc.model.logit_scale, np.zeros(len(labels), dtype=np.float32))
    features, targets, skipped = encode_dataset(zsc, dataset.paths, dataset.targets, use_cache=use_cache)
    check_every_class_seen(labels, set(targets), dataset, dict(skipped))
    chosen = few_shot(targets, shots, seed) if shots else list(range(len(targets)))
    x, y = features.numpy()[chosen], np.asarray(targets)[chosen]
    result = fit_probe(x, y, len(labels), seed=seed, zero_shot=zero_shot)
    meta: dict[str, object] = {
        **zsc.meta_for(load_templates(blend_templates) if blend_templates else []),
        "kind": "blend" if zero_shot is not None else "linear-probe",
        "logit_scale": 1.0,
        "shots": shots,
        "seed": seed,
        "images": len(chosen),
        "c": result.c,
        "alpha": result.alpha,
        "held_out_accuracy": result.held_out_accuracy,
    }
    classifier = Classifier(
        weights=torch.from_numpy(np.ascontiguousarray(result.classifier.weights)),
        labels=tuple(labels),
        meta=meta,
        bias=torch.from_numpy(np.ascontiguousarray(result.classifier.bias)),
    )
    return classifier, result, skipped


def check_every_class_seen(labels: Sequence[Label], seen: set[int], dataset: Dataset, skipped: dict[Path, str]) -> None:
    """A probe needs an image of every class: name the classes left without one, and why their images failed."""
    missing = [index for index in range(len(labels)) if index not in seen]
    if not missing:
        return
    parts = []
    for index in missing[:3]:
        failed = [path for path, target in zip(dataset.paths, dataset.targets, strict=True) if target == index]
        why = "; ".join(f"{path}: {skipped.get(path, 'not read')}" for path in failed[:2])
        more = f" and {len(failed) - 2} more" if len(failed) > 2 else ""
        parts.append(f"'{labels[index].name}' ({why}{more})" if failed else f"'{labels[index].name}' (no images)")
    others = f" and {len(missing) - 3} more classes" if len(missing) > 3 else ""
    raise UsageError(f"every class needs a readable training image; none for {', '.join(parts)}{others}")
