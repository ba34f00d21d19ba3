"""The book's results overview: every method against its baseline, read from the records.

A record's *setting* is its data (the dataset fingerprint) and its effective recipe; its
*network* is the variant spec without the label. Within a setting, every network that is
not a plain one (BN, plain convs, no attention, no callbacks) is compared with the plain
network of the same architecture and width, when one was trained in that setting. So the
table grows by itself as chapters add records, and nothing in it is typed.
"""
from __future__ import annotations

import functools
import json
import math
import statistics
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

from attnlib.chapters import CHAPTERS, Experiment, experiments
from attnlib.checkpoints import CorruptFileError
from attnlib.layers import NORM_SETTINGS
from attnlib.profiles import resolve_profile
from attnlib.records import read_record
from attnlib.significance import accuracy_difference
from attnlib.variants import PLAIN_PARTS, method_of

from .benchmark_page import LayerSpeeds, TimedNetwork, layer_speeds, load_results

FULL_TRAIN_IMAGES = {"fashion_mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000}

PLAIN = {**PLAIN_PARTS, "callbacks": []}

#: The paper's own figure for a method, by the layer that defines it (:func:`method_of`): quoted, with source.
PAPER_FIGURES = {
    "iebn": "CIFAR-100 ResNet-164: 74.29 → 77.09 (official README)",
    "se": "ImageNet ResNet-50: 75.20 → 76.71 (Hu et al. 2018, Table 2)",
    "ba": "ImageNet BA-ResNet-50: 78.85 (official logs)",
    "mabn": "ImageNet ResNet-50, batch 2: BN 64.78 → MABN 76.33 (official README)",
    "dynamic": "ImageNet ResNet-18: 70.4 → 72.7 (Chen et al. 2020)",
}
#: The paper's figures for networks thinner than its main one (width multiplier below 1), where it has them.
THIN_FIGURES = {
    "dynamic": "ImageNet MobileNetV2 x0.5: 65.4 → 69.4, x0.35: 60.3 → 64.9 (Sandler et al. 2018; Chen et al. 2020)",
}
#: Settings that are not the paper's method, by the exact part (as records store it): the seed
#: posts' figures for the two they trained, and no figure for an ablation.
EXACT_FIGURES = [
    ("attention", ["ba", {"discard_output": True}], "the post's CIFAR-10 AlexNet: 78.48 → 78.96 (one run, best epoch)"),
    ("conv", ["dynamic", {"num_experts": 2}], "the post's CIFAR-10 AlexNet-DY: 78.72 → 82.09 (one run, best epoch)"),
    ("attention", ["ba", {"last_feature_only": True}], "–"),
]


def load_records(results_dir: str | Path) -> list[dict]:
    """The training records in ``results_dir`` (benchmark records beside them are skipped). A file
    that cannot be read is left out with a warning that names it; the other records are used."""
    records = (_readable(p) for p in sorted(Path(results_dir).glob("*.json")))
    return [r for r in records if r is not None and "variant" in r]


def _readable(path: Path) -> dict | None:
    """The record at ``path``, or None with a warning if it cannot be read."""
    try:
        return read_record(path)
    except CorruptFileError as err:
        warnings.warn(f"{err} Left out of this overview; the other records are used.", stacklevel=2)
        return None


def _network(record: dict) -> dict:
    return {k: v for k, v in record["variant"].items() if k not in ("label", "train")}


def _plain_of(network: dict) -> dict:
    """The plain network a method is compared with: the same architecture and width, and the
    same normalisation setting (``NORM_SETTINGS``: a method that normalises over groups of 16
    images is compared with BN over groups of 16, one under a noise attack with BN under it)."""
    plain = {**network, **PLAIN}
    norm = network.get("norm")
    setting = {k: v for k, v in norm[1].items() if k in NORM_SETTINGS} if isinstance(norm, list) else {}
    if setting:
        plain["norm"] = [PLAIN["norm"], setting]
    return plain


def _is_plain(network: dict) -> bool:
    return network == _plain_of(network)


def benchmark_speeds() -> LayerSpeeds:
    """The layers' training speeds from the book's benchmark records (the benchmark page's)."""
    return layer_speeds(load_results())


def _timed_network(network: dict) -> TimedNetwork | None:
    """``network`` as the benchmark names the networks it times, or None if the benchmark cannot
    have timed it (another width, or a part with options). Callbacks (a penalty, an annealing)
    are left aside: they add one small term per step."""
    parts = [network.get(part) or "none" for part in ("norm", "conv", "attention")]
    if network.get("model_kwargs") or not all(isinstance(p, str) for p in parts):
        return None
    return (network["model"], *parts)


def _speed(ratio: float) -> str:
    return "–" if math.isnan(ratio) else f"{ratio:.2f}x"


def _paper(network: dict) -> str:
    for part, choice, figure in EXACT_FIGURES:
        if network.get(part) == choice:
            return figure
    method = method_of(network)
    if network.get("model_kwargs", {}).get("width_mult", 1.0) < 1 and method in THIN_FIGURES:
        return THIN_FIGURES[method]
    return PAPER_FIGURES.get(method, "–")


def method_rows(records: list[dict], speeds: Mapping[TimedNetwork, float] | None = None) -> list[dict]:
    """One row per (setting, method network) that has a plain baseline in its setting. Its speed
    is the benchmark's for the network (``speeds``; None: :func:`benchmark_speeds`), NaN where the
    benchmark does not time it."""
    speeds = benchmark_speeds().speeds if speeds is None else speeds
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        setting = json.dumps([r["dataset"]["sha1"], r["config"]], sort_keys=True)
        groups[setting, json.dumps(_network(r), sort_keys=True)].append(r)
    rows = []
    for (setting, net_key), runs in groups.items():
        network = json.loads(net_key)
        if _is_plain(network):
            continue
        base = groups.get((setting, json.dumps(_plain_of(network), sort_keys=True)))
        if not base:
            continue
        acc = [100 * r["final_test_acc"] for r in runs]
        ref = [100 * r["final_test_acc"] for r in base]
        difference = accuracy_difference(acc, ref)
        first, data, config = runs[0], runs[0]["dataset"], runs[0]["config"]
        rows.append({
            "method": first["label"], "baseline": base[0]["label"], "model": network["model"],
            "dataset": f"{data['name']} ({data['train_images']:,} train)", "profile": first["profile"],
            "full_data": data["train_images"] == FULL_TRAIN_IMAGES.get(data["name"]),
            "batch_size": config["batch_size"], "epochs": config["epochs"], "seeds": len(runs),
            "acc_mean": statistics.fmean(acc), "acc_std": statistics.stdev(acc) if len(acc) > 1 else math.nan,
            "base_mean": statistics.fmean(ref), "base_std": statistics.stdev(ref) if len(ref) > 1 else math.nan,
            **difference, "part": method_of(network),
            "params_ratio": first["params"] / base[0]["params"],
            "flops_ratio": first["flops_per_image"] / base[0]["flops_per_image"],
            "speed_ratio": speeds.get(_timed_network(network), math.nan),
            "paper": _paper(network),
        })
    return sorted(rows, key=lambda r: (r["dataset"], r["model"], r["batch_size"], r["method"]))


HEADLINE_PROFILE = "book"
HEADLINE_SEEDS = 5


def is_headline(row: dict) -> bool:
    """A converged headline comparison: the ``book`` profile's full data, at least five seeds."""
    return row["profile"] == HEADLINE_PROFILE and row["seeds"] >= HEADLINE_SEEDS and row["full_data"]


def _book_experiments() -> Iterator[Experiment]:
    """Every comparison the chapters train under the ``book`` profile."""
    setup = resolve_profile(HEADLINE_PROFILE)
    for stem in CHAPTERS:
        yield from experiments(stem, setup).values()


@functools.cache
def planned_seeds() -> dict[str, int]:
    """How many seeds the chapters train under the ``book`` profile, by arm label (the most any
    comparison asks for): the profile's five for a headline arm, three for a secondary one."""
    setup = resolve_profile(HEADLINE_PROFILE)
    planned: dict[str, int] = {}
    for exp in _book_experiments():
        for v in exp.variants:
            planned[v.label] = max(planned.get(v.label, 0), len(exp.seeds(setup, v.label)))
    return planned


@functools.cache
def control_labels() -> frozenset[str]:
    """The arms the chapters train as controls for a confound of a method (a constant rescale, a
    wider network): whatever their seeds, no verdict on a method."""
    return frozenset(label for exp in _book_experiments() for label in exp.controls)


def seeds_needed(row: dict) -> int:
    """The seeds a ``book``-profile row is complete with: what the chapters plan for its method,
    five for a network no chapter trains."""
    return planned_seeds().get(row["method"], HEADLINE_SEEDS)


def is_in_progress(row: dict) -> bool:
    """A comparison still training: the ``book`` profile, on all the data or a chapter's subset,
    with fewer seeds so far than the chapters plan for it (its spread may be undefined yet)."""
    return row["profile"] == HEADLINE_PROFILE and row["seeds"] < seeds_needed(row)


def is_control(row: dict) -> bool:
    """A control or a secondary arm of the ``book`` profile with all its planned seeds: converged
    like a headline comparison, but no verdict on a method by itself."""
    return (row["profile"] == HEADLINE_PROFILE and row["full_data"] and row["seeds"] >= seeds_needed(row)
            and (row["seeds"] < HEADLINE_SEEDS or row["method"] in control_labels()))


class Rows(NamedTuple):
    headline: list[dict]   # converged, five seeds or more: the book's verdicts
    training: list[dict]   # book profile, seeds still missing
    controls: list[dict]   # book profile, a control or secondary arm with all its seeds
    smaller: list[dict]    # subsets and the quick profile: early training


def split_rows(rows: list[dict]) -> Rows:
    """The rows by what a reader may take from them (see :class:`Rows`)."""
    groups = Rows([], [], [], [])
    for r in rows:
        group = (groups.training if is_in_progress(r) else groups.controls if is_control(r)
                 else groups.headline if is_headline(r) else groups.smaller)
        group.append(r)
    return groups


def markdown_table(rows: list[dict]) -> str:
    """One row per comparison: the verdict first (what a reader looks for), the setting after."""
    head = ["method", "baseline", "Δ (pts) ± SE", "noise", "method acc (%)", "baseline acc (%)", "train speed",
            "params", "FLOPs", "model", "data", "profile, batch, epochs", "seeds", "paper's figure"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        noise = "within" if r["within_noise"] else "outside"
        lines.append(
            f"| {r['method']} | {r['baseline']} | {r['delta']:+.2f} ± {r['se']:.2f} "
            f"| {noise} 2 SE, p = {r['p_value']:.2g} (≥ {r['p_min']:.2g}) "
            f"| {r['acc_mean']:.2f} ± {r['acc_std']:.2f} | {r['base_mean']:.2f} ± {r['base_std']:.2f} "
            f"| {_speed(r['speed_ratio'])} | {r['params_ratio']:.2f}x | {r['flops_ratio']:.2f}x | {r['model']} "
            f"| {r['dataset']} | {r['profile']}, {r['batch_size']}, {r['epochs']} | {r['seeds']} | {r['paper']} |")
    return "\n".join(lines)
