"""Model registry: ``build_model(name, norm=..., conv=..., attention=...)``."""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from ..layers import Choice
from .alexnet import AlexNet
from .parts import Parts
from .resnet import ResNet, cifar_resnet, resnet18, resnet50

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": partial(cifar_resnet, 20),
    "resnet32": partial(cifar_resnet, 32),
    "resnet56": partial(cifar_resnet, 56),
    "resnet18": resnet18,
    "resnet50": resnet50,
    "alexnet": AlexNet,
}


def build_model(name: str, *, num_classes: int = 10, in_channels: int = 3, norm: Choice = "bn",
                conv: Choice = "conv", attention: Choice | None = None, parts: Parts | None = None,
                **kwargs) -> nn.Module:
    """Build a registered network with the norm, conv and attention choices (see :class:`Parts`),
    given one by one or as ``parts``.

    >>> build_model("resnet20", in_channels=1, norm="bn").fc.out_features
    10
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(sorted(MODELS))}")
    if parts is None:
        parts = Parts(norm=norm, conv=conv, attention=attention or "none")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, parts=parts, **kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["MODELS", "AlexNet", "Parts", "ResNet", "build_model", "count_parameters"]
