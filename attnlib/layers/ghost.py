"""Normalisation over small groups of a training batch ("ghost" batches).

A small normalisation batch and a small SGD batch are two different things. The MABN paper
measures the first: its ImageNet results "simulate the small batch training settings by using
small normalization batch size and regular SGD batch size" (official README), i.e. statistics
over groups of 2 images inside an SGD batch of 32 per GPU. Training with a real SGD batch of 2
changes the learning rate, the number of steps and the gradient noise as well. Hoffer et al.
(2017, "Train longer, generalize better") call such groups *ghost batches*.

:class:`GhostNorm` gives any batch norm this setting: in training mode it normalises each group
of ``norm_batch`` consecutive images of the batch on its own, one call of the wrapped norm per
group, in order; in eval mode it is the wrapped norm itself (running statistics). So:

* a ``BatchNorm2d`` or :class:`~attnlib.layers.iebn.IEBN2d` sees groups of ``norm_batch``
  images; its running statistics take one momentum update per group;
* an :class:`~attnlib.layers.mabn.MABN2d` built for ``B = norm_batch`` takes every group as one
  of its steps: its window of ``S = real_B / B`` steps then spans the last S groups (32 images
  for B = 2), and its step counter (warm-up, frozen r) counts groups. This is the formal
  ``MABN.py`` at batch B, with the parameters updated once per SGD batch: the statistics of the
  official ``cls/`` variant (which averages each group with the 15 groups before it), not its
  counters (``cls/`` counts SGD steps).

The registered norms take it as an option: ``norm=("bn", {"norm_batch": 2})``,
``("iebn", {"norm_batch": 16})``, ``("mabn", {"norm_batch": 2})``.
"""
from __future__ import annotations

import torch
from torch import nn


class GhostNorm(nn.Module):
    """``norm`` applied to each group of ``norm_batch`` images of a training batch (module docstring).

    The training batch must split into whole groups (the book's loader drops the last, partial
    batch of an epoch). The wrapped module is ``self.norm``; its state_dict keys are under ``norm.``.
    """

    def __init__(self, norm: nn.Module, norm_batch: int) -> None:
        super().__init__()
        if isinstance(norm_batch, bool) or not isinstance(norm_batch, int) or norm_batch < 1:
            raise ValueError(f"norm_batch must be a whole number of images >= 1, got {norm_batch!r}")
        self.norm, self.norm_batch = norm, norm_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] == self.norm_batch:
            return self.norm(x)
        if x.shape[0] % self.norm_batch:
            raise ValueError(f"a training batch of {x.shape[0]} images does not split into groups of "
                             f"norm_batch={self.norm_batch}; use a batch size that is a multiple of it")
        return torch.cat([self.norm(group) for group in x.split(self.norm_batch)])

    def extra_repr(self) -> str:
        return f"norm_batch={self.norm_batch}"


def ghost(norm: nn.Module, norm_batch: int | None) -> nn.Module:
    """``norm`` itself when ``norm_batch`` is None (statistics over the whole batch), else wrapped."""
    return norm if norm_batch is None else GhostNorm(norm, norm_batch)
