"""ILM data layer: raw interactions + item metadata -> splits, CF embeddings, phase-1/phase-2
datasets and evaluation candidates. See training/data/README.md; CLI: python -m training.data build."""

from .build import BuildConfig, build_dataset
from .candidates import load_candidates
from .sources import DataValidationError
from .templates import ITEM_TOKEN, USER_TOKEN

__all__ = [
    "BuildConfig",
    "build_dataset",
    "load_candidates",
    "DataValidationError",
    "ITEM_TOKEN",
    "USER_TOKEN",
]
