"""Small operations shared by the layers' hand-written backward passes."""
from __future__ import annotations

import torch


def autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


# Below this many channels, a batched matmul (its diagonal) is cheaper than a full-size temporary.
_BMM_MAX_CHANNELS = 32


def sum_hw_product(g: torch.Tensor, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``(g * x).sum((2, 3))``, shape ``(N, C)``, returned in ``dtype`` (default ``x``'s), without
    a full-size temporary where that is cheaper."""
    n, c, h, w = x.shape
    dtype = dtype or x.dtype
    if c <= _BMM_MAX_CHANNELS and not autocast_on(x.device.type) and g.dtype == x.dtype == dtype:
        if x.is_contiguous() and g.is_contiguous():
            gv, xv = g.view(n, c, h * w), x.view(n, c, h * w).transpose(1, 2)
            return torch.bmm(gv, xv).diagonal(dim1=1, dim2=2)
        cl = torch.channels_last
        if x.is_contiguous(memory_format=cl) and g.is_contiguous(memory_format=cl):
            gv, xv = g.permute(0, 2, 3, 1).view(n, h * w, c), x.permute(0, 2, 3, 1).view(n, h * w, c)
            return torch.bmm(gv.transpose(1, 2), xv).diagonal(dim1=1, dim2=2)
    return (g * x).sum((2, 3)).to(dtype)  # a sum in a low-precision dtype accumulates in fp32 anyway; sum(dtype=) would copy the map
