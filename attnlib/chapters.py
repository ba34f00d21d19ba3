"""What each chapter trains: its comparisons, built from the notebook's parameters.

One source for every chapter: the notebook calls :func:`experiments` and shows what it
returns (``Experiment.table()``; the chapter function's code in a collapsed cell), and
``python -m attnlib.run --chapter 04_nam`` trains the same comparisons, so a notebook
pointed at the same results folder finds the records and trains nothing.

Each chapter function takes the profile (``setup`` in the notebooks) and the notebook's own
parameters, with the notebook's defaults, and returns its comparisons in notebook order.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import CodeType

from .callbacks import NAMSparsityPenalty, TemperatureAnnealing
from .data import ImageDataset
from .experiment import BOOK_RECIPE, FOUR_TIMES_THE_EPOCHS, TWICE_THE_EPOCHS, Comparison, compare
from .layers import format_choice
from .profiles import Profile
from .variants import PLAIN_PARTS, Variant


#: Seeds of a secondary experiment or arm (a control or ablation beside a chapter's headline
#: pair): the profile's first three. A headline comparison takes every seed of the profile.
SECONDARY_SEEDS = 3


@dataclass(frozen=True)
class Experiment:
    """One comparison of a chapter: its variants, the data subset it trains on, and how many
    of the profile's seeds it uses (``None``: all; a secondary check may use fewer).
    ``secondary`` names arms of the comparison that take only the first
    :data:`SECONDARY_SEEDS` of them (a control beside the headline pair). ``controls`` names
    arms that control for a confound of the method (a constant rescale, a wider network) on every
    seed: the results overview lists them as controls, not as verdicts on a method."""

    name: str
    variants: tuple[Variant, ...]
    train_subset: int | None = None   # None: the profile's training images
    test_subset: int | None = None    # None: the profile's test images
    seed_count: int | None = None     # None: every seed of the profile; n: its first n
    secondary: tuple[str, ...] = ()   # labels of arms on the first SECONDARY_SEEDS seeds only
    controls: tuple[str, ...] = ()    # labels of arms that control for a confound: no verdict

    def __post_init__(self) -> None:
        for role, labels in (("secondary", self.secondary), ("control", self.controls)):
            unknown = set(labels) - {v.label for v in self.variants}
            if unknown:
                raise ValueError(f"Experiment {self.name!r}: {role} arms {sorted(unknown)} are not among its "
                                 f"variants {[v.label for v in self.variants]}")

    def only(self, labels: Collection[str]) -> Experiment:
        """This comparison restricted to the arms in ``labels`` (none left: no variants)."""
        return dataclasses.replace(self, variants=tuple(v for v in self.variants if v.label in labels),
                                   secondary=tuple(label for label in self.secondary if label in labels),
                                   controls=tuple(label for label in self.controls if label in labels))

    def data(self, data: ImageDataset) -> ImageDataset:
        """The chapter's data for this comparison, cut from the profile's as the notebook does."""
        if self.train_subset is None and self.test_subset is None:
            return data
        # at_most: the smoke profile's synthetic data is smaller than the chapters' subsets and is
        # kept whole; for real data, check_parameters has refused a subset larger than the data.
        return data.subset(train=self.train_subset, test=self.test_subset, at_most=True)

    def seeds(self, setup: Profile, label: str | None = None) -> tuple[int, ...]:
        """The comparison's seeds, or those of the arm ``label`` (fewer for a secondary arm)."""
        seeds = setup.seeds if self.seed_count is None else setup.seeds[:self.seed_count]
        return seeds[:SECONDARY_SEEDS] if label in self.secondary else seeds

    def compare(self, setup: Profile, data: ImageDataset, *, results_dir: str | Path = "results",
                device: str = "auto", progress: bool = True) -> Comparison:
        """Train (or load) this comparison with the book's recipe: every variant on its seeds."""
        return compare(self.variants, setup, recipe=BOOK_RECIPE, seeds=self.seeds(setup), data=self.data(data),
                       results_dir=results_dir, device=device, progress=progress,
                       seed_counts={label: len(self.seeds(setup, label)) for label in self.secondary})

    def table(self, setup: Profile) -> str:
        """The comparison as a Markdown table: each variant's network and recipe changes."""
        def parts(v: Variant) -> str:
            chosen = [f"{kind}={format_choice(getattr(v, kind))}" for kind in ("norm", "conv", "attention")
                      if getattr(v, kind) != PLAIN_PARTS[kind]]
            return ", ".join(chosen + [f"{k}={val!r}" for k, val in v.model_kwargs.items()]) or "plain"

        def changes(v: Variant) -> str:
            items = [f"{k}={val:g}" if isinstance(val, float) else f"{k}={val}" for k, val in v.train.items()]
            return ", ".join(items + [repr(cb) for cb in v.callbacks]) or "–"

        rows = [f"| {v.label} | {v.model} | {parts(v)} | {changes(v)} |" for v in self.variants]
        train = "all" if self.train_subset is None else f"{self.train_subset:,}"
        test = "all" if self.test_subset is None else f"{self.test_subset:,}"
        fewer = [label for label in self.secondary if self.seeds(setup, label) != self.seeds(setup)]
        note = [] if not fewer else ["", f"Secondary arm{'s' * (len(fewer) > 1)}, on seeds "
                                         f"{', '.join(map(str, self.seeds(setup, fewer[0])))} only: {', '.join(fewer)}."]
        return "\n".join([f"Comparison **{self.name}**: {train} training and {test} test images, "
                          f"seeds {', '.join(map(str, self.seeds(setup)))}, the book's recipe with:", "",
                          "| variant | network | parts | recipe changes |", "|---|---|---|---|", *rows, *note])


def _linear_lr(batch: int, setup: Profile) -> dict:
    """Batch size ``batch`` with the learning rate scaled linearly from the profile's batch."""
    return {"batch_size": batch, "lr": BOOK_RECIPE.lr * batch / setup.batch_size}


def _trained_for(variant: Variant, epochs: int, name: str) -> Variant:
    """``variant`` trained for ``epochs`` (the cosine schedule stretched or shrunk with them),
    labelled ``"<label>, <name>"``."""
    return dataclasses.replace(variant, label=f"{variant.label}, {name}", train={**variant.train, "epochs": epochs})


def _twice(variant: Variant, setup: Profile) -> Variant:
    """``variant`` trained with twice its epochs: the twice-the-epochs check of whether a
    comparison has converged."""
    return _trained_for(variant, 2 * variant.train.get("epochs", setup.epochs), TWICE_THE_EPOCHS)


def _longer(variants: tuple[Variant, ...], **kwargs) -> Experiment:
    """A chapter's ``longer`` comparison: its headline arms with twice the epochs, the first (the
    baseline, whose runs are the baseline chapter's convergence check) on every seed and the
    others on the first :data:`SECONDARY_SEEDS`, so that every chapter reads the baseline's mean
    at twice the epochs over the same seeds."""
    return Experiment("longer", variants, secondary=tuple(v.label for v in variants[1:]), **kwargs)


def _twice_the_epochs(setup: Profile) -> tuple[Variant, ...]:
    """ResNet-20 with BN and with IEBN, trained with twice the epochs: the baseline chapter's
    convergence check and chapter 1's longer comparison (the same runs, seed for seed)."""
    return tuple(_twice(v, setup) for v in (Variant("ResNet-20", model="resnet20"),
                                            Variant("IEBN", model="resnet20", norm="iebn")))


def setup_and_baseline(setup: Profile) -> list[Experiment]:
    """``main``: the baseline and the post's AlexNet (a secondary arm: the chapters that use
    AlexNet train their own on a subset). ``convergence``: ResNet-20 and IEBN (the
    first paper chapter's method) with twice the epochs, to see whether the mean, and the
    difference a chapter reports (IEBN's against chapter 1's ``main``), still move; on every
    seed, since the shift it has to see is of the order of one seed standard deviation.
    ``precision``: ResNet-20 in full fp32 against the same seeds of the ``main`` runs, in their
    precision (``amp="auto"``: bf16 autocast on a GPU or a bf16-native CPU)."""
    baseline = Variant("ResNet-20", model="resnet20")
    fp32 = Variant("ResNet-20, fp32", model="resnet20", train={"amp": "off"})
    return [Experiment("main", (baseline, Variant("AlexNet", model="alexnet")), secondary=("AlexNet",)),
            Experiment("convergence", _twice_the_epochs(setup)),
            Experiment("precision", (baseline, fp32), seed_count=4)]


def iebn(setup: Profile, norm_batch: int = 16, noise_strengths: tuple[float, ...] = (0.1, 0.2)) -> list[Experiment]:
    """``longer``: the headline pair with twice the epochs, every seed: IEBN gains more from the
    longer schedule than its seeds' spread (the baseline chapter's check), so a
    verdict at convergence needs the longer runs. ``batch`` and ``noise`` train that pair as long
    with more batch noise in its statistics, on the first three seeds (they are secondary), and
    ``longer`` is their undisturbed arm. ``batch``: statistics over groups of ``norm_batch``
    images of each batch (ghost batches), at the same SGD batch, learning rate and steps.
    ``noise``: a noise attack on the batch statistics of each strength in ``noise_strengths``
    (:mod:`attnlib.layers.batch_noise`)."""
    if setup.batch_size % norm_batch:
        raise ValueError(f"01_iebn: norm_batch={norm_batch} does not divide the {setup.name!r} profile's batch "
                         f"of {setup.batch_size}: pick a divisor of it, e.g. 16")

    def disturbed(name: str, norm_kwargs: dict) -> tuple[Variant, ...]:
        """BN and IEBN, labelled ``"<BN or IEBN>, <name>"``, trained with twice the epochs."""
        return tuple(Variant(f"{label}, {name}", model="resnet20", norm=(norm, norm_kwargs),
                             train={"epochs": 2 * setup.epochs}) for label, norm in (("BN", "bn"), ("IEBN", "iebn")))

    noise = tuple(v for s in noise_strengths for v in disturbed(f"noise {s:g}", {"noise": s}))
    return [Experiment("main", (Variant("BN", model="resnet20"), Variant("IEBN", model="resnet20", norm="iebn"))),
            Experiment("batch", disturbed(f"groups of {norm_batch}", {"norm_batch": norm_batch}),
                       seed_count=SECONDARY_SEEDS),
            Experiment("noise", noise, seed_count=SECONDARY_SEEDS),
            Experiment("longer", _twice_the_epochs(setup))]


def ba_net(setup: Profile, small_subset: int | None = 3000, small_test: int | None = 5000) -> list[Experiment]:
    """``main``: SE and BA with the book's bottleneck, max(8, C // 16), and BA with the official
    code's, C // 16 (1, 2 and 4 channels in ResNet-20). ``alexnet``: the post's pair, its
    discarded gate an exact null; ``alexnet-longer``: its plain and BA networks with twice the
    epochs, every seed: on 3,000 images they are still learning at the profile's epochs (the
    null needs no such check: it is exact at any length); ``alexnet-longest``: that pair with
    four times the epochs, every seed, since at twice the epochs both networks were still
    improving and the verdict sat on the line between "worse" and "indistinguishable".
    ``ablation``: BA squeezing only the gated map. ``longer``: the headline arms with twice the
    epochs, the attention arms on the first three seeds and the baseline on every seed (its runs
    are the baseline chapter's convergence check, so that both chapters read the same mean)."""
    main = (Variant("ResNet-20", model="resnet20"), Variant("SE", model="resnet20", attention="se"),
            Variant("BA", model="resnet20", attention="ba"),
            Variant("BA, official bottleneck", model="resnet20", attention=("ba", {"min_hidden": 1})))
    alex = (Variant("AlexNet", model="alexnet"), Variant("BA-AlexNet", model="alexnet", attention="ba"),
            Variant("BA-AlexNet, gate discarded", model="alexnet", attention=("ba", {"discard_output": True})))
    ablation = (Variant("BA", model="resnet20", attention="ba"),
                Variant("BA, last feature only", model="resnet20", attention=("ba", {"last_feature_only": True})))
    alex_longest = tuple(_trained_for(v, 4 * setup.epochs, FOUR_TIMES_THE_EPOCHS) for v in alex[:2])
    return [Experiment("main", main, secondary=("BA, official bottleneck",)),
            Experiment("alexnet", alex, small_subset, small_test),
            Experiment("alexnet-longer", tuple(_twice(v, setup) for v in alex[:2]), small_subset, small_test),
            Experiment("alexnet-longest", alex_longest, small_subset, small_test),
            Experiment("ablation", ablation, seed_count=SECONDARY_SEEDS),
            _longer(tuple(_twice(v, setup) for v in main[:3]))]


def _mabn_for(batch: int):
    """MABN for a training batch of ``batch`` (the paper's window of 32 images)."""
    return "mabn" if batch == 2 else ("mabn", {"B": batch})


#: The paper's ImageNet setting: statistics over small groups inside an SGD batch of 32 images.
PAPER_SGD_BATCH, PAPER_NORM_GROUPS = 32, (2, 4, 8)


def mabn(setup: Profile, sweep_subset: int | None = 2000, sweep_test: int | None = 5000,
         paper_epoch_factor: int = 4, bn_batches: tuple[int, ...] = (2, 4, 8, 32),
         mabn_batches: tuple[int, ...] = (2, 4)) -> list[Experiment]:
    """``paper``: the paper's setting, every arm at SGD batch 32 with the same learning rate and
    steps, BN and MABN normalising over groups of n images of it (ghost batches; BN n32 is plain
    BN), for ``paper_epoch_factor`` times the profile's epochs: 2,000 images give 62 steps an
    epoch, and at the profile's epochs the baseline was still learning (``shorter`` shows it).
    ``convergence``: its baseline and headline pair with twice those epochs;
    ``shorter``: the same three arms and MABN with plain convolutions, with the profile's epochs
    and twice them, to show how the verdict, and the centred convolutions' part in it, move with
    the length of training.
    ``sweep``: real SGD batches of ``bn_batches`` and ``mabn_batches`` images for the paper
    setting's epochs, on the first three seeds (it is secondary), the learning rate scaled
    linearly, so the batch also changes the steps and the gradient noise; its BN at batch 32 is
    the paper setting's BN n32, one run."""
    def sgd(batch: int) -> dict:
        """SGD at batch ``batch`` for the paper setting's epochs, the learning rate scaled linearly."""
        return {**_linear_lr(batch, setup), "epochs": paper_epoch_factor * setup.epochs}

    paper_lr = sgd(PAPER_SGD_BATCH)
    smallest = PAPER_NORM_GROUPS[0]
    paper = ([Variant(f"BN n{n}", model="resnet20", norm=("bn", {"norm_batch": n}), train=paper_lr)
              for n in PAPER_NORM_GROUPS]
             + [Variant(f"BN n{PAPER_SGD_BATCH}", model="resnet20", train=paper_lr),
                Variant(f"MABN n{smallest}", model="resnet20", norm=("mabn", {"norm_batch": smallest}), conv="cenconv",
                        train=paper_lr),
                Variant(f"MABN n{smallest}, plain conv", model="resnet20", norm=("mabn", {"norm_batch": smallest}),
                        train=paper_lr)])
    sweep = ([Variant(f"BN b{b}", model="resnet20", train=sgd(b)) for b in bn_batches]
             + [Variant(f"MABN b{b}", model="resnet20", norm=_mabn_for(b), conv="cenconv", train=sgd(b))
                for b in mabn_batches]
             + [Variant(f"MABN b{b}, plain conv", model="resnet20", norm=_mabn_for(b), train=sgd(b))
                for b in mabn_batches[:1]])
    checked = [v for v in paper if v.label in (f"BN n{PAPER_SGD_BATCH}", f"BN n{smallest}", f"MABN n{smallest}")]
    with_plain = [*checked, next(v for v in paper if v.label == f"MABN n{smallest}, plain conv")]
    shorter = tuple(_trained_for(v, epochs, f"{epochs} epochs") for epochs in (setup.epochs, 2 * setup.epochs)
                    for v in with_plain)
    return [Experiment("paper", tuple(paper), sweep_subset, sweep_test),
            Experiment("convergence", tuple(_twice(v, setup) for v in checked), sweep_subset, sweep_test,
                       seed_count=SECONDARY_SEEDS),
            Experiment("shorter", shorter, sweep_subset, sweep_test, seed_count=SECONDARY_SEEDS),
            Experiment("sweep", tuple(sweep), sweep_subset, sweep_test, seed_count=SECONDARY_SEEDS)]


def nam(setup: Profile, penalty: float = 1e-4, strong_penalty: float = 1e-2, small_subset: int | None = 3000,
        small_test: int | None = 5000) -> list[Experiment]:
    """``main``: NAM with the penalty off, at ``penalty`` and at ``strong_penalty``, and its two
    controls: every residual branch times 0.5 (the value NAM's gates start at) and NAM with the
    weights' gradient let through. The headline arms are the plain network, the constant control
    and NAM; the variants of NAM are secondary. ``pixel``: the pixel module alone and after the
    channel one. ``longer``: the headline arms with twice the epochs (the baseline on every seed,
    the others on the first three, as in chapter 2)."""
    main = (Variant("ResNet-20", model="resnet20"),
            Variant("ResNet-20, branches x0.5", model="resnet20", attention=("scale", {"factor": 0.5})),
            Variant("NAM", model="resnet20", attention="nam"),
            Variant("NAM, weights not detached", model="resnet20", attention=("nam", {"detach_weights": False})),
            Variant(f"NAM + penalty {penalty:g}", model="resnet20", attention="nam",
                    callbacks=(NAMSparsityPenalty(penalty),)),
            Variant(f"NAM + penalty {strong_penalty:g}", model="resnet20", attention="nam",
                    callbacks=(NAMSparsityPenalty(strong_penalty),)))
    pixel = (Variant("ResNet-20", model="resnet20"), Variant("NAM channel", model="resnet20", attention="nam"),
             Variant("NAM pixel", model="resnet20", attention=("nam", {"channel": False, "spatial": True})),
             Variant("NAM channel + pixel", model="resnet20", attention=("nam", {"spatial": True})))
    longer = tuple(_twice(v, setup) for v in main[:3])
    return [Experiment("main", main, secondary=tuple(v.label for v in main[3:]), controls=(main[1].label,)),
            Experiment("pixel", pixel, small_subset, small_test),
            _longer(longer, controls=(longer[1].label,))]


def dynamic_conv(setup: Profile, anneal_epochs: int | None = None, widths: tuple[float, ...] = (0.25, 0.5),
                 small_subset: int | None = 3000, small_test: int | None = 5000) -> list[Experiment]:
    """``main``: ResNet-20, DY-ResNet-20 (K = 4) and the static network at the dynamic one's
    parameter count (twice as wide). ``widths``: static and dynamic pairs of thinner networks.
    ``ablations``: the annealing and K, on a subset. ``alexnet``: the post's pair;
    ``alexnet-longer``: that pair with twice the epochs, every seed (as in chapter 2, the
    AlexNet on 3,000 images is still learning at the profile's epochs). ``longer``:
    the static and dynamic networks with twice the epochs (the annealing stretched with them; the
    static one on every seed, as in chapter 2); ``widths-longer``: the thin pairs likewise, so that
    the width table, too, is read at both lengths."""
    # The paper anneals T from 30 to 1 over its first 10 epochs, about a tenth of training.
    # Linear in 1/T: linear in T sharpens the attention tenfold in the schedule's last third,
    # faster than the weights and BN's running statistics follow (the "linearly in T" arm).
    anneal_epochs = max(1, round(setup.epochs / 10)) if anneal_epochs is None else anneal_epochs

    def annealed(epochs: int) -> TemperatureAnnealing:
        return TemperatureAnnealing(start=30.0, end=1.0, epochs=epochs, linear_in="1/T")

    anneal = annealed(anneal_epochs)
    static, dynamic = (Variant("ResNet-20", model="resnet20"),
                       Variant("DY-ResNet-20", model="resnet20", conv="dynamic", callbacks=(anneal,)))
    wide = Variant("ResNet-20 x2 wide", model="resnet20", model_kwargs={"width_mult": 2.0})
    thin = tuple(variant for w in widths for variant in (
        Variant(f"ResNet-20 x{w:g}", model="resnet20", model_kwargs={"width_mult": w}),
        Variant(f"DY-ResNet-20 x{w:g}", model="resnet20", model_kwargs={"width_mult": w}, conv="dynamic",
                callbacks=(anneal,))))
    ablations = (static, dynamic,
                 Variant("DY, annealed linearly in T", model="resnet20", conv="dynamic",
                         callbacks=(TemperatureAnnealing(start=30.0, end=1.0, epochs=anneal_epochs),)),
                 Variant("DY, T=1 throughout", model="resnet20", conv="dynamic",
                         callbacks=(TemperatureAnnealing(start=1.0, end=1.0, epochs=1),)),
                 Variant("DY, K=2", model="resnet20", conv=("dynamic", {"num_experts": 2}), callbacks=(anneal,)))
    alex = (Variant("AlexNet", model="alexnet"),
            Variant("AlexNet-DY, K=2", model="alexnet", conv=("dynamic", {"num_experts": 2}), callbacks=(anneal,)))

    def twice_annealed(variant: Variant) -> Variant:
        """``variant`` with twice the epochs, and its annealing (if any) over twice as many."""
        longer = _twice(variant, setup)
        return dataclasses.replace(longer, callbacks=(annealed(2 * anneal_epochs),)) if variant.callbacks else longer

    longer = tuple(map(twice_annealed, (static, dynamic)))
    return [Experiment("main", (static, dynamic, wide), controls=(wide.label,)),
            Experiment("widths", thin, seed_count=SECONDARY_SEEDS),
            Experiment("ablations", ablations, small_subset, small_test),
            Experiment("alexnet", alex, small_subset, small_test),
            Experiment("alexnet-longer", tuple(map(twice_annealed, alex)), small_subset, small_test),
            _longer(longer),
            Experiment("widths-longer", tuple(map(twice_annealed, thin)), seed_count=SECONDARY_SEEDS)]


CHAPTERS: dict[str, Callable[..., list[Experiment]]] = {
    "00_setup_and_baseline": setup_and_baseline,
    "01_iebn": iebn,
    "02_ba_net": ba_net,
    "03_mabn": mabn,
    "04_nam": nam,
    "05_dynamic_conv": dynamic_conv,
}


#: Comparisons a chapter shows that another chapter defines, as plan items (``CHAPTER:EXPERIMENT``):
#: chapter 0 sets IEBN's difference beside its convergence check.
SHOWN_FROM_OTHERS: dict[str, tuple[str, ...]] = {"00_setup_and_baseline": ("01:main",)}


def chapter_plan(name: str) -> list[str]:
    """The plan items (``python -m attnlib.run --plan``) of every run chapter ``name`` shows: its
    own comparisons and those of other chapters it borrows."""
    stem = chapter_name(name)
    return [stem[:2], *SHOWN_FROM_OTHERS.get(stem, ())]


def chapter_name(name: str) -> str:
    """The chapter a name means: its notebook stem (``04_nam``), number (``04``) or title (``nam``)."""
    matches = [stem for stem in CHAPTERS if name in (stem, stem[:2], stem[3:])]
    if len(matches) != 1:
        raise ValueError(f"unknown chapter {name!r}; choose one of {', '.join(CHAPTERS)} "
                         "(or its number, e.g. 04, or its name, e.g. nam)")
    return matches[0]


def chapter_parameters(name: str) -> dict[str, object]:
    """The chapter's own notebook parameters and their defaults (beyond the profile's)."""
    signature = inspect.signature(CHAPTERS[chapter_name(name)])
    return {p.name: p.default for p in list(signature.parameters.values())[1:]}


def experiments(name: str, setup: Profile, **parameters) -> dict[str, Experiment]:
    """The comparisons of chapter ``name`` for the profile ``setup`` and notebook parameters, by
    name in notebook order. A parameter the chapter cannot use stops here, before any training."""
    stem = chapter_name(name)
    check_parameters(stem, setup, **parameters)
    return {e.name: e for e in CHAPTERS[stem](setup, **parameters)}


def source(name: str) -> str:
    """The code of chapter ``name``'s function, then of each private helper it calls (directly, in
    a nested function or through another helper), for the notebook to show what it trains."""
    function = CHAPTERS[chapter_name(name)]
    return "\n\n".join(inspect.getsource(f) for f in (function, *_helpers(function.__code__)))


def _helpers(code: CodeType) -> list[Callable]:
    """This module's private functions that ``code`` (or a function nested in it) names, and
    those they name in turn, each once, in the order a depth-first reading meets them."""
    found: list[Callable] = []

    def visit(code: CodeType) -> None:
        for name in _names(code):
            helper = globals().get(name)
            if name.startswith("_") and inspect.isfunction(helper) and helper not in found:
                found.append(helper)
                visit(helper.__code__)

    visit(code)
    return found


def _names(code: CodeType) -> Iterator[str]:
    """The global names ``code`` and the functions nested in it use, in order."""
    yield from code.co_names
    for constant in code.co_consts:
        if isinstance(constant, CodeType):
            yield from _names(constant)


def _positive_whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _non_negative_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


#: Batch sizes the MABN sweep may use: divisors of the paper's window of 32 images.
MABN_BATCHES = (2, 4, 8, 16, 32)

#: What each chapter parameter may be: (test, what is allowed). Subsets are also checked
#: against the profile's data size in :func:`check_parameters`.
PARAMETER_RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "subset": (lambda v: v is None or _positive_whole(v), "a whole number of images >= 1, or None for all"),
    "norm_batch": (_positive_whole, "a whole number of images >= 1 that divides the batch size"),
    "bn_batches": (lambda v: isinstance(v, tuple) and len(v) > 0 and all(map(_positive_whole, v)),
                   "a non-empty tuple of batch sizes, e.g. (2, 4, 8, 32)"),
    "mabn_batches": (lambda v: isinstance(v, tuple) and len(v) > 0 and all(b in MABN_BATCHES for b in v),
                     f"a non-empty tuple of batch sizes from {MABN_BATCHES}, e.g. (2, 4)"),
    "penalty": (_non_negative_number, "a finite number >= 0"),
    "paper_epoch_factor": (_positive_whole, "a whole number >= 1 (the profile's epochs times it)"),
    "anneal_epochs": (lambda v: v is None or _positive_whole(v),
                      "a whole number of epochs >= 1, or None for a tenth of the training"),
    "noise_strengths": (lambda v: isinstance(v, tuple) and len(v) > 0 and all(_non_negative_number(s) and s > 0
                                                                              for s in v),
                        "a non-empty tuple of attack strengths > 0, e.g. (0.1, 0.2)"),
    "widths": (lambda v: isinstance(v, tuple) and all(_non_negative_number(w) and 0 < w < 1 for w in v),
               "a tuple of width multipliers between 0 and 1, e.g. (0.25, 0.5)"),
}


def _rule(parameter: str) -> tuple[Callable[[object], bool], str]:
    if parameter.endswith(("_subset", "_test")):
        return PARAMETER_RULES["subset"]
    return PARAMETER_RULES[parameter.removeprefix("strong_")]


def check_parameters(name: str, setup: Profile, **parameters) -> None:
    """Refuse, before anything trains, a chapter parameter that is unknown, of the wrong kind,
    impossible, or a subset larger than the profile's data; the message says what is allowed."""
    stem = chapter_name(name)
    known = chapter_parameters(stem)
    if unknown := set(parameters) - set(known):
        raise ValueError(f"chapter {stem} has no parameter {sorted(unknown)}; its parameters: "
                         f"{', '.join(known) or 'none'}")
    train, test = setup.image_counts()
    for parameter, value in parameters.items():
        allowed, what = _rule(parameter)
        if not allowed(value):
            raise ValueError(f"{stem}: {parameter}={value!r} is not allowed; {parameter} must be {what} "
                             f"(default {known[parameter]!r})")
        limit = test if parameter.endswith("_test") else train
        if parameter.endswith(("_subset", "_test")) and value is not None and setup.dataset != "synthetic" \
                and value > limit:
            raise ValueError(f"{stem}: {parameter}={value} is more than the {limit} "
                             f"{'test' if parameter.endswith('_test') else 'training'} images of the {setup.name} "
                             f"profile's {setup.dataset}; give at most {limit}, or None for all of them")
