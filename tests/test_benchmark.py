"""attnlib.benchmark: throughput and activation-memory measurements behave as documented."""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

from attnlib.benchmark import saved_activation_bytes, throughput
from attnlib.models import build_model

SHAPE = (1, 16, 16)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet20", in_channels=1, num_classes=10, width_mult=0.5)


def test_throughput_is_positive_and_training_changes_the_weights():
    net = small_net()
    before = copy.deepcopy(net.state_dict())
    rate = throughput(net, 8, SHAPE, steps=2, warmup=1, repeats=1, device="cpu")
    assert rate > 0
    assert not torch.equal(before["fc.weight"], net.state_dict()["fc.weight"])


def test_inference_throughput_leaves_the_weights_and_is_faster_than_training():
    net = small_net()
    before = copy.deepcopy(net.state_dict())
    infer = throughput(net, 16, SHAPE, train=False, steps=3, warmup=1, repeats=2, device="cpu")
    for key, value in net.state_dict().items():
        assert torch.equal(before[key], value), key  # no step, no BN statistics update
    train = throughput(small_net(), 16, SHAPE, steps=3, warmup=1, repeats=2, device="cpu")
    assert infer > train


def test_throughput_rejects_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        throughput(small_net(), 0, SHAPE)


def test_saved_activation_bytes_of_a_known_network():
    # conv (saves its input) -> ReLU (saves its output) -> flatten -> linear (saves its input)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    got = saved_activation_bytes(net, 2, (1, 8, 8), channels_last=False)
    image, relu_out = 2 * 1 * 8 * 8 * 4, 2 * 4 * 8 * 8 * 4
    assert got >= image + relu_out  # at least the input and the ReLU output (the linear's input is a view of it)
    assert got < 2 * (image + relu_out) + 1024


def test_saved_activation_bytes_grow_with_the_batch():
    small = saved_activation_bytes(small_net(), 4, SHAPE)
    large = saved_activation_bytes(small_net(), 16, SHAPE)
    assert 3.5 * small < large < 4.5 * small


def test_measure_rows_and_ratios():
    from attnlib import plots
    from attnlib.benchmark import measure

    # (not narrower than half: see tests/test_compile.py on torch's 1x1 stride-2 convolution bug)
    rows = measure({"half": small_net, "full": lambda: build_model("resnet20", in_channels=1, num_classes=10)},
                   8, SHAPE, steps=2, warmup=1, repeats=1, device="cpu")
    assert [r["label"] for r in rows] == ["half", "full"]
    assert rows[0]["train_images_per_s_vs_first"] == 1.0
    assert rows[1]["params"] > rows[0]["params"] and rows[1]["activation_mb"] > rows[0]["activation_mb"]
    assert rows[1]["activation_mb_vs_first"] == rows[1]["activation_mb"] / rows[0]["activation_mb"]
    table = plots.benchmark_table(rows).splitlines()
    assert len(table) == 6 and table[2].startswith("| half | 8 |") and table[2].endswith("| 1.00x | 1.00x | 1.00x |")
    assert rows[0]["machine_load"]["quiet"] in (True, False) and table[-1].startswith("*Measured ")


def test_a_timing_says_how_busy_the_machine_was():
    from attnlib.plots import load_note

    assert load_note({"quiet": True, "other_processes_cpu_share": 0.02}) == \
        "*Measured on a quiet machine (other processes took 2 % of the CPU time).*"
    assert load_note({"quiet": False, "other_processes_cpu_share": 0.47}).startswith(
        "*Measured while other processes took 47 % of the CPU time: slowed convolutions dilute")
    for unknown in (None, {"quiet": None, "other_processes_cpu_share": None}):  # records older than the check
        assert "not recorded" in load_note(unknown)


def test_measure_reports_step_time_ratio_flops_and_no_peak_on_cpu():
    from attnlib.benchmark import count_flops, measure

    rows = measure({"a": small_net, "b": small_net}, 4, SHAPE, steps=1, warmup=0, repeats=1, device="cpu")
    a, b = rows
    assert a["train_step_ms_vs_first"] == 1.0 and b["train_step_ms_vs_first"] > 0
    assert abs(a["train_step_ms"] * a["train_images_per_s"] - 4e3) < 1e-6 * a["train_step_ms"] * a["train_images_per_s"]
    assert a["flops_per_image"] == b["flops_per_image"] == count_flops(small_net(), SHAPE)
    assert a["peak_mb"] is None  # peak allocator memory is measured on CUDA only


def test_count_flops_of_a_single_convolution():
    from attnlib.benchmark import count_flops

    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    assert count_flops(conv, (2, 5, 5)) == 2 * 3 * 2 * 9 * 5 * 5


def _machine_was(quiet: bool):
    @contextlib.contextmanager
    def load():
        yield {"quiet": quiet, "other_processes_cpu_share": 0.0 if quiet else 0.5}
    return load


def test_measure_with_results_dir_is_a_record_loaded_the_second_time(tmp_path, monkeypatch):
    import attnlib.benchmark as benchmark

    monkeypatch.setattr(benchmark, "machine_load", _machine_was(quiet=True))
    first = benchmark.measure({"a": small_net}, 4, SHAPE, steps=1, warmup=0, repeats=1, device="cpu",
                              results_dir=tmp_path)
    assert len(list(tmp_path.glob("bench-*.json"))) == 1

    def no_timing(*args, **kwargs):
        raise AssertionError("a recorded measurement must be loaded, not timed again")

    monkeypatch.setattr(benchmark, "_measure_rows", no_timing)
    assert benchmark.measure({"a": small_net}, 4, SHAPE, steps=1, warmup=0, repeats=1, device="cpu",
                             results_dir=tmp_path) == first
    with pytest.raises(AssertionError, match="loaded, not timed"):  # other settings: a new measurement
        benchmark.measure({"a": small_net}, 8, SHAPE, steps=1, warmup=0, repeats=1, device="cpu",
                          results_dir=tmp_path)


def test_a_record_taken_under_load_is_measured_again(tmp_path, monkeypatch):
    import attnlib.benchmark as benchmark

    def measure():
        return benchmark.measure({"a": small_net}, 4, SHAPE, steps=1, warmup=0, repeats=1, device="cpu",
                                 results_dir=tmp_path)

    monkeypatch.setattr(benchmark, "machine_load", _machine_was(quiet=False))
    assert measure()[0]["machine_load"]["quiet"] is False
    monkeypatch.setattr(benchmark, "machine_load", _machine_was(quiet=True))
    assert measure()[0]["machine_load"]["quiet"] is True  # timed again, and the quiet timing replaces it
    assert len(list(tmp_path.glob("bench-*.json"))) == 1
    monkeypatch.setattr(benchmark, "_measure_rows", lambda *a, **k: pytest.fail("a quiet record is loaded"))
    assert measure()[0]["machine_load"]["quiet"] is True


def test_fit_overhead_compares_the_loop_with_the_bare_step():
    from attnlib.benchmark import fit_overhead

    loop = fit_overhead(small_net, 8, SHAPE, steps=3, epochs=2, device="cpu")
    assert loop["fit_images_per_s"] > 0 and loop["bare_images_per_s"] > 0
    # one pair after the warm-up: the overhead is that pair's ratio
    assert loop["overhead"] == pytest.approx(loop["bare_images_per_s"] / loop["fit_images_per_s"] - 1)
    with pytest.raises(ValueError, match="at least 2"):
        fit_overhead(small_net, 8, SHAPE, epochs=1, device="cpu")


def test_fit_overhead_times_the_bare_step_after_every_epoch(monkeypatch):
    from attnlib import benchmark

    rounds = []
    timed = benchmark._interleaved_seconds
    monkeypatch.setattr(benchmark, "_interleaved_seconds",
                        lambda *args, **kwargs: rounds.append(kwargs["steps"]) or timed(*args, **kwargs))
    loop = benchmark.fit_overhead(small_net, 8, SHAPE, steps=3, epochs=4, device="cpu")
    assert rounds == [3, 3, 3, 3]   # one round of the bare step after each of the 4 epochs
    assert loop["overhead"] > -1
