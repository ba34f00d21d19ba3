"""The plain choices every comparison starts from: BatchNorm2d, Conv2d, no attention."""
from __future__ import annotations

import torch
from torch import nn

from .ghost import ghost
from .registry import register_attention, register_conv, register_norm


@register_norm("bn")
def batch_norm(num_features: int, eps: float = 1e-5, momentum: float = 0.1, norm_batch: int | None = None) -> nn.Module:
    """``nn.BatchNorm2d``; with ``norm_batch``, over groups of that many images of a training batch."""
    return ghost(nn.BatchNorm2d(num_features, eps, momentum), norm_batch)


register_conv("conv")(nn.Conv2d)


class NoAttention(nn.Module):
    """Identity with the block-attention call signature ``(x, bridges)``."""

    def forward(self, x: torch.Tensor, bridges: list[torch.Tensor] | None = None) -> torch.Tensor:
        return x


@register_attention("none")
def no_attention(channels: int, bridge_channels: list[int]) -> nn.Module:
    return NoAttention()
