"""The plain choices every comparison starts from: BatchNorm2d, Conv2d, no attention."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair

from .batch_noise import NoisyStatistics
from .ghost import ghost
from .registry import register_attention, register_conv, register_norm


class NoisyBatchNorm2d(NoisyStatistics, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that, in training, normalises with batch statistics perturbed by
    noise of strength ``noise`` (:mod:`~attnlib.layers.batch_noise`); in eval mode a plain
    ``BatchNorm2d``."""

    def _attacked(self, x: torch.Tensor, x_hat: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:  # y = gamma * (a x_hat + b) + beta
            a, b = a * self.weight, b * self.weight if self.bias is None else torch.addcmul(self.bias, b, self.weight)
        return torch.addcmul(b.to(x_hat.dtype)[:, None, None], x_hat, a.to(x_hat.dtype)[:, None, None])


@register_norm("bn")
def batch_norm(num_features: int, eps: float = 1e-5, momentum: float = 0.1, norm_batch: int | None = None,
               noise: float = 0.0) -> nn.Module:
    """``nn.BatchNorm2d``; with ``norm_batch``, over groups of that many images of a training batch;
    with ``noise``, under the noise attack on its batch statistics (:class:`NoisyBatchNorm2d`)."""
    if noise:
        return ghost(NoisyBatchNorm2d(num_features, eps, momentum, noise=noise), norm_batch)
    return ghost(nn.BatchNorm2d(num_features, eps, momentum), norm_batch)


class SubsampledConv2d(nn.Conv2d):
    """A 1x1 convolution with stride s, run as a stride-1 convolution of every s-th pixel.

    The same function and parameters as ``nn.Conv2d`` (a 1x1 kernel with stride s reads only
    the pixels at multiples of s). It exists because oneDNN's AVX2 kernel for the weight gradient
    of a strided 1x1 convolution corrupts the heap when the input has fewer than 8 channels in
    channels_last memory ("double free or corruption", or a hang; torch 2.x, 2-core AMD EPYC):
    the shortcut of a ResNet-20 at width x0.25 (4 channels) meets it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = self.stride
        return F.conv2d(x[:, :, ::rows, ::cols], self.weight, self.bias, groups=self.groups)


@register_conv("conv")
def conv2d(in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1,
           padding: int | tuple[int, int] = 0, bias: bool = True, **options) -> nn.Conv2d:
    """``nn.Conv2d``; a strided 1x1 convolution of fewer than 8 channels is a :class:`SubsampledConv2d`."""
    pointwise = _pair(kernel_size) == (1, 1) and _pair(padding) == (0, 0)
    narrow_strided = pointwise and _pair(stride) != (1, 1) and in_channels < 8 and not options
    kind = SubsampledConv2d if narrow_strided else nn.Conv2d
    return kind(in_channels, out_channels, kernel_size, stride, padding, bias=bias, **options)


class NoAttention(nn.Module):
    """Identity with the block-attention call signature ``(x, bridges)``."""

    def forward(self, x: torch.Tensor, bridges: list[torch.Tensor] | None = None) -> torch.Tensor:
        return x


@register_attention("none")
def no_attention(channels: int, bridge_channels: list[int]) -> nn.Module:
    return NoAttention()
