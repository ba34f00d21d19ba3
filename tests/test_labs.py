"""Course labs: the self-checks' messages, and the labs generated from every chapter with otter-grader.

The grading tests run the solution and the student notebook of every chapter through the
autograder on the smoke profile (synthetic images): the solution scores full marks, the
student notebook as generated scores zero with the checks' messages, and no solution line
appears in the student notebook.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
import torch

from attnlib import book
from attnlib.labs import build, checks

CHAPTERS = book.source_notebooks()
HAS_OTTER = (Path(sys.executable).parent / "otter").exists()
needs_otter = pytest.mark.skipif(not HAS_OTTER, reason="otter-grader is not installed (pip install -e .[labs])")


# --- the self-checks -----------------------------------------------------------------------

def batch_norm(x, gamma, beta, eps=1e-5):
    mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)


def test_a_correct_function_passes_and_says_so(capsys):
    checks.check_batch_norm(batch_norm)
    assert "✓ batch_norm matches nn.BatchNorm2d" in capsys.readouterr().out


def test_a_known_mistake_is_named():
    def unbiased(x, gamma, beta, eps=1e-5):
        mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), keepdim=True)
        return (x - mean) / torch.sqrt(var + eps) * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)

    with pytest.raises(checks.LabCheckError, match="unbiased variance") as err:
        checks.check_batch_norm(unbiased)
    assert "largest difference" in str(err.value) and "at index" in str(err.value)


def test_a_wrong_shape_is_reported_with_both_shapes():
    with pytest.raises(checks.LabCheckError, match=r"returned shape \(\d+, \d+\) .* gives \(\d+, \d+, \d+, \d+\)"):
        checks.check_batch_norm(lambda x, gamma, beta, eps: batch_norm(x, gamma, beta, eps).mean((2, 3)))


def test_a_stub_is_told_to_return_a_tensor():
    def stub(x, gamma, beta, eps=1e-5):
        ...

    with pytest.raises(checks.LabCheckError, match="returned None .* stub"):
        checks.check_batch_norm(stub)


def test_an_unknown_error_points_to_the_equation():
    with pytest.raises(checks.LabCheckError, match="Look at the Math section"):
        checks.check_batch_norm(lambda x, gamma, beta, eps: batch_norm(x, gamma, beta, eps) + 0.1)


def test_a_crash_names_the_input():
    with pytest.raises(checks.LabCheckError, match="raised ZeroDivisionError: .* for random input"):
        checks.check_batch_norm(lambda x, gamma, beta, eps: 1 / 0)


def test_the_checks_leave_the_callers_random_state_alone():
    state = torch.get_rng_state()
    checks.check_batch_norm(batch_norm)
    assert torch.equal(state, torch.get_rng_state())


def test_nam_weights_of_all_zero_scales_are_a_named_edge_case():
    def naive(x, gamma, beta, eps=1e-5):
        w = gamma.abs() / gamma.abs().sum()
        return torch.sigmoid(w.view(1, -1, 1, 1) * batch_norm(x, gamma, beta, eps)) * x

    with pytest.raises(checks.LabCheckError, match="all γ zero .* A division by zero"):
        checks.check_nam_channel(naive)


def history(loss, acc):
    return {"train_loss": loss, "test_acc": acc}


@pytest.mark.parametrize("results, message", [
    (..., "results is Ellipsis: run your experiment"),
    ({"a": history([2.0, 1.0], [0.5, 0.6])}, r"no run for \['b'\]"),
    ({"a": history([2.0, 2.5], [0.5, 0.6]), "b": history([2.0, 1.0], [0.5, 0.6])}, "a: the training loss did not fall"),
    ({"a": history([2.0, 1.0], [50, 60]), "b": history([2.0, 1.0], [0.5, 0.6])}, "not fractions"),
    ({"a": history([2.0, 1.0], [0.1, 0.1]), "b": history([2.0, 1.0], [0.1, 0.1])}, "no run is above chance"),
])
def test_implausible_results_are_explained(results, message):
    with pytest.raises(checks.LabCheckError, match=message):
        checks.check_runs(results, ["a", "b"], num_classes=10)


def test_the_answer_must_agree_with_the_students_own_numbers(capsys):
    results = {"a": history([2.0, 1.0], [0.5, 0.6]), "b": history([2.0, 1.0], [0.5, 0.7])}
    checks.check_runs(results, ["a", "b"], num_classes=10, answer="b")
    assert "answer 'b' agrees" in capsys.readouterr().out
    with pytest.raises(checks.LabCheckError, match="highest final test accuracy is 'b'"):
        checks.check_runs(results, ["a", "b"], num_classes=10, answer="a")


# --- stubbing a solution ---------------------------------------------------------------------

@needs_otter
def test_a_solution_keeps_signatures_docstrings_and_assigned_names():
    from otter.assign.solutions import replace_solutions  # the stub otter makes from the markers

    solution = 'def f(x):\n    """Doc."""\n    y = x + 1\n    return y\n\n\nresult = f(2)\nprint(result)\n'
    marked = build.mark_solution(solution)
    stub = "\n".join(replace_solutions(marked.splitlines(), "python"))
    assert 'def f(x):\n    """Doc."""\n    ...' in stub
    assert "result = ..." in stub
    assert "x + 1" not in stub and "print" not in stub
    namespace: dict = {}
    exec(compile(marked, "solution", "exec"), namespace)  # the marked solution still runs
    assert namespace["result"] == 3
