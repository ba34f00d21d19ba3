"""The plain choices every comparison starts from: BatchNorm2d, Conv2d, no attention."""
from __future__ import annotations

import torch
from torch import nn

from .registry import register_attention, register_conv, register_norm


@register_norm("bn")
def batch_norm(num_features: int) -> nn.Module:
    return nn.BatchNorm2d(num_features)


@register_conv("conv")
def conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
           padding: int = 0, bias: bool = False) -> nn.Module:
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)


class NoAttention(nn.Module):
    """Identity with the block-attention call signature ``(x, bridges)``."""

    def forward(self, x: torch.Tensor, bridges: list[torch.Tensor] | None = None) -> torch.Tensor:
        return x


@register_attention("none")
def no_attention(channels: int, bridge_channels: list[int]) -> nn.Module:
    return NoAttention()
