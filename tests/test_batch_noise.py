"""attnlib.layers.batch_noise: BatchNorm and IEBN normalising with batch statistics wrong by
seeded random amounts in training (the book's noise attack for IEBN's claim), untouched in eval."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attnlib.layers import IEBN2d, NoisyBatchNorm2d, NoisyIEBN2d
from attnlib.layers.iebn import reference_iebn
from attnlib.models import build_model
from attnlib.train import recompute_bn_statistics
from booktools.overview import _plain_of
from conftest import assert_same_values_and_gradients

STRENGTH = 0.3


def _perturbed_statistics(x: torch.Tensor, eps: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """mu~ and sigma~ of the module docstring, with e1 then e2 drawn as the layer draws them."""
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    sigma = torch.sqrt(var + eps)
    generator = torch.Generator().manual_seed(seed)
    e1 = torch.randn(x.shape[1], generator=generator).double()
    e2 = torch.randn(x.shape[1], generator=generator).double()
    return mean + STRENGTH * sigma * e1, sigma * torch.exp(STRENGTH * e2)


def _randomised(norm: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in norm.parameters():
            p.uniform_(-1.5, 1.5)
    return norm.double().train()


def _input() -> torch.Tensor:
    return (torch.randn(6, 4, 5, 5, dtype=torch.float64) * 2 + 1).requires_grad_()


def test_noisy_bn_normalises_with_the_perturbed_statistics_float64():
    bn, x = _randomised(NoisyBatchNorm2d(4, noise=STRENGTH)), _input()
    torch.manual_seed(7)
    y = bn(x)
    mean, sigma = _perturbed_statistics(x, bn.eps, seed=7)
    expected = (x - mean[:, None, None]) / sigma[:, None, None] * bn.weight[:, None, None] + bn.bias[:, None, None]
    assert_same_values_and_gradients(y, expected, {"x": x, "weight": bn.weight, "bias": bn.bias})


def test_noisy_iebn_is_the_reference_iebn_with_the_perturbed_statistics_float64():
    norm, x = _randomised(NoisyIEBN2d(4, noise=STRENGTH)), _input()
    torch.manual_seed(7)
    y = norm(x)
    mean, sigma = _perturbed_statistics(x, norm.eps, seed=7)
    # reference_iebn normalises with sqrt(var + eps): pass sigma~^2 - eps as the variance
    expected = reference_iebn(x, norm.weight, norm.bias, norm.weight_readjust, norm.bias_readjust, norm.eps,
                              running_mean=mean, running_var=sigma ** 2 - norm.eps)
    assert_same_values_and_gradients(y, expected, {"x": x, "weight": norm.weight, "bias": norm.bias,
                                                   "weight_readjust": norm.weight_readjust,
                                                   "bias_readjust": norm.bias_readjust})


@pytest.mark.parametrize("noisy, plain", [(NoisyBatchNorm2d, nn.BatchNorm2d), (NoisyIEBN2d, IEBN2d)])
def test_running_statistics_are_the_true_ones_and_eval_is_untouched(noisy, plain):
    torch.manual_seed(0)
    attacked, clean = noisy(4, noise=STRENGTH).double(), plain(4).double()
    clean.load_state_dict(attacked.state_dict())
    for _ in range(3):
        x = torch.randn(8, 4, 5, 5, dtype=torch.float64) * 3 + 2
        assert not torch.allclose(attacked.train()(x), clean.train()(x))  # the attack acts in training
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(attacked, name), getattr(clean, name), rtol=1e-12, atol=1e-12)
    x = torch.randn(8, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(attacked.eval()(x), clean.eval()(x), rtol=1e-12, atol=1e-12)


def test_the_noise_is_drawn_afresh_each_step_from_the_seeded_stream():
    x = torch.randn(8, 4, 5, 5)
    norm = NoisyBatchNorm2d(4, noise=STRENGTH).train()
    torch.manual_seed(1)
    first, second = norm(x), norm(x)
    torch.manual_seed(1)
    assert torch.equal(norm(x), first) and not torch.allclose(first, second)


def test_the_factories_attack_every_norm_shortcuts_included_and_zero_is_the_plain_layer():
    for norm, layer in (("bn", NoisyBatchNorm2d), ("iebn", NoisyIEBN2d)):
        model = build_model("resnet20", in_channels=1, norm=(norm, {"noise": STRENGTH}))
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        assert all(isinstance(m, (NoisyBatchNorm2d, NoisyIEBN2d)) and m.noise == STRENGTH for m in norms)
        assert sum(isinstance(m, layer) for m in norms) >= 19
    plain = build_model("resnet20", in_channels=1, norm=("iebn", {"noise": 0.0}))
    assert not any(isinstance(m, (NoisyBatchNorm2d, NoisyIEBN2d)) for m in plain.modules())


@pytest.mark.parametrize("noise", [-0.1, math.inf, math.nan, True, "0.2"])
def test_a_bad_strength_is_refused(noise):
    for layer in (NoisyBatchNorm2d, NoisyIEBN2d):
        with pytest.raises(ValueError, match="finite number >= 0"):
            layer(4, noise=noise)


def test_a_method_under_the_attack_is_compared_with_bn_under_the_same_attack():
    network = {"model": "resnet20", "norm": ["iebn", {"noise": STRENGTH, "norm_batch": 16}], "conv": "conv",
               "attention": "none", "callbacks": []}
    assert _plain_of(network)["norm"] == ["bn", {"noise": STRENGTH, "norm_batch": 16}]


def test_the_attack_reaches_later_running_statistics_through_their_inputs_and_recomputing_pauses_it():
    """Each layer's running statistics are its true batch statistics, but of an input that the
    attacked layers before it disturbed: they carry the attack into eval mode until
    ``recompute_bn_statistics`` measures them again, with the attack paused."""
    torch.manual_seed(0)
    attacked = build_model("resnet20", in_channels=1, norm=("bn", {"noise": STRENGTH}))
    clean = build_model("resnet20", in_channels=1)
    clean.load_state_dict(attacked.state_dict())
    batches = [(torch.randn(16, 1, 16, 16), None) for _ in range(2)]
    for x, _ in batches:
        attacked.train()(x), clean.train()(x)
    norms = {name: [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
             for name, model in (("attacked", attacked), ("clean", clean))}
    stem, later = list(zip(norms["attacked"], norms["clean"]))[:2]
    torch.testing.assert_close(stem[0].running_var, stem[1].running_var)  # its input is the image's convolution
    assert not torch.allclose(later[0].running_var, later[1].running_var, rtol=1e-3)
    recompute_bn_statistics(attacked, batches), recompute_bn_statistics(clean, batches)
    for ours, theirs in zip(norms["attacked"], norms["clean"]):
        torch.testing.assert_close(ours.running_mean, theirs.running_mean, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-6, atol=1e-7)
    assert all(norm.noise == STRENGTH for norm in norms["attacked"]), "the attack is back after recomputing"
