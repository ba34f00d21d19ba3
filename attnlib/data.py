"""Datasets as uint8 tensors, and a loader that keeps a whole split on the training device.

``load_dataset`` returns an :class:`ImageDataset`: train and test images as uint8
``(N, C, H, W)`` tensors, int64 labels, class names and the per-channel mean/std
used for normalisation. Nothing is ever substituted: a missing or corrupt file
raises :class:`DatasetError` saying what to do.

:class:`DeviceLoader` moves a split to the device once; per batch it gathers the
indices of a seeded permutation, applies random crop and flip to the whole batch
on the device, and normalises. There is no worker process, no per-sample Python
code and no host synchronisation.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")

# SHA-256 of the *decompressed* idx files: Zalando's and Debian's .gz archives
# differ byte for byte, their contents do not.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

DATASETS = ("fashion_mnist", "cifar10", "cifar100", "synthetic")
#: Training and test images of each real dataset.
DATASET_SIZES = {"fashion_mnist": (60_000, 10_000), "cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000)}


class DatasetError(RuntimeError):
    """A dataset is missing, corrupt or asked for with wrong arguments."""


@dataclass(frozen=True)
class ImageDataset:
    name: str
    train_images: torch.Tensor  # uint8 (N, C, H, W)
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]     # per channel, in [0, 1] units
    std: tuple[float, ...]

    @property
    def in_channels(self) -> int:
        return self.train_images.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return self.train_images.shape[-1]

    def subset(self, train: int | None = None, test: int | None = None, *, at_most: bool = False) -> ImageDataset:
        """The first ``train``/``test`` samples of a fixed permutation (seed 0).

        Every run and seed sees the same subset, so seeds vary the initialisation and
        the batch order, never the data. Asking for more samples than there are is an
        error, unless ``at_most=True``: then a smaller dataset (the smoke profile's
        synthetic one) is kept whole.
        """
        return replace(self, **_take(self.train_images, self.train_labels, train, "train", at_most),
                       **_take(self.test_images, self.test_labels, test, "test", at_most))

    def describe(self) -> str:
        return (f"{self.name}: {len(self.train_labels)} train / {len(self.test_labels)} test images, "
                f"{self.in_channels}x{self.image_size}x{self.image_size}, {self.num_classes} classes")


def _take(images: torch.Tensor, labels: torch.Tensor, n: int | None, split: str, at_most: bool) -> dict:
    if n is None:
        return {}
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise DatasetError(f"{split} subset size must be a positive whole number or None, got {n!r}")
    if n > len(labels) and not at_most:
        raise DatasetError(f"{split} subset of {n} images asked for, but the data has {len(labels)}; "
                           f"give at most {len(labels)}, or None for all of them")
    if n >= len(labels):
        return {}
    idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:n]
    return {f"{split}_images": images[idx], f"{split}_labels": labels[idx]}


def default_data_root() -> Path:
    """``$ATTNLIB_DATA``, else the ``data/`` folder of the enclosing book repository, else ./data."""
    if env := os.environ.get("ATTNLIB_DATA"):
        return Path(env)
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").exists() and (folder / "attnlib").is_dir():
            return folder / "data"
    return here / "data"


def load_dataset(name: str, root: str | Path | None = None, *, download: bool = False,
                 train_subset: int | None = None, test_subset: int | None = None,
                 **synthetic_kwargs) -> ImageDataset:
    """Load ``fashion_mnist``, ``cifar10``, ``cifar100`` or ``synthetic``.

    CIFAR is read from torchvision's folder layout under ``root``. Fashion-MNIST is looked
    for in ``root``, ``root/fashion-mnist``, torchvision's ``root/FashionMNIST/raw`` and
    Debian's ``/usr/share/datasets/fashion-mnist``. ``download=True`` fetches a missing
    dataset with torchvision into ``root`` first (needs internet); either way the files
    are verified against their checksums.
    """
    root = Path(root) if root is not None else default_data_root()
    if name == "synthetic":
        data = synthetic_dataset(**synthetic_kwargs)
    elif synthetic_kwargs:
        raise DatasetError(f"options {sorted(synthetic_kwargs)} are only for the synthetic dataset")
    elif name == "fashion_mnist":
        data = load_fashion_mnist(root, download=download)
    elif name in ("cifar10", "cifar100"):
        data = load_cifar(name, root, download=download)
    else:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return data.subset(train_subset, test_subset)


# ----------------------------------------------------------------------------- Fashion-MNIST

def find_fashion_mnist(root: Path) -> Path:
    candidates = [root, root / "fashion-mnist", root / "fashion_mnist", root / "FashionMNIST" / "raw",
                  DEBIAN_FASHION_MNIST]
    for folder in candidates:
        if all((folder / f).exists() for f in FASHION_MNIST_FILES):
            return folder
    looked = "\n  ".join(str(c) for c in candidates)
    raise DatasetError(
        "Fashion-MNIST not found. Looked for the four idx .gz files in:\n  " + looked +
        "\nWith internet access: load_dataset('fashion_mnist', download=True). "
        "On Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist`; elsewhere download "
        "the four files from github.com/zalandoresearch/fashion-mnist into "
        f"{root / 'fashion-mnist'} (or set ATTNLIB_DATA).")


def _read_idx(path: Path, expected_sha256: str | None) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DatasetError(f"{path} is not a readable gzip file ({err}). Delete it and "
                           "install or download it again.") from err
    if expected_sha256 and hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise DatasetError(f"{path} has the wrong checksum: the file is corrupt or not the "
                           "Fashion-MNIST release. Delete it and install or download it again.")
    if len(raw) < 8 or raw[:2] != b"\0\0" or raw[2] != 8:
        raise DatasetError(f"{path} is not an idx file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"{path} is truncated: header says {shape}, found {body.size} bytes")
    return body.reshape(shape)


def load_fashion_mnist(root: Path, *, download: bool = False, verify: bool = True) -> ImageDataset:
    if download:
        try:
            find_fashion_mnist(root)
        except DatasetError:
            import torchvision.datasets as tvd

            tvd.FashionMNIST(str(root), train=True, download=True)  # all four files, into root/FashionMNIST/raw
    folder = find_fashion_mnist(root)
    arrays = {f: _read_idx(folder / f, sha if verify else None) for f, sha in FASHION_MNIST_FILES.items()}
    train_x, train_y, test_x, test_y = arrays.values()
    return ImageDataset(
        "fashion_mnist",
        torch.from_numpy(train_x.copy()).unsqueeze(1), torch.from_numpy(train_y.astype(np.int64)),
        torch.from_numpy(test_x.copy()).unsqueeze(1), torch.from_numpy(test_y.astype(np.int64)),
        FASHION_MNIST_CLASSES, *_channel_stats(torch.from_numpy(train_x.copy()).unsqueeze(1)))


# ----------------------------------------------------------------------------- CIFAR

_CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], meta="batches.meta", label_key="labels",
                    names_key="label_names", tv_class="CIFAR10"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta",
                     label_key="fine_labels", names_key="fine_label_names", tv_class="CIFAR100"),
}


def _unpickle(path: Path) -> dict:
    if not path.exists():
        raise DatasetError(f"{path} is missing")
    try:
        with path.open("rb") as fh:
            return pickle.load(fh, encoding="latin1")
    except Exception as err:  # a truncated or foreign file raises many different errors
        raise DatasetError(f"{path} is corrupt ({type(err).__name__}: {err}). Delete the folder "
                           f"{path.parent} and download again (load_dataset(..., download=True)).") from err


def _verify_cifar_md5(name: str, root: Path) -> None:
    """Check the files against torchvision's published md5 sums."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, _CIFAR[name]["tv_class"])
    folder = root / cls.base_folder
    for fname, md5 in cls.train_list + cls.test_list:
        if hashlib.md5((folder / fname).read_bytes()).hexdigest() != md5:
            raise DatasetError(f"{folder / fname} has the wrong checksum: the file is corrupt. "
                               f"Delete {folder} and download again (load_dataset(..., download=True)).")


def load_cifar(name: str, root: Path, *, download: bool = False, verify: bool = True) -> ImageDataset:
    spec = _CIFAR[name]
    folder = root / spec["folder"]
    if download and not folder.exists():
        import torchvision.datasets as tvd

        getattr(tvd, spec["tv_class"])(str(root), train=True, download=True)
    if not folder.exists():
        raise DatasetError(f"{name} not found in {folder}. Call load_dataset({name!r}, download=True) "
                           f"on a machine with internet access, or copy torchvision's "
                           f"'{spec['folder']}' folder into {root} (or set ATTNLIB_DATA).")

    def split(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batches = [_unpickle(folder / f) for f in files]
        try:
            x = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
            y = np.concatenate([b[spec["label_key"]] for b in batches]).astype(np.int64)
        except (KeyError, ValueError) as err:
            raise DatasetError(f"{folder} does not hold {name} in torchvision's format ({err})") from err
        return torch.from_numpy(x.copy()), torch.from_numpy(y)

    train_x, train_y = split(spec["train"])
    test_x, test_y = split(spec["test"])
    if verify:
        _verify_cifar_md5(name, root)
    meta = _unpickle(folder / spec["meta"])
    if spec["names_key"] not in meta:
        raise DatasetError(f"{folder / spec['meta']} has no {spec['names_key']!r}: not {name} in "
                           "torchvision's format. Delete the folder and download again.")
    classes = tuple(meta[spec["names_key"]])
    return ImageDataset(name, train_x, train_y, test_x, test_y, classes, *_channel_stats(train_x))


# ----------------------------------------------------------------------------- synthetic

def synthetic_dataset(*, num_classes: int = 10, channels: int = 1, image_size: int = 16,
                      train: int = 1024, test: int = 512, seed: int = 0) -> ImageDataset:
    """Deterministic, class-dependent images: a smooth template per class plus noise.

    Learnable in a few epochs but not trivially (the pixel noise is as large as the
    differences between templates). For smoke runs and tests only.
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, channels, 4, 4, generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=image_size, mode="bilinear",
                                                align_corners=False)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=g)]
        noise = torch.randn(n, channels, image_size, image_size, generator=g)
        images = templates[labels] * 160 + 48 + noise * 48
        return images.clamp(0, 255).to(torch.uint8), labels

    train_x, train_y = draw(train)
    test_x, test_y = draw(test)
    classes = tuple(f"class {i}" for i in range(num_classes))
    return ImageDataset("synthetic", train_x, train_y, test_x, test_y, classes, *_channel_stats(train_x))


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.double().div_(255).transpose(0, 1).flatten(1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1).tolist())


# ----------------------------------------------------------------------------- loader

class DeviceLoader:
    """Iterate over one split kept on ``device`` as uint8; augment and normalise per batch.

    * ``shuffle``: a new permutation each epoch from ``seed`` and the epoch number, so a
      resumed run sees exactly the batches an uninterrupted one would.
    * ``augment``: random crop with ``padding`` zero pixels and horizontal flip, done on
      the whole batch at once with index arithmetic.
    * ``rank``/``world_size``: each global batch of ``batch_size * world_size`` samples is
      split into disjoint per-rank slices (for DistributedDataParallel).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
                 mean: tuple[float, ...], std: tuple[float, ...], device: str | torch.device = "cpu",
                 shuffle: bool = False, augment: bool = False, padding: int | None = None,
                 drop_last: bool = False, seed: int = 0, channels_last: bool = False,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("images must be a uint8 tensor of shape (N, C, H, W)")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.padding = padding if padding is not None else max(1, images.shape[-1] // 8)
        self.drop_last, self.seed = drop_last, seed
        self.rank, self.world_size = rank, world_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        shape = (1, -1, 1, 1)
        self.scale = (1 / (255 * torch.tensor(std, device=self.device))).view(shape)
        self.shift = (-torch.tensor(mean, device=self.device) / torch.tensor(std, device=self.device)).view(shape)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n, per_step = len(self.labels), self.batch_size * self.world_size
        return n // per_step if self.drop_last else -(-n // per_step)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def __iter__(self):
        n, per_step = len(self.labels), self.batch_size * self.world_size
        g = self._generator()
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        steps = len(self)
        order = order[: steps * per_step] if self.drop_last else order
        if self.augment:  # all random numbers of the epoch at once, on the host, seeded
            pad = self.padding
            offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=g)
            flips = torch.rand(n, generator=g) < 0.5
            offsets, flips = offsets.to(self.device), flips.to(self.device)
        order = order.to(self.device)
        for step in range(steps):
            idx = order[step * per_step:(step + 1) * per_step]
            idx = idx[self.rank * self.batch_size:(self.rank + 1) * self.batch_size] \
                if self.world_size > 1 else idx
            x = self.images[idx]
            if self.augment:
                x = random_crop_flip(x, offsets[idx], flips[idx], self.padding)
            yield self._normalise(x), self.labels[idx]

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        return torch.addcmul(self.shift, x.float(), self.scale)


def random_crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor,
                     padding: int) -> torch.Tensor:
    """Crop each image of ``x`` (zero-padded by ``padding``) at its own offset, then flip some.

    ``offsets[i] = (dy, dx)`` in ``[0, 2*padding]``; ``flips[i]`` mirrors image ``i``.
    One gather for the whole batch: no per-sample Python code.
    """
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    rows = offsets[:, :1] + torch.arange(h, device=x.device)            # (B, H)
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)            # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    bidx = torch.arange(b, device=x.device)[:, None, None]
    out = padded[bidx, :, rows[:, :, None], cols[:, None, :]]           # (B, H, W, C)
    return out.permute(0, 3, 1, 2)
