"""What a training run records epoch by epoch, and the hooks that see it: :class:`History`,
:class:`TrainState`, :class:`Callback`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from .config import TrainConfig


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
    software: list[dict[str, str]] = field(default_factory=list)  # the versions it ran under (runinfo.software)

    def append(self, **row: float | str | dict[str, str]) -> None:
        for key, value in row.items():
            getattr(self, key).append(value)

    def to_dict(self) -> dict[str, list[float]]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> History:
        lists = {f.name: list(d.get(f.name, [])) for f in fields(cls)}
        lists["footing"] += [NOT_RECORDED] * (len(lists["epoch"]) - len(lists["footing"]))  # older records
        lists["software"] += [{}] * (len(lists["epoch"]) - len(lists["software"]))
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
