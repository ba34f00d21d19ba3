"""Measuring what a layer costs: step time, throughput, memory and FLOPs, and the training loop's overhead.

These time networks alone, on synthetic inputs already on the device, so that the
numbers compare layers, not data pipelines. :func:`measure` is the one timer of the book:
the chapters' cost sections and ``python -m attnlib.bench`` both use it. It times the
networks **interleaved** (round 1: A, B, C; round 2: A, B, C; ...) and reports the median
per network, so a slow spell of a shared machine hits every network alike and the ratios
hold even when the absolute figures wander. The device is synchronised only around each
timed group of steps. With ``results_dir`` the measurement is a record: a second call with
the same networks and settings on the same machine loads it instead of timing again.

:func:`fit_overhead` measures the training loop itself: images/s of :func:`~attnlib.train.fit`
(device-resident data, augmentation, forward, backward, optimiser, scheduler, bookkeeping)
against the bare step of the same model and optimiser on pre-made tensors, the two timed
in alternation (an epoch of ``fit``, a round of bare steps, ...), as :func:`measure` does.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .config import TrainConfig
from .data import synthetic_dataset
from .devices import autocast, autocast_dtype, resolve_device
from .files import atomic_write_text
from .history import Callback, TrainState
from .runinfo import environment
from .train import fit, make_optimizer

BENCH_FORMAT = 1
Shape = tuple[int, int, int]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def _inputs(model: nn.Module, batch_size: int, image_shape: Shape, device: torch.device,
            channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch_size, *image_shape, device=device).contiguous(memory_format=_memory_format(channels_last))
    with torch.no_grad():
        classes = model.eval()(x[:1]).shape[1]  # also sizes lazily built layers
    return x, torch.randint(0, classes, (batch_size,), device=device)


def count_flops(model: nn.Module, image_shape: Shape) -> int:
    """Forward FLOPs for one image (a multiply-add counts 2), counted in eval mode."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, *image_shape, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


def _step_function(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, train: bool,
                   dtype: torch.dtype | None, compile: bool = False,
                   optimizer: torch.optim.Optimizer | None = None) -> Callable[[], None]:
    """One training step (forward, cross-entropy, backward, optimiser step; SGD with momentum
    unless ``optimizer`` is given) or one inference forward."""
    device = x.device
    net = torch.compile(model) if compile else model
    model.train(train)
    if not train:
        def infer() -> None:
            with torch.no_grad(), autocast(device, dtype):
                net(x)
        return infer
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        with autocast(device, dtype):
            loss = nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def _interleaved_seconds(steps_by_label: dict[str, Callable[[], None]], device: torch.device, *,
                         steps: int, warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds per step of every function, timed in interleaved rounds."""
    if min(steps, repeats) < 1 or warmup < 0:
        raise ValueError("steps and repeats must be positive and warmup non-negative")
    for step in steps_by_label.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {label: [] for label in steps_by_label}
    for _ in range(repeats):
        for label, step in steps_by_label.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                step()
            _sync(device)
            times[label].append((time.perf_counter() - start) / steps)
    return {label: statistics.median(t) for label, t in times.items()}


def throughput(model: nn.Module, batch_size: int, image_shape: Shape, *, train: bool = True,
               steps: int = 10, warmup: int = 3, repeats: int = 3, amp: str = "auto",
               channels_last: bool = True, compile: bool = False, device: str | torch.device = "auto") -> float:
    """Images per second of ``model`` for one training step (forward, backward, SGD step)
    or one inference forward (``train=False``), at ``batch_size`` images of ``image_shape``.

    The model is moved to ``device`` (and channels_last) in place; its parameters change
    when ``train`` is true, so pass a copy you do not need.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = resolve_device(device)
    model.to(device, memory_format=_memory_format(channels_last))
    x, y = _inputs(model, batch_size, image_shape, device, channels_last)
    step = _step_function(model, x, y, train=train, dtype=autocast_dtype(amp, device), compile=compile)
    seconds = _interleaved_seconds({"model": step}, device, steps=steps, warmup=warmup, repeats=repeats)
    return batch_size / seconds["model"]


def saved_activation_bytes(model: nn.Module, batch_size: int, image_shape: Shape, *,
                           channels_last: bool = True, device: str | torch.device = "cpu") -> int:
    """Bytes of the tensors autograd keeps for the backward of one training forward (fp32):
    the activation memory of a step, counted without an allocator (works on any device).

    Each storage is counted once (parameters excluded), however many ops saved it.
    """
    device = resolve_device(device)
    model.to(device, memory_format=_memory_format(channels_last))
    x, y = _inputs(model, batch_size, image_shape, device, channels_last)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(model(x), y)
    del loss
    return sum(seen.values())


def _peak_train_mb(step: Callable[[], None], device: torch.device) -> float | None:
    """Peak allocated memory of one training step on a CUDA device (None elsewhere)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def _record_path(results_dir: Path, models: dict[str, Callable[[], nn.Module]], settings: dict) -> Path:
    """Where the record of these networks and settings on this machine lives."""
    nets = {label: repr(build()) for label, build in models.items()}
    machine = environment(resolve_device(settings["device"]))
    blob = json.dumps({"format": BENCH_FORMAT, "nets": nets, "settings": settings,
                       "device": machine["device"], "torch": machine["torch"]}, sort_keys=True)
    return Path(results_dir) / f"bench-{hashlib.sha1(blob.encode()).hexdigest()[:10]}.json"


def measure(models: dict[str, Callable[[], nn.Module]], batch_size: int, image_shape: Shape, *,
            steps: int = 5, warmup: int = 2, repeats: int = 3, amp: str = "auto", channels_last: bool = True,
            compile: bool = False, device: str | torch.device = "auto",
            results_dir: str | Path | None = None) -> list[dict]:
    """Train-step and eval speed, memory and FLOPs of every network, in one run.

    ``models`` maps a label to a function building a fresh network. Returns one row per
    label (in order) with ``train_step_ms``, ``train_images_per_s``, ``eval_images_per_s``,
    ``activation_mb`` (autograd's saved tensors of one fp32 step), ``peak_mb`` (peak
    allocated memory of a step; CUDA only, else None), ``params`` and ``flops_per_image``,
    plus each relative to the first row (``*_vs_first``; ``train_step_ms_vs_first`` is the
    step-time ratio), and ``machine_load`` (:func:`machine_load`: how busy the machine was).
    With ``results_dir``, the rows are saved there as a record and loaded by later calls with
    the same networks, settings, device and torch version, if they were taken on a quiet
    machine; a record taken under load (or without its load recorded) is measured again.
    """
    settings = dict(batch_size=batch_size, image_shape=list(image_shape), steps=steps, warmup=warmup,
                    repeats=repeats, amp=amp, channels_last=channels_last, compile=compile, device=str(device))
    record = _record_path(results_dir, models, settings) if results_dir is not None else None
    if record is not None and record.exists():
        rows = json.loads(record.read_text())["rows"]
        if all((row.get("machine_load") or {}).get("quiet") for row in rows):
            return rows  # taken on a quiet machine: a timing worth keeping; otherwise time again
    with machine_load() as load:
        rows = _measure_rows(models, batch_size, image_shape, steps=steps, warmup=warmup, repeats=repeats, amp=amp,
                             channels_last=channels_last, compile=compile, device=resolve_device(device))
    rows = [{**row, "machine_load": load} for row in rows]
    if record is not None:
        blob = {"format": BENCH_FORMAT, "settings": settings, "environment": environment(resolve_device(device)),
                "rows": rows}
        atomic_write_text(record, json.dumps(blob, indent=1))
    return rows


def _measure_rows(models: dict[str, Callable[[], nn.Module]], batch_size: int, image_shape: Shape, *, steps: int,
                  warmup: int, repeats: int, amp: str, channels_last: bool, compile: bool,
                  device: torch.device) -> list[dict]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    dtype = autocast_dtype(amp, device)
    rows, train_steps, eval_steps = [], {}, {}
    for label, build in models.items():
        net = build().to(device, memory_format=_memory_format(channels_last))
        x, y = _inputs(net, batch_size, image_shape, device, channels_last)
        rows.append({"label": label, "batch_size": batch_size,
                     "params": sum(p.numel() for p in net.parameters()),
                     "flops_per_image": count_flops(net, image_shape),
                     "activation_mb": saved_activation_bytes(build(), batch_size, image_shape,
                                                             channels_last=channels_last, device=device) / 2**20})
        train_steps[label] = _step_function(net, x, y, train=True, dtype=dtype, compile=compile)
        eval_net = build().to(device, memory_format=_memory_format(channels_last))
        eval_steps[label] = _step_function(eval_net, x, y, train=False, dtype=dtype, compile=compile)
    options = dict(steps=steps, warmup=warmup, repeats=repeats)
    train_s = _interleaved_seconds(train_steps, device, **options)
    eval_s = _interleaved_seconds(eval_steps, device, **options)
    for row in rows:
        label = row["label"]
        row.update(train_step_ms=1e3 * train_s[label], train_images_per_s=batch_size / train_s[label],
                   eval_images_per_s=batch_size / eval_s[label], peak_mb=_peak_train_mb(train_steps[label], device))
    for row in rows:
        for key in ("train_step_ms", "train_images_per_s", "eval_images_per_s", "activation_mb"):
            row[f"{key}_vs_first"] = row[key] / rows[0][key]
    return rows


class _BareRounds(Callback):
    """After every epoch of ``fit``, one round of ``steps`` bare steps: the loop and the bare
    step timed in alternation, so that a machine that slows down or speeds up during the
    measurement slows both alike."""

    def __init__(self, step: Callable[[], None], steps: int, device: torch.device) -> None:
        self.step, self.steps, self.device = step, steps, device
        self.seconds: list[float] = []

    def on_epoch_end(self, state: TrainState) -> None:
        self.seconds.append(_interleaved_seconds({"bare": self.step}, self.device, steps=self.steps,
                                                 warmup=0, repeats=1)["bare"])


def fit_overhead(build: Callable[[], nn.Module], batch_size: int, image_shape: Shape, *, steps: int = 10,
                 epochs: int = 6, amp: str = "auto", channels_last: bool = True,
                 device: str | torch.device = "auto") -> dict:
    """How much the training loop adds to the bare step, in images/s.

    ``fit`` trains ``epochs`` epochs of ``steps`` steps on synthetic uint8 images kept on the
    device, with the book's augmentation, SGD with Nesterov momentum, a cosine schedule
    and the loop's bookkeeping. The bare step is the same model, loss and optimiser on one
    pre-made batch, timed for ``steps`` steps after each epoch. ``overhead`` is the median,
    over the pairs after the first (warm-up), of bare / fit - 1 (0.05: the loop adds 5 %);
    the two rates are the medians of their sides.
    """
    if epochs < 2:
        raise ValueError(f"epochs must be at least 2 (the first is warm-up), got {epochs}")
    device = resolve_device(device)
    channels, size, _ = image_shape
    data = synthetic_dataset(channels=channels, image_size=size, train=batch_size * steps, test=batch_size)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=0.01, amp=amp, channels_last=channels_last,
                         eval_batch_size=batch_size)
    model = build().to(device, memory_format=_memory_format(channels_last))
    x, y = _inputs(model, batch_size, image_shape, device, channels_last)
    bare = _BareRounds(_step_function(model, x, y, train=True, dtype=autocast_dtype(amp, device),
                                      optimizer=make_optimizer(model, config)), steps, device)
    history = fit(build(), data, config, device=device, progress=False, callbacks=[bare])
    fit_rates = history.train_images_per_s[1:]
    bare_rates = [batch_size / s for s in bare.seconds[1:]]
    return {"batch_size": batch_size, "fit_images_per_s": statistics.median(fit_rates),
            "bare_images_per_s": statistics.median(bare_rates),
            "overhead": statistics.median(b / f - 1 for b, f in zip(bare_rates, fit_rates))}


# ----------------------------------------------------------------------------- machine load

#: Above this share of the machine's CPU time taken by other processes, a measurement is
#: marked as taken under load (its ratios shrink: see the book's benchmark page).
QUIET_SHARE = 0.10


def _busy_cpu_seconds() -> float | None:
    """CPU seconds every process of the machine has spent busy since boot (Linux), else None."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in (fields + ["0"] * 8)[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def other_processes_share(busy: float, own: float, wall: float, cpus: int) -> float:
    """The share of the machine's CPU time (``wall * cpus``) that other processes took: busy CPU
    seconds of the whole machine minus this process's own, over the capacity; in [0, 1]."""
    return min(1.0, max(0.0, (busy - own) / (wall * cpus))) if wall > 0 else 0.0


@contextlib.contextmanager
def machine_load() -> Iterator[dict]:
    """Record how loaded the machine was while the block ran: load averages at its start and
    end, and the share of the CPU time that other processes took (``None`` where /proc/stat
    is missing); ``quiet`` is that share <= :data:`QUIET_SHARE`. The dict is filled on exit."""
    state: dict = {"load_average_start": round(os.getloadavg()[0], 2)}
    busy, own, start = _busy_cpu_seconds(), _own_cpu_seconds(), time.perf_counter()
    try:
        yield state
    finally:
        wall, busy_end = time.perf_counter() - start, _busy_cpu_seconds()
        share = None if busy is None or busy_end is None else other_processes_share(
            busy_end - busy, _own_cpu_seconds() - own, wall, os.cpu_count() or 1)
        state.update(load_average_end=round(os.getloadavg()[0], 2), cpus=os.cpu_count(),
                     other_processes_cpu_share=None if share is None else round(share, 3),
                     quiet=None if share is None else share <= QUIET_SHARE)


# ----------------------------------------------------------------------------- epoch times

def epoch_seconds(build: Callable[[], nn.Module], *, images: int = 50_000, image_shape: Shape = (3, 32, 32),
                  batch_size: int = 128, epochs: int = 2, amp: str = "auto", channels_last: bool = True,
                  device: str | torch.device = "auto") -> dict:
    """Seconds per training epoch of ``fit`` over ``images`` synthetic images kept on the device
    (the book's loop: augmentation, SGD, schedule, bookkeeping; evaluation on 1,000 images not
    counted): the median of the epochs after the first, which pays for warm-up and compilation."""
    if epochs < 2:
        raise ValueError(f"epochs must be at least 2 (the first is warm-up), got {epochs}")
    channels, size, _ = image_shape
    data = synthetic_dataset(channels=channels, image_size=size, train=images, test=1000)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=0.01, amp=amp, channels_last=channels_last,
                         eval_batch_size=1000)
    history = fit(build(), data, config, device=resolve_device(device), progress=False)
    rate = statistics.median(history.train_images_per_s[1:])
    return {"images": images, "batch_size": batch_size, "train_images_per_s": rate,
            "epoch_s": images / rate}
