"""Layers and the registries that plug them into models.

Importing this package registers every layer: each paper's file calls
``register_norm`` / ``register_conv`` / ``register_attention`` at import time.
"""
from . import basic  # noqa: F401  (registers bn, conv, none)
from .registry import (ATTENTIONS, CONVS, NORMS, attention_factory, conv_spec, norm_spec,
                       register_attention, register_conv, register_norm)

__all__ = ["ATTENTIONS", "CONVS", "NORMS", "attention_factory", "conv_spec", "norm_spec",
           "register_attention", "register_conv", "register_norm"]
