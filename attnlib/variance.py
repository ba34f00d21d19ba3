"""How much of a per-image quantity (a gate, an attention weight) the image's class explains."""
from __future__ import annotations

import torch


def class_means(values: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mean of each column of ``values`` ``(images, columns)`` over the images of each class:
    ``(classes, means (classes, columns), counts (classes,))``, classes in ascending order."""
    if values.dim() != 2 or labels.shape != values.shape[:1]:
        raise ValueError(f"values must be (images, columns) and labels (images,); got {tuple(values.shape)} "
                         f"and {tuple(labels.shape)}")
    classes, index, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(classes), values.shape[1], dtype=values.dtype).index_add_(0, index, values)
    return classes, sums / counts[:, None].to(values.dtype), counts


def class_share(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The share of each column's variance over images that lies between the class means.

    ``values`` is ``(images, columns)`` (e.g. one gate per channel), ``labels`` the images'
    classes. For each column: the variance of the class means around the overall mean,
    each class weighted by its number of images, over the total variance (both with a
    divisor of the number of images), i.e. the correlation ratio η². 1 means every image of
    a class has the same value (the quantity only says which class it is), 0 that all
    classes have the same mean (it varies from image to image, not with the class). A
    column that does not vary at all has no share to give: its value is NaN.
    """
    values = values.double()
    _, means, counts = class_means(values, labels)
    between = (counts[:, None] * (means - values.mean(0)) ** 2).sum(0) / len(values)
    total = values.var(0, correction=0)
    return torch.where(total > 0, between / total, torch.full_like(total, float("nan")))
