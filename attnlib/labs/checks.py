"""Self-checks for the course labs: a student's function against attnlib's layer.

Each ``check_*`` calls the student's function on random inputs of several shapes and on
edge cases (one image, one channel, all zeros), compares the result with the library's
layer, and raises :class:`LabCheckError` with a message meant for the student: which
shape is wrong, the largest difference and where, and which term of the chapter's
equation to look at (when the wrong output matches a known mistake, it names it).
The chapters' lab cells call them in one line: ``checks.check_iebn(iebn)``. The hidden
tests of the autograder call the same functions with another ``seed``.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from ..layers.bridge_attention import BridgeAttention, reference_ba_gate
from ..layers.dynamic_conv import DynamicConv2d, reference_dynamic_conv
from ..layers.iebn import IEBN2d, reference_iebn
from ..layers.mabn import MABN2d, reference_mabn
from ..layers.nam import NAMChannelAttention


class LabCheckError(AssertionError):
    """A self-check failed; the message says what to fix.

    In a notebook it shows as its message alone: the traceback through this module would
    only hide it (IPython calls ``_render_traceback_`` instead of printing one)."""

    def _render_traceback_(self) -> list[str]:
        return [f"✗ {self}"]


@dataclass
class Case:
    """One call of the student's function and what attnlib answers to it."""

    name: str
    args: dict
    expected: torch.Tensor
    mistakes: dict[str, torch.Tensor] = field(default_factory=dict)  # description -> wrong output


def _channel(t: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, 1, 1)


def _describe(args: Mapping) -> str:
    parts = [f"{k} {tuple(v.shape)}" if isinstance(v, torch.Tensor) else f"{k}={v!r}"
             for k, v in args.items() if not isinstance(v, list)]
    return ", ".join(parts)


def compare(fn_name: str, got, case: Case, reference: str, hint: str, atol: float = 1e-5) -> None:
    """Raise LabCheckError unless ``got`` equals ``case.expected`` within ``atol`` (relative too)."""
    where = f"{case.name} ({_describe(case.args)})"
    if got is None or got is Ellipsis:
        raise LabCheckError(f"{fn_name} returned {got!r} for {where}: write its body and return a "
                            "tensor (the stub `...` returns None).")
    if not isinstance(got, torch.Tensor):
        raise LabCheckError(f"{fn_name} returned a {type(got).__name__} for {where}; return a torch.Tensor.")
    expected = case.expected
    if got.shape != expected.shape:
        raise LabCheckError(f"{fn_name} returned shape {tuple(got.shape)} for {where}, but {reference} gives "
                            f"{tuple(expected.shape)}. Check which dimensions you reduce over and keepdim.")
    got = got.detach().to(expected.dtype)
    if not torch.isfinite(got).all():
        index = tuple(torch.nonzero(~torch.isfinite(got))[0].tolist())
        raise LabCheckError(f"{fn_name} returned {got[index].item()} at index {index} for {where}; "
                            f"{reference} gives {expected[index].item():.4g}. A division by zero? {hint}")
    difference = (got - expected).abs()
    tolerance = atol + 1e-4 * expected.abs()
    if (difference <= tolerance).all():
        return
    index = tuple(int(i) for i in torch.unravel_index(torch.argmax(difference - tolerance), got.shape))
    known = [name for name, wrong in case.mistakes.items()
             if wrong.shape == got.shape and torch.allclose(got, wrong.to(got.dtype), atol=atol, rtol=1e-4)]
    advice = f"Your output matches {known[0]}." if known else hint
    raise LabCheckError(f"{fn_name} differs from {reference} for {where}: largest difference "
                        f"{difference[index].item():.3g} at index {index} (yours {got[index].item():.6g}, "
                        f"{reference} {expected[index].item():.6g}). {advice}")


def run_cases(fn: Callable, fn_name: str, cases: list[Case], reference: str, hint: str,
              atol: float = 1e-5) -> None:
    """Call ``fn(**case.args)`` for every case, compare, and print a one-line summary."""
    if not callable(fn):
        raise LabCheckError(f"{fn_name} is {fn!r}, not a function: define it with `def {fn_name}(...)`.")
    for case in cases:
        try:
            got = fn(**{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in case.args.items()})
        except LabCheckError:
            raise
        except Exception as err:  # the student's code failed: say on which input
            raise LabCheckError(f"{fn_name} raised {type(err).__name__}: {err} for {case.name} "
                                f"({_describe(case.args)}).") from err
        compare(fn_name, got, case, reference, hint, atol)
    print(f"✓ {fn_name} matches {reference} on {len(cases)} cases: {', '.join(c.name for c in cases)}")


def _own_rng(check: Callable) -> Callable:
    """Run a check without touching the caller's torch random state."""
    @functools.wraps(check)
    def wrapped(*args, **kwargs):
        with torch.random.fork_rng():
            return check(*args, **kwargs)
    return wrapped


def _shapes(seed: int) -> list[tuple[str, tuple[int, int, int, int]]]:
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = (int(v) for v in torch.randint(2, 7, (4,), generator=g))
    return [("random input", (n, c, h, w)), ("one image", (1, c, h + 1, w + 1)),
            ("one channel", (n, 1, h, w)), ("all zeros", (n, c, h, w)), ("nearly constant", (n, c, h, w))]


def _input(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    if name == "all zeros":
        return torch.zeros(shape, dtype=torch.float64)
    if name == "nearly constant":  # a variance below ε, where ε's place in the equation shows
        return 0.3 + 1e-3 * torch.randn(shape, dtype=torch.float64)
    return torch.randn(shape, dtype=torch.float64) * 2 + 0.5


def _inputs(seed: int) -> list[tuple[str, torch.Tensor]]:
    torch.manual_seed(seed)
    return [(name, _input(name, shape)) for name, shape in _shapes(seed)]


def _batch_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float, unbiased: bool = False,
                dims: tuple[int, ...] = (0, 2, 3), eps_outside: bool = False) -> torch.Tensor:
    """BN in training mode, or one of its usual mistakes (the arguments say which)."""
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, unbiased=unbiased, keepdim=True)
    scale = torch.sqrt(var) + eps if eps_outside else torch.sqrt(var + eps)
    return (x - mean) / scale * _channel(gamma) + _channel(beta)


#: Mistakes in the statistics of BN, shared by every check of a BN-like layer: keyword
#: arguments of :func:`_batch_norm`, by the message that names them.
STATISTICS_MISTAKES = {
    "the unbiased variance (divide by M, not M - 1: use unbiased=False)": {"unbiased": True},
    "statistics per image (reduce over the batch too: dims (0, 2, 3))": {"dims": (2, 3)},
    "statistics over the batch dimension only (reduce over space too: dims (0, 2, 3))": {"dims": (0,)},
    "ε outside the square root (it belongs under it: sqrt(σ² + ε))": {"eps_outside": True},
}


# --- 00: batch normalisation ----------------------------------------------------------------

@_own_rng
def check_batch_norm(batch_norm: Callable, seed: int = 0) -> None:
    """``batch_norm(x, gamma, beta, eps)``: BN in training mode, against ``nn.BatchNorm2d``."""
    cases = []
    for name, x in _inputs(seed):
        c = x.shape[1]
        bn = torch.nn.BatchNorm2d(c, eps=1e-5).double().train()
        with torch.no_grad():
            bn.weight.uniform_(0.5, 2)
            bn.bias.normal_()
        gamma, beta = bn.weight.detach().clone(), bn.bias.detach().clone()
        with torch.no_grad():
            expected = bn(x)
        mistakes = {message: _batch_norm(x, gamma, beta, bn.eps, **wrong)
                    for message, wrong in STATISTICS_MISTAKES.items()}
        mistakes["the normalised x̂ without γ and β"] = _batch_norm(x, torch.ones_like(gamma), torch.zeros_like(beta),
                                                                  bn.eps)
        if name not in ("all zeros", "nearly constant"):
            mistakes["no ε under the square root"] = _batch_norm(x, gamma, beta, 0.0)
        cases.append(Case(name, {"x": x, "gamma": gamma, "beta": beta, "eps": bn.eps}, expected, mistakes))
    run_cases(batch_norm, "batch_norm", cases, "nn.BatchNorm2d (train mode)",
              "Look at the Math section: μ_c and σ²_c are over the batch and space of channel c, then γ_c x̂ + β_c.")


# --- 01: IEBN --------------------------------------------------------------------------------

@_own_rng
def check_iebn(iebn: Callable, seed: int = 0) -> None:
    """``iebn(x, gamma, beta, w, b, eps)``: IEBN in training mode, against ``IEBN2d``."""
    cases = []
    for name, x in _inputs(seed):
        layer = IEBN2d(x.shape[1]).double().train()
        with torch.no_grad():
            for p in (layer.weight_readjust, layer.bias_readjust, layer.weight, layer.bias):
                p.normal_()
        args = {"x": x, "gamma": layer.weight.detach().clone(), "beta": layer.bias.detach().clone(),
                "w": layer.weight_readjust.detach().flatten().clone(),
                "b": layer.bias_readjust.detach().flatten().clone(), "eps": layer.eps}
        with torch.no_grad():
            expected = layer(x)
        gamma, beta, w, b, eps = (args[k] for k in ("gamma", "beta", "w", "b", "eps"))
        mean, std = x.mean((0, 2, 3)), torch.sqrt(x.var((0, 2, 3), unbiased=False) + eps)
        # GAP(x̂) = (GAP(x) - μ) / σ: a gate pooled from x̂ is the reference's with w / σ and b - w μ / σ
        gate_from_x_hat = reference_iebn(x, gamma, beta, w / std, b - w * mean / std, eps)
        ones, zeros = torch.ones_like(gamma), torch.zeros_like(beta)
        x_hat = _batch_norm(x, ones, zeros, eps)
        logits = _channel(w) * x.mean((2, 3), keepdim=True) + _channel(b)
        gate = torch.sigmoid(logits)
        # the statistics' usual mistakes, with IEBN's gate on top: x̂' γ δ + β
        mistakes = {message: _batch_norm(x, ones, zeros, eps, **wrong) * _channel(gamma) * gate + _channel(beta)
                    for message, wrong in STATISTICS_MISTAKES.items()}
        mistakes |= {"a gate pooled from the normalised x̂ instead of the layer's input x": gate_from_x_hat,
                     "a gate without the sigmoid": x_hat * _channel(gamma) * logits + _channel(beta),
                     "BN without the gate (δ = 1)": _batch_norm(x, gamma, beta, eps),
                     "a gated β ((γ x̂ + β) δ: β is added after the gate, not gated)":
                     (x_hat * _channel(gamma) + _channel(beta)) * gate}
        cases.append(Case(name, args, expected, mistakes))
    run_cases(iebn, "iebn", cases, "IEBN2d (train mode)",
              "Look at the three equations of the Math section: x̂ with batch statistics, the gate δ_nc "
              "from the per-image spatial mean of x, then x̂ γ_c δ_nc + β_c.")


# --- 02: BA-Net ------------------------------------------------------------------------------

@_own_rng
def check_ba_gate(ba_gate: Callable, seed: int = 0) -> None:
    """``ba_gate(features, weights, gammas, betas, excite, eps)``: the BA gate, against ``BridgeAttention.gate``."""
    cases = []
    for name, x in _inputs(seed):
        if x.shape[0] == 1:  # BN over a batch of one image is undefined (zero variance)
            x = torch.cat([x, -x])
            name = "two images, one the negative of the other"
        n, c = x.shape[:2]
        bridge_channels = [max(1, c // 2), c + 1]
        ba = BridgeAttention(c, bridge_channels).double().train()
        with torch.no_grad():
            for norm in ba.squeeze_norms:
                norm.weight.uniform_(0.5, 2)
                norm.bias.normal_()
        features = [torch.randn(n, k, *x.shape[2:], dtype=torch.float64) * float(x.abs().sum() > 0)
                    for k in bridge_channels] + [x]
        with torch.no_grad():
            expected = ba.gate(x, features[:-1])
        args = {"features": features, "weights": [w.detach().clone() for w in ba.squeeze_weights],
                "gammas": [m.weight.detach().clone() for m in ba.squeeze_norms],
                "betas": [m.bias.detach().clone() for m in ba.squeeze_norms],
                "excite": ba.excite_weight.detach().clone(), "eps": ba.squeeze_norms[0].eps}
        maps, eps, excite = len(features), args["eps"], args["excite"]
        last_only = reference_ba_gate(*(args[k][-1:] for k in ("features", "weights", "gammas", "betas")), excite, eps)
        # every BN_i the identity: γ = 1, β = 0 and eval-mode statistics μ = 0, σ² = 1 - ε
        ones, zeros = torch.ones(ba.hidden, dtype=x.dtype), torch.zeros(ba.hidden, dtype=x.dtype)
        no_norm = reference_ba_gate(features, args["weights"], [ones] * maps, [zeros] * maps, excite, eps,
                                    running_means=[zeros] * maps, running_vars=[ones - eps] * maps)
        mistakes = {"SE's gate: only the last feature map is squeezed (add the bridges S_1 ... S_{n-1})": last_only,
                    "no batch norm on the squeezed vectors (S_i = BN_i(W_i z_i))": no_norm}
        label = f"{name}, bridges of {bridge_channels} channels"
        cases.append(Case(label, {**args, "features": features}, expected, mistakes))
    run_cases(ba_gate, "ba_gate", cases, "BridgeAttention.gate (train mode)",
              "Look at the BA equations: S_i = BN_i(W_i GAP(F_i)) with batch statistics over the images, "
              "summed over i, then sigmoid(W_g ReLU(sum)).")


# --- 03: MABN ----------------------------------------------------------------------------------

@_own_rng
def check_mabn_forward(mabn_forward: Callable, seed: int = 0) -> None:
    """``mabn_forward(x, past_chi, gamma, beta, eps)``: MABN's training forward after the warm-up.

    ``past_chi`` holds the second moments of the previous S - 1 steps, (S - 1, C); the
    reference is ``MABN2d`` run for S steps (r is 1 during its first 1000 steps).
    """
    cases = []
    for name, x in _inputs(seed):
        c = x.shape[1]
        layer = MABN2d(c, B=2, real_B=8, warmup_iters=0).double().train()  # window S = 4
        with torch.no_grad():
            layer.weight.uniform_(0.5, 2)
            layer.bias.normal_()
        past = []
        with torch.no_grad():
            for _ in range(layer.window):  # fill the window, so the next step averages S moments
                xb = torch.randn(x.shape, dtype=torch.float64) * 1.5
                past.append(xb.pow(2).mean((0, 2, 3)))
                layer(xb)
            expected = layer(x)
        past_chi = torch.stack(past[1:])
        gamma, beta, eps = layer.weight.detach().clone(), layer.bias.detach().clone(), layer.eps
        ones, no_past = torch.ones_like(gamma), past_chi[:0]  # running_var is unused while r = 1
        this_step_only = reference_mabn(x, gamma, beta, no_past, ones, eps)
        # with r unclipped, r z = x / √(running_var + ε): pass the mean of past_chi as running_var
        past_only = reference_mabn(x, gamma, beta, no_past, past_chi.mean(0), eps, r_max=math.inf)
        # γ (x - μ) / √(χ̄ + ε) + β is the reference (r = 1) minus γ μ / √(χ̄ + ε)
        averaged = torch.cat([past_chi, x.pow(2).mean((0, 2, 3))[None]]).mean(0)
        shift = gamma * x.mean((0, 2, 3)) / torch.sqrt(averaged + eps)
        centred = reference_mabn(x, gamma, beta, past_chi, ones, eps) - _channel(shift)
        mistakes = {"this step's second moment only (average it with past_chi: S values)": this_step_only,
                    "the past moments without this step's χ_t": past_only,
                    "a centred x (MABN divides x itself: the mean is dropped, CenConv centres the weights)": centred}
        cases.append(Case(name, {"x": x, "past_chi": past_chi, "gamma": gamma, "beta": beta, "eps": layer.eps},
                          expected, mistakes))
    run_cases(mabn_forward, "mabn_forward", cases, "MABN2d (train mode, after the warm-up)",
              "Look at the Math section: χ_t = mean of x² over (N, H, W), χ̄ = mean of the last S values "
              "(this step's included), y = γ x / sqrt(χ̄ + ε) + β with r = 1.")


# --- 04: NAM -----------------------------------------------------------------------------------

@_own_rng
def check_nam_channel(nam_channel: Callable, seed: int = 0) -> None:
    """``nam_channel(x, gamma, beta, eps)``: NAM's channel module in training mode."""
    cases = []
    for name, x in _inputs(seed):
        c = x.shape[1]
        nam = NAMChannelAttention(c).double().train()
        with torch.no_grad():
            nam.bn.weight.uniform_(-2, 2)
            nam.bn.bias.normal_()
        cases_here = [(name, nam.bn.weight.detach().clone())]
        if name == "random input":
            cases_here.append(("all γ zero (a pruned block)", torch.zeros(c, dtype=torch.float64)))
        for label, gamma in cases_here:
            with torch.no_grad():
                nam.bn.weight.copy_(gamma)
                expected = nam(x)
            beta = nam.bn.bias.detach().clone()
            w = gamma.abs() / gamma.abs().sum().clamp_min(1e-300)
            bn = _batch_norm(x, gamma, beta, nam.bn.eps)
            mistakes = {"signed weights γ / Σγ (use |γ_c| / Σ_j |γ_j|)":
                        torch.sigmoid(_channel(gamma / gamma.sum()) * bn) * x,
                        "the gate alone, not multiplied by x": torch.sigmoid(_channel(w) * bn),
                        "the gate without the weights w_c": torch.sigmoid(bn) * x}
            cases.append(Case(label, {"x": x, "gamma": gamma, "beta": beta, "eps": nam.bn.eps}, expected, mistakes))
    run_cases(nam_channel, "nam_channel", cases, "NAMChannelAttention (train mode)",
              "Look at the Math section: w_c = |γ_c| / Σ_j |γ_j| (zero weights when every γ is zero), "
              "then sigmoid(w_c (γ_c x̂ + β_c)) times x.")


# --- 05: Dynamic convolution -----------------------------------------------------------------

@_own_rng
def check_dynamic_conv(dynamic_conv: Callable, seed: int = 0) -> None:
    """``dynamic_conv(x, pi, experts, biases, padding)``: per-image kernel aggregation, then the conv."""
    cases = []
    for name, x in _inputs(seed):
        torch.manual_seed(seed + x.shape[0])
        c_in = x.shape[1]
        for k in ((4, 1) if name == "random input" else (3,)):
            layer = DynamicConv2d(c_in, 5, 3, padding=1, num_experts=k, temperature=1.0, mode="grouped").double()
            with torch.no_grad():
                layer.bias.normal_()
                pi = layer.attention_weights(x)
                expected = layer(x)
            experts = layer.weight.detach().view(k, 5, c_in, 3, 3).clone()
            biases = layer.bias.detach().clone()
            aggregated = torch.einsum("nk,koihw->noihw", pi, experts)  # W̃ per image, (N, C_out, C_in, 3, 3)
            swapped = aggregated.transpose(1, 2).reshape(aggregated.shape)  # built as (N, C_in, C_out), reshaped
            by_image = [torch.nn.functional.conv2d(x[i:i + 1], swapped[i], padding=1) for i in range(len(x))]
            mixed_up = torch.cat(by_image) + (pi @ biases)[:, :, None, None]
            mistakes = {"one kernel for the whole batch (π averaged over images: each image needs its own)":
                        reference_dynamic_conv(x, pi.mean(0).expand_as(pi), experts, biases, padding=1),
                        "the experts summed without their weights π_k":
                        reference_dynamic_conv(x, torch.ones_like(pi), experts, biases, padding=1),
                        "no bias (add b̃ = Σ_k π_k b_k)": reference_dynamic_conv(x, pi, experts, None, padding=1),
                        "a kernel whose input and output channels are mixed up (build W̃ as (N, C_out, C_in, "
                        "kh, kw) before reshaping it for the grouped convolution)": mixed_up}
            label = f"{name}, K={k}"
            cases.append(Case(label, {"x": x, "pi": pi, "experts": experts, "biases": biases, "padding": 1},
                              expected, mistakes))
    run_cases(dynamic_conv, "dynamic_conv", cases, "DynamicConv2d",
              "Look at the Math section: W̃(x) = Σ_k π_k(x) W_k and b̃(x) = Σ_k π_k(x) b_k per image, "
              "then y = W̃(x) * x + b̃(x).")


# --- the small experiments -------------------------------------------------------------------

TIE = "tie"
"""The verdict when no arm ends ahead in every seed: their difference is inside the seed spread."""


def _final(run: Mapping, key: str) -> float:
    value = run[key]
    return float(value[-1] if isinstance(value, (list, tuple)) else value)


def _check_run(where: str, run) -> None:
    """One run's history: a dict whose training loss is finite, with accuracies in [0, 1]."""
    if not isinstance(run, Mapping):
        raise LabCheckError(f"{where}: a run is {type(run).__name__}, not a dict: store `history.to_dict()` of fit().")
    for key in ("train_loss", "test_acc"):
        if key not in run or len(run[key]) == 0:
            raise LabCheckError(f"{where} has no {key!r} list: store `history.to_dict()` of fit().")
    loss, acc = [float(v) for v in run["train_loss"]], [float(v) for v in run["test_acc"]]
    if not all(math.isfinite(v) for v in loss):
        raise LabCheckError(f"{where}: the training loss is not finite ({loss}); lower the learning rate.")
    if not all(0.0 <= v <= 1.0 for v in acc):
        raise LabCheckError(f"{where}: test accuracies {acc} are not fractions in [0, 1].")


def _check_loss_fell(label: str, runs: list) -> None:
    """The training loss of ``label``'s runs fell on average over its seeds. One seed alone may
    not fall in a short run at a small learning rate (a few dozen steps barely move it, and the
    epoch's mean loss is noisy), but a label whose seeds do not learn on average is a broken run."""
    ends = [(float(run["train_loss"][0]), float(run["train_loss"][-1])) for run in runs]
    if all(len(run["train_loss"]) > 1 for run in runs) and sum(last - first for first, last in ends) >= 0:
        shown = ", ".join(f"seed {seed}: {first:.3f} -> {last:.3f}" for seed, (first, last) in enumerate(ends))
        raise LabCheckError(f"{label}: the training loss did not fall on average over the seeds ({shown}); "
                            "train for more steps or check the learning rate.")


def _check_labels(results, labels: list[str], value: str) -> None:
    """``results`` is a dict with a run for every label (``value`` says what a run is)."""
    if results is None or results is Ellipsis or not isinstance(results, Mapping):
        raise LabCheckError(f"results is {results!r}: run your experiment and store a dict "
                            f"{{label: {value}}} with the labels {labels}.")
    missing = [label for label in labels if label not in results]
    if missing:
        raise LabCheckError(f"results has no run for {missing}; it has {list(results)}.")


def _check_runs_differ(results, labels: list[str], seeds: int, changed: str) -> None:
    for label in labels:
        for i in range(1, seeds):
            if results[label][i]["train_loss"] == results[label][0]["train_loss"]:
                raise LabCheckError(f"{label}: the runs of seed 0 and seed {i} trained identically: call "
                                    "torch.manual_seed(seed) with each run's own seed before building its network.")
    for i in range(seeds):
        for a, b in zip(labels, labels[1:]):
            if results[a][i]["train_loss"] == results[b][i]["train_loss"]:
                raise LabCheckError(f"{a!r} and {b!r} trained identically at seed {i}: the two runs should "
                                    f"differ in {changed or 'what the exercise changes'}.")


def check_seed_runs(results, labels: list[str], num_classes: int, verdict, *, seeds: int = 3,
                    among: list[str] | None = None, metric: str = "test_acc", highest: bool = True,
                    changed: str = "") -> None:
    """A small experiment over seeds, and the student's verdict on it.

    ``results[label]`` is a list of History dicts (``fit(...).to_dict()``), one per seed, in
    the same seed order for every label. Every run's training loss must be finite and fall,
    its test accuracies lie in [0, 1], and the best mean final accuracy be above chance. The
    runs of one label must differ between seeds, and two labels must differ at the same seed
    (``changed`` says what the exercise changes, for the message).

    ``verdict`` names the label of ``among`` (default: all of ``labels``) whose final ``metric``
    is the highest in every seed (``highest=False``: the lowest), or :data:`TIE` when none
    is: a difference that one seed reverses is inside the seed spread.
    """
    _check_labels(results, labels, "[history dict of each seed]")
    for label in labels:
        runs = results[label]
        if isinstance(runs, Mapping) or not isinstance(runs, (list, tuple)) or len(runs) < seeds:
            raise LabCheckError(f"results[{label!r}] should be a list of {seeds} histories, one per seed "
                                f"(seeds 0 to {seeds - 1}); it is {type(runs).__name__}"
                                + (f" of length {len(runs)}" if isinstance(runs, (list, tuple)) else "") + ".")
        for seed, run in enumerate(runs[:seeds]):
            _check_run(f"{label}, seed {seed}", run)
        _check_loss_fell(label, runs[:seeds])
    _check_runs_differ(results, labels, seeds, changed)
    accuracy = {label: [_final(run, "test_acc") for run in results[label][:seeds]] for label in labels}
    chance = 1.0 / num_classes
    if max(sum(values) / seeds for values in accuracy.values()) <= 1.2 * chance:
        raise LabCheckError(f"no run is above chance ({chance:.2f}) on average: final test accuracies {accuracy}; "
                            "train longer or check the data and labels.")
    among = list(labels if among is None else among)
    for label in among:
        if any(metric not in run for run in results[label][:seeds]):
            raise LabCheckError(f"the runs of {label!r} have no {metric!r}: store it in each run's dict.")
    values = {label: [_final(run, metric) for run in results[label][:seeds]] for label in among}
    pick = max if highest else min
    ahead = set()
    for seed in range(seeds):
        best = pick(values[label][seed] for label in among)
        leaders = [label for label in among if values[label][seed] == best]
        ahead.add(leaders[0] if len(leaders) == 1 else TIE)
    right = ahead.pop() if len(ahead) == 1 else TIE
    word = "highest" if highest else "lowest"
    table = "; ".join(f"{label}: {', '.join(f'{v:.3f}' for v in values[label])}" for label in among)
    if verdict != right:
        why = (f"{right!r} has the {word} final {metric} in every seed" if right != TIE else
               f"no label has the {word} final {metric} in every seed, so the verdict is {TIE!r}")
        raise LabCheckError(f"verdict is {verdict!r}, but in your results {why} ({table}). Answer from your own "
                            f"numbers: the label {word} in every seed, or {TIE!r}.")
    seconds = {label: sum(sum(run.get("epoch_time", [])) for run in results[label][:seeds]) / seeds for label in labels}
    timing = ("; training time per run " + ", ".join(f"{label} {s:.1f} s" for label, s in seconds.items())
              if all(seconds.values()) else "")
    print(f"✓ plausible over {seeds} seeds (final {metric} per seed: {table}){timing}; verdict {verdict!r} "
          "agrees with them")


def check_final_temperature(results, labels: list[str], end: float = 1.0) -> None:
    """Every run of the dynamic ``labels`` stored its network's final softmax temperature
    (``"final_temperature"``), and it reached the schedule's ``end``."""
    _check_labels(results, labels, "[history dict of each seed]")
    for label in labels:
        runs = results[label]
        if isinstance(runs, Mapping) or not isinstance(runs, (list, tuple)):
            raise LabCheckError(f"results[{label!r}] should be a list of histories, one per seed; it is "
                                f"{type(runs).__name__}.")
        for seed, run in enumerate(runs):
            if not isinstance(run, Mapping) or "final_temperature" not in run:
                raise LabCheckError(f"{label}, seed {seed} has no 'final_temperature': store the temperature of "
                                    "its DynamicConv2d layers after training (e.g. `net.stages[0][0].conv1.temperature`).")
            if abs(float(run["final_temperature"]) - end) > 1e-3 * end:
                raise LabCheckError(f"{label}, seed {seed} ended at temperature {run['final_temperature']:g}, not {end:g}: "
                                    "the annealing never ran. Pass TemperatureAnnealing(...) in fit's callbacks, with "
                                    "as many epochs as the run has.")
