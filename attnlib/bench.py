"""``python -m attnlib.bench``: what every chapter's layer costs against the plain network, in one run.

    python -m attnlib.bench                          # ResNet-20, batch 128, the book's precision, channels_last
    python -m attnlib.bench --device cuda --compile  # a GPU, with torch.compile
    python -m attnlib.bench --methods SE NAM --amp off --no-channels-last
    python -m attnlib.bench --threads 1              # steadier ratios on a shared machine

For each method it builds the same network with the method's layer, and times all of them
interleaved with :func:`attnlib.benchmark.measure` (train step, eval forward, memory,
FLOPs), then the training loop's own overhead with :func:`attnlib.benchmark.fit_overhead`.
It prints a table of absolute figures and of ratios against the plain network (ratios
hold on a noisy machine; absolute figures do not), checks each step-time ratio against
its target, and writes everything as JSON (``--out``). ``python -m booktools.book overview``
renders the JSON files in ``book/benchmark/`` into the book's benchmark page.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .arguments import positive_int
from .benchmark import epoch_seconds, fit_overhead, machine_load, measure
from .devices import autocast_dtype, resolve_device
from .files import atomic_write_text
from .models import MODELS, Parts, build_model
from .runinfo import environment

@dataclass(frozen=True)
class Method:
    """A chapter's layer in the benchmark network; ``target`` is the largest acceptable
    train-step time relative to the plain network (batch 128, ResNet-20)."""

    label: str
    parts: Parts = Parts()
    target: float | None = None


BASELINE = Method("plain (BN)")
#: The largest share the training loop (:func:`~attnlib.train.fit`) may add to the bare step.
LOOP_TARGET = 0.05
METHODS = (
    Method("IEBN", Parts(norm="iebn"), target=1.10),
    Method("SE", Parts(attention="se"), target=1.10),
    Method("BA", Parts(attention="ba"), target=1.15),
    Method("MABN + CenConv", Parts(norm="mabn", conv="cenconv"), target=1.30),
    Method("NAM", Parts(attention="nam"), target=1.10),
    Method("DynamicConv (K=4)", Parts(conv="dynamic"), target=1.60),
)


def build(method: Method, model: str, image_shape: tuple[int, int, int], num_classes: int = 10) -> nn.Module:
    return build_model(model, num_classes=num_classes, in_channels=image_shape[0], parts=method.parts)


def run(methods: tuple[Method, ...] = METHODS, *, model: str = "resnet20", batch_size: int = 128,
        image_shape: tuple[int, int, int] = (3, 32, 32), amp: str = "auto", channels_last: bool = True,
        compile: bool = False, device: str = "auto", steps: int = 3, repeats: int = 5,
        loop_steps: int = 10, epoch_models: tuple[str, ...] = (), epoch_images: int = 50_000) -> dict:
    """The benchmark's record: settings, environment, one row per network, the loop overhead."""
    start = time.perf_counter()
    resolved = resolve_device(device)
    nets = {m.label: functools.partial(build, m, model, image_shape) for m in (BASELINE, *methods)}
    with machine_load() as load:
        rows = measure(nets, batch_size, image_shape, steps=steps, warmup=2, repeats=repeats, amp=amp,
                       channels_last=channels_last, compile=compile, device=resolved)
        loop = fit_overhead(nets[BASELINE.label], batch_size, image_shape, steps=loop_steps, amp=amp,
                            channels_last=channels_last, device=resolved)
        epochs = {name: epoch_seconds(functools.partial(build_model, name, in_channels=image_shape[0]),
                                      images=epoch_images, image_shape=image_shape, batch_size=batch_size, amp=amp,
                                      channels_last=channels_last, device=resolved)
                  for name in epoch_models}
    targets = {m.label: m.target for m in methods}
    for row in rows:
        row["target"] = targets.get(row["label"])
        row["meets_target"] = None if row["target"] is None else row["train_step_ms_vs_first"] <= row["target"]
    settings = dict(model=model, batch_size=batch_size, image_shape=list(image_shape), amp=amp,
                    dtype=str(autocast_dtype(amp, resolved) or "float32").replace("torch.", ""),
                    channels_last=channels_last, compile=compile, steps=steps, repeats=repeats,
                    threads=torch.get_num_threads())
    return {"settings": settings, "environment": environment(resolved), "methods": [asdict(m) for m in methods],
            "rows": rows, "loop": loop, "epoch_times": epochs, "machine_load": load, "wall_s": time.perf_counter() - start}


def table(result: dict) -> str:
    """Markdown: ratios to the plain network and each target first, then absolute figures."""
    lines = ["| network | step time vs plain | target | eval speed vs plain | train step (ms) | train img/s "
             "| eval img/s | params | MFLOPs/img | activations (MB) | peak (MB) |", "|" + "---|" * 11]
    for r in result["rows"]:
        peak = "–" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        target = "–" if r["target"] is None else f"≤ {r['target']:.2f}x " + ("met" if r["meets_target"] else "**missed**")
        lines.append(f"| {r['label']} | {r['train_step_ms_vs_first']:.2f}x | {target} "
                     f"| {r['eval_images_per_s_vs_first']:.2f}x | {r['train_step_ms']:.1f} | {r['train_images_per_s']:,.0f} "
                     f"| {r['eval_images_per_s']:,.0f} | {r['params']:,d} | {r['flops_per_image'] / 1e6:.1f} "
                     f"| {r['activation_mb']:.1f} | {peak} |")
    return "\n".join(lines)


def loop_line(result: dict) -> str:
    loop = result["loop"]
    return (f"Training loop: `fit` trains the plain network at {loop['fit_images_per_s']:,.0f} img/s against "
            f"{loop['bare_images_per_s']:,.0f} img/s for the bare step on pre-made tensors: the loop adds "
            f"{100 * loop['overhead']:+.1f} % (target ≤ {100 * LOOP_TARGET:.0f} %).")


def epoch_line(result: dict) -> str:
    """The timed training epochs, if the run timed any."""
    epochs = result.get("epoch_times") or {}
    return "".join(f"Epoch of {name} on {e['images']:,} images: {e['epoch_s']:.2f} s "
                   f"({e['train_images_per_s']:,.0f} img/s). " for name, e in epochs.items()).strip()


def load_line(result: dict) -> str:
    """How loaded the machine was during the measurement (records before it was kept: unknown)."""
    load = result.get("machine_load")
    if not load or load.get("other_processes_cpu_share") is None:
        return "Machine load during the run: not recorded."
    share = 100 * load["other_processes_cpu_share"]
    verdict = "a quiet machine" if load["quiet"] else "**under load**: the ratios are diluted, do not compare them"
    return (f"Machine load during the run: other processes took {share:.0f} % of the {load['cpus']} CPUs' time "
            f"(load average {load['load_average_start']:.1f} at the start, {load['load_average_end']:.1f} at "
            f"the end): {verdict}.")


def record_name(result: dict) -> str:
    """What a run measured: ``<cpu|gpu>-<model>-b<batch>-<dtype>[-compiled][-Nthread]``."""
    s, env = result["settings"], result["environment"]
    kind = "gpu" if not env["device"].startswith("CPU") else "cpu"
    name = f"{kind}-{s['model']}-b{s['batch_size']}-{s['dtype']}" + ("-compiled" if s["compile"] else "")
    return name + (f"-{s['threads']}thread" if kind == "cpu" else "")


def default_out(result: dict, folder: Path) -> Path:
    """``folder/<record_name>-<UTC date and time>.json``: each run its own file, so that the
    benchmark page can take the median of several."""
    return folder / f"{record_name(result)}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    labels = [m.label for m in METHODS]
    p = argparse.ArgumentParser(
        prog="python -m attnlib.bench", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Time every chapter's layer against the plain network (same model, batch, dtype, device), "
                    "in one run, and the training loop's overhead. Prints a table and writes JSON.",
        epilog=f"Methods: {', '.join(labels)}. Targets are step-time ratios to the plain network.")
    p.add_argument("--methods", nargs="+", metavar="NAME", default=labels,
                   help="which methods to time (default: all)")
    p.add_argument("--model", default="resnet20", help="network (default resnet20)")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--image-shape", default="3,32,32", help="C,H,W of the synthetic images (default 3,32,32)")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                   help="autocast dtype (default auto: what the book's runs use, bf16 where the hardware "
                        "computes it natively, fp32 elsewhere; off = fp32)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--compile", action="store_true", help="torch.compile every network (slow to start)")
    p.add_argument("--device", default="auto", help="auto (a GPU when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice; 1 gives steadier "
                                               "ratios on a shared machine)")
    p.add_argument("--steps", type=positive_int, default=3, help="steps per timed round (default 3)")
    p.add_argument("--repeats", type=positive_int, default=5, help="interleaved rounds; the median is reported (default 5)")
    p.add_argument("--epoch-times", nargs="+", metavar="MODEL", default=[],
                   help="also time a training epoch of these networks with fit, e.g. resnet18 resnet20")
    p.add_argument("--epoch-images", type=positive_int, default=50_000,
                   help="synthetic images per timed epoch (default 50000, CIFAR's training set)")
    p.add_argument("--out", type=Path, help="JSON file to write (default: OUT_DIR/<device>-<model>-....json)")
    p.add_argument("--out-dir", type=Path, default=Path("benchmark"),
                   help="folder of the JSON records (default ./benchmark; `make bench` writes to the book's "
                        "book/benchmark/, which its benchmark page shows)")
    args = p.parse_args(argv)
    if unknown_models := set(args.epoch_times) - set(MODELS):
        p.error(f"--epoch-times: unknown models {sorted(unknown_models)}; choose from {sorted(MODELS)}")
    unknown = set(args.methods) - set(labels)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {labels}")
    try:
        args.shape = tuple(int(v) for v in args.image_shape.split(","))
    except ValueError:
        args.shape = ()
    if len(args.shape) != 3 or min(args.shape) < 1:
        p.error(f"--image-shape must be C,H,W (three whole numbers >= 1), got {args.image_shape!r}")
    try:
        resolve_device(args.device)
    except (ValueError, RuntimeError) as err:
        p.error(f"argument --device: {err}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    shape = args.shape
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    methods = tuple(m for m in METHODS if m.label in args.methods)
    result = run(methods, model=args.model, batch_size=args.batch_size, image_shape=shape, amp=args.amp,
                 channels_last=args.channels_last, compile=args.compile, device=args.device, steps=args.steps,
                 repeats=args.repeats, epoch_models=tuple(args.epoch_times), epoch_images=args.epoch_images)
    out = args.out or default_out(result, args.out_dir)
    atomic_write_text(out, json.dumps(result, indent=1))
    print(f"{result['environment']['device']}; {result['settings']}")
    print(table(result))
    print(loop_line(result))
    print(load_line(result))
    if result["epoch_times"]:
        print(epoch_line(result))
    print(f"wrote {out} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
