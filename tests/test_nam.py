"""attnlib.layers.nam: NAM's channel and pixel modules, their composition, and the sparsity penalty."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnlib.callbacks import NAMSparsityPenalty
from attnlib.config import TrainConfig
from attnlib.layers import ATTENTIONS
from attnlib.layers.nam import (NAMAttention, NAMChannelAttention, NAMSpatialAttention,
                                nam_channel_weights, nam_gates, nam_scale_factors, reference_nam_channel,
                                reference_nam_spatial)
from attnlib.models import build_model, count_parameters
from attnlib.train import fit
from conftest import assert_same_values_and_gradients

EPS = 1e-5
PIXEL = ("nam", {"channel": False, "spatial": True})
BOTH = ("nam", {"spatial": True})
NAM_CHOICES = {"channel": "nam", "pixel": PIXEL, "both": BOTH}


# ----------------------------------------------------------------------------- the formulas, written out

def c(t: torch.Tensor) -> torch.Tensor:
    """A per-channel vector as (1, C, 1, 1)."""
    return t.reshape(1, -1, 1, 1)


def channel_reference(x, gamma, beta, mean=None, var=None, detach=True):
    """sigmoid(w * BN(x)) * x, BN over (N, H, W) per channel; batch statistics unless given."""
    if mean is None:
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    bn = c(gamma) * (x - c(mean)) / torch.sqrt(c(var) + EPS) + c(beta)
    w = (gamma.detach() if detach else gamma).abs()
    w = w / w.sum()
    return torch.sigmoid(c(w) * bn) * x


def spatial_reference(x, lam, beta, mean=None, var=None, detach=True):
    """sigmoid(w * BN_s(x)) * x, BN_s over (N, C) per position; batch statistics unless given."""
    if mean is None:
        mean, var = x.mean((0, 1)), x.var((0, 1), unbiased=False)
    bn = lam * (x - mean) / torch.sqrt(var + EPS) + beta
    w = (lam.detach() if detach else lam).abs()
    w = w / w.sum()
    return torch.sigmoid(w * bn) * x


def randomise(norm: nn.Module) -> None:
    """Signed scales, non-zero shifts and running statistics in a BN or a materialised pixel
    module, so that no term of the formulas is trivially 1 or 0."""
    with torch.no_grad():
        norm.weight.uniform_(-2, 2), norm.bias.uniform_(-1, 1)
        norm.running_mean.uniform_(-0.5, 0.5), norm.running_var.uniform_(0.5, 2.0)


def randomise_all(model: nn.Module) -> None:
    """Every norm of a network, NAM's included (its pixel modules must be materialised)."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, NAMSpatialAttention)):
            randomise(m)


def channel_module(channels: int, detach_weights: bool = True) -> NAMChannelAttention:
    m = NAMChannelAttention(channels, detach_weights=detach_weights)
    randomise(m.bn)
    return m


def spatial_module(channels: int, x: torch.Tensor, detach_weights: bool = True) -> NAMSpatialAttention:
    """A pixel module materialised on x's size, randomised."""
    m = NAMSpatialAttention(channels, detach_weights=detach_weights).eval()
    with torch.no_grad():
        m(x)
    randomise(m)
    return m.train()


def nam_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (NAMChannelAttention, NAMSpatialAttention))}


# ----------------------------------------------------------------------------- outputs

def test_channel_output_equals_formula_train_and_eval():
    m = channel_module(6)
    x = torch.randn(4, 6, 5, 7) * 2 + 0.5
    stats = m.bn.running_mean.clone(), m.bn.running_var.clone()
    torch.testing.assert_close(m(x), channel_reference(x, m.bn.weight, m.bn.bias))
    # the running statistics move as nn.BatchNorm2d's do (unbiased variance, momentum 0.1)
    torch.testing.assert_close(m.bn.running_mean, 0.9 * stats[0] + 0.1 * x.mean((0, 2, 3)))
    torch.testing.assert_close(m.bn.running_var, 0.9 * stats[1] + 0.1 * x.var((0, 2, 3)))
    assert m.bn.num_batches_tracked == 1
    m.eval()
    torch.testing.assert_close(m(x), channel_reference(x, m.bn.weight, m.bn.bias,
                                                       m.bn.running_mean, m.bn.running_var))


def test_spatial_output_equals_formula_train_and_eval():
    x = torch.randn(4, 6, 5, 7) * 2 + 0.5
    m = spatial_module(6, x)
    assert m.weight.shape == m.running_var.shape == (5, 7)
    stats = m.running_mean.clone(), m.running_var.clone()
    torch.testing.assert_close(m(x), spatial_reference(x, m.weight, m.bias))
    # statistics per position over (N, C); the running variance is unbiased over N*C values
    torch.testing.assert_close(m.running_mean, 0.9 * stats[0] + 0.1 * x.mean((0, 1)))
    torch.testing.assert_close(m.running_var, 0.9 * stats[1] + 0.1 * x.var((0, 1)))
    m.eval()
    torch.testing.assert_close(m(x), spatial_reference(x, m.weight, m.bias, m.running_mean, m.running_var))


def test_both_is_channel_then_spatial():
    x = torch.randn(4, 6, 5, 7)
    m = NAMAttention(6, channel=True, spatial=True)
    m.channel, m.spatial = channel_module(6), spatial_module(6, x)
    ch = m.channel
    for mode in ("train", "eval"):
        m.train(mode == "train")
        if mode == "train":
            mid = channel_reference(x, ch.bn.weight, ch.bn.bias)
            ref = spatial_reference(mid, m.spatial.weight, m.spatial.bias)
        else:
            mid = channel_reference(x, ch.bn.weight, ch.bn.bias, ch.bn.running_mean, ch.bn.running_var)
            ref = spatial_reference(mid, m.spatial.weight, m.spatial.bias, m.spatial.running_mean,
                                    m.spatial.running_var)
        torch.testing.assert_close(m(x, [torch.randn(1)]), ref)  # bridges are ignored


def test_eval_mode_uses_running_statistics():
    x = torch.randn(4, 6, 5, 7)
    for m in (channel_module(6), spatial_module(6, x)):
        m.eval()
        before = copy.deepcopy(m.state_dict())
        out = m(x)
        # per sample: no batch statistics are used, and nothing is updated
        torch.testing.assert_close(m(x[:1]), out[:1])
        for key, value in m.state_dict().items():
            assert torch.equal(value, before[key]), key
        assert not torch.allclose(m.train()(x), out)


# ----------------------------------------------------------------------------- weights and their gradients

def test_weights_sum_to_one():
    x = torch.randn(2, 6, 5, 7)
    for m, shape in ((channel_module(6), (6,)), (spatial_module(6, x), (5, 7))):
        w = m.weights()
        assert w.shape == shape and (w >= 0).all()
        torch.testing.assert_close(w.sum(), torch.tensor(1.0))
        torch.testing.assert_close(w, m.scale.abs() / m.scale.abs().sum())


@pytest.mark.parametrize("detach", [True, False])
@pytest.mark.parametrize("kind", ["channel", "spatial"])
def test_weight_gradient_path(kind, detach):
    """detach_weights=True: gamma's gradient equals that of the formula with w a constant;
    False: that of the formula with w = |gamma| / sum |gamma| differentiated too."""
    x = torch.randn(4, 6, 5, 7)
    g = torch.randn(4, 6, 5, 7)
    if kind == "channel":
        m = channel_module(6, detach_weights=detach)
        scale, shift, reference = m.bn.weight, m.bn.bias, channel_reference
    else:
        m = spatial_module(6, x, detach_weights=detach)
        scale, shift, reference = m.weight, m.bias, spatial_reference
    assert m.weights().requires_grad is not detach
    (m(x) * g).sum().backward()
    grads = {}
    for as_constant in (True, False):
        leaf = scale.detach().clone().requires_grad_()
        (reference(x, leaf, shift.detach(), detach=as_constant) * g).sum().backward()
        grads[as_constant] = leaf.grad
    torch.testing.assert_close(scale.grad, grads[detach])
    assert not torch.allclose(grads[True], grads[False], rtol=1e-3, atol=1e-6)  # the choice matters


@pytest.mark.parametrize("detach", [True, False])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", ["channel", "spatial"])
def test_modules_equal_the_reference_functions_in_float64_forward_and_gradients(kind, training, detach):
    """Each module against its one-equation-a-line reference: output and every gradient, to 1e-10."""
    x = (torch.randn(4, 8, 5, 5, dtype=torch.float64) * 2 + 0.5).requires_grad_()
    if kind == "channel":
        m = NAMChannelAttention(8, detach_weights=detach).double()
        norm, reference = m.bn, reference_nam_channel
    else:
        m = NAMSpatialAttention(8, detach_weights=detach).double()
        with torch.no_grad():
            m.eval()(x)  # materialise the (H, W) parameters
        norm, reference = m, reference_nam_spatial
    randomise(norm)
    m.train(training)
    running = {} if training else {"running_mean": norm.running_mean.clone(), "running_var": norm.running_var.clone()}
    y = m(x)
    expected = reference(x, norm.weight, norm.bias, norm.eps, **running, detach_weights=detach)
    assert_same_values_and_gradients(y, expected, {"x": x, "scale": norm.weight, "shift": norm.bias})


# ----------------------------------------------------------------------------- the sparsity penalty

def nam_and_other_grads(model: nn.Module, x, y, penalty: NAMSparsityPenalty | None):
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    if penalty is not None:
        loss = loss + penalty.loss_term(model)
    loss.backward()
    modules = nam_modules(model)
    nam = {name: m.scale.grad.clone() for name, m in modules.items()}
    scales = {id(m.scale) for m in modules.values()}
    other = {name: p.grad.clone() for name, p in model.named_parameters() if id(p) not in scales}
    return nam, other


@pytest.mark.parametrize("wrap", ["none", "dataparallel", "container"])
def test_penalty_adds_strength_times_sign_to_nam_scales_only(wrap):
    model = build_model("resnet20", in_channels=1, attention=BOTH)
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,))
    model.eval()(x)  # materialise the pixel modules
    randomise_all(model)  # signed gammas and lambdas
    model.train()
    if wrap == "dataparallel":
        model = nn.DataParallel(model)  # no GPU: a plain wrapper whose children are named "module.*"
    elif wrap == "container":
        model = nn.Sequential(nn.Identity(), model)
    penalty = NAMSparsityPenalty(strength=0.01)
    state = copy.deepcopy(model.state_dict())
    nam0, other0 = nam_and_other_grads(model, x, y, None)
    model.load_state_dict(state)  # same running statistics for the second pass
    nam1, other1 = nam_and_other_grads(model, x, y, penalty)
    assert len(nam0) == 18 and all(k.endswith(("channel", "spatial")) for k in nam0)
    for name, m in nam_modules(model).items():
        torch.testing.assert_close(nam1[name] - nam0[name], 0.01 * torch.sign(m.scale.detach()),
                                   rtol=0, atol=1e-6)
    # every other parameter, the network's other BN layers included, gets the same gradient
    assert any(".bn2.weight" in k for k in other0) and other0.keys() == other1.keys()
    for name in other0:
        torch.testing.assert_close(other1[name], other0[name], rtol=0, atol=0)


def test_penalty_value_and_gradient_alone():
    model = build_model("resnet20", in_channels=1, attention="nam")
    randomise_all(model)
    penalty = NAMSparsityPenalty()
    assert repr(penalty) == "NAMSparsityPenalty(strength=0.0001)"
    gammas = [m.bn.weight for m in model.modules() if isinstance(m, NAMChannelAttention)]
    term = penalty.loss_term(model)
    torch.testing.assert_close(term, 1e-4 * sum(g.abs().sum() for g in gammas))
    term.backward()
    for g in gammas:
        assert torch.equal(g.grad, 1e-4 * torch.sign(g.detach()))
    others = [m.weight for m in model.modules() if type(m) is nn.BatchNorm2d and
              all(m.weight is not g for g in gammas)]
    assert len(others) == 1 + 18 + 2 and all(p.grad is None for p in others)


def test_penalty_finds_modules_inside_a_compiled_model():
    model = build_model("resnet20", in_channels=1, attention="nam")
    randomise_all(model)
    compiled = torch.compile(model)  # an OptimizedModule; nothing is compiled until it is called
    assert type(compiled) is not type(model)
    penalty = NAMSparsityPenalty()
    assert torch.equal(penalty.loss_term(compiled), penalty.loss_term(model))


def test_fit_trains_nam_scales_with_the_penalty(synthetic):
    """fit converts the memory format and builds the optimiser before the first forward, when
    the pixel modules have no size yet; their parameters must still be trained."""
    model = build_model("resnet20", in_channels=1, attention=BOTH)
    config = TrainConfig(epochs=1, batch_size=64, eval_batch_size=128, lr=0.05)
    history = fit(model, synthetic, config, device="cpu", callbacks=[NAMSparsityPenalty()], progress=False)
    assert len(history) == 1 and torch.isfinite(torch.tensor(history.train_loss)).all()
    for m in nam_modules(model).values():
        assert not torch.equal(m.scale.detach(), torch.ones_like(m.scale))


def test_penalty_fails_loudly_without_nam_modules():
    with pytest.raises(ValueError, match="no NAM modules"):
        NAMSparsityPenalty().loss_term(build_model("resnet20", in_channels=1))
    with pytest.raises(ValueError, match="strength"):
        NAMSparsityPenalty(strength=-1.0)


def test_look_inside_helpers():
    model = build_model("resnet20", in_channels=1, attention=BOTH)
    model.eval()(torch.randn(2, 1, 16, 16))
    randomise_all(model)
    factors, weights = nam_scale_factors(model), nam_channel_weights(model)
    assert list(weights) == [f"stages.{s}.{b}.attention.channel" for s in range(3) for b in range(3)]
    assert len(factors) == 18
    block = model.stages[1][2].attention
    torch.testing.assert_close(factors["stages.1.2.attention.channel"], block.channel.bn.weight.abs())
    torch.testing.assert_close(factors["stages.1.2.attention.spatial"], block.spatial.weight.abs())
    assert factors["stages.1.2.attention.spatial"].shape == (8, 8)
    w = weights["stages.1.2.attention.channel"]
    torch.testing.assert_close(w, block.channel.bn.weight.abs() / block.channel.bn.weight.abs().sum())
    assert not w.requires_grad and not factors["stages.0.0.attention.channel"].requires_grad



def test_gates_are_what_each_module_multiplies_its_input_by_at_test_time():
    model = build_model("resnet20", in_channels=1, attention=BOTH)
    model.eval()(torch.randn(2, 1, 16, 16))
    randomise_all(model)
    model.train()
    model.stages[0][0].eval()  # a frozen block keeps its own mode
    before = copy.deepcopy(model.state_dict())
    inputs, outputs = {}, {}

    def keep(name):
        def hook(module, args, out):
            inputs[name], outputs[name] = args[0], out
        return hook

    for name, m in model.named_modules():
        if isinstance(m, (NAMChannelAttention, NAMSpatialAttention)):
            m.register_forward_hook(keep(name))
    gates = nam_gates(model, torch.randn(3, 1, 16, 16))
    assert model.training and not model.stages[0][0].training and model.stages[1][0].training  # modes restored
    assert set(gates) == set(outputs) and len(gates) == 18
    for name, gate in gates.items():
        assert gate.shape == inputs[name].shape and ((gate > 0) & (gate < 1)).all()
        torch.testing.assert_close(gate * inputs[name], outputs[name])  # eval-mode output = gate x input
    block = model.stages[2][0].attention.channel
    x = inputs["stages.2.0.attention.channel"]
    torch.testing.assert_close(gates["stages.2.0.attention.channel"] * x, reference_nam_channel(
        x, block.bn.weight, block.bn.bias, EPS, block.bn.running_mean, block.bn.running_var))
    for key, value in model.state_dict().items():  # no running statistic or batch count moved
        torch.testing.assert_close(value, before[key], msg=key)


# ----------------------------------------------------------------------------- in the networks

def test_registered_names():
    for options, channel, spatial in (({}, True, False), (PIXEL[1], False, True), (BOTH[1], True, True)):
        m = ATTENTIONS["nam"](16, [16], **options)
        assert isinstance(m, NAMAttention)
        assert (m.channel is not None, m.spatial is not None) == (channel, spatial)
    with pytest.raises(ValueError, match="both"):
        NAMAttention(16, channel=False, spatial=False)


def test_channel_nam_adds_only_the_bn_affine_pair():
    plain = build_model("resnet20", in_channels=1)
    model = build_model("resnet20", in_channels=1, attention="nam")
    channels = [block.bn2.num_features for stage in model.stages for block in stage]
    assert channels == [16] * 3 + [32] * 3 + [64] * 3
    assert count_parameters(model) - count_parameters(plain) == 2 * sum(channels) == 672


@pytest.mark.parametrize("size", [16, 28, 32])
def test_spatial_sizes_itself_per_stage(size):
    model = build_model("resnet20", in_channels=1, attention=PIXEL)
    assert "spatial_size=lazy" in repr(model.stages[0][0].attention)
    with pytest.raises(ValueError, match="uninitialized parameter"):
        count_parameters(model)  # unknown until the first forward, and said so
    model = copy.deepcopy(model)  # a fresh model can be copied
    model(torch.randn(2, 1, size, size))
    sizes = [block.attention.spatial.weight.shape[0] for stage in model.stages for block in stage]
    assert sizes == [size] * 3 + [(size + 1) // 2] * 3 + [(size + 3) // 4] * 3
    assert count_parameters(model) - count_parameters(build_model("resnet20", in_channels=1)) == \
        2 * 3 * (size ** 2 + ((size + 1) // 2) ** 2 + ((size + 3) // 4) ** 2)
    with pytest.raises(ValueError, match="was sized for"):
        model(torch.randn(2, 1, size + 4, size + 4))


def test_spatial_state_dict_loads_into_a_fresh_model():
    model = build_model("resnet20", in_channels=1, attention=BOTH)
    x = torch.randn(2, 1, 16, 16)
    model(x)
    randomise_all(model)
    fresh = build_model("resnet20", in_channels=1, attention=BOTH)
    fresh.load_state_dict(model.state_dict())  # materialised from the state dict's shapes
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("name", NAM_CHOICES)
def test_channels_last_equals_contiguous(name):
    model = build_model("resnet20", in_channels=3, attention=NAM_CHOICES[name])
    x = torch.randn(4, 3, 16, 16)
    model.eval()(x)
    randomise_all(model)
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    for mode in (False, True):  # eval (running statistics), then train (batch statistics)
        model.train(mode), cl_model.train(mode)
        with torch.no_grad():
            torch.testing.assert_close(cl_model(x_cl), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAM_CHOICES)
def test_bf16_autocast_forward_and_backward(name):
    model = build_model("resnet20", in_channels=1, attention=NAM_CHOICES[name]).to(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 16, 16).contiguous(memory_format=torch.channels_last)
    model.eval()
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
    inner = {}
    model.stages[1][1].attention.register_forward_hook(lambda m, i, o: inner.update(i=i[0], o=o))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.train()(x)
    assert inner["i"].dtype == inner["o"].dtype == torch.bfloat16  # the path stays in bf16
    assert inner["o"].is_contiguous(memory_format=torch.channels_last)
    F.cross_entropy(logits.float(), torch.arange(4)).backward()
    grads = [m.scale.grad for m in nam_modules(model).values()]
    assert len(grads) == {"channel": 9, "pixel": 9, "both": 18}[name]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_resnet50_bottleneck_with_every_nam():
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    for name, choice in NAM_CHOICES.items():
        model = build_model("resnet50", in_channels=3, num_classes=10, attention=choice)
        F.cross_entropy(model(x), y).backward()
        modules = list(nam_modules(model).values())
        assert len(modules) == 16 * (2 if name == "both" else 1)
        assert all(m.scale.grad is not None for m in modules)
        assert NAMSparsityPenalty().loss_term(model).item() > 0


def test_all_zero_scales_give_a_half_gate_not_nan():
    layer = NAMChannelAttention(4)
    with torch.no_grad():
        layer.bn.weight.zero_()
    x = torch.randn(3, 4, 5, 5)
    assert torch.equal(layer.weights(), torch.zeros(4))
    assert torch.allclose(layer(x), 0.5 * x)


def test_the_constant_rescale_control_halves_every_residual_branch():
    """NAM's control: the branch times a constant, no parameter, nothing that depends on the input."""
    plain = build_model("resnet20", in_channels=1)
    scaled = build_model("resnet20", in_channels=1, attention=("scale", {"factor": 0.5}))
    assert count_parameters(scaled) == count_parameters(plain)
    block = scaled.stages[0][0].eval()
    x = torch.randn(2, 16, 8, 8)
    branch = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
    torch.testing.assert_close(block(x), torch.relu(x + 0.5 * branch))
    with pytest.raises(ValueError, match="factor must be positive"):
        build_model("resnet20", attention=("scale", {"factor": 0.0}))
