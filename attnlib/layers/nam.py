"""NAM: attention weights read from a batch norm's own scale factors.

Paper: Yichao Liu, Zongru Shao, Yueyang Teng and Nico Hoffmann, "NAM: Normalization-based
Attention Module", arXiv:2111.12419 (NeurIPS 2021 workshop ImageNet PPF).
Official code: github.com/Christian-lyc/NAM.

Channel module (paper eq. 2), on a feature map ``x`` of shape (N, C, H, W)::

    BN(x) = gamma_c * (x - mu_c) / sqrt(var_c + eps) + beta_c
    w_c   = |gamma_c| / sum_j |gamma_j|          (one weight per channel, sums to 1)
    out   = sigmoid(w * BN(x)) * x

with ``mu_c, var_c`` over (N, H, W) and ``gamma, beta`` the BN's own affine pair: the module
adds no parameters beyond that BN.

Pixel (spatial) module (paper eq. 3): the same with the roles of channels and positions
swapped. Every position ``p = (h, w)`` is one "channel" of a BN over pixels::

    mu_p, var_p = mean and variance of x[:, :, h, w] over (N, C)
    BN_s(x)     = lambda_p * (x - mu_p) / sqrt(var_p + eps) + beta_p
    w_p         = |lambda_p| / sum_q |lambda_q|
    out         = sigmoid(w * BN_s(x)) * x

Loss with the sparsity penalty (paper eq. 4): ``loss + p * sum |gamma| + p * sum |lambda|``,
over the NAM scale factors only (:class:`attnlib.callbacks.NAMSparsityPenalty` over
:func:`nam_scale_sum`, ``p = 1e-4`` as in the paper).

What differs from the paper text and from the official code:

* **|gamma|.** The paper writes ``gamma_i / sum_j gamma_j``; the official code (and this
  file) takes absolute values, so the weights stay positive and sum to one when some
  gamma turn negative.
* **Detached weights.** The official code reads ``bn.weight.data``, so ``w`` is a constant
  for autograd; ``detach_weights=True`` (the default) does the same: gamma then gets its
  gradient only through BN(x)'s scaling, ``dL/dgamma_c = w_c * sum(dL/dz * x_hat)``.
  With ``detach_weights=False`` the gradient also flows through ``w`` (the paper's
  equations, read literally), which couples every channel's gamma to all the others.
* **Pixel module.** Eq. 3 says only that BN is applied "to the spatial dimension". We
  read it as above: statistics per position over (N, C), one learnable ``lambda_p`` and
  ``beta_p`` per position, exactly what the official code's first upload computed
  (``BatchNorm1d(H*W)`` on a permuted (N, H*W, C) copy; it was switched off by default,
  then commented out and deleted, so the released code is channel-only). Here the
  statistics are reductions over dims (0, 1) and the normalisation is one broadcast
  ``x * scale + shift`` with (H, W) tensors: no permute, no copy of the feature map.
* **Lazy size.** The number of positions differs per stage and per dataset, and the
  attention factory only knows the channel count, so the pixel module creates its
  (H, W)-shaped parameters and running statistics on its first forward (torch's
  ``LazyModuleMixin``, like ``nn.LazyBatchNorm1d``), then checks that later inputs have
  that size. ``.to()`` (device, dtype, memory format) and building an optimiser work
  before that forward (the parameters are filled in place); counting parameters, or
  reading them, raises until it has run.
* **Penalty.** The official script adds ``s * sign(gamma)`` to the gradients of modules
  it finds by attribute name (``layer1`` ... ``layer4``) on the top-level module. The
  model is wrapped in ``DataParallel`` first, so the lookup matches nothing and the
  penalty silently does nothing. :class:`attnlib.callbacks.NAMSparsityPenalty` is a loss term (gradient
  ``strength * sign(gamma)``, the same update) that finds the modules by type, and fails
  loudly when there are none.
* **Init.** gamma = lambda = 1, so ``w = 1/C`` (or ``1/(H*W)``) and ``z = BN(x) / C``: the
  gate starts close to sigmoid(0) = 0.5 everywhere, halving the residual branch, and
  moves away from it only where a scale factor grows large enough to carry much of the
  weight. This is the paper's design, kept as is.

Speed: the channel weight is folded into the BN's affine pair (``BN(x; w*gamma, w*beta)``
equals ``w * BN(x)``), so the module costs one fused BN, one sigmoid and one product, in
the activation's memory format and dtype: its extra time is that BN, the sigmoid and the
product. ``python -m attnlib.bench`` times a training step against the plain network's, and
the chapter's *Cost* section shows the measurement.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from .registry import register_attention


def _normalised_abs(scale: torch.Tensor, detach: bool) -> torch.Tensor:
    """``|scale| / sum |scale|``, optionally cut from the autograd graph."""
    magnitude = scale.detach().abs() if detach else scale.abs()
    # all-zero scales (an L1 penalty can drive them there) give zero weights, not 0/0 = NaN
    return magnitude / magnitude.sum().clamp_min(torch.finfo(magnitude.dtype).tiny)


def reference_nam_channel(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float,
                          running_mean: torch.Tensor | None = None, running_var: torch.Tensor | None = None,
                          detach_weights: bool = True) -> torch.Tensor:
    """NAM's channel module (Liu et al., "NAM: Normalization-based Attention Module", 2021) written out:
    x times a sigmoid of its batch norm, each channel weighted by its share of the BN scales |γ|.

    ``gamma``, ``beta`` (C,) are the BN's affine pair; batch statistics unless ``running_mean`` and
    ``running_var`` are given (eval). As :class:`NAMChannelAttention`: |γ| in the weights and w a
    constant for autograd (``detach_weights``), both the official code's (the paper writes γ_c / Σ_j γ_j);
    zero weights, not 0/0, when every γ is 0. The paper's M_c is the gate; the module returns M_c ⊙ x.
    """
    scale = gamma.detach() if detach_weights else gamma                           # w from gamma.data (official code)
    w = scale.abs() / scale.abs().sum().clamp_min(torch.finfo(scale.dtype).tiny)  # Eq. (2): w_c = |γ_c| / Σ_j |γ_j|
    mean = x.mean((0, 2, 3)) if running_mean is None else running_mean            # Eq. (1): μ_c over (N, H, W)
    var = x.var((0, 2, 3), correction=0) if running_var is None else running_var  # Eq. (1): σ²_c, biased
    x_hat = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + eps)      # Eq. (1): x̂ = (x - μ) / √(σ² + ε)
    bn = gamma[:, None, None] * x_hat + beta[:, None, None]                       # Eq. (1): BN(x) = γ x̂ + β
    return torch.sigmoid(w[:, None, None] * bn) * x                               # Eq. (2): sigmoid(W_γ(BN(x))) ⊙ x


def _check_input(module: nn.Module, x: torch.Tensor) -> None:
    """``x`` must be (N, C, H, W) with the C ``module`` was built for."""
    if x.dim() != 4 or x.shape[1] != module.channels:
        raise ValueError(f"{type(module).__name__}({module.channels}) expects (N, {module.channels}, H, W) "
                         f"inputs, got shape {tuple(x.shape)}")


class NAMChannelAttention(nn.Module):
    """``sigmoid(w * BN(x)) * x`` with ``w = |gamma| / sum |gamma|`` from the BN's own gamma."""

    def __init__(self, channels: int, detach_weights: bool = True, eps: float = 1e-5,
                 momentum: float = 0.1, device=None, dtype=None) -> None:
        super().__init__()
        self.channels = channels
        self.detach_weights = detach_weights
        self.bn = nn.BatchNorm2d(channels, eps=eps, momentum=momentum, affine=True, device=device, dtype=dtype)

    @property
    def scale(self) -> nn.Parameter:
        """The scale factors gamma (the BN's weight), the target of the sparsity penalty."""
        return self.bn.weight

    def weights(self) -> torch.Tensor:
        """The per-channel attention weights ``w`` (shape (C,), sum 1)."""
        return _normalised_abs(self.bn.weight, self.detach_weights)

    def reset_parameters(self) -> None:
        self.bn.reset_parameters()

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The paper's M_c: ``sigmoid(w * BN(x))``, the factor each element of ``x`` is multiplied by."""
        _check_input(self, x)
        bn, w = self.bn, self.weights()
        if bn.training:
            bn.num_batches_tracked.add_(1)  # as nn.BatchNorm2d does; momentum is fixed
        z = F.batch_norm(x, bn.running_mean, bn.running_var, w * bn.weight, w * bn.bias,
                         bn.training, bn.momentum, bn.eps)
        return torch.sigmoid(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(x) * x

    def extra_repr(self) -> str:
        return f"{self.channels}, detach_weights={self.detach_weights}"


class _UninitializedBuffer(UninitializedBuffer):
    """torch's ``UninitializedBuffer`` with a ``__deepcopy__``, so that a model whose pixel
    modules have not run yet can be deep-copied (``UninitializedParameter`` already can)."""

    def __deepcopy__(self, memo: dict) -> _UninitializedBuffer:
        if id(self) not in memo:
            memo[id(self)] = type(self)(device=self.device, dtype=self.dtype)
        return memo[id(self)]


def reference_nam_spatial(x: torch.Tensor, lam: torch.Tensor, beta: torch.Tensor, eps: float,
                          running_mean: torch.Tensor | None = None, running_var: torch.Tensor | None = None,
                          detach_weights: bool = True) -> torch.Tensor:
    """NAM's pixel module (Liu et al., 2021, Eq. (3)) written out: the channel module with positions in the
    roles of channels, a BN per position (H, W) over (N, C) whose scales λ give the weights.

    ``lam``, ``beta`` are (H, W); batch statistics unless ``running_mean``/``running_var`` are given.
    The paper only says BN is applied "to the spatial dimension"; this follows the book's reading
    (:class:`NAMSpatialAttention`, the official code's first upload), with |λ| and w detached as above.
    """
    scale = lam.detach() if detach_weights else lam                               # w from lambda.data (official code)
    w = scale.abs() / scale.abs().sum().clamp_min(torch.finfo(scale.dtype).tiny)  # Eq. (3): w_p = |λ_p| / Σ_q |λ_q|
    mean = x.mean((0, 1)) if running_mean is None else running_mean               # Eq. (3), BN_s: μ_p over (N, C)
    var = x.var((0, 1), correction=0) if running_var is None else running_var     # Eq. (3), BN_s: σ²_p, biased
    bn = lam * (x - mean) / torch.sqrt(var + eps) + beta                          # Eq. (3): BN_s(x) = λ x̂ + β
    return torch.sigmoid(w * bn) * x                                              # Eq. (3): sigmoid(W_λ(BN_s(x))) ⊙ x


class NAMSpatialAttention(LazyModuleMixin, nn.Module):
    """``sigmoid(w * BN_s(x)) * x``: a BN over pixels (statistics per position over (N, C)),
    ``w = |lambda| / sum |lambda|`` from its per-position scale ``lambda``.

    Parameters ``weight`` (lambda) and ``bias`` (beta) and the running statistics have the
    shape (H, W) of the first input; they are created by that first forward.
    """

    cls_to_become = None  # stays this class after materialisation

    def __init__(self, channels: int, detach_weights: bool = True, eps: float = 1e-5,
                 momentum: float = 0.1, device=None, dtype=None) -> None:
        super().__init__()
        self.channels = channels
        self.detach_weights = detach_weights
        self.eps = eps
        self.momentum = momentum
        factory = {"device": device, "dtype": dtype}
        self.weight = UninitializedParameter(**factory)
        self.bias = UninitializedParameter(**factory)
        self.register_buffer("running_mean", _UninitializedBuffer(**factory))
        self.register_buffer("running_var", _UninitializedBuffer(**factory))

    @property
    def scale(self) -> nn.Parameter:
        """The scale factors lambda, one per position, the target of the sparsity penalty."""
        return self.weight

    def weights(self) -> torch.Tensor:
        """The per-position attention weights ``w`` (shape (H, W), sum 1)."""
        return _normalised_abs(self.weight, self.detach_weights)

    def initialize_parameters(self, x: torch.Tensor) -> None:
        """Called by the lazy-module hook on the first forward: size everything as x's (H, W)."""
        if not self.has_uninitialized_params():  # already loaded from a state dict
            return
        _check_input(self, x)
        size = x.shape[-2:]
        with torch.no_grad():
            for tensor in (self.weight, self.bias, self.running_mean, self.running_var):
                tensor.materialize(size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.has_uninitialized_params():
            return  # reset on materialisation
        nn.init.ones_(self.weight), nn.init.zeros_(self.bias)
        nn.init.zeros_(self.running_mean), nn.init.ones_(self.running_var)

    def _apply(self, fn, recurse: bool = True):
        """Before materialisation, apply device and dtype moves to the empty placeholders.

        ``Module.to(memory_format=...)`` asks every tensor for ``dim()``, which torch's
        uninitialized tensors refuse; ``fit`` converts the model before its first forward.
        """
        if not self.has_uninitialized_params():
            return super()._apply(fn, recurse)
        for tensor in (*self._parameters.values(), *self._buffers.values()):
            tensor.data = fn(torch.empty(0, device=tensor.device, dtype=tensor.dtype))
        return self

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The paper's M_s: ``sigmoid(w * BN_s(x))``, the factor each element of ``x`` is multiplied by."""
        _check_input(self, x)
        if x.shape[-2:] != self.weight.shape:
            raise ValueError(f"{type(self).__name__} was sized for {tuple(self.weight.shape)} positions "
                             f"on its first input; got a {tuple(x.shape[-2:])} map")
        if self.training:
            mean, var = self._batch_stats(x)
        else:
            mean, var = self.running_mean, self.running_var
        # w * BN_s(x) = x * scale + shift, with (H, W) tensors broadcast over (N, C)
        w = self.weights()
        acc = torch.promote_types(x.dtype, torch.float32)  # fp32 statistics for low precision; fp64 stays fp64
        scale = w * self.weight * torch.rsqrt(var.to(acc) + self.eps)
        shift = w * self.bias - mean.to(acc) * scale
        z = torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))
        return torch.sigmoid(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(x) * x

    def _batch_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position mean and biased variance over (N, C); updates the running statistics."""
        n = x.shape[0] * x.shape[1]
        if n < 2:
            raise ValueError("NAMSpatialAttention needs more than one value per position in training "
                             f"(got N*C = {n})")
        var, mean = torch.var_mean(x, dim=(0, 1), correction=0)
        with torch.no_grad():
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(var.to(self.running_var.dtype) * (n / (n - 1)), self.momentum)
        return mean, var

    def extra_repr(self) -> str:
        size = "lazy" if self.has_uninitialized_params() else tuple(self.weight.shape)
        return (f"{self.channels}, spatial_size={size}, detach_weights={self.detach_weights}, "
                f"eps={self.eps}, momentum={self.momentum}")


class NAMAttention(nn.Module):
    """NAM as a block attention: channel module, then pixel module (either may be off).

    Called as ``module(x)`` (timm's ``attn_layer(channels)`` convention) or, inside the
    book's ResNet, ``module(x, bridges)``; ``bridges`` are ignored.
    """

    def __init__(self, channels: int, channel: bool = True, spatial: bool = False,
                 detach_weights: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        if not (channel or spatial):
            raise ValueError("NAMAttention needs the channel module, the spatial module, or both")
        factory = {"device": device, "dtype": dtype}
        self.channel = NAMChannelAttention(channels, detach_weights, **factory) if channel else None
        self.spatial = NAMSpatialAttention(channels, detach_weights, **factory) if spatial else None

    def forward(self, x: torch.Tensor, bridges: list[torch.Tensor] | None = None) -> torch.Tensor:
        if self.channel is not None:
            x = self.channel(x)
        if self.spatial is not None:
            x = self.spatial(x)
        return x


class ConstantScale(nn.Module):
    """The residual branch times a constant: the control for NAM. When NAM's weights end uniform
    (every w_c about 1/C), its gate is about sigmoid(0) = 0.5 for every input, and NAM amounts
    to halving the branch; this module does exactly that, with no parameter and no input
    dependence, so NAM against it measures what the attention adds beyond the rescale."""

    def __init__(self, channels: int, factor: float = 0.5) -> None:
        super().__init__()
        if not factor > 0:
            raise ValueError(f"factor must be positive, got {factor}")
        self.channels, self.factor = channels, factor

    def forward(self, x: torch.Tensor, bridges: list[torch.Tensor] | None = None) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"{self.channels}, factor={self.factor:g}"


@register_attention("scale")
def constant_scale(channels: int, bridge_channels: list[int], factor: float = 0.5) -> nn.Module:
    """NAM's control: the branch times ``factor`` (:class:`ConstantScale`)."""
    return ConstantScale(channels, factor)


@register_attention("nam")
def nam(channels: int, bridge_channels: list[int], channel: bool = True, spatial: bool = False,
        detach_weights: bool = True) -> nn.Module:
    """NAM in a block: the channel module (the paper's ResNet setting), the pixel module, or both."""
    return NAMAttention(channels, channel=channel, spatial=spatial, detach_weights=detach_weights)


_NAM_MODULES = (NAMChannelAttention, NAMSpatialAttention)


def _nam_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _NAM_MODULES)]


def nam_scale_sum(model: nn.Module) -> torch.Tensor | None:
    """``sum |s|`` over the scale factors ``s`` of every NAM module in ``model`` (gamma of
    channel modules, lambda of pixel modules), with gradients; ``None`` if it has none.

    Modules are found by type, so any wrapper (``DataParallel``, DDP, ``torch.compile``)
    works; the network's other BN layers are not included."""
    scales = [m.scale.reshape(-1) for _, m in _nam_modules(model)]
    return torch.cat(scales).abs().sum() if scales else None


def nam_scale_factors(model: nn.Module) -> dict[str, torch.Tensor]:
    """``|gamma|`` (channel modules, shape (C,)) or ``|lambda|`` (pixel modules, shape (H, W))
    of every NAM module, by module name, detached."""
    return {name: m.scale.detach().abs() for name, m in _nam_modules(model)}


@torch.no_grad()
def nam_gates(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The gates ``sigmoid(w * BN(.))`` that every NAM module of ``model`` applies to its input at test
    time (eval mode, running statistics) when the model runs on ``x``, by module name, each the shape
    of that module's input. Every module's mode is restored afterwards; nothing else changes."""
    modes, gates = {m: m.training for m in model.modules()}, {}
    hooks = [m.register_forward_hook(lambda m, args, out, name=name: gates.__setitem__(name, m.gate(args[0])))
             for name, m in _nam_modules(model)]
    try:
        model.eval()(x)
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.training = training
    return gates


def nam_channel_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The channel weights ``w = |gamma| / sum |gamma|`` of every channel module, by name."""
    return {name: m.weights().detach() for name, m in _nam_modules(model)
            if isinstance(m, NAMChannelAttention)}
