"""The layers where users look for them: importable from ``attnlib.layers`` and working inside
timm's and torchvision's ResNets, as the README shows."""
from __future__ import annotations

import functools

import pytest
import torch
import torchvision

import attnlib.layers
from attnlib.layers import (CenConv2d, DynamicConv2d, IEBN2d, MABN2d, NAMAttention, NAMChannelAttention,
                            SqueezeExcitation)

timm = pytest.importorskip("timm")  # in the test extra

ATTENTIONS = {"SqueezeExcitation": SqueezeExcitation, "NAMAttention": NAMAttention,
              "NAMChannelAttention": NAMChannelAttention,
              "NAMAttention channel + pixel": functools.partial(NAMAttention, spatial=True)}
NORMS = {"IEBN2d": IEBN2d, "MABN2d": functools.partial(MABN2d, B=2, real_B=4, warmup_iters=2)}


def _train_step(model: torch.nn.Module, batch: int = 4) -> torch.Tensor:
    """Two SGD steps on random 32x32 images; returns the logits of the second."""
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    for _ in range(2):
        optimizer.zero_grad()
        logits = model(x)
        torch.nn.functional.cross_entropy(logits, y).backward()
        optimizer.step()
    return logits


def test_every_public_layer_is_exported():
    for name in ("IEBN2d", "MABN2d", "CenConv2d", "SqueezeExcitation", "BridgeAttention", "NAMAttention",
                 "DynamicConv2d"):
        assert name in attnlib.layers.__all__ and hasattr(attnlib.layers, name), name


@pytest.mark.parametrize("name", list(ATTENTIONS))
def test_attention_plugs_into_timm_resnet(name: str):
    layer = ATTENTIONS[name]
    model = timm.create_model("resnet18", num_classes=10, block_args=dict(attn_layer=layer))
    kind = getattr(layer, "func", layer)
    inside = [m for m in model.modules() if type(m) is kind]
    assert len(inside) == 8  # one per BasicBlock
    logits = _train_step(model)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    assert all(p.grad is not None for m in inside for p in m.parameters())


@pytest.mark.parametrize("name", list(NORMS))
def test_norm_plugs_into_torchvision_resnet(name: str):
    norm = NORMS[name]
    model = torchvision.models.resnet18(num_classes=10, norm_layer=norm)
    kind = IEBN2d if name == "IEBN2d" else MABN2d
    assert sum(isinstance(m, kind) for m in model.modules()) == 20  # every BatchNorm2d of resnet18
    logits = _train_step(model)
    assert torch.isfinite(logits).all()
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()


def test_conv_layers_are_drop_in_for_conv2d():
    x = torch.randn(2, 8, 9, 9)
    for conv in (CenConv2d(8, 16, 3, padding=1), DynamicConv2d(8, 16, 3, padding=1)):
        assert conv(x).shape == (2, 16, 9, 9)


@pytest.mark.parametrize("make", [
    lambda **f: SqueezeExcitation(16, **f), lambda **f: NAMAttention(16, spatial=True, **f),
    lambda **f: IEBN2d(16, **f), lambda **f: MABN2d(16, **f), lambda **f: DynamicConv2d(16, 16, 3, **f),
    lambda **f: attnlib.layers.BridgeAttention(16, [8], **f)], ids=["se", "nam", "iebn", "mabn", "dynamic", "ba"])
def test_layers_take_torch_factory_arguments(make):
    """``device=`` and ``dtype=``, as torch.nn layers do (timm passes them to ``attn_layer``)."""
    layer = make(device="cpu", dtype=torch.float64)
    floats = [t for t in [*layer.parameters(), *layer.buffers()] if t.is_floating_point()
              and not isinstance(t, torch.nn.parameter.UninitializedTensorMixin)]
    assert floats and all(t.dtype == torch.float64 for t in floats)
