"""Dynamic convolution: attention over K convolution kernels.

Chen, Dai, Liu, Chen, Yuan and Liu, "Dynamic Convolution: Attention over Convolution
Kernels", CVPR 2020 (arXiv 1912.03458).

A dynamic layer keeps K expert kernels ``W_k`` (and biases ``b_k``) and mixes them per
sample with attention weights computed from the sample itself::

    pi(x)   = softmax(MLP(GAP(x)) / T)              # (K,), pi_k >= 0, sum_k pi_k = 1
    W~(x)   = sum_k pi_k(x) W_k,   b~(x) = sum_k pi_k(x) b_k
    y       = W~(x)^T x + b~(x)                     # one convolution with the mixed kernel

MLP is a squeeze-and-excitation style bottleneck: 1x1 conv to
``max(4, int(reduction * in_channels))`` hidden units, ReLU, 1x1 conv to K logits. There
is no BatchNorm in the attention branch (the paper's text has none): a BN there would make
each sample's attention depend on the rest of its batch in training, and the attention is
meant to be a function of the sample alone. The softmax temperature ``T`` starts high
(30: near-uniform attention, so every expert is trained early) and is annealed to 1 over
the first 10 epochs (:class:`attnlib.callbacks.TemperatureAnnealing`, which calls
:func:`set_temperature`).

The paper anneals T linearly. The logits are divided by T, so what the network feels is the
sharpness 1/T, and linear in T it grows slowly, then tenfold in the schedule's last third and
twofold in its last 1/29 (T from 2 to 1). On short schedules that last step outruns training:
measured here (ResNet-20, 12,000 Fashion-MNIST images, 30 -> 1 over 376 steps, seed 0), the
eval-mode accuracy on 2,000 *training* images fell from 0.81 to 0.31 at the end of the schedule
(test loss 4.2) and recovered an epoch later; with 1/T moving in equal steps
(``linear_in="1/T"``) the same steps gave 0.84, no dip, and the same accuracy after eight
epochs (test 0.888 against 0.891). In an earlier probe, re-estimating the BatchNorm statistics
of a collapsed network recovered little (9.5 -> 18 %) while the same weights at T = 2-30 gave
41-48 %: the weights lag the temperature, not only the running statistics.
``tests/test_dynamic_conv.py`` holds both schedules to this in a small network.

Two forward paths, equal because convolution is linear in its kernel
(``conv(x, sum_k pi_k W_k) = sum_k pi_k conv(x, W_k)``):

* ``"grouped"``: aggregate the kernels per sample and run ONE grouped convolution over the
  whole batch, the batch folded into the groups (input ``(1, B*Cin, H, W)``, kernel
  ``(B*Cout, Cin/g, kh, kw)``, ``groups = B*g``). Conv FLOPs as a static layer, plus the
  small ``(B, K) @ (K, Cout*Cin/g*kh*kw)`` aggregation.
* ``"branches"``: one dense convolution with all K experts stacked as output channels,
  then the per-sample weighted sum over K. K times the conv FLOPs, but a plain dense conv.
* ``"auto"`` (default): ``"branches"`` on the CPU for batches of 32 or more on maps of at
  most 64 pixels (8x8), ``"grouped"`` otherwise, and always on GPUs (not measured here).

  Measured on the book's 2-core Xeon (oneDNN, fp32, channels_last, K=4; one thread, CPU
  time of the thread, best of interleaved rounds, another training job running), one
  DynamicConv2d(64, 64, 3, padding=1), time of grouped / time of branches:

  ==========  =======  ================
  batch       forward  forward+backward
  ==========  =======  ================
  32, 7x7     1.13     1.07
  32, 14x14   0.42     0.48
  256, 7x7    1.99     1.64
  256, 14x14  0.71     0.70
  ==========  =======  ================

  Folding the batch into the groups costs 2-3.5x a plain conv's forward+backward on 14x14
  maps and 5-8x on 7x7 maps, where the K-branch form (about 4.8x) wins; at batch 8 on 7x7 the grouped form
  was still ahead (0.84), and 192 channels on 8x8 at batch 128 gave 1.40 for branches.
  A ResNet-20 train step (batch 128, 28x28, channels_last) took 2.2x the static network's
  with ``"auto"`` and 2.0-2.25x with ``"grouped"`` everywhere (within the noise), 3.5x with
  ``"branches"`` everywhere. At batch 1 the grouped form is a plain conv with the mixed
  kernel, so ``FlopCounterMode`` counts the paper's FLOPs there.

  A third form was measured and not kept: the per-sample convolution as one batched matrix
  product over unfolded patches, ``bmm(W~(x), im2col(x))``, whose products run on AMX in
  bf16. Time of forward+backward relative to a static conv of the same shape (bf16
  autocast, channels_last, batch 128, K=4, one thread, the training queue paused; two
  interleaved rounds, the second shown), at the five conv shapes of a ResNet-20 on 28x28:

  ==================  =======  ========  ===========  ===================
  Cin-Cout, map, s    grouped  branches  ``unfold``   shifted views + cat
  ==================  =======  ========  ===========  ===================
  16-16, 28x28, 1     3.42     4.11      11.3         11.1
  16-32, 28x28, 2     3.42     2.77      5.24         4.10
  32-32, 14x14, 1     2.90     3.85      10.4         7.24
  32-64, 14x14, 2     4.37     4.14      4.54         7.82
  64-64, 7x7, 1       3.50     2.19      3.45         5.64
  ==================  =======  ========  ===========  ===================

  The products themselves are cheap; building the patches (``F.unfold``, or the
  concatenated shifted channels_last views) and, in the backward, summing them back
  (``fold``, or the shifted adds) move 9x the map through memory. Only the stride-2 14x14
  layer came out ahead once (2.56 against 3.30 for grouped, first round) and not in the
  second.

What differs from the popular unofficial code (kaijieshi7/Dynamic-convolution-Pytorch,
``dynamic_conv.py``) and from timm's ``CondConv2d``:

* Experts are one 4-D parameter ``(K*Cout, Cin/g, kh, kw)``, not a 5-D one, so
  ``model.to(memory_format=torch.channels_last)`` works; activations are reshaped, never
  ``view``-ed, so channels_last inputs work too. (timm stores a 2-D ``(K, n)`` parameter.)
* The temperature is a tensor of the layer (an input, not a constant, to
  ``torch.compile``), changed with :func:`set_temperature`; in the unofficial code and in the
  post this chapter started from it is a plain Python attribute (what that changes is the
  chapter's lab question).
* ``reset_parameters`` runs, from the constructor: each expert is He-initialised (normal,
  fan-in of one expert), the expert biases start at zero. A model-wide init loop over
  ``nn.Conv2d`` (the unofficial DY-ResNet's, and :func:`attnlib.models.parts.init_weights`)
  never reaches the experts; the post's init function builds an initializer and never
  applies it; the unofficial code (in the version read) allocates its bias experts with
  ``torch.Tensor`` and never fills them. At T=30 the attention is near-uniform, so the
  mixed kernel starts with about 1/sqrt(K) of an expert's standard deviation; the norm
  after each conv absorbs that.
* ``groups > 1`` works (the unofficial code reshapes the mixed kernel with ``in_planes``
  instead of ``in_planes // groups``).
* timm's ``CondConv2d`` (CondConv, Yang et al. 2019) takes its routing weights from the
  caller, computed with a sigmoid (independent per expert, no sum-to-one constraint and no
  temperature); here the softmax attention over the experts is part of the layer.

Where the layer goes (:func:`register_conv` names it ``"dynamic"``: K=4 at T=30 unless
options say otherwise, e.g. ``("dynamic", {"num_experts": 2})``): every conv of a block and the 1x1 projection shortcuts, but not the
stem. The paper uses dynamic convolution "in all convolutional layers except the first",
and a 1x1 projection is a conv layer like the others (the unofficial DY-ResNet makes it
dynamic too); it is two small layers in ResNet-20. The stem stays static, as in the paper.

:func:`expert_attention` returns the attention of every dynamic layer for a batch of
images, for looking inside a trained network; :func:`fixed_attention` fixes it, to measure
what the per-image routing is worth.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from .registry import register_conv


Mode = Literal["auto", "grouped", "branches"]
_MODES = get_args(Mode)


def reference_expert_attention(x: torch.Tensor, fc1_weight: torch.Tensor, fc1_bias: torch.Tensor,
                               fc2_weight: torch.Tensor, fc2_bias: torch.Tensor, temperature: float) -> torch.Tensor:
    """Dynamic convolution's attention (Chen et al., "Dynamic Convolution: Attention over Convolution
    Kernels", CVPR 2020) written out: per sample, a softmax over the K experts of an MLP of GAP(x).

    ``fc1_weight`` (h, C) and ``fc2_weight`` (K, h) are the two 1x1 convs of ``DynamicConv2d.attention``
    flattened (with biases; h = max(4, C // 4)); returns π, (N, K), every row summing to one.
    """
    pooled = x.mean((2, 3))                            # squeeze: GAP(x)
    logits = torch.relu(pooled @ fc1_weight.T + fc1_bias) @ fc2_weight.T + fc2_bias  # excitation: FC, ReLU, FC
    return torch.softmax(logits / temperature, dim=1)  # softmax with temperature T: Σ_k π_k = 1


def reference_dynamic_conv(x: torch.Tensor, pi: torch.Tensor, experts: torch.Tensor, biases: torch.Tensor | None,
                           stride=1, padding=0, dilation=1, groups: int = 1) -> torch.Tensor:
    """Dynamic convolution (Chen et al., CVPR 2020) written out: each sample convolved with its own
    kernel and bias, the mixtures of K experts weighted by that sample's attention ``pi`` (N, K).

    ``experts`` (K, C_out, C_in / groups, kh, kw) are ``DynamicConv2d.weight`` viewed per expert,
    ``biases`` (K, C_out) or None; ``pi`` is :func:`reference_expert_attention`. Eq. (1)'s activation g
    is not part of the layer (the BN and ReLU after it). A loop over the samples, where the layer runs
    one grouped (or K-branch) convolution; the tests hold them equal.
    """
    kernels = torch.einsum("nk,koihw->noihw", pi, experts)                 # Eq. (1): W̃(x) = Σ_k π_k(x) W_k, per sample
    mixed_biases = pi @ biases if biases is not None else [None] * len(x)  # Eq. (1): b̃(x) = Σ_k π_k(x) b_k
    return torch.cat([F.conv2d(xb[None], w, b, stride, padding, dilation, groups)  # Eq. (1): y = W̃(x) * x + b̃(x)
                      for xb, w, b in zip(x, kernels, mixed_biases)])


class DynamicConv2d(nn.Module):
    """A drop-in ``nn.Conv2d`` whose kernel is a per-sample softmax mixture of K experts.

    ``forward(x)`` returns ``conv(x_b, sum_k pi_k(x_b) W_k) + sum_k pi_k(x_b) b_k`` for every
    sample ``b``; :meth:`attention_weights` gives ``pi(x)``. ``mode`` picks the computation
    (see the module docstring); every mode gives the same result.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True,
                 num_experts: int = 4, temperature: float = 30.0, reduction: float = 0.25,
                 mode: Mode = "auto", device=None, dtype=None) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels={in_channels} and out_channels={out_channels} must both "
                             f"be divisible by groups={groups}")
        if num_experts < 1:
            raise ValueError(f"num_experts must be at least 1, got {num_experts}")
        if mode not in _MODES:
            raise ValueError(f"mode={mode!r}; choose one of {_MODES}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.groups, self.num_experts, self.mode = groups, num_experts, mode
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(num_experts * out_channels, in_channels // groups,
                                               *self.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(num_experts, out_channels, **factory)) if bias else None
        hidden = max(4, int(reduction * in_channels))
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, hidden, 1, **factory), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_experts, 1, **factory), nn.Flatten())
        self.register_buffer("_temperature", torch.tensor(1.0, **factory))
        self.temperature = temperature
        self.reset_parameters()

    @property
    def temperature(self) -> float:
        """Softmax temperature T, kept in a buffer (saved in ``state_dict``). Reading it copies
        the value to the host; setting it does not."""
        return float(self._temperature)

    @temperature.setter
    def temperature(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"temperature must be positive, got {value}")
        self._temperature.fill_(value)

    def reset_parameters(self) -> None:
        """He-normal init of every expert (fan-in of one expert), zero expert biases, and the
        attention MLP as :func:`attnlib.models.parts.init_weights` sets 1x1 convs."""
        with torch.no_grad():
            for expert in self.weight.chunk(self.num_experts):
                nn.init.kaiming_normal_(expert, mode="fan_in", nonlinearity="relu")
            if self.bias is not None:
                nn.init.zeros_(self.bias)
            for layer in self.attention:
                if isinstance(layer, nn.Conv2d):
                    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(layer.bias)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"DynamicConv2d({self.in_channels}, {self.out_channels}) expects (N, "
                             f"{self.in_channels}, H, W) input, got shape {tuple(x.shape)}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        """Refuse a temperature that is not positive (the setter's rule) before it is loaded."""
        value = state_dict.get(prefix + "_temperature")
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not float(value) > 0:
            error_msgs.append(f"{prefix}_temperature: a DynamicConv2d's softmax temperature must be positive, "
                              f"the state dict holds {float(value)} (the attention divides its logits by it); "
                              "this layer was left as it was. Check where that state dict came from.")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """pi(x), shape (B, K): a softmax over the experts for each sample (at least fp32)."""
        self._check_input(x)
        logits = self.attention(x)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return torch.softmax(logits / self._temperature, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pi = self.attention_weights(x)
        if self._uses_branches(x) or x.shape[0] == 0:  # the grouped form needs a sample (groups = B * g)
            return self._forward_branches(x, pi)
        return self._forward_grouped(x, pi)

    def _uses_branches(self, x: torch.Tensor) -> bool:
        """``mode="auto"``: the K-branch form on the CPU for batches of 32 or more on maps of
        at most 64 pixels (8x8), where it measured faster; the grouped form otherwise."""
        if self.mode == "auto":
            return x.device.type == "cpu" and x.shape[0] >= 32 and x.shape[-2] * x.shape[-1] <= 64
        return self.mode == "branches"

    def _forward_grouped(self, x: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        """One grouped conv: sample b's mixed kernel is group block b.

        The result is contiguous (NCHW) whatever the input's layout: the folded input is a
        copy anyway, and converting the output back to channels_last cost more downstream
        than it saved (ResNet-20 train step, measured)."""
        b = x.shape[0]
        weight = pi.to(self.weight.dtype) @ self.weight.reshape(self.num_experts, -1)
        weight = weight.reshape(b * self.out_channels, *self.weight.shape[1:])
        bias = None if self.bias is None else (pi.to(self.bias.dtype) @ self.bias).reshape(-1)
        y = F.conv2d(x.reshape(1, -1, *x.shape[2:]), weight, bias, self.stride, self.padding,
                     self.dilation, self.groups * b)
        return y.reshape(b, self.out_channels, *y.shape[2:])

    def _forward_branches(self, x: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        """One dense conv with the K experts as extra output channels, then sum_k pi_k y_k."""
        k, g = self.num_experts, self.groups
        # expert-major (K, g, Cout/g) -> (g, Cout/g, K): a grouped conv needs group-major
        # output channels, and the mixing below wants each channel's K outputs adjacent
        weight = self.weight.unflatten(0, (k, g, -1)).permute(1, 2, 0, 3, 4, 5).flatten(0, 2)
        weight = weight.contiguous(memory_format=_memory_format(self.weight))
        y = F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, g)
        out = _mix_experts(y, pi.to(y.dtype))
        if self.bias is not None:
            out = out + (pi.to(self.bias.dtype) @ self.bias).to(out.dtype)[:, :, None, None]
        return out

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s + f", num_experts={self.num_experts}, temperature={self.temperature:g}, mode={self.mode}"


def _mix_experts(y: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """sum_k pi[b, k] y[b, c*K + k] for y (B, Cout*K, H, W), pi (B, K): (B, Cout, H, W).

    channels_last: the K values of a pixel and channel are adjacent in memory, so the mix
    is one batched matrix-vector product; the result is channels_last too.
    """
    b, k, (h, w) = y.shape[0], pi.shape[1], y.shape[2:]
    if _memory_format(y) == torch.channels_last:
        mixed = torch.bmm(y.permute(0, 2, 3, 1).reshape(b, -1, k), pi.unsqueeze(2))
        return mixed.reshape(b, h, w, -1).permute(0, 3, 1, 2)
    return (y.unflatten(1, (-1, k)) * pi[:, None, :, None, None]).sum(2)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def dynamic_layers(model: nn.Module) -> dict[str, DynamicConv2d]:
    """Every DynamicConv2d inside ``model`` by qualified name, whatever wraps it."""
    return {name: m for name, m in model.named_modules() if isinstance(m, DynamicConv2d)}


def set_temperature(model: nn.Module, value: float) -> int:
    """Set the softmax temperature of every DynamicConv2d in ``model``; returns how many."""
    layers = dynamic_layers(model).values()
    for layer in layers:
        layer.temperature = value
    return len(layers)


@torch.no_grad()
def expert_attention(model: nn.Module, images: torch.Tensor, batch_size: int = 256
                     ) -> dict[str, torch.Tensor]:
    """pi, shape (N, K), of every DynamicConv2d in ``model`` for ``images`` (N, C, H, W).

    Runs the model in eval mode without gradients, ``batch_size`` images at a time, with a
    forward hook on each dynamic layer; the hooks are removed and the model's train/eval
    mode restored afterwards. Returns CPU float tensors keyed by module name.
    """
    layers = dynamic_layers(model)
    found: dict[str, list[torch.Tensor]] = {name: [] for name in layers}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: DynamicConv2d, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            found[name].append(module.attention_weights(args[0]).float().cpu())
        return hook

    handles = [layer.register_forward_hook(hook_for(name)) for name, layer in layers.items()]
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        for batch in images.split(batch_size):
            model(batch.to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: torch.cat(parts) for name, parts in found.items()}


@contextmanager
def fixed_attention(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Inside the ``with`` block, every dynamic layer of ``model`` named in ``weights`` mixes its
    experts with those weights, shape (K,), whatever the input: a static convolution with kernel
    ``sum_k w_k W_k``. A trained network with its attention fixed at its average over many images
    is the static network its experts make; the difference in accuracy is what its per-image
    routing is worth. The layers compute their attention again after the block.
    """
    layers = dynamic_layers(model)
    if unknown := sorted(set(weights) - set(layers)):
        raise ValueError(f"no dynamic layer {unknown} in {type(model).__name__}; its dynamic layers are "
                         f"{sorted(layers)}")
    for name, w in weights.items():
        if w.shape != (layers[name].num_experts,):
            raise ValueError(f"{name} has {layers[name].num_experts} experts: its fixed attention must have "
                             f"shape ({layers[name].num_experts},), got {tuple(w.shape)}")
    try:
        for name, w in weights.items():  # an instance attribute hides the method until deleted
            layers[name].attention_weights = _same_for_every_input(w.detach().float())
        yield model
    finally:
        for name in weights:
            layers[name].__dict__.pop("attention_weights", None)


def _same_for_every_input(w: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: w.to(x.device).expand(x.shape[0], -1)


# K=4 experts at T=30 by default (anneal it with attnlib.callbacks.TemperatureAnnealing);
# ("dynamic", {"num_experts": 2}) is the post's AlexNet-DY
register_conv("dynamic", stem=False, shortcut=True)(DynamicConv2d)
