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
import hashlib
import itertools
import json
import math
import os
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .benchmark import count_flops
from . import distributed
from .data import ImageDataset
from .files import atomic_write_text
from .models import build_model, count_parameters
from .profiles import Profile, resolve_profile
from .runinfo import environment
from .train import (LOAD_ERRORS, NOT_RECORDED, Callback, CorruptFileError, History, TrainConfig, atomic_save,
                    autocast_dtype, fit, load_error_reason, precision_name, predict, read_on_main, resolve_device)

RECORD_FORMAT = 2

SYNC_BN = "syncbn"
"""The ``norm`` of a :class:`Variant` that is the plain-BN network with every BatchNorm
converted by ``nn.SyncBatchNorm.convert_sync_batchnorm``: under DistributedDataParallel on
GPUs its batch statistics are those of the global batch; in one process it is plain BN."""

BOOK_RECIPE = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4,
                          schedule="cosine", warmup_epochs=0.5)
"""The recipe every chapter trains with (the profile sets epochs and batch size): SGD with
Nesterov momentum, half an epoch of warm-up, then a cosine schedule. One recipe for the
whole book, so that chapters share their baselines (see :func:`run_key`)."""


@dataclass(frozen=True)
class Variant:
    """One arm of a comparison: a network, its parts, and changes to the recipe.

    ``train`` overrides :class:`TrainConfig` fields for this variant only (for example a
    smaller ``batch_size``); ``callbacks`` are copied fresh for every run, and their
    ``repr`` is part of the record key, so give them a readable dataclass repr.
    """

    label: str
    model: str = "resnet20"
    norm: str = "bn"
    conv: str = "conv"
    attention: str | None = None
    model_kwargs: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    callbacks: tuple[Callback, ...] = ()

    def build(self, data: ImageDataset, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        norm = "bn" if self.norm == SYNC_BN else self.norm
        model = build_model(self.model, num_classes=data.num_classes, in_channels=data.in_channels,
                            norm=norm, conv=self.conv, attention=self.attention, **self.model_kwargs)
        return nn.SyncBatchNorm.convert_sync_batchnorm(model) if self.norm == SYNC_BN else model

    def spec(self) -> dict:
        d = asdict(self)
        d["callbacks"] = [repr(cb) for cb in self.callbacks]
        return d


def flops_per_image(model: nn.Module, data: ImageDataset) -> int:
    """Forward FLOPs for one image of ``data`` (a multiply-add counts 2), counted in eval mode."""
    return count_flops(model, (data.in_channels, data.image_size, data.image_size))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _dataset_spec(data: ImageDataset) -> dict:
    fingerprint = hashlib.sha1()
    for t in (data.train_images, data.train_labels, data.test_images, data.test_labels):
        fingerprint.update(t.contiguous().numpy().tobytes())
    return {"name": data.name, "train_images": len(data.train_labels),
            "test_images": len(data.test_labels), "in_channels": data.in_channels,
            "image_size": data.image_size, "classes": list(data.classes),
            "sha1": fingerprint.hexdigest()}


def run_key(variant: Variant, data: ImageDataset, config: TrainConfig, seed: int) -> str:
    """A hash of everything that decides the training run: the network, the effective
    recipe, the data and the seed. The label only names the run and ``train`` is already
    folded into ``config``, so both are left out: chapters that train the same network the
    same way share one record."""
    spec = {k: v for k, v in variant.spec().items() if k not in ("label", "train")}
    fields = {"format": RECORD_FORMAT, "variant": spec, "data": _dataset_spec(data), "config": asdict(config),
              "seed": seed}
    if variant.attention not in (None, "none"):
        # attention modules are initialised on their own random stream since 2026-11-30, which
        # changed these networks' initial weights: their earlier records are another run
        fields["attention_init"] = "side-stream"
    blob = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def record_stem(results_dir: Path, variant: Variant, seed: int, key: str) -> Path:
    """Where a run's files go: ``<results_dir>/<label>-seed<k>-<key>`` + ``.json``, ``.pt``, ``.ckpt``."""
    return results_dir / f"{_slug(variant.label)}-seed{seed}-{key}"


def run_config(recipe: TrainConfig | None, profile: Profile, variant: Variant) -> TrainConfig:
    """The recipe one variant trains with: ``recipe``, the profile's epochs and batch size,
    then the variant's own ``train`` changes."""
    base = (recipe or TrainConfig()).replace(epochs=profile.epochs, batch_size=profile.batch_size)
    return base.replace(**variant.train)


def find_record(results_dir: Path, stem: Path, seed: int, key: str) -> Path | None:
    """This run's record, saved under this label or any other. Its weights may be absent
    (git keeps only seed 0's): :meth:`Comparison.model` says so when it needs them."""
    candidates = [stem.with_suffix(".json"), *sorted(results_dir.glob(f"*-seed{seed}-{key}.json"))]
    return next((p for p in candidates if p.exists()), None)


def read_record(path: Path) -> dict:
    """The record at ``path``; :class:`~attnlib.train.CorruptFileError` naming it if it cannot be read."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise CorruptFileError(_unreadable_record(Path(path), load_error_reason(err))) from err
    if not isinstance(record, dict):
        raise CorruptFileError(_unreadable_record(Path(path), f"a JSON {type(record).__name__}, not an object"))
    return record


def _unreadable_record(path: Path, reason: str) -> str:
    return (f"the record {path} cannot be read ({reason}). It is damaged or incomplete (a copy or a "
            "write cut short): delete it and run the notebook (or python -m attnlib.run) again, "
            "which trains that run again.")


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
        "profile": profile, "dataset": _dataset_spec(data), "config": asdict(config),
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

    def runs(self, label: str) -> list[dict]:
        return [r for r in self.records if r["label"] == label]

    def histories(self, label: str) -> list[History]:
        return [History.from_dict(r["history"]) for r in self.runs(label)]

    def model(self, label: str, seed: int | None = None) -> nn.Module:
        """The trained network of ``label`` (first seed by default), in eval mode on the CPU."""
        variant = next(v for v in self.variants if v.label == label)
        record = next(r for r in self.runs(label) if seed is None or r["seed"] == seed)
        model = variant.build(self.data, record["seed"])
        path = self.results_dir / record["weights"]
        if not path.exists():
            raise FileNotFoundError(
                f"the weights of {label!r} seed {record['seed']} ({path}) are not here: git keeps the "
                f"weights of seed 0 only. Move the record {path.with_suffix('.json').name} away and run "
                "the notebook (or python -m attnlib.run) again to retrain this seed.")
        model.load_state_dict(_read_weights(path, f"{label!r} seed {record['seed']}"))
        return model.eval()

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
                "final_mean": statistics.fmean(final), "final_std": _std(final),
                "best_mean": statistics.fmean(best), "best_std": _std(best),
                "params": runs[0]["params"], "flops_per_image": runs[0]["flops_per_image"],
                "train_images_per_s": statistics.median(_steady(r, "train_images_per_s") for r in runs),
                "eval_images_per_s": statistics.median(_steady(r, "eval_images_per_s") for r in runs),
            })
        base = rows[0]
        for row in rows:
            row["delta_mean"] = row["final_mean"] - base["final_mean"]
            row["speed_vs_first"] = row["train_images_per_s"] / base["train_images_per_s"]
        return rows

    def run_card(self) -> dict:
        """What was run, where, with which code: merged over the records."""
        cards = [r["run_card"] for r in self.records]
        merged = {k: ", ".join(sorted({str(c.get(k, "not recorded")) for c in cards}))
                  for k in ("device", "precision", "python", "torch", "torchvision", "attnlib", "git_commit")}
        config = self.records[0]["config"]
        mixed = sum(len(set(c.get("epochs_by_footing", {})) - {NOT_RECORDED}) > 1 for c in cards)
        if mixed:
            merged["resumed elsewhere"] = (f"{mixed} of {len(cards)} runs changed device, threads or precision "
                                           "mid-run (their history's footing says where each epoch ran)")
        return {
            "dataset": self.data.describe(), "profile": self.profile.name,
            "epochs": config["epochs"], "batch size": config["batch_size"],
            "seeds": ", ".join(str(s) for s in self.profile.seeds),
            "variants": ", ".join(self.labels), **merged,
            "training wall time": f"{sum(c['wall_time_s'] for c in cards) / 60:.1f} min over "
                                  f"{len(cards)} runs ({self.trained_now} trained now, "
                                  f"{len(cards) - self.trained_now} loaded from {self.results_dir})",
        }


def _read_weights(path: Path, run: str) -> dict:
    """The state dict saved at ``path``; :class:`~attnlib.train.CorruptFileError` naming it if unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except LOAD_ERRORS as err:
        reason = load_error_reason(err)
    else:
        if isinstance(state, dict):
            return state
        reason = f"it holds a {type(state).__name__}, not a state dict"
    raise CorruptFileError(
        f"the weights of {run} ({path}) cannot be read ({reason}). The file is damaged or incomplete: "
        f"delete it and its record {path.with_suffix('.json').name}, then run the notebook (or python -m "
        "attnlib.run) again to retrain this seed.")


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else math.nan


def _steady(record: dict, key: str) -> float:
    """Median over epochs after the first (which pays one-off warm-up costs)."""
    values = record["history"][key]
    return statistics.median(values[1:] if len(values) > 1 else values)


class ResultsFolderError(OSError):
    """The results folder cannot be created or written."""


def writable_folder(folder: str | Path) -> Path:
    """``folder``, created if missing, once a file could be written in it: a results folder
    that cannot take a record fails here, before hours of training, not after the first run."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ResultsFolderError(f"results folder {folder} cannot be written ({err.strerror or err}); "
                                 "choose another folder (results_dir / --results-dir) or fix its "
                                 "permissions") from err
    return folder


def compare(variants: Sequence[Variant], profile: str | Profile = "quick", *, recipe: TrainConfig | None = None,
            dataset: str | None = None, epochs: int | None = None, seeds=None, data: ImageDataset | None = None,
            results_dir: str | Path = "results", device: str = "auto", progress: bool = True) -> Comparison:
    """Train (or load) every variant with every seed of ``profile``.

    ``recipe`` is the chapter's base :class:`TrainConfig`; the profile sets its epochs and
    batch size unless the variant's ``train`` overrides them.
    """
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise ValueError(f"variant labels must be unique, got {labels}")
    profile = resolve_profile(profile, dataset=dataset, epochs=epochs, seeds=seeds)
    data = data if data is not None else profile.load()
    results_dir = writable_folder(results_dir)
    device = resolve_device(device)
    records, trained, start = [], 0, time.perf_counter()
    for variant in variants:
        config = run_config(recipe, profile, variant)
        for seed in profile.seeds:
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


def permutation_p_value(a: Sequence[float], b: Sequence[float]) -> float:
    """Exact two-sided permutation test of ``mean(a) - mean(b)``: the share of all ways to
    split the pooled values into groups of ``len(a)`` and ``len(b)`` whose difference of
    means is at least as large in magnitude as the observed one.

    It assumes nothing about the spread, which three seeds cannot estimate well; the
    price is that few seeds cannot reach small values (3 against 3: at least 0.1).
    """
    pooled, k = [*a, *b], len(a)
    observed = abs(statistics.fmean(a) - statistics.fmean(b))
    total = sum(pooled)
    splits = list(itertools.combinations(range(len(pooled)), k))
    extreme = 0
    for chosen in splits:
        first = sum(pooled[i] for i in chosen)
        diff = abs(first / k - (total - first) / (len(pooled) - k))
        extreme += diff >= observed - 1e-12
    return extreme / len(splits)


def smallest_p_value(n_a: int, n_b: int) -> float:
    """The smallest two-sided p-value :func:`permutation_p_value` can return for groups of
    ``n_a`` and ``n_b`` seeds: the observed split (and, for equal groups, its mirror image)
    out of all splits. 3 against 3: 0.1, so never significant at 0.05; 5 against 5: 0.0079."""
    return (2 if n_a == n_b else 1) / math.comb(n_a + n_b, n_a)


def difference(cmp: Comparison, label: str, baseline: str) -> dict:
    """Final-accuracy difference ``label - baseline`` in points, with its noise.

    ``se`` is the standard error of the difference of two means (seeds are independent);
    the difference is called *within noise* when it is smaller than two standard errors,
    which is a rough 95 % criterion with few seeds, not a significance test. ``p_value`` is
    the exact permutation test (:func:`permutation_p_value`), which does not trust the
    seeds' spread. ``verdict`` says it in words for a sentence "label is <verdict> baseline".
    """
    a = [r["final_test_acc"] for r in cmp.runs(label)]
    b = [r["final_test_acc"] for r in cmp.runs(baseline)]
    delta = 100 * (statistics.fmean(a) - statistics.fmean(b))
    se = 100 * math.sqrt(_std(a) ** 2 / len(a) + _std(b) ** 2 / len(b)) if min(len(a), len(b)) > 1 else math.nan
    within = not abs(delta) > 2 * se  # also True when se is nan (one seed): no claim either way
    verdict = "indistinguishable from" if within else ("better than" if delta > 0 else "worse than")
    p, p_min = permutation_p_value(a, b), smallest_p_value(len(a), len(b))
    return {"delta": delta, "se": se, "within_noise": within, "verdict": verdict, "p_value": p,
            "p_min": p_min,
            "text": f"{label} vs {baseline}: {delta:+.2f} points (standard error {se:.2f}; "
                    f"{'within' if within else 'outside'} two standard errors "
                    f"over {len(a)} and {len(b)} seeds; permutation p = {p:.3g}, the smallest "
                    f"attainable with these seeds being {p_min:.2g})"}


def convergence_check(cmp: Comparison, label: str, longer: Comparison, longer_label: str) -> dict:
    """Has ``label`` converged? Compares its final-epoch test accuracy with the same network
    trained with twice the epochs (``longer_label`` in ``longer``).

    Converged: the longer runs move the mean by less than one standard deviation of
    ``label``'s seeds (the seed-to-seed noise any single comparison already carries).
    Values in percentage points.
    """
    a = [100 * r["final_test_acc"] for r in cmp.runs(label)]
    b = [100 * r["final_test_acc"] for r in longer.runs(longer_label)]
    shift, seed_std = statistics.fmean(b) - statistics.fmean(a), _std(a)
    converged = abs(shift) < seed_std
    epochs = (cmp.runs(label)[0]["config"]["epochs"], longer.runs(longer_label)[0]["config"]["epochs"])
    return {"mean": statistics.fmean(a), "longer_mean": statistics.fmean(b), "shift": shift,
            "seed_std": seed_std, "converged": converged, "epochs": epochs,
            "text": f"{epochs[1]} epochs instead of {epochs[0]} move the mean by {shift:+.2f} points "
                    f"({statistics.fmean(a):.2f} -> {statistics.fmean(b):.2f} %, {len(a)} and {len(b)} seeds): "
                    f"{'less' if converged else 'more'} than one seed standard deviation ({seed_std:.2f}), "
                    f"so the {epochs[0]}-epoch runs {'have converged' if converged else 'are still improving'}"}
