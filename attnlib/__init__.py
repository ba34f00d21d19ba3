"""attnlib: the tested code behind the book *Attention and normalisation layers for CNNs*.

Import direction, bottom to top: ``data`` and ``layers`` -> ``models`` -> ``train``
-> ``experiment`` -> ``plots`` and ``book``.
"""
from . import layers  # noqa: F401  (registers every layer)
from .data import DatasetError, ImageDataset, load_dataset
from .models import build_model, count_parameters
from .train import Callback, History, NonFiniteLossError, TrainConfig, fit

__version__ = "0.1.0"

__all__ = ["Callback", "DatasetError", "History", "ImageDataset", "NonFiniteLossError", "TrainConfig",
           "build_model", "count_parameters", "fit", "load_dataset"]
