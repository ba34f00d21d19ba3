"""Course labs: the self-checks' messages, and the labs generated from every chapter with otter-grader.

The grading tests grade a class of four for every chapter on the smoke profile (synthetic
images): the solution scores full marks, the student notebook as generated scores zero with
the checks' messages, a truncated and an empty notebook score zero with the reason; and no
solution line appears in the student notebook.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
import torch
import yaml

from attnlib.data import FASHION_MNIST_FILES
from attnlib.labs import checks
from booktools import book
from booktools.labs import build, gradebook, grading, solutions, teachers

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


def iebn(x, gamma, beta, w, b, eps=1e-5, dims=(0, 2, 3), eps_outside=False, gated_beta=False):
    """IEBN in training mode, or one of the usual mistakes in it."""
    mean, var = x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
    x_hat = (x - mean) / (var.sqrt() + eps if eps_outside else torch.sqrt(var + eps))
    gate = torch.sigmoid(w.view(1, -1, 1, 1) * x.mean((2, 3), keepdim=True) + b.view(1, -1, 1, 1))
    if gated_beta:
        return (x_hat * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)) * gate
    return x_hat * gamma.view(1, -1, 1, 1) * gate + beta.view(1, -1, 1, 1)


@pytest.mark.parametrize("mistake, message", [
    ({"dims": (2, 3)}, "statistics per image"), ({"dims": (0,)}, "statistics over the batch dimension only"),
    ({"eps_outside": True}, "ε outside the square root"), ({"gated_beta": True}, "a gated β"),
])
def test_the_common_iebn_mistakes_are_named(mistake: dict, message: str):
    checks.check_iebn(iebn)  # the right function passes
    with pytest.raises(checks.LabCheckError, match=f"Your output matches {message}"):
        checks.check_iebn(lambda x, gamma, beta, w, b, eps: iebn(x, gamma, beta, w, b, eps, **mistake))


def test_a_dynamic_kernel_with_its_channels_mixed_up_is_named():
    def dynamic_conv(x, pi, experts, biases, padding, mix_up=False):
        n, (_, c_out, c_in, kh, kw) = len(x), experts.shape
        kernel = torch.einsum("nk,koihw->noihw", pi, experts)
        if mix_up:
            kernel = kernel.transpose(1, 2).reshape(n, c_out, c_in, kh, kw)
        out = torch.nn.functional.conv2d(x.reshape(1, n * c_in, *x.shape[2:]), kernel.reshape(n * c_out, c_in, kh, kw),
                                         padding=padding, groups=n)
        return out.reshape(n, c_out, *out.shape[2:]) + (pi @ biases)[:, :, None, None]

    checks.check_dynamic_conv(dynamic_conv)
    with pytest.raises(checks.LabCheckError, match="input and output channels are mixed up"):
        checks.check_dynamic_conv(lambda *a, **kw: dynamic_conv(*a, **kw, mix_up=True))


def test_a_failed_check_shows_its_message_without_a_traceback_in_a_notebook():
    assert checks.LabCheckError("batch_norm differs")._render_traceback_() == ["✗ batch_norm differs"]


def history(loss, acc):
    return {"train_loss": loss, "test_acc": acc}


def seeded(*finals, start=2.0):
    """One label's runs over seeds: the final test accuracies given, losses that fall and differ."""
    return [history([start + i, 1.0 + i / 10], [0.2, acc]) for i, acc in enumerate(finals)]


@pytest.mark.parametrize("results, message", [
    (..., "results is Ellipsis: run your experiment"),
    ({"a": seeded(0.5, 0.6, 0.7)}, r"no run for \['b'\]"),
    ({"a": seeded(50, 60, 70), "b": seeded(0.5, 0.6, 0.7, start=3.0)}, "not fractions"),
    ({"a": seeded(0.1, 0.1, 0.1), "b": seeded(0.1, 0.1, 0.1, start=3.0)}, "no run is above chance"),
])
def test_implausible_results_are_explained(results, message):
    with pytest.raises(checks.LabCheckError, match=message):
        checks.check_seed_runs(results, ["a", "b"], num_classes=10, verdict=checks.TIE)


def test_the_verdict_names_the_label_ahead_in_every_seed(capsys):
    results = {"a": seeded(0.5, 0.6, 0.55), "b": seeded(0.6, 0.7, 0.65, start=3.0)}
    checks.check_seed_runs(results, ["a", "b"], num_classes=10, verdict="b")
    assert "verdict 'b' agrees" in capsys.readouterr().out
    with pytest.raises(checks.LabCheckError, match="'b' has the highest final test_acc in every seed"):
        checks.check_seed_runs(results, ["a", "b"], num_classes=10, verdict="a")
    with pytest.raises(checks.LabCheckError, match="'a' has the lowest"):
        checks.check_seed_runs(results, ["a", "b"], num_classes=10, verdict="b", highest=False)


def test_a_gap_that_one_seed_reverses_is_a_tie():
    results = {"a": seeded(0.5, 0.6, 0.75), "b": seeded(0.6, 0.7, 0.65, start=3.0)}
    checks.check_seed_runs(results, ["a", "b"], num_classes=10, verdict=checks.TIE)
    with pytest.raises(checks.LabCheckError, match="no label has the highest final test_acc in every seed"):
        checks.check_seed_runs(results, ["a", "b"], num_classes=10, verdict="b")


def test_the_verdict_can_be_on_another_metric_among_some_labels():
    results = {"plain": seeded(0.8, 0.8, 0.8, start=4.0), "a": seeded(0.5, 0.6, 0.55), "b": seeded(0.6, 0.7, 0.65, start=3.0)}
    for run, gamma in zip(results["a"] + results["b"], [0.9, 0.9, 0.9, 0.99, 0.99, 0.99]):
        run["gamma"] = gamma
    checks.check_seed_runs(results, ["plain", "a", "b"], 10, "a", among=["a", "b"], metric="gamma", highest=False)


@pytest.mark.parametrize("results, message", [
    ({"a": history([2.0, 1.0], [0.5, 0.6]), "b": seeded(0.5, 0.6, 0.7)}, r"results\['a'\] should be a list of 3 histories"),
    ({"a": seeded(0.5, 0.6), "b": seeded(0.5, 0.6, 0.7)}, "of length 2"),
    ({"a": [history([2.0, 1.0], [0.2, 0.5])] * 3, "b": seeded(0.5, 0.6, 0.7, start=3.0)},
     "seed 0 and seed 1 trained identically: call torch.manual_seed"),
    ({"a": seeded(0.5, 0.6, 0.7), "b": seeded(0.5, 0.6, 0.7)}, "'a' and 'b' trained identically at seed 0: .* the gate"),
    ({"a": seeded(0.5, 0.6, 0.7),
      "b": [history([2.0, 2.5], [0.2, 0.5]), history([2.1, 2.2], [0.2, 0.6]), history([2.2, 2.0], [0.3, 0.7])]},
     r"b: the training loss did not fall on average over the seeds \(seed 0: 2.000 -> 2.500, seed 1"),
])
def test_seed_runs_that_cannot_answer_are_explained(results, message):
    with pytest.raises(checks.LabCheckError, match=message):
        checks.check_seed_runs(results, ["a", "b"], num_classes=10, verdict="b", changed="the gate's start")


def test_one_seed_whose_loss_did_not_fall_is_accepted_when_the_label_learns_on_average():
    """A short run at a small learning rate may end one seed's second epoch at a higher mean
    loss than its first (seen on the smoke profile's synthetic data at lr 0.01)."""
    results = {"a": seeded(0.5, 0.6, 0.7), "b": [history([2.31, 2.32], [0.1, 0.55])] + seeded(0.65, 0.75, start=3.0)}
    checks.check_seed_runs(results, ["a", "b"], num_classes=10, verdict="b")


def test_a_dynamic_run_that_was_never_annealed_is_named():
    results = {"DY": [{"final_temperature": 1.0}, {"final_temperature": 1.0}]}
    checks.check_final_temperature(results, ["DY"])
    results["DY"][1]["final_temperature"] = 30.0
    with pytest.raises(checks.LabCheckError, match="DY, seed 1 ended at temperature 30, not 1: the annealing never ran"):
        checks.check_final_temperature(results, ["DY"])


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


def _chapter(*cells) -> nbformat.NotebookNode:
    question = nbformat.v4.new_markdown_cell("**Exercise 1**", metadata={"lab": {"question": "q1", "points": 1}})
    return nbformat.v4.new_notebook(cells=[*cells, nbformat.v4.new_markdown_cell("## Implementation"),
                                           nbformat.v4.new_code_cell("hidden = 1"),
                                           nbformat.v4.new_markdown_cell("## Exercises"), question])


def test_a_lab_keeps_the_setup_and_the_exercises_without_the_claims():
    claim = nbformat.v4.new_code_cell("claim(setup, True, 'x')", metadata={"tags": ["claim", "remove-cell"]})
    kept = build.lab_cells(_chapter(nbformat.v4.new_code_cell("setup = 1"), claim))
    assert [c.source for c in kept] == ["setup = 1", "## Exercises", "**Exercise 1**"]


def test_a_glued_value_before_the_implementation_is_refused_by_name():
    glued = nbformat.v4.new_markdown_cell("**What it shows.** {glue:md}`reading`.\nMore.")
    with pytest.raises(ValueError, match=r"cite glued values.*\*\*What it shows\.\*\* \{glue:md\}`reading`\."):
        build.lab_cells(_chapter(glued))


def test_a_lab_leaves_out_the_book_only_cells_and_refuses_to_show_a_reference():
    shown = nbformat.v4.new_code_cell("plots.show_source(reference_gate, other)")
    with pytest.raises(ValueError, match=r"show a reference implementation.*show_source\(reference_gate"):
        build.lab_cells(_chapter(shown))
    intro = nbformat.v4.new_markdown_cell("The reference:", metadata={"lab": {"role": "book"}})
    shown.metadata["lab"] = {"role": "book"}
    kept = build.lab_cells(_chapter(nbformat.v4.new_code_cell("setup = 1"), intro, shown))
    assert [c.source for c in kept] == ["setup = 1", "## Exercises", "**Exercise 1**"]


# --- the labs -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def labs(tmp_path_factory) -> dict[str, dict[str, Path]]:
    if not HAS_OTTER:
        pytest.skip("otter-grader is not installed (pip install -e .[labs])")
    root = tmp_path_factory.mktemp("labs")
    return {src.stem: build.build_lab(src, root / "student", root / "build") for src in CHAPTERS}


def solution_lines(source: Path) -> list[str]:
    """Every line of a chapter's solutions that a student must write (longer than 15 characters),
    but for lines that the lab's other cells hold too (e.g. `torch.manual_seed(0)`)."""
    cells = build.lab_cells(nbformat.read(source, as_version=4))
    solutions = [c for c in cells if c.metadata.get("lab", {}).get("role") == "solution"]
    given = {line.strip() for c in cells if c not in solutions for line in c.source.splitlines()}
    lines = []
    for cell in solutions:
        if cell.cell_type == "markdown":
            lines += cell.source.splitlines()
            continue
        inside = False
        for line in build.mark_solution(cell.source).splitlines():
            if line.strip().startswith("# BEGIN SOLUTION"):
                inside = True
            elif line.strip() == "# END SOLUTION":
                inside = False
            elif inside:
                lines.append(line)
    return [line.strip() for line in lines if len(line.strip()) > 15 and line.strip() not in given]


@needs_otter
@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_the_committed_student_notebook_is_current(labs, source: Path):
    committed = build.STUDENT_DIR / f"{source.stem}.ipynb"
    assert committed.exists(), f"{committed} is missing: run `make labs`"
    assert committed.read_text() == labs[source.stem]["student"].read_text(), \
        f"{committed.relative_to(build.REPO)} is stale: run `make labs` and commit book/labs/"


@needs_otter
@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_no_solution_text_is_in_the_student_notebook(labs, source: Path):
    student = labs[source.stem]["student"].read_text()
    nb = nbformat.read(labs[source.stem]["student"], as_version=4)
    assert nb.cells[0].cell_type == "markdown" and '"google.colab" in sys.modules' in \
        next(c for c in nb.cells if c.cell_type == "code").source, "the first code cell must install on Colab"
    assert not [c for c in nb.cells if c.cell_type == "code" and c.outputs], "outputs must be cleared"
    leaked = [line for line in solution_lines(source) if line in student]
    assert solution_lines(source), "the chapter has no solution lines"
    assert not leaked, f"solution text in the student notebook: {leaked}"


def test_the_teacher_gets_plain_solution_notebooks_and_a_rubric(tmp_path: Path):
    written = solutions.build_teacher(CHAPTERS, tmp_path)
    assert {p.name for p in written} == {f"{s.stem}-solution.ipynb" for s in CHAPTERS} | {"rubric.md"}
    rubric = (tmp_path / "rubric.md").read_text()
    for source in CHAPTERS:
        nb = nbformat.read(tmp_path / f"{source.stem}-solution.ipynb", as_version=4)
        text = "\n".join(c.source for c in nb.cells)
        missing = [line for line in solution_lines(source) if line not in text and "{" not in line
                   and not line.startswith(":class:")]
        assert not missing, f"{source.stem}: the teacher's notebook lacks {missing[:3]}"
        markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
        assert not [m for m in markdown if re.search(r"`{3,}\{|\{footcite|\{glue", m)], "raw MyST left"
        assert "**Model answer.**" in text and not [c for c in nb.cells if c.cell_type == "raw"]
        assert not [c for c in nb.cells if c.metadata.get("lab", {}).get("role") == "test" or "lab" in c.metadata]
        items = teachers.exercises(source)
        assert f"## {source.stem}" in rubric and f"Total: {sum(i['points'] for i in items)} points." in rubric
        assert all(f"### {i['title']} ({i['points']} points, by hand)" in rubric for i in items if i["manual"])
    assert rubric.count("**Model answer.**") == len(CHAPTERS)


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_the_autograder_names_what_a_submission_needs_and_carries_the_data(labs, source: Path):
    """Grading elsewhere (otter's Docker image, a grading service) installs torch, torchvision and
    attnlib from the book's repository, and finds Fashion-MNIST in the zip."""
    with zipfile.ZipFile(labs[source.stem]["autograder"]) as archive:
        environment = yaml.safe_load(archive.read("environment.yml"))
        pip = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
        repository = yaml.safe_load((book.REPO / "_config.yml").read_text())["repository"]["url"]
        assert {"torch", "torchvision"} <= set(pip) and any(
            p.startswith("attnlib @ git+" + repository) for p in pip), pip
        for name, sha in FASHION_MNIST_FILES.items():
            content = gzip.decompress(archive.read(f"files/data/fashion-mnist/{name}"))
            assert hashlib.sha256(content).hexdigest() == sha, name


FRESH_ENVIRONMENT = os.environ.get("ATTNLIB_TEST_FRESH_ENV") == "1"


@needs_otter
@pytest.mark.slow
@pytest.mark.skipif(not FRESH_ENVIRONMENT, reason="installs otter and torch into a new virtual environment (minutes, "
                    "gigabytes): `make test-autograder` (ATTNLIB_TEST_FRESH_ENV=1)")
def test_the_zipped_autograder_grades_a_submission_in_a_fresh_environment(labs, tmp_path: Path):
    """The zip and the packages its environment names are all a grading machine needs: a new virtual
    environment (no access to this checkout's), the autograder unpacked elsewhere, the solution on
    the labs' default profile (quick: the Fashion-MNIST the zip carries) graded to full marks.

    Two substitutions, both for this offline machine: attnlib is installed from this checkout
    instead of the repository URL the zip names, and torch is ``$ATTNLIB_TEST_TORCH`` (default
    ``torch``; here the CPU wheel, ``torch==2.13.0+cpu``, whose size suits a test). torchvision is
    left out with ``--no-deps``: grading loads Fashion-MNIST from the zip and checks it with
    attnlib's own checksums, so nothing in a lab imports it (a CPU torch beside PyPI's CUDA
    torchvision would not import)."""
    paths = labs["01_iebn"]
    with zipfile.ZipFile(paths["autograder"]) as archive:
        environment = yaml.safe_load(archive.read("environment.yml"))
    named = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    otter = next(p for p in named if p.startswith("otter-grader"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    clean = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "ATTNLIB_DATA")}
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, otter, os.environ.get("ATTNLIB_TEST_TORCH", "torch"), "numpy", "matplotlib", "tqdm"],
                   check=True, env=clean)
    subprocess.run([*pip, "--no-deps", str(book.REPO)], check=True, env=clean)
    where = tmp_path / "elsewhere"
    where.mkdir()
    submission = grading.set_parameter(paths["solution"], where / "ada.ipynb", profile="quick")
    result = subprocess.run([str(venv / "bin" / "otter"), "run", "--no-logo", "-a", str(paths["autograder"]),
                             "-o", str(where), str(submission)], cwd=where, env=clean, capture_output=True, text=True)
    results = grading.read_results(where)
    assert results is not None, result.stdout[-3000:] + result.stderr[-3000:]
    points, maximum = grading.score(results)
    assert maximum >= 7 and points == maximum, results


def _class_folder(paths: dict[str, Path], folder: Path) -> Path:
    """A class of four: the solution (ada), the untouched student notebook (bob), a truncated
    copy of the solution (cy) and an empty file (dee), all on the smoke profile."""
    folder.mkdir()
    grading.set_parameter(paths["solution"], folder / "ada.ipynb", profile="smoke")
    grading.set_parameter(paths["student"], folder / "bob.ipynb", profile="smoke")
    text = (folder / "ada.ipynb").read_text()
    (folder / "cy.ipynb").write_text(text[: len(text) // 2])
    (folder / "dee.ipynb").write_text("")
    return folder


@needs_otter
@pytest.mark.slow
@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_class_grading_gives_the_solution_full_marks_the_stubs_zero_and_broken_files_a_reason(
        labs, source: Path, tmp_path: Path):
    paths = labs[source.stem]
    # The solution trains for minutes on a quiet machine (chapter 3's: six ResNet-20 runs); on a
    # loaded host the whole class can take three times as long, and a timeout would read as a
    # solution that scores zero. The timeout itself is tested below.
    results = gradebook.grade_class(_class_folder(paths, tmp_path / "class"), paths["autograder"], jobs=2,
                                    timeout=2400)
    lab = gradebook.LabQuestions.of(source)
    out = tmp_path / "grades"
    with gradebook.write_gradebook(results, lab, out).open(newline="") as fh:
        rows = {row["student"]: row for row in csv.DictReader(fh)}
    auto = sum(lab.auto.values())
    assert auto >= 7 and lab.hand == 3 and set(rows) == {"ada", "bob", "cy", "dee"}
    assert float(rows["ada"]["total"]) == auto and not rows["ada"]["error"], rows["ada"]
    assert float(rows["bob"]["total"]) == 0 and not rows["bob"]["error"], rows["bob"]
    assert all(float(rows["bob"][q]) == 0 for q in lab.auto) and rows["ada"]["max"] == f"{auto + 3:g}"
    for broken in ("cy", "dee"):
        assert float(rows[broken]["total"]) == 0 and rows[broken]["error"].startswith("not a readable notebook")
    feedback = (out / "feedback" / "bob.md").read_text()
    assert "returned None" in feedback and "the stub `...` returns None" in feedback
    assert "results is Ellipsis: run your experiment" in feedback
    assert "Not graded: not a readable notebook" in (out / "feedback" / "dee.md").read_text()
    answers = (out / "open-answers.md").read_text()
    assert "## bob\n\n> **Exercise 3" in answers and "_Type your answer here" in answers
    assert "## dee\n\n(no answer found: not a readable notebook" in answers

    (tmp_path / "hand.csv").write_text("student,points\nada,2.5\nbob,1\n")
    with gradebook.merge_hand_grades(out, tmp_path / "hand.csv").open(newline="") as fh:
        merged = {row["student"]: row for row in csv.DictReader(fh)}
    assert merged["ada"]["total"] == f"{auto + 2.5:g}" and merged["ada"]["hand-graded"] == "2.5"
    assert merged["bob"]["total"] == "1" and merged["cy"]["hand-graded"] == ""


@needs_otter
def test_a_notebook_that_runs_too_long_scores_zero_with_the_reason(labs, tmp_path: Path):
    paths = labs["00_setup_and_baseline"]
    nb = nbformat.read(paths["student"], as_version=4)
    nb.cells.insert(1, nbformat.v4.new_code_cell("import time\ntime.sleep(600)"))
    nbformat.write(nb, tmp_path / "slow.ipynb")
    graded = gradebook.grade_submission(tmp_path / "slow.ipynb", paths["autograder"], timeout=30)
    assert graded.error == "grading took longer than 30 s (an endless loop, or training far too long)"
    assert not graded.points


def test_merging_hand_grades_refuses_unknown_students_and_missing_columns(tmp_path: Path):
    (tmp_path / "gradebook.csv").write_text("student,q1,hand-graded,total,max,error\nada,4,,4,10,\n")
    (tmp_path / "hand.csv").write_text("student,points\neve,3\n")
    with pytest.raises(SystemExit, match="names students not in the gradebook: eve"):
        gradebook.merge_hand_grades(tmp_path, tmp_path / "hand.csv")
    (tmp_path / "hand.csv").write_text("name,score\nada,3\n")
    with pytest.raises(SystemExit, match="needs the columns student and points"):
        gradebook.merge_hand_grades(tmp_path, tmp_path / "hand.csv")


def test_the_time_of_each_exercise_is_summed_from_its_cells():
    def code(seconds):
        cell = nbformat.v4.new_code_cell("pass")
        cell.metadata["execution"] = {"iopub.execute_input": "2026-11-30T10:00:00.000000Z",
                                      "shell.execute_reply": f"2026-11-30T10:00:{seconds:02d}.500000Z"}
        return cell

    nb = nbformat.v4.new_notebook(cells=[
        code(3), nbformat.v4.new_markdown_cell("**Exercise 1 (4 points): write it.**"), code(1),
        nbformat.v4.new_markdown_cell("<!-- BEGIN QUESTION -->\n\n**Exercise 2 (3 points): train.**"), code(20), code(9),
        nbformat.v4.new_markdown_cell("Exercise 3 is not a heading here"), code(0), nbformat.v4.new_code_cell("1")])
    assert grading.exercise_seconds(nb) == {"setup": 3.5, "exercise 1": 1.5, "exercise 2": 30.5}


def test_colab_links_use_the_configured_repository():
    url = build.colab_url(build.STUDENT_DIR / "01_iebn.ipynb")
    assert url.startswith("https://colab.research.google.com/github/") and url.endswith("/blob/main/book/labs/01_iebn.ipynb")


def test_the_student_notebook_cites_in_plain_text():
    cells = [nbformat.v4.new_markdown_cell("BN {footcite}`ioffe2015batchnorm`, SE {footcite}`hu2018senet,ioffe2015batchnorm`."),
             nbformat.v4.new_markdown_cell("## References\n\n```{footbibliography}\n```")]
    build.plain_citations(cells)
    assert cells[0].source == "BN [1], SE [2, 1]."
    assert cells[1].source.startswith("## References\n\n1. Sergey Ioffe and Christian Szegedy. Batch normalization")
    assert "\n2. Jie Hu" in cells[1].source and "{" not in cells[1].source


def test_the_lab_table_of_the_teacher_page_is_current():
    assert teachers.LAB_TABLE.read_text() == teachers.lab_table(), \
        f"{teachers.LAB_TABLE.relative_to(build.REPO)} is stale: run `make labs`"
    assert "{include} labs/labs-table.md" in (build.REPO / "book" / "teachers.md").read_text()


def test_the_teacher_page_links_every_lab_and_its_measured_time():
    table = teachers.LAB_TABLE.read_text()
    linked = re.findall(r"\(https://colab\.research\.google\.com/github/[^/]+/[^/]+/blob/[^/]+/([^)]+)\)", table)
    assert linked == [f"book/labs/{source.stem}.ipynb" for source in CHAPTERS]
    assert all((build.REPO / path).exists() for path in linked), linked
    timings = teachers.load_timings()
    unmeasured = [source.stem for source in CHAPTERS if "quick" not in timings.get(source.stem, {})]
    assert not unmeasured, f"no measured run time for {unmeasured}: run `python -m booktools.labs time`"


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_every_lab_has_three_exercises_one_graded_by_hand(source: Path):
    items = teachers.exercises(source)
    assert len(items) >= 3 and sum(item["manual"] for item in items) >= 1, items


def test_labs_default_to_the_quick_profile():
    """Chapters default to `book` (hours on a CPU); a lab must run in class time."""
    for path in sorted(build.STUDENT_DIR.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        assert f'profile = "{build.LAB_PROFILE}"' in params.source and build.LAB_PROFILE == "quick", path.name
