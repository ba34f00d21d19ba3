"""One training loop for every chapter: ``fit(model, data, TrainConfig(...))``.

What it does, in order of a reader's questions:

* **Same seed, same history.** The model's initialisation is the caller's (seed it
  before building); ``fit`` seeds everything else from ``seed``: batch order and
  augmentation (per epoch, see :class:`~attnlib.data.DeviceLoader`) and dropout.
* **Fast by default.** Data stay on the device; channels_last is on, and bf16 autocast
  where the hardware has it (``amp="auto"``, see :func:`autocast_dtype`); losses and accuracies are summed on the device and
  read once per epoch, so a step never waits for the host.
* **Nothing lost.** A checkpoint is written atomically after every epoch; ``resume=True``
  continues from it and gives the history of an uninterrupted run. A non-finite loss
  stops training with :class:`NonFiniteLossError`, keeping the last good checkpoint; a
  checkpoint that cannot be read raises :class:`CorruptFileError`, which names it.
* **Extensible.** :class:`Callback` hooks see every step and epoch and may add a loss
  term (NAM's sparsity penalty) or change the model (DynamicConv's temperature).
* **Several processes.** Under ``torchrun`` (see :mod:`attnlib.distributed`) the model is
  wrapped in ``DistributedDataParallel``; ``config.batch_size`` stays the *global* batch,
  each of the N processes trains on ``batch_size / N`` of it (disjoint slices of the same
  seeded permutation, so all processes together see exactly the samples of a
  single-process run), the learning rate is the recipe's, unchanged. Evaluation is
  sharded and summed over processes; rank 0 alone writes checkpoints and the progress bar.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
import numbers
import pickle
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .data import DeviceLoader, ImageDataset
from .files import atomic_write_bytes
from .runinfo import device_name

T = TypeVar("T")


@dataclass
class TrainConfig:
    """Everything that defines a training recipe. Stored in every checkpoint and record."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"            # sgd | adam | adamw
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"          # cosine | multistep | constant
    warmup_epochs: float = 0.0        # linear warm-up from lr/100, then the schedule
    milestones: tuple[float, ...] = (0.5, 0.75)  # multistep: fractions of all steps
    gamma: float = 0.1                # multistep: factor at each milestone
    label_smoothing: float = 0.0
    amp: str = "auto"                 # auto (bf16 on GPU and bf16-native CPUs, else fp32) | bf16 | fp16 | off
    channels_last: bool = True
    augment: bool = True              # random crop + horizontal flip
    eval_batch_size: int = 1000
    check_every: int = 25             # steps between finite-loss checks (one host sync each)

    def __post_init__(self) -> None:
        choices = {"optimizer": ("sgd", "adam", "adamw"), "schedule": ("cosine", "multistep", "constant"),
                   "amp": ("auto", "bf16", "fp16", "off")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}; choose one of {allowed}")
        for name in _WHOLE_FIELDS:
            _check_whole(name, getattr(self, name))
        for name in _FLAG_FIELDS:
            _check_flag(name, getattr(self, name))
        for name, (ok, allowed) in _NUMBER_FIELDS.items():
            _check_number(name, getattr(self, name), ok, allowed)
        self.milestones = _checked_milestones(self.milestones)

    def replace(self, **changes) -> TrainConfig:
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return TrainConfig(**{**asdict(self), **changes})


_WHOLE_FIELDS = ("epochs", "batch_size", "eval_batch_size", "check_every")
_FLAG_FIELDS = ("nesterov", "channels_last", "augment")
#: field -> (test of a finite number, what is allowed, in words)
_NUMBER_FIELDS: dict[str, tuple[Callable[[float], bool], str]] = {
    "lr": (lambda v: v > 0, "a finite number > 0 (the peak learning rate)"),
    "momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, "a finite number >= 0"),
    "warmup_epochs": (lambda v: v >= 0, "a finite number of epochs >= 0 (0: no warm-up)"),
    "gamma": (lambda v: 0 < v <= 1, "a number in (0, 1], the factor of the learning rate at each milestone"),
    "label_smoothing": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
}


def _refuse(name: str, value: object, allowed: str) -> None:
    raise ValueError(f"TrainConfig.{name}={value!r} is not allowed: {name} must be {allowed}")


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_whole(name: str, value: object) -> None:
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0):
        _refuse(name, value, "a whole number >= 1 (an int such as 10)")


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        _refuse(name, value, "True or False")


def _check_number(name: str, value: object, ok: Callable[[float], bool], allowed: str) -> None:
    if not (_is_number(value) and math.isfinite(value) and ok(value)):
        _refuse(name, value, allowed)


def _checked_milestones(value: object) -> tuple[float, ...]:
    """``value`` as a tuple, if it is increasing fractions of the training in (0, 1)."""
    allowed = "increasing fractions of all steps, each in (0, 1), e.g. (0.5, 0.75)"
    if not isinstance(value, (tuple, list)):
        _refuse("milestones", value, allowed)
    if not all(_is_number(m) and 0 < m < 1 for m in value):
        _refuse("milestones", value, allowed)
    if any(a >= b for a, b in zip(value, value[1:])):
        _refuse("milestones", value, allowed)
    return tuple(value)


NOT_RECORDED = "not recorded"  # the footing of epochs trained before it was kept


@dataclass
class History:
    """Per-epoch record of a run. ``test_*`` is the held-out test split: nothing is
    selected on it; the headline is the last epoch."""

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    epoch_time: list[float] = field(default_factory=list)
    train_images_per_s: list[float] = field(default_factory=list)
    eval_images_per_s: list[float] = field(default_factory=list)
    footing: list[str] = field(default_factory=list)  # where each epoch ran: device (threads), precision

    def append(self, **row: float) -> None:
        for key, value in row.items():
            getattr(self, key).append(value)

    def to_dict(self) -> dict[str, list[float]]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> History:
        lists = {f.name: list(d.get(f.name, [])) for f in fields(cls)}
        lists["footing"] += [NOT_RECORDED] * (len(lists["epoch"]) - len(lists["footing"]))  # older records
        return cls(**lists)

    def __len__(self) -> int:
        return len(self.epoch)


@dataclass
class TrainState:
    """What callbacks see."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    steps_per_epoch: int
    history: History
    epoch: int = 0   # 0-based index of the current epoch
    step: int = 0    # global optimiser steps taken

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs


class Callback:
    """Hooks into :func:`fit`. Override what you need; keep state in ``state_dict``.

    The book's own callbacks (DynamicConv's temperature schedule, NAM's sparsity penalty)
    are in :mod:`attnlib.callbacks`."""

    def on_fit_start(self, state: TrainState) -> None: ...
    def on_epoch_start(self, state: TrainState) -> None: ...
    def on_step_end(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState) -> None: ...

    def loss_term(self, model: nn.Module) -> torch.Tensor | None:
        """An extra term added to the loss of every step (e.g. a sparsity penalty)."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped."""


class CorruptFileError(ValueError):
    """A checkpoint, record or weights file exists but cannot be read; the message names it and
    says what to do (delete it, then run again)."""


#: What ``torch.load`` raises on an empty, truncated or otherwise damaged file.
LOAD_ERRORS = (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError)


# ----------------------------------------------------------------------------- devices and precision

def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA GPU is visible; use device='auto' or 'cpu'")
    return device


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None: full fp32).

    ``auto`` is the fastest precision the hardware computes natively. On a GPU: bf16 (fp16
    with loss scaling where bf16 is missing). On a CPU: bf16 where oneDNN has native bf16
    kernels (AVX-512 BF16 or AMX), else fp32. Measured on the book's 2-core machines
    (ResNet-20 training step, batch 128, channels_last): on a Xeon with AVX-512 BF16 bf16
    autocast ran at 817 img/s against 408 img/s in fp32; on an AVX2-only EPYC it ran at
    31 img/s against 340 img/s in fp32 (bf16 emulated), so one fixed choice would be ten
    times too slow on one of them. Every record's run card states the precision used.
    """
    if amp == "off" or (amp == "auto" and device.type == "cpu" and not cpu_has_native_bf16()):
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or device.type == "cpu" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (oneDNN's own test: AVX-512 BF16 or AMX)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def precision_name(dtype: torch.dtype | None) -> str:
    """How a run card names the precision of :func:`autocast_dtype`'s result."""
    return {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# ----------------------------------------------------------------------------- optimiser and schedule

def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0,
                               weight_decay=config.weight_decay)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(step: int, total_steps: int, config: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of ``config.lr`` at optimiser step ``step`` (0-based)."""
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return 0.01 + 0.99 * step / warmup
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "multistep":
        return config.gamma ** sum(step >= m * total_steps for m in config.milestones)
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------- checkpoints

def atomic_save(obj: object, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, amp_dtype: torch.dtype | None = None
             ) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over ``loader`` (eval mode).

    In a process group each rank passes its shard of the split; sums and counts are added
    over the ranks, so every rank returns the same numbers.
    """
    model.eval()
    device = loader.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for x, y in loader:
        with autocast(device, amp_dtype):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    count = torch.tensor(len(loader.labels), device=device)
    loss_total, correct_total, n = distributed.sum_over_ranks([loss_sum, correct, count])
    return loss_total / n, correct_total / n


@torch.no_grad()
def predict(model: nn.Module, data: ImageDataset, *, device: str | torch.device = "auto",
            batch_size: int = 1000, amp: str = "auto", split: str = "test") -> torch.Tensor:
    """Predicted class of every image of ``split`` (a CPU int64 tensor)."""
    device = resolve_device(device)
    images, labels = (data.test_images, data.test_labels) if split == "test" else (
        data.train_images, data.train_labels)
    loader = DeviceLoader(images, labels, batch_size=batch_size, mean=data.mean, std=data.std,
                          device=device)
    model.eval().to(device)
    dtype = autocast_dtype(amp, device)
    outs = []
    for x, _ in loader:
        with autocast(device, dtype):
            outs.append(model(x).argmax(1))
    return torch.cat(outs).cpu()


# ----------------------------------------------------------------------------- fit

def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.std import tqdm  # plain text bar: no widget output in executed notebooks

    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


def per_rank_batch_size(global_batch: int, processes: int) -> int:
    """The batch each of ``processes`` trains on per step: the global batch split evenly."""
    if global_batch % processes:
        raise ValueError(f"batch_size={global_batch} (the global batch) cannot be split evenly over "
                         f"{processes} processes; choose a multiple of {processes}")
    return global_batch // processes


def _has_unused_parameters(model: nn.Module, sample: torch.Tensor) -> bool:
    """Whether a training step of ``model`` leaves some parameter without a gradient (BA-Net's
    discarded-gate variant computes a gate it never uses). Tried on a copy: ``model`` and its
    buffers are untouched."""
    trial = copy.deepcopy(model).train()
    trial(sample).float().sum().backward()
    return any(p.grad is None for p in trial.parameters() if p.requires_grad)


def data_parallel(model: nn.Module, device: torch.device, sample: torch.Tensor) -> nn.Module:
    """``model`` wrapped in ``DistributedDataParallel`` in a process group of several ranks,
    else ``model`` itself. ``sample``: a training batch, for :func:`_has_unused_parameters`
    (DDP must be told when a parameter gets no gradient).

    Buffers are broadcast from rank 0 before every forward (DDP's default: plain BN then
    normalises with batch statistics of its own rank but keeps rank 0's running statistics),
    except in a model with a layer whose class sets ``rank_local_buffers = True`` (MABN,
    whose moving averages are each rank's own): then ``broadcast_buffers=False``.
    """
    if distributed.world_size() == 1:
        return model
    if device.type != "cuda" and any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()):
        raise ValueError("norm='syncbn' needs CUDA GPUs: torch's SyncBatchNorm synchronises only GPU "
                         "tensors. On the CPU train with norm='bn' (per-process statistics).")
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        raise ValueError("the model has lazily sized layers that have not run yet; call it once on a "
                         "batch (e.g. attnlib.experiment.flops_per_image) before fit, so every "
                         "process holds the same parameters")
    rank_local = any(getattr(m, "rank_local_buffers", False) for m in model.modules())
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device] if device.type == "cuda" else None, broadcast_buffers=not rank_local,
        find_unused_parameters=_has_unused_parameters(model, sample))


def fit(model: nn.Module, data: ImageDataset, config: TrainConfig, *, seed: int = 0,
        device: str | torch.device = "auto", callbacks: Sequence[Callback] = (),
        checkpoint: str | Path | None = None, resume: bool = False, progress: bool = True,
        desc: str = "train") -> History:
    """Train ``model`` on ``data.train_*``, evaluate on ``data.test_*`` after every epoch.

    ``checkpoint``: a file written atomically after every epoch. With ``resume=True``
    and an existing file, training continues after its last epoch.

    In a process group (``torchrun``) every rank calls ``fit`` with the same arguments;
    ``config.batch_size`` is the global batch (module docstring). Rank 0 writes the
    checkpoint, with every rank's buffers; all ranks resume from it.
    """
    device = resolve_device(device)
    amp_dtype = autocast_dtype(config.amp, device)
    channels_last = config.channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True

    processes = distributed.world_size()
    train_loader = DeviceLoader(data.train_images, data.train_labels,
                                batch_size=per_rank_batch_size(config.batch_size, processes),
                                mean=data.mean, std=data.std, device=device, shuffle=True,
                                augment=config.augment, drop_last=True, seed=seed,
                                channels_last=channels_last, rank=distributed.rank(), world_size=processes)
    test_loader = DeviceLoader(distributed.shard(data.test_images), distributed.shard(data.test_labels),
                               batch_size=config.eval_batch_size, mean=data.mean, std=data.std,
                               device=device, channels_last=channels_last)
    if len(train_loader) == 0:
        raise ValueError(f"batch_size={config.batch_size} is larger than the {len(data.train_labels)} "
                         "training images: no full batch to train on")

    trained = data_parallel(model, device, next(iter(train_loader))[0]) if processes > 1 else model
    optimizer = make_optimizer(model, config)
    state = TrainState(model, optimizer, config, len(train_loader), History())
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, state.total_steps, config, state.steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    torch.manual_seed(seed)  # dropout and any other sampling inside the model

    start_epoch = 0
    if resume and checkpoint is not None:
        ckpt = read_on_main(lambda: _read_checkpoint(checkpoint))
        if ckpt is not None:
            start_epoch = _load_checkpoint(ckpt, checkpoint, state, scheduler, scaler, callbacks, config)
    footing = f"{device_name(device)}, {precision_name(amp_dtype)}"  # the history says where each epoch ran
    footing += f", {processes} processes" if processes > 1 else ""
    previous = state.history.footing[-1] if state.history.footing else NOT_RECORDED
    if previous not in (footing, NOT_RECORDED) and distributed.is_main():
        print(f"resuming {checkpoint} after epoch {start_epoch} on another footing: it ran on "
              f"{previous!r}, it goes on on {footing!r}. Its history will mix the two "
              "(history['footing'] says where each epoch ran).", file=sys.stderr)
    for cb in callbacks:
        cb.on_fit_start(state)

    for epoch in range(start_epoch, config.epochs):
        state.epoch = epoch
        train_loader.set_epoch(epoch)
        for cb in callbacks:
            cb.on_epoch_start(state)
        lr = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        train_loss, train_acc = _train_epoch(state, trained, train_loader, scheduler, scaler, amp_dtype,
                                             callbacks, checkpoint, progress and distributed.is_main(),
                                             f"{desc} {epoch + 1}/{config.epochs}")
        t1 = time.perf_counter()
        with distributed.main_buffers(model):
            test_loss, test_acc = evaluate(model, test_loader, amp_dtype)
        t2 = time.perf_counter()
        state.history.append(epoch=epoch + 1, train_loss=train_loss, train_acc=train_acc,
                             test_loss=test_loss, test_acc=test_acc, lr=lr, epoch_time=t2 - t0,
                             train_images_per_s=len(train_loader) * config.batch_size / (t1 - t0),
                             eval_images_per_s=len(data.test_labels) / (t2 - t1), footing=footing)
        for cb in callbacks:
            cb.on_epoch_end(state)
        _check_finite_epoch(state, float(test_loss), checkpoint)
        if checkpoint is not None:
            _save_checkpoint(checkpoint, state, scheduler, scaler, callbacks)
    return state.history


def _non_finite_tensors(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers holding NaN or infinite values."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _check_finite_epoch(state: TrainState, test_loss: float, checkpoint) -> None:
    """After an epoch, before its checkpoint: the test loss and every parameter and buffer must
    be finite, so that a diverged model is never checkpointed nor recorded as a result."""
    bad = _non_finite_tensors(state.model)
    if math.isfinite(test_loss) and not bad:
        return
    what = (f"{len(bad)} parameters or buffers became NaN or infinite (first: {', '.join(bad[:3])})" if bad
            else f"the test loss is {test_loss}")
    _raise_non_finite(state, checkpoint, what)


def _train_epoch(state: TrainState, trained: nn.Module, loader: DeviceLoader, scheduler, scaler, amp_dtype,
                 callbacks: Iterable[Callback], checkpoint, progress: bool, desc: str) -> tuple[float, float]:
    """One epoch. ``trained`` is ``state.model`` or its DistributedDataParallel wrapper."""
    model, optimizer, config = state.model, state.optimizer, state.config
    device = loader.device
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    finite = torch.ones((), device=device, dtype=torch.bool)
    bar = _progress(len(loader), desc, progress)
    for i, (x, y) in enumerate(loader, 1):
        with autocast(device, amp_dtype):
            logits = trained(x)
            loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            total = loss
            for cb in callbacks:
                if (term := cb.loss_term(model)) is not None:
                    total = total + term
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        state.step += 1
        loss = loss.detach()
        loss_sum += loss * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        finite &= torch.isfinite(total.detach())
        for cb in callbacks:
            cb.on_step_end(state)
        if i % config.check_every == 0 or i == len(loader):
            if not distributed.all_ranks_true(finite):
                _raise_non_finite(state, checkpoint)
            if bar is not None:
                bar.update(i - bar.n)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    if bar is not None:
        bar.close()
    n = len(loader) * config.batch_size  # global: the samples of all ranks
    loss_total, correct_total = distributed.sum_over_ranks([loss_sum, correct])
    return loss_total / n, correct_total / n


def _raise_non_finite(state: TrainState, checkpoint, what: str = "the training loss became NaN or infinite") -> None:
    kept = (f"The last finite checkpoint (after epoch {state.epoch}) is kept at {checkpoint}."
            if checkpoint is not None and state.epoch > 0 else "No checkpoint was written before it.")
    raise NonFiniteLossError(
        f"The run diverged in epoch {state.epoch + 1} (by step {state.step}): {what}. "
        f"Training stopped. {kept} Usual causes: a learning rate too high for this batch size or "
        "model (lower lr or add warmup_epochs), fp16 overflow (use amp='bf16' or 'off'), or a "
        "normalisation layer that divides by a near-zero statistic early in training (for MABN: "
        "replace every BN and conv as the chapter does, and keep the warm-up).")


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.detach().cpu().clone() for name, b in model.named_buffers()}


def _save_checkpoint(path, state: TrainState, scheduler, scaler, callbacks) -> None:
    """Rank 0 writes; in a process group it also stores every rank's buffers (``rank_buffers``)."""
    rank_buffers = distributed.from_every_rank(_buffers(state.model)) if distributed.is_active() else None
    if not distributed.is_main():
        return
    atomic_save({
        "epoch": state.epoch + 1,
        "step": state.step,
        "config": asdict(state.config),
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "callbacks": [cb.state_dict() for cb in callbacks],
        "history": state.history.to_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        **({"rank_buffers": rank_buffers} if rank_buffers is not None else {}),
    }, path)


def _read_checkpoint(path) -> dict | None:
    """The checkpoint at ``path``, None if there is none; :class:`CorruptFileError` if unreadable."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except LOAD_ERRORS as err:
        raise CorruptFileError(_unreadable_checkpoint(path, load_error_reason(err))) from err
    if not isinstance(ckpt, dict) or not {"epoch", "model", "config"} <= ckpt.keys():
        raise CorruptFileError(_unreadable_checkpoint(path, "not a training checkpoint of attnlib.train.fit"))
    return ckpt


def load_error_reason(err: BaseException) -> str:
    """``err`` in a few words for a message about an unreadable file (torch's own texts run long)."""
    text = textwrap.shorten(str(err), 100, placeholder=" ...")
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _unreadable_checkpoint(path: Path, reason: str) -> str:
    size = path.stat().st_size if path.exists() else 0
    return (f"the checkpoint {path} ({size} bytes) cannot be read ({reason}). It is damaged or "
            "incomplete; delete it to restart that run from scratch (its finished epochs are lost).")


def read_on_main(read: Callable[[], T]) -> T | None:
    """``read()`` on rank 0 (None on the others), its result on every rank. A
    :class:`CorruptFileError` it raises is raised on every rank, so no rank is left waiting."""
    found = None
    if distributed.is_main():
        try:
            found = read()
        except CorruptFileError as err:
            found = err
    found = distributed.from_main(found)
    if isinstance(found, CorruptFileError):
        raise found
    return found


def _load_checkpoint(ckpt: dict, path, state: TrainState, scheduler, scaler, callbacks,
                     config: TrainConfig) -> int:
    """Restore everything from ``ckpt`` (read from ``path``). Each rank takes back its own
    buffers when the checkpoint holds one set per rank of a group of this size, else rank 0's."""
    if ckpt["config"] != asdict(config):
        raise ValueError(f"checkpoint {path} was written with a different TrainConfig; "
                         "delete it or resume with the same settings")
    state.model.load_state_dict(ckpt["model"])
    rank_buffers = ckpt.get("rank_buffers")
    if rank_buffers is not None and len(rank_buffers) == distributed.world_size():
        with torch.no_grad():
            for name, value in rank_buffers[distributed.rank()].items():
                state.model.get_buffer(name).copy_(value)
    state.optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    for cb, cb_state in zip(callbacks, ckpt["callbacks"]):
        cb.load_state_dict(cb_state)
    state.history = History.from_dict(ckpt["history"])
    state.step = ckpt["step"]
    torch.set_rng_state(ckpt["rng"])
    if ckpt["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
    return ckpt["epoch"]
