"""The plain choices every comparison starts from: BatchNorm2d, Conv2d, no attention."""
from __future__ import annotations

import torch
from torch import nn

from .registry import register_attention, register_conv, register_norm


register_norm("bn")(nn.BatchNorm2d)
register_conv("conv")(nn.Conv2d)


class NoAttention(nn.Module):
    """Identity with the block-attention call signature ``(x, bridges)``."""

    def forward(self, x: torch.Tensor, bridges: list[torch.Tensor] | None = None) -> torch.Tensor:
        return x


@register_attention("none")
def no_attention(channels: int, bridge_channels: list[int]) -> nn.Module:
    return NoAttention()
