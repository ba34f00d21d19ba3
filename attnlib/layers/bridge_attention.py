"""Bridge Attention (BA-Net): a block's channel gate computed from all its inner features.

Paper: Yue Zhao, Junzhou Chen, Zirui Zhang, Ronghui Zhang, "BA-Net: Bridge Attention for
Deep Convolutional Neural Networks", ECCV 2022 (arXiv 2112.04150); extended as BAv2 in
Ronghui Zhang et al., "BA-Net: Bridge Attention in Deep Neural Networks" (arXiv 2410.07860),
which adds an adaptive selection operator not implemented here. Official code:
github.com/zhaoy376/Bridge-Attention, ``models/BA_module.py`` (``BA_module_resnet``).

SE (``se.py``) squeezes only the block's last output. BA also squeezes the features
produced earlier in the same block (the *bridges*) and sums the results. For the block's
features F_1 .. F_n, where F_n = x is the last BN output (the map that is gated):

    S_i = BN_i(W_i GAP(F_i))            integration, W_i: (h, C_i) without bias, BN_i = BatchNorm1d(h)
    I   = S_1 + ... + S_n
    w   = sigmoid(W_g relu(I))           generation, W_g: (C, h) without bias
    y   = x * w[:, :, None, None]        before the residual add

with ``h = max(8, C // reduction)`` as in :class:`~attnlib.layers.se.SqueezeExcitation`
(the paper and the official code use ``C // reduction``, which is 1, 2 and 4 channels in
ResNet-20's three stages; ``("ba", {"min_hidden": 1})`` builds that official bottleneck). Parameters per block:
``sum_i C_i * h + 2 * h * n + h * C``; the BN running statistics are buffers.

Paper text against the official code:

* Which features. The paper speaks of bridging "all the convolution outputs inside each
  block with BN". The code pools the earlier features *after* their BN and ReLU and the
  last one after its BN (before the add): the maps attnlib's blocks hand over as
  ``bridges`` (for the AlexNet, the unit's input). The paper's sum runs over the last
  q+1 features; the code, and this file, bridge every earlier feature of the block
  (``q = len(prev_channels)``).
* Bias. The paper's equations write the FCs as bare matrices; in the code none of them
  has a bias (the BN_i shifts take that role), unlike SE, whose two FCs have one. No
  biases here, as in the code.
* BN placement. One BatchNorm1d per bridged feature, after its FC and before the sum, in
  both. It normalises (N, h) vectors over the batch, so in training mode every batch
  needs N > 1 (``BatchNorm1d`` raises on a batch of one; use eval mode for single images).
* Form. The seed post's BA_module pools with ``AdaptiveAvgPool2D`` and squeezes with 1x1
  convs and BatchNorm2D on (N, C, 1, 1) maps, equivalent to the Linear + BatchNorm1d of
  ``BA_module_resnet``. Here the FCs are raw parameters applied with ``F.linear`` to
  ``global_avg_pool`` (a scaled sum) of each map, so ``attnlib.models.parts.init_weights``
  (which re-initialises every ``nn.Linear`` and assumes a bias) leaves this layer's init
  alone.

Performance: the backward of ``AdaptiveAvgPool2d`` (and of ``mean``) writes the pooled
gradient as a full NCHW map even for channels_last inputs; BA adds it to the gradient of
every bridged map, whose other gradient is channels_last, so that add is a strided pass.
The scaled ``sum`` here gives a broadcast view instead, and the gate stays in the
activation's dtype under autocast. In a ResNet-20 training step (batch 128, 28x28, fp32,
channels_last, one thread) this module cost 1.13-1.15x the plain network, a stand-in
written in the official style (pool module, ``nn.Linear``, ``view``) 1.40x.

Registered as ``"ba"`` (the module above), with two options for the chapter's controls:
``("ba", {"last_feature_only": True})`` (q = 0: only x is squeezed, an SE with BN in the
squeeze path and no biases) and ``("ba", {"discard_output": True})``, the seed post's bug:
the gate is computed and thrown away (the post continues with ``relu(x3)``), so the network
pays for the parameters and the compute and is functionally the baseline.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from .registry import register_attention
from .se import SqueezeExcitation, global_avg_pool, hidden_channels, init_linear_, rescale


def reference_ba_gate(features: list[torch.Tensor], squeeze_weights: list[torch.Tensor],
                      norm_weights: list[torch.Tensor], norm_biases: list[torch.Tensor], excite_weight: torch.Tensor,
                      eps: float, running_means: list[torch.Tensor] | None = None,
                      running_vars: list[torch.Tensor] | None = None) -> torch.Tensor:
    """BA-Net's gate (Zhao et al., "BA-Net: Bridge Attention for Deep Convolutional Neural Networks",
    ECCV 2022) written out: the (N, C) channel weights from the pooled features of a whole block.

    ``features`` are F_1 .. F_n, the bridged maps oldest first and the gated map ``x`` last; the
    i-th FC ``squeeze_weights[i]`` (h, C_i) is followed by BN_i with scale ``norm_weights[i]`` and
    shift ``norm_biases[i]``, batch statistics unless ``running_means``/``running_vars`` are given
    (eval). The layer's output is ``x * gate[:, :, None, None]``. As in the official code (and
    :class:`BridgeAttention`): no FC biases, every earlier feature of the block bridged (the paper's
    sum runs over the last q + 1); the book's width h = max(8, C // reduction) is fixed by the
    shapes of the weights. Comments use the module docstring's symbols.
    """
    squeezed = []
    for i, (f, w, gamma, beta) in enumerate(zip(features, squeeze_weights, norm_weights, norm_biases)):
        z = f.mean((2, 3)) @ w.T                                            # W_i GAP(F_i), no bias (official)
        mean = z.mean(0) if running_means is None else running_means[i]     # BN_i: μ over the batch
        var = z.var(0, correction=0) if running_vars is None else running_vars[i]  # BN_i: σ², biased
        squeezed.append(gamma * (z - mean) / torch.sqrt(var + eps) + beta)  # integration: S_i = BN_i(W_i GAP(F_i))
    fused = sum(squeezed)                                                   # I = S_1 + ... + S_n
    return torch.sigmoid(torch.relu(fused) @ excite_weight.T)               # generation: w = sigmoid(W_g relu(I))


class BridgeAttention(nn.Module):
    """BA channel gate, called as ``module(x, bridges)`` on a block's last BN output.

    Args:
        channels: channels C of ``x``, the gated map.
        prev_channels: channels of the bridged earlier features, oldest first; the last
            ``len(prev_channels)`` entries of ``bridges`` are used (``[]``: only ``x``).
        reduction: the bottleneck is ``max(min_hidden, C // reduction)`` wide.
        min_hidden: floor on the bottleneck width.

    In training mode the BatchNorm1d layers need a batch of more than one sample.
    """

    def __init__(self, channels: int, prev_channels: list[int], reduction: int = 16,
                 min_hidden: int = 8, device=None, dtype=None) -> None:
        super().__init__()
        self.channels, self.prev_channels, self.reduction = channels, list(prev_channels), reduction
        self.hidden = hidden_channels(channels, reduction, min_hidden)
        in_channels = [*self.prev_channels, channels]
        factory = {"device": device, "dtype": dtype}
        self.squeeze_weights = nn.ParameterList(torch.empty(self.hidden, c, **factory) for c in in_channels)
        self.squeeze_norms = nn.ModuleList(nn.BatchNorm1d(self.hidden, **factory) for _ in in_channels)
        self.excite_weight = nn.Parameter(torch.empty(channels, self.hidden, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for weight in self.squeeze_weights:
            init_linear_(weight)
        for norm in self.squeeze_norms:
            norm.reset_parameters()
        init_linear_(self.excite_weight)

    def bridged(self, bridges: list[torch.Tensor]) -> list[torch.Tensor]:
        """The entries of ``bridges`` this module squeezes: the last ``len(prev_channels)``."""
        q = len(self.prev_channels)
        if len(bridges) < q:
            raise ValueError(f"{type(self).__name__} bridges {q} features, got {len(bridges)}")
        return list(bridges[len(bridges) - q:])

    def _check_shapes(self, features: list[torch.Tensor]) -> None:
        """Each feature (bridges oldest first, then ``x``) must be (N, C_i, H, W) with this module's C_i."""
        names = [f"bridge {i}" for i in range(len(features) - 1)] + ["x"]
        for name, f, c in zip(names, features, [*self.prev_channels, self.channels]):
            if f.dim() != 4 or f.shape[1] != c:
                raise ValueError(f"{type(self).__name__}({self.channels}, prev_channels={self.prev_channels}) "
                                 f"expects {name} of shape (N, {c}, H, W), got {tuple(f.shape)}")

    def gate(self, x: torch.Tensor, bridges: list[torch.Tensor]) -> torch.Tensor:
        """The (N, C) channel weights in (0, 1) for ``x`` and its block's ``bridges``."""
        features = [*self.bridged(bridges), x]
        self._check_shapes(features)
        squeezed = (norm(F.linear(global_avg_pool(f), weight))
                    for f, weight, norm in zip(features, self.squeeze_weights, self.squeeze_norms))
        fused = functools.reduce(torch.add, squeezed)
        return torch.sigmoid(F.linear(F.relu(fused), self.excite_weight))

    def forward(self, x: torch.Tensor, bridges: list[torch.Tensor]) -> torch.Tensor:
        return rescale(x, self.gate(x, bridges))

    def extra_repr(self) -> str:
        return (f"{self.channels}, prev_channels={self.prev_channels}, reduction={self.reduction}, "
                f"hidden={self.hidden}")


class DiscardedBridgeAttention(BridgeAttention):
    """The seed post's BA block: the gate is computed, then ``x`` is returned unchanged.

    Same parameters and forward cost as :class:`BridgeAttention`; no gradient reaches the
    gate's weights and the output equals the input, so the network is the baseline. Only
    the BatchNorm1d running statistics change in training. Kept to show the bug.
    """

    def forward(self, x: torch.Tensor, bridges: list[torch.Tensor]) -> torch.Tensor:
        self.gate(x, bridges)
        return x


@register_attention("ba")
def bridge_attention(channels: int, bridge_channels: list[int], reduction: int = 16, min_hidden: int = 8,
                     last_feature_only: bool = False, discard_output: bool = False) -> nn.Module:
    """BA in a block. Options for the chapter's controls: ``last_feature_only`` (the gate sees
    only the block's output, an SE-like ablation) and ``discard_output`` (the seed post's bug:
    the gate is computed and thrown away, :class:`DiscardedBridgeAttention`)."""
    bridges = [] if last_feature_only else bridge_channels
    layer = DiscardedBridgeAttention if discard_output else BridgeAttention
    return layer(channels, bridges, reduction, min_hidden)


_GATED = (SqueezeExcitation, BridgeAttention)


@torch.no_grad()
def attention_gates(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The (N, C) gate of every SE/BA module of ``model`` for ``images``, by module name.

    Runs one forward pass in eval mode (BN running statistics) without gradients and
    returns float32 gates; the forward hooks are removed and every module's training mode
    restored afterwards. For a :class:`DiscardedBridgeAttention` this is the gate that the block
    computes and then ignores.
    """
    gates: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
            gates[name] = module.gate(*args, **kwargs).float()
        return hook

    handles: list[RemovableHandle] = [m.register_forward_hook(keep(name), with_kwargs=True)
                                      for name, m in model.named_modules() if isinstance(m, _GATED)]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        model(images)
    finally:
        for m, training in modes:
            m.training = training
        for handle in handles:
            handle.remove()
    return gates
