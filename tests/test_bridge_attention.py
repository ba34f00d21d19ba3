"""attnlib.layers.se and attnlib.layers.bridge_attention: SE and BA-Net channel gates."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from attnlib.config import TrainConfig
from attnlib.layers import ATTENTIONS, options_of
from attnlib.layers import bridge_attention, se
from attnlib.layers.bridge_attention import BridgeAttention, DiscardedBridgeAttention, attention_gates
from attnlib.layers.se import SqueezeExcitation, hidden_channels
from attnlib.models import build_model, count_parameters
from attnlib.train import fit
from attnlib.variants import Variant
from conftest import assert_same_values_and_gradients



# ----------------------------------------------------------------------------- references

def reference_norm(z: torch.Tensor, bn: nn.BatchNorm1d, training: bool) -> torch.Tensor:
    if training:
        mean, var = z.mean(0), z.var(0, unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    return (z - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias


def reference_ba_gate(m: BridgeAttention, x: torch.Tensor, bridges: list[torch.Tensor],
                      training: bool) -> torch.Tensor:
    """S_i = BN_i(W_i GAP(F_i)); gate = sigmoid(W_g relu(sum_i S_i)), from the parameters."""
    features = [*bridges, x]
    assert len(features) == len(m.squeeze_weights)
    fused = torch.zeros(x.shape[0], m.hidden)
    for f, w, bn in zip(features, m.squeeze_weights, m.squeeze_norms):
        pooled = f.sum((2, 3)) / (f.shape[2] * f.shape[3])
        fused = fused + reference_norm(pooled @ w.T, bn, training)
    return torch.sigmoid(fused.clamp(min=0) @ m.excite_weight.T)


def reference_se_gate(m: SqueezeExcitation, x: torch.Tensor) -> torch.Tensor:
    pooled = x.sum((2, 3)) / (x.shape[2] * x.shape[3])
    hidden = (pooled @ m.squeeze_weight.T + m.squeeze_bias).clamp(min=0)
    return torch.sigmoid(hidden @ m.excite_weight.T + m.excite_bias)


def randomize_norms(m: nn.Module) -> None:
    """Non-trivial BN1d affine parameters and running statistics."""
    with torch.no_grad():
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm1d):
                bn.weight.uniform_(0.5, 1.5), bn.bias.normal_(0, 0.3)
                bn.running_mean.normal_(0, 0.2), bn.running_var.uniform_(0.5, 2.0)


def ba_inputs(n: int = 6, c: int = 32, prev: tuple[int, ...] = (16, 24), size: int = 5):
    x = torch.randn(n, c, size, size)
    bridges = [torch.randn(n, p, size + 2, size + 2).relu() for p in prev]
    return x, bridges


# ----------------------------------------------------------------------------- the gates

DISCARDED = ("ba", {"discard_output": True})       # the seed post's control
LAST_ONLY = ("ba", {"last_feature_only": True})  # the ablation: the gate sees the block's output only


def test_registered_names_and_options():
    assert {"se", "ba"} <= set(ATTENTIONS)
    assert options_of("attention", "ba") == ["reduction", "min_hidden", "last_feature_only", "discard_output"]
    with pytest.raises(ValueError, match="attention 'ba' has no option discard; its options: reduction, min_hidden"):
        build_model("resnet20", attention=("ba", {"discard": True}))


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_ba_gate_matches_direct_computation(training):
    m = BridgeAttention(32, [16, 24])
    randomize_norms(m)
    m.train(training)
    x, bridges = ba_inputs()
    expected = reference_ba_gate(m, x, bridges, training)
    gate = m.gate(x, bridges)
    torch.testing.assert_close(gate, expected, rtol=1e-5, atol=1e-6)
    assert gate.shape == (6, 32)
    out = m(x, bridges)  # forward rescales x by exactly that gate
    torch.testing.assert_close(out, x * expected[:, :, None, None], rtol=1e-5, atol=1e-6)


def test_ba_train_mode_updates_running_stats_eval_mode_does_not():
    m = BridgeAttention(32, [16, 24])
    x, bridges = ba_inputs()
    before = m.squeeze_norms[0].running_mean.clone()
    m.eval()(x, bridges)
    assert torch.equal(m.squeeze_norms[0].running_mean, before)
    m.train()(x, bridges)
    assert not torch.equal(m.squeeze_norms[0].running_mean, before)


def test_ba_needs_more_than_one_sample_in_training():
    m = BridgeAttention(32, [16, 24])
    x, bridges = ba_inputs(n=1)
    with pytest.raises(ValueError, match="more than 1 value"):
        m.train()(x, bridges)
    assert m.eval()(x, bridges).shape == x.shape


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_se_gate_matches_direct_computation(training):
    m = SqueezeExcitation(32).train(training)
    x = torch.randn(4, 32, 6, 6)
    expected = reference_se_gate(m, x)
    torch.testing.assert_close(m.gate(x), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m(x, [torch.randn(4, 8, 6, 6)]), x * expected[:, :, None, None],
                               rtol=1e-5, atol=1e-6)


def test_hidden_width_is_floored():
    assert hidden_channels(16, 16) == 8 and hidden_channels(256, 16) == 16
    assert SqueezeExcitation(16).hidden == BridgeAttention(16, [16]).hidden == 8
    assert BridgeAttention(2048, [512, 512]).hidden == 128


@pytest.mark.parametrize("which", [0, 1])
def test_ba_gate_depends_on_every_bridge(which):
    m = BridgeAttention(32, [16, 24]).eval()
    randomize_norms(m)
    x, bridges = ba_inputs()
    perturbed = list(bridges)
    perturbed[which] = bridges[which] + torch.rand_like(bridges[which])
    assert not torch.allclose(m.gate(x, bridges), m.gate(x, perturbed))


def test_last_only_gate_ignores_bridges_but_not_x():
    m = ATTENTIONS["ba"](32, [16, 24], last_feature_only=True).eval()
    randomize_norms(m)
    assert len(m.squeeze_weights) == 1
    x, bridges = ba_inputs()
    others = [b + torch.rand_like(b) for b in bridges]
    assert torch.equal(m.gate(x, bridges), m.gate(x, others))
    assert torch.equal(m.gate(x, bridges), m.gate(x, []))
    assert not torch.allclose(m.gate(x, bridges), m.gate(x + torch.rand_like(x), bridges))


def test_too_few_bridges_is_an_error():
    x, bridges = ba_inputs()
    with pytest.raises(ValueError, match="bridges 2 features, got 1"):
        BridgeAttention(32, [16, 24])(x, bridges[1:])


def test_discarded_returns_x_and_costs_the_same_parameters():
    ba, discarded = ATTENTIONS["ba"](32, [16, 24]), ATTENTIONS["ba"](32, [16, 24], discard_output=True)
    assert isinstance(discarded, DiscardedBridgeAttention)
    assert count_parameters(ba) == count_parameters(discarded)
    x, bridges = ba_inputs()
    x.requires_grad_(True)
    out = discarded.train()(x, bridges)
    assert torch.equal(out, x)
    out.sum().backward()  # the gate is dead: no gradient reaches it
    assert all(p.grad is None for p in discarded.parameters())
    models = [build_model("resnet20", attention=a, in_channels=1) for a in ("ba", DISCARDED)]
    assert count_parameters(models[0]) == count_parameters(models[1])


@pytest.mark.parametrize("model", ["resnet20", "alexnet"])
@pytest.mark.parametrize("attention", ["se", "ba", DISCARDED, "nam"], ids=["se", "ba", "ba-discarded", "nam"])
def test_attention_leaves_every_other_initial_weight_of_the_seed_alone(model: str, attention, synthetic):
    """A network with attention and the plain one of the same seed differ by the attention alone
    (attention modules are initialised on a side stream); the attention's own weights follow
    the seed."""
    def build(attention, seed: int) -> dict[str, torch.Tensor]:
        variant = Variant("x", model=model, attention=attention, model_kwargs={"width_mult": 0.5})
        return variant.build(synthetic, seed).state_dict()

    plain, gated = build(None, 3), build(attention, 3)
    assert set(plain) < set(gated)
    assert all(torch.equal(plain[k], gated[k]) for k in plain), [k for k in plain if not torch.equal(plain[k], gated[k])]
    own = [k for k in gated if k not in plain and gated[k].is_floating_point() and gated[k].numel() > 1]
    again, other_seed = build(attention, 3), build(attention, 4)
    assert all(torch.equal(gated[k], again[k]) for k in own)
    if attention != "nam":  # NAM starts from constants
        assert any(not torch.equal(gated[k], other_seed[k]) for k in own)


def test_ba_with_its_gate_discarded_trains_exactly_like_the_plain_network(synthetic):
    """The post's "identical function" control is an exact null: same seed, same history."""
    config = TrainConfig(epochs=2, batch_size=64, eval_batch_size=128, lr=0.05)
    histories = []
    for attention in (None, DISCARDED):
        model = Variant("x", attention=attention, model_kwargs={"width_mult": 0.5}).build(synthetic, 0)
        histories.append(fit(model, synthetic, config, device="cpu", progress=False).to_dict())
    assert histories[0]["test_loss"] == histories[1]["test_loss"]
    assert histories[0]["train_loss"] == histories[1]["train_loss"]


# ----------------------------------------------------------------------------- inside the models

def attention_shapes(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list]:
    """The model's output and, per attention module, (x shape, bridge shapes, output shape)."""
    seen = []

    def hook(module, args, output):
        seen.append((tuple(args[0].shape), [tuple(b.shape) for b in args[1]], tuple(output.shape)))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, BridgeAttention)]
    with torch.no_grad():
        out = model(x)
    for h in handles:
        h.remove()
    return out, seen


def test_basic_block_shapes_resnet20():
    model = build_model("resnet20", attention="ba", in_channels=1)
    out, seen = attention_shapes(model, torch.randn(3, 1, 16, 16))
    assert out.shape == (3, 10)
    expected = [((3, c, s, s), [(3, c, s, s)], (3, c, s, s)) for c, s in ((16, 16), (32, 8), (64, 4))
                for _ in range(3)]
    assert seen == expected


def test_bottleneck_shapes_resnet50():
    model = build_model("resnet50", attention="ba", in_channels=3)
    out, seen = attention_shapes(model, torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert len(seen) == 3 + 4 + 6 + 3
    # the first block of a downsampling stage: b1 before the stride, b2 and x after it
    assert seen[3] == ((2, 512, 16, 16), [(2, 128, 32, 32), (2, 128, 16, 16)], (2, 512, 16, 16))
    assert seen[-1] == ((2, 2048, 4, 4), [(2, 512, 4, 4), (2, 512, 4, 4)], (2, 2048, 4, 4))


def test_alexnet_shapes():
    model = build_model("alexnet", attention="ba", in_channels=3)
    out, seen = attention_shapes(model, torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert seen == [((2, 192, 8, 8), [(2, 128, 8, 8)], (2, 192, 8, 8)),
                    ((2, 192, 8, 8), [(2, 192, 8, 8)], (2, 192, 8, 8)),
                    ((2, 128, 8, 8), [(2, 192, 8, 8)], (2, 128, 8, 8))]


def ba_block_parameters(channels: int, bridge_channels: list[int], floor: int = 8) -> int:
    """sum_i C_i * h (squeeze FCs) + 2h per BN1d + h * C (generation FC, no bias)."""
    h = max(floor, channels // 16)
    features = [*bridge_channels, channels]
    return sum(c * h for c in features) + 2 * h * len(features) + h * channels


def se_block_parameters(channels: int, floor: int = 8) -> int:
    """C * h + h (squeeze FC and bias) + h * C + C (excitation FC and bias)."""
    h = max(floor, channels // 16)
    return 2 * channels * h + h + channels


RESNET20_BLOCKS = [(w, [w]) for w in (16, 32, 64) for _ in range(3)]
RESNET50_BLOCKS = [(4 * w, [w, w]) for w, d in zip((64, 128, 256, 512), (3, 4, 6, 3)) for _ in range(d)]


@pytest.mark.parametrize("name,blocks", [("resnet20", RESNET20_BLOCKS), ("resnet50", RESNET50_BLOCKS)])
def test_parameter_counts_match_formula(name, blocks):
    base = count_parameters(build_model(name, attention="none", in_channels=1))
    extra = {key: count_parameters(build_model(name, attention=a, in_channels=1)) - base
             for key, a in (("ba", "ba"), ("se", "se"), ("last_only", LAST_ONLY))}
    assert extra["ba"] == sum(ba_block_parameters(c, bridges) for c, bridges in blocks)
    assert extra["se"] == sum(se_block_parameters(c) for c, _ in blocks)
    assert extra["last_only"] == sum(ba_block_parameters(c, []) for c, _ in blocks)
    if name == "resnet20":  # by hand: h = 8 everywhere, per block 2C*8 + 2*2*8 + 8C = 24C + 32
        assert extra["ba"] == 3 * (16 * 8 * 3 + 32) + 3 * (32 * 8 * 3 + 32) + 3 * (64 * 8 * 3 + 32)


def test_model_init_keeps_gate_init():
    """init_weights re-initialises nn.Linear to std 0.01; the gates keep their own init."""
    model = build_model("resnet20", attention="ba", in_channels=1)
    w = model.stages[0][0].attention.excite_weight
    assert w.std() > 0.1  # kaiming-uniform over 8 inputs, std about 0.2


# ----------------------------------------------------------------------------- formats, precision, gradients

@pytest.mark.parametrize("attention", ["se", "ba", LAST_ONLY], ids=["se", "ba", "ba-last-only"])
def test_channels_last_bf16_autocast_and_gradients(attention):
    model = build_model("resnet20", attention=attention, in_channels=1)
    model = model.to(memory_format=torch.channels_last).train()
    x = torch.randn(4, 1, 16, 16).to(memory_format=torch.channels_last)
    gated = []
    hooks = [m.register_forward_hook(lambda m, a, out: gated.append((a[0], out)))
             for m in model.modules() if isinstance(m, (SqueezeExcitation, BridgeAttention))]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x).float().logsumexp(1).mean()
    for h in hooks:
        h.remove()
    assert len(gated) == 9
    for inp, out in gated:  # the gated map stays bf16 and channels_last
        assert inp.dtype == out.dtype == torch.bfloat16
        assert out.is_contiguous(memory_format=torch.channels_last)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_channels_last_fp32_matches_contiguous():
    model = build_model("resnet20", attention="ba", in_channels=1).eval()
    randomize_norms(model)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        expected = model(x)
        got = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- attention_gates

def test_attention_gates_collects_every_gate_and_cleans_up():
    model = build_model("resnet20", attention="ba", in_channels=1).train()
    model.stages[2].eval()  # a mixed train/eval model comes back as it was
    randomize_norms(model)
    x = torch.randn(5, 1, 16, 16)
    modes = [m.training for m in model.modules()]
    gates = attention_gates(model, x)
    assert [m.training for m in model.modules()] == modes
    assert list(gates) == [f"stages.{s}.{b}.attention" for s in range(3) for b in range(3)]
    assert [g.shape for g in gates.values()] == [(5, c) for c in (16, 32, 64) for _ in range(3)]
    assert all(not g.requires_grad and ((g > 0) & (g < 1)).all() for g in gates.values())
    assert not any(m._forward_hooks for m in model.modules())
    # the first block's gate, recomputed from its input and bridge
    block = model.stages[0][0].eval()
    with torch.no_grad():
        stem = model.stem.eval()(x)
        b1 = block.relu(block.bn1(block.conv1(stem)))
        expected = reference_ba_gate(block.attention, block.bn2(block.conv2(b1)), [b1], training=False)
    torch.testing.assert_close(gates["stages.0.0.attention"], expected, rtol=1e-5, atol=1e-6)


def test_attention_gates_for_se_and_none():
    x = torch.randn(2, 1, 16, 16)
    assert len(attention_gates(build_model("resnet20", attention="se", in_channels=1), x)) == 9
    assert attention_gates(build_model("resnet20", in_channels=1), x) == {}


@pytest.mark.parametrize("channels_last", [False, True])
def test_se_hand_written_backward_passes_gradcheck(channels_last):
    torch.manual_seed(0)
    m = SqueezeExcitation(12, reduction=4, min_hidden=2).double()
    x = torch.randn(3, 12, 4, 5, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    params = [m.squeeze_weight, m.squeeze_bias, m.excite_weight, m.excite_bias]
    assert torch.autograd.gradcheck(lambda x, *p: m(x), (x, *params))


def test_se_gradients_equal_autograd_of_the_formula_under_bf16_autocast():
    torch.manual_seed(0)
    m = SqueezeExcitation(16)
    x = torch.randn(4, 16, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    with torch.autocast("cpu", torch.bfloat16):
        y = m(x.bfloat16())
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, m.squeeze_weight, m.excite_bias], g)
    reference = x * reference_se_gate(m, x)[:, :, None, None]
    expected = torch.autograd.grad(reference, [x, m.squeeze_weight, m.excite_bias], g.float())
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)


def test_se_under_bf16_autocast_makes_no_full_size_copy():
    from torch.profiler import ProfilerActivity, profile

    m = SqueezeExcitation(16)
    x = torch.randn(4, 16, 6, 6).contiguous(memory_format=torch.channels_last).bfloat16().requires_grad_()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
        y.backward(torch.ones_like(y))
    assert y.dtype == x.grad.dtype == torch.bfloat16 and x.grad.is_contiguous(memory_format=torch.channels_last)
    copies = [e.name for e in prof.events() if e.name in ("aten::_to_copy", "aten::contiguous", "aten::clone")
              and e.input_shapes and e.input_shapes[0] == list(x.shape)]
    assert copies == []


# ----------------------------------------------------------------------------- the layers' reference functions

def test_se_equals_reference_se_in_float64_forward_and_gradients():
    """The hand-written backward against autograd of the one-equation-a-line reference (SE has no
    train/eval difference)."""
    m = SqueezeExcitation(8, reduction=4, min_hidden=2).double()
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64).requires_grad_()
    params = dict(m.named_parameters())
    assert set(params) == {"squeeze_weight", "squeeze_bias", "excite_weight", "excite_bias"}
    assert_same_values_and_gradients(m(x), se.reference_se(x, **params), {"x": x, **params})


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_ba_equals_reference_ba_gate_in_float64_forward_and_gradients(training):
    """BridgeAttention's output x * gate against the reference gate: every input (the bridges too)
    and every parameter, batch statistics in training and running ones in eval."""
    m = BridgeAttention(8, [4, 6]).double()
    randomize_norms(m)
    m.train(training)
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64).requires_grad_()
    bridges = [torch.randn(4, 4, 7, 7, dtype=torch.float64).relu().requires_grad_(),
               torch.randn(4, 6, 5, 5, dtype=torch.float64).relu().requires_grad_()]
    norms = m.squeeze_norms
    running = {} if training else {"running_means": [n.running_mean.clone() for n in norms],
                                   "running_vars": [n.running_var.clone() for n in norms]}
    y = m(x, bridges)
    gate = bridge_attention.reference_ba_gate(
        [*bridges, x], list(m.squeeze_weights), [n.weight for n in norms], [n.bias for n in norms],
        m.excite_weight, norms[0].eps, **running)
    wrt = {"x": x, **{f"bridges.{i}": b for i, b in enumerate(bridges)}, **dict(m.named_parameters())}
    assert len(wrt) == 3 + 3 + 3 * 2 + 1  # inputs, squeeze_weights, squeeze_norms' weight and bias, excite_weight
    assert_same_values_and_gradients(y, x * gate[:, :, None, None], wrt)


def test_the_side_stream_keeps_the_keys_of_networks_without_attention():
    """The book's queue trains ResNet-20 under these keys (book/results/resnet-20-seed0-f5d6a8749d.ckpt):
    the change of the attention's initialisation must not orphan them."""
    from attnlib.chapters import experiments
    from attnlib.experiment import BOOK_RECIPE
    from attnlib.records import run_key
    from attnlib.variants import run_config
    from attnlib.profiles import resolve_profile

    setup = resolve_profile("book")
    data = setup.load()
    resnet = next(v for v in experiments("00", setup)["main"].variants if v.label == "ResNet-20")
    keys = [run_key(resnet, data, run_config(BOOK_RECIPE, setup, resnet), seed) for seed in (0, 1)]
    assert keys == ["f5d6a8749d", "1e08c021bc"]
    se = Variant("SE", attention="se")
    assert run_key(se, data, run_config(BOOK_RECIPE, setup, se), 0) != keys[0]


def test_the_official_bottleneck_is_an_option():
    """The book's gate is max(8, C // 16) wide; the official BA_module_resnet's C // 16 is 1, 2 and 4
    channels in ResNet-20's stages, built with min_hidden=1."""
    def widths(attention) -> list[int]:
        model = build_model("resnet20", in_channels=1, attention=attention)
        return sorted({m.hidden for m in model.modules() if isinstance(m, BridgeAttention)})

    assert widths("ba") == [8] and widths(("ba", {"min_hidden": 1})) == [1, 2, 4]
