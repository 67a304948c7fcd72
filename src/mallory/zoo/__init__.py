"""Datasets that ship inside installed packages, and small models trained on first use.

>>> from mallory.zoo import load_dataset, load_model
>>> data = load_dataset("digits", "test")
>>> model = load_model("digits-mlp")  # trained once, then read from the cache
"""

from mallory.zoo.cache import cache_dir
from mallory.zoo.datasets import Dataset, list_datasets, load_dataset
from mallory.zoo.models import ModelRecipe, list_models, load_model

__all__ = [
    "Dataset",
    "ModelRecipe",
    "cache_dir",
    "list_datasets",
    "list_models",
    "load_dataset",
    "load_model",
]
