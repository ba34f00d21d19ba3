"""Bad inputs get a clear answer: a table per kind of input, one row per case.

Each row is (input, expected exception type, a regex the message must match). To cover a new
case, add a row: a TrainConfig change, a layer expression (evaluated with :data:`PRELUDE`'s
names), or a damaged file and the reader that meets it.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from torch import nn

from attnlib.experiment import Comparison, run_one
from attnlib.records import read_record, record_stem, run_key
from attnlib.variants import Variant
from booktools.overview import load_records
from attnlib.profiles import resolve_profile
from booktools.paths import REPO
from attnlib import checkpoints
from attnlib.checkpoints import CorruptFileError
from attnlib.config import TrainConfig
from attnlib.train import fit

# ----------------------------------------------------------------------------- TrainConfig

NAN, INF = math.nan, math.inf

CONFIG_CASES = [
    # (changes, exception, the message must match)
    ({"lr": NAN}, ValueError, r"TrainConfig\.lr=nan is not allowed: lr must be a finite number > 0"),
    ({"lr": INF}, ValueError, r"TrainConfig\.lr=inf .* finite number > 0"),
    ({"lr": 0.0}, ValueError, r"TrainConfig\.lr=0\.0 .* > 0"),
    ({"lr": -0.1}, ValueError, r"TrainConfig\.lr=-0\.1 .* > 0"),
    ({"lr": "0.1"}, ValueError, r"TrainConfig\.lr='0\.1' .* finite number"),
    ({"warmup_epochs": -1}, ValueError, r"TrainConfig\.warmup_epochs=-1 .* >= 0"),
    ({"warmup_epochs": INF}, ValueError, r"TrainConfig\.warmup_epochs=inf .* finite number of epochs"),
    ({"warmup_epochs": NAN}, ValueError, r"TrainConfig\.warmup_epochs=nan"),
    ({"gamma": -1.0}, ValueError, r"TrainConfig\.gamma=-1\.0 .* in \(0, 1\]"),
    ({"gamma": 0.0}, ValueError, r"TrainConfig\.gamma=0\.0 .* in \(0, 1\]"),
    ({"gamma": 1.5, "schedule": "multistep"}, ValueError, r"TrainConfig\.gamma=1\.5 .* in \(0, 1\]"),
    ({"epochs": 2.5}, ValueError, r"TrainConfig\.epochs=2\.5 .* whole number >= 1"),
    ({"epochs": True}, ValueError, r"TrainConfig\.epochs=True .* whole number"),
    ({"epochs": "10"}, ValueError, r"TrainConfig\.epochs='10' .*\(an int"),
    ({"epochs": 0}, ValueError, r"TrainConfig\.epochs=0 .* >= 1"),
    ({"epochs": -1}, ValueError, r"TrainConfig\.epochs=-1 .* >= 1"),
    ({"batch_size": 2.5}, ValueError, r"TrainConfig\.batch_size=2\.5 .* whole number"),
    ({"batch_size": True}, ValueError, r"TrainConfig\.batch_size=True .* whole number"),
    ({"batch_size": 0}, ValueError, r"TrainConfig\.batch_size=0 .* >= 1"),
    ({"eval_batch_size": 0}, ValueError, r"TrainConfig\.eval_batch_size=0"),
    ({"check_every": 0}, ValueError, r"TrainConfig\.check_every=0"),
    ({"label_smoothing": -0.1}, ValueError, r"TrainConfig\.label_smoothing=-0\.1 .* in \[0, 1\)"),
    ({"label_smoothing": 1.0}, ValueError, r"TrainConfig\.label_smoothing=1\.0 .* in \[0, 1\)"),
    ({"label_smoothing": NAN}, ValueError, r"TrainConfig\.label_smoothing=nan"),
    ({"momentum": -0.1}, ValueError, r"TrainConfig\.momentum=-0\.1 .* in \[0, 1\)"),
    ({"momentum": 1.0}, ValueError, r"TrainConfig\.momentum=1\.0 .* in \[0, 1\)"),
    ({"weight_decay": -1e-4}, ValueError, r"TrainConfig\.weight_decay=-0\.0001 .* >= 0"),
    ({"weight_decay": NAN}, ValueError, r"TrainConfig\.weight_decay=nan .* finite number >= 0"),
    ({"milestones": (0.75, 0.5)}, ValueError, r"TrainConfig\.milestones=\(0\.75, 0\.5\) .* increasing"),
    ({"milestones": (0.5, 0.5)}, ValueError, r"TrainConfig\.milestones=\(0\.5, 0\.5\) .* increasing"),
    ({"milestones": (0.0, 0.5)}, ValueError, r"TrainConfig\.milestones=\(0\.0, 0\.5\) .* in \(0, 1\)"),
    ({"milestones": (0.5, 1.0)}, ValueError, r"TrainConfig\.milestones=\(0\.5, 1\.0\) .* in \(0, 1\)"),
    ({"milestones": (50, 75)}, ValueError, r"TrainConfig\.milestones=\(50, 75\) .* fractions"),
    ({"milestones": 0.5}, ValueError, r"TrainConfig\.milestones=0\.5 .* e\.g\. \(0\.5, 0\.75\)"),
    ({"milestones": (NAN,)}, ValueError, r"TrainConfig\.milestones=\(nan,\)"),
    ({"nesterov": "yes"}, ValueError, r"TrainConfig\.nesterov='yes' .* True or False"),
    ({"optimizer": "rmsprop"}, ValueError, r"TrainConfig\.optimizer='rmsprop'; choose one of"),
]


@pytest.mark.parametrize("changes, error, pattern", CONFIG_CASES, ids=[repr(c[0]) for c in CONFIG_CASES])
def test_bad_train_config_is_refused_up_front(changes: dict, error: type[Exception], pattern: str):
    with pytest.raises(error, match=pattern):
        TrainConfig(**changes)
    with pytest.raises(error, match=pattern):
        TrainConfig().replace(**changes)


@pytest.mark.parametrize("changes", [
    {"momentum": 0.0}, {"weight_decay": 0.0}, {"warmup_epochs": 0}, {"warmup_epochs": 0.5},
    {"label_smoothing": 0.0}, {"gamma": 1.0}, {"milestones": ()}, {"milestones": [0.3]}, {"lr": 1},
], ids=repr)
def test_edge_values_that_make_sense_are_accepted(changes: dict):
    config = TrainConfig(**changes)
    for name, value in changes.items():  # kept as given (milestones as a tuple, the form the run key hashes)
        assert getattr(config, name) == (tuple(value) if isinstance(value, list) else value)


def test_validation_leaves_the_fields_and_defaults_of_the_run_key_alone():
    """``asdict(TrainConfig())`` is hashed into every saved run's key."""
    assert asdict(TrainConfig()) == {
        "epochs": 10, "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True,
        "weight_decay": 5e-4, "schedule": "cosine", "warmup_epochs": 0.0, "milestones": (0.5, 0.75),
        "gamma": 0.1, "label_smoothing": 0.0, "amp": "auto", "channels_last": True, "augment": True,
        "eval_batch_size": 1000, "check_every": 25}


# ----------------------------------------------------------------------------- layers

PRELUDE = """
import torch
from attnlib.layers.bridge_attention import BridgeAttention
from attnlib.layers.dynamic_conv import DynamicConv2d
from attnlib.layers.iebn import IEBN2d
from attnlib.layers.mabn import MABN2d
from attnlib.layers.nam import NAMAttention, NAMChannelAttention, NAMSpatialAttention

def with_temperature(t):
    return {**DynamicConv2d(8, 8, 3).state_dict(), "_temperature": torch.tensor(t)}
"""
NAMES: dict = {}
exec(PRELUDE, NAMES)

LAYER_CASES = [
    # (expression, exception, the message must match)
    ("IEBN2d(8, eps=0.0)", ValueError, r"IEBN2d eps=0\.0: eps must be > 0"),
    ("IEBN2d(8, eps=-1e-5)", ValueError, r"IEBN2d eps=-1e-05: eps must be > 0"),
    ("IEBN2d(8, eps=float('nan'))", ValueError, r"IEBN2d eps=nan: eps must be > 0"),
    ("IEBN2d(8)(torch.randn(2, 4, 5, 5))", ValueError,
     r"IEBN2d\(8\) expects \(N, 8, H, W\) input, got shape \(2, 4, 5, 5\)"),
    ("IEBN2d(8)(torch.randn(8, 5, 5))", ValueError, r"IEBN2d\(8\) expects \(N, 8, H, W\) input, got shape \(8, 5, 5\)"),
    ("IEBN2d(8).eval()(torch.randn(2, 4, 5, 5))", ValueError, r"IEBN2d\(8\) expects \(N, 8, H, W\)"),
    ("BridgeAttention(8, [4])(torch.randn(2, 6, 5, 5), [torch.randn(2, 4, 5, 5)])", ValueError,
     r"BridgeAttention\(8, prev_channels=\[4\]\) expects x of shape \(N, 8, H, W\), got \(2, 6, 5, 5\)"),
    ("BridgeAttention(8, [4])(torch.randn(2, 8, 5, 5), [torch.randn(2, 5, 5, 5)])", ValueError,
     r"expects bridge 0 of shape \(N, 4, H, W\), got \(2, 5, 5, 5\)"),
    ("BridgeAttention(8, [])(torch.randn(8, 5, 5), [])", ValueError,
     r"BridgeAttention\(8, prev_channels=\[\]\) expects x of shape \(N, 8, H, W\), got \(8, 5, 5\)"),
    ("BridgeAttention(8, [4, 8])(torch.randn(2, 8, 5, 5), [torch.randn(2, 4, 5, 5)])", ValueError,
     r"bridges 2 features, got 1"),
    ("NAMChannelAttention(8)(torch.randn(2, 4, 5, 5))", ValueError,
     r"NAMChannelAttention\(8\) expects \(N, 8, H, W\) inputs, got shape \(2, 4, 5, 5\)"),
    ("NAMChannelAttention(8)(torch.randn(8, 5, 5))", ValueError, r"NAMChannelAttention\(8\) expects \(N, 8, H, W\)"),
    ("NAMSpatialAttention(8)(torch.randn(8, 5, 5))", ValueError, r"NAMSpatialAttention\(8\) expects \(N, 8, H, W\)"),
    ("(m := NAMSpatialAttention(8))(torch.randn(2, 8, 5, 5)) is None or m(torch.randn(2, 4, 5, 5))", ValueError,
     r"NAMSpatialAttention\(8\) expects \(N, 8, H, W\) inputs, got shape \(2, 4, 5, 5\)"),
    ("NAMAttention(8, spatial=True)(torch.randn(2, 4, 5, 5))", ValueError, r"NAMChannelAttention\(8\) expects"),
    ("DynamicConv2d(8, 16, 3)(torch.randn(2, 4, 5, 5))", ValueError,
     r"DynamicConv2d\(8, 16\) expects \(N, 8, H, W\) input, got shape \(2, 4, 5, 5\)"),
    ("DynamicConv2d(8, 16, 3)(torch.randn(8, 5, 5))", ValueError, r"DynamicConv2d\(8, 16\) expects \(N, 8, H, W\)"),
    ("DynamicConv2d(8, 8, 3).load_state_dict(with_temperature(-1.0))", RuntimeError,
     r"_temperature: a DynamicConv2d's softmax temperature must be positive, the state dict holds -1\.0"),
    ("DynamicConv2d(8, 8, 3).load_state_dict(with_temperature(0.0), strict=False)", RuntimeError,
     r"temperature must be positive, the state dict holds 0\.0"),
    ("DynamicConv2d(8, 8, 3).load_state_dict(with_temperature(float('nan')))", RuntimeError,
     r"temperature must be positive, the state dict holds nan"),
    ("torch.nn.Sequential(DynamicConv2d(8, 8, 3)).load_state_dict("
     "{'0.' + k: v for k, v in with_temperature(-2.0).items()})", RuntimeError,
     r"0\._temperature: .* must be positive"),
]

#: Inputs that once killed the interpreter (SIGFPE): run in a subprocess, so a regression fails
#: one test instead of ending pytest.
CRASHING_CASES = [
    ("MABN2d(8).train()(torch.randn(0, 8, 6, 6))", ValueError,
     r"MABN2d\(8\) got an empty input of shape \(0, 8, 6, 6\) in training mode.*eval mode"),
    ("MABN2d(8).train()(torch.randn(2, 8, 0, 6))", ValueError,
     r"MABN2d\(8\) got an empty input of shape \(2, 8, 0, 6\)"),
]


@pytest.mark.parametrize("expression, error, pattern", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_bad_layer_input_gets_a_clear_error(expression: str, error: type[Exception], pattern: str):
    with pytest.raises(error, match=pattern):
        eval(expression, dict(NAMES))


@pytest.mark.parametrize("expression, error, pattern", CRASHING_CASES, ids=[c[0] for c in CRASHING_CASES])
def test_input_that_crashed_the_interpreter_gets_a_clear_error(expression: str, error: type[Exception],
                                                              pattern: str):
    code = PRELUDE + f"""
try:
    {expression}
except Exception as err:
    print(type(err).__name__)
    print(err)
else:
    print("no error")
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=REPO, env=env)
    assert result.returncode == 0, f"the interpreter died (exit {result.returncode}): {result.stderr[-2000:]}"
    name, _, message = result.stdout.partition("\n")
    assert name == error.__name__ and re.search(pattern, message), result.stdout


@pytest.mark.parametrize("expression, shape", [
    ("DynamicConv2d(8, 16, 3)(torch.randn(0, 8, 6, 6))", (0, 16, 4, 4)),
    ("DynamicConv2d(8, 16, 3, mode='grouped')(torch.randn(0, 8, 6, 6))", (0, 16, 4, 4)),
    ("DynamicConv2d(8, 16, 3, padding=1, groups=2)(torch.randn(0, 8, 6, 6))", (0, 16, 6, 6)),
    ("MABN2d(8).eval()(torch.randn(0, 8, 6, 6))", (0, 8, 6, 6)),
])
def test_empty_batch_gives_an_empty_output_where_that_is_natural(expression: str, shape: tuple):
    assert tuple(eval(expression, dict(NAMES)).shape) == shape


def test_a_refused_temperature_is_not_loaded():
    layer = NAMES["DynamicConv2d"](8, 8, 3)
    with pytest.raises(RuntimeError):
        layer.load_state_dict(NAMES["with_temperature"](-1.0))
    assert layer.temperature == 30.0
    layer.load_state_dict(NAMES["with_temperature"](2.0))
    assert layer.temperature == 2.0


# ----------------------------------------------------------------------------- damaged files

def _saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


CHECKPOINT = _saved({"epoch": 1, "step": 4, "config": {}, "model": {"w": torch.zeros(100)}})
RECORD = json.dumps({"format": 2, "label": "R", "variant": {"label": "R"}, "history": {"epoch": [1]}}).encode()
WEIGHTS = _saved(nn.Linear(50, 10).state_dict())
TINY_RECIPE = TrainConfig(epochs=1, batch_size=64, eval_batch_size=128)


def _write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def read_checkpoint(folder: Path, data, content: bytes) -> None:
    checkpoints.read_checkpoint(_write(folder / "run.ckpt", content))


def resume_from(folder: Path, data, content: bytes) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(data.in_channels * data.image_size ** 2, data.num_classes))
    fit(model, data, TINY_RECIPE, device="cpu", checkpoint=_write(folder / "run.ckpt", content), resume=True,
        progress=False)


def read_record_file(folder: Path, data, content: bytes) -> None:
    read_record(_write(folder / "r-seed0-0123456789.json", content))


def load_run(folder: Path, data, content: bytes) -> None:
    variant = Variant("R", model_kwargs={"width_mult": 0.25})
    stem = record_stem(folder, variant, 0, run_key(variant, data, TINY_RECIPE, 0))
    _write(stem.with_suffix(".json"), content)
    run_one(variant, data, TINY_RECIPE, 0, profile="smoke", results_dir=folder, device=torch.device("cpu"),
            progress=False)


def load_model(folder: Path, data, content: bytes) -> None:
    _write(folder / "r-seed0-0123456789.pt", content)
    record = {"label": "R", "seed": 0, "weights": "r-seed0-0123456789.pt"}
    variant = Variant("R", model_kwargs={"width_mult": 0.25})
    Comparison([variant], [record], data, resolve_profile("smoke"), folder).model("R")


FILE_CASES = [
    # (reader, file content, exception, the message must match)
    (read_checkpoint, b"", CorruptFileError,
     r"checkpoint \S*run\.ckpt \(0 bytes\) cannot be read .*delete it to restart that run from scratch"),
    (read_checkpoint, _half(CHECKPOINT), CorruptFileError, r"checkpoint \S*run\.ckpt \(\d+ bytes\) cannot be read"),
    (read_checkpoint, b"\x00" * 64, CorruptFileError, r"run\.ckpt .* cannot be read .*delete it"),
    (read_checkpoint, _saved([1, 2]), CorruptFileError, r"run\.ckpt .*not a training checkpoint.*delete it"),
    (resume_from, b"", CorruptFileError, r"checkpoint \S*run\.ckpt \(0 bytes\) .*delete it to restart"),
    (resume_from, _half(CHECKPOINT), CorruptFileError, r"run\.ckpt .* cannot be read"),
    (read_record_file, _half(RECORD), CorruptFileError,
     r"record \S*r-seed0-0123456789\.json cannot be read \(JSONDecodeError.*delete it and run .* again"),
    (read_record_file, b"", CorruptFileError, r"r-seed0-0123456789\.json cannot be read"),
    (read_record_file, b"\xff\xfe\x00", CorruptFileError,
     r"r-seed0-0123456789\.json cannot be read \(UnicodeDecodeError"),
    (read_record_file, b"[1, 2]", CorruptFileError, r"cannot be read \(a JSON list, not an object\)"),
    (load_run, _half(RECORD), CorruptFileError, r"record \S*r-seed0-\w+\.json cannot be read .*delete it"),
    (load_model, _half(WEIGHTS), CorruptFileError,
     r"weights of 'R' seed 0 \(\S*r-seed0-0123456789\.pt\) cannot be read .*delete it and its record "
     r"r-seed0-0123456789\.json"),
    (load_model, b"", CorruptFileError, r"r-seed0-0123456789\.pt\) cannot be read"),
    (load_model, _saved([1, 2]), CorruptFileError, r"\.pt\) cannot be read \(it holds a list, not a state dict\)"),
]


@pytest.mark.parametrize("reader, content, error, pattern", FILE_CASES,
                         ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(FILE_CASES)])
def test_damaged_file_is_named_with_what_to_do(reader: Callable, content: bytes, error: type[Exception],
                                               pattern: str, tmp_path: Path, synthetic):
    with pytest.raises(error, match=pattern):
        reader(tmp_path, synthetic, content)


@pytest.mark.parametrize("content", [_half(RECORD), b"", b"\xff\xfe\x00", b"[1, 2]"],
                         ids=["truncated", "empty", "not-utf8", "not-an-object"])
def test_one_damaged_record_does_not_break_the_overview(content: bytes, tmp_path: Path):
    _write(tmp_path / "good-seed0-aaaaaaaaaa.json", RECORD)
    _write(tmp_path / "bad-seed0-bbbbbbbbbb.json", content)
    with pytest.warns(UserWarning, match=r"bad-seed0-bbbbbbbbbb\.json cannot be read .*delete it.*Left out"):
        records = load_records(tmp_path)
    assert [r["label"] for r in records] == ["R"]


# ----------------------------------------------------------------------------- command lines

A_FILE = Path(__file__)  # a folder below a file cannot be created, not even by root
CLI_CASES = [
    # (arguments of `python -m attnlib.run`, the one-line error must match)
    (["--chapter", "99_nothing"], r"unknown chapter '99_nothing'; choose one of 00_setup_and_baseline"),
    (["--chapter", "04", "--param", "strenght=1"], r"chapter 04_nam has no parameter \['strenght'\]; its parameters: penalty"),
    (["--chapter", "04", "--only", "Nope"], r"no variant labelled \['Nope'\]; the labels are"),
    (["--chapter", "04", "--experiment", "nope"], r"chapter 04 has no comparison \['nope'\]"),
    (["--chapter", "03", "--param", "mabn_batches=(3,)"],
     r"03_mabn: mabn_batches=\(3,\) is not allowed; mabn_batches must be a non-empty tuple of batch sizes from \(2, 4"),
    (["--chapter", "03", "--param", "mabn_batches=2"], r"mabn_batches=2 is not allowed; .* e\.g\. \(2, 4\)"),
    (["--chapter", "03", "--param", "bn_batches=()"], r"bn_batches=\(\) is not allowed; .*non-empty tuple"),
    (["--chapter", "04", "--param", "penalty=abc"], r"04_nam: penalty='abc' is not allowed; penalty must be a finite number >= 0 \(default 0\.0001\)"),
    (["--chapter", "04", "--param", "penalty=-1"], r"penalty=-1 is not allowed"),
    (["--chapter", "04", "--param", "strong_penalty=nan"], r"strong_penalty='nan' is not allowed"),
    (["--chapter", "05", "--param", "anneal_epochs=0"],
     r"05_dynamic_conv: anneal_epochs=0 is not allowed; anneal_epochs must be a whole number of epochs >= 1, or None"),
    (["--chapter", "05", "--param", "anneal_epochs=2.5"], r"anneal_epochs=2\.5 is not allowed"),
    (["--chapter", "01", "--param", "noise_strengths=(0.1, 0)"],
     r"01_iebn: noise_strengths=\(0\.1, 0\) is not allowed; noise_strengths must be a non-empty tuple of attack strengths > 0"),
    (["--chapter", "01", "--param", "norm_batch=0"], r"01_iebn: norm_batch=0 is not allowed; norm_batch must be a whole number"),
    (["--chapter", "01", "--param", "norm_batch=24"], r"01_iebn: norm_batch=24 does not divide the 'smoke' profile's batch of 64"),
    (["--chapter", "02", "--param", "small_subset=0"], r"small_subset=0 is not allowed; .*whole number of images >= 1"),
    (["--chapter", "04", "--param", "small_subset=10000000", "--profile", "quick"],
     r"04_nam: small_subset=10000000 is more than the 12000 training images of the quick profile's fashion_mnist; "
     r"give at most 12000, or None"),
    (["--chapter", "04", "--param", "small_test=20000", "--profile", "book"],
     r"small_test=20000 is more than the 10000 test images of the book profile's fashion_mnist"),
    (["--variant", "R:model=resnet20", "--epochs", "-1"], r"argument --epochs: -1 must be >= 1"),
    (["--variant", "R:model=resnet20", "--seeds", "0", "0"], r"seeds \(0, 0\) repeat a seed"),
    (["--variant", "R:model=resnet20", "--batch-size", "0"], r"argument --batch-size: 0 must be >= 1"),
    (["--variant", "R:attention=foo"], r"unknown attention 'foo'; registered attentions: ba"),
    (["--variant", "R:norm=mabn(b=4)"], r"norm 'mabn' has no option b; its options: eps, momentum, B, real_B"),
    (["--variant", "R:norm=mabn(4)"], r"'mabn\(4\)' is not a layer choice: write name or name\(option=value, \.\.\.\)"),
    (["--variant", "R:model=resnet21"], r"unknown model 'resnet21'; registered models"),
    (["--variant", "R:model=resnet20", "--results-dir", str(A_FILE / "results")],
     r"results folder \S+ cannot be written \(Not a directory\); choose another folder"),
    (["--plan", "04", "--status", "--results-dir", str(A_FILE / "results")], r"results folder \S+ cannot be written"),
    (["--variant", "R:model=resnet20", "--chapter", "04"], r"say what to train one way"),
    (["--plan", "04", "--only", "NAM"], r"--plan names the comparisons and variants itself"),
    (["--plan", "00:nothing", "--status"], r"chapter 00 has no comparison \['nothing'\]; it has \['main', 'convergence', 'precision'\]"),
    (["--plan", "00:main:Nope", "--status"], r"no variant labelled \['Nope'\]"),
    (["--plan", "00", "--chapter", "00", "--status"], r"say what to train one way"),
    (["--variant", "R:model=resnet20", "--epochs", "0"], r"argument --epochs: 0 must be >= 1"),
    (["--plan", "00", "--workers", "0", "--status"], r"argument --workers: 0 must be >= 1"),
    (["--plan", "00", "--threads", "x", "--status"], r"argument --threads: 'x' is not a whole number"),
    *([(["--variant", "R:model=resnet20", "--device", "cuda"], r"device='cuda' was asked for but no CUDA GPU")]
      if not torch.cuda.is_available() else []),
]


@pytest.mark.parametrize("argv, pattern", CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_command_line_error_is_one_line_before_training(argv: list[str], pattern: str, capsys, tmp_path: Path):
    from attnlib.run import main

    if "--results-dir" not in argv:
        argv = [*argv, "--results-dir", str(tmp_path)]
    if "--profile" not in argv:
        argv = [*argv, "--profile", "smoke"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    last = err.rstrip("\n").splitlines()[-1]  # argparse's own errors print the usage above it
    assert exit_info.value.code == 2, err
    assert last.startswith("python -m attnlib.run: error: ") and re.search(pattern, last), err
    assert "Traceback" not in err and not list(tmp_path.glob("*.json"))


BENCH_CASES = [
    (["--device", "xyz"], r"argument --device: .*device string: xyz"),
    (["--threads", "0"], r"argument --threads: 0 must be >= 1"),
    (["--batch-size", "-1"], r"argument --batch-size: -1 must be >= 1"),
    (["--repeats", "two"], r"argument --repeats: 'two' is not a whole number"),
    (["--image-shape", "3,x"], r"--image-shape must be C,H,W \(three whole numbers >= 1\), got '3,x'"),
    (["--image-shape", "3,32"], r"--image-shape must be C,H,W"),
    (["--methods", "Nope"], r"unknown methods \['Nope'\]"),
]


@pytest.mark.parametrize("argv, pattern", BENCH_CASES, ids=[" ".join(c[0]) for c in BENCH_CASES])
def test_bench_command_line_error_is_one_line(argv: list[str], pattern: str, capsys):
    from attnlib.bench import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and err.startswith("python -m attnlib.bench: error: ")
    assert re.search(pattern, err), err


@pytest.mark.parametrize("argv, built, pattern", [
    (["grade", "--lab", "99", str(A_FILE)], True, r"no lab '99'; the labs are 00_setup_and_baseline, 01_iebn"),
    (["grade", "--lab", "01", "no-such.ipynb"], True, r"no such notebook: no-such\.ipynb"),
    (["grade", "--lab", "01", str(A_FILE)], False, r"the autograder of lab 01_iebn is not built .*run `make labs`"),
], ids=["unknown lab", "missing notebook", "autograder not built"])
def test_labs_grade_says_what_is_missing(argv: list[str], built: bool, pattern: str, capsys, monkeypatch,
                                         tmp_path: Path):
    from booktools.labs import build, cli

    monkeypatch.setattr(build, "BUILD_DIR", tmp_path)
    if built:
        _write(tmp_path / "01_iebn" / "autograder.zip", b"")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    message = str(exit_info.value.code) if isinstance(exit_info.value.code, str) else capsys.readouterr().err
    assert re.search(pattern, message), message


# ----------------------------------------------------------------------------- notebook parameters

PROFILE_CASES = [
    # (resolve_profile keywords, the message must match): the setup cell right after `parameters`
    ({"epochs": -1}, r"epochs=-1: epochs must be a whole number >= 1, or None for the profile's 3"),
    ({"epochs": 2.5}, r"epochs=2\.5: epochs must be a whole number"),
    ({"epochs": "10"}, r"epochs='10': epochs must be a whole number"),
    ({"batch_size": 0}, r"batch_size=0: batch_size must be a whole number >= 1"),
    ({"seeds": 3}, r"seeds=3: give distinct whole numbers >= 0, e\.g\. \(0, 1, 2\)"),
    ({"seeds": "012"}, r"seeds='012': give distinct whole numbers"),
    ({"seeds": [0, -1]}, r"seeds=\[0, -1\]: give distinct whole numbers >= 0"),
    ({"seeds": []}, r"seeds must name at least one seed"),
    ({"seeds": [1, 1]}, r"seeds \(1, 1\) repeat a seed"),
    ({"dataset": "mnist"}, r"unknown dataset 'mnist'; choose one of fashion_mnist, cifar10"),
]


@pytest.mark.parametrize("changes, pattern", PROFILE_CASES, ids=[repr(c[0]) for c in PROFILE_CASES])
def test_bad_profile_override_is_refused(changes: dict, pattern: str):
    with pytest.raises(ValueError, match=pattern):
        resolve_profile("smoke", **changes)


def test_every_chapter_parameter_has_a_rule_and_its_default_passes():
    from attnlib.chapters import CHAPTERS, chapter_parameters, check_parameters

    for stem in CHAPTERS:
        for setup in (resolve_profile("smoke"), resolve_profile("quick"), resolve_profile("book")):
            check_parameters(stem, setup, **chapter_parameters(stem))


@pytest.mark.parametrize("stem", ["01_iebn", "02_ba_net", "03_mabn", "04_nam", "05_dynamic_conv"])
def test_notebook_checks_its_parameters_in_the_setup_cell(stem: str):
    """The cell after `parameters` resolves the profile and gets the chapter's comparisons, which
    checks every chapter parameter, so a wrong papermill `-p` stops there, before the data loads."""
    import nbformat

    from attnlib.chapters import chapter_parameters

    cells = [c for c in nbformat.read(REPO / "notebooks" / f"{stem}.ipynb", as_version=4).cells if c.cell_type == "code"]
    after = cells[[i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])][0] + 1].source
    assert "resolve_profile(profile" in after and f'comparisons = experiments("{stem}", setup' in after
    for name in chapter_parameters(stem):
        assert f"{name}={name}" in after, name
    assert after.index("experiments(") < after.index("setup.load()")


def test_anneal_epochs_none_means_a_tenth_of_the_run_and_a_number_is_kept():
    from attnlib.chapters import experiments

    def annealing(epochs: int, **params) -> int:
        chapter = experiments("05", resolve_profile("smoke", epochs=epochs), **params)
        return chapter["main"].variants[1].callbacks[0].epochs

    assert annealing(30) == 3 and annealing(30, anneal_epochs=None) == 3 and annealing(30, anneal_epochs=1) == 1
    assert annealing(6) == 1 and annealing(3) == 1  # at least one epoch


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_nam_pixel_module_trains_in_half_and_double_precision(dtype: torch.dtype):
    nam = NAMES["NAMAttention"](8, spatial=True).to(dtype)
    x = torch.randn(2, 8, 5, 5, dtype=dtype)
    nam(x)  # materialises the lazy parameters
    optimizer = torch.optim.SGD(nam.parameters(), lr=0.1)
    before = [p.detach().clone() for p in nam.parameters()]
    (nam(x) * torch.randn_like(x)).sum().backward()
    optimizer.step()
    assert all(p.dtype == dtype and p.grad is not None and torch.isfinite(p.grad).all() for p in nam.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, nam.parameters()))
