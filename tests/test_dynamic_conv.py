"""attnlib.layers.dynamic_conv: DynamicConv2d, its two forward paths, the temperature, the callback."""
from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from attnlib import Callback, TrainConfig, build_model, count_parameters, fit, load_dataset
from attnlib.callbacks import TemperatureAnnealing
from attnlib.data import DEBIAN_FASHION_MNIST, FASHION_MNIST_FILES, DeviceLoader
from attnlib.experiment import BOOK_RECIPE
from attnlib.history import History, TrainState
from attnlib.train import evaluate, recompute_bn_statistics
from attnlib.layers import CONVS
from attnlib.layers.dynamic_conv import (DynamicConv2d, expert_attention, fixed_attention,
                                         reference_dynamic_conv, reference_expert_attention)
from attnlib.models.alexnet import ConvUnit
from conftest import assert_same_values_and_gradients

MODES = ("grouped", "branches", "auto")

K2 = ("dynamic", {"num_experts": 2})  # the post's AlexNet-DY


def reference(m: DynamicConv2d, x: torch.Tensor) -> torch.Tensor:
    """Sample by sample: mix the K kernels with that sample's attention, then one F.conv2d."""
    experts = m.weight.reshape(m.num_experts, m.out_channels, *m.weight.shape[1:])
    outs = []
    for xb in x.split(1):
        pi = m.attention_weights(xb)[0]
        weight = torch.einsum("k,koihw->oihw", pi, experts)
        bias = None if m.bias is None else pi @ m.bias
        outs.append(F.conv2d(xb, weight, bias, m.stride, m.padding, m.dilation, m.groups))
    return torch.cat(outs)


# ----------------------------------------------------------------------------- the forward paths

@pytest.mark.parametrize("batch,groups,stride,dilation,bias,size", [
    (3, 1, 1, 1, True, (9, 9)),
    (3, 2, 2, 1, False, (9, 7)),     # non-square, stride 2, groups
    (1, 1, 1, 2, True, (8, 10)),     # batch 1, dilation 2
    (2, 4, 2, 2, True, (11, 11)),    # everything at once
    (40, 2, 1, 1, True, (6, 6)),     # large batch on a small map: "auto" takes the K-branch form
])
def test_grouped_and_branch_forward_equal_the_per_sample_reference(batch, groups, stride, dilation, bias, size):
    torch.manual_seed(0)
    m = DynamicConv2d(8, 12, 3, stride, padding=dilation, dilation=dilation, groups=groups, bias=bias,
                      num_experts=3, temperature=2.0).double()
    if bias:
        nn.init.normal_(m.bias)  # zero at init: make the bias mixing visible
    x = torch.randn(batch, 8, *size, dtype=torch.float64)
    expected = reference(m, x)
    plain = nn.Conv2d(8, 12, 3, stride, dilation, dilation, groups)
    assert expected.shape == plain(x.float()).shape
    for mode in MODES:
        m.mode = mode
        torch.testing.assert_close(m(x), expected, rtol=1e-10, atol=1e-10, msg=mode)


@pytest.mark.parametrize("mode,bias", [("grouped", True), ("branches", True), ("grouped", False)])
def test_layer_equals_the_reference_functions_in_float64_forward_and_gradients(mode, bias):
    """Attention, kernel aggregation and per-sample convolution against the one-equation-a-line
    references: output and every gradient, to 1e-10 (no train/eval difference: no BN)."""
    m = DynamicConv2d(8, 6, 3, stride=2, padding=1, groups=2, bias=bias, num_experts=3, temperature=2.0,
                      mode=mode).double()
    if bias:
        nn.init.normal_(m.bias)  # zero at init
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64).requires_grad_()
    fc1, fc2 = m.attention[1], m.attention[3]
    pi = reference_expert_attention(x, fc1.weight.flatten(1), fc1.bias, fc2.weight.flatten(1), fc2.bias,
                                    m.temperature)
    experts = m.weight.unflatten(0, (m.num_experts, m.out_channels))
    expected = reference_dynamic_conv(x, pi, experts, m.bias, m.stride, m.padding, m.dilation, m.groups)
    params = dict(m.named_parameters())
    assert len(params) == 5 + bias  # experts, their biases, two 1x1 convs with biases
    assert_same_values_and_gradients(m(x), expected, {"x": x, **params})


def test_attention_is_per_sample():
    torch.manual_seed(0)
    m = DynamicConv2d(6, 6, 3, padding=1, num_experts=4, temperature=1.0).double()
    x = torch.randn(5, 6, 7, 7, dtype=torch.float64)
    pi = m.attention_weights(x)
    alone = torch.cat([m.attention_weights(xb) for xb in x.split(1)])
    torch.testing.assert_close(pi, alone, rtol=0, atol=1e-14)
    assert not torch.allclose(pi[0], pi[1])  # different images, different mixtures


def test_one_expert_is_a_plain_conv():
    torch.manual_seed(0)
    m = DynamicConv2d(4, 6, 3, stride=2, padding=1, num_experts=1).double()
    nn.init.normal_(m.bias)
    x = torch.randn(3, 4, 9, 9, dtype=torch.float64)
    assert torch.equal(m.attention_weights(x), torch.ones(3, 1, dtype=torch.float64))
    expected = F.conv2d(x, m.weight, m.bias[0], stride=2, padding=1)
    for mode in MODES:
        m.mode = mode
        torch.testing.assert_close(m(x), expected, rtol=1e-12, atol=1e-12)


def test_attention_sums_to_one_and_sharpens_as_the_temperature_falls():
    torch.manual_seed(0)
    m = DynamicConv2d(16, 16, 3, num_experts=4)
    x = torch.rand(8, 16, 6, 6)  # post-ReLU-like: positive
    max_prob, entropy = [], []
    with torch.no_grad():
        for t in (30.0, 10.0, 3.0, 1.0, 0.3):
            m.temperature = t
            pi = m.attention_weights(x)
            torch.testing.assert_close(pi.sum(1), torch.ones(8))
            max_prob.append(pi.max(1).values)
            entropy.append(-(pi * pi.log()).sum(1))
    for hotter, colder in zip(max_prob, max_prob[1:]):
        assert (colder > hotter).all()
    for hotter, colder in zip(entropy, entropy[1:]):
        assert (colder < hotter).all()
    assert (entropy[0] > 0.99 * math.log(4)).all()  # T=30: near-uniform, as the paper wants early


def test_bf16_autocast():
    torch.manual_seed(0)
    m = DynamicConv2d(16, 16, 3, padding=1)
    x = torch.randn(4, 16, 8, 8)
    ref = m(x).detach()
    for mode in ("grouped", "branches"):
        m.mode = mode
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), ref, rtol=0.05, atol=0.05 * ref.abs().max().item())
        y.float().square().mean().backward()
        assert torch.isfinite(m.weight.grad).all() and m.weight.grad.abs().sum() > 0
        m.zero_grad()


def test_channels_last_input_gives_the_same_output():
    torch.manual_seed(0)
    m = DynamicConv2d(8, 8, 3, padding=1)
    x = torch.randn(32, 8, 7, 7)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    for mode in MODES:
        m.mode = mode
        torch.testing.assert_close(m(x_cl), m(x), rtol=1e-5, atol=1e-5)


def test_channels_last_model_converts_and_trains():
    torch.manual_seed(0)
    model = build_model("resnet20", in_channels=1, conv="dynamic")
    torch.manual_seed(1)
    x = torch.randn(32, 1, 16, 16)  # batch 32, 4x4 in the last stage: both forward paths run
    expected = model.eval()(x)
    model.to(memory_format=torch.channels_last)
    dynamic = [m for m in model.modules() if isinstance(m, DynamicConv2d)]
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in dynamic)
    y = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)
    model.train()(x.contiguous(memory_format=torch.channels_last)).logsumexp(1).mean().backward()
    assert all(m.weight.grad is not None and torch.isfinite(m.weight.grad).all() for m in dynamic)


@pytest.mark.parametrize("mode", ["grouped", "branches"])
def test_gradcheck(mode):
    torch.manual_seed(0)
    m = DynamicConv2d(2, 2, 3, padding=1, num_experts=2, temperature=0.5, mode=mode).double()
    nn.init.normal_(m.bias)
    names = ["weight", "bias", "attention.1.weight", "attention.1.bias", "attention.3.weight",
             "attention.3.bias"]
    params = dict(m.named_parameters())
    assert set(names) == set(params)  # every parameter is checked

    def f(x, *tensors):
        return functional_call(m, dict(zip(names, tensors)), (x,))

    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    inputs = (x, *(params[n].detach().clone().requires_grad_() for n in names))
    assert torch.autograd.gradcheck(f, inputs)


# ----------------------------------------------------------------------------- temperature

def test_temperature_is_a_buffer_that_survives_save_and_load():
    m = DynamicConv2d(4, 4, 3)
    assert m.temperature == 30.0
    m.temperature = 3.5
    assert m.state_dict()["_temperature"].item() == 3.5
    buffer = io.BytesIO()
    torch.save(m.state_dict(), buffer)
    buffer.seek(0)
    fresh = DynamicConv2d(4, 4, 3)
    fresh.load_state_dict(torch.load(buffer))
    assert fresh.temperature == 3.5
    with pytest.raises(ValueError, match="positive"):
        fresh.temperature = 0.0


def test_a_reloaded_model_runs_at_the_saved_temperature():
    """The post's bug: a reloaded model ran at T=30 whatever it was trained at."""
    torch.manual_seed(0)
    model = build_model("resnet20", in_channels=1, conv=K2).eval()
    for m in model.modules():
        if isinstance(m, DynamicConv2d):
            m.temperature = 1.0
    x = torch.randn(2, 1, 16, 16)
    reloaded = build_model("resnet20", in_channels=1, conv=K2).eval()
    reloaded.load_state_dict(model.state_dict())
    assert {m.temperature for m in reloaded.modules() if isinstance(m, DynamicConv2d)} == {1.0}
    torch.testing.assert_close(reloaded(x), model(x), rtol=0, atol=0)


def _fake_state(model: nn.Module, steps_per_epoch: int) -> TrainState:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return TrainState(model, optimizer, TrainConfig(epochs=6), steps_per_epoch, History())


def _drive(callback: TemperatureAnnealing, state: TrainState, layers: list[DynamicConv2d],
           epochs: int) -> list[float]:
    """Run the callback hooks as fit does; return the temperature in effect at every step."""
    used = []
    callback.on_fit_start(state)
    for epoch in range(epochs):
        state.epoch = epoch
        callback.on_epoch_start(state)
        for _ in range(state.steps_per_epoch):
            assert len({m.temperature for m in layers}) == 1
            used.append(layers[0].temperature)
            state.step += 1
            callback.on_step_end(state)
    return used


def test_annealing_per_step_is_linear_then_holds_end():
    torch.manual_seed(0)
    inner = nn.Sequential(DynamicConv2d(3, 4, 3), nn.ReLU(), DynamicConv2d(4, 4, 1))
    model = nn.Sequential(nn.Sequential(inner))  # found whatever the wrapping
    layers = [m for m in model.modules() if isinstance(m, DynamicConv2d)]
    for m in layers:
        m.temperature = 7.0  # overwritten at fit start
    callback = TemperatureAnnealing(start=30.0, end=1.0, epochs=3)
    used = _drive(callback, _fake_state(model, steps_per_epoch=5), layers, epochs=5)
    assert used[0] == 30.0
    expected = [30.0 - 29.0 * min(1.0, s / 15) for s in range(25)]
    assert used == pytest.approx(expected, abs=1e-5)
    assert used[15:] == [1.0] * 10
    assert repr(callback) == "TemperatureAnnealing(start=30.0, end=1.0, epochs=3, per_step=True, linear_in='T')"


def test_annealing_linear_in_inverse_temperature_sharpens_evenly():
    """1/T moves in equal steps (30 -> 1 over 3 epochs of 5 steps), then T holds at 1."""
    model = DynamicConv2d(3, 4, 3)
    callback = TemperatureAnnealing(start=30.0, end=1.0, epochs=3, linear_in="1/T")
    used = _drive(callback, _fake_state(model, steps_per_epoch=5), [model], epochs=4)
    sharpness = [1 / t for t in used]
    steps = [b - a for a, b in zip(sharpness[:15], sharpness[1:16])]
    assert steps == pytest.approx([(1 - 1 / 30) / 15] * 15, abs=1e-6)
    assert used[0] == pytest.approx(30.0) and used[15:] == pytest.approx([1.0] * 5)
    # linear in T, 1/T's last step is over a hundred times its first: the sharpening all comes at the end
    linear = _drive(TemperatureAnnealing(start=30.0, end=1.0, epochs=3), _fake_state(model, steps_per_epoch=5),
                    [model], epochs=4)
    assert (1 / linear[15] - 1 / linear[14]) / (1 / linear[1] - 1 / linear[0]) > 100


def test_annealing_per_epoch_is_constant_within_an_epoch():
    model = DynamicConv2d(3, 4, 3)
    callback = TemperatureAnnealing(start=30.0, end=2.0, epochs=4, per_step=False)
    used = _drive(callback, _fake_state(model, steps_per_epoch=3), [model], epochs=6)
    per_epoch = [30.0, 23.0, 16.0, 9.0, 2.0, 2.0]
    assert used == pytest.approx([t for t in per_epoch for _ in range(3)], abs=1e-5)


def test_annealing_rejects_bad_settings_and_static_models():
    with pytest.raises(ValueError):
        TemperatureAnnealing(epochs=0)
    with pytest.raises(ValueError, match="linear_in must be"):
        TemperatureAnnealing(linear_in="log")
    with pytest.raises(ValueError, match="no DynamicConv2d"):
        TemperatureAnnealing().on_fit_start(_fake_state(nn.Conv2d(1, 1, 1), 1))


class _StopAtEpoch(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_start(self, state: TrainState) -> None:
        if state.epoch == self.epoch:
            raise KeyboardInterrupt


def _temperatures(model: nn.Module) -> list[float]:
    return [m.temperature for m in model.modules() if isinstance(m, DynamicConv2d)]


def test_resume_continues_the_annealing(tmp_path):
    data = load_dataset("synthetic", channels=1, image_size=16, train=128, test=64)
    config = TrainConfig(epochs=2, batch_size=32, lr=0.05, eval_batch_size=64)  # 4 steps an epoch

    def run(*extra: Callback, resume: bool = False) -> nn.Module:
        torch.manual_seed(0)
        model = build_model("resnet20", in_channels=1, conv=K2, width_mult=0.25)
        fit(model, data, config, device="cpu", callbacks=[TemperatureAnnealing(epochs=3), *extra],
            checkpoint=tmp_path / "run.ckpt", resume=resume, progress=False)
        return model

    with pytest.raises(KeyboardInterrupt):
        run(_StopAtEpoch(1))
    # the checkpoint alone (model state, no callback) carries the temperature after 4 steps
    reloaded = build_model("resnet20", in_channels=1, conv=K2, width_mult=0.25)
    reloaded.load_state_dict(torch.load(tmp_path / "run.ckpt", weights_only=False)["model"])
    after_4 = _temperatures(reloaded)
    assert after_4 == pytest.approx([30.0 - 29.0 * 4 / 12] * len(after_4), abs=1e-5)

    resumed = run(resume=True)
    (tmp_path / "run.ckpt").unlink()
    uninterrupted = run()
    assert _temperatures(resumed) == _temperatures(uninterrupted)
    assert _temperatures(uninterrupted) == pytest.approx([30.0 - 29.0 * 8 / 12] * len(after_4), abs=1e-5)


@pytest.mark.skipif(not all((DEBIAN_FASHION_MNIST / f).exists() for f in FASHION_MNIST_FILES),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_fast_sharpening_at_the_end_of_annealing_collapses_and_linear_in_inverse_T_does_not():
    """Chapter 5's collapse in small (the book's probe: 12,000 images, 376 annealing steps, eval
    accuracy on training images 0.81 -> 0.31 at the end of a linear-in-T schedule, 0.84 with 1/T
    linear). Annealed linearly in T, 1/T grows tenfold in the schedule's last third and doubles in its
    last 1/29: the network, in eval mode, falls to chance even on its own training images. The
    same steps with 1/T moving evenly end well above it. Measured over seeds 0-2 in this setting:
    0.08-0.11 against 0.27-0.39.

    The cause is not BN's running statistics: recomputed from the final weights over the 1,500
    training images, they leave the collapsed network near chance (seeds 0 and 1: 0.15 and 0.17;
    with 1/T linear 0.48 and 0.52). The kernels changed faster than the weights could follow.
    """
    data = load_dataset("fashion_mnist", DEBIAN_FASHION_MNIST).subset(train=1500, test=500)
    seen = DeviceLoader(data.train_images[:500], data.train_labels[:500], batch_size=500,
                        mean=data.mean, std=data.std)
    every = DeviceLoader(data.train_images, data.train_labels, batch_size=100, mean=data.mean, std=data.std)

    def eval_accuracies_after_annealing(linear_in: str) -> tuple[float, float]:
        """Eval accuracy with the running statistics of training, and with them recomputed."""
        torch.manual_seed(0)
        model = build_model("resnet20", in_channels=1, conv="dynamic", width_mult=0.5)
        fit(model, data, BOOK_RECIPE.replace(epochs=2, batch_size=50), device="cpu", progress=False,
            callbacks=[TemperatureAnnealing(start=30.0, end=1.0, epochs=2, linear_in=linear_in)])
        trained = evaluate(model.eval(), seen)[1]
        return trained, evaluate(recompute_bn_statistics(model, every), seen)[1]

    collapsed, recalibrated = eval_accuracies_after_annealing("T")
    assert collapsed < 0.15 and recalibrated < 0.25  # chance is 0.10
    assert min(eval_accuracies_after_annealing("1/T")) > 0.25


# ----------------------------------------------------------------------------- init and size

def test_reset_parameters_he_initialises_every_expert():
    torch.manual_seed(0)
    m = DynamicConv2d(64, 32, 3, num_experts=4)
    expected_std = math.sqrt(2.0) / math.sqrt(64 * 9)  # ReLU gain / sqrt(fan_in of one expert)
    with torch.no_grad():
        m.weight.zero_()
        m.bias.fill_(1.0)
    m.reset_parameters()
    experts = m.weight.detach().reshape(4, -1)
    assert experts.std(1).sub(expected_std).abs().max() < 0.05 * expected_std
    assert experts.mean(1).abs().max() < 0.05 * expected_std
    assert not torch.allclose(experts[0], experts[1])
    assert torch.equal(m.bias, torch.zeros(4, 32))


def test_the_experts_keep_their_init_inside_a_model():
    """attnlib's init_weights touches only nn.Conv2d / nn.Linear: the layer's own init must run."""
    torch.manual_seed(0)
    model = build_model("resnet20", conv="dynamic")
    conv = model.stages[2][1].conv1
    assert isinstance(conv, DynamicConv2d)
    std = conv.weight.detach().reshape(4, -1).std(1)
    assert (std - math.sqrt(2 / (64 * 9))).abs().max() < 0.03 * math.sqrt(2 / (64 * 9))


def _dynamic_size(cin: int, cout: int, k: int, experts: int) -> int:
    hidden = max(4, int(0.25 * cin))
    return experts * cout * cin * k * k + (cin * hidden + hidden) + (hidden * experts + experts)


@pytest.mark.parametrize("experts", [4, 2])
def test_resnet20_parameter_count(experts):
    # every conv of ResNet-20 but the stem: (in, out, kernel) and how many of each
    convs = ([(16, 16, 3)] * 6 + [(16, 32, 3), (16, 32, 1)] + [(32, 32, 3)] * 5
             + [(32, 64, 3), (32, 64, 1)] + [(64, 64, 3)] * 5)
    static = build_model("resnet20", conv="conv")
    dynamic = build_model("resnet20", conv=("dynamic", {"num_experts": experts}))
    static_convs = sum(ci * co * k * k for ci, co, k in convs)
    extra = sum(_dynamic_size(ci, co, k, experts) - ci * co * k * k for ci, co, k in convs)
    assert count_parameters(dynamic) == count_parameters(static) + extra
    layers = [m for m in dynamic.modules() if isinstance(m, DynamicConv2d)]
    assert len(layers) == len(convs)
    assert sum(m.weight.numel() for m in layers) == experts * static_convs
    layer_params = sum(p.numel() for m in layers for p in m.parameters())
    assert experts < layer_params / static_convs < experts * 1.02  # the attention MLPs are ~1%


def test_flops_at_batch_one_are_those_of_one_conv():
    """At batch 1 the grouped form runs: FLOPs as the paper counts them, not K times."""
    m = DynamicConv2d(32, 32, 3, padding=1, bias=False)
    static = nn.Conv2d(32, 32, 3, padding=1, bias=False)
    x = torch.randn(1, 32, 16, 16)
    counts = []
    for layer in (m, static):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            layer(x)
        counts.append(counter.get_total_flops())
    assert counts[1] < counts[0] < 1.1 * counts[1]


def test_auto_mode_policy():
    m = DynamicConv2d(8, 8, 3, padding=1)
    assert not m._uses_branches(torch.empty(1, 8, 7, 7))
    assert not m._uses_branches(torch.empty(31, 8, 8, 8))
    assert m._uses_branches(torch.empty(32, 8, 8, 8))
    assert not m._uses_branches(torch.empty(256, 8, 14, 14))
    m.mode = "branches"
    assert m._uses_branches(torch.empty(1, 8, 7, 7))


# ----------------------------------------------------------------------------- registry and helpers

def test_registered_names_and_placement():
    spec = CONVS["dynamic"]
    assert (spec.stem, spec.shortcut) == (False, True)
    for options, experts in (({}, 4), ({"num_experts": 2}, 2)):
        layer = spec.factory(16, 32, 3, 2, 1, bias=False, **options)
        assert isinstance(layer, DynamicConv2d)
        assert (layer.num_experts, layer.temperature, layer.bias, layer.stride) == (experts, 30.0, None, (2, 2))
    model = build_model("resnet20", conv="dynamic")
    assert type(model.stem[0]) is nn.Conv2d
    block = model.stages[1][0]
    assert all(isinstance(m, DynamicConv2d) for m in (block.conv1, block.conv2, block.shortcut[0]))
    alexnet = build_model("alexnet", conv="dynamic")
    kinds = [type(unit.conv) for unit in alexnet.features if isinstance(unit, ConvUnit)]
    assert kinds == [nn.Conv2d, nn.Conv2d, DynamicConv2d, DynamicConv2d, DynamicConv2d]


def test_expert_attention_reads_every_layer_and_cleans_up():
    torch.manual_seed(0)
    model = build_model("resnet20", in_channels=1, conv=K2, width_mult=0.25).train()
    images = torch.randn(10, 1, 16, 16)
    pis = expert_attention(model, images, batch_size=4)
    names = [n for n, m in model.named_modules() if isinstance(m, DynamicConv2d)]
    assert list(pis) == names
    for pi in pis.values():
        assert pi.shape == (10, 2)
        torch.testing.assert_close(pi.sum(1), torch.ones(10))
    assert model.training
    assert not any(m._forward_hooks for m in model.modules())
    with torch.no_grad():
        direct = model.eval().stages[0][0].conv1.attention_weights(model.stem(images))
    torch.testing.assert_close(pis["stages.0.0.conv1"], direct)


@pytest.mark.parametrize("mode", ("grouped", "branches"))
def test_fixed_attention_makes_a_static_conv_of_the_mixed_kernel_and_lets_go(mode):
    torch.manual_seed(0)
    model = nn.Sequential(DynamicConv2d(3, 5, 3, padding=1, temperature=1.0, mode=mode)).double()
    layer = model[0]
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(40, 3, 8, 8, dtype=torch.float64)
    routed = model(x)
    w = torch.tensor([0.1, 0.2, 0.3, 0.4])
    experts = layer.weight.reshape(4, 5, 3, 3, 3)
    with fixed_attention(model, {"0": w}):
        torch.testing.assert_close(layer.attention_weights(x[:3]), w.expand(3, -1))
        static = F.conv2d(x, torch.einsum("k,koihw->oihw", w.double(), experts), w.double() @ layer.bias, padding=1)
        torch.testing.assert_close(model(x), static)
    torch.testing.assert_close(model(x), routed)  # routed again after the block
    with pytest.raises(RuntimeError, match="inside"), fixed_attention(model, {"0": w}):
        raise RuntimeError("inside")
    torch.testing.assert_close(model(x), routed)  # also after an error inside it


def test_fixed_attention_refuses_unknown_layers_and_wrong_shapes():
    model = nn.Sequential(DynamicConv2d(3, 5, 3, num_experts=2))
    with pytest.raises(ValueError, match=r"no dynamic layer \['1'\].*\['0'\]"):
        with fixed_attention(model, {"1": torch.ones(2)}):
            pass
    with pytest.raises(ValueError, match=r"2 experts.*shape \(2,\), got \(4,\)"):
        with fixed_attention(model, {"0": torch.ones(4)}):
            pass


def test_repr_and_argument_checks():
    text = repr(DynamicConv2d(8, 16, 3, stride=2, padding=1, groups=2, bias=False, num_experts=2))
    assert "8, 16, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), groups=2, bias=False" in text
    assert "num_experts=2, temperature=30, mode=auto" in text
    with pytest.raises(ValueError, match="divisible"):
        DynamicConv2d(6, 8, 3, groups=4)
    with pytest.raises(ValueError, match="mode"):
        DynamicConv2d(4, 4, 3, mode="loop")
    with pytest.raises(ValueError, match="positive"):
        DynamicConv2d(4, 4, 3, temperature=-1.0)
