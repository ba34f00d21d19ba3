"""Every layer gives the same forward and gradients on each available device as on the CPU.

On a CPU-only machine the device list is just ``cpu`` (the comparison then checks that a
deep copy computes the same, and keeps the code path alive); on a GPU machine it adds
``cuda``, and ``scripts/gpu_check.sh`` runs this file there. TF32 is switched off for the
comparison: the tolerances are those of fp32 arithmetic in another summation order.
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch

from attnlib.experiment import Variant
from attnlib.layers import (BridgeAttention, CenConv2d, DynamicConv2d, IEBN2d, MABN2d, NAMAttention,
                            SqueezeExcitation)
from attnlib.train import TrainConfig, fit

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

LAYERS: dict[str, Callable[[], torch.nn.Module]] = {
    "IEBN2d": lambda: IEBN2d(16),
    "MABN2d": lambda: MABN2d(16, B=2, real_B=4, warmup_iters=0),
    "CenConv2d": lambda: CenConv2d(16, 16, 3, padding=1),
    "SqueezeExcitation": lambda: SqueezeExcitation(16),
    "NAMAttention channel + pixel": lambda: NAMAttention(16, spatial=True),
    "DynamicConv2d grouped": lambda: DynamicConv2d(16, 16, 3, padding=1, temperature=1.0, mode="grouped"),
    "DynamicConv2d branches": lambda: DynamicConv2d(16, 16, 3, padding=1, temperature=1.0, mode="branches"),
}


@pytest.fixture(autouse=True)
def no_tf32():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _forward_backward(layer: torch.nn.Module, inputs: list[torch.Tensor], device: str):
    inputs = [t.detach().to(device).requires_grad_() for t in inputs]
    layer = layer.to(device)
    out = layer(inputs[0], inputs[1:]) if isinstance(layer, BridgeAttention) else layer(inputs[0])
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device)
    (out * weights).sum().backward()
    grads = [t.grad for t in inputs] + [p.grad for p in layer.parameters()]
    return out.detach().cpu(), [g.cpu() for g in grads], {k: v.cpu() for k, v in layer.state_dict().items()}


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", [*LAYERS, "BridgeAttention"])
def test_layer_on_device_equals_cpu(name: str, device: str):
    torch.manual_seed(0)
    if name == "BridgeAttention":
        layer, inputs = BridgeAttention(16, [8]), [torch.randn(4, 16, 8, 8), torch.randn(4, 8, 8, 8)]
    else:
        layer, inputs = LAYERS[name](), [torch.randn(4, 16, 8, 8) * 2 + 0.5]
    layer(inputs[0], inputs[1:]) if name == "BridgeAttention" else layer(inputs[0])  # materialise lazy params
    want = _forward_backward(copy.deepcopy(layer).train(), inputs, "cpu")
    got = _forward_backward(copy.deepcopy(layer).train(), inputs, device)
    _same(got[0], want[0])
    for g, w in zip(got[1], want[1], strict=True):
        _same(g, w)
    for key in want[2]:  # running statistics and counters too
        if want[2][key].is_floating_point():
            _same(got[2][key], want[2][key])
        else:
            assert torch.equal(got[2][key], want[2][key]), key


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("parts", [dict(norm="iebn"), dict(attention="ba"), dict(conv="dynamic")], ids=str)
def test_a_network_trains_on_device(parts: dict, device: str, synthetic):
    model = Variant("x", model_kwargs={"width_mult": 0.5}, **parts).build(synthetic, 0)
    history = fit(model, synthetic, TrainConfig(epochs=1, batch_size=64, eval_batch_size=128), device=device,
                  progress=False)
    assert history.test_acc[-1] > 0 and all(map(lambda v: v == v, history.train_loss))
