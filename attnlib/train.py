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

import copy
import math
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .checkpoints import load_checkpoint, read_checkpoint, read_on_main, save_checkpoint
from .config import TrainConfig
from .data import DeviceLoader, ImageDataset
from .devices import autocast, autocast_dtype, resolve_device
from .history import NOT_RECORDED, Callback, History, TrainState
from .layers.batch_noise import NoisyStatistics
from .runinfo import describe_footing, software


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped."""


# ----------------------------------------------------------------------------- optimiser and schedule

def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0,
                               weight_decay=config.weight_decay)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def steps_per_epoch(data: ImageDataset, config: TrainConfig) -> int:
    """Optimiser steps in one epoch of :func:`fit`: the full batches of ``data``'s training
    split (``fit`` drops the last, partial batch, so every step sees ``config.batch_size``
    images). The same with any number of processes: the batch is global."""
    return len(data.train_labels) // config.batch_size


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


def decay_only_value(start: float, config: TrainConfig, steps_per_epoch: int, l1_penalty: float = 0.0) -> float:
    """Where weight decay alone takes a parameter that starts at ``start``: its value after
    ``config``'s optimiser and learning-rate schedule ran all ``config.epochs *
    steps_per_epoch`` steps with a gradient of zero from the data (float64). With
    ``l1_penalty`` > 0 the loss also holds ``l1_penalty * |value|`` (NAM's sparsity penalty), so
    the gradient is ``l1_penalty * sign(value)``.

    A parameter that ends near this value was not needed by the loss, whatever it started
    at. With SGD and momentum the decay compounds: at momentum 0.9 each step shrinks the
    parameter about ten times as much as ``lr * weight_decay`` alone would.
    """
    if l1_penalty < 0:
        raise ValueError(f"l1_penalty={l1_penalty} is negative: an L1 penalty's strength is 0 or more")
    holder = nn.Module()
    holder.value = nn.Parameter(torch.tensor(float(start), dtype=torch.float64))
    optimizer = make_optimizer(holder, config)
    total = config.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, config, steps_per_epoch))
    for _ in range(total):
        holder.value.grad = l1_penalty * torch.sign(holder.value.detach())
        optimizer.step()
        scheduler.step()
    return holder.value.item()


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
def recompute_bn_statistics(model: nn.Module, loader: DeviceLoader) -> nn.Module:
    """Replace every BatchNorm's running mean and variance by plain averages of the batch
    statistics over ``loader``, the weights fixed ("precise BN"), and return ``model`` in
    eval mode.

    During training the running statistics are an exponential average over the last ten or
    so steps (momentum 0.1); while the weights move fast they describe a network that no
    longer exists, and eval mode can be far worse than the network. Recomputing them shows
    how much of an eval-mode accuracy is the network and how much is that lag. Pass the
    training images without augmentation. Other layers run in train mode meanwhile, so a
    network with dropout before a BatchNorm gets slightly different statistics; a noise attack
    on the statistics (:class:`~attnlib.layers.batch_noise.NoisyStatistics`) is paused, since
    eval mode runs without it.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layer: there are no statistics to recompute")
    attacked = [norm for norm in norms if isinstance(norm, NoisyStatistics)]
    momenta, noises = [norm.momentum for norm in norms], [norm.noise for norm in attacked]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: every batch counts the same
    for norm in attacked:
        norm.noise = 0.0
    model.train()
    try:
        for x, _ in loader:
            model(x)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        for norm, noise in zip(attacked, noises):
            norm.noise = noise
    return model.eval()


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
        desc: str = "train", stop_after: int | None = None) -> History:
    """Train ``model`` on ``data.train_*``, evaluate on ``data.test_*`` after every epoch.

    ``checkpoint``: a file written atomically after every epoch. With ``resume=True``
    and an existing file, training continues after its last epoch.

    ``stop_after``: return after that epoch (1-based) instead of the last: the first epochs of
    the ``config.epochs`` run, with its learning rates and callbacks (a probe of a run's early
    epochs without training the rest).

    In a process group (``torchrun``) every rank calls ``fit`` with the same arguments;
    ``config.batch_size`` is the global batch (module docstring). Rank 0 writes the
    checkpoint, with every rank's buffers; all ranks resume from it.
    """
    if stop_after is not None and not 1 <= stop_after <= config.epochs:
        raise ValueError(f"stop_after={stop_after}: it must be an epoch of the run, 1 to {config.epochs}")
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
    steps = steps_per_epoch(data, config)
    if steps == 0:
        raise ValueError(f"batch_size={config.batch_size} is larger than the {len(data.train_labels)} "
                         "training images: no full batch to train on")

    trained = data_parallel(model, device, next(iter(train_loader))[0]) if processes > 1 else model
    optimizer = make_optimizer(model, config)
    state = TrainState(model, optimizer, config, steps, History())
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, state.total_steps, config, state.steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    torch.manual_seed(seed)  # dropout and any other sampling inside the model

    start_epoch = 0
    if resume and checkpoint is not None:
        ckpt = read_on_main(lambda: read_checkpoint(checkpoint))
        if ckpt is not None:
            start_epoch = load_checkpoint(ckpt, checkpoint, state, scheduler, scaler, callbacks, config)
    footing = describe_footing(device, amp_dtype, processes)  # the history says where each epoch ran
    versions = software()
    previous = state.history.footing[-1] if state.history.footing else NOT_RECORDED
    if previous not in (footing, NOT_RECORDED) and distributed.is_main():
        print(f"resuming {checkpoint} after epoch {start_epoch} on another footing: it ran on "
              f"{previous!r}, it goes on on {footing!r}. Its history will mix the two "
              "(history['footing'] says where each epoch ran).", file=sys.stderr)
    for cb in callbacks:
        cb.on_fit_start(state)

    for epoch in range(start_epoch, stop_after or config.epochs):
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
                             train_images_per_s=steps * config.batch_size / (t1 - t0),
                             eval_images_per_s=len(data.test_labels) / (t2 - t1), footing=footing,
                             software=versions)
        for cb in callbacks:
            cb.on_epoch_end(state)
        _check_finite_epoch(state, float(test_loss), checkpoint)
        if checkpoint is not None:
            save_checkpoint(checkpoint, state, scheduler, scaler, callbacks)
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


