"""attnlib.layers.ghost: normalisation over small groups of a training batch, the setting of
MABN's ImageNet results (small normalisation batch, regular SGD batch)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from attnlib.layers import GhostNorm, IEBN2d, MABN2d
from attnlib.models import build_model
from conftest import assert_same_values_and_gradients


def test_each_group_is_normalised_with_its_own_statistics_float64():
    bn = nn.BatchNorm2d(3).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2), bn.bias.normal_()
    x = (torch.randn(8, 3, 5, 5, dtype=torch.float64) * 3 + 1).requires_grad_()
    y = GhostNorm(bn, 2).train()(x)
    groups = x.view(4, 2, 3, 5, 5)
    mean, var = groups.mean((1, 3, 4), keepdim=True), groups.var((1, 3, 4), unbiased=False, keepdim=True)
    expected = ((groups - mean) / torch.sqrt(var + bn.eps)).view_as(x) * bn.weight.view(1, -1, 1, 1) \
        + bn.bias.view(1, -1, 1, 1)
    assert_same_values_and_gradients(y, expected, {"x": x, "weight": bn.weight, "bias": bn.bias})
    per_group = torch.cat([nn.functional.batch_norm(g, None, None, training=True) for g in x.split(2)])
    assert not torch.allclose(per_group, nn.functional.batch_norm(x, None, None, training=True))  # groups matter


def test_running_statistics_take_one_update_per_group_and_eval_uses_them():
    bn, ghost = nn.BatchNorm2d(3), GhostNorm(nn.BatchNorm2d(3), 4)
    x = torch.randn(12, 3, 4, 4) * 2 + 1
    ghost.train()(x)
    for group in x.split(4):
        bn.train()(group)
    assert torch.allclose(ghost.norm.running_mean, bn.running_mean) and torch.allclose(ghost.norm.running_var,
                                                                                     bn.running_var)
    assert int(ghost.norm.num_batches_tracked) == 3
    assert torch.equal(ghost.eval()(x), bn.eval()(x))  # eval: the whole batch, running statistics


def test_mabn_takes_every_group_as_one_of_its_steps():
    """MABN over groups of 2 in a batch of 8 is MABN2d at batch 2 fed the four groups as four steps."""
    grouped = GhostNorm(MABN2d(3, B=2, real_B=4, warmup_iters=0), 2)
    alone = copy.deepcopy(grouped.norm)
    x = torch.randn(8, 3, 4, 4, dtype=torch.float64) + 0.5
    grouped.double().train(), alone.double().train()
    y = grouped(x)
    expected = torch.cat([alone(g) for g in x.split(2)])
    assert torch.equal(y, expected)
    assert int(grouped.norm.iters) == int(alone.iters) == 4
    assert torch.equal(grouped.norm.buffer_x2, alone.buffer_x2)


def test_a_batch_that_does_not_split_into_groups_is_refused():
    with pytest.raises(ValueError, match="a training batch of 6 images does not split into groups of norm_batch=4"):
        GhostNorm(nn.BatchNorm2d(2), 4).train()(torch.randn(6, 2, 3, 3))
    with pytest.raises(ValueError, match="norm_batch must be a whole number of images >= 1, got 0"):
        GhostNorm(nn.BatchNorm2d(2), 0)


@pytest.mark.parametrize("norm, kind", [(("bn", {"norm_batch": 2}), nn.BatchNorm2d),
                                        (("iebn", {"norm_batch": 2}), IEBN2d),
                                        (("mabn", {"norm_batch": 2}), MABN2d)],
                         ids=["bn", "iebn", "mabn"])
def test_every_norm_of_the_network_normalises_groups(norm, kind):
    """Every norm of a ResNet-20 (shortcuts included: IEBN's plain BN ones too) works on groups,
    and a MABN built for groups of 2 is a MABN of B = 2."""
    model = build_model("resnet20", in_channels=1, width_mult=0.5, norm=norm,
                        conv="cenconv" if norm[0] == "mabn" else "conv")
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, IEBN2d, MABN2d))]
    ghosts = [m for m in model.modules() if isinstance(m, GhostNorm)]
    assert len(ghosts) == len(norms) == 21 and all(g.norm_batch == 2 for g in ghosts)
    assert all(isinstance(g.norm, kind) or (kind is IEBN2d and type(g.norm) is nn.BatchNorm2d) for g in ghosts)
    if kind is MABN2d:
        assert all(g.norm.B == 2 and g.norm.window == 16 for g in ghosts)
    out = model.train()(torch.randn(8, 1, 12, 12))
    out.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_mabn_with_groups_refuses_another_b():
    with pytest.raises(ValueError, match="with norm_batch=2 it is 2, not 4; leave B out"):
        build_model("resnet20", norm=("mabn", {"norm_batch": 2, "B": 4}))
