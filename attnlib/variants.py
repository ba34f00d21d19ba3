"""One arm of a comparison, :class:`Variant`: a network (model and its parts) and changes to
the recipe."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .benchmark import count_flops
from .config import TrainConfig
from .data import ImageDataset
from .history import Callback
from .layers import Choice
from .models import Parts, build_model
from .profiles import Profile


#: The parts of the plain network, as a :class:`Variant`'s spec holds them: the baseline every
#: method is compared with, and what a comparison's table leaves out.
PLAIN_PARTS = {"attention": None, "norm": "bn", "conv": "conv"}

SYNC_BN = "syncbn"
"""The ``norm`` of a :class:`Variant` that is the plain-BN network with every BatchNorm
converted by ``nn.SyncBatchNorm.convert_sync_batchnorm``: under DistributedDataParallel on
GPUs its batch statistics are those of the global batch; in one process it is plain BN."""


@dataclass(frozen=True)
class Variant:
    """One arm of a comparison: a network, its parts, and changes to the recipe.

    ``norm``, ``conv`` and ``attention`` are registered layers, by name or with options:
    ``norm=("mabn", {"B": 4})`` (see :class:`~attnlib.models.Parts`). ``train`` overrides
    :class:`TrainConfig` fields for this variant only (for example a smaller ``batch_size``);
    ``callbacks`` are copied fresh for every run, and their ``repr`` is part of the record
    key, so give them a readable dataclass repr.
    """

    label: str
    model: str = "resnet20"
    norm: Choice = "bn"
    conv: Choice = "conv"
    attention: Choice | None = None
    model_kwargs: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    callbacks: tuple[Callback, ...] = ()

    def __post_init__(self) -> None:  # a wrong name or option fails here, before any training
        self.parts()

    def parts(self) -> Parts:
        """The network's parts (SyncBatchNorm is plain BN until :meth:`build` converts it)."""
        return Parts(norm="bn" if self.norm == SYNC_BN else self.norm, conv=self.conv,
                     attention=self.attention or "none")

    @property
    def method(self) -> str:
        """The layer that makes this network differ from the plain one (see :func:`method_of`)."""
        return method_of(self.spec())

    def build(self, data: ImageDataset, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = build_model(self.model, num_classes=data.num_classes, in_channels=data.in_channels,
                            parts=self.parts(), **self.model_kwargs)
        return nn.SyncBatchNorm.convert_sync_batchnorm(model) if self.norm == SYNC_BN else model

    def spec(self) -> dict:
        d = asdict(self)
        d["callbacks"] = [repr(cb) for cb in self.callbacks]
        return d


def method_of(spec: dict) -> str:
    """The registered name of the part that defines a network (a variant's or a record's spec):
    its attention, else its norm, else its conv (MABN's CenConv goes with MABN), else
    ``"alexnet"`` or ``"plain"``. Figures colour
    a variant by it, so a method keeps its colour in every chapter whatever its label says."""
    def name(part: str):
        value = spec.get(part)
        return value[0] if isinstance(value, (list, tuple)) else value

    for part, plain in PLAIN_PARTS.items():  # in this order: attention, norm, conv
        if name(part) not in (plain, "none", SYNC_BN):
            return name(part)
    return "alexnet" if spec.get("model") == "alexnet" else "plain"


def flops_per_image(model: nn.Module, data: ImageDataset) -> int:
    """Forward FLOPs for one image of ``data`` (a multiply-add counts 2), counted in eval mode."""
    return count_flops(model, (data.in_channels, data.image_size, data.image_size))


def run_config(recipe: TrainConfig | None, profile: Profile, variant: Variant) -> TrainConfig:
    """The recipe one variant trains with: ``recipe``, the profile's epochs and batch size,
    then the variant's own ``train`` changes."""
    base = (recipe or TrainConfig()).replace(epochs=profile.epochs, batch_size=profile.batch_size)
    return base.replace(**variant.train)
