"""attnlib: the tested code behind the book *Attention and normalisation layers for CNNs*.

Import direction, bottom to top (nothing imports upward, no circles):
``data``, ``layers``, ``significance`` -> ``models``, ``config`` -> ``devices``, ``history``,
``checkpoints`` -> ``train`` -> ``callbacks``, ``variants`` -> ``records`` -> ``experiment`` ->
``chapters``, ``pool``, ``plots`` -> ``run``. The book's tooling (``booktools``: executing the
notebooks, the generated pages, the labs) sits above the library and outside the package.
The layers know nothing of training: the callbacks that schedule or penalise them use the
layers' plain functions (``set_temperature``, ``nam_scale_sum``).
"""
from . import layers  # noqa: F401  (registers every layer)
from .config import TrainConfig
from .data import DatasetError, ImageDataset, load_dataset
from .history import Callback, History
from .models import build_model, count_parameters
from .train import NonFiniteLossError, fit

__version__ = "0.1.0"

__all__ = ["Callback", "DatasetError", "History", "ImageDataset", "NonFiniteLossError", "TrainConfig",
           "build_model", "count_parameters", "fit", "load_dataset"]
