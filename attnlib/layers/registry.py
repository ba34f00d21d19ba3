"""Name -> factory registries for the three pluggable points of every model.

Models never import a paper's layer directly: they ask these registries, and each
layer file registers itself. A paper chapter therefore adds a file under
``attnlib/layers`` and nothing else is rewritten.

* ``norm(num_features) -> nn.Module``: replaces ``nn.BatchNorm2d``. ``shortcut``
  names the norm used in projection shortcuts (IEBN keeps a plain BN there).
* ``conv(in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False)``:
  replaces ``nn.Conv2d`` inside blocks; ``stem`` and ``shortcut`` say whether the
  stem conv and the 1x1 projection are replaced too.
* ``attention(channels, bridge_channels) -> nn.Module``: called as
  ``module(x, bridges)`` on the residual branch's output, before the add.
  ``bridges`` are the block's earlier feature maps (BA-Net uses them; others ignore
  them).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

NormFactory = Callable[[int], nn.Module]
ConvFactory = Callable[..., nn.Module]
AttentionFactory = Callable[[int, list[int]], nn.Module]


@dataclass(frozen=True)
class NormSpec:
    factory: NormFactory
    shortcut: str  # name of the norm used in projection shortcuts


@dataclass(frozen=True)
class ConvSpec:
    factory: ConvFactory
    stem: bool
    shortcut: bool


NORMS: dict[str, NormSpec] = {}
CONVS: dict[str, ConvSpec] = {}
ATTENTIONS: dict[str, AttentionFactory] = {}


def _check_new(table: dict, kind: str, name: str) -> None:
    if name in table:
        raise ValueError(f"{kind} {name!r} is registered twice")


def register_norm(name: str, *, shortcut: str | None = None):
    """Decorator: register ``factory(num_features)`` as norm ``name``."""

    def wrap(factory: NormFactory) -> NormFactory:
        _check_new(NORMS, "norm", name)
        NORMS[name] = NormSpec(factory, shortcut or name)
        return factory

    return wrap


def register_conv(name: str, *, stem: bool = False, shortcut: bool = True):
    """Decorator: register a conv factory taking ``nn.Conv2d``'s arguments."""

    def wrap(factory: ConvFactory) -> ConvFactory:
        _check_new(CONVS, "conv", name)
        CONVS[name] = ConvSpec(factory, stem, shortcut)
        return factory

    return wrap


def register_attention(name: str):
    """Decorator: register ``factory(channels, bridge_channels)`` as attention ``name``."""

    def wrap(factory: AttentionFactory) -> AttentionFactory:
        _check_new(ATTENTIONS, "attention", name)
        ATTENTIONS[name] = factory
        return factory

    return wrap


def _lookup(table: dict, kind: str, name: str):
    try:
        return table[name]
    except KeyError:
        known = ", ".join(sorted(table))
        raise ValueError(f"unknown {kind} {name!r}; registered {kind}s: {known}") from None


def norm_spec(name: str) -> NormSpec:
    return _lookup(NORMS, "norm", name)


def conv_spec(name: str) -> ConvSpec:
    return _lookup(CONVS, "conv", name)


def attention_factory(name: str) -> AttentionFactory:
    return _lookup(ATTENTIONS, "attention", name)
