"""Figures and tables every chapter shows, drawn from a :class:`~attnlib.experiment.Comparison`.

Colours follow the method, not the order, so "IEBN" is the same blue in every chapter.
Figures have a white background so they stay readable in a dark-mode page.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from .data import ImageDataset, random_crop_flip
from .experiment import Comparison

if TYPE_CHECKING:
    from IPython.display import Markdown

plt.rcParams.update({"figure.facecolor": "white", "savefig.facecolor": "white", "figure.dpi": 110,
                     "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
                     "axes.spines.right": False, "legend.frameon": False})

#: Colour of each method, by the layer that defines it (:func:`~attnlib.experiment.method_of`),
#: so a method has one colour in every chapter whatever its label (colour-blind-safe Okabe-Ito palette).
METHOD_COLORS = {"dynamic": "#8C564B", "iebn": "#0072B2", "mabn": "#CC79A7", "nam": "#D55E00", "ba": "#009E73",
                 "se": "#E69F00", "alexnet": "#56B4E9", "plain": "#555555"}
FALLBACK = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


def _distance(a: str, b: str) -> float:
    """Euclidean distance of two ``#rrggbb`` colours in RGB (0 to 441)."""
    ra, rb = (tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in (a, b))
    return math.dist(ra, rb)


def _colors(methods: dict[str, str]) -> dict[str, str]:
    """A colour for each label of ``{label: method}``: its method's colour; a label whose colour
    is taken (or close to a taken one: two blues) gets the unused palette colour farthest from
    every colour already used, so the curves a figure compares are told apart. Palette colours
    repeat only beyond the palette's size."""
    colors: dict[str, str] = {}
    for i, (label, method) in enumerate(methods.items()):
        c = METHOD_COLORS.get(method, FALLBACK[i % len(FALLBACK)])
        used = list(colors.values())
        if c in used:
            free = [f for f in FALLBACK if f not in used] or FALLBACK
            c = max(free, key=lambda f: min((_distance(f, u) for u in used), default=0.0))
        colors[label] = c
    return colors


def _band(ax, x, runs: np.ndarray, color: str, label: str | None, style: str = "-") -> None:
    """The mean over seeds as a line, the range over seeds (min to max) as a band: a band of
    real runs, so a loss band never goes below zero as mean ± std can."""
    ax.plot(x, runs.mean(0), style, color=color, label=label, lw=1.8)
    if len(runs) > 1:
        ax.fill_between(x, runs.min(0), runs.max(0), color=color, alpha=0.18, lw=0)


def learning_curves(cmp: Comparison, labels: list[str] | None = None, title: str | None = None):
    """Loss (log scale) and accuracy per epoch: mean over seeds, band = range over seeds;
    dashed = train, solid = test. The legend sits under the plots, off the data."""
    labels = labels or cmp.labels
    colors = _colors({label: cmp.variant(label).method for label in labels})
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.4))
    for label in labels:
        hs = cmp.histories(label)
        x = np.array(hs[0].epoch)
        for key, ax in (("loss", ax_loss), ("acc", ax_acc)):
            scale = 100 if key == "acc" else 1
            _band(ax, x, scale * np.array([getattr(h, f"train_{key}") for h in hs]), colors[label], None, "--")
            _band(ax, x, scale * np.array([getattr(h, f"test_{key}") for h in hs]), colors[label],
                  f"{label} (n={len(hs)})")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set_yscale("log")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss (nats, log scale)", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    ax_acc.plot([], [], "k--", label="train (dashed)")
    ax_acc.plot([], [], "k-", label="test (solid)")
    handles, names = ax_acc.get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 4), fontsize=8)
    fig.suptitle(f"{title or f'{cmp.data.name}, profile {cmp.profile.name}'}: mean over seeds, band = range over seeds")
    fig.tight_layout(rect=(0, 0.06 + 0.045 * ((len(names) - 1) // 4), 1, 1))
    return fig


def prediction_grid(cmp: Comparison, labels: list[str] | None = None, n: int = 16, seed: int = 0,
                    columns: int = 8):
    """The same test images for every variant: true label and each variant's prediction.

    Half the images are drawn at random, half among those that at least one variant gets
    wrong (that is where the variants differ). Predictions are from each variant's first seed.
    A red prediction is a mistake.
    """
    labels = labels or cmp.labels
    preds = {lab: torch.tensor(cmp.runs(lab)[0]["predictions"]) for lab in labels}
    truth = cmp.data.test_labels
    g = torch.Generator().manual_seed(seed)
    wrong = torch.stack([p != truth for p in preds.values()]).any(0).nonzero().flatten()
    hard = wrong[torch.randperm(len(wrong), generator=g)[: n // 2]]
    rest = torch.randperm(len(truth), generator=g)
    rest = rest[~torch.isin(rest, hard)][: n - len(hard)]
    picks = torch.cat([rest, hard])
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.55 * columns, (1.75 + 0.2 * len(labels)) * rows),
                             gridspec_kw={"hspace": 0.3 + 0.17 * len(labels), "wspace": 0.1})
    classes = cmp.data.classes
    for ax, i in zip(np.ravel(axes), picks.tolist()):
        img = cmp.data.test_images[i].permute(1, 2, 0).numpy()
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray")
        ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
        ax.set_title(f"true: {classes[truth[i]]}", fontsize=7.5)
        for k, lab in enumerate(labels):
            p = preds[lab][i].item()
            ax.text(0.5, -0.08 - 0.14 * k, f"{lab}: {classes[p]}", transform=ax.transAxes, ha="center",
                    va="top", fontsize=6.5, color="#2a7d2a" if p == truth[i] else "#d62728")
    for ax in np.ravel(axes)[len(picks):]:
        ax.axis("off")
    fig.suptitle(f"Test images: the first {len(rest)} at random, the last {len(hard)} among those some "
                 "variant gets wrong (red = mistake)", fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.03 + 0.05 * len(labels))
    return fig


def accuracy_bars(cmp: Comparison, labels: list[str] | None = None, best: bool = False):
    """Final-epoch test accuracy, mean with ±1 std error bars and each seed as a dot."""
    labels = labels or cmp.labels
    colors = _colors({label: cmp.variant(label).method for label in labels})
    key = "best_test_acc" if best else "final_test_acc"
    fig, ax = plt.subplots(figsize=(1.3 + 1.1 * len(labels), 3.4))
    for x, lab in enumerate(labels):
        vals = 100 * np.array([r[key] for r in cmp.runs(lab)])
        ax.bar(x, vals.mean(), yerr=vals.std(ddof=1) if len(vals) > 1 else 0, color=colors[lab],
               alpha=0.8, capsize=4)
        ax.scatter(np.full(len(vals), x), vals, color="black", s=10, zorder=3)
    allvals = 100 * np.array([r[key] for lab in labels for r in cmp.runs(lab)])
    span = max(allvals.max() - allvals.min(), 0.5)
    ax.set_ylim(allvals.min() - 1.5 * span, min(100, allvals.max() + 0.8 * span))
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylabel(f"{'best' if best else 'final'} test accuracy (%)")
    ax.set_title("mean ± 1 std over seeds; dots are single seeds", fontsize=9)
    fig.tight_layout()
    return fig


def _fmt_acc(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if not math.isnan(std) else f"{100 * mean:.2f}"


def results_table(cmp: Comparison, paper: dict[str, str] | None = None) -> str:
    """A markdown table of the summary; ``paper`` maps a label to the paper's figure (with source)."""
    head = ["variant", "seeds", "final test acc (%)", "Δ vs first (pts)", "best epoch acc (%)", "params",
            "MFLOPs/img", "train img/s", "speed vs first"]
    if paper:
        head.append("paper / post (for reference)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = cmp.summary()
    for row in rows:
        cells = [row["label"], str(row["seeds"]), _fmt_acc(row["final_mean"], row["final_std"]),
                 f"{100 * row['delta_mean']:+.2f}", _fmt_acc(row["best_mean"], row["best_std"]),
                 f"{row['params'] / 1e6:.3f} M", f"{row['flops_per_image'] / 1e6:.1f}",
                 f"{row['train_images_per_s']:.0f}", _ratio(row["train_speed_vs_first"], 2)]
        if paper:
            cells.append(paper.get(row["label"], "–"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + _footing_note(rows)


def difference_table(differences: dict[tuple[str, str], dict]) -> str:
    """A markdown table of :func:`~attnlib.experiment.difference` results, keyed by (label, baseline):
    the difference in points with its standard error, the permutation p-value with the smallest
    one these seeds can reach, and the verdict in words."""
    lines = ["| comparison | Δ ± SE (points) | p (smallest attainable) | reading |", "|---|---|---|---|"]
    lines += [f"| {a} − {b} | {d['delta']:+.2f} ± {d['se']:.2f} | {d['p_value']:.2g} ({d['p_min']:.2g}) "
              f"| {a} is {d['verdict']} {b} |" for (a, b), d in differences.items()]
    return "\n".join(lines)


def difference_check_table(*checks: dict) -> str:
    """:func:`difference_table` of :func:`~attnlib.experiment.difference_check` results: each
    difference after the shorter and the longer training, one row each."""
    return difference_table({(f"{check['pair'][0]}, {epochs} epochs", f"{check['pair'][1]}, {epochs} epochs"): check[when]
                             for check in checks for epochs, when in zip(check["epochs"], ("short", "long"))})


def cost_table(cmp: Comparison) -> str:
    """A markdown table of what each variant costs: parameters, FLOPs, measured train and
    eval images per second, and each of those relative to the first variant."""
    rows = cmp.summary()
    base = rows[0]
    lines = ["| variant | params | MFLOPs/img | train img/s | eval img/s | params vs first | "
             "train speed vs first | eval speed vs first |", "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['label']} | {r['params']:,d} | {r['flops_per_image'] / 1e6:.2f} "
                     f"| {r['train_images_per_s']:,.0f} | {r['eval_images_per_s']:,.0f} "
                     f"| {r['params'] / base['params']:.2f}x "
                     f"| {_ratio(r['train_speed_vs_first'], 3)} | {_ratio(r['eval_speed_vs_first'], 3)} |")
    return "\n".join(lines) + _footing_note(rows)


def _ratio(value: float, digits: int) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}x"


def _footing_note(rows: list[dict]) -> str:
    """A note under a table of ``Comparison.summary()`` rows with a speed ratio left out (–), saying why."""
    if not any(math.isnan(r["train_speed_vs_first"]) for r in rows):
        return ""
    return ("\n\n*–: these runs and the first variant's did not all run on one footing (machine, threads "
            "and precision, as the run card lists them), so their images per second do not compare. The book's "
            "benchmark page times every layer against the plain network on one machine.*")


def benchmark_table(rows: list[dict]) -> str:
    """A markdown table of :func:`attnlib.benchmark.measure`'s rows, ratios against the first."""
    lines = ["| network | batch | params | train img/s | eval img/s | activation memory (MB) | train vs first "
             "| eval vs first | memory vs first |", "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['label']} | {r['batch_size']} | {r['params']:,d} | {r['train_images_per_s']:,.0f} "
                     f"| {r['eval_images_per_s']:,.0f} | {r['activation_mb']:.1f} "
                     f"| {r['train_images_per_s_vs_first']:.2f}x | {r['eval_images_per_s_vs_first']:.2f}x "
                     f"| {r['activation_mb_vs_first']:.2f}x |")
    return "\n".join(lines) + "\n\n" + load_note(rows[0].get("machine_load"))


def speed_drift_reading(run_rows: list[dict], bench: list[dict], labels: list[str], tolerance: float = 0.1) -> str:
    """A phrase on whether the training runs' speed ratios measure the layers.

    ``run_rows`` are ``Comparison.summary()`` rows (ratios against the first run's images per second),
    ``bench`` the rows of :func:`attnlib.benchmark.measure` taken now, one network after the other, with
    the same first network. Runs that trained on different days on a shared machine carry its changes of
    speed in their ratios; a run ratio more than ``tolerance`` from the timing says so.
    """
    in_runs = {r["label"]: r["train_speed_vs_first"] for r in run_rows}
    timed = {r["label"]: r["train_images_per_s_vs_first"] for r in bench}
    missing = [label for label in labels if label not in in_runs or label not in timed]
    if missing or run_rows[0]["label"] != bench[0]["label"]:
        raise ValueError(f"the runs ({list(in_runs)}) and the timing ({list(timed)}) must share their first network "
                         f"and hold every label asked for ({labels}); missing: {missing}")
    if any(math.isnan(in_runs[label]) for label in labels):
        return "the training runs' images per second do not compare: they ran on different footings"
    ratios = " and ".join(f"{label} at {in_runs[label]:.2f}x" for label in labels)
    reading = f"in the training runs {ratios} {run_rows[0]['label']}'s images per second"
    if all(abs(in_runs[label] - timed[label]) <= tolerance for label in labels):
        return f"{reading}, within {tolerance:.2f} of the timing here"
    return (f"{reading}: more than {tolerance:.2f} from the timing here, so the shared machine's speed moved between "
            "those runs, and the timing here, one network after the other, is the measure of the layers")


def load_note(load: dict | None) -> str:
    """One sentence under a timing: how busy the machine was while it was taken, and what that does
    to the ratios (other work slows the convolutions and so dilutes a layer's extra passes)."""
    if not load or load.get("quiet") is None:
        return ("*How busy the machine was is not recorded with this measurement: read its ratios beside the "
                "benchmark page's runs on a quiet machine.*")
    share = f"other processes took {100 * load['other_processes_cpu_share']:.0f} % of the CPU time"
    if load["quiet"]:
        return f"*Measured on a quiet machine ({share}).*"
    return (f"*Measured while {share}: slowed convolutions dilute a layer's extra passes, so these ratios "
            "understate its cost; the benchmark page's runs on a quiet machine are the ones to compare.*")


def run_card_table(cmp: Comparison) -> str:
    card = cmp.run_card()
    return "| run card | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in card.items())


def confusion_matrix(cmp: Comparison, label: str):
    """Row-normalised confusion matrix of one variant, summed over its seeds (in %)."""
    k = cmp.data.num_classes
    counts = cmp.confusion(label).float()
    matrix = 100 * counts / counts.sum(1, keepdim=True)
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    im = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=100)
    ax.grid(False)
    for i in range(k):
        for j in range(k):
            if matrix[i, j] >= 0.5:
                ax.text(j, i, f"{matrix[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] > 60 else "black")
    names = cmp.data.classes
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"{label}: test predictions (% of each true class), {len(cmp.runs(label))} seeds")
    fig.colorbar(im, ax=ax, label="% of the true class")
    fig.tight_layout()
    return fig


def show_source(*objects) -> Markdown:
    """The real source of attnlib functions or classes, as a highlighted code block."""
    from IPython.display import Markdown

    return Markdown("\n\n".join(source_block(obj) for obj in objects))


def source_block(obj) -> str:
    """One object's block of :func:`show_source`: its dotted name, then its code."""
    import inspect

    return f"`{inspect.getmodule(obj).__name__}.{obj.__qualname__}`\n```python\n{inspect.getsource(obj).rstrip()}\n```"


def _show(ax, image: torch.Tensor) -> None:
    img = image.permute(1, 2, 0).numpy()
    ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
    ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)


def dataset_examples(data: ImageDataset, per_class: int = 6):
    """The first ``per_class`` training images of every class, one row per class."""
    fig, axes = plt.subplots(data.num_classes, per_class, figsize=(0.9 * per_class + 1.2, 0.9 * data.num_classes))
    for c, row in enumerate(axes):
        idx = (data.train_labels == c).nonzero().flatten()[:per_class]
        for ax, i in zip(row, idx.tolist()):
            _show(ax, data.train_images[i])
        row[0].set_ylabel(data.classes[c], rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"{data.name}: training images by class", fontsize=10)
    fig.tight_layout()
    return fig


def augmentation_examples(data: ImageDataset, n: int = 8, versions: int = 4, seed: int = 0):
    """``n`` training images (top row) and ``versions`` random crops+flips of each, as the loader makes them."""
    images = data.train_images[:n]
    pad = max(1, data.image_size // 8)
    g = torch.Generator().manual_seed(seed)
    fig, axes = plt.subplots(versions + 1, n, figsize=(1.1 * n, 1.1 * (versions + 1)))
    for j in range(n):
        _show(axes[0, j], images[j])
    for v in range(1, versions + 1):
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=g)
        flips = torch.rand(n, generator=g) < 0.5
        for j, img in enumerate(random_crop_flip(images, offsets, flips, pad)):
            _show(axes[v, j], img)
    axes[0, 0].set_ylabel("original", fontsize=8)
    axes[1, 0].set_ylabel("augmented", fontsize=8)
    fig.suptitle(f"random crop (padding {pad} px) and horizontal flip, done on the device per batch", fontsize=9)
    fig.tight_layout()
    return fig


def _marker_key(book: set[bool]) -> str:
    """What the markers of :func:`gain_vs_speed` mean, for the kinds of rows it shows."""
    if book == {True}:
        return "the converged comparisons of the book profile"
    if book == {False}:
        return "smaller experiments: not converged, or on subsets"
    return "circles: book profile; squares: smaller experiments"


def gain_vs_speed(rows: list[dict], machine: str = ""):
    """Accuracy difference to the baseline (± one standard error) against the training speed
    relative to the baseline, one point per row of :func:`booktools.overview.method_rows`
    whose speed ratio is known (the benchmark times its network, on ``machine``).

    Points are numbered and named in a legend under the plot, never on the data, so labels
    cannot overlap however close the points are."""
    left_out = sum(math.isnan(r["speed_ratio"]) for r in rows)
    rows = [r for r in rows if not math.isnan(r["speed_ratio"])]  # networks the benchmark does not time
    names = [f"{r['method']} ({r['model']}, {r['dataset']}, {r['profile']})" for r in rows]
    colors = _colors({name: r["part"] for name, r in zip(names, rows)})
    fig, ax = plt.subplots(figsize=(9, 5.2 + 0.22 * len(rows)))
    for number, (r, name) in enumerate(zip(rows, names), 1):
        marker = "o" if r["profile"] == "book" else "s"
        ax.errorbar(r["speed_ratio"], r["delta"], yerr=0 if math.isnan(r["se"]) else r["se"], marker=marker,
                    color=colors[name], capsize=3, ms=6, ls="none", label=f"{number}. {name}")
        ax.annotate(str(number), (r["speed_ratio"], r["delta"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    ax.axhline(0, color="grey", lw=1)
    ax.axvline(1, color="grey", lw=1, ls=":")
    ax.set(xlabel="training speed relative to the baseline (images/s ratio"
                  + (f"; benchmark, {machine})" if machine else ")"),
           ylabel="final test accuracy − baseline (points, ± 1 SE)",
           title=f"what each method buys and costs ({_marker_key({r['profile'] == 'book' for r in rows})})"
                 + (f"\n{left_out} comparisons left out: the benchmark does not time their network"
                    if left_out else ""))
    fig.legend(loc="lower center", ncol=2 if len(rows) > 6 else 1, fontsize=7)
    legend_rows = math.ceil(len(rows) / (2 if len(rows) > 6 else 1))
    fig.tight_layout(rect=(0, min(0.6, 0.03 + 0.032 * legend_rows * 5.2 / (5.2 + 0.22 * len(rows))), 1, 1))
    return fig
