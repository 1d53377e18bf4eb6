"""The one place that resolves the compute device and the precision images are encoded at."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

from clipzs.errors import UsageError

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(requested: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device that is not available is a usage error."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    base = requested.split(":")[0]
    if base not in DEVICES:
        raise UsageError(f"unknown device {requested!r}: use one of {', '.join(DEVICES)}")
    if base == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but PyTorch sees no CUDA GPU here")
    if base == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps was asked for, but PyTorch sees no Apple GPU here")
    return torch.device(requested)


def image_precision(device: torch.device) -> str:
    """The precision images are encoded at on this device: part of the image-feature cache key."""
    return "fp16-autocast" if device.type == "cuda" else "fp32"


def image_autocast(device: torch.device) -> AbstractContextManager[object]:
    """Mixed precision for the image tower: fp16 autocast on CUDA, full fp32 elsewhere.

    Text features are always computed in fp32: they are computed once per classifier and cached, so the
    matrix is the same whichever device built it.
    """
    if image_precision(device) == "fp16-autocast":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()
