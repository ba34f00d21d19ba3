"""The book's layers, and the registries that plug them into the book's models.

Each layer is a drop-in ``torch.nn`` module::

    from attnlib.layers import IEBN2d, MABN2d, SqueezeExcitation, NAMAttention
    torchvision.models.resnet18(norm_layer=IEBN2d)                       # a norm for torchvision
    timm.create_model("resnet18", block_args=dict(attn_layer=NAMAttention))  # an attention for timm

Every module in this package is imported here, and each registers its layers by name
(``register_norm`` / ``register_conv`` / ``register_attention``) at import time, so a
chapter adds one file and ``build_model(..., norm="its-name")`` finds it; options of a layer
go with its name: ``build_model(..., norm=("mabn", {"B": 4}))``.
"""
import importlib
import pkgutil

from .registry import (ATTENTIONS, CONVS, NORM_SETTINGS, NORMS, Choice, attention_factory, conv_spec, format_choice,
                       norm_spec, options_of, register_attention, register_conv, register_norm, split_choice)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

from .basic import NoisyBatchNorm2d  # noqa: E402  (after the registrations above)
from .bridge_attention import BridgeAttention  # noqa: E402
from .dynamic_conv import DynamicConv2d  # noqa: E402
from .ghost import GhostNorm  # noqa: E402
from .iebn import IEBN2d, NoisyIEBN2d  # noqa: E402
from .mabn import CenConv2d, MABN2d  # noqa: E402
from .nam import ConstantScale, NAMAttention, NAMChannelAttention, NAMSpatialAttention  # noqa: E402
from .se import SqueezeExcitation  # noqa: E402

__all__ = ["ATTENTIONS", "CONVS", "NORMS", "NORM_SETTINGS", "BridgeAttention", "CenConv2d", "Choice",
           "ConstantScale", "DynamicConv2d", "GhostNorm", "IEBN2d", "MABN2d", "NAMAttention", "NAMChannelAttention",
           "NAMSpatialAttention", "NoisyBatchNorm2d", "NoisyIEBN2d", "SqueezeExcitation", "attention_factory", "conv_spec", "format_choice",
           "norm_spec", "options_of", "register_attention", "register_conv", "register_norm", "split_choice"]
