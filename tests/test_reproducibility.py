"""The running and reproducibility tables are read from run cards and notebook metadata, not typed."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from booktools.reproducibility import (METADATA_KEY, NOT_RECORDED, TOOLS, environment_table, execution_metadata,
                                     run_cards, tool_versions, training_time, wall_times_table)

CARD = """| run card | |
|---|---|
| profile | quick |
| device | CPU: Test CPU, 2 threads |
| python | 3.11.7 |
| torch | 2.14.1 |
| torchvision | 0.29.1 |
| training wall time | {minutes} min over {runs} runs (0 trained now, {runs} loaded from results) |"""


def executed_notebook(path: Path, cards: list[tuple[float, int]], execution: dict | None = None,
                      device: str = "CPU: Test CPU, 2 threads", python: str = "3.11.7") -> Path:
    """A notebook whose code cells printed run cards of (minutes, runs) on ``device`` with ``python``,
    with optional execute metadata."""
    nb = nbformat.v4.new_notebook()
    for minutes, runs in cards:
        card = CARD.format(minutes=minutes, runs=runs).replace("CPU: Test CPU, 2 threads", device)
        card = card.replace("| python | 3.11.7 |", f"| python | {python} |")
        output = nbformat.v4.new_output("display_data", data={"text/markdown": card})
        nb.cells.append(nbformat.v4.new_code_cell("display(card)", outputs=[output]))
    if execution is not None:
        nb.metadata[METADATA_KEY] = execution
    nbformat.write(nb, path)
    return path


def test_run_cards_are_read_back_from_the_outputs(tmp_path: Path):
    nb = nbformat.read(executed_notebook(tmp_path / "01_x.ipynb", [(13.4, 6), (2.0, 3)]), as_version=4)
    cards = run_cards(nb)
    assert [c["training wall time"][:16] for c in cards] == ["13.4 min over 6 ", "2.0 min over 3 r"]
    assert cards[0]["device"] == "CPU: Test CPU, 2 threads"
    assert training_time(cards) == pytest.approx((15.4, 9))


def test_an_unreadable_wall_time_is_an_error():
    with pytest.raises(ValueError, match="training wall time"):
        training_time([{"training wall time": "a while"}])


def test_wall_times_table_sums_cards_per_chapter_and_records_once(tmp_path: Path):
    chapter = executed_notebook(tmp_path / "01_x.ipynb", [(13.4, 6), (2.0, 3)], {"execution_time_s": 61.6})
    bare = executed_notebook(tmp_path / "02_y.ipynb", [])
    results = tmp_path / "results"
    results.mkdir()
    for seed, (profile, seconds) in enumerate((("quick", 1800), ("quick", 1800), ("quick", 3600), ("book", 9000))):
        record = {"variant": {}, "profile": profile, "run_card": {"wall_time_s": seconds}}
        (results / f"run-{seed}.json").write_text(json.dumps(record))
    table = wall_times_table([chapter, bare], results)
    assert "| {doc}`01_x` | quick | 9 | 15.4 min | 62 s | not measured |" in table
    assert f"| {{doc}}`02_y` | {NOT_RECORDED} | 0 | {NOT_RECORDED} | {NOT_RECORDED} | not measured |" in table
    assert "by profile: `book`: 1 runs in 2.5 h; `quick`: 3 runs in 2.0 h" in table


def test_environment_table_merges_chapters(tmp_path: Path):
    first = executed_notebook(tmp_path / "01_x.ipynb", [(1.0, 1)], {"versions": {"numpy": "2.0", "python": "3.11"}})
    second = executed_notebook(tmp_path / "02_y.ipynb", [(1.0, 1)], {"versions": {"numpy": "2.1", "python": "3.11"}})
    table = environment_table([first, second])
    assert "| executing the notebooks: numpy | 2.0, 2.1 |" in table
    assert "| executing the notebooks: python | 3.11 |" in table
    assert "| training: device | CPU: Test CPU, 2 threads |" in table


def test_versions_and_machines_merged_in_run_cards_are_listed_once_each(tmp_path: Path):
    """A run card merges its runs' versions with commas ("3.11.7, not recorded" where some records
    predate the versions); the environment table lists each version once. Machines, whose names hold
    commas, are joined with "; "."""
    first = executed_notebook(tmp_path / "01_x.ipynb", [(1.0, 1)], {"machine": "Linux, CPU: A, 1 threads"})
    second = executed_notebook(tmp_path / "02_y.ipynb", [(1.0, 1)], {"machine": "Linux, CPU: B, 1 threads"},
                               python=f"3.11.7, {NOT_RECORDED}")
    table = environment_table([first, second])
    assert f"| training: python | 3.11.7, {NOT_RECORDED} |" in table
    assert "| executing the notebooks: machine | Linux, CPU: A, 1 threads; Linux, CPU: B, 1 threads |" in table


def test_devices_merged_in_run_cards_are_listed_once_each(tmp_path: Path):
    """A run card lists its runs' devices joined by "; " (by commas in older copies), and a CPU's
    name has a comma of its own."""
    first = executed_notebook(tmp_path / "01_x.ipynb", [(1.0, 1)], device="CPU: Alpha, 1 threads, NVIDIA H200")
    second = executed_notebook(tmp_path / "02_y.ipynb", [(1.0, 1)],
                               device="CPU: Alpha, 1 threads, CPU: Beta, Inc., 2 threads")
    third = executed_notebook(tmp_path / "03_z.ipynb", [(1.0, 1)], device="CPU: Beta, Inc., 2 threads; NVIDIA H200")
    (tmp_path / "results").mkdir()
    expected = "CPU: Alpha, 1 threads; CPU: Beta, Inc., 2 threads; NVIDIA H200"
    assert f"| training: device | {expected} |" in environment_table([first, third])
    assert f"| training: device | {expected} |" in environment_table([first, second])
    assert f"Training devices of the runs above: {expected}." in wall_times_table([first, second], tmp_path / "results")


def test_execution_metadata_names_every_tool():
    meta = execution_metadata("quick", 12.34)
    assert meta["profile"] == "quick" and meta["execution_time_s"] == 12.3
    assert set(meta["versions"]) == {"python", *TOOLS} == set(tool_versions())
    assert meta["versions"]["attnlib"] != "not installed"
