"""Layers and the registries that plug them into models.

Every module in this package is imported here, and each registers its layers by name
(``register_norm`` / ``register_conv`` / ``register_attention``) at import time, so a
chapter adds one file and ``build_model(..., norm="its-name")`` finds it.
"""
import importlib
import pkgutil

from .registry import (ATTENTIONS, CONVS, NORMS, attention_factory, conv_spec, norm_spec,
                       register_attention, register_conv, register_norm)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["ATTENTIONS", "CONVS", "NORMS", "attention_factory", "conv_spec", "norm_spec",
           "register_attention", "register_conv", "register_norm"]
