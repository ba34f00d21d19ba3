"""Method against baseline, over several seeds, with one JSON record per run.

``compare(variants, profile)`` trains every :class:`Variant` with every seed of the
profile and writes ``<results_dir>/<variant>-seed<k>-<key>.json`` (history, run card,
test-set predictions) and the final weights beside it (``.pt``). Called again with the
same settings it loads the records instead of training; an interrupted run resumes
from its last epoch. The key hashes what decides the run (network, recipe, data, seed)
but not the label, so chapters sharing one results folder share their baselines.
"""
from __future__ import annotations

import collections
import copy
import functools
import json
import math
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from . import distributed
from .checkpoints import CorruptFileError, atomic_save, load_error_reason, read_on_main
from .config import TrainConfig
from .data import DeviceLoader, ImageDataset
from .devices import autocast, autocast_dtype, precision_name, resolve_device
from .files import atomic_write_text
from .history import NOT_RECORDED, History
from .models import count_parameters
from .profiles import Profile, resolve_profile
from .records import (RECORD_FORMAT, adopt_checkpoint, dataset_spec, find_record, read_record, read_weights,
                      record_stem, run_key, writable_folder)
from .runinfo import environment, footing_parts, software
from .significance import accuracy_difference, seed_std
from .train import evaluate, fit, predict, recompute_bn_statistics
from .variants import Variant, flops_per_image, run_config


BOOK_RECIPE = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4,
                          schedule="cosine", warmup_epochs=0.5)
"""The recipe every chapter trains with (the profile sets epochs and batch size): SGD with
Nesterov momentum, half an epoch of warm-up, then a cosine schedule. One recipe for the
whole book, so that chapters share their baselines (see :func:`run_key`)."""

PRECISE_BN_FOLDER = "precise-bn"
"""Where :meth:`Comparison.with_precise_statistics` keeps its measurements, inside the results folder."""


def run_one(variant: Variant, data: ImageDataset, config: TrainConfig, seed: int, *, profile: str,
            results_dir: Path, device: torch.device, progress: bool) -> tuple[dict, bool]:
    """Train one variant with one seed, or load its record. Returns (record, trained now).

    In a process group every rank calls it: rank 0 looks for the record and writes it, all
    ranks train together and return rank 0's record.
    """
    key = run_key(variant, data, config, seed)
    stem = record_stem(results_dir, variant, seed, key)
    found = find_record(results_dir, stem, seed, key) if distributed.is_main() else None
    record = read_on_main(lambda: read_record(found) if found is not None else None)
    if record is not None:
        record["label"], record["variant"] = variant.label, variant.spec()  # this chapter's name for it
        return record, False
    if distributed.is_main() and (adopted := adopt_checkpoint(stem, seed, key)) is not None:
        print(f"{variant.label} seed {seed}: resuming the checkpoint {adopted.name}, saved under another label")
    distributed.barrier()  # every rank resumes from the checkpoint the main one put in place
    text = _train_and_record(variant, data, config, seed, profile=profile, stem=stem, key=key, device=device,
                             progress=progress)
    return json.loads(distributed.from_main(text)), True  # exactly what a later call loads


def _train_and_record(variant: Variant, data: ImageDataset, config: TrainConfig, seed: int, *,
                      profile: str, stem: Path, key: str, device: torch.device, progress: bool) -> str | None:
    """Train; rank 0 writes the weights and the record and returns the record's JSON text."""
    record_path, weights_path = stem.with_suffix(".json"), stem.with_suffix(".pt")
    model = variant.build(data, seed)
    flops = flops_per_image(model, data)  # the first forward: sizes lazily built layers
    params = count_parameters(model)
    callbacks = [copy.deepcopy(cb) for cb in variant.callbacks]
    card = environment(device)  # the code and machine that start the run
    history = fit(model, data, config, seed=seed, device=device, callbacks=callbacks,
                  checkpoint=stem.with_suffix(".ckpt"), resume=True, progress=progress,
                  desc=f"{variant.label} s{seed}")
    wall = sum(history.epoch_time)  # every epoch's training and evaluation, across interruptions
    if not distributed.is_main():
        return None
    if (other := find_record(stem.parent, stem, seed, key)) is not None:
        # another process or machine finished the same run meanwhile (a GPU queue's records
        # unpacked here): keep the record that came first, with its weights
        print(f"{variant.label} seed {seed}: {other.name} appeared while this run trained; keeping it")
        stem.with_suffix(".ckpt").unlink(missing_ok=True)
        return json.dumps(read_record(other))
    predictions = predict(model, data, device=device, amp=config.amp)
    atomic_save(model.state_dict(), weights_path)
    record = {
        "format": RECORD_FORMAT, "label": variant.label, "variant": variant.spec(), "seed": seed,
        "weights": weights_path.name,
        "profile": profile, "dataset": dataset_spec(data), "config": asdict(config),
        "history": history.to_dict(), "params": params, "flops_per_image": flops,
        "final_test_acc": history.test_acc[-1], "best_test_acc": max(history.test_acc),
        "predictions": predictions.tolist(),
        "run_card": {**card, "precision": precision_name(autocast_dtype(config.amp, device)),
                     "wall_time_s": round(wall, 1), "processes": distributed.world_size(),
                     "epochs_by_footing": dict(collections.Counter(history.footing))},
    }
    text = json.dumps(record)
    atomic_write_text(record_path, text)
    stem.with_suffix(".ckpt").unlink(missing_ok=True)
    return text


@dataclass
class Comparison:
    """The records of one ``compare`` call, grouped by variant label (in the given order)."""

    variants: list[Variant]
    records: list[dict]
    data: ImageDataset
    profile: Profile
    results_dir: Path
    trained_now: int = 0
    wall_time_s: float = 0.0

    @property
    def labels(self) -> list[str]:
        return [v.label for v in self.variants]

    def joined(self, other: Comparison) -> Comparison:
        """One comparison of this one's arms and ``other``'s, to compare arms trained by two
        experiments: they must be tested on the same images under the same profile."""
        same_test = (self.data is other.data or (self.data.name == other.data.name
                                                  and torch.equal(self.data.test_labels, other.data.test_labels)))
        if self.profile.name != other.profile.name or not same_test:
            raise ValueError(f"cannot join {self.labels} and {other.labels}: they were not tested on the same "
                             f"images under the same profile ({self.profile.name!r}, {other.profile.name!r})")
        if set(self.labels) & set(other.labels):
            raise ValueError(f"cannot join {self.labels} and {other.labels}: they share labels")
        return replace(self, variants=[*self.variants, *other.variants], records=[*self.records, *other.records])

    def relabeled(self, labels: Mapping[str, str]) -> Comparison:
        """The same runs under other labels (``labels`` maps old to new; the rest keep theirs):
        to read a longer experiment as the shorter side of a further check."""
        new = {v.label: labels.get(v.label, v.label) for v in self.variants}
        if len(set(new.values())) != len(new):
            raise ValueError(f"relabeling {self.labels} with {dict(labels)} gives two variants one label")
        return replace(self, variants=[replace(v, label=new[v.label]) for v in self.variants],
                       records=[{**r, "label": new[r["label"]]} for r in self.records])

    def on_seeds(self, seeds: Iterable[int]) -> Comparison:
        """These runs on ``seeds`` only: to compare arms on the seeds they share."""
        seeds = set(seeds)
        if lacking := [label for label in self.labels if not seeds <= {r["seed"] for r in self.runs(label)}]:
            raise ValueError(f"{lacking} lack some of the seeds {sorted(seeds)}: compare on seeds every arm has")
        return replace(self, records=[r for r in self.records if r["seed"] in seeds])

    def runs(self, label: str) -> list[dict]:
        return [r for r in self.records if r["label"] == label]

    def histories(self, label: str) -> list[History]:
        return [History.from_dict(r["history"]) for r in self.runs(label)]

    def variant(self, label: str) -> Variant:
        return next(v for v in self.variants if v.label == label)

    def model(self, label: str, seed: int | None = None) -> nn.Module:
        """The trained network of ``label`` (first seed by default), in eval mode on the CPU."""
        variant = self.variant(label)
        record = next(r for r in self.runs(label) if seed is None or r["seed"] == seed)
        model = variant.build(self.data, record["seed"])
        path = self.results_dir / record["weights"]
        if not path.exists():
            raise FileNotFoundError(
                f"the weights of {label!r} seed {record['seed']} ({path}) are not here: git keeps the "
                "weights of seed 0 only. python -m attnlib.run --restore-weights, with the chapter and profile "
                f"and --results-dir {self.results_dir}, trains the run again and puts its weights beside the "
                "record once it repeats the record exactly.")
        model.load_state_dict(read_weights(path, f"{label!r} seed {record['seed']}"))
        return model.eval()

    def with_precise_statistics(self, labels: Sequence[str] | None = None, *, device: str = "auto") -> Comparison:
        """These runs with the final test accuracy of ``labels`` (every variant by default) measured
        again after :func:`~attnlib.train.recompute_bn_statistics` over the training images: what the
        trained weights do, without what the running statistics picked up in training (their lag,
        or an attack's disturbances carried in from earlier layers). Histories and predictions stay
        training's. Each measurement is saved in ``results_dir/precise-bn/`` and read from there
        again, so a run's weights are needed only once (git keeps seed 0's)."""
        chosen = set(labels or self.labels)
        if unknown := chosen - set(self.labels):
            raise ValueError(f"no variant {sorted(unknown)} in this comparison: its variants are {self.labels}")
        trained_on = dataset_spec(self.data)["sha1"]
        if any(r["dataset"]["sha1"] != trained_on for r in self.records if r["label"] in chosen):
            raise ValueError(f"some runs of {sorted(chosen)} were trained on other images than this comparison's "
                             f"data ({self.data.name}): their statistics cannot be recomputed from it")
        device = resolve_device(device)
        return replace(self, records=[{**r, "final_test_acc": self._precise_accuracy(r, device)}
                                      if r["label"] in chosen else r for r in self.records])

    def _precise_accuracy(self, record: dict, device: torch.device) -> float:
        """``record``'s test accuracy with recomputed statistics, measured once and then read back."""
        path = self.results_dir / PRECISE_BN_FOLDER / Path(record["weights"]).with_suffix(".json").name
        if path.exists():
            try:
                return float(json.loads(path.read_text())["test_acc"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise CorruptFileError(f"the measurement {path} cannot be read ({load_error_reason(err)}): delete "
                                       "it, and the next call measures the run again from its weights") from err
        model = self.model(record["label"], record["seed"]).to(device)
        amp_dtype = autocast_dtype(record["config"]["amp"], device)
        images = functools.partial(DeviceLoader, mean=self.data.mean, std=self.data.std, device=device)
        with autocast(device, amp_dtype):
            recompute_bn_statistics(model, images(self.data.train_images, self.data.train_labels,
                                                  batch_size=record["config"]["batch_size"]))
        loss, accuracy = evaluate(model, images(self.data.test_images, self.data.test_labels, batch_size=1000),
                                  amp_dtype)
        atomic_write_text(path, json.dumps({
            "run": record["weights"], "label": record["label"], "seed": record["seed"],
            "test_acc": float(accuracy), "test_loss": float(loss), "device": str(device),
            "precision": precision_name(amp_dtype), "software": software()}))
        return float(accuracy)

    def mean_curve(self, label: str, key: str = "test_acc") -> torch.Tensor:
        """``label``'s history ``key`` per epoch, averaged over its seeds; accuracies in points."""
        curves = torch.tensor([r["history"][key] for r in self.runs(label)], dtype=torch.float64)
        return curves.mean(0) * (100 if key.endswith("_acc") else 1)

    def curves_apart(self, labels: Sequence[str] | None = None) -> torch.Tensor:
        """Per epoch, how far apart the mean test-accuracy curves of ``labels`` (every variant by
        default) lie: the highest minus the lowest, in points."""
        curves = torch.stack([self.mean_curve(label) for label in (labels or self.labels)])
        return curves.max(0).values - curves.min(0).values

    def together_from(self, labels: Sequence[str] | None = None, within: float = 0.5) -> int | None:
        """The first epoch (counted from 1) from which the mean test curves of ``labels`` stay within
        ``within`` points of one another to the end; None if they end further apart."""
        apart = self.curves_apart(labels)
        return next((epoch + 1 for epoch in range(len(apart)) if (apart[epoch:] < within).all()), None)

    def final_move(self, labels: Sequence[str] | None = None, epochs: int = 1, key: str = "test_acc") -> float:
        """The largest change, in points, of a variant's mean test accuracy (or history ``key``)
        over seeds during its last ``epochs`` epochs: near 0 when the curves have flattened, large
        while the networks still learn; NaN when a run has no more epochs than that."""
        moves = []
        for label in labels or self.labels:
            mean = self.mean_curve(label, key)
            moves.append((mean[-1] - mean[-1 - epochs]).abs().item() if len(mean) > epochs else math.nan)
        return math.nan if any(math.isnan(m) for m in moves) else max(moves)

    def seed_ranges(self, labels: Sequence[str] | None = None) -> dict:
        """The final test accuracies of ``labels`` (every label by default) as ranges over their seeds:
        ``ranges``, per label the (lowest, highest) in points; ``overlap``, whether one value lies in
        every range, so that no network is ahead of the others on every seed; ``text``, both in a
        phrase."""
        ranges = {}
        for label in labels or self.labels:
            finals = [100 * r["final_test_acc"] for r in self.runs(label)]
            ranges[label] = (min(finals), max(finals))
        overlap = max(low for low, _ in ranges.values()) < min(high for _, high in ranges.values())
        text = "; ".join(f"{label} {low:.2f}-{high:.2f} %" for label, (low, high) in ranges.items()) + (
            ": one range holds a seed of every network, so none is ahead of the others on every seed" if overlap
            else ": the ranges do not all overlap")
        return {"ranges": ranges, "overlap": overlap, "text": text}

    def shared_mistakes(self, label: str, other: str, *, nth: tuple[int, int] = (0, 0)) -> tuple[int, int]:
        """(test images that ``label`` or ``other`` gets wrong, those both get wrong): the ``nth`` run of
        each, its first seed by default. ``shared_mistakes(a, a, nth=(0, 1))`` compares two seeds of one
        network, the yardstick for what two networks share."""
        runs = [self.runs(name) for name in (label, other)]
        missing = [f"{name!r} has {len(r)}" for name, r, n in zip((label, other), runs, nth) if n >= len(r)]
        if missing:
            raise ValueError(f"No run at position {nth} ({'; '.join(missing)} runs): ask for a run each network has.")
        wrong = [torch.tensor(r[n]["predictions"]) != self.data.test_labels for r, n in zip(runs, nth)]
        return int((wrong[0] | wrong[1]).sum()), int((wrong[0] & wrong[1]).sum())

    def mistake_overlap(self, label: str, other: str, *, names: tuple[str, str] | None = None) -> dict:
        """How alike two networks' mistakes are, beside the yardstick of two seeds of one network:
        ``either``, the test images that ``label`` or ``other`` (first seed of each) gets wrong;
        ``between``, the share of those that both get wrong; ``within``, per network, the same share
        for its first two seeds.

        ``relation`` reads ``between`` against the yardsticks: "less often than" when it lies more
        than two standard errors below both, "more often than" when more than two above both,
        "about as often as" otherwise. Each share is a proportion of a few hundred images, so its
        standard error is binomial, and the error of a gap adds the two in quadrature (the two
        shares count one run in common, so this overstates the error and leans to "about as
        often"); one pair of seeds per network, so this is the noise of the images, not of the
        seeds. ``text`` says it all in a phrase, calling the networks by ``names`` (their labels by
        default)."""
        either, both = self.shared_mistakes(label, other)
        between = both / either
        within, gaps = {}, []
        for name in (label, other):
            any_seed, both_seeds = self.shared_mistakes(name, name, nth=(0, 1))
            within[name] = share = both_seeds / any_seed
            se = math.sqrt(between * (1 - between) / either + share * (1 - share) / any_seed)
            gap = between - share
            gaps.append(gap / se if se else math.copysign(math.inf, gap) if gap else 0.0)  # se 0: shares of 0 or 1
        relation = ("less often than" if max(gaps) < -2 else "more often than" if min(gaps) > 2
                    else "about as often as")
        first, second = names or (label, other)
        text = (f"of the {either:,} test images that {first} or {second} (seed 0 of each) gets wrong, "
                f"{100 * between:.0f} % are wrong for both; seeds 0 and 1 of one network share "
                f"{100 * within[label]:.0f} % of theirs for {first} and {100 * within[other]:.0f} % for {second}: "
                f"the two networks fail on the same images {relation} two seeds of one network do")
        return {"either": either, "between": between, "within": within, "relation": relation, "text": text}

    def confusion(self, label: str) -> torch.Tensor:
        """Counts ``[true class, predicted class]`` of ``label``'s test predictions, summed over seeds."""
        truth, k = self.data.test_labels, self.data.num_classes
        counts = torch.zeros(k * k, dtype=torch.long)
        for run in self.runs(label):
            counts += torch.bincount(truth * k + torch.tensor(run["predictions"]), minlength=k * k)
        return counts.view(k, k)

    def summary(self) -> list[dict]:
        """One row per variant: accuracy mean/std over seeds and cost, speed relative to the first."""
        rows = []
        for label in self.labels:
            runs = self.runs(label)
            final = [r["final_test_acc"] for r in runs]
            best = [r["best_test_acc"] for r in runs]
            rows.append({
                "label": label, "seeds": len(runs),
                "final_mean": statistics.fmean(final), "final_std": seed_std(final),
                "best_mean": statistics.fmean(best), "best_std": seed_std(best),
                "params": runs[0]["params"], "flops_per_image": runs[0]["flops_per_image"],
                "train_images_per_s": statistics.median(steady_pace(r, "train_images_per_s") for r in runs),
                "eval_images_per_s": statistics.median(steady_pace(r, "eval_images_per_s") for r in runs),
                "footing": common_footing(runs),
            })
        base = rows[0]
        for row in rows:
            row["delta_mean"] = row["final_mean"] - base["final_mean"]
            comparable = row["footing"] is not None and row["footing"] == base["footing"]
            for key in ("train", "eval"):
                row[f"{key}_speed_vs_first"] = (row[f"{key}_images_per_s"] / base[f"{key}_images_per_s"]
                                                if comparable else math.nan)
        return rows

    def run_card(self) -> dict:
        """What was run, where, with which code: merged over the records."""
        cards = [r["run_card"] for r in self.records]
        epochs = [e for r in self.records for e in epoch_cards(r)]
        merged = {k: ("; " if k == "device" else ", ").join(sorted({str(e.get(k, NOT_RECORDED)) for e in epochs}))
                  for k in ("device", "precision", "python", "torch", "torchvision", "attnlib", "git_commit")}
        config = self.records[0]["config"]
        mixed = [f for c in cards if len(set(f := c.get("epochs_by_footing", {})) - {NOT_RECORDED}) > 1]
        if mixed:
            where = sum(map(collections.Counter, mixed), collections.Counter())
            merged["resumed elsewhere"] = (
                f"{len(mixed)} of {len(cards)} runs changed device, threads or precision mid-run; their epochs ran "
                "on " + "; ".join(f"{footing} ({n})" for footing, n in where.most_common()))
        return {
            "dataset": self.data.describe(), "profile": self.profile.name,
            "epochs": config["epochs"], "batch size": config["batch_size"],
            "seeds": ", ".join(str(s) for s in self.profile.seeds),
            "variants": ", ".join(self.labels), **merged,
            "training wall time": f"{sum(c['wall_time_s'] for c in cards) / 60:.1f} min over "
                                  f"{len(cards)} runs ({self.trained_now} trained now, "
                                  f"{len(cards) - self.trained_now} loaded from {self.results_dir})",
        }


def epoch_cards(record: dict) -> list[dict[str, str]]:
    """Where and with which code each epoch of ``record`` trained: the device and precision of its
    footing and the versions (:func:`~attnlib.runinfo.software`) of its history. Where a history
    does not say (written before it was kept), the run card's, which are the finishing process's,
    for the epochs on that process's footing, and nothing (so "not recorded") for the others, but
    fp32 for a run whose recipe turns autocast off."""
    history = History.from_dict(record["history"])
    card, last = record["run_card"], history.footing[-1] if history.footing else NOT_RECORDED
    recipe = {"precision": precision_name(None)} if record["config"].get("amp") == "off" else {}
    return [{**recipe, **(card if footing == last else footing_parts(footing)), **versions}
            for versions, footing in zip(history.software, history.footing)]


def _steady_epochs(values: list) -> list:
    """The epochs after the first (which pays one-off warm-up costs), or the only one."""
    return values[1:] if len(values) > 1 else values


def steady_pace(record: dict, key: str) -> float:
    """A record's pace in ``key`` (images per second): the fastest of its steady epochs. Other work
    on the machine only slows an epoch down, so the fastest is the nearest to the network's own
    pace (a benchmark's best of N); a median would also measure how busy the machine was while
    the run trained, which for the book's hour-long runs on a shared CPU varies from run to run."""
    return max(_steady_epochs(record["history"][key]))


def common_footing(records: Iterable[dict]) -> str | None:
    """The one footing (device, threads, precision) every steady epoch of ``records`` ran
    on, or None if they ran on several or one of them did not record it. Images per second
    measured on different footings do not compare: a bf16 CPU, another thread count or a
    busier machine moves them more than most layers do."""
    footings = {f for r in records for f in _steady_epochs(History.from_dict(r["history"]).footing)}
    return next(iter(footings)) if len(footings) == 1 and NOT_RECORDED not in footings else None


def compare(variants: Sequence[Variant], profile: str | Profile = "quick", *, recipe: TrainConfig | None = None,
            dataset: str | None = None, epochs: int | None = None, seeds=None, data: ImageDataset | None = None,
            results_dir: str | Path = "results", device: str = "auto", progress: bool = True,
            seed_counts: Mapping[str, int] | None = None) -> Comparison:
    """Train (or load) every variant with every seed of ``profile``.

    ``recipe`` is the chapter's base :class:`TrainConfig`; the profile sets its epochs and
    batch size unless the variant's ``train`` overrides them. ``seed_counts`` gives arms
    that take only the first n seeds (``{"BA, official bottleneck": 3}``: a secondary arm).
    """
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise ValueError(f"variant labels must be unique, got {labels}")
    seed_counts = dict(seed_counts or {})
    if unknown := set(seed_counts) - set(labels):
        raise ValueError(f"seed_counts names {sorted(unknown)}, which are not among the variants {labels}")
    profile = resolve_profile(profile, dataset=dataset, epochs=epochs, seeds=seeds)
    data = data if data is not None else profile.load()
    results_dir = writable_folder(results_dir)
    device = resolve_device(device)
    records, trained, start = [], 0, time.perf_counter()
    for variant in variants:
        config = run_config(recipe, profile, variant)
        for seed in profile.seeds[:seed_counts.get(variant.label)]:
            record, fresh = run_one(variant, data, config, seed, profile=profile.name,
                             results_dir=results_dir, device=device, progress=progress)
            trained += fresh
            if distributed.is_main():
                print(f"{variant.label:>24s}  seed {seed}: final test acc {record['final_test_acc']:.4f}"
                      f"  ({'trained in' if fresh else 'loaded, trained in'} "
                      f"{record['run_card']['wall_time_s']:.0f} s)")
            records.append(record)
    return Comparison(list(variants), records, data, profile, results_dir, trained,
                      time.perf_counter() - start)


def difference(cmp: Comparison, label: str, baseline: str) -> dict:
    """Final-accuracy difference ``label - baseline`` in points, with its noise.

    ``se`` is the standard error of the difference of two means (seeds are independent);
    the difference is called *within noise* when it is smaller than two standard errors,
    which is a rough 95 % criterion with few seeds, not a significance test. ``p_value`` is
    the exact permutation test (:func:`permutation_p_value`), which does not trust the
    seeds' spread. ``verdict`` says it in words for a sentence "label is <verdict> baseline";
    ``brief`` gives the numbers for the brackets after it.
    """
    a = [100 * r["final_test_acc"] for r in cmp.runs(label)]
    b = [100 * r["final_test_acc"] for r in cmp.runs(baseline)]
    d = accuracy_difference(a, b)
    delta, se, within, p, p_min = d["delta"], d["se"], d["within_noise"], d["p_value"], d["p_min"]
    verdict = "indistinguishable from" if within else ("better than" if delta > 0 else "worse than")
    return {**d, "verdict": verdict,
            "brief": f"{delta:+.2f} ± {se:.2f} points, p = {p:.2g}, at least {p_min:.2g} with these seeds",
            "text": f"{label} vs {baseline}: {delta:+.2f} points (standard error {se:.2f}; "
                    f"{'within' if within else 'outside'} two standard errors "
                    f"over {len(a)} and {len(b)} seeds; permutation p = {p:.3g}, the smallest "
                    f"attainable with these seeds being {p_min:.2g})"}


def learning_state(cmp: Comparison, labels: Sequence[str] | None = None, tolerance: float = 0.3) -> tuple[bool, str]:
    """Have the curves of ``labels`` flattened by the end of their runs? True when no variant's mean
    test accuracy moved by ``tolerance`` points or more in the last epoch; and a phrase saying so."""
    move = cmp.final_move(labels)
    if math.isnan(move):
        return False, "the runs have a single epoch, so whether their curves flattened cannot be seen"
    flat = move < tolerance
    return flat, (f"in the last epoch no mean test accuracy moved by more than {move:.2f} points: "
                  + ("the curves have flattened" if flat else "the networks are still learning"))


def convergence_check(cmp: Comparison, label: str, longer: Comparison, longer_label: str) -> dict:
    """Has ``label`` converged? Compares its final-epoch test accuracy with the same network
    trained with twice the epochs (``longer_label`` in ``longer``).

    Converged: the longer runs move the mean by less than one standard deviation of
    ``label``'s seeds (the seed-to-seed noise any single comparison already carries).
    Each mean is over every seed its length has, not only the seeds both lengths share: a
    seed's run at twice the epochs follows another learning-rate schedule from the first step,
    and in the book's records its deviation from its mean is uncorrelated with the shorter
    run's, so pairing seeds would only drop runs. Values in percentage points.
    """
    a = [100 * r["final_test_acc"] for r in cmp.runs(label)]
    b = [100 * r["final_test_acc"] for r in longer.runs(longer_label)]
    shift, spread = statistics.fmean(b) - statistics.fmean(a), seed_std(a)
    converged = abs(shift) < spread
    epochs = (cmp.runs(label)[0]["config"]["epochs"], longer.runs(longer_label)[0]["config"]["epochs"])
    return {"mean": statistics.fmean(a), "longer_mean": statistics.fmean(b), "shift": shift,
            "seed_std": spread, "converged": converged, "epochs": epochs,
            "text": f"{epochs[1]} epochs instead of {epochs[0]} move the mean by {shift:+.2f} points "
                    f"({statistics.fmean(a):.2f} -> {statistics.fmean(b):.2f} %, {len(a)} and {len(b)} seeds): "
                    f"{'less' if converged else 'more'} than one seed standard deviation ({spread:.2f}), "
                    f"so the {epochs[0]}-epoch runs {'have converged' if converged else 'are still improving'}"}


def difference_check(cmp: Comparison, pair: tuple[str, str], longer: Comparison, longer_pair: tuple[str, str]) -> dict:
    """Does a verdict depend on where training stops? Compares the difference ``method -
    baseline`` of ``pair`` in ``cmp`` with the same difference trained twice as long
    (``longer_pair`` in ``longer``).

    Stable: the two differences agree within two standard errors of their change, the
    errors of the two differences added in quadrature (their runs are independent draws).
    A stable difference can still cross the two-standard-error line of :func:`difference`, so
    ``same_verdict`` says whether the verdict (better, worse, indistinguishable) is the same at
    both lengths. Values in percentage points.
    """
    short, long = difference(cmp, *pair), difference(longer, *longer_pair)
    change = long["delta"] - short["delta"]
    se = math.hypot(short["se"], long["se"])
    stable = abs(change) < 2 * se
    same_verdict = short["verdict"] == long["verdict"]
    epochs = (cmp.runs(pair[0])[0]["config"]["epochs"], longer.runs(longer_pair[0])[0]["config"]["epochs"])
    verdicts = (f"the verdict is '{short['verdict']}' at both lengths" if same_verdict else
                f"the verdict moves from '{short['verdict']}' to '{long['verdict']}'"
                + (": the difference sits near the line between those verdicts, two standard errors from 0, "
                   "and crosses it by less than its noise" if stable else ""))
    return {"pair": pair, "delta": short["delta"], "longer_delta": long["delta"], "change": change, "se": se,
            "stable": stable, "same_verdict": same_verdict, "epochs": epochs, "short": short, "long": long,
            "text": f"{pair[0]} - {pair[1]}: {short['delta']:+.2f} points after {epochs[0]} epochs "
                    f"({len(cmp.runs(pair[0]))} and {len(cmp.runs(pair[1]))} seeds), {long['delta']:+.2f} after "
                    f"{epochs[1]} ({len(longer.runs(longer_pair[0]))} and {len(longer.runs(longer_pair[1]))} "
                    f"seeds): a change of {change:+.2f}, {'within' if stable else 'outside'} two standard "
                    f"errors (one is {se:.2f}), so the difference {'does not depend' if stable else 'depends'} on "
                    f"where training stops; {verdicts}"}


def verdict_settled(convergence: dict, stability: dict) -> bool:
    """Is a method's verdict against its baseline where training ends? Yes when the method has
    converged (``convergence``, from :func:`convergence_check`) or its difference from the
    baseline moved less than two standard errors with twice the epochs (``stability``, from
    :func:`difference_check`), and the verdict is the same at both lengths."""
    return (convergence["converged"] or stability["stable"]) and stability["same_verdict"]


TWICE_THE_EPOCHS = "twice the epochs"
"""What a chapter's ``longer`` experiments add to a label: ``"BA"`` trained with twice the
epochs is ``"BA, twice the epochs"`` (see :func:`longer_reading`)."""
FOUR_TIMES_THE_EPOCHS = "four times the epochs"
"""The same for the check of a ``longer`` experiment in its turn: ``"BA, four times the epochs"``."""


@dataclass(frozen=True)
class LongerReading:
    """What training twice as long says about a chapter's verdicts (made by :func:`longer_reading`):
    ``moved`` holds a :func:`convergence_check` per network, ``stability`` a :func:`difference_check`
    per ``(method, baseline)`` pair."""

    moved: dict[str, dict]
    stability: dict[tuple[str, str], dict]

    def settled(self, pair: tuple[str, str] | None = None) -> bool:
        """Is the verdict of ``pair`` (of every pair, by default) where training ends? See
        :func:`verdict_settled`."""
        pairs = [pair] if pair else list(self.stability)
        return all(verdict_settled(self.moved[method], self.stability[(method, baseline)])
                   for method, baseline in pairs)

    @property
    def text(self) -> str:
        """Every check's sentence, the networks' first, then the pairs'."""
        return "; ".join([f"for {label}, {check['text']}" for label, check in self.moved.items()]
                         + [check["text"] for check in self.stability.values()])

    def answer(self, pair: tuple[str, str]) -> str:
        """Which verdict of ``pair`` to read, said in a clause: the shorter runs' when it is
        settled (named, with its numbers); both when the difference holds but sits on the line
        between two verdicts; else the longer runs', with the caveat that no run longer still
        has checked those."""
        check = self.stability[pair]
        (short_epochs, epochs), shorter, longer = check["epochs"], check["short"], check["long"]
        if self.settled(pair):
            return (f"after {short_epochs} epochs {pair[0]} is {shorter['verdict']} {pair[1]} ({shorter['brief']}), "
                    f"and the verdict is the same after {epochs}, so it does not depend on where the schedule stops")
        if check["stable"]:
            return (f"from {short_epochs} to {epochs} epochs the difference moves less than its noise "
                    f"({check['delta']:+.2f} points, then {check['longer_delta']:+.2f}) "
                    f"but sits on the line between two verdicts: {pair[0]} is {shorter['verdict']} {pair[1]} after "
                    f"{short_epochs} epochs ({shorter['brief']}) and {longer['verdict']} it after {epochs} "
                    f"({longer['brief']})")
        return (f"trained for {epochs} epochs, {pair[0]} is {longer['verdict']} {pair[1]} ({longer['brief']}), the "
                f"verdict to read: it moves with the length of training (whether {epochs} epochs are "
                "enough, no longer run has checked)")


def longer_reading(cmp: Comparison, longer: Comparison, pairs: Sequence[tuple[str, str]], *,
                   suffix: str = TWICE_THE_EPOCHS) -> LongerReading:
    """Reads a twice-the-epochs check: whether each network of ``pairs`` (``(method, baseline)``
    labels of ``cmp``) has converged, and whether each pair's difference depends on where
    training stops. ``longer`` holds the same networks trained twice as long, labelled
    ``"<label>, <suffix>"``."""
    labels = list(dict.fromkeys([method for method, _ in pairs] + [baseline for _, baseline in pairs]))
    twice = {label: f"{label}, {suffix}" for label in labels}
    missing = [label for label in twice.values() if label not in longer.labels]
    if missing:
        raise ValueError(f"The longer comparison has no {', '.join(map(repr, missing))} (it holds "
                         f"{', '.join(map(repr, longer.labels))}): pass the experiment that trains the "
                         f"pairs' networks with twice the epochs.")
    return LongerReading({label: convergence_check(cmp, label, longer, twice[label]) for label in labels},
                         {pair: difference_check(cmp, pair, longer, (twice[pair[0]], twice[pair[1]])) for pair in pairs})
