"""A noise attack on the batch statistics of BatchNorm and IEBN, for IEBN's claim.

IEBN's paper calls the disturbance that normalising with a batch's statistics brings to each
image *batch noise*, and supports its title claim ("an adaptive regulator of batch noise")
with noise attacks during training. The attack here is the book's own, not the paper's
protocol. In training, each layer normalises with batch statistics that are wrong by a
random amount drawn afresh at every step, per channel:

    mu~ = mu + s * sigma * e1,    sigma~ = sigma * exp(s * e2),    e1, e2 ~ N(0, 1),

where sigma = sqrt(var + eps), so that x_hat becomes (x - mu~) / sigma~ = (x_hat - s e1) exp(-s e2):
a random shift and scale of every channel, shared by the whole batch, of strength ``s``. Each
layer updates its running statistics with its true batch statistics and eval mode is
untouched; but in a network a layer's input has passed through the attacked layers before it,
so its running statistics carry the last steps' disturbances into evaluation.
:func:`attnlib.train.recompute_bn_statistics` measures them again with the attack paused, and
the test accuracy then says what training under the noise did to the weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def noise_factors(channels: int, strength: float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` of shape (C,) with ``x_hat~ = a * x_hat + b`` (module docstring): ``e1`` then
    ``e2`` drawn in fp32 from torch's random stream, so a seeded run draws the same noise in
    any precision; computed in fp32 at least (fp64 for an fp64 ``like``)."""
    dtype = torch.promote_types(like.dtype, torch.float32)
    e1 = torch.randn(channels, device=like.device, dtype=torch.float32).to(dtype)
    e2 = torch.randn(channels, device=like.device, dtype=torch.float32).to(dtype)
    a = torch.exp(-strength * e2)
    return a, -strength * e1 * a


class NoisyStatistics:
    """A mixin, before a ``_BatchNorm`` subclass, adding the attack of strength ``noise``: the
    subclass gives ``_attacked(x, x_hat, a, b)``, its output for the perturbed ``a * x_hat + b``.
    In eval mode, or with ``noise=0``, the layer is its base class unchanged."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, *,
                 noise: float = 0.0, **kwargs) -> None:
        super().__init__(num_features, eps, momentum, **kwargs)
        if isinstance(noise, bool) or not (isinstance(noise, (int, float)) and 0 <= noise < float("inf")):
            raise ValueError(f"noise={noise!r}: the attack's strength must be a finite number >= 0")
        self.noise = noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.noise:
            return super().forward(x)
        self._check_input_dim(x)
        a, b = noise_factors(self.num_features, self.noise, x)
        return self._attacked(x, self._normalised(x), a, b)

    def _normalised(self, x: torch.Tensor) -> torch.Tensor:
        """x_hat with the true batch statistics, which update the running ones as in BatchNorm2d."""
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        return F.batch_norm(x, self.running_mean, self.running_var, None, None, True, factor, self.eps)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", noise={self.noise:g}"
