"""Squeeze-and-Excitation: a channel gate computed from the globally pooled feature map.

Paper: Jie Hu, Li Shen, Gang Sun, "Squeeze-and-Excitation Networks", CVPR 2018
(arXiv 1709.01507). For a residual branch output ``x`` of shape (N, C, H, W):

    z = GAP(x)                                  squeeze, (N, C)
    s = sigmoid(W2 relu(W1 z + b1) + b2)        excitation, W1: (h, C), W2: (C, h)
    y = x * s[:, :, None, None]                 rescale, before the residual add

with ``h = max(min_hidden, C // reduction)``. The paper uses ``h = C // 16`` on ImageNet
widths (C >= 64). The CIFAR ResNets here have C = 16, 32, 64, where C // 16 is 1, 2 or 4
hidden units; a one-unit bottleneck makes the gate a function of a single number. Like
timm's SE (which rounds to a multiple of 8), this file floors ``h`` at ``min_hidden = 8``;
BA-Net (``bridge_attention.py``) uses the same rule so the two compare at equal width.

Differences from the official code (hujie-frank/SENet, Caffe; and the common PyTorch ports):
the FCs are plain parameters here rather than ``nn.Linear`` modules, so that
``attnlib.models.parts.init_weights`` (which re-initialises every ``nn.Linear``) leaves
this layer's own ``reset_parameters`` (PyTorch's ``nn.Linear`` default) in place.

Performance: the pooled vector is a scaled ``sum`` over H and W (see
:func:`global_avg_pool`), which reads a channels_last map in place; the gate stays in the
activation's dtype under autocast, so the rescale of the full map never promotes to fp32.
In a ResNet-20 training step (batch 128, 28x28, fp32, channels_last, one thread) SE cost
1.10-1.12x the plain network, a stand-in with ``AdaptiveAvgPool2d`` and ``nn.Linear`` 1.14x.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_attention


def hidden_channels(channels: int, reduction: int, minimum: int = 8) -> int:
    """Width of a gate's bottleneck: ``max(minimum, channels // reduction)``."""
    if channels < 1 or reduction < 1 or minimum < 1:
        raise ValueError(f"channels, reduction and minimum must be >= 1, "
                         f"got {channels}, {reduction}, {minimum}")
    return max(minimum, channels // reduction)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C) mean over H and W, read in place in any memory format.

    Written as a sum and a scale of the small result: the backward of ``sum`` is a
    broadcast view of the (N, C) gradient, while that of ``mean`` writes a full map in
    NCHW order even for a channels_last ``x``, which then has to be added into the
    channels_last gradient of the main path (a strided pass, and an NCHW gradient
    for a bridge, whose own gradient arrives later).
    """
    return x.sum((2, 3)) / (x.shape[2] * x.shape[3])


def rescale(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``x * gate`` with an (N, C) gate broadcast over H and W, in ``x``'s dtype."""
    return x * gate.to(x.dtype).reshape(*gate.shape, 1, 1)


def init_linear_(weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """``nn.Linear``'s default initialisation, for a raw (out, in) weight and its bias."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bound = 1 / math.sqrt(weight.shape[1])
        nn.init.uniform_(bias, -bound, bound)


class SqueezeExcitation(nn.Module):
    """SE channel gate, called as ``module(x, bridges)``; the bridges are ignored.

    Args:
        channels: channels C of the gated map.
        reduction: the bottleneck is ``max(min_hidden, C // reduction)`` wide.
        min_hidden: floor on the bottleneck width.
    """

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 8) -> None:
        super().__init__()
        self.channels, self.reduction = channels, reduction
        self.hidden = hidden_channels(channels, reduction, min_hidden)
        self.squeeze_weight = nn.Parameter(torch.empty(self.hidden, channels))
        self.squeeze_bias = nn.Parameter(torch.empty(self.hidden))
        self.excite_weight = nn.Parameter(torch.empty(channels, self.hidden))
        self.excite_bias = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_linear_(self.squeeze_weight, self.squeeze_bias)
        init_linear_(self.excite_weight, self.excite_bias)

    def gate(self, x: torch.Tensor, bridges: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The (N, C) channel weights in (0, 1) for ``x``."""
        hidden = F.relu(F.linear(global_avg_pool(x), self.squeeze_weight, self.squeeze_bias))
        return torch.sigmoid(F.linear(hidden, self.excite_weight, self.excite_bias))

    def forward(self, x: torch.Tensor, bridges: list[torch.Tensor] | None = None) -> torch.Tensor:
        return rescale(x, self.gate(x))

    def extra_repr(self) -> str:
        return f"{self.channels}, reduction={self.reduction}, hidden={self.hidden}"


@register_attention("se")
def squeeze_excitation(channels: int, bridge_channels: list[int]) -> nn.Module:
    return SqueezeExcitation(channels)
