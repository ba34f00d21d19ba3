"""IEBN2d (attnlib.layers.iebn): the formula, BatchNorm2d's bookkeeping, the model wiring, iebn_gates."""
from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from attnlib.layers import norm_spec
from attnlib.layers.iebn import IEBN2d, iebn_gates, reference_iebn
from attnlib.models import build_model, count_parameters
from conftest import assert_same_values_and_gradients

C = 6
SIG_M1 = 1 / (1 + math.exp(1))  # sigmoid(-1), every gate at initialisation


def _input(n: int = 5, c: int = C, h: int = 7, w: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # per-channel offsets and scales, so GAP(x) and the batch statistics are far from 0 / 1
    return torch.randn(n, c, h, w, generator=g) * torch.linspace(0.5, 3, c).view(1, c, 1, 1) \
        + torch.linspace(-2, 2, c).view(1, c, 1, 1)


def _randomise(m: IEBN2d, seed: int = 1) -> IEBN2d:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (m.weight, m.bias, m.weight_readjust, m.bias_readjust):
            p.copy_(torch.randn(p.shape, generator=g))
        m.running_mean.copy_(torch.randn(C, generator=g))
        m.running_var.copy_(torch.rand(C, generator=g) + 0.5)
    return m


def _reference(m: IEBN2d, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """The IEBN formula written out, with the given per-channel statistics."""
    v = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
    x_hat = (x - v(mean)) / torch.sqrt(v(var) + m.eps)
    gate = torch.sigmoid(v(m.weight_readjust) * x.mean((2, 3), keepdim=True) + v(m.bias_readjust))
    return x_hat * v(m.weight) * gate + v(m.bias)


# ----------------------------------------------------------------------------- the formula

def test_train_output_is_the_formula_with_batch_statistics():
    m = _randomise(IEBN2d(C)).train()
    x = _input()
    expected = _reference(m, x, x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False))
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)


def test_eval_output_is_the_formula_with_running_statistics():
    m = _randomise(IEBN2d(C)).eval()
    x = _input()
    expected = _reference(m, x, m.running_mean, m.running_var)
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("training", [True, False])
def test_at_initialisation_it_is_batchnorm_times_sigmoid_minus_one(training: bool):
    x = _input()
    m, bn = IEBN2d(C).train(training), nn.BatchNorm2d(C, affine=False).train(training)
    assert torch.equal(m.weight, torch.ones(C)) and torch.equal(m.bias, torch.zeros(C))
    assert torch.equal(m.weight_readjust, torch.zeros(C)) and torch.equal(m.bias_readjust, -torch.ones(C))
    torch.testing.assert_close(m(x), bn(x) * SIG_M1)
    # with gamma and beta set, the gate still multiplies gamma only: BN(x) * gamma * sigmoid(-1) + beta
    gamma, beta = torch.linspace(0.5, 2, C), torch.linspace(-1, 1, C)
    with torch.no_grad():
        m.weight.copy_(gamma), m.bias.copy_(beta)
    torch.testing.assert_close(m(x), bn(x) * (gamma * SIG_M1).view(1, C, 1, 1) + beta.view(1, C, 1, 1))


def test_eval_uses_running_statistics_train_uses_the_batch():
    m = _randomise(IEBN2d(C))
    x = _input(n=4)
    other = torch.cat([x[:1], _input(n=3, seed=7) * 5 + 3])  # same first sample, different batch
    m.eval()
    torch.testing.assert_close(m(x)[0], m(other)[0])
    torch.testing.assert_close(m(x[:1])[0], m(x)[0])
    m.train()
    assert not torch.allclose(m(x)[0], m(other)[0], atol=1e-3)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_statistics_match_batchnorm2d(momentum):
    m, bn = IEBN2d(C, momentum=momentum), nn.BatchNorm2d(C, momentum=momentum)
    for step in range(5):
        x = _input(n=3 + step, seed=10 + step) * (1 + step)
        m(x), bn(x)
        torch.testing.assert_close(m.running_mean, bn.running_mean)
        torch.testing.assert_close(m.running_var, bn.running_var)
        assert torch.equal(m.num_batches_tracked, bn.num_batches_tracked)
    assert int(m.num_batches_tracked) == 5
    m.eval(), bn.eval()
    m(_input()), bn(_input())  # eval does not update
    torch.testing.assert_close(m.running_mean, bn.running_mean)
    assert int(m.num_batches_tracked) == 5


def test_without_running_statistics_it_always_uses_the_batch():
    m = IEBN2d(C, track_running_stats=False).eval()
    bn = nn.BatchNorm2d(C, affine=False, track_running_stats=False).eval()
    assert m.running_mean is None and m.num_batches_tracked is None
    x = _input()
    torch.testing.assert_close(m(x), bn(x) * SIG_M1)


def test_affine_false_and_bias_false_keep_the_gate():
    x = _input().requires_grad_()
    m = IEBN2d(C, affine=False)
    assert m.weight is None and m.bias is None
    assert {n for n, _ in m.named_parameters()} == {"weight_readjust", "bias_readjust"}
    y = m(x)
    torch.testing.assert_close(y, nn.BatchNorm2d(C, affine=False)(x) * SIG_M1)
    y.square().sum().backward()
    assert m.bias_readjust.grad is not None and x.grad is not None
    if "bias" in (nn.BatchNorm2d.__init__.__kwdefaults__ or {}):  # torch >= 2.14
        m = IEBN2d(C, bias=False)
        assert m.bias is None
        y = m(x)
        torch.testing.assert_close(y, nn.BatchNorm2d(C, affine=False)(x) * SIG_M1)
        y.square().sum().backward()
        assert m.weight.grad is not None


def test_device_and_dtype_arguments():
    m = IEBN2d(C, 1e-3, 0.2, device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in m.parameters())
    assert m.running_var.dtype == torch.float64 and m.num_batches_tracked.dtype == torch.long
    assert (m.eps, m.momentum) == (1e-3, 0.2)
    assert m(_input().double()).dtype == torch.float64


# ----------------------------------------------------------------------------- gradients

def test_gradients_reach_all_four_parameters():
    m = _randomise(IEBN2d(C))
    x = _input().requires_grad_()
    (m(x) * torch.linspace(-1, 1, C).view(1, C, 1, 1)).square().sum().backward()
    for name in ("weight", "bias", "weight_readjust", "bias_readjust"):
        grad = getattr(m, name).grad
        assert grad is not None and torch.isfinite(grad).all() and (grad != 0).all(), name
    assert x.grad is not None and (x.grad != 0).any()


def test_gradients_at_initialisation_reach_the_gate():
    m = IEBN2d(C)  # w = 0: the gate is constant, but its parameters still get gradients
    m(_input()).square().sum().backward()
    assert (m.weight_readjust.grad != 0).all() and (m.bias_readjust.grad != 0).all()


@pytest.mark.parametrize("channels, training, channels_last, kwargs", [
    (6, True, False, {}),
    (6, False, False, {}),
    (6, True, True, {}),
    (6, False, True, {}),
    (40, True, True, {}),             # more channels than the bmm path takes
    (6, False, False, {"track_running_stats": False}),  # eval mode with batch statistics
    (6, True, False, {"affine": False}),
])
def test_gradcheck(channels: int, training: bool, channels_last: bool, kwargs: dict):
    """The hand-written backward against finite differences, in float64."""
    m = IEBN2d(channels, momentum=0.0, **kwargs).double().train(training)  # momentum 0: buffers stay put
    g = torch.Generator().manual_seed(2)
    names = [n for n, _ in m.named_parameters()]
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
        if m.running_var is not None:
            m.running_mean.copy_(torch.randn(channels, generator=g, dtype=torch.float64))
            m.running_var.copy_(torch.rand(channels, generator=g, dtype=torch.float64) + 0.5)
    x = torch.randn(3, channels, 3, 2, generator=g, dtype=torch.float64) * 2 + 1
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()

    def f(x, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *[p.detach().requires_grad_() for p in m.parameters()]))


def test_fused_cpu_path_matches_the_composed_formula():
    """fp32 forward, backward and buffers against autograd through the formula written out."""
    m = _randomise(IEBN2d(C)).train()
    x = _input(n=8, h=9, w=9).to(memory_format=torch.channels_last).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    mean_before = m.running_mean.clone()
    y = m(x)
    ref = _reference(m, x_ref, x_ref.mean((0, 2, 3)), x_ref.var((0, 2, 3), unbiased=False))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
    params = [m.weight, m.bias, m.weight_readjust, m.bias_readjust]
    got = torch.autograd.grad(y, [x, *params], grad)
    want = torch.autograd.grad(ref, [x_ref, *params], grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(m.running_mean, 0.9 * mean_before + 0.1 * x.detach().mean((0, 2, 3)))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_layer_equals_reference_iebn_in_float64_forward_and_gradients(training: bool):
    """The fused layer against the one-equation-a-line reference: output and every gradient, to 1e-10."""
    m = _randomise(IEBN2d(C).double()).train(training)
    x = _input(n=4, h=5, w=5).double().requires_grad_()
    params = dict(m.named_parameters())
    assert set(params) == {"weight", "bias", "weight_readjust", "bias_readjust"}
    running = {} if training else {"running_mean": m.running_mean.clone(), "running_var": m.running_var.clone()}
    y = m(x)
    assert_same_values_and_gradients(y, reference_iebn(x, **params, eps=m.eps, **running), {"x": x, **params})


# ----------------------------------------------------------------------------- parameters and models

def test_two_extra_parameters_per_channel():
    for c in (1, 16, 64):
        assert count_parameters(IEBN2d(c)) - count_parameters(nn.BatchNorm2d(c)) == 2 * c


def test_registered_with_a_plain_bn_shortcut():
    spec = norm_spec("iebn")
    assert spec.shortcut == "bn"
    assert type(spec.factory(8)) is IEBN2d


def test_resnet20_wiring_and_parameter_count():
    bn_model = build_model("resnet20", norm="bn")
    model = build_model("resnet20", norm="iebn")
    iebn = {n: m for n, m in model.named_modules() if isinstance(m, IEBN2d)}
    plain = {n: m for n, m in model.named_modules() if type(m) is nn.BatchNorm2d}
    assert count_parameters(model) - count_parameters(bn_model) == 2 * sum(m.num_features for m in iebn.values())
    # the stem norm and every norm inside a block are IEBN; each projection shortcut keeps a plain BN
    assert "stem.1" in iebn and len(iebn) == 1 + 2 * 9
    assert all(n == "stem.1" or re.fullmatch(r"stages\.\d\.\d\.bn[12]", n) for n in iebn)
    assert sorted(plain) == ["stages.1.0.shortcut.1", "stages.2.0.shortcut.1"]
    assert {n for n, m in bn_model.named_modules() if isinstance(m, nn.BatchNorm2d)} == set(iebn) | set(plain)
    out = model(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_torchvision_resnet18_accepts_it_as_norm_layer():
    models = pytest.importorskip("torchvision.models")
    net = models.resnet18(num_classes=7, norm_layer=IEBN2d)
    # torchvision passes norm_layer everywhere, its downsample shortcuts included
    assert sum(isinstance(m, IEBN2d) for m in net.modules()) == 20
    assert all(type(m) is not nn.BatchNorm2d for m in net.modules())
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_state_dict_round_trip():
    m = _randomise(IEBN2d(C))
    m(_input())  # num_batches_tracked = 1
    sd = m.state_dict()
    assert set(sd) == set(nn.BatchNorm2d(C).state_dict()) | {"weight_readjust", "bias_readjust"}
    assert sd["weight"].shape == sd["weight_readjust"].shape == (C,)
    fresh = IEBN2d(C)
    fresh.load_state_dict(sd)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, sd[key]), key
    m.eval(), fresh.eval()
    x = _input(seed=3)
    assert torch.equal(m(x), fresh(x))


def test_extra_repr_mentions_the_arguments():
    text = repr(IEBN2d(32, eps=1e-3, momentum=None, track_running_stats=False))
    for part in ("IEBN2d(32", "eps=0.001", "momentum=None", "affine=True", "track_running_stats=False",
                 "weight_readjust", "bias_readjust"):
        assert part in text, part


# ----------------------------------------------------------------------------- memory format and dtype

@pytest.mark.parametrize("training", [True, False])
def test_channels_last_matches_contiguous(training: bool):
    x = _input(n=4, h=5, w=5)
    a = _randomise(IEBN2d(C)).train(training)
    b = _randomise(IEBN2d(C)).train(training)
    xa = x.clone().requires_grad_()
    xb = x.clone().to(memory_format=torch.channels_last).requires_grad_()
    ya, yb = a(xa), b(xb)
    assert yb.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ya, yb)
    g = torch.randn(ya.shape, generator=torch.Generator().manual_seed(4))
    ya.backward(g), yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad)
    for name in ("weight", "bias", "weight_readjust", "bias_readjust"):
        torch.testing.assert_close(getattr(a, name).grad, getattr(b, name).grad)
    torch.testing.assert_close(a.running_var, b.running_var)


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_autocast_is_close_to_fp32(channels_last: bool):
    torch.manual_seed(0)
    conv, norm = nn.Conv2d(3, C, 3, padding=1), _randomise(IEBN2d(C))
    x = torch.randn(8, 3, 10, 10)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    ref = norm(conv(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        out = norm(h)
    assert h.dtype == torch.bfloat16
    assert out.dtype == torch.bfloat16  # no fp32 feature map comes out
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
    out.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in norm.parameters())


@pytest.mark.parametrize("training", [True, False])
def test_bf16_autocast_makes_no_full_size_copy(training: bool):
    """No dtype or layout conversion of the feature map, forward or backward (seen by the profiler,
    which also records the conversions that ops make inside their kernels, e.g. a bf16 ``mean``)."""
    from torch.profiler import ProfilerActivity, profile

    norm = _randomise(IEBN2d(C)).train(training)
    h = _input(n=4, h=6, w=6).to(memory_format=torch.channels_last).bfloat16().requires_grad_()
    grad = torch.ones_like(h)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = norm(h)
        y.backward(grad)
    assert y.dtype == h.grad.dtype == torch.bfloat16
    assert y.is_contiguous(memory_format=torch.channels_last)
    full = list(h.shape)
    copies = [e.name for e in prof.events() if e.name in ("aten::_to_copy", "aten::contiguous", "aten::clone")
              and e.input_shapes and e.input_shapes[0] == full]
    assert copies == []


def test_bf16_input_without_autocast_stays_bf16():
    norm = _randomise(IEBN2d(C))
    x = _input()
    out = norm(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), _randomise(IEBN2d(C))(x), rtol=0.05, atol=0.05)


# ----------------------------------------------------------------------------- iebn_gates

def test_iebn_gates_on_a_fresh_model_are_sigmoid_minus_one():
    model = build_model("resnet20", in_channels=1, norm="iebn").train()
    images = torch.randn(3, 1, 12, 12)
    gates = iebn_gates(model, images)
    modules = dict(model.named_modules())
    assert set(gates) == {n for n, m in modules.items() if isinstance(m, IEBN2d)}
    for name, gate in gates.items():
        assert gate.shape == (3, modules[name].num_features), name
        assert ((gate > 0) & (gate < 1)).all()
        torch.testing.assert_close(gate, torch.full_like(gate, SIG_M1))
    # hooks removed, mode and running statistics untouched
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())
    assert all(int(m.num_batches_tracked) == 0 for m in model.modules() if isinstance(m, IEBN2d))


def test_iebn_gates_values_are_the_gate_of_each_layers_input():
    torch.manual_seed(0)
    model = build_model("resnet20", in_channels=1, norm="iebn").eval()
    for m in model.modules():
        if isinstance(m, IEBN2d):
            with torch.no_grad():
                m.weight_readjust.normal_(), m.bias_readjust.normal_()
    images = torch.randn(4, 1, 12, 12)
    gates = iebn_gates(model, images)
    with torch.no_grad():
        stem_in = model.stem[0](images)
        expected = torch.sigmoid(model.stem[1].weight_readjust * stem_in.mean((2, 3)) + model.stem[1].bias_readjust)
    torch.testing.assert_close(gates["stem.1"], expected)
    assert not model.training
    spread = torch.cat([g.flatten() for g in gates.values()])
    assert ((spread > 0) & (spread < 1)).all() and spread.std() > 0.05
