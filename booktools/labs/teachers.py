"""The generated part of the teacher page: one row per lab, from the chapters and the timings.

``book/teachers.md`` includes :data:`LAB_TABLE`; ``python -m booktools.labs build`` and
``python -m booktools.labs time`` rewrite it, and a test fails when it is stale. The
exercises and their points come from the lab cells of the chapter notebooks, the times
from ``book/labs/timings.json`` (written by ``time``): nothing in the table is typed.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat

from attnlib.files import atomic_write_text

from ..book import source_notebooks
from .build import STUDENT_DIR, TIMINGS, colab_url, lab_cells

LAB_TABLE = STUDENT_DIR / "labs-table.md"
NOT_MEASURED = "not measured"
_EXERCISE_TITLE = re.compile(r"\*\*Exercise \d+ \([^)]*\):\s*(.+?)\*\*", re.S)


def exercises(source: Path) -> list[dict]:
    """The lab's questions in order: name, title, points, and whether they are graded by hand."""
    found = []
    for cell in lab_cells(nbformat.read(source, as_version=4)):
        lab = cell.metadata.get("lab", {})
        if lab.get("question"):
            match = _EXERCISE_TITLE.search(cell.source)
            if match is None:
                raise ValueError(f"{source.name}: the cell of {lab['question']} must open with "
                                 "**Exercise N (P points): its title.**")
            found.append({"name": lab["question"], "title": " ".join(match[1].split()).rstrip("."),
                          "points": lab["points"], "manual": bool(lab.get("manual"))})
    return found


def load_timings() -> dict:
    """``book/labs/timings.json``: ``{lab: {profile: {"seconds", "cpu_seconds", "score", "machine", ...}}}``."""
    return json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _time(timing: dict | None) -> str:
    if timing is None:
        return NOT_MEASURED
    parts = timing.get("parts", {})
    experiment = f"; exercise 2: {_duration(parts['exercise 2'])}" if "exercise 2" in parts else ""
    return (f"{_duration(timing['seconds'])} ({_duration(timing['cpu_seconds'])} of CPU time{experiment}; "
            "every self-check passed)")


def _exercise_list(items: list[dict]) -> str:
    return "<br>".join(f"{n}. {item['title']} ({item['points']} pts, {'by hand' if item['manual'] else 'autograder'})"
                       for n, item in enumerate(items, 1))


def lab_table(sources: list[Path] | None = None) -> str:
    """Markdown: per lab, its student notebook on Colab, exercises with points, and measured times."""
    timings = load_timings()
    lines = ["| chapter | student notebook | exercises (points) | solution run, `quick` profile, CPU | Colab GPU |",
             "|---|---|---|---|---|"]
    machines = set()
    for source in sources or source_notebooks():
        runs = timings.get(source.stem, {})
        machines.update(run["machine"] for run in runs.values())
        student = STUDENT_DIR / f"{source.stem}.ipynb"
        lines.append(f"| {{doc}}`/book/{source.stem}` | [open in Colab]({colab_url(student)}) | "
                     f"{_exercise_list(exercises(source))} | {_time(runs.get('quick'))} | {NOT_MEASURED} |")
    measured = f"on {', '.join(sorted(machines))}" if machines else "not yet measured"
    return "\n".join(lines) + (
        f"\n\nSolution runs: the whole lab notebook with the solutions and its self-checks, run from start to "
        f"end (`python -m booktools.labs time`), {measured}; exercise 2 is the experiment's share of it. "
        "The wall time grows when the machine runs other work; the CPU time (of the notebook's processes, "
        "summed over cores) does not, and the load average at the start of each run is in "
        "`book/labs/timings.json`. No GPU was available for these measurements, so the time on Colab's GPU "
        f"is {NOT_MEASURED}.\n")


def write_lab_table() -> Path:
    LAB_TABLE.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(LAB_TABLE, lab_table())
    return LAB_TABLE
