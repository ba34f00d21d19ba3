"""attnlib.variants: FLOPs counted for a variant's network, and the layer that defines it."""
from __future__ import annotations

from dataclasses import replace

import pytest
from torch import nn

from attnlib.variants import Variant, flops_per_image, method_of


@pytest.mark.parametrize("cin,cout,k,padding", [(1, 4, 3, 1), (2, 5, 1, 0), (1, 3, 5, 2)])
def test_flops_of_a_single_conv(synthetic, cin, cout, k, padding):
    data = synthetic if cin == 1 else replace(synthetic, train_images=synthetic.train_images.repeat(1, cin, 1, 1))
    assert data.in_channels == cin
    model = nn.Conv2d(cin, cout, k, padding=padding, bias=False)
    h = w = 16  # 'same' padding
    assert flops_per_image(model, data) == 2 * cout * cin * k * k * h * w


def test_flops_restores_training_mode(synthetic):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2)).train()
    assert flops_per_image(model, synthetic) == 2 * 2 * 1 * 9 * 14 * 14
    assert model.training
    model.eval()
    flops_per_image(model, synthetic)
    assert not model.training


def test_the_method_is_the_layer_that_defines_the_network():
    assert Variant("x").method == "plain" and Variant("x", model="alexnet").method == "alexnet"
    assert Variant("x", norm="iebn", attention="se").method == "se"  # the attention first
    assert Variant("x", norm="mabn", conv="cenconv").method == "mabn"  # then the norm
    assert Variant("x", conv=("dynamic", {"num_experts": 2})).method == "dynamic"
    assert Variant("x", norm="syncbn").method == "plain"  # plain BN, synchronised over processes
    assert method_of({"model": "resnet20", "norm": "bn", "conv": "conv", "attention": ["nam", {"spatial": True}]}) \
        == "nam"  # a record's spec, as JSON stores it


def test_a_wrong_layer_or_option_fails_when_the_variant_is_made():
    with pytest.raises(ValueError, match="unknown norm 'mabm'; registered norms: bn, iebn, mabn"):
        Variant("x", norm="mabm")
    with pytest.raises(ValueError, match="norm 'mabn' has no option b; its options: eps, momentum, B, real_B"):
        Variant("x", norm=("mabn", {"b": 4}))
