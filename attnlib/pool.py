"""Many training runs, several at a time: the queue behind ``python -m attnlib.run --workers N``.

A *job* is one run: a variant, its data, its recipe and a seed. :func:`train_queue` starts
N worker processes; each walks the same ordered list of jobs and trains the first one that
has no record and that no other process is training. A worker claims a job by holding an
exclusive ``flock`` on a claim file beside the records (``.claim-seed<k>-<key>``); the
operating system drops the lock when the process ends, however it ends, so a job whose
worker was killed (the end of a session, a crash) is free again, and the next worker that
takes it resumes from the run's last epoch checkpoint. Any number of queues, on one machine
and one results folder, can be started and stopped at any time without training a run
twice, and each record is written the moment its run ends.

On a 2-core CPU two workers of one thread each train about 30 % more images per second
than one worker with two threads (small convolutions do not split well over threads); on a
GPU, several workers share the device (ResNet-20 uses a small part of a large GPU).
"""
from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import signal
import statistics
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import TrainConfig
from .data import ImageDataset
from .devices import resolve_device
from .experiment import run_one
from .profiles import Profile
from .records import find_record, read_record, record_stem, run_key, writable_folder
from .variants import Variant, run_config


@dataclass(frozen=True)
class Job:
    """One run of the queue."""

    variant: Variant
    data: ImageDataset
    config: TrainConfig
    seed: int
    key: str

    @property
    def name(self) -> str:
        return f"{self.variant.label} (seed {self.seed}, {self.config.epochs} epochs, {self.data.describe()})"


def make_jobs(experiments: Sequence, setup: Profile, recipe: TrainConfig, data: ImageDataset) -> list[Job]:
    """The runs of ``experiments`` in order (within a comparison: seed by seed, every variant
    of a seed together), each run once: a run two comparisons share (the baseline) comes
    where it is first asked for."""
    jobs, seen = [], set()
    for exp in experiments:
        exp_data = exp.data(data)
        for seed in exp.seeds(setup):
            for variant in (v for v in exp.variants if seed in exp.seeds(setup, v.label)):
                config = run_config(recipe, setup, variant)
                key = run_key(variant, exp_data, config, seed)
                if (key, seed) not in seen:
                    seen.add((key, seed))
                    jobs.append(Job(variant, exp_data, config, seed, key))
    return jobs


def claim_path(results_dir: Path, job: Job) -> Path:
    return results_dir / f".claim-seed{job.seed}-{job.key}"


@contextlib.contextmanager
def claim(results_dir: Path, job: Job) -> Iterator[bool]:
    """Yields True while this process holds ``job``'s claim, False when another one does."""
    path = claim_path(results_dir, job)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield True
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    finally:
        os.close(fd)


def _has_record(results_dir: Path, job: Job) -> bool:
    stem = record_stem(results_dir, job.variant, job.seed, job.key)
    return find_record(results_dir, stem, job.seed, job.key) is not None


def _say(text: str) -> None:
    """Print ``text`` and its newline in one write: the workers share stdout, and print's own
    newline, a second write, can land after another worker's line."""
    print(text + "\n", end="", flush=True)


def _train_some(jobs: Sequence[Job], profile: str, results_dir: Path, device: torch.device, worker: int) -> int:
    """Train the free jobs one after another; returns how many failed."""
    failed: set[int] = set()
    while True:
        for index, job in enumerate(jobs):
            if index in failed or _has_record(results_dir, job):
                continue
            with claim(results_dir, job) as mine:
                if not mine or _has_record(results_dir, job):  # taken, or finished just now
                    continue
                _say(f"[worker {worker}] start {job.name}")
                start = time.perf_counter()
                try:
                    record, _ = run_one(job.variant, job.data, job.config, job.seed, profile=profile,
                                        results_dir=results_dir, device=device, progress=False)
                except Exception:  # noqa: BLE001 - reported, and the other jobs go on
                    failed.add(index)
                    _say(f"[worker {worker}] FAILED {job.name}:\n{traceback.format_exc()}")
                else:
                    _say(f"[worker {worker}] done  {job.name}: final test accuracy "
                         f"{100 * record['final_test_acc']:.2f} %, {record['run_card']['wall_time_s'] / 60:.1f} min "
                         f"of training ({(time.perf_counter() - start) / 60:.1f} in this process)")
            break  # rescan from the top: earlier jobs may have been freed meanwhile
        else:
            return len(failed)


def _worker(worker: int, experiments: Sequence, setup: Profile, recipe: TrainConfig, results_dir: Path,
            device: str, threads: int) -> None:
    torch.set_num_threads(threads)
    jobs = make_jobs(experiments, setup, recipe, setup.load())
    raise SystemExit(1 if _train_some(jobs, setup.name, results_dir, resolve_device(device), worker) else 0)


def train_queue(experiments: Sequence, setup: Profile, recipe: TrainConfig, results_dir: str | Path, *,
                workers: int, threads: int, device: str = "auto") -> int:
    """Train every missing run of ``experiments`` with ``workers`` processes of ``threads``
    threads each. Returns 0 when every run has its record, 1 when some failed (each failure
    is printed with its traceback; the other runs go on)."""
    results_dir = writable_folder(results_dir)
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker, args=(i, experiments, setup, recipe, results_dir, device, threads))
                 for i in range(workers)]
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # `timeout`, `kill`: stop the workers too
    for p in processes:
        p.start()
    try:
        for p in processes:
            p.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
        for p in processes:
            if p.is_alive():
                p.terminate()  # a run stopped mid-epoch resumes from its last epoch checkpoint
        for p in processes:
            p.join()
    return 0 if all(p.exitcode == 0 for p in processes) else 1


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def untrained(jobs: Sequence[Job], results_dir: str | Path) -> list[Job]:
    """The jobs that have no record in ``results_dir`` yet."""
    results_dir = Path(results_dir)
    return [job for job in jobs
            if find_record(results_dir, record_stem(results_dir, job.variant, job.seed, job.key), job.seed, job.key) is None]


def queue_status(jobs: Sequence[Job], results_dir: str | Path) -> list[str]:
    """One line per job: its final accuracy, whether a process trains it now, the epoch its
    checkpoint has reached, or pending; for a run not done, the minutes it has left at the pace
    of the finished runs of its network (:func:`pace_key`). A last line sums what is left."""
    results_dir = Path(results_dir)
    states, paces, left = [], {}, {}
    for job in jobs:
        stem = record_stem(results_dir, job.variant, job.seed, job.key)
        found = find_record(results_dir, stem, job.seed, job.key)
        ckpt = stem.with_suffix(".ckpt")
        if found is not None:
            record = read_record(found)
            minutes = record["run_card"]["wall_time_s"] / 60
            paces.setdefault(pace_key(job), []).append(minutes / len(record["history"]["epoch"]))
            states.append(f"done: {100 * record['final_test_acc']:.2f} % ({minutes:.0f} min)")
            continue
        with claim(results_dir, job) as free:
            state = "pending" if free else "training now"
        epoch = torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"] if ckpt.exists() else 0
        if epoch:
            state += f", epoch {epoch}/{job.config.epochs} checkpointed"
        states.append(state)
        left[len(states) - 1] = job.config.epochs - epoch
    lines, total, unknown = [], 0.0, 0
    for i, (job, state) in enumerate(zip(jobs, states)):
        if i in left and pace_key(job) in paces:
            minutes = left[i] * statistics.median(paces[pace_key(job)])
            total += minutes
            state += f", about {minutes:.0f} min left"
        elif i in left:
            unknown += 1
        lines.append(f"{job.name}: {state}")
    estimate = f"about {total / 60:.1f} worker-hours at the pace of the finished runs of the same networks"
    lines.append(f"left: {len(left)} of {len(jobs)} runs" + (f", {estimate}" if len(left) > unknown else "")
                 + (f"; {unknown} of them on networks with no finished run to time them by" if unknown else ""))
    return lines


def pace_key(job: Job) -> str:
    """What sets a run's time per epoch: its network, data and recipe, whatever its label, seed
    or number of epochs (a network and its twice-the-epochs run share one)."""
    return run_key(job.variant, job.data, job.config.replace(epochs=1), seed=0)
