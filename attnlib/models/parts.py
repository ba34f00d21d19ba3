"""Resolve the names of the pluggable points into factories a network calls."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..layers import NORM_SETTINGS, Choice, attention_factory, conv_spec, norm_spec, split_choice


#: Salt of the random stream that attention modules are initialised from (see make_attention).
ATTENTION_STREAM = 0x5EED_A77E


@dataclass(frozen=True)
class Parts:
    """The norm, conv and attention of one network: each a registered name, or ``(name, {option:
    value})`` for a layer with other options than its defaults, e.g. ``norm=("mabn", {"B": 4})``.

    The one description of a network's parts: experiments (:class:`~attnlib.experiment.Variant`),
    the command line and the benchmark all build networks from it.
    """

    norm: Choice = "bn"
    conv: Choice = "conv"
    attention: Choice = "none"

    def __post_init__(self) -> None:  # fail at construction, with the valid names and options
        for kind in ("norm", "conv", "attention"):
            split_choice(kind, getattr(self, kind))

    def name(self, kind: str) -> str:
        """The registered name of the ``kind`` part ("norm", "conv" or "attention")."""
        return split_choice(kind, getattr(self, kind))[0]

    def options(self, kind: str) -> dict[str, object]:
        return split_choice(kind, getattr(self, kind))[1]

    def make_norm(self, channels: int) -> nn.Module:
        return norm_spec(self.name("norm")).factory(channels, **self.options("norm"))

    def make_shortcut_norm(self, channels: int) -> nn.Module:
        """The norm of a projection shortcut: the blocks' own, or the one their norm names
        (IEBN: a plain BN), which keeps the blocks' setting (``NORM_SETTINGS``: the normalisation
        batch, the noise attack)."""
        shortcut = norm_spec(self.name("norm")).shortcut
        if shortcut is None:
            return self.make_norm(channels)
        kept = {k: v for k, v in self.options("norm").items() if k in NORM_SETTINGS}
        return norm_spec(shortcut).factory(channels, **kept)

    def _conv(self, replaced: bool, cin: int, cout: int, kernel_size: int, stride: int, padding: int) -> nn.Module:
        name, options = (self.name("conv"), self.options("conv")) if replaced else ("conv", {})
        return conv_spec(name).factory(cin, cout, kernel_size, stride, padding, bias=False, **options)

    def make_conv(self, cin: int, cout: int, kernel_size: int, stride: int = 1,
                  padding: int = 0) -> nn.Module:
        return self._conv(True, cin, cout, kernel_size, stride, padding)

    def make_stem_conv(self, cin: int, cout: int) -> nn.Module:
        return self._conv(conv_spec(self.name("conv")).stem, cin, cout, 3, 1, 1)

    def make_shortcut_conv(self, cin: int, cout: int, stride: int) -> nn.Module:
        return self._conv(conv_spec(self.name("conv")).shortcut, cin, cout, 1, stride, 0)

    def make_attention(self, channels: int, bridge_channels: list[int]) -> nn.Module:
        """The block's attention, built on a side stream of random numbers: the global stream
        is left where it was, so every other layer of the network gets the initial weights it
        gets in the plain network of the same seed (a network with attention differs from its
        baseline by the attention alone, and an attention whose output is discarded trains
        exactly like the baseline). The side stream is seeded from the global one, so the
        attention's own initial weights still follow the run's seed."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2 ** 62, ())) ^ ATTENTION_STREAM)
            factory = attention_factory(self.name("attention"))
            return factory(channels, bridge_channels, **self.options("attention"))


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
