"""Running a lab's autograder: one notebook graded (``otter run``, no Docker), its score, and the
solution notebook timed (``python -m booktools.labs time``)."""
from __future__ import annotations

import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import nbformat
import torch

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


def time_solution(name: str, profile: str) -> dict:
    """Run and grade the solution notebook of one lab: its wall time, the CPU time of its
    processes (which other work on a shared machine does not inflate), score and machine."""
    def cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # otter run and its kernel, once finished
        return usage.ru_utime + usage.ru_stime

    solution = BUILD_DIR / name / "solution.ipynb"
    with tempfile.TemporaryDirectory() as tmp:
        copy = set_parameter(solution, Path(tmp) / solution.name, profile=profile)
        start, cpu_start, load = time.perf_counter(), cpu_seconds(), os.getloadavg()[0]
        got, total = score(grade(copy, BUILD_DIR / name / "autograder.zip"))
        wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    return {"seconds": round(wall), "cpu_seconds": round(cpu), "load_average_at_start": round(load, 1),
            "score": got, "max_score": total, "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.system()} {platform.machine()}, {device_name(torch.device('cpu'))}, "
                       f"{os.cpu_count()} cores"}
