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
import json
import multiprocessing
import os
import re
import signal
import statistics
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .config import TrainConfig
from .data import ImageDataset
from .devices import autocast_dtype, resolve_device
from .experiment import run_one
from .history import NOT_RECORDED
from .profiles import Profile
from .records import find_record, read_record, record_stem, run_key, writable_folder
from .runinfo import describe_footing
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


def _record_path(results_dir: Path, job: Job) -> Path | None:
    return find_record(results_dir, record_stem(results_dir, job.variant, job.seed, job.key), job.seed, job.key)


def _has_record(results_dir: Path, job: Job) -> bool:
    return _record_path(results_dir, job) is not None


def _weights_missing(results_dir: Path, job: Job) -> bool:
    """Whether ``job`` has a record whose weights are not here (git keeps seed 0's only)."""
    path = _record_path(results_dir, job)
    return path is not None and not (results_dir / read_record(path)["weights"]).exists()


def _to_do(results_dir: Path, job: Job, restore: bool) -> bool:
    return _weights_missing(results_dir, job) if restore else not _has_record(results_dir, job)


RESTORE_FOLDER = "restore"
"""Inside the results folder: where :func:`restore_weights` trains a run again (and keeps its
checkpoint meanwhile, so that it resumes like any run)."""

REPEATED = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")
"""The history a run trained again must repeat exactly to be the recorded run."""


def restore_weights(job: Job, profile: str, results_dir: Path, device: torch.device) -> dict:
    """Train ``job``, which has a record but no weights, again in ``results_dir/restore/``; when
    the new run repeats the record (every epoch's losses, accuracies and learning rate, and
    every test prediction), its weights are the recorded run's and go beside the record.
    Otherwise raise, and leave the new run's files in ``restore/``. Returns the record.

    A run repeats only on the footing it ran on (bf16 on one CPU is not bit for bit bf16 on
    another), so a record with an epoch on another footing than this worker's is refused before
    any training: hours spent on it could only end in a difference."""
    original = _record_path(results_dir, job)
    recorded = read_record(original)
    here = _footing_here(job, device)
    if elsewhere := _footings_elsewhere(recorded, here):
        raise RuntimeError(
            f"{job.name} cannot be restored here: the record {original.name} has epochs on "
            f"{', '.join(elsewhere)}, and this worker trains on {here}. Training repeats a run only on "
            "its own footing: restore it on a machine like the record's (a record with epochs on several "
            "footings cannot be restored at all). Nothing was trained.")
    staging = writable_folder(results_dir / RESTORE_FOLDER)
    again, _ = run_one(job.variant, job.data, job.config, job.seed, profile=profile, results_dir=staging,
                       device=device, progress=False)
    if (difference := _first_difference(recorded, again)) is not None:
        raise RuntimeError(
            f"{job.name} trained again is not the recorded run {original.name}: {difference}. Training repeats a "
            f"run only on the same footing: the record's epochs ran on {_footings(recorded)}, these on "
            f"{_footings(again)}. The new run stays in {staging}; no weights were put beside the record.")
    os.replace(staging / again["weights"], results_dir / recorded["weights"])
    (staging / again["weights"]).with_suffix(".json").unlink()
    return recorded


def _footing_here(job: Job, device: torch.device) -> str:
    """The footing ``job`` trains on in this process (its device, threads and precision)."""
    return describe_footing(device, autocast_dtype(job.config.amp, device))


def _footings_elsewhere(record: dict, here: str) -> list[str]:
    """The footings, other than ``here``, that ``record``'s epochs ran on (none recorded: none)."""
    return sorted(set(record["history"].get("footing", [])) - {here, NOT_RECORDED})


def restore_status(jobs: Sequence[Job], results_dir: str | Path, device: torch.device) -> list[str]:
    """One line per job that has a record but not its weights: whether this process's footing
    can restore it (:func:`restore_weights`), and how far its restore checkpoint has come; a
    last line counts them."""
    results_dir = Path(results_dir)
    lines, here_too = [], 0
    for job in (j for j in jobs if _weights_missing(results_dir, j)):
        recorded = read_record(_record_path(results_dir, job))
        elsewhere = _footings_elsewhere(recorded, _footing_here(job, device))
        here_too += not elsewhere
        state = f"not here: its epochs ran on {', '.join(elsewhere)}" if elsewhere else "can be restored here"
        ckpt = record_stem(results_dir / RESTORE_FOLDER, job.variant, job.seed, job.key).with_suffix(".ckpt")
        if ckpt.exists():
            epochs = len(torch.load(ckpt, map_location="cpu", weights_only=False)["history"]["epoch"])
            state += f"; restore checkpoint at epoch {epochs}/{job.config.epochs}"
        lines.append(f"{job.name}: {state}")
    here = _footing_here(jobs[0], device) if jobs else describe_footing(device, None)
    lines.append(f"without weights: {len(lines)} of {len(jobs)} runs; {here_too} of them can be restored here "
                 f"({here})")
    return lines


def _first_difference(recorded: dict, again: dict) -> str | None:
    """Where ``again`` first departs from ``recorded``, in words; None when it repeats it."""
    for key in REPEATED:
        old, new = recorded["history"][key], again["history"][key]
        epoch = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), None)
        if epoch is not None or len(old) != len(new):
            epoch = min(len(old), len(new)) if epoch is None else epoch
            return f"its {key} departs from the record's at epoch {epoch + 1}"
    if recorded["predictions"] != again["predictions"]:
        return "its test predictions differ"
    return None


def _footings(record: dict) -> str:
    return ", ".join(sorted(set(record["history"].get("footing", [])))) or NOT_RECORDED


def _say(text: str) -> None:
    """Print ``text`` and its newline in one write: the workers share stdout, and print's own
    newline, a second write, can land after another worker's line."""
    print(text + "\n", end="", flush=True)


def _train_some(jobs: Sequence[Job], profile: str, results_dir: Path, device: torch.device, worker: int,
                restore: bool = False) -> int:
    """Train the free jobs one after another (with ``restore``, those with a record but no
    weights, through :func:`restore_weights`); returns how many failed."""
    failed: set[int] = set()
    while True:
        for index, job in enumerate(jobs):
            if index in failed or not _to_do(results_dir, job, restore):
                continue
            with claim(results_dir, job) as mine:
                if not mine or not _to_do(results_dir, job, restore):  # taken, or finished just now
                    continue
                _say(f"[worker {worker}] start {job.name}" + " (again, for its weights)" * restore)
                start = time.perf_counter()
                try:
                    record = (restore_weights(job, profile, results_dir, device) if restore else
                              run_one(job.variant, job.data, job.config, job.seed, profile=profile,
                                      results_dir=results_dir, device=device, progress=False)[0])
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
            device: str, threads: int, restore: bool) -> None:
    torch.set_num_threads(threads)
    jobs = make_jobs(experiments, setup, recipe, setup.load())
    raise SystemExit(1 if _train_some(jobs, setup.name, results_dir, resolve_device(device), worker, restore) else 0)


def train_queue(experiments: Sequence, setup: Profile, recipe: TrainConfig, results_dir: str | Path, *,
                workers: int, threads: int, device: str = "auto", restore: bool = False) -> int:
    """Train every missing run of ``experiments`` with ``workers`` processes of ``threads``
    threads each; with ``restore``, instead, every run that has a record but no weights, again
    (:func:`restore_weights`). Returns 0 when every run is done, 1 when some failed (each
    failure is printed with its traceback; the other runs go on)."""
    results_dir = writable_folder(results_dir)
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker,
                                 args=(i, experiments, setup, recipe, results_dir, device, threads, restore))
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
    checkpoint has reached, or pending; for a run not done, the minutes it has left. A last line
    sums what is left.

    The minutes per epoch come from the first of: the finished runs of the same network, data
    and recipe (:func:`pace_key`); the run's own checkpointed epochs; the images per second of
    any other record of the same network (:func:`network_key`: another subset, profile or
    schedule) on the footing the queue trains on now, that of the latest finished run, whatever
    the CPU's model (:func:`footing_kind`; the book's CPUs differed by up to 1.6x from one
    session to the next). A run none of these can time is counted apart."""
    results_dir = Path(results_dir)
    states, paces, left, own = [], {}, {}, {}
    latest = ("", None)  # (date, footing) of the latest finished run
    for job in jobs:
        stem = record_stem(results_dir, job.variant, job.seed, job.key)
        found = find_record(results_dir, stem, job.seed, job.key)
        ckpt = stem.with_suffix(".ckpt")
        if found is not None:
            record = read_record(found)
            minutes = record["run_card"]["wall_time_s"] / 60
            paces.setdefault(pace_key(job), []).append(minutes / len(record["history"]["epoch"]))
            states.append(f"done: {100 * record['final_test_acc']:.2f} % ({minutes:.0f} min)")
            footings = [f for f in record["history"].get("footing", []) if f != NOT_RECORDED]  # older records: none
            if footings:
                latest = max(latest, (record["run_card"]["date"], footing_kind(footings[-1])), key=lambda pair: pair[0])
            continue
        with claim(results_dir, job) as free:
            state = "pending" if free else "training now"
        history = torch.load(ckpt, map_location="cpu", weights_only=False)["history"] if ckpt.exists() else {}
        epoch = len(history.get("epoch", []))
        if epoch:
            state += f", epoch {epoch}/{job.config.epochs} checkpointed"
            own[len(states)] = statistics.median(history["epoch_time"]) / 60
        states.append(state)
        left[len(states) - 1] = job.config.epochs - epoch
    footing = latest[1]
    speeds = network_speeds(results_dir, footing) if footing and left else {}
    lines, total, counts = [], 0.0, dict.fromkeys(("same", "own", "speed", "none"), 0)
    for i, (job, state) in enumerate(zip(jobs, states)):
        if i in left:
            per_epoch, source = epoch_minutes(job, paces, own.get(i), speeds)
            counts[source] += 1
            if per_epoch is not None:
                total += left[i] * per_epoch
                state += f", about {left[i] * per_epoch:.0f} min left" + (
                    " (from other runs of this network)" if source == "speed" else "")
        lines.append(f"{job.name}: {state}")
    lines.append(_summary(len(left), len(jobs), total, counts, footing))
    return lines


def _summary(left: int, runs: int, minutes: float, counts: dict[str, int], footing: str | None) -> str:
    sources = {"same": "at the pace of finished runs of the same network, data and recipe",
               "own": "at the pace of their own checkpointed epochs",
               "speed": f"at the images per second of other runs of the same network on {footing}"}
    timed = [f"{counts[source]} {how}" for source, how in sources.items() if counts[source]]
    line = f"left: {left} of {runs} runs"
    if timed:
        line += f", about {minutes / 60:.1f} worker-hours (" + "; ".join(timed) + ")"
    if counts["none"]:
        line += f"; {counts['none']} of them on networks with no run{f' on {footing}' if footing else ''} to time them by"
    return line


def epoch_minutes(job: Job, paces: dict[str, list[float]], own: float | None,
                  speeds: dict[str, tuple[float, float]]) -> tuple[float | None, str]:
    """Minutes per epoch of ``job``, and which source of :func:`queue_status` gave them
    (``"none"`` with None when none could)."""
    if pace_key(job) in paces:
        return statistics.median(paces[pace_key(job)]), "same"
    if own is not None:
        return own, "own"
    speed = speeds.get(network_key(job.variant.spec(), job.data.in_channels, job.data.image_size,
                                   asdict(job.config)))
    if speed is None:
        return None, "none"
    train_per_s, eval_per_s = speed
    return (len(job.data.train_labels) / train_per_s + len(job.data.test_labels) / eval_per_s) / 60, "speed"


def network_key(spec: dict, in_channels: int, image_size: int, config: dict) -> str:
    """What sets a run's speed in images per second, whatever its label, callbacks, data size
    or schedule: the network, the image shape, the batch sizes and the precision asked for."""
    network = {k: v for k, v in spec.items() if k not in ("label", "train", "callbacks")}
    fields = {"network": network, "image": [in_channels, image_size],
              **{k: config[k] for k in ("batch_size", "eval_batch_size", "amp", "channels_last")}}
    return json.dumps(json.loads(json.dumps(fields, default=str)), sort_keys=True)


def network_speeds(results_dir: Path, footing: str) -> dict[str, tuple[float, float]]:
    """For each network (:func:`network_key`) with records in ``results_dir``: the median
    training and evaluation images per second over its epochs on ``footing`` (a :func:`footing_kind`)."""
    found: dict[str, tuple[list[float], list[float]]] = {}
    for path in results_dir.glob("*.json"):
        record = json.loads(path.read_text())
        if "history" not in record:  # a benchmark's record
            continue
        history, dataset = record["history"], record["dataset"]
        key = network_key(record["variant"], dataset["in_channels"], dataset["image_size"], record["config"])
        train, evaluate = found.setdefault(key, ([], []))
        for where, train_per_s, eval_per_s in zip(history.get("footing", []), history["train_images_per_s"],
                                                  history["eval_images_per_s"]):
            if footing_kind(where) == footing:
                train.append(train_per_s)
                evaluate.append(eval_per_s)
    return {key: (statistics.median(train), statistics.median(evaluate))
            for key, (train, evaluate) in found.items() if train}


def pace_key(job: Job) -> str:
    """What sets a run's time per epoch: its network, data and recipe, whatever its label, seed
    or number of epochs (a network and its twice-the-epochs run share one)."""
    return run_key(job.variant, job.data, job.config.replace(epochs=1), seed=0)


def footing_kind(footing: str) -> str:
    """A history's footing without the CPU's model: ``"CPU: AMD EPYC, 1 threads, bf16 autocast"``
    becomes ``"CPU, 1 threads, bf16 autocast"``; a GPU's footing is kept whole."""
    return re.sub(r"^CPU: .*?, (\d+ threads)", r"CPU, \1", footing)
