"""attnlib.data: datasets (synthetic, Fashion-MNIST, CIFAR), subsets and the DeviceLoader."""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import attnlib.data as D
from attnlib.data import DatasetError, DeviceLoader, load_cifar, load_dataset, random_crop_flip

REAL_FASHION = D.DEBIAN_FASHION_MNIST
HAVE_FASHION = all((REAL_FASHION / f).exists() for f in D.FASHION_MNIST_FILES)
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION, reason=f"Fashion-MNIST not installed in {REAL_FASHION} (apt-get install dataset-fashion-mnist)")


# ----------------------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic_and_well_typed():
    a = load_dataset("synthetic", channels=1, image_size=16, train=64, test=32)
    torch.manual_seed(123)  # the global RNG must not matter
    b = load_dataset("synthetic", channels=1, image_size=16, train=64, test=32)
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.mean == b.mean and a.std == b.std
    assert a.train_images.dtype == torch.uint8 and a.train_images.shape == (64, 1, 16, 16)
    assert a.test_images.dtype == torch.uint8 and a.test_images.shape == (32, 1, 16, 16)
    assert a.train_labels.dtype == torch.int64 and a.test_labels.dtype == torch.int64
    assert a.classes == tuple(f"class {i}" for i in range(10))
    assert (a.in_channels, a.image_size, a.num_classes) == (1, 16, 10)
    assert set(a.train_labels.tolist()) == set(range(10))  # balanced: 64 = 6 or 7 of each class
    assert torch.bincount(a.train_labels).min() >= 6
    assert len(a.mean) == len(a.std) == 1 and 0 < a.mean[0] < 1 and 0 < a.std[0] < 1
    assert "64 train / 32 test" in a.describe()


def test_synthetic_seed_and_options_change_the_data():
    a = load_dataset("synthetic", train=32, test=8)
    b = load_dataset("synthetic", train=32, test=8, seed=1)
    assert not torch.equal(a.train_images, b.train_images)
    c = load_dataset("synthetic", channels=3, image_size=12, num_classes=4, train=32, test=8)
    assert c.train_images.shape == (32, 3, 12, 12) and c.num_classes == 4
    assert int(c.train_labels.max()) == 3 and len(c.mean) == 3


def test_synthetic_stats_are_the_training_split_stats(synthetic_rgb):
    x = synthetic_rgb.train_images.double() / 255
    for ch in range(3):
        assert synthetic_rgb.mean[ch] == pytest.approx(x[:, ch].mean().item(), abs=1e-9)
        assert synthetic_rgb.std[ch] == pytest.approx(x[:, ch].std().item(), abs=1e-9)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist")
    for name in D.DATASETS:
        assert name in str(err.value)


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10", "cifar100"])
def test_synthetic_options_for_a_real_dataset_are_rejected(name, tmp_path):
    with pytest.raises(DatasetError, match="synthetic"):
        load_dataset(name, tmp_path, channels=1)


# ----------------------------------------------------------------------------- subset

def test_subset_size_and_fixed_selection(synthetic):
    a = synthetic.subset(train=50, test=20)
    assert len(a.train_labels) == 50 and a.train_images.shape == (50, 1, 16, 16)
    assert len(a.test_labels) == 20 and len(a.test_images) == 20
    torch.manual_seed(999)  # a different global seed must not change the subset
    b = synthetic.subset(train=50, test=20)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.train_labels, b.train_labels)
    assert torch.equal(a.test_images, b.test_images)
    # the train subset does not depend on the test argument, and vice versa
    c = synthetic.subset(train=50)
    assert torch.equal(a.train_images, c.train_images) and torch.equal(c.test_images, synthetic.test_images)
    d = synthetic.subset(test=20)
    assert torch.equal(a.test_images, d.test_images) and torch.equal(d.train_images, synthetic.train_images)
    # "the first n of a fixed permutation": a smaller subset is a prefix of a larger one
    e = synthetic.subset(train=80)
    assert torch.equal(e.train_images[:50], a.train_images)
    # and load_dataset(train_subset=...) gives the same subset
    f = load_dataset("synthetic", channels=1, image_size=16, train=256, test=128, train_subset=50,
                     test_subset=20)
    assert torch.equal(f.train_images, a.train_images) and torch.equal(f.test_labels, a.test_labels)
    # the normalisation statistics are those of the full split, not of the subset
    assert a.mean == synthetic.mean


def test_subset_keeps_image_label_pairs_without_repeats(synthetic):
    full = {img.numpy().tobytes(): int(lab) for img, lab in zip(synthetic.train_images, synthetic.train_labels)}
    assert len(full) == len(synthetic.train_labels)  # noisy images are unique
    sub = synthetic.subset(train=100)
    keys = [img.numpy().tobytes() for img in sub.train_images]
    assert len(set(keys)) == 100
    assert [full[k] for k in keys] == sub.train_labels.tolist()
    # not simply the first 100 samples
    assert not torch.equal(sub.train_images, synthetic.train_images[:100])


def test_subset_edge_cases(synthetic):
    assert synthetic.subset() is not None and torch.equal(synthetic.subset().train_images, synthetic.train_images)
    n = len(synthetic.train_labels)
    with pytest.raises(DatasetError, match=rf"train subset of 10000 images asked for, but the data has {n}; "
                                           rf"give at most {n}, or None"):
        synthetic.subset(train=10_000)
    with pytest.raises(DatasetError, match=r"test subset of 10000 images .*"):
        synthetic.subset(test=10_000)
    assert len(synthetic.subset(train=10_000, at_most=True).train_labels) == n
    assert len(synthetic.subset(train=n).train_labels) == n
    with pytest.raises(DatasetError, match=r"positive whole number or None, got 2\.5"):
        synthetic.subset(train=2.5)
    with pytest.raises(DatasetError, match="positive"):
        synthetic.subset(train=0)


# ----------------------------------------------------------------------------- Fashion-MNIST

def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@needs_fashion
def test_fashion_mnist_real_files():
    data = load_dataset("fashion_mnist", REAL_FASHION)
    assert data.train_images.shape == (60000, 1, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (10000, 1, 28, 28)
    assert data.train_labels.dtype == torch.int64 and len(data.test_labels) == 10000
    assert data.classes == D.FASHION_MNIST_CLASSES and data.num_classes == 10
    assert torch.bincount(data.train_labels).tolist() == [6000] * 10
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
    assert data.mean[0] == pytest.approx(0.2860, abs=1e-3) and data.std[0] == pytest.approx(0.3530, abs=1e-3)


def test_fashion_mnist_idx_parsing_without_verification(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (5, 28, 28)),
              "train-labels-idx1-ubyte.gz": np.array([0, 9, 3, 3, 1]),
              "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (3, 28, 28)),
              "t10k-labels-idx1-ubyte.gz": np.array([2, 8, 5])}
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for name, arr in arrays.items():
        _write_idx(folder / name, arr)
    data = D.load_fashion_mnist(tmp_path, verify=False)  # found in root/fashion-mnist
    assert data.train_images.shape == (5, 1, 28, 28) and data.test_images.shape == (3, 1, 28, 28)
    assert np.array_equal(data.train_images[:, 0].numpy(), arrays["train-images-idx3-ubyte.gz"])
    assert data.train_labels.tolist() == [0, 9, 3, 3, 1] and data.test_labels.tolist() == [2, 8, 5]
    # with verification (the default) these files are not the release
    with pytest.raises(DatasetError, match="checksum"):
        D.load_fashion_mnist(tmp_path)
    # a truncated idx body is reported as such
    raw = gzip.decompress((folder / "t10k-images-idx3-ubyte.gz").read_bytes())
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(DatasetError, match="truncated"):
        D.load_fashion_mnist(tmp_path, verify=False)


def test_fashion_mnist_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "no-such-folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="apt-get") as err:
        load_dataset("fashion_mnist", empty)
    assert str(empty / "fashion-mnist") in str(err.value)


def _fashion_copy(tmp_path):
    """The real files linked into tmp_path/fm (the one to corrupt is replaced, never written through)."""
    folder = tmp_path / "fm"
    folder.mkdir()
    for name in D.FASHION_MNIST_FILES:
        (folder / name).symlink_to(REAL_FASHION / name)
    return folder


@needs_fashion
def test_fashion_mnist_wrong_content_fails_the_checksum(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "no-such-folder")
    folder = _fashion_copy(tmp_path)
    name = "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress((REAL_FASHION / name).read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # one label changed: still a valid idx file
    (folder / name).unlink()
    (folder / name).write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DatasetError, match="checksum") as err:
        load_dataset("fashion_mnist", folder)
    assert "corrupt" in str(err.value) and name in str(err.value)


@needs_fashion
def test_fashion_mnist_garbage_file_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "no-such-folder")
    folder = _fashion_copy(tmp_path)
    name = "train-labels-idx1-ubyte.gz"
    (folder / name).unlink()
    (folder / name).write_bytes(b"this is not gzip at all" * 10)
    with pytest.raises(DatasetError, match="gzip") as err:
        load_dataset("fashion_mnist", folder)
    assert name in str(err.value)
    # a truncated gzip stream as well
    (folder / name).write_bytes((REAL_FASHION / name).read_bytes()[:1000])
    with pytest.raises(DatasetError, match="gzip"):
        load_dataset("fashion_mnist", folder)


# ----------------------------------------------------------------------------- CIFAR

@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_torchvision_layout(fake_cifar, name):
    data = load_cifar(name, fake_cifar.root, verify=False)
    assert data.name == name
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape[1:] == (3, 32, 32)
    assert np.array_equal(data.train_images.numpy(), fake_cifar.train_x[name])
    assert np.array_equal(data.test_images.numpy(), fake_cifar.test_x[name])
    assert data.train_labels.dtype == torch.int64
    assert data.train_labels.tolist() == fake_cifar.train_y[name].tolist()
    assert data.test_labels.tolist() == fake_cifar.test_y[name].tolist()
    assert data.classes == tuple(fake_cifar.classes[name])
    assert data.num_classes == (10 if name == "cifar10" else 100)
    x = torch.from_numpy(fake_cifar.train_x[name]).double() / 255
    assert data.mean == pytest.approx(x.transpose(0, 1).flatten(1).mean(1).tolist())


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_checksum_is_verified_by_default(fake_cifar, name):
    with pytest.raises(DatasetError, match="checksum"):
        load_dataset(name, fake_cifar.root)


def test_cifar_missing_folder_says_download(tmp_path):
    with pytest.raises(DatasetError, match=r"download=True") as err:
        load_dataset("cifar10", tmp_path)
    assert "cifar-10-batches-py" in str(err.value)
    with pytest.raises(DatasetError, match=r"download=True"):
        load_dataset("cifar100", tmp_path)


def test_cifar_corrupt_pickle(fake_cifar):
    path = fake_cifar.root / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:200])  # truncated
    with pytest.raises(DatasetError, match="corrupt") as err:
        load_cifar("cifar10", fake_cifar.root, verify=False)
    assert "data_batch_3" in str(err.value) and "download=True" in str(err.value)


def test_cifar_missing_batch_and_wrong_format(fake_cifar):
    folder = fake_cifar.root / "cifar-100-python"
    (folder / "test").unlink()
    with pytest.raises(DatasetError, match="missing"):
        load_cifar("cifar100", fake_cifar.root, verify=False)
    with (folder / "test").open("wb") as fh:  # a pickle without the expected keys
        pickle.dump({"images": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}, fh)
    with pytest.raises(DatasetError, match="format"):
        load_cifar("cifar100", fake_cifar.root, verify=False)


# ----------------------------------------------------------------------------- DeviceLoader

def _indexed(n=100, c=1, size=8):
    """Images whose content identifies them, and labels equal to their index."""
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)
    return images, torch.arange(n)


def _batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def _loader(images, labels, **kw):
    kw.setdefault("mean", (0.5,) * images.shape[1])
    kw.setdefault("std", (0.25,) * images.shape[1])
    return DeviceLoader(images, labels, **kw)


def test_loader_same_seed_and_epoch_same_batches():
    images, labels = _indexed()
    for augment in (False, True):
        a = _loader(images, labels, batch_size=16, shuffle=True, augment=augment, seed=3)
        b = _loader(images, labels, batch_size=16, shuffle=True, augment=augment, seed=3)
        a.set_epoch(4), b.set_epoch(4)
        for (xa, ya), (xb, yb) in zip(_batches(a), _batches(b), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        # iterating twice over the same epoch repeats it
        assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(_batches(a), _batches(b)))


def test_loader_epoch_and_seed_change_the_order():
    images, labels = _indexed()
    loader = _loader(images, labels, batch_size=100, shuffle=True)
    orders = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        orders.append(next(iter(loader))[1])
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    other = _loader(images, labels, batch_size=100, shuffle=True, seed=1)
    assert not torch.equal(next(iter(other))[1], orders[0])
    # without shuffle: the natural order, every epoch
    plain = _loader(images, labels, batch_size=100)
    plain.set_epoch(7)
    assert torch.equal(next(iter(plain))[1], labels)


def test_loader_covers_every_sample_once_per_epoch():
    images, labels = _indexed(n=103)
    loader = _loader(images, labels, batch_size=16, shuffle=True, drop_last=False, seed=2)
    for epoch in range(2):
        loader.set_epoch(epoch)
        batches = _batches(loader)
        assert len(batches) == len(loader) == 7
        assert [len(y) for _, y in batches] == [16] * 6 + [7]
        seen = torch.cat([y for _, y in batches])
        assert sorted(seen.tolist()) == list(range(103))
        # the image that comes with a label is that sample's image (normalised)
        x = torch.cat([x for x, _ in batches])
        assert torch.allclose(x * 0.25 * 255 + 0.5 * 255, images[seen].float(), atol=1e-3)


def test_loader_drop_last_length():
    images, labels = _indexed(n=100)
    loader = _loader(images, labels, batch_size=32, shuffle=True, drop_last=True)
    batches = _batches(loader)
    assert len(loader) == len(batches) == 3 and all(len(y) == 32 for _, y in batches)
    assert len(set(torch.cat([y for _, y in batches]).tolist())) == 96
    assert len(_loader(images, labels, batch_size=32)) == 4
    assert len(_loader(images, labels, batch_size=200, drop_last=True)) == 0
    with pytest.raises(ValueError):
        _loader(images, labels, batch_size=0)
    with pytest.raises(ValueError, match="uint8"):
        _loader(images.float(), labels, batch_size=4)


def test_loader_normalises_to_zero_mean_unit_std(synthetic_rgb):
    data = synthetic_rgb
    loader = DeviceLoader(data.train_images, data.train_labels, batch_size=64, mean=data.mean, std=data.std)
    x = torch.cat([x for x, _ in loader]).double()
    assert x.shape == data.train_images.shape and x.dtype == torch.float64
    per_channel = x.transpose(0, 1).flatten(1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(per_channel.std(1), torch.ones(3, dtype=torch.float64), atol=1e-4)


def test_loader_channels_last_same_values(synthetic_rgb):
    data = synthetic_rgb
    kw = dict(batch_size=50, mean=data.mean, std=data.std, shuffle=True, augment=True, seed=1)
    a = DeviceLoader(data.train_images, data.train_labels, **kw)
    b = DeviceLoader(data.train_images, data.train_labels, channels_last=True, **kw)
    xa, _ = next(iter(a))
    xb, _ = next(iter(b))
    assert xb.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(xa, xb)


# ----------------------------------------------------------------------------- augmentation

def _reference_crop_flip(img: torch.Tensor, dy: int, dx: int, flip: bool, pad: int) -> torch.Tensor:
    """One image (C, H, W): zero-pad, take the HxW window at (dy, dx), mirror the width if asked."""
    _, h, w = img.shape
    crop = F.pad(img, (pad,) * 4)[:, dy:dy + h, dx:dx + w]
    return crop.flip(-1) if flip else crop


def test_crop_flip_identity_and_flip():
    images, _ = _indexed(n=10, c=3, size=8)
    pad = 3
    centre = torch.full((10, 2), pad)
    no = torch.zeros(10, dtype=torch.bool)
    out = random_crop_flip(images, centre, no, pad)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out, images)
    flipped = random_crop_flip(images, centre, ~no, pad)
    assert torch.equal(flipped, torch.flip(images, dims=[3]))


def test_crop_flip_matches_per_sample_reference():
    g = torch.Generator().manual_seed(0)
    b, c, h, w, pad = 64, 3, 8, 6, 2   # H != W catches a swapped axis
    x = torch.randint(1, 256, (b, c, h, w), generator=g, dtype=torch.uint8)
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=g)
    flips = torch.rand(b, generator=g) < 0.5
    out = random_crop_flip(x, offsets, flips, pad)
    for i in range(b):
        ref = _reference_crop_flip(x[i], int(offsets[i, 0]), int(offsets[i, 1]), bool(flips[i]), pad)
        assert torch.equal(out[i], ref), i
    # the extreme offsets show padding zeros on the expected side
    corner = random_crop_flip(x[:1], torch.tensor([[0, 0]]), torch.tensor([False]), pad)
    assert (corner[0, :, :pad, :] == 0).all() and (corner[0, :, :, :pad] == 0).all()
    assert torch.equal(corner[0, :, pad:, pad:], x[0, :, :h - pad, :w - pad])


def test_loader_augmentation_statistics():
    """Each augmented sample is one of the 5x5x2 crops/flips; flips ~ 1/2, offsets uniform on [0, 2p]."""
    n, size, pad = 4000, 8, 2
    template = (torch.arange(size * size) + 1).view(1, size, size).to(torch.uint8)  # distinct, non-zero
    images = template.expand(n, 1, size, size).contiguous()
    loader = DeviceLoader(images, torch.arange(n), batch_size=1000, mean=(0.0,), std=(1.0,), shuffle=True,
                          augment=True, padding=pad, seed=0)
    loader.set_epoch(1)
    out = torch.cat([x for x, _ in loader])
    out = (out * 255).round().to(torch.uint8).flatten(1)                     # (N, 64)
    cands, params = [], []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            for flip in (False, True):
                cands.append(_reference_crop_flip(template, dy, dx, flip, pad).flatten())
                params.append((dy, dx, flip))
    cands = torch.stack(cands)                                               # (50, 64)
    assert len({tuple(c.tolist()) for c in cands}) == 50
    match = (out[:, None, :] == cands[None]).all(-1)                         # (N, 50)
    assert (match.sum(1) == 1).all(), "an augmented image is not a padded crop (+flip) of the original"
    chosen = torch.tensor([params[i] for i in match.int().argmax(1).tolist()])  # (N, 3)
    flip_rate = chosen[:, 2].float().mean().item()
    assert abs(flip_rate - 0.5) < 0.04  # 5 sigma is 0.04 for n=4000
    for axis in (0, 1):
        counts = torch.bincount(chosen[:, axis], minlength=2 * pad + 1)
        assert len(counts) == 2 * pad + 1  # never outside [0, 2p]
        assert ((counts.float() / n - 0.2).abs() < 0.04).all(), counts
    # the two offsets are drawn independently: all 25 pairs occur
    assert len({(a, b) for a, b, _ in chosen.tolist()}) == 25
    # another epoch draws other augmentations for the same samples
    loader.set_epoch(2)
    again = (torch.cat([x for x, _ in loader]) * 255).round().to(torch.uint8).flatten(1)
    assert not torch.equal(again, out)


def test_loader_default_padding():
    images, labels = _indexed(n=4, size=16)
    assert _loader(images, labels, batch_size=4).padding == 2
    assert _loader(torch.zeros(2, 1, 32, 32, dtype=torch.uint8), torch.arange(2), batch_size=2).padding == 4


# ----------------------------------------------------------------------------- sharding

@pytest.mark.parametrize("augment", [False, True])
def test_rank_shards_are_disjoint_and_form_the_global_batch(augment):
    images, labels = _indexed(n=100)
    kw = dict(shuffle=True, augment=augment, drop_last=True, seed=4)
    whole = _loader(images, labels, batch_size=16, **kw)
    ranks = [_loader(images, labels, batch_size=8, rank=r, world_size=2, **kw) for r in range(2)]
    for loader in (whole, *ranks):
        loader.set_epoch(3)
    assert len(whole) == len(ranks[0]) == len(ranks[1]) == 6
    seen = []
    for (xw, yw), (x0, y0), (x1, y1) in zip(_batches(whole), _batches(ranks[0]), _batches(ranks[1]), strict=True):
        assert len(y0) == len(y1) == 8
        assert not set(y0.tolist()) & set(y1.tolist())
        assert torch.equal(torch.cat([y0, y1]), yw)
        assert torch.equal(torch.cat([x0, x1]), xw)
        seen += yw.tolist()
    assert len(set(seen)) == 96


def test_fashion_mnist_download_uses_torchvision_layout_and_only_when_missing(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "no-such-folder")
    calls = []

    class FakeFashionMNIST:  # what torchvision's download leaves behind: root/FashionMNIST/raw/*.gz
        def __init__(self, root, train, download):
            calls.append((root, download))
            raw = Path(root) / "FashionMNIST" / "raw"
            raw.mkdir(parents=True)
            for name, n in (("train-images-idx3-ubyte.gz", 4), ("t10k-images-idx3-ubyte.gz", 2)):
                _write_idx(raw / name, np.zeros((n, 28, 28), dtype=np.uint8))
                _write_idx(raw / name.replace("images-idx3", "labels-idx1"), np.arange(n))

    monkeypatch.setattr(tvd, "FashionMNIST", FakeFashionMNIST)
    with pytest.raises(DatasetError, match="download=True"):  # no download unless asked
        D.load_fashion_mnist(tmp_path, verify=False)
    assert calls == []
    data = D.load_fashion_mnist(tmp_path, download=True, verify=False)
    assert calls == [(str(tmp_path), True)] and data.train_images.shape == (4, 1, 28, 28)
    D.load_fashion_mnist(tmp_path, download=True, verify=False)  # present now: not fetched again
    assert len(calls) == 1


def test_profile_downloads_only_on_colab(monkeypatch):
    import sys

    from attnlib import profiles

    seen = []
    monkeypatch.setattr(profiles, "load_dataset", lambda name, root, **kw: seen.append(kw.get("download")))
    profiles.PROFILES["quick"].load()
    monkeypatch.setitem(sys.modules, "google.colab", object())
    profiles.PROFILES["quick"].load()
    profiles.PROFILES["quick"].load(download=False)
    assert seen == [False, True, False]
