"""booktools.benchmark_page: only runs on a quiet machine, each figure the median of them with its range."""
from __future__ import annotations

from booktools.benchmark_page import NOT_PROFILED, WHY_MISSED, layer_speeds, page, reproduction


def _run(ratio: float, quiet: bool | None, date: str, overhead: float = 0.05, commit: str = "abc",
         label: str = "SE") -> dict:
    rows = [{"label": "plain (BN)", "target": None, "train_step_ms_vs_first": 1.0, "eval_images_per_s_vs_first": 1.0,
             "train_step_ms": 100.0, "params": 1000, "flops_per_image": 2e6},
            {"label": label, "target": 1.10, "train_step_ms_vs_first": ratio, "eval_images_per_s_vs_first": 0.9,
             "train_step_ms": 100.0 * ratio, "params": 1100, "flops_per_image": 2e6}]
    load = None if quiet is None else {"quiet": quiet, "other_processes_cpu_share": 0.02 if quiet else 0.6}
    return {"settings": {"model": "resnet20", "batch_size": 128, "image_shape": [1, 28, 28], "dtype": "float32",
                         "channels_last": True, "compile": False, "steps": 3, "repeats": 5, "threads": 1},
            "environment": {"device": "CPU: AMD EPYC, 1 threads", "torch": "2.14.1", "git_commit": commit, "date": date},
            "rows": rows, "loop": {"overhead": overhead}, "machine_load": load}


def test_the_page_shows_the_median_and_range_of_the_quiet_runs_only():
    runs = [_run(1.05, True, "2026-12-01 10:00 UTC"), _run(1.09, True, "2026-12-01 10:05 UTC"),
            _run(1.12, True, "2026-12-01 10:10 UTC"), _run(1.60, False, "2026-12-01 11:00 UTC"),
            _run(1.70, None, "2026-11-20 09:00 UTC", commit="old")]
    text = page(runs)
    assert "commit `abc`)" in text and "`old`" not in text  # the commit of the runs shown
    assert "3 quiet runs of 5 (2 under load or with the load not recorded, not shown)" in text
    assert "| SE | 1.09 [1.05–1.12]x | ≤ 1.10x met (not in every run) |" in text
    assert "1.60" not in text and "1.70" not in text and "provisional" not in text
    assert "Every method meets its target." in text and "+5.0 % to the bare step (target ≤ 5 %, met)" in text
    assert "(target ≤ 5 %, **missed**)" in page([_run(1.05, True, "d", overhead=0.08)])


def test_fewer_than_three_quiet_runs_are_provisional_and_none_shows_no_figure():
    assert "**Fewer than 3 quiet runs: these figures are provisional.**" in page([_run(1.2, True, "d")])
    assert "| SE | 1.20x | ≤ 1.10x **missed** |" in page([_run(1.2, True, "d")])
    text = page([_run(1.2, False, "d"), _run(1.3, None, "e")])
    assert "0 quiet runs of 2" in text and "No figure is shown" in text and "| SE |" not in text


def test_every_missed_target_is_explained_once_with_the_machines_where_it_is_missed():
    machine = "CPU: AMD EPYC, 1 thread"
    assert f"*SE* (missed on {machine}): {WHY_MISSED['SE']}" in page([_run(1.2, True, "d")])
    assert WHY_MISSED["SE"] not in page([_run(1.05, True, "d")])  # met: no explanation
    assert f"*New layer* (missed on {machine}): {NOT_PROFILED}" in page([_run(1.2, True, "d", label="New layer")])
    two_threads = _run(1.3, True, "e")
    two_threads["settings"]["threads"] = 2
    text = page([_run(1.2, True, "d"), two_threads])
    assert text.count(WHY_MISSED["SE"]) == 1
    assert f"*SE* (missed on {machine}; CPU: AMD EPYC, 2 threads): " in text


def test_new_runs_reproduce_the_page_when_every_median_lands_inside_its_range_as_printed():
    shown = [_run(1.05, True, "a"), _run(1.12, True, "b"), _run(1.30, False, "c")]  # the page's range: 1.05-1.12
    report, reproduced = reproduction(shown, [_run(1.123, True, "d"), _run(1.2, True, "e"), _run(1.0, True, "f")])
    assert reproduced and "| SE step time vs plain | 1.08 [1.05–1.12] | 1.12 | yes |" in report  # 1.123 prints 1.12
    assert "2 of 2 figures inside" in report
    report, reproduced = reproduction(shown, [_run(1.25, True, "d", overhead=0.02)])  # 1.25 is only in the loud run
    assert not reproduced and "| 1.25 | **no** |" in report and "| `fit` over the bare step (%) | +5.0 | +2.0 | **no** |" in report
    report, reproduced = reproduction(shown, [_run(1.08, False, "d")])
    assert not reproduced and "0 quiet new run(s) of 1" in report and "No figure could be compared." in report


def _timed(ratio: float, quiet: bool, threads: int = 1) -> dict:
    """A run as :func:`_run` makes it, with what :func:`layer_speeds` reads: the methods' parts and speeds."""
    run = _run(ratio, quiet, "d")
    run["settings"]["threads"] = threads
    run["methods"] = [{"label": "SE", "parts": {"norm": "bn", "conv": "conv", "attention": "se"}, "target": 1.10}]
    for row in run["rows"]:
        row["train_images_per_s_vs_first"] = 1 / row["train_step_ms_vs_first"]
    return run


def test_layer_speeds_are_the_medians_of_the_setting_with_the_most_quiet_runs():
    """The overview's speed column: the benchmark page's figures, from its best-measured setting."""
    one_thread = [_timed(1.25, True), _timed(2.0, True), _timed(1.6, True), _timed(5.0, False)]
    two_threads = [_timed(1.1, True, threads=2) for _ in range(4)]
    speeds = layer_speeds(one_thread + two_threads)
    assert speeds.machine == "CPU: AMD EPYC, 2 threads, float32"
    assert speeds.speeds == {("resnet20", "bn", "conv", "se"): 1 / 1.1}
    speeds = layer_speeds(one_thread)  # the run under load is left out of the median
    assert speeds.machine == "CPU: AMD EPYC, 1 thread, float32" and speeds.speeds[("resnet20", "bn", "conv", "se")] == 1 / 1.6
    assert layer_speeds(one_thread[:2]) == ("", {})  # fewer than three quiet runs: no figure
