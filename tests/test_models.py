"""attnlib.models and attnlib.layers: every network builds, and the registries plug in everywhere."""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from attnlib.layers import ATTENTIONS, CONVS, NORMS, register_attention, register_conv, register_norm
from attnlib.layers.basic import SubsampledConv2d
from attnlib.models import MODELS, Parts, build_model, count_parameters
from attnlib.models.resnet import cifar_resnet


@pytest.fixture
def registry_cleanup():
    """Names registered by a test, removed from the registries afterwards."""
    added: list[tuple[dict, str]] = []
    yield lambda table, name: added.append((table, name))
    for table, name in added:
        table.pop(name, None)


# ----------------------------------------------------------------------------- every model

@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32)])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_builds_and_classifies(name, in_channels, size):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_channels=in_channels).eval()
    x = torch.randn(2, in_channels, size, size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    # the two images give different outputs: the input reaches the classifier
    assert not torch.allclose(out[0], out[1])


def test_build_model_defaults():
    model = build_model("resnet20")
    assert model.fc.out_features == 10 and model.stem[0].in_channels == 3


# ----------------------------------------------------------------------------- unknown names

def test_unknown_model_lists_registered_models():
    with pytest.raises(ValueError) as err:
        build_model("resnet21")
    for name in MODELS:
        assert name in str(err.value)


@pytest.mark.parametrize("kind,table", [("norm", NORMS), ("conv", CONVS), ("attention", ATTENTIONS)])
def test_unknown_part_lists_registered_names(kind, table):
    with pytest.raises(ValueError, match=f"unknown {kind} 'nope'") as err:
        build_model("resnet20", **{kind: "nope"})
    assert table  # something is registered, and all of it is listed
    for name in table:
        assert name in str(err.value)
    with pytest.raises(ValueError):
        Parts(**{kind: "nope"})


def test_cifar_resnet_depth_must_be_6n_plus_2():
    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_resnet(21)


def test_registering_a_name_twice_fails():
    with pytest.raises(ValueError, match="registered twice"):
        register_norm("bn")(lambda c: nn.BatchNorm2d(c))
    with pytest.raises(ValueError, match="registered twice"):
        register_attention("none")(lambda c, b: nn.Identity())
    with pytest.raises(ValueError, match="registered twice"):
        register_conv("conv")(nn.Conv2d)


# ----------------------------------------------------------------------------- parameter counts

def cifar_resnet_params(n: int, in_channels: int, num_classes: int, widths=(16, 32, 64)) -> int:
    """Parameters of a CIFAR ResNet-(6n+2) with option-B shortcuts, counted by hand.

    3x3 convs have no bias; every BN has a weight and a bias (2 per channel); a block that
    changes width or stride adds a 1x1 projection conv and its BN; the fc has a bias.
    """
    total = in_channels * widths[0] * 9 + 2 * widths[0]           # stem conv + BN
    cin = widths[0]
    for width in widths:
        for _ in range(n):
            total += cin * width * 9 + 2 * width + width * width * 9 + 2 * width
            if cin != width:                                        # first block of stages 2, 3
                total += cin * width + 2 * width
            cin = width
    return total + cin * num_classes + num_classes


def test_resnet20_parameter_count():
    # He et al.'s ResNet-20 (option A) has 269,722; option B adds 2 projections: 16*32+64 + 32*64+128
    assert cifar_resnet_params(3, 3, 10) == 269_722 + 2_752
    assert count_parameters(build_model("resnet20")) == 272_474
    assert count_parameters(build_model("resnet20", in_channels=1, num_classes=100)) == \
        cifar_resnet_params(3, 1, 100)
    assert count_parameters(build_model("resnet56", in_channels=3, num_classes=10)) == \
        cifar_resnet_params(9, 3, 10)


def test_resnet20_parameter_count_from_layer_shapes():
    """Independent of the formula: sum the shapes of the conv / BN / linear layers found."""
    model = build_model("resnet20", in_channels=1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 1 + 18 + 2 and len(bns) == len(convs)
    assert all(c.bias is None for c in convs)
    total = sum(c.out_channels * c.in_channels * c.kernel_size[0] * c.kernel_size[1] for c in convs)
    total += sum(2 * b.num_features for b in bns) + 64 * 10 + 10
    assert count_parameters(model) == total == cifar_resnet_params(3, 1, 10)


def test_count_parameters_skips_frozen():
    model = build_model("resnet20")
    model.fc.requires_grad_(False)
    assert count_parameters(model) == 272_474 - 650


# ----------------------------------------------------------------------------- attention registry

class Recording(nn.Module):
    """An attention that records its calls; multiplies the branch by ``scale``."""

    def __init__(self, channels: int, bridge_channels: list[int], log: list) -> None:
        super().__init__()
        self.channels, self.bridge_channels, self.log = channels, bridge_channels, log
        self.scale = 1.0

    def forward(self, x, bridges=None):
        self.log.append((self, tuple(x.shape), [tuple(b.shape) for b in bridges]))
        return x * self.scale


@pytest.fixture
def recording_attention(registry_cleanup):
    built, calls = [], []

    @register_attention("test-recording")
    def factory(channels, bridge_channels):
        module = Recording(channels, list(bridge_channels), calls)
        built.append(module)
        return module

    registry_cleanup(ATTENTIONS, "test-recording")
    return built, calls


def test_registered_attention_plugs_into_every_resnet_block(recording_attention):
    built, calls = recording_attention
    torch.manual_seed(0)
    model = build_model("resnet20", in_channels=1, attention="test-recording").eval()
    assert [m.channels for m in built] == [16] * 3 + [32] * 3 + [64] * 3
    assert [m.bridge_channels for m in built] == [[16]] * 3 + [[32]] * 3 + [[64]] * 3
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        out = model(x)
    assert [c[0] for c in calls] == built  # once per block, in order
    for module, shape, bridges in calls:
        assert shape[1] == module.channels
        assert len(bridges) == 1
        assert bridges[0][1] == module.bridge_channels[0] and bridges[0][2:] == shape[2:]
    assert [c[1][2] for c in calls] == [16] * 3 + [8] * 3 + [4] * 3
    # as an identity it changes nothing; its output is what the block adds to the shortcut
    torch.manual_seed(0)
    plain = build_model("resnet20", in_channels=1).eval()
    with torch.no_grad():
        assert torch.allclose(plain(x), out)
        for m in built:
            m.scale = 0.0
        assert not torch.allclose(model(x), out)
    # the module is a registered submodule of its block
    assert sum(isinstance(m, Recording) for m in model.modules()) == 9


def test_registered_attention_in_bottleneck_and_alexnet(recording_attention):
    built, calls = recording_attention
    build_model("resnet50", in_channels=3, attention="test-recording")
    widths = [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3
    assert [m.channels for m in built] == [4 * w for w in widths]
    assert [m.bridge_channels for m in built] == [[w, w] for w in widths]

    built.clear()
    model = build_model("alexnet", in_channels=1, attention="test-recording").eval()
    # only the last three conv units get the attention; its bridge is the unit's input
    assert [(m.channels, m.bridge_channels) for m in built] == [(192, [128]), (192, [192]), (128, [192])]
    with torch.no_grad():
        model(torch.randn(2, 1, 16, 16))
    assert len(calls) == 3
    for module, shape, bridges in calls:
        assert shape[1] == module.channels and [b[1] for b in bridges] == module.bridge_channels
        assert bridges[0][2:] == shape[2:]


# ----------------------------------------------------------------------------- norm and conv registry

class MarkedNorm(nn.GroupNorm):
    def __init__(self, channels: int) -> None:
        super().__init__(1, channels)


def test_registered_norm_with_bn_shortcut(registry_cleanup):
    register_norm("test-gn-bn-shortcut", shortcut="bn")(MarkedNorm)
    registry_cleanup(NORMS, "test-gn-bn-shortcut")
    model = build_model("resnet20", norm="test-gn-bn-shortcut")
    shortcuts = [b.shortcut for stage in model.stages for b in stage if isinstance(b.shortcut, nn.Sequential)]
    assert len(shortcuts) == 2
    assert all(type(s[1]) is nn.BatchNorm2d for s in shortcuts)
    assert isinstance(model.stem[1], MarkedNorm)
    for stage in model.stages:
        for block in stage:
            assert isinstance(block.bn1, MarkedNorm) and isinstance(block.bn2, MarkedNorm)
    # the only BatchNorm2d layers are those two shortcut norms
    assert sum(type(m) is nn.BatchNorm2d for m in model.modules()) == 2
    model(torch.randn(2, 3, 16, 16))


def test_registered_norm_default_shortcut_is_itself(registry_cleanup):
    register_norm("test-gn")(MarkedNorm)
    registry_cleanup(NORMS, "test-gn")
    model = build_model("resnet20", norm="test-gn")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, MarkedNorm) for m in model.modules()) == 1 + 18 + 2
    alex = build_model("alexnet", norm="test-gn")
    assert sum(isinstance(m, MarkedNorm) for m in alex.modules()) == 5


class MarkedConv(nn.Conv2d):
    pass


@pytest.mark.parametrize("stem,shortcut", [(False, False), (True, True)])
def test_registered_conv_stem_and_shortcut_flags(registry_cleanup, stem, shortcut):
    name = f"test-conv-{stem}-{shortcut}"

    @register_conv(name, stem=stem, shortcut=shortcut)
    def factory(cin, cout, kernel_size, stride=1, padding=0, bias=False):
        return MarkedConv(cin, cout, kernel_size, stride, padding, bias=bias)

    registry_cleanup(CONVS, name)
    model = build_model("resnet20", conv=name)
    assert isinstance(model.stem[0], MarkedConv) == stem
    for stage in model.stages:
        for block in stage:
            assert isinstance(block.conv1, MarkedConv) and isinstance(block.conv2, MarkedConv)
            if isinstance(block.shortcut, nn.Sequential):
                assert isinstance(block.shortcut[0], MarkedConv) == shortcut
    alex = build_model("alexnet", conv=name)
    units = [m for m in alex.features if hasattr(m, "conv")]
    assert [isinstance(u.conv, MarkedConv) for u in units] == [False, False, True, True, True]


# ----------------------------------------------------------------------------- width and memory format

def test_width_mult_scales_widths():
    half = build_model("resnet20", in_channels=1, width_mult=0.5)
    assert half.stem[0].out_channels == 8 and half.fc.in_features == 32
    assert [stage[0].conv2.out_channels for stage in half.stages] == [8, 16, 32]
    assert count_parameters(half) == cifar_resnet_params(3, 1, 10, widths=(8, 16, 32))
    double = build_model("resnet20", width_mult=2)
    assert double.fc.in_features == 128
    alex = build_model("alexnet", width_mult=0.5)
    units = [m for m in alex.features if hasattr(m, "conv")]
    assert [u.conv.out_channels for u in units] == [24, 64, 96, 96, 64]
    assert alex.classifier[1].in_features == 4 * 64
    with pytest.raises(ValueError, match="width_mult"):
        build_model("resnet20", width_mult=0)


@pytest.mark.parametrize("name", ["resnet20", "alexnet"])
def test_channels_last_forward_equals_contiguous(name):
    torch.manual_seed(0)
    model = build_model(name, in_channels=3).eval()
    # non-trivial BN statistics, so that eval-mode BN is not the identity
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(4, 3, 32, 32)
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
        out = cl_model(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(ref, out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [27, 28])
def test_subsampled_conv_is_the_strided_1x1_conv(size):
    """Forward and gradients equal to nn.Conv2d's, in float64, for odd and even sizes."""
    torch.manual_seed(0)
    reference = nn.Conv2d(4, 8, 1, stride=2).double()
    subsampled = CONVS["conv"].factory(4, 8, 1, 2, 0).double()
    assert isinstance(subsampled, SubsampledConv2d)
    subsampled.load_state_dict(reference.state_dict())
    x = torch.randn(3, 4, size, size, dtype=torch.float64, requires_grad=True)
    grads = [torch.autograd.grad(conv(x).square().sum(), [x, conv.weight, conv.bias])
             for conv in (reference, subsampled)]
    torch.testing.assert_close(subsampled(x), reference(x), rtol=0, atol=1e-12)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_only_narrow_strided_1x1_convs_are_subsampled():
    make = CONVS["conv"].factory
    assert type(make(8, 16, 1, 2, 0)) is nn.Conv2d
    assert type(make(4, 8, 1, 1, 0)) is nn.Conv2d
    assert type(make(4, 8, 3, 2, 1)) is nn.Conv2d
    assert type(build_model("resnet20", in_channels=1, width_mult=0.25).stages[1][0].shortcut[0]) is SubsampledConv2d


def test_narrow_resnet_trains_in_channels_last():
    """The x0.25 ResNet-20 (4 channels) once crashed the process in oneDNN's strided 1x1 backward
    (SubsampledConv2d); a subprocess, so that a crash fails this test instead of the test run."""
    script = (
        "import torch\n"
        "from attnlib.models import build_model\n"
        "torch.manual_seed(0); torch.set_num_threads(1)\n"
        "model = build_model('resnet20', in_channels=1, width_mult=0.25).to(memory_format=torch.channels_last)\n"
        "for _ in range(5):\n"
        "    x = torch.randn(32, 1, 28, 28).to(memory_format=torch.channels_last)\n"
        "    model(x).square().mean().backward()\n"
        "print('trained')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "trained" in done.stdout, done.stderr[-2000:]
