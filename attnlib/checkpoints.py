"""Checkpoints that survive interruptions: written atomically after every epoch, read back
with a message naming any damaged file, restored on every process of a group."""
from __future__ import annotations

import io
import pickle
import textwrap
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from . import distributed
from .config import TrainConfig
from .files import atomic_write_bytes
from .history import History, TrainState


class CorruptFileError(ValueError):
    """A checkpoint, record or weights file exists but cannot be read; the message names it and
    says what to do (delete it, then run again)."""


#: What ``torch.load`` raises on an empty, truncated or otherwise damaged file.
LOAD_ERRORS = (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError)


T = TypeVar("T")


def atomic_save(obj: object, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.detach().cpu().clone() for name, b in model.named_buffers()}


def save_checkpoint(path, state: TrainState, scheduler, scaler, callbacks) -> None:
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


def read_checkpoint(path) -> dict | None:
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


def load_checkpoint(ckpt: dict, path, state: TrainState, scheduler, scaler, callbacks,
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
