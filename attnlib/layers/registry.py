"""Name -> factory registries for the three pluggable points of every model, with options.

Models never import a paper's layer directly: they ask these registries, and each
layer file registers itself. A paper chapter therefore adds a file under
``attnlib/layers`` and nothing else is rewritten.

A *choice* names a registered layer, with options for it when the defaults are not wanted:
``"mabn"`` or ``("mabn", {"B": 4})``. The options are keyword arguments of the factory
(:func:`split_choice` checks them against its signature and says which exist).

* ``norm(num_features, **options) -> nn.Module``: replaces ``nn.BatchNorm2d``. ``shortcut``
  names the norm used in projection shortcuts (IEBN keeps a plain BN there; ``None``: the
  same choice as the blocks').
* ``conv(in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False, **options)``:
  replaces ``nn.Conv2d`` inside blocks; ``stem`` and ``shortcut`` say whether the
  stem conv and the 1x1 projection are replaced too.
* ``attention(channels, bridge_channels, **options) -> nn.Module``: called as
  ``module(x, bridges)`` on the residual branch's output, before the add.
  ``bridges`` are the block's earlier feature maps (BA-Net uses them; others ignore
  them).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import nn

NormFactory = Callable[..., nn.Module]
ConvFactory = Callable[..., nn.Module]
AttentionFactory = Callable[..., nn.Module]

#: A registered layer by name, or ``(name, {option: value})``.
Choice = str | tuple[str, Mapping[str, object]]


@dataclass(frozen=True)
class NormSpec:
    factory: NormFactory
    shortcut: str | None  # the norm of projection shortcuts; None: the blocks' own choice


@dataclass(frozen=True)
class ConvSpec:
    factory: ConvFactory
    stem: bool
    shortcut: bool


NORMS: dict[str, NormSpec] = {}
#: Norm options that describe the setting, not the method: the normalisation batch of a ghost
#: norm and the strength of the noise attack on batch statistics. A projection shortcut's norm
#: keeps them, and a method is compared with plain BN under the same ones.
NORM_SETTINGS = ("norm_batch", "noise")
CONVS: dict[str, ConvSpec] = {}
ATTENTIONS: dict[str, AttentionFactory] = {}


def _check_new(table: dict, kind: str, name: str) -> None:
    if name in table:
        raise ValueError(f"{kind} {name!r} is registered twice")


def register_norm(name: str, *, shortcut: str | None = None):
    """Decorator: register ``factory(num_features, **options)`` as norm ``name``."""

    def wrap(factory: NormFactory) -> NormFactory:
        _check_new(NORMS, "norm", name)
        NORMS[name] = NormSpec(factory, shortcut)
        return factory

    return wrap


def register_conv(name: str, *, stem: bool = False, shortcut: bool = True):
    """Decorator: register a conv factory taking ``nn.Conv2d``'s arguments and options."""

    def wrap(factory: ConvFactory) -> ConvFactory:
        _check_new(CONVS, "conv", name)
        CONVS[name] = ConvSpec(factory, stem, shortcut)
        return factory

    return wrap


def register_attention(name: str):
    """Decorator: register ``factory(channels, bridge_channels, **options)`` as attention ``name``."""

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


_POSITIONAL = {"norm": 1, "conv": 5, "attention": 2}  # the arguments every factory of a kind takes


def _factory(kind: str, name: str) -> Callable[..., nn.Module]:
    if kind == "norm":
        return norm_spec(name).factory
    if kind == "conv":
        return conv_spec(name).factory
    return attention_factory(name)


def options_of(kind: str, name: str) -> list[str]:
    """The options a registered layer takes: its factory's keyword arguments."""
    parameters = list(inspect.signature(_factory(kind, name)).parameters.values())[_POSITIONAL[kind]:]
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in ("bias", "device", "dtype")]


def format_choice(choice: Choice) -> str:
    """A choice as the command line writes it: ``mabn`` or ``mabn(B=4)``."""
    if isinstance(choice, str):
        return choice
    name, options = choice
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in options.items())})"


def split_choice(kind: str, choice: Choice) -> tuple[str, dict[str, object]]:
    """``(name, options)`` of a choice, checked: the name is registered and takes these options."""
    if isinstance(choice, str):
        name, options = choice, {}
    elif isinstance(choice, (tuple, list)) and len(choice) == 2 and isinstance(choice[0], str) \
            and isinstance(choice[1], Mapping):
        name, options = choice[0], dict(choice[1])
    else:
        raise ValueError(f"a {kind} is a registered name or (name, {{option: value}}), got {choice!r}")
    allowed = options_of(kind, name)
    if unknown := sorted(set(options) - set(allowed)):
        raise ValueError(f"{kind} {name!r} has no option {', '.join(unknown)}; its options: "
                         f"{', '.join(allowed) or 'none'}")
    return name, options
