"""Shared fixtures: a small synthetic dataset, tiny CIFAR-10/100 folders in torchvision's layout, the built book."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from attnlib.data import ImageDataset, load_dataset  # noqa: E402
from attnlib.experiment import compare  # noqa: E402
from attnlib.history import Callback  # noqa: E402
from attnlib.variants import Variant  # noqa: E402
from booktools.paths import REPO  # noqa: E402

# The tests use tiny models and batches, where intra-op threads cost more than they give,
# and a second busy process (a notebook training) makes spinning OpenMP threads stall:
# a ResNet-20 forward of 2 images took 0.8 s with 2 threads beside one, 4 ms with 1.
# OMP_NUM_THREADS, when set, wins.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)

@pytest.fixture(autouse=True)
def seeded_rng():
    """Every test starts from torch seed 0 and leaves the global RNG as it found it."""
    state = torch.get_rng_state()
    torch.manual_seed(0)
    yield
    torch.set_rng_state(state)


# Fields of History that measure time, not behaviour: excluded from determinism checks.
TIMING_FIELDS = ("epoch_time", "train_images_per_s", "eval_images_per_s")


def history_values(history) -> dict:
    """A History as a dict without its timing fields."""
    return {k: v for k, v in history.to_dict().items() if k not in TIMING_FIELDS}


def assert_same_values_and_gradients(y: torch.Tensor, expected: torch.Tensor, wrt: dict[str, torch.Tensor]) -> None:
    """y == expected and, for a random weighted sum of each, the same gradient w.r.t. every tensor in wrt."""
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=y.dtype)
    got = torch.autograd.grad((y * weights).sum(), list(wrt.values()))
    want = torch.autograd.grad((expected * weights).sum(), list(wrt.values()))
    for name, a, b in zip(wrt, got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m, name=name: f"d/d{name}: {m}")


@pytest.fixture(scope="session")
def synthetic() -> ImageDataset:
    """256 train / 128 test 1x16x16 images, 10 classes."""
    return load_dataset("synthetic", channels=1, image_size=16, train=256, test=128)


@pytest.fixture(scope="session")
def synthetic_rgb() -> ImageDataset:
    """A 3-channel synthetic set, for per-channel statistics."""
    return load_dataset("synthetic", channels=3, image_size=8, train=300, test=60)


@dataclass
class FakeCifar:
    """What the fixture wrote, to compare against what attnlib reads back."""

    root: Path
    train_x: dict[str, np.ndarray]   # name -> uint8 (N, 3, 32, 32)
    train_y: dict[str, np.ndarray]
    test_x: dict[str, np.ndarray]
    test_y: dict[str, np.ndarray]
    classes: dict[str, list[str]]


def _dump(path: Path, obj: dict) -> None:
    # torchvision's release files are Python 2 pickles of dicts with (py2) str keys;
    # attnlib reads them with pickle.load(fh, encoding="latin1"), which yields str keys.
    with path.open("wb") as fh:
        pickle.dump(obj, fh, protocol=2)


@pytest.fixture
def fake_cifar(tmp_path: Path) -> FakeCifar:
    """A tiny CIFAR-10 (5 x 4 train + 6 test) and CIFAR-100 (10 train + 5 test) under tmp_path."""
    rng = np.random.default_rng(1234)
    out = FakeCifar(tmp_path, {}, {}, {}, {}, {})

    # CIFAR-10: data_batch_1..5, test_batch, batches.meta
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names10 = [f"c10-{i}" for i in range(10)]
    xs, ys = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, 4).tolist()
        _dump(folder / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5", "labels": y,
                                           "data": x, "filenames": [f"img{i}_{k}.png" for k in range(4)]})
        xs.append(x), ys.extend(y)
    out.train_x["cifar10"] = np.concatenate(xs).reshape(-1, 3, 32, 32)
    out.train_y["cifar10"] = np.array(ys)
    x = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
    y = rng.integers(0, 10, 6).tolist()
    _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": y, "data": x,
                                  "filenames": [f"t{k}.png" for k in range(6)]})
    out.test_x["cifar10"], out.test_y["cifar10"] = x.reshape(-1, 3, 32, 32), np.array(y)
    _dump(folder / "batches.meta", {"num_cases_per_batch": 4, "label_names": names10, "num_vis": 3072})
    out.classes["cifar10"] = names10

    # CIFAR-100: train, test, meta
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    names100 = [f"c100-{i}" for i in range(100)]
    for split, n in (("train", 10), ("test", 5)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        _dump(folder / split, {"filenames": [f"{split}{k}.png" for k in range(n)], "batch_label": split,
                               "fine_labels": fine, "coarse_labels": [f // 5 for f in fine], "data": x})
        getattr(out, f"{split}_x")["cifar100"] = x.reshape(-1, 3, 32, 32)
        getattr(out, f"{split}_y")["cifar100"] = np.array(fine)
    _dump(folder / "meta", {"fine_label_names": names100,
                            "coarse_label_names": [f"super-{i}" for i in range(20)]})
    out.classes["cifar100"] = names100
    return out


@dataclass
class BookBuild:
    """The HTML book built once for the session: where it is, what the build said, how long it took."""

    html: Path
    result: subprocess.CompletedProcess
    seconds: float

    def failure(self) -> str:
        """The end of the build's output, for an assertion message."""
        return self.result.stdout[-4000:] + self.result.stderr[-4000:]


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> BookBuild:
    """``jupyter-book build`` of the repository with warnings as errors (-W -n), run once and shared
    by the book's tests and the browser test. ``ATTNLIB_BUILD_OUTPUT=FOLDER`` builds into FOLDER
    and, when FOLDER already holds a build, reuses it (to repeat the browser test without
    rebuilding: ``ATTNLIB_BUILD_OUTPUT=build/once pytest tests/test_browser.py`` in a loop)."""
    exe = Path(sys.executable).parent / "jupyter-book"
    if not exe.exists():
        pytest.skip("jupyter-book is not installed (pip install -e .[book])")
    out = Path(os.environ.get("ATTNLIB_BUILD_OUTPUT") or tmp_path_factory.mktemp("book"))
    html = out / "_build" / "html"
    if (html / "index.html").exists() and os.environ.get("ATTNLIB_BUILD_OUTPUT"):
        return BookBuild(html, subprocess.CompletedProcess(["reused", str(out)], 0, "", ""), 0.0)
    start = time.perf_counter()
    result = subprocess.run([str(exe), "build", str(REPO), "--path-output", str(out), "-W", "-n", "--keep-going"],
                            capture_output=True, text=True, timeout=900)
    return BookBuild(html, result, time.perf_counter() - start)


#: The ``comparison`` fixture's variants and seeds.
COMPARED_VARIANTS = [Variant("BN baseline"), Variant("AlexNet", model="alexnet", model_kwargs={"width_mult": 0.5},
                                                     train={"lr": 0.02})]
COMPARED_SEEDS = (0, 1)


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """2 variants x 2 seeds on the smoke profile, 2 epochs; trained once per test module."""
    results = tmp_path_factory.mktemp("results")
    return compare(COMPARED_VARIANTS, "smoke", epochs=2, seeds=COMPARED_SEEDS, results_dir=results, device="cpu",
                   progress=False)


class StopAt(Callback):
    """Interrupts training when epoch index ``epoch`` (0-based) starts (on every rank)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_start(self, state):
        if state.epoch == self.epoch:
            raise KeyboardInterrupt("simulated interruption")
