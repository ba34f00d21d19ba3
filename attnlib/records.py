"""The record store: one JSON record per run, named by a key that hashes everything that
decides the run, found again under any label."""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from .checkpoints import LOAD_ERRORS, CorruptFileError, load_error_reason
from .config import TrainConfig
from .data import ImageDataset
from .variants import Variant


RECORD_FORMAT = 2


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def dataset_spec(data: ImageDataset) -> dict:
    fingerprint = hashlib.sha1()
    for t in (data.train_images, data.train_labels, data.test_images, data.test_labels):
        fingerprint.update(t.contiguous().numpy().tobytes())
    return {"name": data.name, "train_images": len(data.train_labels),
            "test_images": len(data.test_labels), "in_channels": data.in_channels,
            "image_size": data.image_size, "classes": list(data.classes),
            "sha1": fingerprint.hexdigest()}


def run_key(variant: Variant, data: ImageDataset, config: TrainConfig, seed: int) -> str:
    """A hash of everything that decides the training run: the network, the effective
    recipe, the data and the seed. The label only names the run and ``train`` is already
    folded into ``config``, so both are left out: chapters that train the same network the
    same way share one record."""
    spec = {k: v for k, v in variant.spec().items() if k not in ("label", "train")}
    fields = {"format": RECORD_FORMAT, "variant": spec, "data": dataset_spec(data), "config": asdict(config),
              "seed": seed}
    if variant.parts().name("attention") != "none":
        # attention modules are initialised on their own random stream since 2026-11-30, which
        # changed these networks' initial weights: their earlier records are another run
        fields["attention_init"] = "side-stream"
    blob = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def record_stem(results_dir: Path, variant: Variant, seed: int, key: str) -> Path:
    """Where a run's files go: ``<results_dir>/<label>-seed<k>-<key>`` + ``.json``, ``.pt``, ``.ckpt``."""
    return results_dir / f"{_slug(variant.label)}-seed{seed}-{key}"


def find_record(results_dir: Path, stem: Path, seed: int, key: str) -> Path | None:
    """This run's record, saved under this label or any other. Its weights may be absent
    (git keeps only seed 0's): :meth:`Comparison.model` says so when it needs them."""
    candidates = [stem.with_suffix(".json"), *sorted(results_dir.glob(f"*-seed{seed}-{key}.json"))]
    return next((p for p in candidates if p.exists()), None)


def adopt_checkpoint(stem: Path, seed: int, key: str) -> Path | None:
    """An interrupted run's checkpoint saved under another label (a chapter renamed the arm)
    becomes this label's, so the run resumes instead of starting again. Returns the adopted
    file's old path, or None when there was none to adopt."""
    target = stem.with_suffix(".ckpt")
    if target.exists():
        return None
    other = next(iter(sorted(stem.parent.glob(f"*-seed{seed}-{key}.ckpt"))), None)
    if other is not None:
        os.replace(other, target)
    return other


def read_record(path: Path) -> dict:
    """The record at ``path``; :class:`~attnlib.train.CorruptFileError` naming it if it cannot be read."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise CorruptFileError(_unreadable_record(Path(path), load_error_reason(err))) from err
    if not isinstance(record, dict):
        raise CorruptFileError(_unreadable_record(Path(path), f"a JSON {type(record).__name__}, not an object"))
    return record


def _unreadable_record(path: Path, reason: str) -> str:
    return (f"the record {path} cannot be read ({reason}). It is damaged or incomplete (a copy or a "
            "write cut short): delete it and run the notebook (or python -m attnlib.run) again, "
            "which trains that run again.")


def read_weights(path: Path, run: str) -> dict:
    """The state dict saved at ``path``; :class:`~attnlib.train.CorruptFileError` naming it if unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except LOAD_ERRORS as err:
        reason = load_error_reason(err)
    else:
        if isinstance(state, dict):
            return state
        reason = f"it holds a {type(state).__name__}, not a state dict"
    raise CorruptFileError(
        f"the weights of {run} ({path}) cannot be read ({reason}). The file is damaged or incomplete: "
        f"delete it and its record {path.with_suffix('.json').name}, then run the notebook (or python -m "
        "attnlib.run) again to retrain this seed.")


class ResultsFolderError(OSError):
    """The results folder cannot be created or written."""


def writable_folder(folder: str | Path) -> Path:
    """``folder``, created if missing, once a file could be written in it: a results folder
    that cannot take a record fails here, before hours of training, not after the first run."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ResultsFolderError(f"results folder {folder} cannot be written ({err.strerror or err}); "
                                 "choose another folder (results_dir / --results-dir) or fix its "
                                 "permissions") from err
    return folder
