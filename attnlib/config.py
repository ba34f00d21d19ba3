"""The training recipe: :class:`TrainConfig`, checked when it is made."""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields


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
