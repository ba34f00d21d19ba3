"""Grade a class: every notebook of a folder, in parallel, into a gradebook.

    python -m booktools.labs grade-class SUBMISSIONS/ --lab 01 --out grades/ [--jobs 2] [--timeout 1200]

writes, in ``grades/``:

* ``gradebook.csv``: one row per student (the notebook's file name without ``.ipynb``): the
  points of each auto-graded question, the hand-graded points (empty until merged), the
  total, the maximum (auto-graded and hand-graded questions), and why points were lost to
  an error (unreadable notebook, timeout, a crash of the grader);
* ``feedback/STUDENT.md``: per question, the points and, where points were lost, the
  self-check's message (what is wrong and where to look);
* ``open-answers.md``: every student's answer to the question graded by hand, one after
  another, for grading with the rubric of the teacher page.

``python -m booktools.labs merge-hand-grades grades/ HAND.csv`` adds the hand-graded points
(a CSV with the columns ``student`` and ``points``) to ``gradebook.csv`` and its totals.

A notebook that cannot be read (truncated, empty, not JSON), that runs longer than the
timeout or that crashes the grader scores 0 with the reason, and never stops the others.
"""
from __future__ import annotations

import csv
import io
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from attnlib.files import atomic_write_text

from .build import lab_cells, otter_command
from .grading import read_results

HAND_GRADED = "hand-graded"


@dataclass(frozen=True)
class LabQuestions:
    """The points of a lab: per auto-graded question (by otter's name), and graded by hand."""

    auto: dict[str, float]
    hand: float

    @classmethod
    def of(cls, chapter: Path) -> LabQuestions:
        """From the lab metadata of the chapter notebook ``chapter``."""
        labs = [c.metadata["lab"] for c in lab_cells(nbformat.read(chapter, as_version=4))
                if c.metadata.get("lab", {}).get("question")]
        return cls({lab["question"]: float(lab["points"]) for lab in labs if not lab.get("manual")},
                   float(sum(lab["points"] for lab in labs if lab.get("manual"))))


@dataclass
class Graded:
    """One student's result: points per auto-graded question, errors, and the checks' messages."""

    student: str
    points: dict[str, float] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    error: str = ""
    open_answers: list[tuple[str, str]] = field(default_factory=list)  # (question, answer)


def open_answers(nb) -> list[tuple[str, str]]:
    """(question, answer) of every question graded by hand: the answer cells otter leaves
    after a ``BEGIN QUESTION`` markdown cell."""
    found, question = [], None
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "BEGIN QUESTION" in cell.source:
            question = cell.source.replace("<!-- BEGIN QUESTION -->", "").strip().split("\n\n")[0]
        elif question and cell.cell_type == "markdown" and "otter_answer_cell" in cell.metadata.get("tags", []):
            found.append((question, cell.source.strip()))
            question = None
    return found


def grade_submission(notebook: Path, autograder: Path, timeout: float) -> Graded:
    """Grade one notebook; every failure becomes a score of 0 with its reason."""
    graded = Graded(notebook.stem)
    try:
        nb = nbformat.read(notebook, as_version=4)
    except Exception as err:  # noqa: BLE001  (whatever the file holds, the class goes on)
        graded.error = f"not a readable notebook ({type(err).__name__}: {str(err)[:200]}); ask for the file again"
        return graded
    graded.open_answers = open_answers(nb)
    with tempfile.TemporaryDirectory() as out:
        try:
            run = subprocess.run(otter_command("run", "--no-logo", "-a", str(autograder), "-o", out, str(notebook)),
                                 capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            graded.error = f"grading took longer than {timeout:g} s (an endless loop, or training far too long)"
            return graded
        results = read_results(Path(out))
    if results is None:
        tail = (run.stdout + run.stderr).strip().splitlines()[-3:]
        graded.error = "the grader could not run the notebook: " + " | ".join(tail)
        return graded
    for test in results["tests"]:
        if "max_score" in test:
            graded.points[test["name"]] = test["score"]
            graded.messages[test["name"]] = test.get("output", "").strip()
    return graded


def grade_class(folder: Path, autograder: Path, *, jobs: int = 2, timeout: float = 1200) -> list[Graded]:
    """Grade every ``*.ipynb`` of ``folder``, ``jobs`` at a time, in file-name order."""
    notebooks = sorted(folder.glob("*.ipynb"))
    if not notebooks:
        raise SystemExit(f"no notebooks (*.ipynb) in {folder}")
    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(lambda nb: grade_submission(nb, autograder, timeout), notebooks))


def write_gradebook(results: list[Graded], lab: LabQuestions, out: Path) -> Path:
    """``gradebook.csv``, ``feedback/*.md`` and ``open-answers.md`` in ``out``; returns the CSV."""
    questions = lab.auto
    (out / "feedback").mkdir(parents=True, exist_ok=True)
    rows = []
    for graded in results:
        points = {q: graded.points.get(q, 0.0) for q in questions}
        rows.append({"student": graded.student, **{q: f"{p:g}" for q, p in points.items()}, HAND_GRADED: "",
                     "total": f"{sum(points.values()):g}", "max": f"{sum(questions.values()) + lab.hand:g}",
                     "error": graded.error})
        atomic_write_text(out / "feedback" / f"{graded.student}.md", _feedback(graded, questions))
    csv_path = out / "gradebook.csv"
    _write_csv(csv_path, rows)
    atomic_write_text(out / "open-answers.md", _open_answers(results))
    return csv_path


def _feedback(graded: Graded, questions: dict[str, float]) -> str:
    lines = [f"# Feedback for {graded.student}", ""]
    if graded.error:
        lines += [f"**Not graded: {graded.error}.** Every auto-graded question scores 0.", ""]
    for question, maximum in questions.items():
        got = graded.points.get(question, 0.0)
        lines.append(f"## {question}: {got:g} / {maximum:g}")
        if got < maximum and graded.messages.get(question):
            lines += ["", "What the check found:", "", "```", graded.messages[question], "```"]
        lines.append("")
    lines.append("The question graded by hand is marked separately.")
    return "\n".join(lines) + "\n"


def _open_answers(results: list[Graded]) -> str:
    lines = ["# Answers to the question graded by hand", ""]
    for graded in results:
        lines.append(f"## {graded.student}")
        answers = graded.open_answers or [("", "(no answer found: " + (graded.error or "the answer cell is missing") + ")")]
        for question, answer in answers:
            if question:
                lines += ["", f"> {question.splitlines()[0]}"]
            lines += ["", answer, ""]
    return "\n".join(lines) + "\n"


def merge_hand_grades(out: Path, hand: Path) -> Path:
    """Add the points of ``hand`` (columns ``student``, ``points``) to ``out/gradebook.csv``."""
    csv_path = out / "gradebook.csv"
    with csv_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    with hand.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"student", "points"} <= set(reader.fieldnames):
            raise SystemExit(f"{hand} needs the columns student and points, it has {reader.fieldnames}")
        given = {row["student"]: float(row["points"]) for row in reader}
    students = {row["student"] for row in rows}
    if unknown := sorted(set(given) - students):
        raise SystemExit(f"{hand} names students not in the gradebook: {', '.join(unknown)}")
    for row in rows:
        previous = float(row[HAND_GRADED] or 0)
        if row["student"] in given:
            row[HAND_GRADED] = f"{given[row['student']]:g}"
            row["total"] = f"{float(row['total']) - previous + given[row['student']]:g}"
    _write_csv(csv_path, rows)
    return csv_path


def _write_csv(path: Path, rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())
