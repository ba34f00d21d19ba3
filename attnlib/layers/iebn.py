"""IEBN: Instance Enhancement Batch Normalization (Liang et al., AAAI 2020, arXiv 1908.04008).

Official code: gbup-group/IEBN, class ``BAN2d`` in ``models/cifar/iebn_resnet.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .batch_noise import NoisyStatistics
from .functional import sum_hw_product
from .ghost import ghost
from .registry import register_norm


def reference_iebn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, weight_readjust: torch.Tensor,
                   bias_readjust: torch.Tensor, eps: float, running_mean: torch.Tensor | None = None,
                   running_var: torch.Tensor | None = None) -> torch.Tensor:
    """IEBN (Liang et al., "Instance Enhancement Batch Normalization", AAAI 2020) written out: batch norm
    whose scale γ is multiplied, per sample and channel, by a sigmoid gate of the input's spatial mean.

    ``weight``, ``bias`` are γ, β and ``weight_readjust``, ``bias_readjust`` the gate's w, b, all (C,).
    Batch statistics (training) unless ``running_mean`` and ``running_var`` are given (eval mode).
    Comments use the symbols of the chapter's Math section. Where the paper's text leaves a choice
    (what is pooled, whether β is gated) this follows the official code, as :class:`IEBN2d` does;
    the layer computes the same in one fused autograd function, and the tests hold the two equal.
    """
    mean = x.mean((0, 2, 3)) if running_mean is None else running_mean            # BN: μ_c over (N, H, W)
    var = x.var((0, 2, 3), correction=0) if running_var is None else running_var  # BN: σ²_c, biased
    x_hat = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + eps)      # BN: x̂ = (x - μ) / √(σ² + ε)
    pooled = x.mean((2, 3))                                                       # GAP(x), not GAP(x̂): official code
    gate = torch.sigmoid(weight_readjust * pooled + bias_readjust)                # δ_nc = sigmoid(w_c GAP(x)_nc + b_c)
    return x_hat * (weight * gate)[:, :, None, None] + bias[:, None, None]        # y = x̂ γ δ + β, β ungated (official)


class IEBN2d(nn.BatchNorm2d):
    r"""Batch norm whose scale is modulated per instance and channel by a sigmoid gate.

    .. math::

        \hat x = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}, \qquad
        g_{n,c} = \operatorname{sigmoid}\bigl(w_c \cdot \operatorname{GAP}(x)_{n,c} + b_c\bigr), \qquad
        y = \hat x \cdot (\gamma_c \, g_{n,c}) + \beta_c

    ``mu`` and ``sigma^2`` are the batch mean and biased variance in training and the running
    estimates in eval mode, exactly as in :class:`torch.nn.BatchNorm2d` (same ``momentum``
    convention, ``momentum=None`` for a cumulative average, ``num_batches_tracked``,
    ``track_running_stats``). ``GAP`` is the global average pool of the layer's *input* ``x``
    (per sample, per channel), so the gate sees instance information that the batch
    statistics wash out. ``w`` and ``b`` are the two extra per-channel parameters
    ``weight_readjust`` and ``bias_readjust``: ``2 * num_features`` parameters more than
    ``BatchNorm2d``.

    It is a drop-in for ``nn.BatchNorm2d`` (same arguments, same buffers, ``weight``/``bias``
    of shape ``(C,)``), e.g. ``torchvision.models.resnet18(norm_layer=IEBN2d)``.

    What follows the official code rather than the paper's text, and what differs from both:

    * **Where the gate acts.** The paper describes the sigmoid output as a coefficient that
      recalibrates BN's *scale* parameter in the reparameterisation step (``gamma -> gamma * g``).
      The official ``BAN2d`` computes ``bn_w = weight * attention`` and ``x_hat * bn_w + bias``, and
      so does this layer: ``x_hat * (gamma * g) + beta``. Applying the gate to ``x_hat`` first
      and then BN's affine, ``(x_hat * g) * gamma + beta``, is the same function up to
      rounding; what matters is that ``beta`` is added after the gate and is not gated.
    * **What is pooled.** The official code pools the layer's input ``x``, not the normalised
      ``x_hat``; so does this layer (why it matters is the chapter's lab question). Gradients
      flow through ``GAP(x)`` (nothing is detached), as in the official code.
    * **Initialisation.** As in the official code: ``gamma = 1``, ``beta = 0``, ``w = 0``,
      ``b = -1``, so every gate starts at ``sigmoid(-1) ~ 0.269`` and a fresh IEBN2d is
      ``BatchNorm2d(affine=False)`` times ``sigmoid(-1)``: IEBN starts with a smaller
      effective ``gamma`` than BN.
    * **Parameter shapes.** The official code stores all four parameters as ``(1, C, 1, 1)``
      and passes ``affine=False`` to ``_BatchNorm``; here they are ``(C,)`` so that
      ``weight``/``bias`` keep ``BatchNorm2d``'s state_dict keys and shapes (reshape to load
      an official checkpoint). ``affine=False`` drops ``gamma``/``beta`` only; the gate
      parameters always exist, since they are the method.
    * **Running statistics.** The official forward passes ``self.momentum`` straight to
      ``F.batch_norm`` and never increments ``num_batches_tracked``, so ``momentum=None``
      does not work there; this layer follows ``BatchNorm2d`` exactly.
    * **Shortcuts.** The official ResNets keep a plain ``nn.BatchNorm2d`` after the 1x1
      projection of a downsampling shortcut; the registered ``"iebn"`` norm does the same
      (``shortcut="bn"``). The stem norm and every norm inside a block are IEBN2d, as in the
      official code.

    On the CPU the forward and backward are one autograd function, :class:`IEBNFunction`
    (no double backward); on GPUs, ``F.batch_norm`` without affine and one multiply-add.

    Caveat: this class subclasses ``BatchNorm2d``, so code that rewrites every ``_BatchNorm``
    (``nn.SyncBatchNorm.convert_sync_batchnorm``) would silently replace it by a plain BN.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None,
                 **kwargs) -> None:
        # kwargs: keyword-only BatchNorm2d options of newer torch (``bias=False`` in 2.14).
        if not eps > 0:  # rsqrt(var + eps) of a constant channel would be inf, then NaN
            raise ValueError(f"IEBN2d eps={eps!r}: eps must be > 0 (it keeps 1 / sqrt(var + eps) finite); "
                             "the default is 1e-5")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype,
                         **kwargs)
        factory = {"device": device, "dtype": dtype}
        self.weight_readjust = nn.Parameter(torch.empty(num_features, **factory))
        self.bias_readjust = nn.Parameter(torch.empty(num_features, **factory))
        self.reset_gate_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()  # running stats, gamma = 1, beta = 0
        if hasattr(self, "weight_readjust"):  # BatchNorm's __init__ calls this before they exist
            self.reset_gate_parameters()

    def reset_gate_parameters(self) -> None:
        nn.init.zeros_(self.weight_readjust)
        nn.init.constant_(self.bias_readjust, -1.0)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The gate ``sigmoid(w * GAP(x) + b)`` of input ``x``, shape ``(N, C, 1, 1)``, in the parameters' dtype.

        ``GAP`` is a sum in ``x``'s dtype (accumulated in fp32 by the kernel) and a division of
        the small result: on the CPU, ``mean`` of a bf16 map first copies the whole map to fp32.
        """
        h, w = x.shape[-2:]
        weight = self.weight_readjust.view(1, -1, 1, 1)
        bias = self.bias_readjust.view(1, -1, 1, 1)
        return torch.sigmoid(torch.addcmul(bias, x.sum((2, 3), keepdim=True), weight, value=1.0 / (h * w)))

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"IEBN2d({self.num_features}) expects (N, {self.num_features}, H, W) input, "
                             f"got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        # Running-statistics bookkeeping exactly as nn.BatchNorm2d.forward.
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        use_running = not self.training or self.track_running_stats
        running_mean = self.running_mean if use_running else None
        running_var = self.running_var if use_running else None

        if x.device.type == "cpu":
            return IEBNFunction.apply(x, self.weight, self.bias, self.weight_readjust, self.bias_readjust,
                                      running_mean, running_var, batch_stats, factor, self.eps)

        # Half precision (autocast) and other devices: batch_norm without affine, then one
        # multiply-add with (N, C, 1, 1) factors cast to the normalised map's dtype.
        x_hat = F.batch_norm(x, running_mean, running_var, None, None, batch_stats, factor, self.eps)
        scale = self.gate(x)
        if self.weight is not None:
            scale = scale * self.weight.view(1, -1, 1, 1)
        scale = scale.to(x_hat.dtype)
        if self.bias is None:
            return x_hat * scale
        return torch.addcmul(self.bias.to(x_hat.dtype).view(1, -1, 1, 1), x_hat, scale)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", gate=sigmoid(weight_readjust * GAP(x) + bias_readjust)"


class IEBNFunction(torch.autograd.Function):
    r"""IEBN's forward and backward with about the passes over the feature map of a BatchNorm2d.

    Composed of library ops, autograd materialises ``x_hat``, ``g * scale``, ``g * x_hat``, the
    mean's expanded gradient and their sum, each a full-size pass over the map. But everything
    except a few reductions is per (sample, channel):

    forward   ``y = x * A + B`` with ``A = gamma * gate * invstd`` and ``B = beta - mean * A``
              of shape (N, C): one pass after the batch statistics and the per-sample means;
    backward  with ``Sg = sum_hw g`` and ``Sgx = sum_hw g * x`` per (n, c), every parameter
              gradient is a small tensor, and ``dx = g * A + x * Q + R`` (two passes), where
              ``Q`` (per channel) and ``R`` (per sample and channel) carry BatchNorm's
              batch-statistics terms and the gradient through ``GAP(x)``.

    With ``s = gamma * gate``, ``ds = sum_hw g * x_hat = invstd * (Sgx - mean * Sg)``:
    ``dbeta = sum_n Sg``, ``dgamma = sum_n ds * gate``, ``dz = ds * s * (1 - gate)`` (through
    the sigmoid), ``dw = sum_n dz * GAP(x)``, ``db = sum_n dz``, and BatchNorm's
    ``dx = invstd * (dxh - mean(dxh) - x_hat * mean(dxh * x_hat))`` with ``dxh = g * s``,
    whose two means are ``sum_n s * Sg / M`` and ``sum_n s * ds / M`` (``M = N * H * W``).
    Checked against autograd of the composed formula by ``gradcheck`` in the tests.

    The map stays in its dtype (bf16 under autocast); the per-channel factors and statistics
    are fp32; where its time goes on the CPU is at the end of the benchmark page. On GPUs
    :class:`IEBN2d` computes ``GAP`` as a sum in ``x``'s dtype and the gate on the small
    ``(N, C, 1, 1)`` tensor, then one ``torch.addcmul``: no full-size fp32 copy of the feature
    map, and channels_last is kept.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, weight_readjust, bias_readjust, running_mean, running_var,
                batch_stats: bool, momentum: float, eps: float):
        n, c, h, w = x.shape
        if batch_stats:
            if n * h * w == 1:
                raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
            # batch mean and biased variance; updates the running buffers as F.batch_norm does
            mean, var = torch.batch_norm_update_stats(x, running_mean, running_var, momentum)
        else:
            mean, var = running_mean, running_var
        invstd = torch.rsqrt(var + eps)                                       # small factors: fp32 at least
        pooled = x.sum((2, 3)).to(invstd.dtype) / (h * w)                     # GAP(x), (N, C); no fp32 copy of x
        gate = torch.sigmoid(torch.addcmul(bias_readjust, pooled, weight_readjust))
        scale = gate if weight is None else gate * weight                     # gamma * gate
        a = scale * invstd
        b = -mean * a if bias is None else torch.addcmul(bias, mean, a, value=-1)
        ctx.save_for_backward(x, a, gate, scale, pooled, mean, invstd, weight_readjust)
        ctx.batch_stats = batch_stats
        return torch.addcmul(b.to(x.dtype)[:, :, None, None], x, a.to(x.dtype)[:, :, None, None])

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, a, gate, scale, pooled, mean, invstd, weight_readjust = ctx.saved_tensors
        n, c, h, w = x.shape
        sg = g.sum((2, 3)).to(a.dtype)                                        # (N, C)
        ds = torch.addcmul(sum_hw_product(g, x, a.dtype), sg, mean, value=-1).mul_(invstd)  # sum_hw g * x_hat
        dz = ds * scale * (1 - gate)                                          # d loss / d (w * GAP + b)
        parts = [sg, ds * gate, dz * pooled, dz]
        if ctx.batch_stats:
            parts += [a * sg, a * ds]
        sums = torch.stack(parts).sum(1)                                      # sums over the batch
        d_bias, d_weight, d_wr, d_br = sums[0], sums[1], sums[2], sums[3]
        dx = None
        if ctx.needs_input_grad[0]:
            r = dz * (weight_readjust / (h * w))                              # through GAP(x)
            if ctx.batch_stats:                                               # through mean and var
                u, v = sums[4] / (n * h * w), sums[5] / (n * h * w)
                q = -invstd * v
                r = r.sub_(u).add_(mean * invstd * v)
                dx = torch.addcmul(r.to(x.dtype)[:, :, None, None], x, q.to(x.dtype)[None, :, None, None])
                dx.addcmul_(g, a.to(x.dtype)[:, :, None, None])
            else:
                dx = torch.addcmul(r.to(x.dtype)[:, :, None, None], g, a.to(x.dtype)[:, :, None, None])
        need = ctx.needs_input_grad  # False for None inputs (affine=False, bias=False)
        return (dx, d_weight if need[1] else None, d_bias if need[2] else None, d_wr if need[3] else None,
                d_br if need[4] else None, None, None, None, None, None)


class NoisyIEBN2d(NoisyStatistics, IEBN2d):
    """:class:`IEBN2d` under the same attack: ``y = x_hat~ * (gamma * gate) + beta``, the gate
    computed from the clean input as always; in eval mode a plain ``IEBN2d``."""

    def _attacked(self, x: torch.Tensor, x_hat: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        scale = self.gate(x).flatten(1)                                       # (N, C)
        if self.weight is not None:
            scale = scale * self.weight                                       # gamma * gate
        shift = b * scale if self.bias is None else torch.addcmul(self.bias, b, scale)  # y = scale (a x_hat + b) + beta
        dtype = x_hat.dtype
        return torch.addcmul(shift.to(dtype)[:, :, None, None], x_hat, (a * scale).to(dtype)[:, :, None, None])


@register_norm("iebn", shortcut="bn")
def iebn(num_features: int, eps: float = 1e-5, momentum: float = 0.1, norm_batch: int | None = None,
         noise: float = 0.0) -> nn.Module:
    """IEBN2d in blocks and the stem; the projection shortcuts keep a plain BatchNorm2d (official
    code). With ``norm_batch``, over groups of that many images of a training batch; with
    ``noise``, under the noise attack on the batch statistics (:class:`NoisyIEBN2d`); both
    options reach the shortcuts' BatchNorm2d too."""
    if noise:
        return ghost(NoisyIEBN2d(num_features, eps, momentum, noise=noise), norm_batch)
    return ghost(IEBN2d(num_features, eps, momentum), norm_batch)


@torch.no_grad()
def iebn_gates(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The gates ``sigmoid(w * GAP(x) + b)`` of every IEBN2d in ``model`` for ``images``.

    Returns ``{module name: (N, C) tensor}`` for one eval-mode forward pass without
    gradients, collected with forward hooks that are removed afterwards; the model's
    train/eval mode is restored.
    """
    gates: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name: str):
        def record(module: IEBN2d, inputs: tuple, output: torch.Tensor) -> None:
            gates[name] = module.gate(inputs[0]).flatten(1).float().cpu()
        return record

    for name, module in model.named_modules():
        if isinstance(module, IEBN2d):
            handles.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        model(images.to(param.device) if param is not None else images)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return gates
