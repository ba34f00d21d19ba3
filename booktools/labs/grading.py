"""Running a lab's autograder: one notebook graded (``otter run``, no Docker) and its score; and
the solution notebook run and timed, exercise by exercise (``python -m booktools.labs time``)."""
from __future__ import annotations

import json
import os
import platform
import re
import resource
import tempfile
import time
from datetime import datetime
from pathlib import Path

import nbformat
import torch
from nbclient import NotebookClient

from attnlib.runinfo import device_name

from .build import BUILD_DIR, run_otter


def set_parameter(notebook: Path, out: Path, **values) -> Path:
    """A copy of ``notebook`` with assignments in its ``parameters`` cell replaced (e.g. profile)."""
    nb = nbformat.read(notebook, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    lines = cell.source.splitlines()
    for key, value in values.items():
        lines = [f"{key} = {value!r}" if line.split("=")[0].strip() == key else line for line in lines]
    cell.source = "\n".join(lines)
    nbformat.write(nb, out)
    return out


def read_results(out: Path) -> dict | None:
    """otter's ``results.json`` in ``out`` as a dict, or None when otter wrote none."""
    report = out / "results.json"
    return json.loads(report.read_text()) if report.exists() else None


def grade(notebook: Path, autograder: Path) -> dict:
    """Run the autograder on one notebook (``otter run``, no Docker); otter's results.json as a dict."""
    with tempfile.TemporaryDirectory() as out:
        result = run_otter("run", "--no-logo", "-a", str(autograder), "-o", out, str(notebook))
        results = read_results(Path(out))
    if results is None:
        raise RuntimeError(f"otter run failed on {notebook}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return results


def score(results: dict) -> tuple[float, float]:
    """(score, maximum) over the auto-graded questions of an otter results dict."""
    graded = [t for t in results["tests"] if "max_score" in t]
    return sum(t["score"] for t in graded), sum(t["max_score"] for t in graded)


EXERCISE = re.compile(r"^(?:<!-- BEGIN QUESTION -->\s*)?\*\*Exercise (\d+)")


def _cell_seconds(cell) -> float:
    """How long nbclient took to run ``cell`` (from the timestamps it records)."""
    timing = cell.metadata.get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    return (datetime.fromisoformat(end.replace("Z", "+00:00"))
            - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()


def exercise_seconds(nb) -> dict[str, float]:
    """Seconds spent in each part of an executed lab notebook: ``"setup"`` (the cells before the
    first exercise: imports, data, the chapter's figures) and ``"exercise N"`` (its cells)."""
    parts: dict[str, float] = {"setup": 0.0}
    part = "setup"
    for cell in nb.cells:
        if cell.cell_type == "markdown" and (match := EXERCISE.match(cell.source.lstrip())):
            part = f"exercise {match.group(1)}"
            parts.setdefault(part, 0.0)
        elif cell.cell_type == "code":
            parts[part] += _cell_seconds(cell)
    return {name: round(seconds, 1) for name, seconds in parts.items()}


def time_solution(name: str, profile: str, timeout: float = 3600) -> dict:
    """Run the solution notebook of one lab (its self-checks raise if a solution fails them):
    its wall time, the CPU time of its kernel (which other work on a shared machine does not
    inflate), the seconds of each exercise's cells, the load average at the start and the machine."""
    def cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the kernel, once it has exited
        return usage.ru_utime + usage.ru_stime

    solution = BUILD_DIR / name / "solution.ipynb"
    with tempfile.TemporaryDirectory() as tmp:
        nb = nbformat.read(set_parameter(solution, Path(tmp) / solution.name, profile=profile), as_version=4)
        start, cpu_start, load = time.perf_counter(), cpu_seconds(), os.getloadavg()[0]
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": tmp}}).execute()
        wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    return {"seconds": round(wall), "cpu_seconds": round(cpu), "parts": exercise_seconds(nb),
            "load_average_at_start": round(load, 1), "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.system()} {platform.machine()}, {device_name(torch.device('cpu'))}, "
                       f"{os.cpu_count()} cores"}
