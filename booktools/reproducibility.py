"""What produced the book's pages: versions, hardware and wall times, read from the executed notebooks.

``python -m booktools.book execute`` stores the versions of the book's tools and the notebook's
execution time in each executed copy's metadata (:func:`execution_metadata`); every
chapter's results print one or more run cards (training device, versions, training wall
time). The markdown tables here are generated from those two sources and included by
``book/running.md`` and ``book/reproducibility.md``; ``python -m booktools.book overview``
writes them, and a test fails when they are stale. Nothing in them is typed.
"""
from __future__ import annotations

import platform
import re
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import nbformat

#: The executed copies' metadata key written by ``booktools.book.execute``.
METADATA_KEY = "attnlib"
#: Distributions whose versions an executed copy records (besides Python itself).
TOOLS = ("torch", "torchvision", "numpy", "matplotlib", "attnlib", "papermill", "nbval", "ipykernel",
         "jupyter-book", "myst-nb", "sphinxcontrib-bibtex")
NOT_RECORDED = "not recorded"
_WALL_TIME = re.compile(r"([\d.]+) min over (\d+) runs")
#: Between two devices of a run card's merged list: "; " ("CPU: X, Inc., 2 threads; NVIDIA H200"), or in
#: copies executed before 2026-12-04, which joined them with commas, the comma after a CPU's thread
#: count or before a CPU (a CPU's name may hold commas of its own).
_DEVICE_SEPARATOR = re.compile(r"; |(?<= threads), |, (?=CPU: )")


def tool_versions() -> dict[str, str]:
    """Versions of Python and of every distribution in :data:`TOOLS` installed here."""
    versions = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def execution_metadata(profile: str, seconds: float) -> dict:
    """What ``execute`` stores in an executed copy: profile, time taken, machine, versions."""
    from attnlib.runinfo import device_name

    import torch

    return {"profile": profile, "execution_time_s": round(seconds, 1),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "machine": f"{platform.system()} {platform.machine()}, {device_name(torch.device('cpu'))}",
            "versions": tool_versions()}


def run_cards(nb) -> list[dict[str, str]]:
    """The run cards an executed notebook printed (``attnlib.plots.run_card_table``), as dicts."""
    cards = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            text = output.get("data", {}).get("text/markdown", "")
            if text.startswith("| run card |"):
                rows = [line.strip().strip("|").split("|", 1) for line in text.splitlines()[2:]]
                cards.append({key.strip(): value.strip() for key, value in rows})
    return cards


def training_time(cards: list[dict[str, str]]) -> tuple[float, int]:
    """Minutes of training and number of runs that the run cards add up to."""
    minutes, runs = 0.0, 0
    for card in cards:
        match = _WALL_TIME.match(card["training wall time"])
        if match is None:
            raise ValueError(f"unexpected training wall time {card['training wall time']!r} in a run card")
        minutes, runs = minutes + float(match[1]), runs + int(match[2])
    return minutes, runs


def _merged(values, separator: str = ", ") -> str:
    return separator.join(sorted(set(values))) or NOT_RECORDED


def _merged_versions(cards: list[dict[str, str]], key: str) -> str:
    """The distinct ``key`` versions of run cards whose entries are themselves merged lists
    ("3.11.7, not recorded"), one each."""
    return _merged(version for card in cards for version in card[key].split(", "))


def _merged_devices(cards: list[dict[str, str]]) -> str:
    """The distinct devices of run cards whose device entries are themselves merged lists, one each."""
    devices = {device for card in cards for device in _DEVICE_SEPARATOR.split(card["device"])}
    return "; ".join(sorted(devices)) or NOT_RECORDED


def _executed(paths: list[Path]) -> list[tuple[str, object]]:
    return [(path.stem, nbformat.read(path, as_version=4)) for path in paths]


def wall_times_table(paths: list[Path], results_dir: Path) -> str:
    """Markdown: per chapter, its training runs and time (from its run cards) and its execution time;
    then the time to train every record in ``results_dir`` once."""
    lines = ["| chapter | profile | training runs | training wall time, CPU | executing the notebook from its records | GPU |",
             "|---|---|---|---|---|---|"]
    every_card = []
    for stem, nb in _executed(paths):
        cards = run_cards(nb)
        minutes, runs = training_time(cards)
        every_card += cards
        execution = nb.metadata.get(METADATA_KEY, {})
        seconds = execution.get("execution_time_s")
        training = f"{minutes:.1f} min" if cards else NOT_RECORDED
        executing = f"{seconds:.0f} s" if seconds is not None else NOT_RECORDED
        lines.append(f"| {{doc}}`{stem}` | {_merged(card['profile'] for card in cards)} | {runs} | {training} | "
                     f"{executing} | not measured |")
    totals = "; ".join(f"`{profile}`: {runs} runs in {hours:.1f} h"
                       for profile, (hours, runs) in records_training_time(results_dir).items())
    return "\n".join(lines) + (f"\n\nTraining devices of the runs above: {_merged_devices(every_card)}. Chapters share "
                              f"runs (the plain baselines); every record in `book/results/`, each trained "
                              f"once, by profile: {totals}.\n")


def records_training_time(results_dir: Path) -> dict[str, tuple[float, int]]:
    """Per profile, the hours and number of runs of the records in ``results_dir`` (each trained once)."""
    from .overview import load_records

    totals: dict[str, tuple[float, int]] = {}
    for r in load_records(results_dir):
        hours, runs = totals.get(r["profile"], (0.0, 0))
        totals[r["profile"]] = (hours + r["run_card"]["wall_time_s"] / 3600, runs + 1)
    return dict(sorted(totals.items()))


def environment_table(paths: list[Path]) -> str:
    """Markdown: the hardware and versions behind the executed notebooks, merged over chapters."""
    executed = _executed(paths)
    cards = [card for _, nb in executed for card in run_cards(nb)]
    execution = [nb.metadata.get(METADATA_KEY, {}) for _, nb in executed]
    rows = [("training: device", _merged_devices(cards)),
            *[(f"training: {key}", _merged_versions(cards, key)) for key in ("python", "torch", "torchvision")],
            ("executing the notebooks: machine", _merged((e.get("machine", NOT_RECORDED) for e in execution), "; ")),
            ("executing the notebooks: date", _merged(e.get("date", NOT_RECORDED) for e in execution)),
            *[(f"executing the notebooks: {tool}",
               _merged(e.get("versions", {}).get(tool, NOT_RECORDED) for e in execution))
              for tool in ("python", *TOOLS)]]
    return "| what | version or value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"
