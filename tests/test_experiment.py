"""attnlib.experiment, attnlib.profiles and attnlib.plots: compare() records, reloads and reports."""
from __future__ import annotations

import json
import math
import signal
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from attnlib import load_dataset, plots
from attnlib.experiment import (Comparison, Variant, compare, convergence_check, difference, flops_per_image,
                                permutation_p_value, run_key, smallest_p_value)
from attnlib.profiles import PROFILES, resolve_profile
from attnlib.train import Callback, TrainConfig, predict

VARIANTS = [Variant("BN baseline"), Variant("AlexNet", model="alexnet", model_kwargs={"width_mult": 0.5},
                                            train={"lr": 0.02})]
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """2 variants x 2 seeds on the smoke profile, 2 epochs; trained once for the module."""
    results = tmp_path_factory.mktemp("results")
    first = compare(VARIANTS, "smoke", epochs=2, seeds=SEEDS, results_dir=results, device="cpu",
                    progress=False)
    return first


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ----------------------------------------------------------------------------- compare

def test_compare_writes_one_record_and_weights_per_run(comparison):
    files = sorted(p.name for p in comparison.results_dir.iterdir())
    assert len(files) == 8, files
    assert sum(f.endswith(".json") for f in files) == 4 and sum(f.endswith(".pt") for f in files) == 4
    for stem in {f.rsplit(".", 1)[0] for f in files}:
        assert f"{stem}.json" in files and f"{stem}.pt" in files
    assert {f.split("-seed")[0] for f in files} == {"bn-baseline", "alexnet"}
    assert comparison.trained_now == 4 and len(comparison.records) == 4
    assert comparison.labels == ["BN baseline", "AlexNet"]
    assert [r["seed"] for r in comparison.runs("AlexNet")] == list(SEEDS)


def test_second_compare_loads_instead_of_training(comparison, capsys):
    again = compare(VARIANTS, "smoke", epochs=2, seeds=SEEDS, results_dir=comparison.results_dir,
                    device="cpu", progress=False)
    assert again.trained_now == 0
    assert again.wall_time_s < 0.2 * comparison.wall_time_s
    assert again.records == comparison.records, "a loaded record equals the freshly trained one"
    assert "loaded" in capsys.readouterr().out
    # another recipe or seed is another run (its key, hence its file name, differs)
    data = comparison.data
    base = TrainConfig(**comparison.records[0]["config"])
    assert run_key(VARIANTS[0], data, base, 0) != run_key(VARIANTS[0], data, base.replace(epochs=3), 0)
    assert run_key(VARIANTS[0], data, base, 0) != run_key(VARIANTS[0], data, base, 1)
    # other data of the same name and shape is another run too
    other = load_dataset("synthetic", channels=1, image_size=16, train=512, test=256, seed=1)
    assert run_key(VARIANTS[0], data, base, 0) != run_key(VARIANTS[0], other, base, 0)


def test_the_run_card_flags_runs_resumed_on_another_footing(comparison):
    assert "resumed elsewhere" not in comparison.run_card()
    records = [{**r, "run_card": {**r["run_card"], "epochs_by_footing": {"CPU: a, 1 threads, fp32": 1,
                                                                         "NVIDIA H200, bf16": 1}}}
               for r in comparison.records[:1]] + comparison.records[1:]
    mixed = type(comparison)(comparison.variants, records, comparison.data, comparison.profile,
                             comparison.results_dir)
    assert mixed.run_card()["resumed elsewhere"].startswith(f"1 of {len(records)} runs changed device")


def test_record_contents(comparison):
    data = comparison.data
    assert (len(data.train_labels), len(data.test_labels), data.image_size) == (512, 256, 16)
    for record in comparison.records:
        card = record["run_card"]
        for key in ("device", "torch", "git_commit", "python", "attnlib"):
            assert isinstance(card[key], str) and card[key]
        assert card["torch"] == torch.__version__ and card["device"].startswith("CPU")
        history = record["history"]
        assert card["wall_time_s"] > 0 and card["wall_time_s"] == pytest.approx(sum(history["epoch_time"]), abs=0.06)
        assert card["epochs_by_footing"] == {history["footing"][0]: 2} and "fp32" in history["footing"][0]
        assert history["epoch"] == [1, 2] and len(history["test_acc"]) == 2
        assert record["final_test_acc"] == history["test_acc"][-1]
        assert record["best_test_acc"] == max(history["test_acc"])
        assert len(record["predictions"]) == len(data.test_labels)
        assert set(record["predictions"]) <= set(range(data.num_classes))
        assert record["params"] > 0 and record["flops_per_image"] > 0
        assert record["config"]["epochs"] == 2 and record["config"]["batch_size"] == 64
        assert record["profile"] == "smoke" and record["dataset"]["name"] == "synthetic"
    bn, alex = comparison.runs("BN baseline")[0], comparison.runs("AlexNet")[0]
    assert bn["config"]["lr"] == 0.1 and alex["config"]["lr"] == 0.02  # the variant's override
    assert bn["params"] == 272_474 - (3 - 1) * 16 * 9  # resnet20 with a 1-channel stem (see test_models)
    assert bn["params"] != alex["params"]
    # the seeds differ: initialisation and batch order
    assert bn["history"] != comparison.runs("BN baseline")[1]["history"]


def test_saved_weights_give_the_recorded_predictions(comparison):
    for label in comparison.labels:
        for seed in SEEDS:
            model = comparison.model(label, seed)
            assert not model.training
            predictions = predict(model, comparison.data, device="cpu")
            record = next(r for r in comparison.runs(label) if r["seed"] == seed)
            assert predictions.tolist() == record["predictions"]
            accuracy = (predictions == comparison.data.test_labels).float().mean().item()
            assert accuracy == pytest.approx(record["final_test_acc"], abs=0.02)


def test_summary(comparison):
    rows = comparison.summary()
    assert [r["label"] for r in rows] == comparison.labels
    for row in rows:
        finals = [r["final_test_acc"] for r in comparison.runs(row["label"])]
        assert row["seeds"] == 2
        assert row["final_mean"] == pytest.approx(statistics.fmean(finals))
        assert row["final_std"] == pytest.approx(statistics.stdev(finals))
        assert row["best_mean"] >= row["final_mean"] and not math.isnan(row["best_std"])
        assert row["delta_mean"] == pytest.approx(row["final_mean"] - rows[0]["final_mean"])
        assert row["train_images_per_s"] > 0 and row["speed_vs_first"] > 0
    assert rows[0]["delta_mean"] == 0 and rows[0]["speed_vs_first"] == 1
    card = comparison.run_card()
    assert card["profile"] == "smoke" and card["seeds"] == "0, 1" and card["epochs"] == 2
    assert "4 runs (4 trained now, 0 loaded" in card["training wall time"]


def test_same_run_under_another_label_is_shared(comparison):
    renamed = Variant("ResNet-20 (BN)")  # trains exactly what "BN baseline" trained
    again = compare([renamed], "smoke", epochs=2, seeds=SEEDS, results_dir=comparison.results_dir,
                    device="cpu", progress=False)
    assert again.trained_now == 0
    assert again.labels == ["ResNet-20 (BN)"] and len(again.runs("ResNet-20 (BN)")) == len(SEEDS)
    original = comparison.runs("BN baseline")
    assert [r["history"] for r in again.runs("ResNet-20 (BN)")] == [r["history"] for r in original]
    assert comparison.runs("BN baseline")[0]["label"] == "BN baseline"  # the first comparison is untouched
    model = again.model("ResNet-20 (BN)", SEEDS[0])
    assert isinstance(model, torch.nn.Module)
    # anything that changes the run is not shared
    assert run_key(renamed, again.data, TrainConfig(), 0) == run_key(VARIANTS[0], again.data, TrainConfig(), 0)
    assert run_key(Variant("x", norm="iebn"), again.data, TrainConfig(), 0) != run_key(renamed, again.data, TrainConfig(), 0)
    # an override equal to the recipe's value is the same run
    same = Variant("y", train={"lr": TrainConfig().lr})
    assert run_key(same, again.data, TrainConfig().replace(**same.train), 0) == run_key(renamed, again.data, TrainConfig(), 0)


def test_duplicate_labels_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        compare([Variant("a"), Variant("a", model="alexnet")], "smoke", results_dir=tmp_path, progress=False)
    assert not list(tmp_path.iterdir())  # refused before anything ran


# ----------------------------------------------------------------------------- profiles

def test_resolve_profile():
    smoke = resolve_profile("smoke")
    assert smoke == PROFILES["smoke"] and smoke.dataset == "synthetic"
    p = resolve_profile("smoke", epochs=7, seeds=[4], batch_size=16)
    assert (p.epochs, p.seeds, p.batch_size) == (7, (4,), 16)
    assert PROFILES["smoke"].epochs == 3  # the table is not modified
    q = resolve_profile("smoke", dataset="cifar10")
    assert q.dataset == "cifar10" and q.dataset_options == {}
    assert resolve_profile("smoke", dataset="synthetic").dataset_options == smoke.dataset_options
    quick = resolve_profile("quick", epochs=2)
    assert quick.train_subset == 12_000 and quick.epochs == 2
    assert resolve_profile(p) == p
    with pytest.raises(ValueError, match="smoke"):
        resolve_profile("medium")
    with pytest.raises(ValueError, match="seed"):
        resolve_profile("smoke", seeds=[])
    with pytest.raises(ValueError, match="repeat a seed"):
        resolve_profile("smoke", seeds=[0, 0, 1])


def test_smoke_profile_loads_its_dataset():
    data = resolve_profile("smoke").load()
    assert (len(data.train_labels), len(data.test_labels), data.in_channels, data.image_size) == (512, 256, 1, 16)


# ----------------------------------------------------------------------------- FLOPs

@pytest.mark.parametrize("cin,cout,k,padding", [(1, 4, 3, 1), (2, 5, 1, 0), (1, 3, 5, 2)])
def test_flops_of_a_single_conv(synthetic, cin, cout, k, padding):
    data = synthetic if cin == 1 else replace(synthetic, train_images=synthetic.train_images.repeat(1, cin, 1, 1))
    assert data.in_channels == cin
    model = nn.Conv2d(cin, cout, k, padding=padding, bias=False)
    h = w = 16  # 'same' padding
    assert flops_per_image(model, data) == 2 * cout * cin * k * k * h * w


def test_flops_restores_training_mode(synthetic):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2)).train()
    assert flops_per_image(model, synthetic) == 2 * 2 * 1 * 9 * 14 * 14
    assert model.training
    model.eval()
    flops_per_image(model, synthetic)
    assert not model.training


# ----------------------------------------------------------------------------- plots

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


def test_colors_follow_the_method():
    assert plots.color_for("IEBN ResNet-20") == plots.color_for("iebn") != plots.color_for("SE")
    colors = plots._colors(["BN", "ResNet-56", "mine", "other"])
    assert len(set(colors.values())) == 4


def test_compared_curves_get_distinct_colours():
    # BA-Net's AlexNet figure: three labels whose keywords share two colours
    colors = list(plots._colors(["AlexNet", "BA-AlexNet", "BA-AlexNet, gate discarded"]).values())
    assert min(plots._distance(a, b) for i, a in enumerate(colors) for b in colors[i + 1:]) > 140  # two blues: 121


class _Timeout(Exception):
    pass


def test_colors_for_many_variants_terminates():
    def alarm(signum, frame):
        raise _Timeout("plots._colors did not return within 2 s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, 2.0)
    try:
        colors = plots._colors([f"variant {i}" for i in range(9)])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert len(colors) == 9
    assert len(set(list(colors.values())[:8])) == 8, "the first 8 labels get distinct colours"


def test_confusion_counts_every_prediction_once(comparison):
    for label in comparison.labels:
        counts = comparison.confusion(label)
        runs = comparison.runs(label)
        assert counts.sum() == len(runs) * len(comparison.data.test_labels)
        correct = sum(sum(p == t for p, t in zip(r["predictions"], comparison.data.test_labels.tolist()))
                      for r in runs)
        assert counts.diagonal().sum() == correct
        truth_counts = torch.bincount(comparison.data.test_labels, minlength=comparison.data.num_classes)
        assert torch.equal(counts.sum(1), len(runs) * truth_counts)


def test_difference_states_its_verdict(comparison):
    d = difference(comparison, "AlexNet", "BN baseline")
    expected_delta = 100 * (statistics.fmean(r["final_test_acc"] for r in comparison.runs("AlexNet"))
                            - statistics.fmean(r["final_test_acc"] for r in comparison.runs("BN baseline")))
    assert d["delta"] == pytest.approx(expected_delta)
    assert d["within_noise"] == (abs(d["delta"]) <= 2 * d["se"])
    if d["within_noise"]:
        assert d["verdict"] == "indistinguishable from"
    else:
        assert d["verdict"] == ("better than" if d["delta"] > 0 else "worse than")
    assert difference(comparison, "AlexNet", "AlexNet")["verdict"] == "indistinguishable from"


def test_permutation_p_value_against_enumeration():
    # 3 vs 3, completely separated: only the observed split and its mirror are as extreme
    assert permutation_p_value([0.74, 0.741, 0.742], [0.735, 0.736, 0.7365]) == pytest.approx(2 / 20)
    # identical groups: every split is at least as extreme as a zero difference
    assert permutation_p_value([0.5, 0.6], [0.6, 0.5]) == 1.0
    # a direct count for a small unbalanced case: 1 vs 2 values, 3 splits
    a, b = [3.0], [1.0, 2.0]
    diffs = [abs(x - (6.0 - x) / 2) for x in (3.0, 1.0, 2.0)]
    assert permutation_p_value(a, b) == sum(d >= diffs[0] for d in diffs) / 3


def test_smallest_attainable_p_value():
    assert smallest_p_value(3, 3) == pytest.approx(0.1)
    assert smallest_p_value(5, 5) == pytest.approx(2 / 252)
    assert smallest_p_value(2, 3) == pytest.approx(1 / 10)
    # completely separated groups reach it, and no split does better
    separated = permutation_p_value([0.95, 0.951, 0.952, 0.953, 0.954], [0.93, 0.931, 0.932, 0.933, 0.934])
    assert separated == pytest.approx(smallest_p_value(5, 5)) and separated < 0.05


def test_difference_states_the_smallest_attainable_p(comparison):
    d = difference(comparison, "AlexNet", "BN baseline")
    assert d["p_min"] == pytest.approx(smallest_p_value(2, 2)) and d["p_value"] >= d["p_min"]
    assert f"{d['p_min']:.2g}" in d["text"] and "smallest attainable" in d["text"]


def _fake_comparison(label: str, epochs: int, accuracies: list[float]) -> Comparison:
    records = [{"label": label, "seed": i, "final_test_acc": a, "config": {"epochs": epochs}}
               for i, a in enumerate(accuracies)]
    return Comparison([Variant(label)], records, data=None, profile=PROFILES["book"], results_dir=Path("."))


@pytest.mark.parametrize("longer, converged", [([0.9402, 0.9398, 0.9405], True), ([0.9440, 0.9450, 0.9445], False),
                                               ([0.9350, 0.9360, 0.9355], False)])
def test_convergence_check(longer, converged):
    base = _fake_comparison("R", 30, [0.9400, 0.9390, 0.9410])   # seed std 0.10 points
    check = convergence_check(base, "R", _fake_comparison("R x2", 60, longer), "R x2")
    assert check["seed_std"] == pytest.approx(0.1)
    assert check["shift"] == pytest.approx(100 * (statistics.fmean(longer) - 0.94))
    assert check["converged"] is converged and check["epochs"] == (30, 60)
    assert ("have converged" in check["text"]) is converged


def test_book_profile_is_all_of_fashion_mnist_with_five_seeds():
    book = PROFILES["book"]
    assert (book.dataset, book.train_subset, book.test_subset, len(book.seeds)) == ("fashion_mnist", None, None, 5)
    assert smallest_p_value(len(book.seeds), len(book.seeds)) < 0.05



@dataclass(frozen=True)
class _OtherMachineFinishes(Callback):
    """In the run's last epoch, drops a finished record of this very run (found by the key in
    its checkpoint's name) into the results folder, as unpacking a GPU queue's archive beside
    a running CPU queue would."""

    folder: str

    def on_epoch_end(self, state):
        if state.epoch == state.config.epochs - 1:
            stem = next(Path(self.folder).glob("*.ckpt")).stem
            other = Path(self.folder) / stem.replace("first-", "elsewhere-", 1)
            other.with_suffix(".json").write_text(json.dumps(
                {"label": "elsewhere", "final_test_acc": 0.123, "run_card": {"wall_time_s": 1.0}}))


def test_a_record_that_appears_while_training_is_kept(tmp_path):
    variant = Variant("first", model_kwargs={"width_mult": 0.5}, callbacks=(_OtherMachineFinishes(str(tmp_path)),))
    cmp = compare([variant], "smoke", epochs=2, seeds=(0,), results_dir=tmp_path, device="cpu", progress=False)
    assert cmp.records[0]["final_test_acc"] == 0.123, "the record that came first is kept"
    assert not list(tmp_path.glob("first-*")), "nothing of the second copy is written, its checkpoint is gone"
