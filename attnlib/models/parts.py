"""Resolve the names of the pluggable points into factories a network calls."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..layers import attention_factory, conv_spec, norm_spec


#: Salt of the random stream that attention modules are initialised from (see make_attention).
ATTENTION_STREAM = 0x5EED_A77E


@dataclass(frozen=True)
class Parts:
    """The norm, conv and attention choices of one network, by registered name."""

    norm: str = "bn"
    conv: str = "conv"
    attention: str = "none"

    def __post_init__(self) -> None:  # fail at construction, with the list of valid names
        norm_spec(self.norm), conv_spec(self.conv), attention_factory(self.attention)

    def make_norm(self, channels: int) -> nn.Module:
        return norm_spec(self.norm).factory(channels)

    def make_shortcut_norm(self, channels: int) -> nn.Module:
        return norm_spec(norm_spec(self.norm).shortcut).factory(channels)

    def make_conv(self, cin: int, cout: int, kernel_size: int, stride: int = 1,
                  padding: int = 0) -> nn.Module:
        return conv_spec(self.conv).factory(cin, cout, kernel_size, stride, padding, bias=False)

    def make_stem_conv(self, cin: int, cout: int) -> nn.Module:
        name = self.conv if conv_spec(self.conv).stem else "conv"
        return conv_spec(name).factory(cin, cout, 3, 1, 1, bias=False)

    def make_shortcut_conv(self, cin: int, cout: int, stride: int) -> nn.Module:
        name = self.conv if conv_spec(self.conv).shortcut else "conv"
        return conv_spec(name).factory(cin, cout, 1, stride, 0, bias=False)

    def make_attention(self, channels: int, bridge_channels: list[int]) -> nn.Module:
        """The block's attention, built on a side stream of random numbers: the global stream
        is left where it was, so every other layer of the network gets the initial weights it
        gets in the plain network of the same seed (a network with attention differs from its
        baseline by the attention alone, and an attention whose output is discarded trains
        exactly like the baseline). The side stream is seeded from the global one, so the
        attention's own initial weights still follow the run's seed."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2 ** 62, ())) ^ ATTENTION_STREAM)
            return attention_factory(self.attention)(channels, bridge_channels)


def init_weights(model: nn.Module) -> None:
    """He init for 4-D conv weights and a small normal init for linear layers.

    Layers with their own ``reset_parameters`` logic (norms, attention gates) are left
    alone: only ``nn.Conv2d`` (and subclasses) and ``nn.Linear`` are touched.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
