"""attnlib.significance: the exact permutation test and the smallest p-value a number of seeds allows."""
from __future__ import annotations

import pytest

from attnlib.significance import accuracy_standard_error, permutation_p_value, smallest_p_value


def test_permutation_p_value_against_enumeration():
    # 3 vs 3, completely separated: only the observed split and its mirror are as extreme
    assert permutation_p_value([0.74, 0.741, 0.742], [0.735, 0.736, 0.7365]) == pytest.approx(2 / 20)
    # identical groups: every split is at least as extreme as a zero difference
    assert permutation_p_value([0.5, 0.6], [0.6, 0.5]) == 1.0
    # a direct count for a small unbalanced case: 1 vs 2 values, 3 splits
    a, b = [3.0], [1.0, 2.0]
    diffs = [abs(x - (6.0 - x) / 2) for x in (3.0, 1.0, 2.0)]
    assert permutation_p_value(a, b) == sum(d >= diffs[0] for d in diffs) / 3


def test_smallest_attainable_p_value():
    assert smallest_p_value(3, 3) == pytest.approx(0.1)
    assert smallest_p_value(5, 5) == pytest.approx(2 / 252)
    assert smallest_p_value(2, 3) == pytest.approx(1 / 10)
    # completely separated groups reach it, and no split does better
    separated = permutation_p_value([0.95, 0.951, 0.952, 0.953, 0.954], [0.93, 0.931, 0.932, 0.933, 0.934])
    assert separated == pytest.approx(smallest_p_value(5, 5)) and separated < 0.05


def test_accuracy_standard_error_is_the_spread_of_accuracies_on_random_test_sets():
    import torch
    assert accuracy_standard_error(0.94, 10_000) == pytest.approx(0.0023749, abs=1e-6)
    assert accuracy_standard_error(1.0, 100) == 0.0
    torch.manual_seed(0)  # 4,000 test sets of 2,500 images, each image right with probability 0.9
    accuracies = (torch.rand(4000, 2500, dtype=torch.float64) < 0.9).double().mean(1)
    assert accuracies.std().item() == pytest.approx(accuracy_standard_error(0.9, 2500), rel=0.05)
    with pytest.raises(ValueError, match="accuracy in"):
        accuracy_standard_error(94.0, 10_000)  # points, not a fraction
