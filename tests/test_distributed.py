"""Data-parallel training: 2 processes with Gloo on the CPU, as torchrun would start them.

One spawn of 2 worker processes runs every distributed scenario (a process start costs
seconds on a 2-core machine); the tests then compare what each rank returned with a
single-process run in this process.
"""
from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from attnlib import distributed
from attnlib.callbacks import NAMSparsityPenalty, TemperatureAnnealing
from attnlib.chapters import CHAPTERS, experiments
from attnlib.config import TrainConfig
from attnlib.data import load_dataset
from attnlib.experiment import BOOK_RECIPE, compare
from attnlib.history import Callback
from attnlib.layers.dynamic_conv import DynamicConv2d, dynamic_layers
from attnlib.layers.mabn import CenConv2d, MABN2d
from attnlib.layers.nam import nam_scale_factors
from attnlib.profiles import resolve_profile
from attnlib.train import NonFiniteLossError, fit
from attnlib.variants import Variant, flops_per_image
from conftest import StopAt

WORLD = 2
PER_RANK_BATCH = 8
# 2 processes x batch b against 1 process x batch 2b: the same samples and the same mean
# gradient, summed in another order. The float32 rounding differences this leaves after
# 8 SGD steps measured 1.5e-8 here (2-core Xeon, torch 2.14.1); the tolerance leaves room
# for other CPUs' kernels. In fp32 on every CPU: under bf16 autocast (``amp="auto"`` on a CPU
# with native bf16) the two summation orders round apart by 2e-4 after those 8 steps.
TOLERANCE = 1e-5
RECIPE = TrainConfig(epochs=2, batch_size=WORLD * PER_RANK_BATCH, lr=0.05, warmup_epochs=0.5,
                     eval_batch_size=16, check_every=1, amp="off")


def _data():
    return load_dataset("synthetic", channels=1, image_size=16, train=64, test=40)


def _batch_free_model() -> nn.Module:
    """No layer depends on the other samples of the batch (DynamicConv's attention is per sample)."""
    torch.manual_seed(0)
    return nn.Sequential(DynamicConv2d(1, 8, 3, padding=1, num_experts=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))


def _mabn_model(seed: int = 0) -> nn.Module:
    """MABN whose moving averages take over after 3 steps, so per-rank buffers matter."""
    torch.manual_seed(seed)
    return nn.Sequential(CenConv2d(1, 8, 3, padding=1), MABN2d(8, B=PER_RANK_BATCH, real_B=2 * PER_RANK_BATCH,
                                                                warmup_iters=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))


def _anneal() -> TemperatureAnnealing:
    return TemperatureAnnealing(start=30.0, end=1.0, epochs=1)


def _train(model: nn.Module, config: TrainConfig = RECIPE, **kw) -> dict:
    history = fit(model, _data(), config, seed=1, device="cpu", progress=False, **kw)
    return {"history": history.to_dict(), "state": copy.deepcopy(model.state_dict())}


def _chapter_choices() -> list[Variant]:
    """One variant per distinct network of every chapter (labels and recipes aside)."""
    setup = resolve_profile("smoke")
    seen, choices = set(), []
    for stem in CHAPTERS:
        for exp in experiments(stem, setup).values():
            for v in exp.variants:
                key = json.dumps({k: x for k, x in v.spec().items() if k not in ("label", "train")}, sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    choices.append(v)
    return choices


class NanOnRank(Callback):
    """A NaN loss term on one rank only, at its second step."""

    def __init__(self, rank: int) -> None:
        self.rank, self.steps = rank, 0

    def on_step_end(self, state):
        self.steps += 1

    def loss_term(self, model):
        bad = self.steps == 1 and distributed.rank() == self.rank
        return torch.tensor(float("nan") if bad else 0.0)


# ----------------------------------------------------------------------------- the workers

def _scenarios(out: Path) -> dict:
    """Everything the tests check, run on every rank of the group."""
    data = _data()
    results = {"rank": distributed.rank(), "world": distributed.world_size()}
    results["batch_free"] = _train(_batch_free_model(), callbacks=[_anneal()])
    results["bn"] = _train(_bn_model())

    penalty_config = TrainConfig(epochs=1, batch_size=64, lr=0.1, momentum=0.0, weight_decay=0.0,
                                 schedule="constant", augment=False, eval_batch_size=40)
    gammas = []
    for callbacks in ([], [NAMSparsityPenalty(0.01)]):
        model = Variant("NAM", attention="nam").build(data, seed=0)
        fit(model, data, penalty_config, device="cpu", progress=False, callbacks=callbacks)
        gammas.append(torch.cat(list(nam_scale_factors(model).values())))
    results["penalty_step"] = gammas[1] - gammas[0]

    choices = {}
    for variant in _chapter_choices():
        # a ghost norm needs whole groups of norm_batch images on each rank
        norm_batch = variant.parts().options("norm").get("norm_batch")
        per_rank = max(4, norm_batch or 1)
        two_steps = TrainConfig(epochs=1, batch_size=WORLD * per_rank, lr=0.01, eval_batch_size=40)
        small = data.subset(train=2 * WORLD * per_rank)  # 2 steps
        model = variant.build(small, seed=0)
        flops_per_image(model, small)
        callbacks = [copy.deepcopy(cb) for cb in variant.callbacks]
        history = fit(model, small, two_steps, device="cpu", progress=False, callbacks=callbacks)
        mabn = [m for m in model.modules() if isinstance(m, MABN2d)]
        choices[json.dumps(variant.spec(), default=str)] = {
            "test_acc": history.test_acc,
            "mabn_iters": [int(m.iters) for m in mabn],
            # two steps; a ghost MABN counts every group of norm_batch images as one of its steps
            "expected_mabn_iters": 2 * (per_rank // norm_batch if norm_batch else 1),
            "mabn_buffer_x2": mabn[0].buffer_x2.clone() if mabn else None,
            "mabn_running_var": mabn[0].running_var.clone() if mabn else None,
            "temperatures": [layer.temperature for layer in dynamic_layers(model).values()],
            "expected_temperature": (callbacks[0].temperature_at(2, 2) if dynamic_layers(model) else None),
        }
    results["choices"] = choices

    mabn_config = RECIPE.replace(epochs=3)
    results["resume_full"] = _train(_mabn_model(), mabn_config, checkpoint=out / "full.ckpt")
    try:
        _train(_mabn_model(), mabn_config, checkpoint=out / "cut.ckpt", callbacks=[StopAt(2)])
    except KeyboardInterrupt:
        pass
    results["resume_cut"] = _train(_mabn_model(seed=99), mabn_config, checkpoint=out / "cut.ckpt", resume=True)

    try:
        _train(_bn_model(), callbacks=[NanOnRank(rank=1)])
        results["nan_error"] = None
    except NonFiniteLossError as err:
        results["nan_error"] = str(err)
    return results


def _worker(rank: int, port: int, out: Path) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    device = distributed.init_from_env("cpu")
    assert device == torch.device("cpu")
    try:
        torch.save(_scenarios(out), out / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What each of the 2 ranks returned from :func:`_scenarios`."""
    out = tmp_path_factory.mktemp("ddp")
    torch.multiprocessing.spawn(_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _max_difference(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


# ----------------------------------------------------------------------------- the tests

def test_helpers_are_no_ops_without_a_process_group():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    t = torch.arange(5)
    assert distributed.shard(t) is t
    assert distributed.sum_over_ranks([torch.tensor(1.5), torch.tensor(2)]) == [1.5, 2]
    assert distributed.from_main({"a": 1}) == {"a": 1}
    assert distributed.init_from_env("cpu") == "cpu"  # not started by torchrun


def test_two_processes_of_b_equal_one_process_of_2b(ranks):
    """Same samples, same mean gradient: equal up to summation order, DynamicConv annealing included."""
    single = _train(_batch_free_model(), callbacks=[_anneal()])
    for r in ranks:
        assert r["world"] == WORLD
        difference = _max_difference(r["batch_free"]["state"], single["state"])
        print(f"rank {r['rank']}: max |parameter difference| 2 x b vs 1 x 2b = {difference:.3g}")
        assert difference < TOLERANCE
        assert r["batch_free"]["history"]["train_loss"] == pytest.approx(single["history"]["train_loss"], abs=1e-5)
    # evaluation is sharded and summed: every rank reports the same accuracy
    assert ranks[0]["batch_free"]["history"]["test_acc"] == ranks[1]["batch_free"]["history"]["test_acc"]


def test_plain_bn_differs_from_one_process_as_expected(ranks):
    """Plain BN normalises each rank's b samples with their own statistics, not the 2b of one
    process: the runs differ by much more than the tolerance. This is expected (SyncBN on GPUs
    would share the statistics; it cannot run on the CPU)."""
    single = _train(_bn_model())
    for r in ranks:
        assert _max_difference(r["bn"]["state"], single["state"]) > 100 * TOLERANCE
    assert ranks[0]["bn"]["history"]["test_acc"] == ranks[1]["bn"]["history"]["test_acc"]


def test_nam_penalty_moves_gamma_as_in_one_process(ranks):
    """One plain SGD step: the penalty adds lr * strength * sign(gamma) = 0.1 * 0.01 * 1, not
    that times the number of processes."""
    for r in ranks:
        torch.testing.assert_close(r["penalty_step"], torch.full_like(r["penalty_step"], -1e-3),
                                   atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", _chapter_choices(), ids=lambda v: v.label)
def test_every_chapter_network_trains_two_steps(ranks, variant):
    key = json.dumps(variant.spec(), default=str)
    r0, r1 = (r["choices"][key] for r in ranks)
    assert r0["test_acc"] == r1["test_acc"]
    if r0["mabn_iters"]:  # each rank's own moving averages (MABN docstring)
        assert set(r0["mabn_iters"]) == set(r1["mabn_iters"]) == {r0["expected_mabn_iters"]}
        assert not torch.equal(r0["mabn_buffer_x2"], r1["mabn_buffer_x2"])
        assert not torch.equal(r0["mabn_running_var"], r1["mabn_running_var"])
    if r0["temperatures"]:  # the annealed temperature, the same on both ranks
        assert r0["temperatures"] == r1["temperatures"]
        assert r0["temperatures"] == pytest.approx([r0["expected_temperature"]] * len(r0["temperatures"]))


def test_resume_under_two_processes_equals_the_uninterrupted_run(ranks):
    timing = ("epoch_time", "train_images_per_s", "eval_images_per_s")
    for r in ranks:
        full, resumed = r["resume_full"], r["resume_cut"]
        assert {k: v for k, v in resumed["history"].items() if k not in timing} == \
               {k: v for k, v in full["history"].items() if k not in timing}
        for name, value in full["state"].items():
            assert torch.equal(resumed["state"][name], value), name
    # MABN's buffers are per rank, and each rank got its own back
    assert not torch.equal(ranks[0]["resume_cut"]["state"]["1.buffer_x2"], ranks[1]["resume_cut"]["state"]["1.buffer_x2"])


def test_nan_on_one_rank_stops_every_rank(ranks):
    for r in ranks:
        assert r["nan_error"] is not None and "diverged in epoch 1 (by step 2)" in r["nan_error"]


def test_uneven_global_batch_is_refused_with_advice():
    from attnlib.train import per_rank_batch_size

    assert per_rank_batch_size(128, 2) == 64
    with pytest.raises(ValueError, match="multiple of 3"):
        per_rank_batch_size(128, 3)


# ----------------------------------------------------------------------------- the command line

def test_torchrun_writes_the_records_compare_loads(tmp_path):
    args = ["--chapter", "00", "--only", "ResNet-20", "--profile", "smoke", "--epochs", "1", "--seeds", "0",
            "--results-dir", str(tmp_path), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "attnlib.run", *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stdout and "1 runs trained now" in done.stdout
    records = list(tmp_path.glob("*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["run_card"]["processes"] == 2

    setup = resolve_profile("smoke", epochs=1, seeds=[0])
    main = experiments("00", setup)["main"]
    loaded = compare([v for v in main.variants if v.label == "ResNet-20"], setup, recipe=BOOK_RECIPE,
                     results_dir=tmp_path, device="cpu", progress=False)
    assert loaded.trained_now == 0 and len(loaded.records) == 1
