"""attnlib.devices: the precision chosen for each device, and every layer giving the same forward
and gradients on each available device as on the CPU.

On a CPU-only machine the device list is just ``cpu`` (the comparison then checks that a
deep copy computes the same, and keeps the code path alive); on a GPU machine it adds
``cuda``, and ``scripts/gpu_check.sh`` runs this file there. TF32 is switched off for the
comparison: the tolerances are those of fp32 arithmetic in another summation order.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch

from attnlib import devices
from attnlib.config import TrainConfig
from attnlib.devices import autocast_dtype, precision_name
from attnlib.layers import (BridgeAttention, CenConv2d, DynamicConv2d, IEBN2d, MABN2d, NAMAttention,
                            SqueezeExcitation)
from attnlib.models import build_model
from attnlib.train import fit
from attnlib.variants import Variant

TINY = TrainConfig(epochs=1, batch_size=32, lr=0.05, eval_batch_size=128)
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


def test_autocast_dtype_choices(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert autocast_dtype("auto", cpu) is None, "emulated bf16 is ten times slower: fp32"
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert autocast_dtype("auto", cpu) is torch.bfloat16, "native bf16 is twice as fast"
    assert autocast_dtype("off", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    assert autocast_dtype("fp16", cpu) is torch.float16


def _fc_dtypes(model):
    seen = []
    model.fc.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


def _model(data):
    torch.manual_seed(0)
    return build_model("resnet20", in_channels=data.in_channels)


def test_bf16_on_cpu_trains_under_autocast(synthetic):
    model = _model(synthetic)
    seen = _fc_dtypes(model)
    history = fit(model, synthetic, TINY.replace(amp="bf16"), device="cpu", progress=False)
    assert seen and set(seen) == {torch.bfloat16}
    assert math.isfinite(history.train_loss[0]) and math.isfinite(history.test_loss[0])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, not a cast of the model


def test_auto_amp_on_a_cpu_without_native_bf16_is_fp32(synthetic, monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    model = _model(synthetic)
    seen = _fc_dtypes(model)
    fit(model, synthetic, TINY.replace(amp="auto"), device="cpu", progress=False)
    assert seen and set(seen) == {torch.float32}


def test_precision_names():
    assert [precision_name(d) for d in (None, torch.bfloat16, torch.float16)] == ["fp32", "bf16 autocast",
                                                                                 "fp16 autocast"]
