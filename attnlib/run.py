"""Train a chapter's comparison (or chosen variants) from the command line.

    python -m attnlib.run --chapter 04_nam --profile quick --results-dir book/results
    torchrun --nproc_per_node 2 -m attnlib.run --chapter 04_nam --profile quick

It writes exactly the records that ``compare`` writes in the notebook, so the notebook,
pointed at the same results folder, loads them instead of training. Under ``torchrun`` the
same command trains data-parallel (one process per GPU, or per CPU share with Gloo).
Run ``python -m attnlib.run --help`` for every option.
"""
from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence

import torch

from . import distributed
from .arguments import positive_int
from .chapters import CHAPTERS, Experiment, chapter_name, chapter_parameters, experiments
from .data import DatasetError
from .devices import resolve_device
from .experiment import BOOK_RECIPE, Comparison
from .pool import make_jobs, queue_status, restore_status, train_queue
from .profiles import PROFILES, profiles_help, resolve_profile
from .records import ResultsFolderError, writable_folder
from .variants import SYNC_BN, Variant

VARIANT_FIELDS = ("model", "norm", "conv", "attention")

DESCRIPTION = """\
Train what a chapter's notebook trains, or a few variants of your own, and write the
records the notebooks read. A run that already has a record in the results folder is
loaded, not trained again; an interrupted run resumes from its last epoch.

The options mirror the notebook's `parameters` cell: --profile, --dataset, --epochs,
--seeds, --device and --results-dir, plus the chapter's own parameters with --param.
The book's executed notebooks read book/results; train into it and re-execute a chapter
(python -m booktools.book execute --profile quick 04_nam) to see your runs in the book
without retraining.

A queue of many runs: --plan lists them in order (repeatable), and --workers N trains N at
a time in separate processes that share the results folder through claim files; stop it
at any moment and start it again to go on where it stopped (--status shows where it is).

Several processes for one run: start the same command with torchrun. The global batch (the profile's,
or --batch-size) is split evenly, each of N processes trains on batch/N images per step,
and the learning rate is the recipe's, unchanged.
"""

EPILOG = """\
examples:
  python -m attnlib.run --list
  python -m attnlib.run --chapter 04_nam --profile smoke --results-dir /tmp/results
  python -m attnlib.run --chapter nam --experiment main --only NAM --seeds 0
  python -m attnlib.run --chapter 03 --param "mabn_batches=(2,)"
  python -m attnlib.run --variant "SE: attention=se" --variant "BN: norm=bn" --epochs 2
  torchrun --nproc_per_node 2 -m attnlib.run --chapter 00 --profile quick --seeds 0
  python -m attnlib.run --profile book --workers 2 --threads 1 --results-dir book/results \
      --plan 00:main:ResNet-20 --plan 00:convergence --plan 01:main
"""


def _top_level_items(text: str) -> list[str]:
    """``text`` split at the commas outside parentheses."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    return [item.strip() for item in [*items, text[start:]] if item.strip()]


def parse_choice(text: str):
    """A layer choice: ``name`` or ``name(option=value, ...)`` with Python literals as values."""
    if "(" not in text:
        return text
    try:
        call = ast.parse(text, mode="eval").body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and not call.args):
            raise ValueError
        return call.func.id, {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a layer choice: write name or "
                                         "name(option=value, ...), e.g. mabn(B=4)") from None


def parse_variant(text: str) -> Variant:
    """``"LABEL: key=value, key=value"`` with keys model, norm, conv, attention; a layer's
    options in parentheses, e.g. ``"MABN b4: norm=mabn(B=4), conv=cenconv"``."""
    label, colon, rest = text.partition(":")
    if not colon:
        raise argparse.ArgumentTypeError(f"--variant {text!r} has no colon: write LABEL: key=value, ... "
                                         f"with keys {', '.join(VARIANT_FIELDS)} (e.g. 'SE: attention=se')")
    fields = {}
    for item in _top_level_items(rest):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in VARIANT_FIELDS:
            raise argparse.ArgumentTypeError(
                f"--variant {text!r}: write LABEL: key=value, ... with keys {', '.join(VARIANT_FIELDS)}")
        fields[key] = value.strip() if key == "model" else parse_choice(value.strip())
    if not label.strip():
        raise argparse.ArgumentTypeError(f"--variant {text!r} has no label before the colon")
    try:
        return Variant(label.strip(), **fields)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: {err}") from None


def parse_parameter(text: str) -> tuple[str, object]:
    """``name=value``; the value is a Python literal (number, tuple, None) or else a string."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"--param {text!r}: write name=value, e.g. penalty=1e-3")
    try:
        return name.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        return name.strip(), value.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m attnlib.run", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_argument_group("what to train (a chapter, or --variant)")
    what.add_argument("--chapter", help="a chapter by notebook name (04_nam), number (04) or name (nam): "
                                        "every comparison its notebook trains")
    what.add_argument("--experiment", action="append", default=[], metavar="NAME",
                      help="only this comparison of the chapter (repeatable; --list shows their names)")
    what.add_argument("--only", action="append", default=[], metavar="LABEL",
                      help="only the variant with this label (repeatable), e.g. --only NAM")
    what.add_argument("--param", action="append", default=[], type=parse_parameter, metavar="NAME=VALUE",
                      help="a parameter of the chapter's notebook, e.g. --param penalty=1e-3 "
                           "(--list shows each chapter's parameters and defaults)")
    what.add_argument("--variant", action="append", default=[], type=parse_variant, metavar="SPEC",
                      help=f"instead of a chapter: 'LABEL: model=resnet20, norm=bn, conv=conv, attention=se' "
                           f"(repeatable; norm={SYNC_BN} converts every BN to SyncBatchNorm)")
    what.add_argument("--plan", action="append", default=[], metavar="CHAPTER[:EXPERIMENT[:LABEL]]",
                      help="a queue, in order (repeatable): a chapter, one of its comparisons, or one "
                           "variant of it, e.g. --plan 00:main:ResNet-20 --plan 01:main")
    what.add_argument("--list", action="store_true", help="list the chapters, their comparisons and "
                                                          "parameters, and exit")
    how = parser.add_argument_group("how to train (as in the notebook's parameters cell)")
    how.add_argument("--profile", default="quick", choices=list(PROFILES),
                     help=profiles_help("quick"))
    how.add_argument("--dataset", help="another dataset than the profile's: fashion_mnist, cifar10, "
                                       "cifar100 or synthetic")
    how.add_argument("--epochs", type=positive_int, help="epochs (default: the profile's)")
    how.add_argument("--seeds", type=int, nargs="+", help="seeds, e.g. --seeds 0 1 2 (default: the profile's)")
    how.add_argument("--batch-size", type=positive_int, help="the GLOBAL batch per optimiser step (default: the "
                                                    "profile's); under torchrun each process takes batch/N")
    how.add_argument("--results-dir", default="results",
                     help="folder of the records (default: ./results; the book reads book/results)")
    how.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                     help="auto: GPU LOCAL_RANK if there is one, else the CPU (default: auto)")
    how.add_argument("--no-progress", action="store_true", help="no progress bar")
    queue = parser.add_argument_group("a queue of runs, several at a time")
    queue.add_argument("--workers", type=positive_int, default=1,
                       help="train this many runs at a time, one process each (default: 1, in this process)")
    queue.add_argument("--threads", type=positive_int, help="torch threads per worker (default: torch's own; "
                                                   "on a 2-core CPU --workers 2 --threads 1 is fastest)")
    queue.add_argument("--status", action="store_true", help="show each run's state (done with its accuracy, "
                                                             "training now, checkpointed epoch, pending), the time "
                                                             "left at the pace of finished runs, and exit; with "
                                                             "--restore-weights, each run without its weights and "
                                                             "whether this machine can restore it")
    queue.add_argument("--restore-weights", action="store_true",
                       help="instead of training missing runs, train again each run that has a record but not "
                            "its weights (git keeps seed 0's), and put the weights beside the record once the new "
                            "run repeats it exactly (same footing: device, threads, precision)")
    return parser


def list_chapters() -> str:
    setup = resolve_profile("quick")
    lines = []
    for stem in CHAPTERS:
        params = ", ".join(f"{k}={v!r}" for k, v in chapter_parameters(stem).items()) or "none"
        lines.append(f"{stem}  (parameters: {params})")
        for exp in experiments(stem, setup).values():
            lines.append(f"  {exp.name}: " + "; ".join(v.label for v in exp.variants))
    return "\n".join(lines)


def chapter_experiments(chapter: str, names: Sequence[str], only: Sequence[str], setup,
                        params: dict) -> list[Experiment]:
    """A chapter's comparisons, only those named in ``names`` and the variants in ``only`` (if given)."""
    chosen = list(experiments(chapter_name(chapter), setup, **params).values())
    all_names = [e.name for e in chosen]
    if missing := set(names) - set(all_names):
        raise ValueError(f"chapter {chapter} has no comparison {sorted(missing)}; it has {all_names}")
    chosen = [e for e in chosen if not names or e.name in names]
    if only:
        labels = {v.label for e in chosen for v in e.variants}
        if missing := set(only) - labels:
            raise ValueError(f"no variant labelled {sorted(missing)}; the labels are {sorted(labels)}")
        chosen = [e.only(only) for e in chosen]
        chosen = [e for e in chosen if e.variants]
    return chosen


def plan_experiments(items: Sequence[str], setup, params: dict) -> list[Experiment]:
    """``--plan`` items (``CHAPTER[:EXPERIMENT[:LABEL]]``) as comparisons, in the given order."""
    chosen = []
    for item in items:
        chapter, experiment, label = (item.split(":", 2) + ["", ""])[:3]
        chosen += chapter_experiments(chapter, [experiment] if experiment else [], [label] if label else [],
                                      setup, params)
    return chosen


def chosen_experiments(args: argparse.Namespace, setup) -> list[Experiment]:
    """The comparisons the arguments ask for, with --experiment and --only applied."""
    if sum(map(bool, (args.variant, args.chapter, args.plan))) > 1:
        raise ValueError("say what to train one way: --chapter, --plan or --variant")
    if args.variant:
        if args.experiment or args.param or args.only:
            raise ValueError("--variant trains your own variants; it does not combine with --experiment, "
                             "--only or --param")
        return [Experiment("variants", tuple(args.variant))]
    if args.plan:
        if args.experiment or args.only:
            raise ValueError("--plan names the comparisons and variants itself; drop --experiment and --only")
        return plan_experiments(args.plan, setup, dict(args.param))
    if args.chapter:
        return chapter_experiments(args.chapter, args.experiment, args.only, setup, dict(args.param))
    raise ValueError("say what to train: --chapter NAME, --plan ITEM or --variant SPEC (see --help, --list)")


def summary_lines(name: str, cmp: Comparison) -> list[str]:
    lines = [f"{name}: {cmp.data.describe()}, {cmp.trained_now} runs trained now"]
    for row in cmp.summary():
        batch = cmp.runs(row["label"])[0]["config"]["batch_size"]
        lines.append(f"  {row['label']:>28s}  final test acc {100 * row['final_mean']:.2f} % over "
                     f"{row['seeds']} seeds; training {row['train_images_per_s']:.0f} images/s, "
                     f"{1000 * batch / row['train_images_per_s']:.0f} ms per step of {batch} images")
    return lines


#: Errors that mean the command line asked for something wrong or impossible (a bad value, a
#: missing or damaged file, an unwritable folder): printed as one line, without a traceback.
USER_ERRORS = (ValueError, DatasetError, ResultsFolderError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except USER_ERRORS as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")


def _run(args: argparse.Namespace) -> int:
    if args.list:
        print(list_chapters())
        return 0
    setup = resolve_profile(args.profile, dataset=args.dataset, epochs=args.epochs, seeds=args.seeds,
                            batch_size=args.batch_size)
    resolve_device(args.device)  # a missing GPU fails here, not in each worker
    chosen = chosen_experiments(args, setup)
    data = setup.load()
    for exp in chosen:  # a subset the data cannot give or an unknown part fails here, before anything trains
        for variant in exp.variants:
            variant.build(exp.data(data), seed=0)
    writable_folder(args.results_dir)
    if args.status:
        jobs = make_jobs(chosen, setup, BOOK_RECIPE, data)
        if args.restore_weights:
            torch.set_num_threads(args.threads or torch.get_num_threads())  # the footing names the threads
            print("\n".join(restore_status(jobs, args.results_dir, resolve_device(args.device))))
        else:
            print("\n".join(queue_status(jobs, args.results_dir)))
        return 0
    if args.workers > 1 or args.threads or args.restore_weights:
        if distributed.launched_by_torchrun():
            raise ValueError("--workers, --threads and --restore-weights start processes of their own; do not "
                             "combine them with torchrun")
        return train_queue(chosen, setup, BOOK_RECIPE, args.results_dir, workers=args.workers,
                           threads=args.threads or torch.get_num_threads(), device=args.device,
                           restore=args.restore_weights)
    device = distributed.init_from_env(args.device)
    try:
        report = [f"profile {setup.name}: {setup.epochs} epochs, global batch {setup.batch_size}, "
                  f"{distributed.world_size()} process(es), seeds {setup.seeds}"]
        for exp in chosen:
            cmp = exp.compare(setup, data, results_dir=args.results_dir, device=device,
                              progress=not args.no_progress)
            report += summary_lines(exp.name, cmp)
        if distributed.is_main():
            print("\n".join(report))
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
