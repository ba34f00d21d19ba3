"""attnlib.chapters: what each chapter trains, the one source its notebook and the command line use."""
from __future__ import annotations

import re

import pytest

from attnlib.chapters import CHAPTERS, Experiment, experiments, source
from attnlib.config import TrainConfig
from attnlib.pool import make_jobs
from attnlib.profiles import resolve_profile
from attnlib.run import parse_choice, plan_experiments
from booktools.paths import REPO

FIVE_SEEDS = resolve_profile("smoke", epochs=1, seeds=range(5))


def test_the_checks_use_the_first_seeds_and_change_one_thing():
    comparisons = experiments("00", FIVE_SEEDS)
    assert comparisons["main"].seeds(FIVE_SEEDS) == (0, 1, 2, 3, 4)
    assert comparisons["main"].seeds(FIVE_SEEDS, "AlexNet") == (0, 1, 2)  # a secondary arm
    assert comparisons["convergence"].seeds(FIVE_SEEDS) == (0, 1, 2, 3, 4)   # a shift of one seed's spread: every seed
    assert comparisons["precision"].seeds(FIVE_SEEDS) == (0, 1, 2, 3)
    jobs = make_jobs([comparisons["convergence"]], FIVE_SEEDS, TrainConfig(), FIVE_SEEDS.load())
    assert [j.seed for j in jobs] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4] and {j.config.epochs for j in jobs} == {2}
    # the longer IEBN is chapter 1's IEBN but for the epochs; the fp32 baseline is chapter 0's but for amp
    ch01_iebn = experiments("01", FIVE_SEEDS)["main"].variants[1]
    assert comparisons["convergence"].variants[1].spec() == {**ch01_iebn.spec(), "label": "IEBN, twice the epochs",
                                                              "train": {"epochs": 2}}
    baseline, fp32 = comparisons["precision"].variants
    assert baseline == comparisons["main"].variants[0]
    assert fp32.spec() == {**baseline.spec(), "label": "ResNet-20, fp32", "train": {"amp": "off"}}
    # chapter 1's longer comparison is the convergence check's pair on every seed: the same runs
    longer = experiments("01", FIVE_SEEDS)["longer"]
    assert longer.variants == comparisons["convergence"].variants and longer.seeds(FIVE_SEEDS) == (0, 1, 2, 3, 4)
    one = resolve_profile("smoke", seeds=[4])  # the precision check on a profile with fewer seeds: the profile's
    assert experiments("00", one)["precision"].seeds(one) == (4,)


def test_the_batch_noise_experiments_train_as_long_as_the_verdict_at_convergence():
    comparisons = experiments("01", FIVE_SEEDS)
    batch, noise, longer = comparisons["batch"], comparisons["noise"], comparisons["longer"]
    jobs = make_jobs([batch, noise, longer], FIVE_SEEDS, TrainConfig(), FIVE_SEEDS.load())
    assert {j.config.epochs for j in jobs} == {2 * FIVE_SEEDS.epochs}
    assert {j.config.batch_size for j in jobs} == {FIVE_SEEDS.batch_size}  # ghost batches: same SGD steps
    assert batch.seeds(FIVE_SEEDS) == noise.seeds(FIVE_SEEDS) == (0, 1, 2) and longer.seeds(FIVE_SEEDS) == (0, 1, 2, 3, 4)
    assert batch.train_subset is None and noise.train_subset is None  # the longer pair's data
    # the longer pair is their undisturbed arm: each disturbed arm is its longer network but for the disturbance
    plain = {v.spec()["norm"]: v.spec() for v in longer.variants if "norm" in v.spec()}
    attacked = next(v.spec() for v in noise.variants if v.label == "IEBN, noise 0.1")
    assert attacked == {**plain["iebn"], "label": "IEBN, noise 0.1", "norm": ("iebn", {"noise": 0.1})}
    grouped = next(v.spec() for v in batch.variants if v.label == "IEBN, groups of 16")
    assert grouped == {**plain["iebn"], "label": "IEBN, groups of 16", "norm": ("iebn", {"norm_batch": 16})}
    bn_grouped = next(v for v in batch.variants if v.label == "BN, groups of 16")
    assert bn_grouped.spec()["norm"] == ("bn", {"norm_batch": 16})


@pytest.mark.parametrize("stem", list(CHAPTERS))
def test_each_comparison_is_shown_as_a_table_of_its_variants(stem: str):
    for exp in experiments(stem, FIVE_SEEDS).values():
        table = exp.table(FIVE_SEEDS)
        rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| variant")]
        assert [row.split(" | ")[0][2:] for row in rows] == [v.label for v in exp.variants]
        assert len({v.label for v in exp.variants}) == len(exp.variants)
    assert source(stem).startswith(f"def {CHAPTERS[stem].__name__}(")


def test_a_chapters_source_shows_the_helpers_it_calls_and_no_others():
    shown = source("05")
    assert "def _longer(" in shown  # called by dynamic_conv itself
    assert "def _twice(" in shown  # called only by its nested twice_annealed
    assert "def _trained_for(" in shown  # called only by _twice
    assert "def _twice_the_epochs(" not in shown and "def _linear_lr(" not in shown


def test_a_layer_with_options_reads_as_the_command_line_writes_it():
    table = experiments("03", FIVE_SEEDS)["sweep"].table(FIVE_SEEDS)
    assert "| MABN b4 | resnet20 | norm=mabn(B=4), conv=cenconv |" in table
    assert parse_choice("mabn(B=4)") == ("mabn", {"B": 4})
    table = experiments("02", FIVE_SEEDS)["alexnet"].table(FIVE_SEEDS)
    assert "attention=ba(discard_output=True)" in table
    assert parse_choice("ba(discard_output=True)") == ("ba", {"discard_output": True})


def test_a_secondary_arm_trains_on_the_first_three_seeds_only():
    main = experiments("04", FIVE_SEEDS)["main"]
    assert main.seeds(FIVE_SEEDS, "NAM, weights not detached") == main.seeds(FIVE_SEEDS, "NAM + penalty 0.01") == (0, 1, 2)
    assert main.seeds(FIVE_SEEDS, "NAM") == main.seeds(FIVE_SEEDS) == (0, 1, 2, 3, 4)
    jobs = make_jobs([main], FIVE_SEEDS, TrainConfig(), FIVE_SEEDS.load())
    seeds_of = {v.label: [j.seed for j in jobs if j.variant.label == v.label] for v in main.variants}
    assert seeds_of["NAM, weights not detached"] == [0, 1, 2] and seeds_of["NAM"] == [0, 1, 2, 3, 4]
    assert ("Secondary arms, on seeds 0, 1, 2 only: NAM, weights not detached, NAM + penalty 0.0001, "
            "NAM + penalty 0.01.") in main.table(FIVE_SEEDS)
    assert "Secondary" not in main.table(resolve_profile("smoke"))  # three seeds: every arm has them all
    with pytest.raises(ValueError, match="secondary arms .'typo'. are not among its variants"):
        Experiment("x", main.variants[:1], secondary=("typo",))
    with pytest.raises(ValueError, match="control arms .'typo'. are not among its variants"):
        Experiment("x", main.variants[:1], controls=("typo",))


def test_one_arm_of_a_comparison_keeps_its_seeds():
    """`--plan 00:main:ResNet-20` trains the baseline alone; `--only AlexNet` its three seeds."""
    main = experiments("00", FIVE_SEEDS)["main"]
    assert main.only(["ResNet-20"]).secondary == () and main.only(["ResNet-20"]).seeds(FIVE_SEEDS) == (0, 1, 2, 3, 4)
    alexnet = main.only(["AlexNet"])
    assert [v.label for v in alexnet.variants] == ["AlexNet"] and alexnet.seeds(FIVE_SEEDS, "AlexNet") == (0, 1, 2)
    assert len(make_jobs([alexnet], FIVE_SEEDS, TrainConfig(), FIVE_SEEDS.load())) == 3
    nam = experiments("04", FIVE_SEEDS)["main"]
    assert nam.only(["NAM"]).controls == () and nam.only(["ResNet-20, branches x0.5"]).controls == nam.controls


def test_the_queue_plan_covers_every_run_the_book_executes():
    """`make queue` trains what `BOOK_PLAN` lists; a chapter arm left out of it would be trained
    inline (hours) when its chapter is executed under ``book``."""
    makefile = (REPO / "Makefile").read_text()
    plan = re.search(r"^BOOK_PLAN \?=((?:.*\\\n)*.*)$", makefile, re.M).group(1).replace("\\\n", " ").split()
    setup = resolve_profile("book")
    planned = {(item[:2], exp.name, v.label, seed) for item in plan for exp in plan_experiments([item], setup, {})
               for v in exp.variants for seed in exp.seeds(setup, v.label)}
    needed = {(stem[:2], exp.name, v.label, seed) for stem in CHAPTERS for exp in experiments(stem, setup).values()
              for v in exp.variants for seed in exp.seeds(setup, v.label)}
    assert needed - planned == set()
    assert len(plan) == len(set(plan))  # each item once


def _assert_only_the_epochs_doubled(short, twice, epochs: int) -> None:
    """Each variant of ``twice`` is its namesake in ``short`` trained for ``epochs``, nothing else changed."""
    by_label = {v.label: v for v in short.variants}
    for longer in twice.variants:
        shorter = by_label[longer.label.removesuffix(", twice the epochs")]
        assert longer.spec() == {**shorter.spec(), "label": longer.label, "train": {**shorter.train, "epochs": epochs}}


def test_the_mabn_paper_setting_trains_longer_and_its_check_twice_as_long():
    """Chapter 3's paper setting trains for paper_epoch_factor times the profile's epochs (2,000
    images make few steps an epoch); its check trains the baseline and headline pair again with
    twice those epochs and nothing else changed; the shorter runs add MABN with plain convolutions.
    The sweep trains as long on three seeds, so its BN at batch 32 is the paper setting's BN n32,
    one run."""
    comparisons = experiments("03", FIVE_SEEDS, paper_epoch_factor=3)
    paper, twice, sweep = comparisons["paper"], comparisons["convergence"], comparisons["sweep"]
    assert twice.seeds(FIVE_SEEDS) == (0, 1, 2) and paper.seeds(FIVE_SEEDS) == (0, 1, 2, 3, 4)
    assert {v.train["epochs"] for v in paper.variants} == {3 * FIVE_SEEDS.epochs}
    assert {v.train["epochs"] for v in sweep.variants} == {3 * FIVE_SEEDS.epochs}
    assert sweep.seeds(FIVE_SEEDS) == (0, 1, 2)
    _assert_only_the_epochs_doubled(paper, twice, 6 * FIVE_SEEDS.epochs)
    assert [v.label for v in twice.variants] == ["BN n2, twice the epochs", "BN n32, twice the epochs",
                                                 "MABN n2, twice the epochs"]
    shorter = comparisons["shorter"]
    assert [(v.label, v.train["epochs"]) for v in shorter.variants] == [
        (f"{label}, {epochs} epochs", epochs) for epochs in (1, 2)
        for label in ("BN n2", "BN n32", "MABN n2", "MABN n2, plain conv")]
    assert shorter.seeds(FIVE_SEEDS) == (0, 1, 2)
    data = FIVE_SEEDS.load()
    keys = {j.variant.label: j.key for j in make_jobs([paper, sweep, shorter], FIVE_SEEDS, TrainConfig(), data)
            if j.seed == 0}
    assert "BN b32" not in keys and "BN n32" in keys  # the paper's BN n32 and the sweep's BN b32: one run, listed once
    assert keys["BN n32, 1 epochs"] != keys["BN n32"]
    with pytest.raises(ValueError, match="paper_epoch_factor=0 is not allowed"):
        experiments("03", FIVE_SEEDS, paper_epoch_factor=0)


@pytest.mark.parametrize("chapter, headline", [("02", ["ResNet-20", "SE", "BA"]),
                                               ("04", ["ResNet-20", "ResNet-20, branches x0.5", "NAM"])])
def test_a_gated_headline_is_checked_at_twice_the_epochs_sharing_the_baselines_runs(chapter, headline):
    """Chapters 2 and 4 train their headline arms again with twice the epochs on three seeds,
    nothing else changed; the plain network's longer runs are the baseline chapter's, one run, on
    every seed, so that every chapter reads the baseline's longer mean over the same seeds."""
    comparisons = experiments(chapter, FIVE_SEEDS)
    main, longer = comparisons["main"], comparisons["longer"]
    assert [v.label for v in longer.variants] == [f"{label}, twice the epochs" for label in headline]
    assert [longer.seeds(FIVE_SEEDS, v.label) for v in longer.variants] == [(0, 1, 2, 3, 4)] + [(0, 1, 2)] * 2
    _assert_only_the_epochs_doubled(main, longer, 2 * FIVE_SEEDS.epochs)
    data = FIVE_SEEDS.load()
    jobs = make_jobs([experiments("00", FIVE_SEEDS)["convergence"], longer], FIVE_SEEDS, TrainConfig(), data)
    assert [j.variant.label for j in jobs if j.seed == 0] == [
        "ResNet-20, twice the epochs", "IEBN, twice the epochs", *(v.label for v in longer.variants[1:])]
    assert [j.variant.label for j in jobs if j.seed == 4] == ["ResNet-20, twice the epochs", "IEBN, twice the epochs"]


def test_the_dynamic_headline_has_the_matched_size_control_and_its_check_stretches_the_annealing():
    """Chapter 5's headline trains the twice-wide static network (about DY-ResNet-20's parameter
    count) on every seed; its longer runs double the epochs and the annealing with them, so the
    temperature still falls over the same tenth of the run."""
    setup = resolve_profile("smoke", epochs=20, seeds=range(5))
    comparisons = experiments("05", setup)
    main, longer = comparisons["main"], comparisons["longer"]
    assert [v.label for v in main.variants] == ["ResNet-20", "DY-ResNet-20", "ResNet-20 x2 wide"]
    assert all(main.seeds(setup, v.label) == (0, 1, 2, 3, 4) for v in main.variants)
    short_dy, long_dy = main.variants[1], longer.variants[1]
    assert (short_dy.callbacks[0].epochs, long_dy.callbacks[0].epochs) == (2, 4)
    assert long_dy.train["epochs"] == 40
    assert longer.seeds(setup, longer.variants[0].label) == (0, 1, 2, 3, 4) and longer.seeds(setup, long_dy.label) == (0, 1, 2)
    assert long_dy.spec()["conv"] == short_dy.spec()["conv"]
    assert "ResNet-20 x2 wide" not in {v.label for v in comparisons["ablations"].variants}
    thin, thin_longer = comparisons["widths"], comparisons["widths-longer"]
    assert [v.label for v in thin_longer.variants] == [f"{v.label}, twice the epochs" for v in thin.variants]
    assert thin_longer.seeds(setup) == thin.seeds(setup) == (0, 1, 2)
    for short, long in zip(thin.variants, thin_longer.variants):
        assert long.train["epochs"] == 40 and long.spec()["model_kwargs"] == short.spec()["model_kwargs"]
        assert [cb.epochs for cb in long.callbacks] == [2 * cb.epochs for cb in short.callbacks]
