"""MABN (moving average batch normalisation) and the weight-centralised convolution it needs.

Junjie Yan, Ruosi Wan, Xiangyu Zhang, Wei Zhang, Yichen Wei, Jian Sun. "Towards Stabilizing
Batch Statistics in Backward Propagation of Batch Normalization". ICLR 2020.
Official code: megvii-model/MABN, ``MABN.py`` (the "formal version" reproduced here).

Why: with a small batch, BN's statistics are noisy, and not only the two of the forward
pass. Its backward pass uses two more batch statistics of the gradient, ``mean(g)`` and
``Psi = mean(g * z)``. MABN removes one pair by not subtracting the mean (the centralised
conv :class:`CenConv2d` keeps activations roughly centred instead) and replaces the other
pair, the second moment ``chi = E[x^2]`` and ``Psi``, by simple moving averages over the
last ``S = real_B // B`` iterations: a batch of ``B`` then gets statistics from about
``real_B`` samples.

Training step ``t`` (``t = 1, 2, ...``, counted by the buffer ``iters``), per channel, means
over (N, H, W), ``M = N*H*W``::

    chi_t    = mean(x^2)                                 (in fp32)
    var_t    = chi_t                              if t <= S or t < warmup_iters  (warm-up)
             = (chi_t + chi_{t-1} + ... + chi_{t-S+1}) / S                       otherwise
    z        = x / sqrt(var_t + eps)
    r        = sqrt(var_t + eps) / sqrt(running_var + eps),
               clamped to [1, 1] while t <= max(1000, warmup_iters), then to [1/5, 5]
    y        = weight * r * z + bias
    running_var <- momentum * running_var + (1 - momentum) * var_t

``r`` multiplies the output, as in the official code (batch renormalisation): whenever the
clamp is inactive, ``r * z = x / sqrt(running_var + eps)``, so the forward pass divides by
the running variance (its value before this step's update); ``r`` is a constant in the
backward pass. For the first ``max(1000, warmup_iters)`` steps ``r = 1`` and the forward
divides by ``var_t``. ``momentum`` is the weight of the OLD value (default 0.98), the
opposite of ``nn.BatchNorm2d``'s convention (where 0.1 weighs the new batch).

Backward, with ``g = dL/dy * weight * r``::

    Psi_t    = mean(g * z)
    Psi_bar  = Psi_t during warm-up (same condition as above), else the mean of the last S Psi
    dL/dx    = (g - z * Psi_bar) / sqrt(var_t + eps)
    dL/dweight = sum(dL/dy * r * z),   dL/dbias = sum(dL/dy)

During warm-up this is the exact gradient of ``y = weight * x / sqrt(mean(x^2) + eps) + bias``.
After it, it is deliberately not the gradient of the forward pass (that would use
``Psi_t / S``, since ``x`` contributes 1/S of ``var_t``): both batch statistics are replaced
by their moving averages, the paper's estimate of the large-batch gradient.

Eval: ``y = weight * x / sqrt(running_var + eps) + bias``; nothing is updated. Every
training-mode forward is one step: it advances the counter and the window of ``chi`` (also
under ``torch.no_grad``), and its backward adds one ``Psi``; call the layer once per
optimiser step (no gradient accumulation over several forwards).

Choosing ``B``: ``B`` is the batch each layer sees (per GPU) and only sets the window
``S = real_B // B``; a factory cannot know the training batch size, so the registered
``"mabn"`` takes it as an option: ``"mabn"`` is the paper's headline setting ``B = 2``
(``real_B = 32``, S = 16), ``("mabn", {"B": 4})`` matches a batch of 4 (S = 8).
Training at another batch size than ``B`` still works, it only changes the window to
``S`` batches of that size.

Use it whole. The official ResNet replaces every BatchNorm2d (shortcut included) by MABN2d
and every conv (stem and 1x1 shortcut included) by CenConv2d, and the registrations here do
the same (``norm="mabn", conv="cenconv"``). Partial replacement (MABN with plain convs, or
with some BN left) can give NaN losses early in training (``attnlib.train.fit`` then stops with
:class:`~attnlib.train.NonFiniteLossError`). Keep the warm-up too.

What differs from the official code (the maths above is the same):

* The counter is never read on the host (the official code calls ``iters.item()`` in every
  forward, a device sync on a GPU). The warm-up and clamp decisions are tensor ops
  (``torch.where``) on the ``iters`` buffer rather than a Python-int mirror: the buffer is the
  only state, so ``load_state_dict``, ``copy.deepcopy`` and direct edits need no
  ``_load_from_state_dict`` hook to resynchronise anything, ``torch.compile`` sees no Python
  constant that changes every step, and no host-side value decides anything within a step (a
  precondition for capturing it in a CUDA graph). The price is computing both branches (the
  window mean of an S x C buffer) and a few more tiny tensor ops per call.
* Statistics in fp32 (fp64 for fp64 inputs): ``mean(x^2)`` is computed in fp32, so fp16
  inputs of a few hundred do not overflow (300^2 > 65504) and bf16 ones keep their precision
  (the official code squares in the input's dtype). The maps stay in the input's dtype: the
  official ``r * z`` multiplies a bf16 map by an fp32 factor and so returns an fp32 map under
  autocast. Here the map passes are BN's own kernels with mean 0, which take low-precision
  maps with fp32 per-channel factors: the forward's affine map
  ``x * weight * r / sqrt(var_t + eps) + bias`` is ``F.batch_norm`` in inference mode, and the
  per-channel sums (``sum(x^2)``; ``sum(dL/dy * x)``, ``sum(dL/dy)``) come from BN's backward
  kernel (on CPU several times faster on channels_last maps than broadcasting elementwise ops
  with a reduction). ``dL/dx`` is two elementwise ops with the per-channel factors cast to the
  map's dtype. No ``z`` map is stored (``x`` is saved instead).
* Schedules (the warm-up rule, when ``r`` is frozen, its bounds) are the official code's,
  not taken from the paper's text.
* The backward reads the ``Psi`` ring buffer from the layer, not from saved tensors, so a
  layer called twice before one backward does not trip autograd's version check.
* ``running_var`` has shape (C,) like BatchNorm2d's (the official one is (1, C, 1, 1)),
  and the counter is a 0-d tensor; checkpoints of the official code do not load as-is.

Distributed training: ``iters``, the ring buffers and ``running_var`` change inside forward
and backward, and each rank must keep its own. Wrap the model with
``DistributedDataParallel(..., broadcast_buffers=False)``: the default broadcast overwrites
every rank's buffers with rank 0's at each forward (the official code has the same
requirement). :func:`attnlib.train.fit` does so by itself for any model with a layer whose
class sets ``rank_local_buffers = True``, as this one does. Under N processes each rank's
moving averages therefore hold that rank's own statistics: ``buffer_x2`` the last ``S``
values of ``mean(x^2)`` over its own ``B`` samples per step, ``buffer_gz`` the same for
``Psi``, ``running_var`` the average of its own ``var_t``, and ``iters`` counts the optimiser
steps (equal on all ranks). Nothing is averaged across ranks: ``B`` is the per-process
batch (``batch_size / N``), and the gradients of ``weight`` and ``bias``, like all others, are
averaged by DDP. Evaluation and the saved weights use rank 0's ``running_var``; checkpoints
keep every rank's buffers, so a resumed run continues each rank's own averages.

:class:`CenConv2d` (weight centralisation): each output filter minus its mean over
(in, kh, kw), recomputed in every forward, so the weight actually used has zero mean per
filter and the gradient flows through the centring. The official class draws std-1 normal
weights (unless the network's init overwrites them); here ``reset_parameters`` is He-normal
(fan_out, ReLU), the init ``attnlib.models`` applies to every conv anyway.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .ghost import ghost
from .registry import register_conv, register_norm

_CHANNEL = (1, -1, 1, 1)
R_MAX = 5.0  # after the frozen phase, r is clamped to [1/R_MAX, R_MAX]
R_FROZEN_ITERS = 1000  # r = 1 for the first max(R_FROZEN_ITERS, warmup_iters) steps


def _stat_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _count(x: torch.Tensor) -> int:
    """M = N * H * W, the number of values per channel."""
    return x.numel() // x.shape[1]


def _channel_sums(dy: torch.Tensor, x: torch.Tensor, zero: torch.Tensor, one: torch.Tensor,
                  with_sum_dy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-channel ``sum(dy * x)`` (and ``sum(dy)``) over (N, H, W), in fp32 (fp64 for fp64).

    These are the weight and bias gradients of a batch norm whose mean is 0 and inverse std 1,
    so BN's backward kernel computes them in one fused pass: products and sums in fp32 (no
    fp16 overflow, no temporary map), and a fast channels_last path, several times faster on
    CPU than ``(dy * x).sum((0, 2, 3), dtype=torch.float32)``.
    """
    _, sum_dy_x, sum_dy = torch.ops.aten.native_batch_norm_backward(
        dy, x, None, None, None, zero, one, True, 0.0, [False, True, with_sum_dy])
    return sum_dy_x, sum_dy


def _push(ring: torch.Tensor, slot: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Write ``value`` into row ``slot`` of the ring buffer; return the mean of all S rows."""
    ring.index_copy_(0, slot.view(1), value.view(1, -1).to(ring.dtype))
    return ring.mean(0).to(value.dtype)


class MABNFunction(torch.autograd.Function):
    """One training step of MABN: forward and the moving-average backward (module docstring).

    ``layer`` is the :class:`MABN2d` whose buffers hold the state; its counter ``iters``
    must already be this step's ``t`` (``MABN2d.forward`` increments it first). Both map
    passes use BN's own kernels with mean 0: ``F.batch_norm`` (inference mode) for the affine
    map and :func:`_channel_sums` for the per-channel sums.

    No autocast guard is needed: the BN kernels are on no autocast list, ``addcmul`` only
    "promotes" (its inputs share one dtype), and the fp32-listed ops used (``rsqrt``, ``pow``)
    only see the fp32 per-channel vectors.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                layer: MABN2d) -> torch.Tensor:
        acc = _stat_dtype(x)
        zero = torch.zeros(x.shape[1], dtype=acc, device=x.device)
        one = torch.ones_like(zero)
        t = layer.iters
        slot = t.remainder(layer.window)
        averaging = t >= layer.first_average_iter
        chi = _channel_sums(x, x, zero, one)[0] / _count(x)
        var = torch.where(averaging, _push(layer.buffer_x2, slot, chi), chi)
        inv_std = (var + layer.eps).rsqrt()
        r = (layer.running_var.to(acc) + layer.eps).rsqrt() / inv_std
        r = torch.where(t > layer.frozen_r_iters, r.clamp(1 / R_MAX, R_MAX), 1.0)
        layer.running_var.lerp_(var.to(layer.running_var.dtype), 1 - layer.momentum)
        ctx.save_for_backward(x, weight, r, inv_std, zero, one, slot, averaging)
        ctx.layer = layer
        return F.batch_norm(x, zero, var, weight.to(acc) * r, bias.to(acc), False, 0.0, layer.eps)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x, weight, r, inv_std, zero, one, slot, averaging = ctx.saved_tensors
        layer = ctx.layer
        sum_dy_x, grad_bias = _channel_sums(grad_out, x, zero, one, with_sum_dy=True)
        grad_weight = sum_dy_x * inv_std * r  # sum(dL/dy * r * z)
        psi = weight * grad_weight / _count(x)  # mean(g * z)
        psi = torch.where(averaging, _push(layer.buffer_gz, slot, psi), psi)
        # dL/dx = (g - z * psi) / std = dL/dy * (weight * r / std) - x * (psi / std^2)
        a = (weight * r * inv_std).to(x.dtype).view(_CHANNEL)
        b = (psi * inv_std.square()).to(x.dtype).view(_CHANNEL)
        gx = torch.addcmul(grad_out * a, x, b, value=-1)
        return gx, grad_weight.to(weight.dtype), grad_bias.to(weight.dtype), None


def reference_mabn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, past_chi: torch.Tensor,
                   running_var: torch.Tensor, eps: float, r_max: float = 1.0) -> torch.Tensor:
    """MABN's training forward (Yan et al., "Towards Stabilizing Batch Statistics in Backward Propagation
    of Batch Normalization", ICLR 2020) written out: x divided by the root of a moving average of its
    second moment, renormalised towards the running estimate, then γ, β.

    ``past_chi`` (S - 1, C) holds χ of the previous S - 1 steps; pass a (0, C) tensor during the warm-up,
    where χ̄_t = χ_t. ``running_var`` is the estimate before this step's update; r is clamped to
    [1/r_max, r_max]: ``r_max=1`` while r is frozen (the first max(1000, warmup_iters) steps), ``R_MAX``
    after. The renormalisation factor r and its schedule follow the official code (module docstring).
    Autograd of this function is the exact gradient only during the warm-up; MABN's own backward is
    :func:`reference_mabn_input_grad`. Comments use the module docstring's symbols.
    """
    chi = x.square().mean((0, 2, 3))                                   # χ_t = mean(x²): no mean subtracted
    var = torch.cat([past_chi, chi[None]]).mean(0)                     # χ̄_t = mean of the last S values of χ
    std = torch.sqrt(var + eps)                                        # √(χ̄_t + ε)
    z = x / std[:, None, None]                                         # z = x / √(χ̄_t + ε)
    r = (std / torch.sqrt(running_var + eps)).clamp(1 / r_max, r_max)  # r = clip(√(χ̄_t + ε) / √(χ̂ + ε))
    r = r.detach()                                                     # r is a constant for autograd (official code)
    return (weight * r)[:, None, None] * z + bias[:, None, None]       # y = γ r z + β


def reference_mabn_input_grad(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                              past_chi: torch.Tensor, past_psi: torch.Tensor, running_var: torch.Tensor,
                              eps: float, r_max: float = 1.0) -> torch.Tensor:
    """MABN's backward to the input (Yan et al., ICLR 2020) written out: the batch statistic Ψ of the
    gradient replaced by its moving average Ψ̄, the paper's estimate of the large-batch gradient.

    Arguments as :func:`reference_mabn`, plus ``grad_out`` (dL/dy) and ``past_psi`` (S - 1, C), Ψ of the
    previous S - 1 steps ((0, C) during the warm-up, where this is the exact gradient of the forward).
    """
    var = torch.cat([past_chi, x.square().mean((0, 2, 3))[None]]).mean(0)  # χ̄_t, as in the forward
    std = torch.sqrt(var + eps)                                            # √(χ̄_t + ε)
    r = (std / torch.sqrt(running_var + eps)).clamp(1 / r_max, r_max)      # r, as in the forward
    z = x / std[:, None, None]                                             # z = x / √(χ̄_t + ε)
    g = grad_out * (weight * r)[:, None, None]                             # g = dL/dy γ r
    psi = torch.cat([past_psi, (g * z).mean((0, 2, 3))[None]]).mean(0)     # Ψ_t = mean(g z); Ψ̄_t: mean of last S
    return (g - z * psi[:, None, None]) / std[:, None, None]               # dL/dx = (g - z Ψ̄_t) / √(χ̄_t + ε)


class MABN2d(nn.Module):
    """Moving average batch normalisation over (N, C, H, W) inputs (module docstring).

    Args:
        num_features: C.
        eps: added to the variance.
        momentum: weight of the OLD ``running_var`` in its update (0.98; BN's is 0.1 for the new).
        B: the batch size each layer sees in training (per GPU).
        real_B: the batch size to emulate; must be a multiple of ``B``. ``S = real_B // B``.
        warmup_iters: steps with batch statistics before the moving averages take over.
    """

    rank_local_buffers = True  # DDP must not broadcast them (module docstring, distributed training)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.98, B: int = 2,
                 real_B: int = 32, warmup_iters: int = 100, device=None, dtype=None) -> None:
        super().__init__()
        if B <= 0 or real_B <= 0 or real_B % B:
            raise ValueError(f"real_B must be a positive multiple of B, got B={B}, real_B={real_B}")
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum (weight of the old running_var) must be in [0, 1], got {momentum}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.B, self.real_B, self.warmup_iters = B, real_B, warmup_iters
        self.window = real_B // B
        self.first_average_iter = max(self.window + 1, warmup_iters)
        self.frozen_r_iters = max(R_FROZEN_ITERS, warmup_iters)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(num_features, **factory))
        self.bias = nn.Parameter(torch.empty(num_features, **factory))
        self.register_buffer("running_var", torch.empty(num_features, **factory))
        self.register_buffer("iters", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("buffer_x2", torch.empty(self.window, num_features, **factory))
        self.register_buffer("buffer_gz", torch.empty(self.window, num_features, **factory))
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        self.running_var.fill_(1)
        self.iters.zero_()
        self.buffer_x2.zero_()
        self.buffer_gz.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"MABN2d({self.num_features}) expects (N, {self.num_features}, H, W) "
                             f"input, got shape {tuple(x.shape)}")
        if not self.training:
            zero = torch.zeros_like(self.running_var)
            return F.batch_norm(x, zero, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        if x.numel() == 0:  # BN's backward kernel divides by zero on it: SIGFPE, not an exception
            raise ValueError(f"MABN2d({self.num_features}) got an empty input of shape {tuple(x.shape)} in "
                             "training mode: its statistics need at least one value per channel. Skip empty "
                             "batches, or call the layer in eval mode (.eval()).")
        self.iters.add_(1)
        return MABNFunction.apply(x, self.weight, self.bias, self)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, B={self.B}, "
                f"real_B={self.real_B}, window={self.window}, warmup_iters={self.warmup_iters}")


def reference_cenconv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1,
                      padding=0, dilation=1, groups: int = 1) -> torch.Tensor:
    """Weight centralisation (Yan et al., ICLR 2020, the convolution MABN needs) written out: every
    filter minus its mean over (in, kh, kw), recomputed in each forward, then a plain convolution.
    """
    centred = weight - weight.mean((1, 2, 3), keepdim=True)               # W̃_o = W_o - mean(W_o), every forward
    return F.conv2d(x, centred, bias, stride, padding, dilation, groups)  # y = W̃ * x + b


class CenConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose filters are centred in every forward: ``W - mean_{in,kh,kw}(W)``.

    Bias is off by default (the following MABN2d has one); init is He-normal (fan_out, ReLU).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = False,
                 padding_mode: str = "zeros", device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, device, dtype)

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def centred_weight(self) -> torch.Tensor:
        return self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.centred_weight(), self.bias)


@register_norm("mabn")
def mabn(num_features: int, eps: float = 1e-5, momentum: float = 0.98, B: int | None = None, real_B: int = 32,
         warmup_iters: int = 100, norm_batch: int | None = None) -> nn.Module:
    """MABN2d for a training batch of ``B`` (2 by default: the paper's headline). With
    ``norm_batch``, MABN over groups of that many images of a larger SGD batch, each group one of
    its steps (:mod:`attnlib.layers.ghost`): ``B`` is then ``norm_batch``."""
    if norm_batch is not None and B not in (None, norm_batch):
        raise ValueError(f"B is the batch one MABN step sees: with norm_batch={norm_batch} it is {norm_batch}, "
                         f"not {B}; leave B out")
    B = B if B is not None else norm_batch or 2
    return ghost(MABN2d(num_features, eps, momentum, B, real_B, warmup_iters), norm_batch)
register_conv("cenconv", stem=True, shortcut=True)(CenConv2d)
