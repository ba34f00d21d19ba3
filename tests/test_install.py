"""``pip install .`` carries the library and nothing of the repository: installed into an empty
folder and imported from elsewhere, it trains a network with each layer, builds timm and
torchvision models with them, and has no book tooling and no path into the checkout."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from booktools.paths import REPO

SCRIPT = r'''
import importlib.util, sys, timm, torch, torchvision
import attnlib
from attnlib import build_model, load_dataset, TrainConfig, fit
from attnlib.callbacks import NAMSparsityPenalty, TemperatureAnnealing
from attnlib.layers import IEBN2d, MABN2d, NAMAttention, SqueezeExcitation

assert importlib.util.find_spec("booktools") is None, "the book's tooling must not be installed"
data = load_dataset("synthetic", channels=1, image_size=8, train=64, test=32)
config = TrainConfig(epochs=1, batch_size=32, eval_batch_size=32)
parts = [dict(norm="iebn"), dict(norm="mabn", conv="cenconv"), dict(attention="se"), dict(attention="ba"),
         dict(attention="nam"), dict(conv="dynamic")]
for kw in parts:
    callbacks = [TemperatureAnnealing(epochs=1)] if kw.get("conv") == "dynamic" else \
                [NAMSparsityPenalty()] if kw.get("attention") == "nam" else []
    model = build_model("resnet20", in_channels=1, width_mult=0.5, **kw)
    history = fit(model, data, config, device="cpu", callbacks=callbacks, progress=False)
    print(kw, round(history.test_acc[-1], 3))
timm.create_model("resnet18", num_classes=10, block_args=dict(attn_layer=NAMAttention))(torch.randn(2, 3, 32, 32))
timm.create_model("resnet18", num_classes=10, block_args=dict(attn_layer=SqueezeExcitation))(torch.randn(2, 3, 32, 32))
torchvision.models.resnet18(num_classes=10, norm_layer=IEBN2d)(torch.randn(2, 3, 32, 32))
print("installed at", attnlib.__file__)
'''


@pytest.mark.slow
def test_pip_install_carries_a_working_library_and_no_book_tooling(tmp_path: Path):
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
                            "--target", str(target), str(REPO)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    installed = target / "attnlib"
    assert installed.is_dir() and not (target / "booktools").exists()
    for source in installed.rglob("*.py"):
        text = source.read_text()
        assert str(REPO) not in text and "import booktools" not in text and "from booktools" not in text, source
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    env.pop("ATTNLIB_DATA", None)
    run = subprocess.run([sys.executable, "-c", SCRIPT], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"installed at {installed}" in run.stdout, run.stdout
