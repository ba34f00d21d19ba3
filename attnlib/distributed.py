"""The process group of a data-parallel run, as ``torchrun`` describes it, and the few
collective operations the training loop needs.

``torchrun --nproc_per_node N -m attnlib.run ...`` starts N copies of the program with
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their
environment. :func:`init_from_env` joins that group (NCCL on GPUs, one GPU per process,
picked by ``LOCAL_RANK``; Gloo on the CPU). Started any other way, the program is rank 0 of
1 and every helper here is a no-op, so the single-process path computes exactly what it
computed before this module existed.

This module sits at the bottom of the package (it imports only torch): the data loader,
the training loop, the experiment runner and the command line all use it.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_active() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def is_main() -> bool:
    """Rank 0: the process that writes checkpoints, records and the progress bar."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_from_env(device: str = "auto") -> str | torch.device:
    """Join the process group ``torchrun`` started and return this process's device.

    ``device``: ``auto`` takes GPU ``LOCAL_RANK`` when CUDA is available, else the CPU;
    ``cpu`` forces the CPU (and Gloo) even on a GPU machine; ``cuda`` requires a GPU.
    Without ``torchrun`` (no ``RANK``/``WORLD_SIZE`` in the environment) nothing is
    initialised and ``device`` is returned unchanged.
    """
    if not launched_by_torchrun() or is_active():
        return device
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(f"RANK and WORLD_SIZE are set but {missing} are not: start the program "
                           "with `torchrun --nproc_per_node N -m attnlib.run ...`, which sets them all")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda' was asked for but no CUDA GPU is visible; "
                               "use --device cpu (Gloo) or auto")
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
        return torch.device("cuda", local_rank)
    dist.init_process_group("gloo")
    return torch.device("cpu")


def shutdown() -> None:
    """Leave the process group (a no-op outside one)."""
    if is_active():
        dist.destroy_process_group()


def barrier() -> None:
    if is_active():
        dist.barrier()


def sum_over_ranks(values: Sequence[torch.Tensor]) -> list[float]:
    """The sums over all ranks of some scalar tensors, as Python floats (one host sync).

    Outside a process group: ``[v.item() for v in values]``, exactly.
    """
    if not is_active():
        return [v.item() for v in values]
    packed = torch.stack([v.detach().to(torch.float64) for v in values])
    dist.all_reduce(packed)
    return packed.tolist()


def all_ranks_true(flag: torch.Tensor) -> bool:
    """Whether a boolean scalar is true on every rank (one host sync)."""
    if not is_active():
        return bool(flag.item())
    value = flag.detach().to(torch.int32).reshape(1)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def from_main(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (pickled; for small things such as a checkpoint)."""
    if not is_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def from_every_rank(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank (pickled)."""
    if not is_active():
        return [obj]
    boxes: list = [None] * world_size()
    dist.all_gather_object(boxes, obj)
    return boxes


def shard(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous part of ``tensor`` along dim 0 (all of it outside a group).

    Parts differ in length by at most one and together are the whole tensor, in order.
    """
    if not is_active():
        return tensor
    return tensor.tensor_split(world_size())[rank()]


@contextlib.contextmanager
def main_buffers(model: torch.nn.Module) -> Iterator[None]:
    """Inside the block every rank's ``model`` holds rank 0's buffers; its own come back after.

    Evaluation runs in it, so that the ranks evaluate one model (rank 0's, the one that is
    saved) on their shards of the test set even where buffers are per-rank (BatchNorm's
    running statistics without buffer broadcasting, MABN's moving averages).
    """
    if not is_active():
        yield
        return
    buffers = [b for b in model.buffers() if b.numel() > 0]
    own = [b.detach().clone() for b in buffers]
    with torch.no_grad():
        for b in buffers:
            dist.broadcast(b, src=0)
    try:
        yield
    finally:
        with torch.no_grad():
            for b, saved in zip(buffers, own):
                b.copy_(saved)
