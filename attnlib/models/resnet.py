"""ResNets for small images (CIFAR, Fashion-MNIST), with pluggable norm, conv and attention.

* ResNet-20/32/56: He et al. (2016) section 4.2, three stages of 16/32/64 channels,
  basic blocks. Shortcuts that change shape use a 1x1 projection (option B) so
  that the norm of a shortcut is a real layer that a chapter can choose.
* ResNet-18/50: the ImageNet widths and depths with a 3x3 stride-1 stem and no
  max-pool, as the posts and the official NAM code use on 32x32 images.

The attention module sees the residual branch's output just before the add
(``out = shortcut(x) + attention(branch(x), bridges)``), the position of SE, IEBN's
neighbours, BA and NAM in their papers. ``bridges`` are the branch's earlier
feature maps (after each inner norm), which only BA-Net reads.
"""
from __future__ import annotations

import torch
from torch import nn

from .parts import Parts, init_weights


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, parts: Parts) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = parts.make_conv(cin, width, 3, stride, 1)
        self.bn1 = parts.make_norm(width)
        self.conv2 = parts.make_conv(width, cout, 3, 1, 1)
        self.bn2 = parts.make_norm(cout)
        self.attention = parts.make_attention(cout, [width])
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(cin, cout, stride, parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(b1))
        out = self.attention(out, [b1])
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, parts: Parts) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = parts.make_conv(cin, width, 1)
        self.bn1 = parts.make_norm(width)
        self.conv2 = parts.make_conv(width, width, 3, stride, 1)
        self.bn2 = parts.make_norm(width)
        self.conv3 = parts.make_conv(width, cout, 1)
        self.bn3 = parts.make_norm(cout)
        self.attention = parts.make_attention(cout, [width, width])
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(cin, cout, stride, parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.relu(self.bn1(self.conv1(x)))
        b2 = self.relu(self.bn2(self.conv2(b1)))
        out = self.bn3(self.conv3(b2))
        out = self.attention(out, [b1, b2])
        return self.relu(out + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int, parts: Parts) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(parts.make_shortcut_conv(cin, cout, stride),
                         parts.make_shortcut_norm(cout))


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock | Bottleneck], depths: list[int], widths: list[int],
                 *, num_classes: int = 10, in_channels: int = 3, parts: Parts = Parts(),
                 width_mult: float = 1.0) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        widths = [max(1, round(w * width_mult)) for w in widths]
        self.stem = nn.Sequential(parts.make_stem_conv(in_channels, widths[0]),
                                  parts.make_norm(widths[0]), nn.ReLU(inplace=True))
        stages, cin = [], widths[0]
        for i, (depth, width) in enumerate(zip(depths, widths)):
            blocks = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(cin, width, stride, parts))
                cin = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def cifar_resnet(depth: int, **kw) -> ResNet:
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, [n] * 3, [16, 32, 64], **kw)


def resnet18(**kw) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], [64, 128, 256, 512], **kw)


def resnet50(**kw) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], **kw)
