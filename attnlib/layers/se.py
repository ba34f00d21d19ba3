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
:func:`global_avg_pool`), which reads a channels_last map in place, and the rescale of the
full map stays in its dtype under autocast. Composed of library ops, SE gives ``x`` two
gradients (through the rescale and through the pooling) that autograd adds in an extra
pass over the map; :class:`_SEFunction` writes the small gate's backward out and forms
``dx`` in one ``addcmul``. ``python -m attnlib.bench`` times SE's training step against the
plain network's on the current machine.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .functional import sum_hw_product
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


class _SEFunction(torch.autograd.Function):
    r"""``y = x * sigmoid(W2 relu(W1 GAP(x) + b1) + b2)`` with a hand-written backward.

    Autograd of the composed ops gives ``x`` two gradients, ``g * s`` from the rescale and
    the broadcast ``dGAP / HW`` from the pooling, and adds them with an extra pass over
    the map. Here the small gate's backward is written out (all (N, C) or (N, h) tensors)
    and the two meet in one ``addcmul``: ``dx = g * s + dpooled / HW``, with
    ``ds = sum_hw g * x``, ``dlogit = ds * s * (1 - s)``, ``dh = (dlogit W2) * [h > 0]``,
    ``dpooled = dh W1``. The gate is computed in fp32 (autocast off), the map stays in its
    dtype. Checked against autograd of the composed formula by ``gradcheck`` in the tests.
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):
        hw = x.shape[2] * x.shape[3]
        with torch.autocast(x.device.type, enabled=False):
            pooled = x.sum((2, 3)).to(w1.dtype) / hw  # sum(dtype=) would copy a bf16 map to fp32
            hidden = F.relu(F.linear(pooled, w1, b1))
            gate = torch.sigmoid(F.linear(hidden, w2, b2))
        ctx.save_for_backward(x, pooled, hidden, gate, w1, w2)
        return x * gate.to(x.dtype)[:, :, None, None]

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, pooled, hidden, gate, w1, w2 = ctx.saved_tensors
        hw = x.shape[2] * x.shape[3]
        dlogit = sum_hw_product(g, x).to(gate.dtype) * gate * (1 - gate)
        dhidden = (dlogit @ w2) * (hidden > 0)
        dx = torch.addcmul((dhidden @ w1 / hw).to(g.dtype)[:, :, None, None], g, gate.to(g.dtype)[:, :, None, None])
        return dx, dhidden.T @ pooled, dhidden.sum(0), dlogit.T @ hidden, dlogit.sum(0)


def init_linear_(weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """``nn.Linear``'s default initialisation, for a raw (out, in) weight and its bias."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bound = 1 / math.sqrt(weight.shape[1])
        nn.init.uniform_(bias, -bound, bound)


def reference_se(x: torch.Tensor, squeeze_weight: torch.Tensor, squeeze_bias: torch.Tensor,
                 excite_weight: torch.Tensor, excite_bias: torch.Tensor) -> torch.Tensor:
    """Squeeze-and-Excitation (Hu et al., CVPR 2018) written out: ``x`` rescaled per sample and channel
    by a sigmoid gate computed from its global average pool.

    ``squeeze_weight`` is W1 (h, C), ``excite_weight`` W2 (C, h). The paper's Eq. (3) writes the two
    FCs without biases; the book's have them, as ``nn.Linear`` does. :class:`SqueezeExcitation`
    computes the same with a hand-written backward; the tests hold the two equal.
    """
    z = x.mean((2, 3))                                         # Eq. (2): squeeze, z_c = mean_ij u_c(i, j), u = x
    hidden = torch.relu(z @ squeeze_weight.T + squeeze_bias)   # Eq. (3): δ(W1 z), with a bias (book)
    s = torch.sigmoid(hidden @ excite_weight.T + excite_bias)  # Eq. (3): s = σ(W2 δ(W1 z)), with a bias (book)
    return x * s[:, :, None, None]                             # Eq. (4): scale, x̃_c = s_c u_c


class SqueezeExcitation(nn.Module):
    """SE channel gate, called as ``module(x, bridges)``; the bridges are ignored.

    Args:
        channels: channels C of the gated map.
        reduction: the bottleneck is ``max(min_hidden, C // reduction)`` wide.
        min_hidden: floor on the bottleneck width.
    """

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 8, device=None, dtype=None) -> None:
        super().__init__()
        self.channels, self.reduction = channels, reduction
        self.hidden = hidden_channels(channels, reduction, min_hidden)
        factory = {"device": device, "dtype": dtype}
        self.squeeze_weight = nn.Parameter(torch.empty(self.hidden, channels, **factory))
        self.squeeze_bias = nn.Parameter(torch.empty(self.hidden, **factory))
        self.excite_weight = nn.Parameter(torch.empty(channels, self.hidden, **factory))
        self.excite_bias = nn.Parameter(torch.empty(channels, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_linear_(self.squeeze_weight, self.squeeze_bias)
        init_linear_(self.excite_weight, self.excite_bias)

    def gate(self, x: torch.Tensor, bridges: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The (N, C) channel weights in (0, 1) for ``x``."""
        hidden = F.relu(F.linear(global_avg_pool(x), self.squeeze_weight, self.squeeze_bias))
        return torch.sigmoid(F.linear(hidden, self.excite_weight, self.excite_bias))

    def forward(self, x: torch.Tensor, bridges: list[torch.Tensor] | None = None) -> torch.Tensor:
        return _SEFunction.apply(x, self.squeeze_weight, self.squeeze_bias, self.excite_weight, self.excite_bias)

    def extra_repr(self) -> str:
        return f"{self.channels}, reduction={self.reduction}, hidden={self.hidden}"


@register_attention("se")
def squeeze_excitation(channels: int, bridge_channels: list[int], reduction: int = 16,
                       min_hidden: int = 8) -> nn.Module:
    return SqueezeExcitation(channels, reduction, min_hidden)
