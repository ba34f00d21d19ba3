"""A small AlexNet for 28-32 px images, in the spirit of the posts' CIFAR AlexNets.

Five conv layers (48-128-192-192-128 channels) with a norm after each, three
max-pools and a dropout MLP head. The posts' AlexNets use an 11x11 stride-4 stem
sized for large images; on 32x32 inputs that throws away most of the image in the
first layer, so this one uses a 5x5 stride-1 stem instead.

Pluggable points: the norm after every conv; the conv choice (DynamicConv) and the
attention module (BA-Net) on the last three convs, where the posts put theirs.
"""
from __future__ import annotations

import torch
from torch import nn

from .parts import Parts, init_weights


class ConvUnit(nn.Module):
    """conv -> norm -> attention -> ReLU; the attention sees the unit's input as its bridge."""

    def __init__(self, conv: nn.Module, norm: nn.Module, attention: nn.Module) -> None:
        super().__init__()
        self.conv, self.norm, self.attention = conv, norm, attention
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.attention(self.norm(self.conv(x)), [x]))


class AlexNet(nn.Module):
    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, parts: Parts = Parts(),
                 width_mult: float = 1.0, dropout: float = 0.5) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = (max(1, round(c * width_mult)) for c in (48, 128, 192, 192, 128))
        plain = Parts(norm=parts.norm)

        def unit(p: Parts, cin: int, cout: int, k: int) -> ConvUnit:
            return ConvUnit(p.make_conv(cin, cout, k, 1, k // 2), p.make_norm(cout),
                            p.make_attention(cout, [cin]))

        self.features = nn.Sequential(
            unit(plain, in_channels, c1, 5), nn.MaxPool2d(2),
            unit(plain, c1, c2, 3), nn.MaxPool2d(2),
            unit(parts, c2, c3, 3), unit(parts, c3, c4, 3), unit(parts, c4, c5, 3),
            nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(4 * c5, 1024), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(1024, 1024), nn.ReLU(inplace=True),
            nn.Linear(1024, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
