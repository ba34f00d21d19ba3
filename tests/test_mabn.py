"""attnlib.layers.mabn: MABN2d's forward, its moving-average backward, and CenConv2d."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnlib
from attnlib.layers import norm_spec
from attnlib.layers.mabn import (R_MAX, CenConv2d, MABN2d, MABNFunction, reference_cenconv,
                                 reference_mabn, reference_mabn_input_grad)
from conftest import assert_same_values_and_gradients

EPS = 1e-5
DIMS = (0, 2, 3)


def channel(v: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, 1, 1)


def mabn64(**kw) -> MABN2d:
    """A float64 layer with random affine parameters (so that weight and r show up in the gradients)."""
    layer = MABN2d(3, **kw).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)
    return layer


def inputs64(shape=(2, 3, 4, 5)) -> tuple[torch.Tensor, ...]:
    x = (torch.randn(*shape, dtype=torch.float64) + 0.3).requires_grad_()
    return x, torch.randn(*shape, dtype=torch.float64)


def run_function(layer: MABN2d, x: torch.Tensor, grad_out: torch.Tensor):
    """Apply the autograd function at the layer's current counter; return y and the three grads."""
    w, b = layer.weight.detach().clone().requires_grad_(), layer.bias.detach().clone().requires_grad_()
    x = x.detach().clone().requires_grad_()
    y = MABNFunction.apply(x, w, b, layer)
    y.backward(grad_out)
    return y.detach(), x.grad, w.grad, b.grad


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("t,warmup_iters", [(1, 100), (4, 1), (10, 50)])
def test_warmup_gradient_is_exact(t, warmup_iters):
    """t <= S or t < warmup_iters: batch statistics, and the backward is the exact gradient."""
    layer = mabn64(B=1, real_B=4, warmup_iters=warmup_iters)  # S = 4
    layer.iters.fill_(t)
    layer.buffer_x2.uniform_(0.1, 9)   # stale window contents: must not be used in warm-up
    layer.buffer_gz.normal_()
    layer.running_var.uniform_(0.1, 9)  # r is frozen at 1 for t <= 1000
    x, grad_out = inputs64()
    w, b = layer.weight.detach().clone().requires_grad_(), layer.bias.detach().clone().requires_grad_()

    assert torch.autograd.gradcheck(lambda *a: MABNFunction.apply(*a, layer), (x, w, b))

    y, gx, gw, gb = run_function(layer, x, grad_out)
    xr, wr, br = (v.detach().clone().requires_grad_() for v in (x, w, b))
    direct = channel(wr) * xr / (xr.square().mean(DIMS, keepdim=True) + EPS).sqrt() + channel(br)
    direct.backward(grad_out)
    torch.testing.assert_close(y, direct.detach())
    for got, want in ((gx, xr.grad), (gw, wr.grad), (gb, br.grad)):
        torch.testing.assert_close(got, want)


def test_after_warmup_backward_is_the_moving_average_formula():
    """Window statistics in both passes, r clamped to [1/5, 5]: compare with the formula written out."""
    layer = mabn64(B=2, real_B=8, warmup_iters=3)  # S = 4
    t = 2001
    layer.iters.fill_(t)
    layer.buffer_x2.uniform_(0.5, 3)
    layer.buffer_gz.normal_()
    running_var = torch.tensor([1e-3, 1.5, 400.0], dtype=torch.float64)  # r above 5, inside, below 1/5
    layer.running_var.copy_(running_var)
    buf_x2, buf_gz = layer.buffer_x2.clone(), layer.buffer_gz.clone()
    x, grad_out = inputs64()
    w, b = layer.weight.detach(), layer.bias.detach()

    y, gx, gw, gb = run_function(layer, x, grad_out)

    x = x.detach()
    slot = t % 4
    buf_x2[slot] = x.square().mean(DIMS)
    var = buf_x2.mean(0)
    r = ((var + EPS).sqrt() / (running_var + EPS).sqrt()).clamp(0.2, 5)
    assert r[0] == 5 and 0.2 < r[1] < 5 and r[2] == 0.2
    z = x / channel(var + EPS).sqrt()
    g = grad_out * channel(w * r)
    buf_gz[slot] = (g * z).mean(DIMS)
    psi_bar = buf_gz.mean(0)
    torch.testing.assert_close(y, channel(w * r) * z + channel(b))
    torch.testing.assert_close(gx, (g - z * channel(psi_bar)) / channel(var + EPS).sqrt())
    torch.testing.assert_close(gw, (grad_out * channel(r) * z).sum(DIMS))
    torch.testing.assert_close(gb, grad_out.sum(DIMS))
    torch.testing.assert_close(layer.buffer_x2, buf_x2)
    torch.testing.assert_close(layer.buffer_gz, buf_gz)
    torch.testing.assert_close(layer.running_var, 0.98 * running_var + 0.02 * var)
    # deliberately not the gradient of the forward pass (which would use Psi_t / S)
    exact = (g - z * channel(buf_gz[slot] / 4)) / channel(var + EPS).sqrt()
    assert not torch.allclose(gx, exact)


def test_window_is_exactly_the_last_S_iterations():
    """Over 10 steps with S = 3: forward divides by the mean of the last 3 E[x^2], backward uses
    the mean of the last 3 Psi (from step S + 1 = 4 on; batch statistics before)."""
    S = 3
    layer = MABN2d(2, B=1, real_B=S, warmup_iters=1).double()
    chis, psis = [], []
    for t in range(1, 11):
        x = (torch.randn(2, 2, 3, 3, dtype=torch.float64) * t).requires_grad_()  # varying scale
        grad_out = torch.randn_like(x)
        y = layer(x)
        y.backward(grad_out)
        chis.append(x.detach().square().mean(DIMS))
        var = torch.stack(chis[-S:]).mean(0) if t > S else chis[-1]
        z = x.detach() / channel(var + EPS).sqrt()
        psis.append((grad_out * z).mean(DIMS))  # weight = r = 1
        psi = torch.stack(psis[-S:]).mean(0) if t > S else psis[-1]
        assert layer.iters.item() == t
        torch.testing.assert_close(y.detach(), z)
        torch.testing.assert_close(x.grad, (grad_out - z * channel(psi)) / channel(var + EPS).sqrt())
    order = [t % S for t in range(8, 11)]  # step t writes row t % S
    torch.testing.assert_close(layer.buffer_x2[order], torch.stack(chis[-S:]))
    torch.testing.assert_close(layer.buffer_gz[order], torch.stack(psis[-S:]))


# ----------------------------------------------------------------------------- r and eval

def _r_of_step(layer: MABN2d, t: int, running_var: float) -> torch.Tensor:
    """Run step t (fast-forwarding the counter) and read r back from the output: y = r * z."""
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    layer.iters.fill_(t - 1)
    layer.running_var.fill_(running_var)
    y = layer(x)
    z = x / (x.square().mean(DIMS, keepdim=True) + EPS).sqrt()  # S = 1: batch statistics
    r = (y / z).mean(DIMS)
    assert torch.allclose(y, channel(r) * z)
    return r


@pytest.mark.parametrize("warmup_iters,frozen_until", [(2, 1000), (1500, 1500)])
def test_r_is_one_then_clamped(warmup_iters, frozen_until):
    layer = MABN2d(3, B=2, real_B=2, warmup_iters=warmup_iters).double()  # S = 1
    for running_var in (1e-4, 1.3, 1e4):
        for t in (frozen_until - 1, frozen_until):
            torch.testing.assert_close(_r_of_step(layer, t, running_var), torch.ones(3, dtype=torch.float64))
    assert (_r_of_step(layer, frozen_until + 1, 1e-4) == 5).all()
    assert (_r_of_step(layer, frozen_until + 1, 1e4) == 0.2).all()
    r = _r_of_step(layer, frozen_until + 5, 1.3)  # E[x^2] is about 1: r = sqrt(E[x^2] / 1.3)
    assert ((r > 0.2) & (r < 5) & (r - math.sqrt(1 / 1.3)).abs().lt(0.2)).all()


def test_eval_uses_running_var_and_changes_nothing():
    layer = mabn64().eval()
    layer.running_var.uniform_(0.1, 4)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    want = channel(layer.weight) * x / channel(layer.running_var + EPS).sqrt() + channel(layer.bias)
    torch.testing.assert_close(layer(x), want)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, state[k]), k


# ----------------------------------------------------------------------------- precision and layout

def test_bf16_autocast_keeps_statistics_in_fp32():
    x32 = 300 + 10 * torch.randn(4, 3, 8, 8)
    ref = MABN2d(3)
    want = ref(x32)
    layer = MABN2d(3)
    x = x32.to(torch.bfloat16).contiguous(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.float().square().sum().backward()
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad).all()
    assert layer.buffer_x2.dtype == torch.float32 and layer.running_var.dtype == torch.float32
    torch.testing.assert_close(layer.buffer_x2, ref.buffer_x2, rtol=5e-3, atol=0)  # about 9e4
    torch.testing.assert_close(layer.running_var, ref.running_var, rtol=5e-3, atol=0)
    torch.testing.assert_close(y.float(), want, rtol=1e-2, atol=1e-2)


def test_fp16_second_moment_does_not_overflow():
    x = (300 + 10 * torch.randn(2, 3, 4, 4)).half()  # x^2 > 65504, the fp16 maximum
    layer = MABN2d(3)
    y = layer(x)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    torch.testing.assert_close(layer.buffer_x2[1], x.float().square().mean(DIMS), rtol=1e-3, atol=0)


# ----------------------------------------------------------------------------- state

def test_state_dict_round_trip_continues_identically():
    def make() -> MABN2d:
        return MABN2d(3, B=2, real_B=8, warmup_iters=2)  # S = 4, window statistics from step 5

    def step(layer: MABN2d, x: torch.Tensor, g: torch.Tensor):
        x = x.clone().requires_grad_()
        y = layer(x)
        y.backward(g)
        return y.detach(), x.grad

    data = [(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)) for _ in range(9)]
    a = make()
    for x, g in data[:6]:
        step(a, x, g)
    state = a.state_dict()
    assert set(state) == {"weight", "bias", "running_var", "iters", "buffer_x2", "buffer_gz"}
    b = make()
    b.load_state_dict(state)
    assert b.iters.item() == 6
    for x, g in data[6:]:
        (ya, ga), (yb, gb) = step(a, x, g), step(b, x, g)
        assert torch.equal(ya, yb) and torch.equal(ga, gb)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="multiple of B"):
        MABN2d(4, B=3, real_B=32)
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"):
        MABN2d(4)(torch.randn(2, 4))


def test_two_calls_before_one_backward():
    """The backward reads the ring buffers from the layer, not from saved tensors: a layer used
    twice in one graph does not trip autograd's version check."""
    layer = MABN2d(3, B=1, real_B=2, warmup_iters=1)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    (layer(x) * layer(2 * x)).sum().backward()
    assert layer.iters.item() == 2 and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("phase", ["warm-up", "moving averages"])
def test_layer_equals_reference_mabn_in_float64_forward_and_gradients(phase):
    """One training step against the one-equation-a-line references, to 1e-10: the output and the
    weight and bias gradients against reference_mabn (and autograd), dL/dx against
    reference_mabn_input_grad. During the warm-up that is autograd of reference_mabn too; after it,
    deliberately not (the moving average of Psi)."""
    S, warm = 4, phase == "warm-up"
    layer = MABN2d(8, B=1, real_B=S, warmup_iters=100 if warm else 3).double()
    t = 5 if warm else 2001  # 5: batch statistics and r = 1; 2001: windows of S steps and r clipped to [1/5, 5]
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5), layer.bias.uniform_(-0.5, 0.5)
        layer.buffer_x2.uniform_(0.5, 3), layer.buffer_gz.normal_()  # stale during the warm-up: unused
        layer.running_var.copy_(torch.logspace(-3, 3, 8))  # r above 5, inside, below 1/5
    layer.iters.fill_(t - 1)  # the forward advances it to t
    previous = torch.arange(S) != t % S  # step t writes row t % S of the windows
    no_rows = torch.zeros(0, 8, dtype=torch.float64)
    past_chi = no_rows if warm else layer.buffer_x2[previous].clone()
    past_psi = no_rows if warm else layer.buffer_gz[previous].clone()
    common = {"running_var": layer.running_var.clone(), "eps": layer.eps, "r_max": 1.0 if warm else R_MAX}
    x = (torch.randn(2, 8, 5, 5, dtype=torch.float64) + 0.3).requires_grad_()
    grad_out = torch.randn(2, 8, 5, 5, dtype=torch.float64)

    y = layer(x)
    expected = reference_mabn(x, layer.weight, layer.bias, past_chi, **common)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    wrt = {"x": x, "weight": layer.weight, "bias": layer.bias}
    got = dict(zip(wrt, torch.autograd.grad(y, list(wrt.values()), grad_out)))
    autograd = dict(zip(wrt, torch.autograd.grad(expected, list(wrt.values()), grad_out)))
    dx = reference_mabn_input_grad(grad_out, x.detach(), layer.weight.detach(), past_chi, past_psi, **common)
    torch.testing.assert_close(got["x"], dx, rtol=1e-10, atol=1e-10)
    for name in ("weight", "bias"):
        torch.testing.assert_close(got[name], autograd[name], rtol=1e-10, atol=1e-10, msg=name)
    assert torch.allclose(autograd["x"], dx, rtol=1e-10, atol=1e-10) is warm


# ----------------------------------------------------------------------------- CenConv2d

def test_cenconv_uses_centred_weights():
    conv = CenConv2d(4, 6, 3, stride=2, padding=1, bias=True)
    with torch.no_grad():
        conv.weight.add_(1.0)  # a clearly non-zero mean per filter
        conv.bias.normal_()
    w = conv.centred_weight()
    torch.testing.assert_close(w.mean(dim=(1, 2, 3)), torch.zeros(6), atol=1e-6, rtol=0)
    x = torch.randn(2, 4, 9, 9)
    y = conv(x)
    torch.testing.assert_close(y, F.conv2d(x, conv.weight - conv.weight.mean(dim=(1, 2, 3), keepdim=True),
                                           conv.bias, stride=2, padding=1))
    y.square().sum().backward()  # the centring is differentiated through: zero-mean gradient per filter
    torch.testing.assert_close(conv.weight.grad.mean(dim=(1, 2, 3)), torch.zeros(6), atol=1e-5, rtol=0)


def test_cenconv_init_and_defaults():
    conv = CenConv2d(64, 128, 3)
    assert isinstance(conv, nn.Conv2d) and conv.bias is None
    std = math.sqrt(2 / (128 * 9))  # He normal, fan_out (not the official std-1 draw)
    assert abs(conv.weight.std().item() / std - 1) < 0.05


def test_cenconv_equals_reference_cenconv_in_float64_forward_and_gradients():
    conv = CenConv2d(4, 6, 3, stride=2, padding=1, bias=True).double()
    with torch.no_grad():
        conv.weight.add_(1.0), conv.bias.normal_()  # a clearly non-zero mean per filter
    x = torch.randn(4, 4, 5, 5, dtype=torch.float64).requires_grad_()
    expected = reference_cenconv(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    assert_same_values_and_gradients(conv(x), expected, {"x": x, "weight": conv.weight, "bias": conv.bias})


# ----------------------------------------------------------------------------- in a network

def test_registered_with_the_batch_as_an_option():
    spec = norm_spec("mabn")
    assert spec.shortcut is None  # the projection shortcuts get MABN too, with the same options
    for options, batch in (({}, 2), ({"B": 4}, 4), ({"B": 32}, 32)):
        layer = spec.factory(8, **options)
        assert isinstance(layer, MABN2d) and (layer.B, layer.window) == (batch, 32 // batch)
    model = attnlib.build_model("resnet20", in_channels=1, norm=("mabn", {"B": 8}), conv="cenconv")
    norms = [m for m in model.modules() if isinstance(m, MABN2d)]
    assert len(norms) == 21 and all(m.B == 8 for m in norms)  # stem, 18 in blocks, 2 shortcuts
    spec = attnlib.layers.conv_spec("cenconv")
    assert spec.stem and spec.shortcut


def test_resnet_replaces_everything_and_trains():
    model = attnlib.build_model("resnet20", norm="mabn", conv="cenconv", in_channels=1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, MABN2d)]
    assert all(isinstance(m, CenConv2d) for m in convs) and len(convs) == 21  # stem, 18, 2 shortcuts
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert len(norms) == 21
    assert isinstance(model.stem[0], CenConv2d) and isinstance(model.stages[1][0].shortcut[0], CenConv2d)
    assert isinstance(model.stages[1][0].shortcut[1], MABN2d)

    data = attnlib.load_dataset("synthetic", channels=1, image_size=16, train=128, test=64)
    config = attnlib.TrainConfig(epochs=2, batch_size=2, lr=0.02, check_every=16)  # B = 2, as "mabn"
    history = attnlib.fit(model, data, config, progress=False)
    assert all(math.isfinite(v) for v in history.train_loss + history.test_loss)
    assert all(m.iters.item() == 128 for m in norms)  # past warm-up (100): windows in use
    assert all(torch.isfinite(m.running_var).all() for m in norms)

