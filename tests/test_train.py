"""attnlib.train: the training loop learns, is deterministic, resumes exactly and fails loudly."""
from __future__ import annotations

import copy
import math
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from conftest import StopAt, history_values

from attnlib import NonFiniteLossError, TrainConfig, build_model, fit, load_dataset
from attnlib.data import DeviceLoader
from attnlib.devices import autocast_dtype, precision_name
from attnlib.history import NOT_RECORDED, Callback, History
from attnlib.runinfo import describe_footing, device_name, footing_parts
from attnlib.train import decay_only_value, lr_factor, make_optimizer, recompute_bn_statistics, steps_per_epoch

# A short recipe for 256 16x16 training images: 8 steps of 32 per epoch.
TINY = TrainConfig(epochs=3, batch_size=32, lr=0.05, eval_batch_size=128)


def _model(name="resnet20", seed=0, data=None, **kw):
    torch.manual_seed(seed)
    in_channels = data.in_channels if data is not None else 1
    return build_model(name, in_channels=in_channels, **kw)


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- it learns

@pytest.fixture(scope="module")
def learnable():
    return load_dataset("synthetic", channels=1, image_size=16, train=1024, test=256)


ACC_THRESHOLD = 0.6  # chance is 0.1; 5 epochs reach ~0.98; a model that does not learn stays at ~0.1


def test_fit_beats_chance_clearly(learnable):
    config = TrainConfig(epochs=5, batch_size=64, lr=0.1)
    history = fit(_model(data=learnable), learnable, config, seed=0, device="cpu", progress=False)
    assert history.epoch == [1, 2, 3, 4, 5]
    assert history.test_acc[-1] > ACC_THRESHOLD
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]
    assert all(0 <= a <= 1 for a in history.train_acc + history.test_acc)
    # the recorded lr is config.lr times the schedule at the first step of each epoch
    steps = 1024 // 64
    for epoch, lr in enumerate(history.lr):
        assert lr == pytest.approx(0.1 * lr_factor(epoch * steps, 5 * steps, config, steps))
    assert all(t > 0 for t in history.epoch_time + history.train_images_per_s + history.eval_images_per_s)


def test_fit_that_cannot_learn_fails_the_threshold(learnable):
    """Negative control for the threshold above: lr so small that nothing is learnt."""
    config = TrainConfig(epochs=5, batch_size=64, lr=1e-6)
    history = fit(_model(data=learnable), learnable, config, seed=0, device="cpu", progress=False)
    assert history.test_acc[-1] < ACC_THRESHOLD


def test_loss_goes_down_on_a_fixed_batch(synthetic):
    model = _model(data=synthetic).train()
    loader = DeviceLoader(synthetic.train_images, synthetic.train_labels, batch_size=32,
                          mean=synthetic.mean, std=synthetic.std)
    x, y = next(iter(loader))
    optimizer = make_optimizer(model, TrainConfig(lr=0.05, weight_decay=0.0))
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_batch_larger_than_training_set_is_rejected(synthetic):
    with pytest.raises(ValueError, match="batch_size"):
        fit(_model(), synthetic, TINY.replace(batch_size=512), device="cpu", progress=False)


# ----------------------------------------------------------------------------- determinism

def test_same_seed_same_history_and_weights(synthetic):
    config = TINY.replace(epochs=2)
    runs = []
    for _ in range(2):
        model = _model(data=synthetic)
        history = fit(model, synthetic, config, seed=1, device="cpu", progress=False)
        runs.append((history_values(history), _params(model)))
    assert runs[0][0] == runs[1][0]
    _assert_same_params(runs[0][1], runs[1][1])
    # another seed (same initialisation): another batch order and augmentation
    other = fit(_model(data=synthetic), synthetic, config, seed=2, device="cpu", progress=False)
    assert history_values(other) != runs[0][0]
    assert history_values(other)["train_loss"] != runs[0][0]["train_loss"]


def test_fit_seeds_dropout_itself(synthetic):
    """The global RNG state left by the caller must not matter: fit seeds dropout from ``seed``."""
    config = TINY.replace(epochs=1, lr=0.02)
    runs = []
    for noise in (0, 1):
        model = _model("alexnet", data=synthetic, width_mult=0.5)
        torch.manual_seed(1000 + noise)  # the caller's RNG, different each time
        history = fit(model, synthetic, config, seed=1, device="cpu", progress=False)
        runs.append((history_values(history), _params(model)))
    assert runs[0][0] == runs[1][0]
    _assert_same_params(runs[0][1], runs[1][1])


# ----------------------------------------------------------------------------- checkpoints and resume

class StepCounter(Callback):
    """A callback with state, which a resumed run must get back from the checkpoint."""

    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, state):
        self.steps += 1

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


@pytest.mark.parametrize("name", ["resnet20", "alexnet"])  # alexnet: dropout needs the RNG state back
def test_resume_gives_the_uninterrupted_run(synthetic, tmp_path, name):
    config = TINY.replace(lr=0.02) if name == "alexnet" else TINY
    kw = {"width_mult": 0.5} if name == "alexnet" else {}
    counter = StepCounter()
    full_model = _model(name, data=synthetic, **kw)
    full = fit(full_model, synthetic, config, seed=3, device="cpu", progress=False,
               checkpoint=tmp_path / "full.ckpt", callbacks=[counter])
    assert counter.steps == 3 * 8

    ckpt = tmp_path / "interrupted.ckpt"
    with pytest.raises(KeyboardInterrupt):
        fit(_model(name, data=synthetic, **kw), synthetic, config, seed=3, device="cpu", progress=False,
            checkpoint=ckpt, callbacks=[StepCounter(), StopAt(2)])
    interrupted = torch.load(ckpt, weights_only=False)
    assert interrupted["epoch"] == 2 and interrupted["callbacks"] == [{"steps": 16}, {}]

    # a differently initialised model: everything must come from the checkpoint
    resumed_model = _model(name, seed=99, data=synthetic, **kw)
    resumed_counter = StepCounter()
    resumed = fit(resumed_model, synthetic, config, seed=3, device="cpu", progress=False,
                  checkpoint=ckpt, resume=True, callbacks=[resumed_counter])
    assert history_values(resumed) == history_values(full)
    assert resumed.epoch_time[:2] == interrupted["history"]["epoch_time"]  # epochs 1-2 were not re-run
    assert resumed_counter.steps == counter.steps
    _assert_same_params(_params(resumed_model), _params(full_model))


def test_stop_after_trains_the_first_epochs_of_the_longer_run(synthetic):
    full_model, first_model = _model(data=synthetic), _model(data=synthetic)
    full = fit(full_model, synthetic, TINY, seed=3, device="cpu", progress=False)
    counter = StepCounter()
    first = fit(first_model, synthetic, TINY, seed=3, device="cpu", progress=False, stop_after=2,
                callbacks=[counter])
    # the same learning rates as the 3-epoch run's first two epochs, not a 2-epoch schedule's
    assert history_values(first) == {k: v[:2] for k, v in history_values(full).items()}
    assert counter.steps == 2 * 8
    with pytest.raises(ValueError, match="stop_after=4: it must be an epoch of the run, 1 to 3"):
        fit(_model(data=synthetic), synthetic, TINY, device="cpu", progress=False, stop_after=4)


def test_resume_of_a_finished_run_trains_nothing(synthetic, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    config = TINY.replace(epochs=1)
    first = fit(_model(data=synthetic), synthetic, config, device="cpu", progress=False, checkpoint=ckpt)
    counter = StepCounter()
    again = fit(_model(seed=5, data=synthetic), synthetic, config, device="cpu", progress=False,
                checkpoint=ckpt, resume=True, callbacks=[counter])
    assert again.to_dict() == first.to_dict() and counter.steps == 0
    # resume=False ignores (and overwrites) the checkpoint
    fresh = fit(_model(seed=5, data=synthetic), synthetic, config, device="cpu", progress=False,
                checkpoint=ckpt, resume=False)
    assert history_values(fresh) != history_values(first)
    assert torch.load(ckpt, weights_only=False)["history"] == fresh.to_dict()


def test_checkpoint_is_complete_and_written_atomically(synthetic, tmp_path):
    folder = tmp_path / "not" / "yet" / "there"
    ckpt = folder / "run.ckpt"
    model = _model(data=synthetic)
    config = TINY.replace(epochs=2)
    history = fit(model, synthetic, config, device="cpu", progress=False, checkpoint=ckpt)
    assert [p.name for p in folder.iterdir()] == ["run.ckpt"]  # no temporary file left behind
    assert not list(tmp_path.rglob("*.tmp"))
    state = torch.load(ckpt, weights_only=False)
    assert state["epoch"] == 2 and state["step"] == 2 * 8
    assert state["config"] == asdict(config)
    _assert_same_params(state["model"], _params(model))
    assert {"state", "param_groups"} <= state["optimizer"].keys() and state["optimizer"]["state"]
    assert state["history"] == history.to_dict()
    assert isinstance(state["rng"], torch.Tensor)


def test_resume_with_another_config_is_refused(synthetic, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    fit(_model(data=synthetic), synthetic, TINY.replace(epochs=1), device="cpu", progress=False,
        checkpoint=ckpt)
    with pytest.raises(ValueError, match="different TrainConfig"):
        fit(_model(data=synthetic), synthetic, TINY.replace(epochs=1, lr=0.1), device="cpu",
            progress=False, checkpoint=ckpt, resume=True)


def test_a_run_resumed_under_another_thread_count_says_so(synthetic, tmp_path, capsys, monkeypatch):
    """Same seed, same history needs the same threads: a resume elsewhere is not refused (the
    CPU and GPU queues hand runs over), but it is said, and the history names where each epoch
    ran and under which code."""
    ckpt, threads = tmp_path / "run.ckpt", torch.get_num_threads()
    other = 2 if threads == 1 else 1
    config = TINY.replace(epochs=2)
    try:
        monkeypatch.setenv("ATTNLIB_GIT_COMMIT", "elsewhere")
        with pytest.raises(KeyboardInterrupt):
            fit(_model(data=synthetic), synthetic, config, device="cpu", progress=False, checkpoint=ckpt,
                callbacks=[StopAt(1)])
        monkeypatch.setenv("ATTNLIB_GIT_COMMIT", "here")
        torch.set_num_threads(other)
        history = fit(_model(data=synthetic), synthetic, config, device="cpu", progress=False, checkpoint=ckpt,
                      resume=True)
    finally:
        torch.set_num_threads(threads)
    precision = precision_name(autocast_dtype("auto", torch.device("cpu")))  # bf16 on a CPU that has it
    assert history.footing[0].endswith(f", {threads} threads, {precision}") and history.footing[0].startswith("CPU: ")
    assert history.footing[1].endswith(f", {other} threads, {precision}")
    assert [versions["git_commit"] for versions in history.software] == ["elsewhere", "here"]
    assert "on another footing" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("processes", [1, 8])
def test_a_footing_reads_back_as_its_device_and_precision(dtype, processes):
    cpu = torch.device("cpu")
    assert footing_parts(describe_footing(cpu, dtype, processes)) == {"device": device_name(cpu),
                                                                      "precision": precision_name(dtype)}
    assert footing_parts(NOT_RECORDED) == {}


def test_histories_written_before_the_footing_was_kept_say_not_recorded():
    old = History.from_dict({"epoch": [1, 2], "test_acc": [0.5, 0.6]})
    assert old.footing == ["not recorded", "not recorded"] and old.software == [{}, {}]


# ----------------------------------------------------------------------------- non-finite loss

class NanFrom(Callback):
    """Adds a NaN term (that also poisons every gradient) from epoch index ``epoch`` on."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.current = epoch, 0

    def on_epoch_start(self, state):
        self.current = state.epoch

    def loss_term(self, model):
        if self.current < self.epoch:
            return None
        return float("nan") * sum(p.sum() for p in model.parameters())


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(synthetic, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    model = _model(data=synthetic)
    with pytest.raises(NonFiniteLossError) as err:
        fit(model, synthetic, TINY, device="cpu", progress=False, checkpoint=ckpt, callbacks=[NanFrom(1)])
    message = str(err.value)
    assert "epoch 2" in message and str(ckpt) in message and "after epoch 1" in message
    assert not all(torch.isfinite(p).all() for p in model.parameters())  # the premise: weights went NaN
    state = torch.load(ckpt, weights_only=False)
    assert state["epoch"] == 1 and len(state["history"]["epoch"]) == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert math.isfinite(state["history"]["train_loss"][0])


class PoisonAfter(Callback):
    """Sets one BN running variance to NaN at the end of epoch ``epoch`` (0-based): the training
    loss stays finite, as when a diverging update lands in the buffers."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, state):
        if state.epoch == self.epoch:
            next(m for m in state.model.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var.fill_(math.nan)


def test_non_finite_weights_are_never_checkpointed(synthetic, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(NonFiniteLossError, match="epoch 2.*buffers became NaN") as err:
        fit(_model(data=synthetic), synthetic, TINY, device="cpu", progress=False, checkpoint=ckpt,
            callbacks=[PoisonAfter(1)])
    assert "after epoch 1" in str(err.value)
    state = torch.load(ckpt, weights_only=False)
    assert state["epoch"] == 1, "the checkpoint kept is the last finite one"
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nan_loss_in_the_first_epoch_without_checkpoint(synthetic):
    with pytest.raises(NonFiniteLossError, match="epoch 1") as err:
        fit(_model(data=synthetic), synthetic, TINY.replace(check_every=1), device="cpu", progress=False,
            callbacks=[NanFrom(0)])
    assert "by step 1" in str(err.value) and "No checkpoint" in str(err.value)


# ----------------------------------------------------------------------------- learning-rate schedule


def test_cosine_schedule():
    config = TrainConfig(schedule="cosine")
    total = 100
    factors = [lr_factor(s, total, config, 10) for s in range(total)]
    assert factors[0] == 1.0
    assert factors[-1] < 0.01
    assert factors[50] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(factors, factors[1:]))


def test_warmup_is_linear_then_the_schedule():
    config = TrainConfig(schedule="cosine", warmup_epochs=2)
    spe, total = 10, 100
    ramp = [lr_factor(s, total, config, spe) for s in range(20)]
    assert ramp[0] == pytest.approx(0.01)
    assert ramp[10] == pytest.approx(0.01 + 0.99 * 0.5)
    steps = [b - a for a, b in zip(ramp, ramp[1:])]
    assert all(d == pytest.approx(0.99 / 20) for d in steps)
    assert lr_factor(20, total, config, spe) == 1.0  # the cosine starts after the warm-up
    assert lr_factor(total - 1, total, config, spe) < 0.01
    constant = TrainConfig(schedule="constant", warmup_epochs=1)
    assert lr_factor(5, total, constant, spe) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(10, total, constant, spe) == 1.0 == lr_factor(99, total, constant, spe)


def test_multistep_schedule():
    config = TrainConfig(schedule="multistep", milestones=(0.5, 0.75), gamma=0.1)
    f = [lr_factor(s, 100, config, 10) for s in range(100)]
    assert f[0] == f[49] == 1.0
    assert f[50] == pytest.approx(0.1) and f[74] == pytest.approx(0.1)
    assert f[75] == pytest.approx(0.01) and f[99] == pytest.approx(0.01)


def test_optimizers():
    model = _model()
    sgd = make_optimizer(model, TrainConfig(lr=0.3, momentum=0.8, weight_decay=1e-3))
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.3, 0.8, True, 1e-3)
    assert make_optimizer(model, TrainConfig(momentum=0.0)).param_groups[0]["nesterov"] is False
    assert type(make_optimizer(model, TrainConfig(optimizer="adam"))) is torch.optim.Adam
    assert type(make_optimizer(model, TrainConfig(optimizer="adamw"))) is torch.optim.AdamW


def test_decay_only_value_without_momentum_is_the_geometric_shrink():
    config = TrainConfig(epochs=2, lr=0.1, momentum=0.0, weight_decay=0.01, schedule="constant", warmup_epochs=0)
    assert decay_only_value(-1.0, config, 50) == pytest.approx(-(1 - 0.1 * 0.01) ** 100, rel=1e-12)
    assert decay_only_value(-1.0, config.replace(weight_decay=0.0), 50) == -1.0


class IdleParameter(torch.nn.Module):
    """A network with one extra parameter that the loss multiplies by zero: its gradient is 0."""

    def __init__(self, net, start):
        super().__init__()
        self.net, self.idle = net, torch.nn.Parameter(torch.tensor(start))

    def forward(self, x):
        return self.net(x) + 0.0 * self.idle


def test_decay_only_value_is_where_fit_leaves_a_parameter_the_loss_does_not_push(synthetic):
    config = TINY.replace(epochs=2, warmup_epochs=0.5, weight_decay=0.05)  # momentum 0.9, cosine, 8 steps an epoch
    model = IdleParameter(_model(data=synthetic, width_mult=0.25), -1.0)
    fit(model, synthetic, config, device="cpu", progress=False)
    ends = decay_only_value(-1.0, config, steps_per_epoch(synthetic, config))
    assert model.idle.item() == pytest.approx(ends, rel=1e-5)
    # momentum makes the decay stronger than the plain shrink, even at the schedule's largest rate
    assert -(1 - 0.05 * 0.05) ** 16 < ends < 0


def test_an_l1_penalty_without_decay_or_momentum_moves_a_parameter_by_lr_times_strength_a_step():
    config = TrainConfig(epochs=2, lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant", warmup_epochs=0)
    assert decay_only_value(1.0, config, 50, l1_penalty=0.01) == pytest.approx(1.0 - 100 * 0.1 * 0.01, rel=1e-12)
    assert decay_only_value(-1.0, config, 50, l1_penalty=0.01) == pytest.approx(-0.9, rel=1e-12)
    with pytest.raises(ValueError, match="negative"):
        decay_only_value(1.0, config, 50, l1_penalty=-0.01)


class IdleL1(Callback):
    """An L1 penalty on :class:`IdleParameter`'s idle parameter, as NAM's on its scale factors."""

    def __init__(self, strength: float) -> None:
        self.strength = strength

    def loss_term(self, model):
        return self.strength * model.idle.abs()


def test_decay_only_value_with_an_l1_penalty_is_where_fit_leaves_a_penalised_idle_parameter(synthetic):
    config = TINY.replace(epochs=2, warmup_epochs=0.5, weight_decay=0.05)
    model = IdleParameter(_model(data=synthetic, width_mult=0.25), 1.0)
    fit(model, synthetic, config, device="cpu", progress=False, callbacks=[IdleL1(0.2)])
    ends = decay_only_value(1.0, config, 8, l1_penalty=0.2)
    assert model.idle.item() == pytest.approx(ends, rel=1e-5)
    assert ends < decay_only_value(1.0, config, 8)  # the penalty pulls further than the decay alone


# ----------------------------------------------------------------------------- callbacks

class L2(Callback):
    def __init__(self, coefficient: float) -> None:
        self.coefficient = coefficient

    def loss_term(self, model):
        return self.coefficient * sum((p ** 2).sum() for p in model.parameters())


def test_callback_loss_term_is_added(synthetic):
    config = TINY.replace(epochs=1, weight_decay=0.0)
    base = _model(data=synthetic)
    plain, penalised = copy.deepcopy(base), copy.deepcopy(base)
    h0 = fit(plain, synthetic, config, device="cpu", progress=False)
    h1 = fit(penalised, synthetic, config, device="cpu", progress=False, callbacks=[L2(0.05)])
    norm0 = sum((p ** 2).sum() for p in plain.parameters())
    norm1 = sum((p ** 2).sum() for p in penalised.parameters())
    assert norm1 < 0.9 * norm0
    # the reported loss is the cross-entropy alone, without the extra term
    assert h1.train_loss[0] < 10 and h0.train_loss[0] < 10


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_fit_start(self, state):
        self.events.append(("fit", state.epoch, state.step, state.total_steps))

    def on_epoch_start(self, state):
        self.events.append(("start", state.epoch, state.step))

    def on_step_end(self, state):
        self.events.append(("step", state.epoch, state.step))

    def on_epoch_end(self, state):
        self.events.append(("end", state.epoch, state.step, len(state.history)))


def test_callback_hooks_order(synthetic):
    rec = Recorder()
    fit(_model(data=synthetic), synthetic, TINY.replace(epochs=2), device="cpu", progress=False, callbacks=[rec])
    expected = [("fit", 0, 0, 16)]
    for epoch in range(2):
        expected.append(("start", epoch, 8 * epoch))
        expected += [("step", epoch, 8 * epoch + i) for i in range(1, 9)]
        expected.append(("end", epoch, 8 * (epoch + 1), epoch + 1))
    assert rec.events == expected


def test_steps_per_epoch_counts_the_full_batches_fit_trains_on(synthetic_rgb):
    config = TINY.replace(epochs=2)  # 300 images in batches of 32: 9 full batches, 12 images left over
    assert steps_per_epoch(synthetic_rgb, config) == 9
    rec = Recorder()
    fit(_model(data=synthetic_rgb, width_mult=0.25), synthetic_rgb, config, device="cpu", progress=False,
        callbacks=[rec])
    ends = [step for event, _, step, *_ in rec.events if event == "end"]
    assert ends == [9, 18]


# ----------------------------------------------------------------------------- BN statistics

def test_recompute_bn_statistics_averages_the_batches_and_restores_the_momentum(synthetic):
    model = _model(data=synthetic, width_mult=0.25)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    first = norms[0]
    inputs = []
    first.register_forward_hook(lambda module, args, out: inputs.append(args[0].detach().clone()))
    first.momentum = 0.3
    loader = DeviceLoader(synthetic.train_images[:96], synthetic.train_labels[:96], batch_size=32,
                          mean=synthetic.mean, std=synthetic.std)
    returned = recompute_bn_statistics(model, loader)

    assert returned is model and not model.training
    assert first.momentum == 0.3 and all(m.momentum == 0.1 for m in norms[1:])
    assert int(first.num_batches_tracked) == 3 and len(inputs) == 3
    # momentum None: the running mean and variance are the plain averages of the three batches'
    batch_means = torch.stack([x.mean((0, 2, 3)) for x in inputs])
    batch_vars = torch.stack([x.var((0, 2, 3), unbiased=True) for x in inputs])
    torch.testing.assert_close(first.running_mean, batch_means.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first.running_var, batch_vars.mean(0), rtol=1e-5, atol=1e-6)


def test_recompute_bn_statistics_needs_a_batchnorm(synthetic):
    loader = DeviceLoader(synthetic.train_images[:8], synthetic.train_labels[:8], batch_size=8,
                          mean=synthetic.mean, std=synthetic.std)
    with pytest.raises(ValueError, match="no BatchNorm layer"):
        recompute_bn_statistics(torch.nn.Conv2d(synthetic.in_channels, 4, 3), loader)
