"""Run profiles: how much data and how many epochs a notebook spends.

* ``smoke``: synthetic 16x16 images, 3 epochs, seconds; CI runs every notebook with it.
* ``quick``: Fashion-MNIST (a fixed 12,000-image training subset, the full 10,000-image
  test set), a few epochs: about 10-15 minutes per notebook on a 2-core CPU. The networks
  are still learning fast when it stops: it shows how a layer starts, not where it ends.
* ``book``: all of Fashion-MNIST (60,000 training, 10,000 test images), 30 epochs, five
  seeds: the plain ResNet-20's curves end on a plateau. The baseline chapter checks the length
  with twice the epochs: whether the baseline's mean moves by more than one seed standard
  deviation, and whether a layer's difference from it (IEBN's) moves at all; each chapter
  checks its own verdict at twice the epochs too. The book's
  pages are executed with it. One run takes about an hour on a 2-core CPU and about 8
  minutes on an H200 beside seven others (the README gives the measurements).
* ``full``: CIFAR-10 at the paper-like length, for a GPU (Colab or better).

A notebook may override any field (``resolve_profile("quick", epochs=10)``), and its
run card records what was actually used.
"""
from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field, replace

from .data import DATASET_SIZES, DATASETS, ImageDataset, load_dataset, synthetic_dataset


@dataclass(frozen=True)
class Profile:
    name: str
    dataset: str
    epochs: int
    batch_size: int
    seeds: tuple[int, ...]
    train_subset: int | None = None
    test_subset: int | None = None
    dataset_options: dict = field(default_factory=dict)  # for the synthetic dataset
    purpose: str = ""  # what the profile is for, in a few words

    def describe(self) -> str:
        """The profile in one line, read from its fields: data, length, seeds, what it is for."""
        train, _ = self.image_counts()
        return (f"{self.name}: {self.dataset}, {train:,} training images, {self.epochs} epochs, "
                f"{len(self.seeds)} seeds" + (f" ({self.purpose})" if self.purpose else ""))

    def image_counts(self) -> tuple[int, int]:
        """How many training and test images the profile's data has (before a chapter's subsets)."""
        if self.dataset == "synthetic":
            defaults = inspect.signature(synthetic_dataset).parameters
            return tuple(self.dataset_options.get(split, defaults[split].default) for split in ("train", "test"))
        train, test = DATASET_SIZES[self.dataset]
        return self.train_subset or train, self.test_subset or test

    def load(self, root=None, *, download: bool | None = None) -> ImageDataset:
        """The profile's data. ``download=None`` downloads a missing dataset only on Colab
        (where the notebooks start without data); elsewhere pass ``download=True`` to allow it."""
        if download is None:
            download = "google.colab" in sys.modules
        options = dict(self.dataset_options) if self.dataset == "synthetic" else {"download": download}
        return load_dataset(self.dataset, root, train_subset=self.train_subset,
                            test_subset=self.test_subset, **options)


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", "synthetic", epochs=3, batch_size=64, seeds=(0, 1, 2),
                     dataset_options=dict(channels=1, image_size=16, train=512, test=256),
                     purpose="checks that the notebooks run"),
    "quick": Profile("quick", "fashion_mnist", epochs=6, batch_size=128, seeds=(0, 1, 2),
                     train_subset=12_000,
                     purpose="minutes on a CPU, still learning fast when it stops"),
    "book": Profile("book", "fashion_mnist", epochs=30, batch_size=128, seeds=(0, 1, 2, 3, 4),
                    purpose="the book's pages: runs that end on a plateau"),
    "full": Profile("full", "cifar10", epochs=200, batch_size=128, seeds=(0, 1, 2),
                    purpose="the paper-like recipe, for a GPU"),
}


def profiles_help(default: str) -> str:
    """Every profile in one line each, joined for a command line's ``--profile`` help."""
    return "; ".join(profile.describe() for profile in PROFILES.values()) + f" (default: {default})"


def resolve_profile(profile: str | Profile, *, dataset: str | None = None, epochs: int | None = None,
                    seeds=None, batch_size: int | None = None) -> Profile:
    """A profile by name, with the notebook's overrides applied (``None`` keeps the default).

    Choosing another dataset drops the synthetic options; a real dataset keeps the subset.
    """
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
        profile = PROFILES[profile]
    _check_whole("epochs", epochs, profile.epochs)
    _check_whole("batch_size", batch_size, profile.batch_size)
    if seeds is not None:
        _check_seeds(seeds, profile.seeds)
    if dataset is not None and dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}, or None for the "
                         f"profile's {profile.dataset}")
    changes: dict = {}
    if dataset is not None and dataset != profile.dataset:
        changes.update(dataset=dataset, dataset_options={})
    if epochs is not None:
        changes["epochs"] = epochs
    if seeds is not None:
        changes["seeds"] = tuple(seeds)
    if batch_size is not None:
        changes["batch_size"] = batch_size
    if changes:  # the named profile's purpose may no longer hold: say what was changed
        changed = ", ".join(name for name in changes if name != "dataset_options")
        changes["purpose"] = f"the {profile.name} profile with its {changed} changed"
    return replace(profile, **changes)


def _is_whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_whole(name: str, value: object, default: int) -> None:
    if value is not None and not (_is_whole(value) and value >= 1):
        raise ValueError(f"{name}={value!r}: {name} must be a whole number >= 1, or None for the profile's {default}")


def _check_seeds(seeds: object, default: tuple[int, ...]) -> None:
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__") or \
            not all(_is_whole(s) and s >= 0 for s in seeds):
        raise ValueError(f"seeds={seeds!r}: give distinct whole numbers >= 0, e.g. (0, 1, 2), or None for the "
                         f"profile's {default}")
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {seeds} repeat a seed: a repeated seed loads the same run again and "
                         "fakes agreement between seeds; give distinct seeds, e.g. (0, 1, 2)")
