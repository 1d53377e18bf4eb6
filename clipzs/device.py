"""The one place that resolves the compute device and the precision images are encoded at."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from pathlib import Path

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
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UsageError(f"unknown device {requested!r}: use {base}, or {base}:N for its N-th device") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UsageError(f"--device {requested}: PyTorch sees {count} CUDA GPU{'s' if count > 1 else ''} here, from 0")
    return device


PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
"""How the image tower computes: ``auto`` is fp16 (autocast) on CUDA and fp32 elsewhere."""

CACHE_TAGS = {"fp32": "fp32", "fp16": "fp16-autocast", "int8": "int8-dynamic"}
"""Names of precisions in the feature cache's key, unchanged from before ``--precision`` existed."""


def resolve_precision(device: torch.device, requested: str = "auto") -> str:
    """The precision images are encoded at: ``requested``, or the device's default for ``auto``.

    A precision the device cannot run is a usage error. bf16 on a CPU casts the image tower's weights
    (``LoadedModel.with_precision``), which is several times faster than fp32 where the CPU multiplies
    bfloat16 natively (Intel AMX, AVX-512 BF16) and slower where it does not.
    """
    check_precision_name(requested)
    if requested == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if requested == "int8" and device.type != "cpu":
        raise UsageError("int8 is for the CPU: on a GPU, fp16 (the default there) or bf16")
    if requested == "fp16" and device.type != "cuda":
        raise UsageError("fp16 is for CUDA GPUs" + (": on a CPU, bf16 or int8" if device.type == "cpu" else ""))
    if requested == "bf16" and device.type not in ("cpu", "cuda"):
        raise UsageError(f"bf16 runs on the CPU or a CUDA GPU, not on {device.type}")
    return requested


def cpu_multiplies_bf16() -> bool | None:
    """Whether this CPU multiplies bfloat16 in hardware (Intel AMX or AVX-512 BF16, Arm BF16), from the flags
    Linux lists in /proc/cpuinfo; None where it cannot tell."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    flags = next((line.split(":", 1)[-1].split() for line in lines if line.startswith(("flags", "Features"))), None)
    return None if flags is None else bool({"amx_bf16", "avx512_bf16", "bf16"} & set(flags))


def check_precision_name(requested: str) -> None:
    """A precision that no device runs is a usage error (``resolve_precision`` also checks the device)."""
    if requested not in PRECISIONS:
        raise UsageError(f"unknown precision {requested!r}: use one of {', '.join(PRECISIONS)}")


def cache_tag(device: torch.device, precision: str) -> str:
    """The precision's name in the image-feature cache key: features at other precisions are other numbers."""
    tag = CACHE_TAGS.get(precision, precision)
    return f"{tag}-autocast" if precision == "bf16" and device.type == "cuda" else tag


def image_autocast(device: torch.device, precision: str) -> AbstractContextManager[object]:
    """Mixed precision for the image tower on CUDA (fp16 or bf16 autocast); elsewhere the weights already
    have the dtype they compute in.

    Text features are always computed in fp32: they are computed once per classifier and cached, so the
    matrix is the same whichever device built it.
    """
    if device.type == "cuda" and precision in ("fp16", "bf16"):
        return torch.autocast("cuda", dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
    return contextlib.nullcontext()
