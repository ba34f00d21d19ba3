"""The hook interface of :func:`attnlib.train.fit`.

It lives at the bottom of the package so that layer files (NAM's sparsity penalty,
DynamicConv's temperature schedule) can define callbacks without importing the training
loop.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .train import TrainState


class Callback:
    """Hooks into :func:`fit`. Override what you need; keep state in ``state_dict``."""

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
