"""Where a run computes and in what precision: the device, and autocast's dtype for it."""
from __future__ import annotations

import contextlib

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA GPU is visible; use device='auto' or 'cpu'")
    return device


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None: full fp32).

    ``auto`` is the fastest precision the hardware computes natively. On a GPU: bf16 (fp16
    with loss scaling where bf16 is missing). On a CPU: bf16 where oneDNN has native bf16
    kernels (AVX-512 BF16 or AMX), else fp32. Measured on the book's 2-core machines
    (ResNet-20 training step, batch 128, channels_last): on a Xeon with AVX-512 BF16 bf16
    autocast ran at 817 img/s against 408 img/s in fp32; on an AVX2-only EPYC it ran at
    31 img/s against 340 img/s in fp32 (bf16 emulated), so one fixed choice would be ten
    times too slow on one of them. Every record's run card states the precision used.
    """
    if amp == "off" or (amp == "auto" and device.type == "cpu" and not cpu_has_native_bf16()):
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or device.type == "cpu" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (oneDNN's own test: AVX-512 BF16 or AMX)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


#: How run cards and histories name the precision of :func:`autocast_dtype`'s result.
PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}


def precision_name(dtype: torch.dtype | None) -> str:
    """How a run card names the precision of :func:`autocast_dtype`'s result."""
    return PRECISION_NAMES[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
