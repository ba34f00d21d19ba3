"""Measuring what a layer costs: training and inference throughput, and activation memory.

These time the network alone, on synthetic inputs already on the device, so that the
numbers compare layers, not data pipelines. Every timing synchronises the device only
around the timed loop, and reports the median over ``repeats`` loops of ``steps`` steps.
The chapters use them for the cost sections; the accuracy runs' own images/s (in every
record) measure the same thing within a full training epoch.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from .train import autocast, autocast_dtype, resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inputs(model: nn.Module, batch_size: int, image_shape: tuple[int, int, int], device: torch.device,
            channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch_size, *image_shape, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        classes = model.eval()(x[:1]).shape[1]
    return x, torch.randint(0, classes, (batch_size,), device=device)


def throughput(model: nn.Module, batch_size: int, image_shape: tuple[int, int, int], *, train: bool = True,
               steps: int = 10, warmup: int = 3, repeats: int = 3, amp: str = "auto",
               channels_last: bool = True, device: str | torch.device = "auto") -> float:
    """Images per second of ``model`` for one training step (forward, backward, SGD step)
    or one inference forward (``train=False``), at ``batch_size`` images of ``image_shape``.

    The model is moved to ``device`` (and channels_last) in place; its parameters change
    when ``train`` is true, so pass a copy you do not need.
    """
    if min(batch_size, steps, repeats) < 1 or warmup < 0:
        raise ValueError("batch_size, steps and repeats must be positive and warmup non-negative")
    device = resolve_device(device)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    x, y = _inputs(model, batch_size, image_shape, device, channels_last)
    dtype = autocast_dtype(amp, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3) if train else None

    def step() -> None:
        if train:
            with autocast(device, dtype):
                loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        else:
            with torch.no_grad(), autocast(device, dtype):
                model(x)

    model.train(train)
    for _ in range(warmup):
        step()
    rates = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        rates.append(batch_size * steps / (time.perf_counter() - start))
    return statistics.median(rates)


def saved_activation_bytes(model: nn.Module, batch_size: int, image_shape: tuple[int, int, int], *,
                           channels_last: bool = True, device: str | torch.device = "cpu") -> int:
    """Bytes of the tensors autograd keeps for the backward of one training forward (fp32):
    the activation memory of a step, counted without an allocator (works on any device).

    Each storage is counted once (parameters excluded), however many ops saved it.
    """
    device = resolve_device(device)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
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


def measure(models: dict[str, Callable[[], nn.Module]], batch_size: int, image_shape: tuple[int, int, int], *,
            steps: int = 5, warmup: int = 2, repeats: int = 3, amp: str = "auto", channels_last: bool = True,
            device: str | torch.device = "auto") -> list[dict]:
    """Train and eval images/s and activation memory of every network, in one run.

    ``models`` maps a label to a function building a fresh network. Returns one row per
    label (in order) with ``train_images_per_s``, ``eval_images_per_s``,
    ``activation_mb`` and ``params``, plus each relative to the first row (``*_vs_first``):
    ratios taken minutes apart on the same machine hold better than absolute figures.
    """
    rows = []
    for label, build in models.items():
        options = dict(steps=steps, warmup=warmup, repeats=repeats, amp=amp, channels_last=channels_last,
                       device=device)
        net = build()
        train_rate = throughput(net, batch_size, image_shape, train=True, **options)
        rows.append({
            "label": label, "batch_size": batch_size,
            "params": sum(p.numel() for p in net.parameters()),  # after a forward: lazy layers are sized
            "train_images_per_s": train_rate,
            "eval_images_per_s": throughput(build(), batch_size, image_shape, train=False, **options),
            "activation_mb": saved_activation_bytes(build(), batch_size, image_shape, channels_last=channels_last,
                                                    device=device) / 2**20,
        })
    for row in rows:
        for key in ("train_images_per_s", "eval_images_per_s", "activation_mb"):
            row[f"{key}_vs_first"] = row[key] / rows[0][key]
    return rows
