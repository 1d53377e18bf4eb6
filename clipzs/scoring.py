"""The math of zero-shot classification: pure functions on tensors, no IO.

Shapes: image features F [N, D] (L2-normalised), classifier weights W [D, C] (L2-normalised columns for
zero-shot; a trained classifier's weights are as fitted, with a bias).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise each row."""
    return x / x.norm(dim=-1, keepdim=True)


def class_embedding(prompt_features: torch.Tensor) -> torch.Tensor:
    """One class vector from its prompts' features [P, D]: normalise, average, renormalise -> [D]."""
    return normalize(normalize(prompt_features).mean(dim=0))


def classifier_matrix(per_class: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack per-class prompt features (each [P_c, D]) into the classifier W [D, C]."""
    return torch.stack([class_embedding(f) for f in per_class], dim=1)


def logits(
    image_features: torch.Tensor,
    weights: torch.Tensor,
    logit_scale: float,
    logit_bias: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits [N, C]: for zero-shot, cosine similarities scaled by ``logit_scale``, the model's learned
    temperature, exp'd (1 for a trained classifier).

    ``logit_bias``: SigLIP's learned scalar, or a trained classifier's bias per class [C]."""
    out = logit_scale * (image_features @ weights)
    return out if logit_bias is None else out + logit_bias


def probabilities(logits_: torch.Tensor, sigmoid: bool) -> torch.Tensor:
    """Softmax over classes (CLIP), or an independent sigmoid per class (SigLIP, which learns a bias)."""
    return torch.sigmoid(logits_) if sigmoid else logits_.softmax(dim=-1)


def top_k(logits_: torch.Tensor, k: int, sigmoid: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best classes per row, best first, ranked by logit and scored by ``probabilities``: ranked by
    probability, labels whose sigmoids both round to 1.0 would tie. k is clipped to the class count."""
    indices = logits_.topk(min(k, logits_.shape[-1]), dim=-1).indices
    return probabilities(logits_, sigmoid).gather(-1, indices), indices
