"""The book's benchmark page, rendered from the JSON records of ``python -m attnlib.bench``
in ``book/benchmark/`` (``python -m booktools.book overview``).

A ratio measured once, on a machine other work was slowing, does not reproduce (the layers'
memory-bound passes are diluted by slowed convolutions). So the page groups the records by
machine and settings, shows only the runs taken on a quiet machine (``machine_load.quiet``:
other processes took at most 10 % of the CPUs' time), and gives each figure as the median of
those runs with its range; it says how many quiet runs there are, and that three are needed.
"""
from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from attnlib.bench import LOOP_TARGET, record_name

from .paths import REPO

BENCH_DIR = REPO / "book" / "benchmark"
#: Quiet runs a figure of the page needs (median and range).
RUNS_NEEDED = 3


def load_results(bench_dir: Path = BENCH_DIR) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(bench_dir).glob("*.json"))]


#: Why a method misses its target, from torch.profiler (shown on the page when it does).
PROFILED = ("Per-operator self CPU time of six bf16 training steps on the 2-core Xeon under `torch.profiler` "
            "(the benchmark's network and batch, one thread, queue paused), the layer's network minus "
            "the plain one")
WHY_MISSED = {
    "IEBN": f"{PROFILED}: +47 ms per step (1.15x under the profiler). Of it, addcmul +47 ms and "
            "addcmul_ +22 ms (the forward's one multiply-add `y = x A + B`; the backward's "
            "`dx = g A + x Q + R` in two), the batch statistics +21 ms, sums over the map +16 ms "
            "(GAP(x) in the forward, the per-sample sums of `g` in the backward), multiplies +15 ms "
            "(the per-sample sums of `g x`); the native BatchNorm kernels these replace account for "
            "-93 ms. `IEBNFunction` already writes the backward out (1.09x in fp32 on the AMD, "
            "against 1.24x for the same formula in library ops); what is left is two passes BatchNorm "
            "does not make: the per-sample sums of `g` and `g x` (BatchNorm's backward takes its "
            "per-channel sums in one pass) and `dx` in two multiply-adds instead of one kernel. "
            "Each needs a kernel eager PyTorch does not have (a C++ operator; not written). With "
            "bf16 on AMX the convolutions take half the time they take in fp32, so the same passes "
            "weigh twice as much.",
    "SE": f"{PROFILED}: +30 ms per step (1.09x under the profiler): addcmul +10 ms (`dx = g s + "
          "dpooled / HW`, one pass), multiplies +9 ms (the rescale `x s`), bmm +8 ms (the sums "
          "`sum_hw g x` for the gate's gradient, read in place as the diagonal of a batched product "
          "for 16 and 32 channels), sums +4 ms (the squeeze), the gate's small ops and autograd "
          "bookkeeping +7 ms. Each of the four is one pass over the branch's output, the least "
          "this formula needs in eager PyTorch; the one left to remove is the rescale, folded into "
          "the residual add (`shortcut + x s` in one `addcmul`, then ReLU). Tried as a prototype "
          "(equal to the library's SE in float64, forward and gradients): 1.10x the plain step "
          "against 1.15x for the library's SE, medians of 15 interleaved rounds at one thread, "
          "but with per-round ratios from 0.71 to 1.62 on this host, so the gain is inside its "
          "noise. Not adopted: it needs the block to hand the shortcut to every attention module "
          "(an interface all layers and models here share) and changes the bf16 rounding, so the "
          "records of every gated network would no longer be reproduced by the code.",
    "NAM": f"{PROFILED}: +83 ms per step (1.39x under the profiler): its BatchNorm's forward and "
           "backward +31 ms, multiplies +16 ms, the sigmoid and its backward +15 ms, additions +6 ms "
           "(the two gradients of the gated map), and +11 ms in the convolutions' backward over the "
           "same calls (the gradients arrive in bf16 and channels_last as in the plain network; on "
           "this host a memory-heavier step slows its neighbours' kernels too). NAM adds a whole "
           "BatchNorm, a sigmoid and a product: about six passes over every residual branch's "
           "output, each a memory-bound kernel in eager PyTorch. A hand-written backward does not "
           "remove any of them (the BN backward is already one kernel, and the gate's weights are "
           "already folded into the BN's affine); only fusing the elementwise chain into one kernel "
           "would (a C++ operator, or what `torch.compile` generates on a GPU; neither measured here).",
    "BA": f"{PROFILED}: +131 ms per step (1.62x under the profiler): additions +54 ms (add_ and "
          "add, 234 more calls per step), multiplies +18 ms, the convolutions' backward +20 ms over "
          "the same calls, sums +8 ms, the gate's BatchNorm1d backward +8 ms, its small matrix "
          "products +7 ms. The additions are autograd's: each bridged map's pooling gradient, a "
          "broadcast, is added into that map's main gradient, one full pass per bridge, and the "
          "gated map's two gradients likewise. SE avoids its one such pass with a hand-written "
          "backward (`dx = g * s + dpooled / HW` in one `addcmul`); for BA that needs the whole "
          "gate, with its BatchNorm1d layers, in one autograd function, and the bridges' passes "
          "would remain (their two gradients meet in autograd before the ReLU's backward; one "
          "kernel for both is a C++ operator). Not written. Where the convolutions run on AMX in "
          "bf16, such memory-bound passes are a larger share of the step than in fp32 on an AVX2 "
          "CPU (compare this page's sections).",
    "DynamicConv (K=4)": "Every dynamic convolution mixes K kernels per image and runs a grouped "
                         "convolution with one group per image; on this CPU oneDNN's forward for that grouped "
                         "convolution took about 2.7x the plain convolution's in an earlier profiling run of this project, "
                         "and the backward adds the gradients of the K experts. The K-branch form (K plain convolutions weighted "
                         "per image) is faster only on the 7x7 maps, where `auto` uses it. Tried and not kept: "
                         "the per-sample convolution as a batched matrix product over unfolded patches "
                         "(bf16 on AMX), 3.5-11x a static conv's forward+backward against 2.2-4.4x for "
                         "the better of the other two forms, measured per shape (the table in "
                         "`attnlib/layers/dynamic_conv.py`): building and summing back the patches moves "
                         "9x the map through memory.",
}


NOT_PROFILED = "not profiled yet: where its extra time goes is not known."


def is_quiet(record: dict) -> bool:
    return bool((record.get("machine_load") or {}).get("quiet"))


#: A network the benchmark times: (model, norm, conv, attention), each part a registered name.
TimedNetwork = tuple[str, str, str, str]


class LayerSpeeds(NamedTuple):
    machine: str                          # the setting's machine, as its section of the page names it
    speeds: dict[TimedNetwork, float]     # training speed relative to the plain network


def layer_speeds(results: list[dict]) -> LayerSpeeds:
    """Each timed network's training speed relative to the plain one, from the setting with the
    most quiet runs (at least :data:`RUNS_NEEDED`; ties: the page's first): the median over them,
    as the page shows it. No figure (``LayerSpeeds("", {})``) without such a setting."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        if is_quiet(r):
            groups[record_name(r)].append(r)
    runs = max(groups.values(), key=len, default=[])
    if len(runs) < RUNS_NEEDED:
        return LayerSpeeds("", {})
    model = runs[-1]["settings"]["model"]
    return LayerSpeeds(f"{_machine(runs)}, {runs[-1]['settings']['dtype']}", {
        (model, m["parts"]["norm"], m["parts"]["conv"], m["parts"]["attention"]):
            statistics.median(_ratios(runs, m["label"], "train_images_per_s_vs_first"))
        for m in runs[-1]["methods"]})


def _spread(values: list[float], fmt: str) -> str:
    """``median [min–max]`` (the median alone when the values agree to the digits shown)."""
    middle, low, high = (format(v, fmt) for v in (statistics.median(values), min(values), max(values)))
    return middle if low == high else f"{middle} [{low}–{high}]"


def _ratios(runs: list[dict], label: str, key: str = "train_step_ms_vs_first") -> list[float]:
    return [next(row for row in run["rows"] if row["label"] == label)[key] for run in runs]


def _missed(runs: list[dict]) -> list[str]:
    """The methods whose median step-time ratio is above their target."""
    return [row["label"] for row in runs[0]["rows"]
            if row["target"] is not None and statistics.median(_ratios(runs, row["label"])) > row["target"]]


def summary_table(runs: list[dict]) -> str:
    """Markdown: per network, the median and range over ``runs`` of its ratios and step time."""
    lines = ["| network | step time vs plain | target | eval speed vs plain | train step (ms) | params | MFLOPs/img |",
             "|" + "---|" * 7]
    missed = _missed(runs)
    for first in runs[0]["rows"]:
        label, ratios = first["label"], _ratios(runs, first["label"])
        if first["target"] is None:
            target = "–"
        elif label in missed:
            target = f"≤ {first['target']:.2f}x **missed**"
        else:
            target = f"≤ {first['target']:.2f}x met" + (" (not in every run)" if max(ratios) > first["target"] else "")
        lines.append(f"| {label} | {_spread(ratios, '.2f')}x | {target} "
                     f"| {_spread(_ratios(runs, label, 'eval_images_per_s_vs_first'), '.2f')}x "
                     f"| {_spread(_ratios(runs, label, 'train_step_ms'), '.1f')} | {first['params']:,d} "
                     f"| {first['flops_per_image'] / 1e6:.1f} |")
    return "\n".join(lines)


def _machine(runs: list[dict]) -> str:
    """The machine a section's runs were timed on, with the thread count for a CPU."""
    record = ([r for r in runs if is_quiet(r)] or runs)[-1]
    device, threads = record["environment"]["device"], record["settings"]["threads"]
    return device.split(",")[0] + (f", {threads} thread" + "s" * (threads > 1) if device.startswith("CPU") else "")


def section(runs: list[dict]) -> str:
    """One machine and setting: its quiet runs summarised, the others only counted."""
    quiet = [r for r in runs if is_quiet(r)]
    s, env = (quiet or runs)[-1]["settings"], (quiet or runs)[-1]["environment"]
    flags = ["channels_last" if s["channels_last"] else "NCHW", "torch.compile" if s["compile"] else "eager"]
    machine = _machine(runs)
    count = (f"{len(quiet)} quiet run{'s' * (len(quiet) != 1)} of {len(runs)} "
             f"({len(runs) - len(quiet)} under load or with the load not recorded, not shown)")
    head = (f"## {machine}\n\n{s['model']}, batch {s['batch_size']}, images {'x'.join(map(str, s['image_shape']))}, "
            f"{s['dtype']}, {', '.join(flags)}; each run the median of {s['repeats']} interleaved rounds of "
            f"{s['steps']} steps. {count}.")
    if not quiet:
        return head + (f" No figure is shown: run `make bench` on a quiet machine ({RUNS_NEEDED} runs).\n")
    needed = "" if len(quiet) >= RUNS_NEEDED else \
        f" **Fewer than {RUNS_NEEDED} quiet runs: these figures are provisional.**"
    loop = [r["loop"]["overhead"] for r in quiet]
    missed = _missed(quiet)
    dates = sorted(r["environment"]["date"] for r in quiet)
    commits = ", ".join(f"`{c}`" for c in sorted({r["environment"]["git_commit"] for r in quiet}))
    text = (f"{head}{needed} Median [range] over the quiet runs ({dates[0]} to {dates[-1]}; torch "
            f"{env['torch']}, commit {commits}):\n\n{summary_table(quiet)}\n\n"
            f"Training loop: `fit` adds {_spread([100 * v for v in loop], '+.1f')} % to the bare step (target "
            f"≤ {100 * LOOP_TARGET:.0f} %, {'met' if statistics.median(loop) <= LOOP_TARGET else '**missed**'}). "
            + (f"Targets missed: {', '.join(missed)} (where their time goes: at the end of the page)."
               if missed else "Every method meets its target.") + "\n")
    return text


def why_missed(groups: list[list[dict]]) -> str:
    """The closing section: each layer that misses its target on some machine, once, with the
    machines where it does and where its extra time goes (or that this is not known)."""
    machines: dict[str, list[str]] = defaultdict(list)
    for runs in groups:
        quiet = [r for r in runs if is_quiet(r)]
        for label in _missed(quiet) if quiet else []:
            machines[label].append(_machine(runs))
    if not machines:
        return ""
    return ("\n## Where the missed targets' time goes\n" + "".join(
        f"\n*{label}* (missed on {'; '.join(where)}): {WHY_MISSED.get(label, NOT_PROFILED)}\n"
        for label, where in machines.items()))


def _inside(value: float, values: list[float], fmt: str) -> bool:
    """Is ``value`` inside the range of ``values`` at the precision the page prints them?"""
    low, middle, high = (float(format(v, fmt)) for v in (min(values), value, max(values)))
    return low <= middle <= high


def reproduction(page_runs: list[dict], new_runs: list[dict]) -> tuple[str, bool]:
    """Do ``new_runs`` (say ``make bench-check``'s) reproduce the page? Per machine and setting, the
    median of the new quiet runs of every figure the page summarises (each layer's step-time
    ratio, the loop overhead) against the page's range over its quiet runs, at the precision the
    page prints. Returns a markdown report and whether every figure compared landed inside."""
    page_groups: dict[str, list[dict]] = defaultdict(list)
    for r in filter(is_quiet, page_runs):
        page_groups[record_name(r)].append(r)
    new_groups: dict[str, list[dict]] = defaultdict(list)
    for r in new_runs:
        new_groups[record_name(r)].append(r)
    lines, compared, outside = [], 0, 0
    for name, runs in new_groups.items():
        quiet = [r for r in runs if is_quiet(r)]
        lines.append(f"## {name}: {len(quiet)} quiet new run(s) of {len(runs)}\n")
        if not quiet or not page_groups.get(name):
            lines.append("Nothing to compare: " + ("no new run was quiet." if not quiet else
                                                   "the page has no quiet run with these settings."))
            continue
        old = page_groups[name]
        figures = [(f"{row['label']} step time vs plain", _ratios(old, row["label"]), _ratios(quiet, row["label"]),
                    ".2f") for row in old[0]["rows"] if row["target"] is not None]
        figures.append(("`fit` over the bare step (%)", [100 * r["loop"]["overhead"] for r in old],
                        [100 * r["loop"]["overhead"] for r in quiet], "+.1f"))
        lines += ["| figure | page: median [range] | new: median | inside |", "|---|---|---|---|"]
        for label, before, now, fmt in figures:
            inside = _inside(statistics.median(now), before, fmt)
            compared, outside = compared + 1, outside + (not inside)
            lines.append(f"| {label} | {_spread(before, fmt)} | {statistics.median(now):{fmt}} "
                         f"| {'yes' if inside else '**no**'} |")
    lines.append(f"\n{compared - outside} of {compared} figures inside the page's range." if compared
                 else "\nNo figure could be compared.")
    return "\n".join(lines), compared > 0 and outside == 0


def page(results: list[dict]) -> str:
    """The book's benchmark page (markdown) from the benchmark's JSON records."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        groups[record_name(r)].append(r)
    body = "\n".join(section(runs) for runs in groups.values()) + why_missed(list(groups.values())) if groups else \
        "No benchmark record yet: run `make bench`.\n"
    return f"""# Benchmark: what each layer costs

`python -m attnlib.bench` (or `make bench`, three runs) builds the same network once per chapter's
layer and times all of them in one run, interleaved, on synthetic batches already on the
device: a training step (forward, cross-entropy, backward, SGD step) and an inference forward.
It reports absolute figures and ratios to the plain network; the *target* is the largest
step-time ratio we accept for each layer. Each run records how busy the machine was (the CPU
time other processes took while it ran): a ratio taken under load is diluted (slowed
convolutions hide the layers' extra passes) and does not reproduce, so this page shows only
runs on a quiet machine, each figure as the median over them with its range. The training-loop
line times `fit` (device-resident data, augmentation, optimiser, schedule, bookkeeping) against
the bare step on pre-made tensors. Everything below is rendered from the JSON files in
`book/benchmark/` by `python -m booktools.book overview`; nothing is typed. To check that
your machine reproduces a section, run `make bench-check` on a quiet machine (with
`BENCH_ARGS="--threads 1"` for the one-thread sections): it compares the median of three new
runs with each figure's range here.

No GPU was available for the runs on this page: GPU figures are not measured yet.
`bash scripts/gpu_check.sh OUT` on a GPU machine writes records that this page then shows.

{body}"""
