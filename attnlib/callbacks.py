"""The book's training callbacks: the schedules and loss terms that chapters add to :func:`fit`.

They sit above the training loop (they subclass :class:`attnlib.train.Callback`) and use the
layers only through plain functions, so the layers know nothing of training:

* :class:`TemperatureAnnealing` (chapter 5) sets DynamicConv2d's softmax temperature with
  :func:`attnlib.layers.dynamic_conv.set_temperature`;
* :class:`NAMSparsityPenalty` (chapter 4) adds ``strength * sum |s|`` from
  :func:`attnlib.layers.nam.nam_scale_sum` to the loss.

Their dataclass ``repr`` is part of an experiment's record key: keep it stable.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .history import Callback, TrainState
from .layers.dynamic_conv import dynamic_layers, set_temperature
from .layers.nam import nam_scale_sum


@dataclass
class TemperatureAnnealing(Callback):
    """Anneal every DynamicConv2d's temperature from ``start`` to ``end`` over the first
    ``epochs`` epochs, then hold ``end`` (the paper: 30 -> 1 in 10 epochs).

    ``linear_in="T"`` (the paper's and the official code's schedule) moves T in equal steps;
    the attention's sharpness 1/T then grows slowly at first and tenfold in the last third
    (from T = 10 to 1). ``linear_in="1/T"`` moves 1/T in equal steps, spreading that
    sharpening evenly over the schedule (see chapter 5 for why it matters).

    ``per_step=True`` changes T after every optimiser step; ``False`` once per epoch. The
    value is a function of the global step alone, so a resumed run continues with the
    uninterrupted run's temperatures.
    """

    start: float = 30.0
    end: float = 1.0
    epochs: int = 10
    per_step: bool = True
    linear_in: str = "T"

    def __post_init__(self) -> None:
        if not (self.start > 0 and self.end > 0 and self.epochs > 0):
            raise ValueError(f"start, end and epochs must be positive: {self!r}")
        if self.linear_in not in ("T", "1/T"):
            raise ValueError(f"linear_in must be 'T' or '1/T', got {self.linear_in!r}")

    def temperature_at(self, step: int, steps_per_epoch: int) -> float:
        """T for the optimiser step ``step`` (0-based, global)."""
        done = step if self.per_step else step // steps_per_epoch * steps_per_epoch
        progress = min(1.0, done / (self.epochs * steps_per_epoch))
        if self.linear_in == "T":
            return self.start + (self.end - self.start) * progress
        return 1.0 / (1.0 / self.start + (1.0 / self.end - 1.0 / self.start) * progress)

    def on_fit_start(self, state: TrainState) -> None:
        if not dynamic_layers(state.model):
            raise ValueError("TemperatureAnnealing: the model has no DynamicConv2d layer")
        self._apply(state)

    def on_epoch_start(self, state: TrainState) -> None:
        self._apply(state)

    def on_step_end(self, state: TrainState) -> None:
        if self.per_step:
            self._apply(state)

    def _apply(self, state: TrainState) -> None:
        set_temperature(state.model, self.temperature_at(state.step, state.steps_per_epoch))


@dataclass
class NAMSparsityPenalty(Callback):
    """Adds ``strength * sum |s|`` over the scale factors ``s`` of every NAM module
    (gamma of channel modules, lambda of pixel modules) to the loss of every step; the
    network's other BN layers are not penalised."""

    strength: float = 1e-4

    def __post_init__(self) -> None:
        if self.strength < 0:
            raise ValueError(f"NAMSparsityPenalty.strength must be >= 0, got {self.strength}")

    def loss_term(self, model: nn.Module) -> torch.Tensor:
        total = nam_scale_sum(model)
        if total is None:
            raise ValueError("NAMSparsityPenalty: the model has no NAM modules, the penalty would do nothing")
        return self.strength * total
