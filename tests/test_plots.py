"""attnlib.plots: the figures and tables every chapter shows, drawn from a comparison's records."""
from __future__ import annotations

import copy
import signal
import statistics

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure

from attnlib import plots
from attnlib.variants import Variant


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_learning_curves_say_what_the_line_and_band_are_under_any_title(comparison):
    for title in (None, "twice the epochs"):
        suptitle = plots.learning_curves(comparison, title=title).get_suptitle()
        assert suptitle.startswith(title or "") and suptitle.endswith(": mean over seeds, band = range over seeds")


def test_learning_curves(comparison):
    fig = plots.learning_curves(comparison)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    loss_ax, acc_ax = fig.axes
    # per variant: a dashed train line and a solid test line, plus two legend-only lines
    assert len(loss_ax.lines) == 2 * 2 and len(acc_ax.lines) == 2 * 2 + 2
    (legend,) = fig.legends  # one legend for the figure, under the plots, off the data
    names = [t.get_text() for t in legend.get_texts()]
    assert "BN baseline (n=2)" in names and "AlexNet (n=2)" in names
    fig.canvas.draw()
    box = legend.get_window_extent()
    assert all(box.y1 < ax.get_window_extent().y0 for ax in fig.axes)
    test_line = [ln for ln in acc_ax.lines if ln.get_label() == "AlexNet (n=2)"][0]
    expected = [100 * statistics.fmean(r["history"]["test_acc"][e] for r in comparison.runs("AlexNet"))
                for e in range(2)]
    assert list(test_line.get_ydata()) == pytest.approx(expected)
    # the bands are the range over seeds: a loss band never goes below zero, as mean - std can
    assert loss_ax.get_yscale() == "log"
    losses = [[r["history"]["test_loss"][e] for r in comparison.runs("AlexNet")] for e in range(2)]
    edges = {round(float(v), 9) for c in loss_ax.collections for v in c.get_paths()[0].vertices[:, 1]}
    assert {round(f(epoch), 9) for epoch in losses for f in (min, max)} <= edges


def test_prediction_grid(comparison):
    fig = plots.prediction_grid(comparison, n=16)
    assert isinstance(fig, Figure) and len(fig.axes) == 16
    titles = [ax.get_title() for ax in fig.axes]
    assert all(t.startswith("true: class ") for t in titles)
    # every image carries one prediction line per variant
    assert all(len(ax.texts) == 2 for ax in fig.axes)


def test_accuracy_bars(comparison):
    fig = plots.accuracy_bars(comparison)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    expected = [100 * statistics.fmean(r["final_test_acc"] for r in comparison.runs(lab)) for lab in comparison.labels]
    assert heights == pytest.approx(expected)
    assert [t.get_text() for t in ax.get_xticklabels()] == comparison.labels


def test_cost_table(comparison):
    lines = plots.cost_table(comparison).splitlines()
    assert len(lines) == 2 + len(comparison.labels)
    rows = comparison.summary()
    for line, row in zip(lines[2:], rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row["label"] and cells[1] == f"{row['params']:,d}"
        expected = row["train_images_per_s"] / rows[0]["train_images_per_s"]
        assert cells[6] == f"{expected:.3f}x"
    assert lines[2].endswith("| 1.00x | 1.000x | 1.000x |")


def test_speed_ratios_of_runs_on_another_footing_are_left_out_and_explained(comparison):
    moved = copy.deepcopy(comparison)
    second = moved.labels[1]
    for record in moved.runs(second):
        record["history"]["footing"] = ["CPU: elsewhere, 1 threads, fp32"] * len(record["history"]["epoch"])
    for table, column in ((plots.cost_table(moved), 6), (plots.results_table(moved), 8)):
        lines = table.splitlines()
        cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:4]]
        assert cells[0][column].endswith("x") and cells[1][column] == "–"
        assert lines[-1].startswith("*–: these runs and the first variant's did not all run on one footing")
    assert "footing" not in plots.cost_table(comparison)  # one footing: no note


def test_speed_drift_reading_says_whether_the_runs_ratios_measure_the_layers():
    runs = [{"label": "plain", "train_speed_vs_first": 1.0}, {"label": "NAM", "train_speed_vs_first": 1.08},
            {"label": "half", "train_speed_vs_first": 1.43}]
    timing = [{"label": "plain", "train_images_per_s_vs_first": 1.0},
              {"label": "NAM", "train_images_per_s_vs_first": 1.02},
              {"label": "half", "train_images_per_s_vs_first": 0.98}]
    close = plots.speed_drift_reading(runs, timing, ["NAM"])
    assert close == "in the training runs NAM at 1.08x plain's images per second, within 0.10 of the timing here"
    moved = plots.speed_drift_reading(runs, timing, ["NAM", "half"])
    assert moved.startswith("in the training runs NAM at 1.08x and half at 1.43x plain's images per second: more "
                            "than 0.10 from the timing here, so the shared machine's speed moved")
    runs[2]["train_speed_vs_first"] = float("nan")
    assert "different footings" in plots.speed_drift_reading(runs, timing, ["NAM", "half"])
    with pytest.raises(ValueError, match="missing: \\['SE'\\]"):
        plots.speed_drift_reading(runs, timing, ["SE"])
    with pytest.raises(ValueError, match="share their first network"):
        plots.speed_drift_reading(runs, timing[1:], ["half"])


def test_results_table(comparison):
    table = plots.results_table(comparison)
    lines = table.splitlines()
    assert len(lines) == 2 + len(comparison.labels)  # header, separator, one row per variant
    assert lines[0].startswith("| variant |") and set(lines[1]) <= set("|-")
    for line, row in zip(lines[2:], comparison.summary()):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == lines[0].count("|") - 1
        assert cells[0] == row["label"] and cells[1] == "2"
        assert cells[2].startswith(f"{100 * row['final_mean']:.2f} ± ")
    with_paper = plots.results_table(comparison, paper={"AlexNet": "90.0 (post)"})
    assert with_paper.splitlines()[3].endswith("| 90.0 (post) |")
    assert with_paper.splitlines()[2].endswith("| – |")
    assert "| git_commit |" in plots.run_card_table(comparison)


def test_difference_table_has_one_row_per_pair_with_its_numbers_and_verdict(comparison):
    from attnlib.experiment import difference

    pair = ("AlexNet", comparison.labels[0])
    d = difference(comparison, *pair)
    lines = plots.difference_table({pair: d}).splitlines()
    assert len(lines) == 3 and lines[0].startswith("| comparison | Δ ± SE (points) | p (smallest attainable) |")
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells == [f"AlexNet − {pair[1]}", f"{d['delta']:+.2f} ± {d['se']:.2f}",
                     f"{d['p_value']:.2g} ({d['p_min']:.2g})", f"AlexNet is {d['verdict']} {pair[1]}"]


def test_colors_follow_the_layer_not_the_label():
    """A method keeps its colour whatever its label says: IEBN is IEBN's blue even when
    labelled "BN-like", and a label with "SE" in it on a plain network is the plain grey."""
    labels = {"BN-like": Variant("BN-like", norm="iebn"), "SE?": Variant("SE?"),
              "DY K=2": Variant("DY K=2", conv=("dynamic", {"num_experts": 2}))}
    methods = {label: v.method for label, v in labels.items()}
    assert methods == {"BN-like": "iebn", "SE?": "plain", "DY K=2": "dynamic"}
    colors = plots._colors(methods)
    assert colors == {label: plots.METHOD_COLORS[m] for label, m in methods.items()}


def test_compared_curves_get_distinct_colours():
    # BA-Net's AlexNet figure: AlexNet's light blue and BA's green, then the control with BA's
    # layer, which must not take BA's green again (nor a colour close to one used)
    colors = list(plots._colors({"AlexNet": "alexnet", "BA-AlexNet": "ba", "gate discarded": "ba"}).values())
    assert min(plots._distance(a, b) for i, a in enumerate(colors) for b in colors[i + 1:]) > 140  # two blues: 121


class _Timeout(Exception):
    pass


def test_colors_for_many_variants_terminates():
    def alarm(signum, frame):
        raise _Timeout("plots._colors did not return within 2 s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, 2.0)
    try:
        colors = plots._colors({f"variant {i}": f"unknown {i}" for i in range(9)})
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert len(colors) == 9
    assert len(set(list(colors.values())[:8])) == 8, "the first 8 labels get distinct colours"
