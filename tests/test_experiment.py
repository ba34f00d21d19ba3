"""attnlib.experiment: compare() records, reloads and reports; differences and the convergence check."""
from __future__ import annotations

import copy
import json
import math
import platform
import shutil
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from attnlib import load_dataset, plots
from attnlib.config import TrainConfig
from attnlib.data import DeviceLoader
from attnlib.devices import autocast, autocast_dtype, precision_name
from attnlib.experiment import (PRECISE_BN_FOLDER, Comparison, common_footing, compare, convergence_check, difference, difference_check,
                                epoch_cards, LongerReading, learning_state, longer_reading, verdict_settled)
from attnlib.history import NOT_RECORDED, Callback
from attnlib.profiles import PROFILES
from attnlib.records import run_key
from attnlib.runinfo import software
from attnlib.significance import smallest_p_value
from attnlib.train import evaluate, fit, predict, recompute_bn_statistics
from attnlib.variants import Variant, run_config
from conftest import COMPARED_SEEDS as SEEDS, COMPARED_VARIANTS as VARIANTS, StopAt


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
    assert mixed.run_card()["resumed elsewhere"] == (
        f"1 of {len(records)} runs changed device, threads or precision mid-run; their epochs ran on "
        "CPU: a, 1 threads, fp32 (1); NVIDIA H200, bf16 (1)")


def _with_history(comparison, **lists):
    """A copy of ``comparison`` whose first record's history has ``lists`` in place of its own."""
    first = copy.deepcopy(comparison.records[0])
    first["history"] |= lists
    return type(comparison)(comparison.variants, [first, *comparison.records[1:]], comparison.data,
                            comparison.profile, comparison.results_dir)


def test_the_run_card_names_every_version_that_trained_an_epoch(comparison):
    history = comparison.records[0]["history"]
    assert history["software"] == [software()] * 2  # kept epoch by epoch
    assert comparison.run_card()["torch"] == torch.__version__
    elsewhere = {**history["software"][0], "torch": "2.11.0", "git_commit": "0123456789"}
    card = _with_history(comparison, software=[elsewhere, history["software"][1]]).run_card()
    assert card["torch"] == ", ".join(sorted(["2.11.0", torch.__version__]))
    assert "0123456789" in card["git_commit"] and card["python"] == platform.python_version()


def test_each_epoch_names_its_footings_device_and_older_ones_the_cards_versions_on_its_footing(comparison):
    footing = comparison.records[0]["history"]["footing"][-1]
    assert NOT_RECORDED not in comparison.run_card()["torch"]
    same = _with_history(comparison, software=[]).run_card()  # older: one footing, the card's versions
    assert same["torch"] == torch.__version__
    moved = _with_history(comparison, software=[], footing=["NVIDIA H200, fp16 autocast, 8 processes", footing])
    card = moved.run_card()
    assert card["torch"] == ", ".join(sorted([NOT_RECORDED, torch.__version__]))
    # the device and precision of every epoch, from its footing
    assert card["device"] == "; ".join(sorted(["NVIDIA H200", comparison.records[0]["run_card"]["device"]]))
    assert card["precision"] == ", ".join(sorted(["fp16 autocast", comparison.records[0]["run_card"]["precision"]]))


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
        precision = precision_name(autocast_dtype("auto", torch.device("cpu")))  # bf16 on a CPU that has it
        assert card["epochs_by_footing"] == {history["footing"][0]: 2} and history["footing"][0].endswith(precision)
        assert card["precision"] == precision
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



def test_precise_statistics_measure_the_weights_again_once_and_are_read_back_without_them(comparison, tmp_path):
    shutil.copytree(comparison.results_dir, tmp_path / "results")
    ours = replace(comparison, results_dir=tmp_path / "results")
    precise = ours.with_precise_statistics(["BN baseline"], device="cpu")
    data = comparison.data
    for run, trained in zip(precise.runs("BN baseline"), ours.runs("BN baseline")):
        model = ours.model("BN baseline", run["seed"])
        amp_dtype = autocast_dtype(run["config"]["amp"], torch.device("cpu"))
        with autocast(torch.device("cpu"), amp_dtype):
            recompute_bn_statistics(model, DeviceLoader(data.train_images, data.train_labels, mean=data.mean,
                                                        std=data.std, batch_size=run["config"]["batch_size"]))
        test = DeviceLoader(data.test_images, data.test_labels, batch_size=1000, mean=data.mean, std=data.std)
        assert run["final_test_acc"] == evaluate(model, test, amp_dtype)[1]
        assert run["history"] == trained["history"] and run["predictions"] == trained["predictions"]
    assert precise.runs("AlexNet") == ours.runs("AlexNet"), "only the arms asked for are measured again"
    for weights in (tmp_path / "results").glob("bn-baseline-*.pt"):
        weights.unlink()  # as in a fresh clone for seeds > 0: the saved measurements are read back
    assert ours.with_precise_statistics(["BN baseline"], device="cpu").records == precise.records
    shutil.rmtree(tmp_path / "results" / PRECISE_BN_FOLDER)
    with pytest.raises(FileNotFoundError, match="weights of 'BN baseline' seed 0"):
        ours.with_precise_statistics(["BN baseline"], device="cpu")
    with pytest.raises(ValueError, match=r"no variant \['ResNet'\]"):
        ours.with_precise_statistics(["ResNet"])

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
        assert row["train_images_per_s"] > 0 and row["train_speed_vs_first"] > 0 and row["eval_speed_vs_first"] > 0
    assert rows[0]["delta_mean"] == 0 and rows[0]["train_speed_vs_first"] == rows[0]["eval_speed_vs_first"] == 1
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
    shared, trained = (c.model(label, SEEDS[0]).state_dict()
                       for c, label in ((again, "ResNet-20 (BN)"), (comparison, "BN baseline")))
    assert shared.keys() == trained.keys() and all(torch.equal(shared[k], trained[k]) for k in shared)
    # anything that changes the run is not shared
    assert run_key(renamed, again.data, TrainConfig(), 0) == run_key(VARIANTS[0], again.data, TrainConfig(), 0)
    assert run_key(Variant("x", norm="iebn"), again.data, TrainConfig(), 0) != run_key(renamed, again.data, TrainConfig(), 0)
    # an override equal to the recipe's value is the same run
    same = Variant("y", train={"lr": TrainConfig().lr})
    assert run_key(same, again.data, TrainConfig().replace(**same.train), 0) == run_key(renamed, again.data, TrainConfig(), 0)


def test_an_interrupted_run_renamed_resumes_from_its_checkpoint(tmp_path):
    """A chapter that renames an arm (the same run under a new label) resumes the run the queue
    interrupted under the old label, instead of training it again from the start."""
    profile = PROFILES["smoke"]
    data = profile.load()
    old, new = Variant("Old name"), Variant("New name")
    config = run_config(None, profile, old)
    key = run_key(old, data, config, 0)
    old_ckpt = tmp_path / f"old-name-seed0-{key}.ckpt"
    with pytest.raises(KeyboardInterrupt):
        fit(old.build(data, 0), data, config, seed=0, device="cpu", progress=False, checkpoint=old_ckpt,
            callbacks=[StopAt(2)])
    interrupted = torch.load(old_ckpt, weights_only=False)["history"]
    resumed = compare([new], profile, seeds=(0,), data=data, results_dir=tmp_path, device="cpu", progress=False)
    assert resumed.trained_now == 1
    history = resumed.runs("New name")[0]["history"]
    assert history["epoch_time"][:2] == interrupted["epoch_time"]  # the first two epochs were not run again
    assert len(history["test_acc"]) == config.epochs
    assert not list(tmp_path.glob("*.ckpt"))


def test_duplicate_labels_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        compare([Variant("a"), Variant("a", model="alexnet")], "smoke", results_dir=tmp_path, progress=False)
    assert not list(tmp_path.iterdir())  # refused before anything ran


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


def test_difference_states_the_smallest_attainable_p(comparison):
    d = difference(comparison, "AlexNet", "BN baseline")
    assert d["p_min"] == pytest.approx(smallest_p_value(2, 2)) and d["p_value"] >= d["p_min"]
    assert f"{d['p_min']:.2g}" in d["text"] and "smallest attainable" in d["text"]
    assert d["brief"] == (f"{d['delta']:+.2f} ± {d['se']:.2f} points, p = {d['p_value']:.2g}, "
                          f"at least {d['p_min']:.2g} with these seeds")


def _fake_comparison(label: str, epochs: int, accuracies: list[float]) -> Comparison:
    records = [{"label": label, "seed": i, "final_test_acc": a, "config": {"epochs": epochs}}
               for i, a in enumerate(accuracies)]
    return Comparison([Variant(label)], records, data=None, profile=PROFILES["book"], results_dir=Path("."))


def test_curves_apart_and_together_from_read_where_mean_test_curves_meet():
    records = [{"label": "A", "seed": 0, "history": {"test_acc": [0.50, 0.80, 0.90, 0.91]}},
               {"label": "B", "seed": 0, "history": {"test_acc": [0.60, 0.90, 0.904, 0.912]}},
               {"label": "C", "seed": 0, "history": {"test_acc": [0.50, 0.79, 0.80, 0.95]}}]
    cmp = Comparison([Variant(v) for v in "ABC"], records, data=None, profile=PROFILES["book"], results_dir=Path("."))
    assert cmp.curves_apart(["A", "B"]).tolist() == pytest.approx([10.0, 10.0, 0.4, 0.2])
    assert cmp.together_from(["A", "B"]) == 3                   # within 0.5 points from the third epoch on
    assert cmp.together_from(["A", "B"], within=0.3) == 4
    assert cmp.together_from() is None                          # C ends 4 points above A


def test_final_move_is_the_largest_change_of_a_mean_curve_in_its_last_epochs():
    records = [{"label": "A", "seed": 0, "history": {"test_acc": [0.50, 0.80, 0.81]}},
               {"label": "A", "seed": 1, "history": {"test_acc": [0.50, 0.80, 0.83]}},   # A's mean: +2 points
               {"label": "B", "seed": 0, "history": {"test_acc": [0.50, 0.90, 0.85]}}]   # B: -5 points
    cmp = Comparison([Variant("A"), Variant("B")], records, data=None, profile=PROFILES["book"], results_dir=Path("."))
    assert cmp.final_move() == pytest.approx(5.0) and cmp.final_move(["A"]) == pytest.approx(2.0)
    assert cmp.final_move(["A"], epochs=2) == pytest.approx(32.0) and math.isnan(cmp.final_move(epochs=3))
    assert cmp.mean_curve("A").tolist() == pytest.approx([50.0, 80.0, 82.0])
    for record, train in zip(records, ([0.6, 0.7, 0.7], [0.6, 0.7, 0.74], [0.6, 0.7, 0.71])):
        record["history"]["train_acc"] = train
    assert cmp.final_move(key="train_acc") == pytest.approx(2.0), "A's mean training accuracy moves most"
    assert learning_state(cmp) == (False, "in the last epoch no mean test accuracy moved by more than 5.00 points: "
                                          "the networks are still learning")
    assert learning_state(cmp, ["A"], tolerance=2.5)[0] and "have flattened" in learning_state(cmp, ["A"], 2.5)[1]
    one_epoch = Comparison([Variant("C"), Variant("A")], [{"label": "C", "seed": 0, "history": {"test_acc": [0.5]}},
                                                          *records[:2]], data=None, profile=PROFILES["book"],
                           results_dir=Path("."))
    assert math.isnan(one_epoch.final_move()) and learning_state(one_epoch) == (
        False, "the runs have a single epoch, so whether their curves flattened cannot be seen")


def test_joined_comparisons_compare_arms_of_two_experiments_on_the_same_test_images():
    data = SimpleNamespace(name="fashion_mnist", test_labels=torch.tensor([0, 1, 2]))
    longer = Comparison([Variant("A")], [{"label": "A", "seed": s, "final_test_acc": 0.9} for s in range(3)],
                        data=data, profile=PROFILES["book"], results_dir=Path("."))
    batch = Comparison([Variant("B")], [{"label": "B", "seed": s, "final_test_acc": 0.8 + s / 100} for s in range(2)],
                       data=SimpleNamespace(name="fashion_mnist", test_labels=torch.tensor([0, 1, 2])),
                       profile=PROFILES["book"], results_dir=Path("."))
    both = longer.joined(batch)
    assert both.labels == ["A", "B"] and len(both.runs("A")) == 3 and len(both.runs("B")) == 2
    assert difference(both, "B", "A")["delta"] == pytest.approx(-9.5)
    with pytest.raises(ValueError, match="they share labels"):
        longer.joined(longer)
    other_test = Comparison([Variant("C")], [], data=SimpleNamespace(name="fashion_mnist", test_labels=torch.tensor([0, 1])),
                            profile=PROFILES["book"], results_dir=Path("."))
    with pytest.raises(ValueError, match="not tested on the same images under the same profile"):
        longer.joined(other_test)
    with pytest.raises(ValueError, match="not tested on the same images under the same profile"):
        longer.joined(replace(batch, profile=PROFILES["quick"]))



def test_on_seeds_keeps_the_runs_of_those_seeds_and_refuses_a_seed_an_arm_lacks(comparison):
    first = comparison.on_seeds([SEEDS[0]])
    assert first.labels == comparison.labels and {r["seed"] for r in first.records} == {SEEDS[0]}
    assert first.runs("AlexNet") == comparison.runs("AlexNet")[:1]
    with pytest.raises(ValueError, match=r"lack some of the seeds \[0, 7\]"):
        comparison.on_seeds([0, 7])

def test_seed_ranges_say_whether_any_network_is_ahead_on_every_seed():
    data = SimpleNamespace(test_labels=torch.tensor([0]))
    finals = {"A": [0.940, 0.945, 0.950], "B": [0.944, 0.952], "C": [0.949, 0.960]}
    records = [{"label": label, "seed": s, "final_test_acc": acc} for label, accs in finals.items()
               for s, acc in enumerate(accs)]
    cmp = Comparison([Variant(label) for label in finals], records, data=data, profile=PROFILES["book"],
                     results_dir=Path("."))
    both = cmp.seed_ranges()
    assert both["ranges"]["B"] == pytest.approx((94.4, 95.2)) and both["overlap"]   # 94.9-95.0 lies in every range
    assert both["text"].startswith("A 94.00-95.00 %; B 94.40-95.20 %; C 94.90-96.00 %: one range holds")
    apart = cmp.seed_ranges(["A", "C"])
    assert list(apart["ranges"]) == ["A", "C"] and apart["overlap"]
    records.append({"label": "D", "seed": 0, "final_test_acc": 0.97})
    cmp = Comparison([Variant(label) for label in (*finals, "D")], records, data=data, profile=PROFILES["book"],
                     results_dir=Path("."))
    assert not cmp.seed_ranges()["overlap"] and cmp.seed_ranges()["text"].endswith("the ranges do not all overlap")


def test_shared_mistakes_and_mistake_overlap_count_the_images_two_runs_get_wrong():
    data = SimpleNamespace(test_labels=torch.tensor([0, 1, 2, 3, 4]))
    records = [{"label": "A", "seed": 0, "predictions": [0, 9, 9, 3, 4]},   # wrong on 1, 2
               {"label": "A", "seed": 1, "predictions": [9, 9, 9, 9, 9]},   # wrong on all; read only when asked for
               {"label": "B", "seed": 0, "predictions": [0, 9, 2, 9, 4]}]   # wrong on 1, 3
    cmp = Comparison([Variant("A"), Variant("B")], records, data=data, profile=PROFILES["book"], results_dir=Path("."))
    assert cmp.shared_mistakes("A", "B") == (3, 1)
    assert cmp.shared_mistakes("A", "A", nth=(0, 1)) == (5, 2)   # two seeds of one network
    assert cmp.shared_mistakes("B", "A", nth=(0, 1)) == (5, 2)
    with pytest.raises(ValueError, match="'B' has 1 runs"):
        cmp.shared_mistakes("A", "B", nth=(1, 1))
    with pytest.raises(ValueError, match="'B' has 1 runs"):
        cmp.mistake_overlap("A", "B")   # B has no second seed to measure the yardstick by
    records.append({"label": "B", "seed": 1, "predictions": [0, 1, 2, 9, 9]})   # wrong on 3, 4
    cmp = Comparison([Variant("A"), Variant("B")], records, data=data, profile=PROFILES["book"], results_dir=Path("."))
    overlap = cmp.mistake_overlap("A", "B", names=("net A", "net B"))
    assert {k: overlap[k] for k in ("either", "between", "within")} == {
        "either": 3, "between": 1 / 3, "within": {"A": 2 / 5, "B": 1 / 3}}
    assert overlap["relation"] == "about as often as"   # 1/3 against 2/5 and 1/3, on five images or fewer
    assert overlap["text"] == ("of the 3 test images that net A or net B (seed 0 of each) gets wrong, 33 % are wrong "
                               "for both; seeds 0 and 1 of one network share 40 % of theirs for net A and 33 % for "
                               "net B: the two networks fail on the same images about as often as two seeds of one "
                               "network do")
    assert "that A or B" in cmp.mistake_overlap("A", "B")["text"]


def _overlap_of(between: tuple[int, int], within: tuple[int, int]) -> dict:
    """mistake_overlap of two networks A and B whose seeds 0 share ``between`` = (either, both) mistakes and
    whose seeds 0 and 1 each share ``within`` = (either, both), on test images all of label 0."""
    (n, k), (m, j) = between, within
    images = n + m  # room for every pattern below
    wrong = lambda idx: [1 if i in idx else 0 for i in range(images)]
    a0 = set(range(k)) | set(range(k, k + (n - k) // 2))
    b0 = set(range(k)) | set(range(k + (n - k) // 2, n))
    a1, b1 = (set(list(s)[:j]) | set(range(n, n + m - len(s))) for s in (a0, b0))
    records = [{"label": label, "seed": seed, "predictions": wrong(idx)}
               for label, seed, idx in (("A", 0, a0), ("A", 1, a1), ("B", 0, b0), ("B", 1, b1))]
    data = SimpleNamespace(test_labels=torch.zeros(images, dtype=torch.long))
    return Comparison([Variant("A"), Variant("B")], records, data=data, profile=PROFILES["book"],
                      results_dir=Path(".")).mistake_overlap("A", "B")


@pytest.mark.parametrize("between, within, relation", [
    ((700, 378), (700, 400), "about as often as"),    # 54 % against 57 %: under one standard error of 2.6 points
    ((900, 405), (900, 513), "less often than"),      # 45 % against 57 %: about 5 standard errors below
    ((700, 490), (700, 400), "more often than"),      # 70 % against 57 %: about 5 standard errors above
])
def test_mistake_overlap_reads_the_gap_against_the_noise_of_the_images(between, within, relation):
    overlap = _overlap_of(between, within)
    assert overlap["between"] == pytest.approx(between[1] / between[0])
    assert overlap["within"]["A"] == pytest.approx(within[1] / within[0])
    assert overlap["relation"] == relation


def test_mistake_overlap_of_networks_that_share_every_mistake_is_about_as_often():
    overlap = _overlap_of((4, 4), (4, 4))   # every share is 1: no binomial noise, and no gap either
    assert overlap["between"] == overlap["within"]["A"] == 1 and overlap["relation"] == "about as often as"


@pytest.mark.parametrize("longer, converged", [([0.9402, 0.9398, 0.9405], True), ([0.9440, 0.9450, 0.9445], False),
                                               ([0.9350, 0.9360, 0.9355], False)])
def test_convergence_check(longer, converged):
    base = _fake_comparison("R", 30, [0.9400, 0.9390, 0.9410])   # seed std 0.10 points
    check = convergence_check(base, "R", _fake_comparison("R x2", 60, longer), "R x2")
    assert check["seed_std"] == pytest.approx(0.1)
    assert check["shift"] == pytest.approx(100 * (statistics.fmean(longer) - 0.94))
    assert check["converged"] is converged and check["epochs"] == (30, 60)
    assert ("have converged" in check["text"]) is converged


def _fake_pair(epochs: int, method: list[float], baseline: list[float]) -> Comparison:
    records = [{"label": label, "seed": i, "final_test_acc": a, "config": {"epochs": epochs}}
               for label, accs in (("M", method), ("B", baseline)) for i, a in enumerate(accs)]
    return Comparison([Variant("M"), Variant("B")], records, data=None, profile=PROFILES["book"], results_dir=Path("."))


@pytest.mark.parametrize("longer_method, stable", [([0.9400, 0.9410, 0.9390], True),    # -0.20 again
                                                   ([0.9450, 0.9460, 0.9440], False)])  # +0.30: the sign flips
def test_difference_check_compares_the_difference_at_both_lengths(longer_method, stable):
    short = _fake_pair(30, [0.9380, 0.9390, 0.9400, 0.9370, 0.9410], [0.9400, 0.9410, 0.9420, 0.9390, 0.9430])
    longer = _fake_pair(60, longer_method, [0.9420, 0.9430, 0.9410])
    check = difference_check(short, ("M", "B"), longer, ("M", "B"))
    se_short, se_long = difference(short, "M", "B")["se"], difference(longer, "M", "B")["se"]
    assert check["delta"] == pytest.approx(-0.2) and check["se"] == pytest.approx(math.hypot(se_short, se_long))
    assert check["change"] == pytest.approx(check["longer_delta"] + 0.2) and check["epochs"] == (30, 60)
    assert check["stable"] is stable and ("does not depend" in check["text"]) is stable
    assert check["same_verdict"] is (check["short"]["verdict"] == check["long"]["verdict"])
    # said only of a stable difference whose verdict moves
    assert ("sits near the line" in check["text"]) is (stable and not check["same_verdict"])


def test_a_stable_difference_can_still_change_its_verdict():
    # -0.20 ± 0.14 (indistinguishable) after 30 epochs, -0.30 ± 0.06 (worse) after 60: the change
    # of -0.10 is within two standard errors, the verdict is not the same
    short = _fake_pair(30, [0.9380, 0.9390, 0.9400, 0.9370, 0.9410], [0.9400, 0.9410, 0.9420, 0.9390, 0.9430])
    longer = _fake_pair(60, [0.9390, 0.9400, 0.9410], [0.9420, 0.9430, 0.9440])
    check = difference_check(short, ("M", "B"), longer, ("M", "B"))
    assert check["stable"] and not check["same_verdict"]
    assert (check["short"]["verdict"], check["long"]["verdict"]) == ("indistinguishable from", "worse than")
    assert "the verdict moves from 'indistinguishable from' to 'worse than': the difference sits near the line" in check["text"]


@pytest.mark.parametrize("converged, stable, same_verdict, settled", [
    (True, False, True, True), (False, True, True, True), (False, False, True, False),
    (True, True, False, False)])  # a converged method whose difference changes verdict is not settled
def test_a_verdict_is_settled_when_it_holds_at_both_lengths(converged, stable, same_verdict, settled):
    assert verdict_settled({"converged": converged}, {"stable": stable, "same_verdict": same_verdict}) is settled


def _fake_arms(epochs: int, arms: dict[str, list[float]], suffix: str = "") -> Comparison:
    records = [{"label": label + suffix, "seed": i, "final_test_acc": a, "config": {"epochs": epochs}}
               for label, accs in arms.items() for i, a in enumerate(accs)]
    return Comparison([Variant(label + suffix) for label in arms], records, data=None, profile=PROFILES["book"],
                      results_dir=Path("."))


def test_a_stable_difference_that_crosses_the_verdict_line_is_answered_with_both_verdicts():
    def side(verdict: str, brief: str) -> dict:
        return {"verdict": verdict, "brief": brief}
    check = {"epochs": (60, 120), "delta": -0.36, "longer_delta": -0.26, "stable": True, "same_verdict": False,
             "short": side("worse than", "-0.36 ± 0.14"), "long": side("indistinguishable from", "-0.26 ± 0.21")}
    reading = LongerReading({"M": {"converged": False}, "B": {"converged": False}}, {("M", "B"): check})
    assert not reading.settled()
    assert reading.answer(("M", "B")) == (
        "from 60 to 120 epochs the difference moves less than its noise (-0.36 points, then -0.26) "
        "but sits on the line between two verdicts: M is worse than B after 60 epochs "
        "(-0.36 ± 0.14) and indistinguishable from it after 120 (-0.26 ± 0.21)")


def test_longer_reading_checks_every_network_and_pair_against_its_twice_the_epochs_runs():
    short = _fake_arms(30, {"M": [0.9380, 0.9390, 0.9400], "N": [0.9300, 0.9310, 0.9320], "B": [0.9400, 0.9410, 0.9420]})
    # M gains a point with twice the epochs and overtakes B; N and B do not move
    longer = _fake_arms(60, {"M": [0.9480, 0.9490, 0.9500], "N": [0.9300, 0.9310, 0.9320],
                             "B": [0.9400, 0.9410, 0.9420]}, suffix=", twice the epochs")
    reading = longer_reading(short, longer, [("M", "B"), ("N", "B")])
    assert list(reading.moved) == ["M", "N", "B"]
    assert [c["converged"] for c in reading.moved.values()] == [False, True, True]
    assert reading.stability[("M", "B")]["longer_delta"] == pytest.approx(0.8)
    assert reading.settled(("N", "B")) and not reading.settled(("M", "B")) and not reading.settled()
    settled = reading.answer(("N", "B"))
    assert settled.startswith("after 30 epochs N is worse than B (-1.00 ± ")
    assert "), and the verdict is the same after 60, so it does not depend" in settled
    moved = reading.answer(("M", "B"))
    assert moved.startswith("trained for 60 epochs, M is better than B (+0.80 ± ")
    assert "the verdict to read: it moves with the length of training" in moved
    assert reading.text.startswith("for M, 60 epochs instead of 30 move the mean by +1.00 points")
    with pytest.raises(ValueError, match="has no 'N, twice the epochs'"):
        longer_reading(short, _fake_arms(60, {"M": [0.9], "B": [0.9]}, suffix=", twice the epochs"), [("N", "B")])


def test_a_relabeled_comparison_reads_a_longer_experiment_as_the_shorter_side_of_a_further_check():
    at_60 = _fake_arms(60, {"M": [0.9480, 0.9490, 0.9500], "B": [0.9400, 0.9410, 0.9420]}, suffix=", twice the epochs")
    at_120 = _fake_arms(120, {"M": [0.9490, 0.9500, 0.9510], "B": [0.9400, 0.9410, 0.9420]},
                        suffix=", four times the epochs")
    short = at_60.relabeled({"M, twice the epochs": "M", "B, twice the epochs": "B"})
    assert short.labels == ["M", "B"] and [r["final_test_acc"] for r in short.runs("M")] == [0.9480, 0.9490, 0.9500]
    assert at_60.labels == ["M, twice the epochs", "B, twice the epochs"]   # the original is untouched
    reading = longer_reading(short, at_120, [("M", "B")], suffix="four times the epochs")
    assert reading.settled() and reading.stability[("M", "B")]["epochs"] == (60, 120)
    with pytest.raises(ValueError, match="gives two variants one label"):
        at_60.relabeled({"M, twice the epochs": "B, twice the epochs"})


def test_difference_check_table_has_a_row_per_length_labelled_with_its_epochs():
    check = difference_check(_fake_pair(30, [0.91, 0.92, 0.93], [0.90, 0.91, 0.92]), ("M", "B"),
                             _fake_pair(60, [0.93, 0.94, 0.95], [0.90, 0.91, 0.92]), ("M", "B"))
    rows = plots.difference_check_table(check).splitlines()[2:]
    assert [row.split(" | ")[:2] for row in rows] == [["| M, 30 epochs − B, 30 epochs", "+1.00 ± 0.82"],
                                                      ["| M, 60 epochs − B, 60 epochs", "+3.00 ± 0.82"]]


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


def _moved(comparison, label: str, footing: str):
    """A copy of ``comparison`` whose ``label`` runs say they trained on ``footing``."""
    moved = copy.deepcopy(comparison)
    for record in moved.records:
        if record["label"] == label:
            record["history"]["footing"] = [footing] * len(record["history"]["epoch"])
    return moved


def test_speeds_compare_only_on_one_footing(comparison):
    second = comparison.labels[1]
    rows = comparison.summary()
    assert rows[0]["footing"] == rows[1]["footing"] is not None  # trained here, one after the other
    moved = {r["label"]: r for r in _moved(comparison, second, "CPU: elsewhere, 1 threads, bf16 autocast").summary()}
    assert moved[second]["footing"] == "CPU: elsewhere, 1 threads, bf16 autocast"
    assert math.isnan(moved[second]["train_speed_vs_first"]) and math.isnan(moved[second]["eval_speed_vs_first"])
    assert moved[second]["train_images_per_s"] == rows[1]["train_images_per_s"]  # still shown, not compared
    unknown = {r["label"]: r for r in _moved(comparison, second, NOT_RECORDED).summary()}
    assert unknown[second]["footing"] is None and math.isnan(unknown[second]["train_speed_vs_first"])


def test_common_footing_skips_the_first_epoch_and_needs_one_recorded_footing():
    def record(*footing):
        return {"history": {"epoch": list(range(len(footing))), "footing": list(footing)}}

    assert common_footing([record("a", "b", "b"), record("c", "b")]) == "b"  # the first epochs warm up
    assert common_footing([record("a")]) == "a"  # a one-epoch run: its only epoch
    assert common_footing([record("a", "b"), record("a", "c")]) is None
    assert common_footing([record("a", NOT_RECORDED)]) is None


def test_a_secondary_arm_takes_only_the_first_seeds(comparison):
    fewer = compare(VARIANTS, "smoke", epochs=2, seeds=SEEDS, results_dir=comparison.results_dir, device="cpu",
                    progress=False, seed_counts={VARIANTS[1].label: 1})
    assert fewer.trained_now == 0  # the same runs, loaded
    assert [r["seed"] for r in fewer.runs(VARIANTS[0].label)] == list(SEEDS)
    assert [r["seed"] for r in fewer.runs(VARIANTS[1].label)] == [SEEDS[0]]
    with pytest.raises(ValueError, match="not among the variants"):
        compare(VARIANTS, "smoke", seed_counts={"typo": 1}, results_dir=comparison.results_dir, progress=False)


def test_a_runs_pace_is_its_fastest_epoch_after_the_first():
    from attnlib.experiment import steady_pace

    # the first epoch pays one-off costs; an epoch slowed by other work on the machine does not set the pace
    assert steady_pace({"history": {"train_images_per_s": [900.0, 610.0, 350.0, 640.0]}}, "train_images_per_s") == 640.0
    assert steady_pace({"history": {"train_images_per_s": [500.0]}}, "train_images_per_s") == 500.0


@pytest.mark.parametrize("amp, first", [("off", {"precision": "fp32"}), ("auto", {})])
def test_an_epoch_off_the_cards_footing_without_a_footing_is_fp32_only_if_autocast_was_off(amp, first):
    card = {"device": "CPU: b, 1 threads", "precision": "fp32", "torch": "2.0"}
    record = {"config": {"amp": amp}, "run_card": card,
              "history": {"epoch": [1, 2, 3], "footing": [NOT_RECORDED, "NVIDIA H200, fp32, 8 processes",
                                                          "CPU: b, 1 threads, fp32"]}}
    assert epoch_cards(record) == [first, {"device": "NVIDIA H200", "precision": "fp32"}, card]
