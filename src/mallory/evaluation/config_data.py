"""Campaign files: the ``[system]`` and ``[data]`` tables, and a threat model's ``features``
(which name the data's features). :mod:`mallory.evaluation.config` holds the public API and
the threat models; the format is documented in ``docs/campaign.md``.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mallory.errors import InputError
from mallory.evaluation.config_features import feature_indexer, read_priced_features
from mallory.evaluation.config_table import Table, kind, resolve
from mallory.params import Interval, ListOf, Options, Text
from mallory.systems.base import DETERMINISTIC, INPUT_SHAPE, NAME, OUTPUT, Output, System
from mallory.threat.features import FeatureConstraints
from mallory.zoo.datasets import SPLITS, Dataset, list_datasets, load_dataset

SYSTEM_KEYS = ("model", "path", "input_shape", "bounds", "output", "name", "deterministic")
DATA_KEYS = ("dataset", "path", "split", "samples", "name")
FEATURE_KEYS = ("mutable", "values")
FILE_BOUNDS = ListOf(
    Interval(), length=2, order="<", toml_text="[low, high], two finite numbers with low < high"
)
"""A model file's input bounds in a campaign file (a box with the same bounds everywhere)."""
SAMPLES = Interval(low=1, integral=True)


# ------------------------------------------------------------------------ [system]
@dataclass(frozen=True)
class SystemChoice:
    system: System
    name: str
    dataset: str | None  # the zoo dataset the model was trained for


def read_system(values: Any, *, base: Path, where: str, progress: bool) -> SystemChoice:
    """The ``[system]`` table: a zoo model, a saved model file or a prediction API's ``url``
    (and its ``layers``)."""
    from mallory.zoo import list_models, load_model

    if isinstance(values, dict) and "layers" in values:
        from mallory.evaluation.config_layers import read_layers

        bare = {k: v for k, v in values.items() if k != "layers"}
        choice = read_system(bare, base=base, where=where, progress=progress)
        wrapped = read_layers(
            values["layers"],
            choice.system,
            base=base,
            where=where,
            at="system",
            progress=progress,
            dataset=choice.dataset,
        )
        return SystemChoice(wrapped, choice.name, choice.dataset)

    if isinstance(values, dict) and "url" in values:
        from mallory.evaluation.config_http import read_url_system

        return read_url_system(values, where=where, bounds=FILE_BOUNDS)

    table = Table(values, "system", where, SYSTEM_KEYS)
    name = table.read("name", NAME, None)
    deterministic = table.read("deterministic", DETERMINISTIC, True)
    if not table.has("model") and not table.has("path"):
        raise table.fail(
            None,
            "give one of model (a zoo model), path (a saved model file) or url (a prediction API).",
        )
    if table.one_of("model", "path", "a zoo model") == "model":
        table.only_with(("input_shape", "bounds", "output"), "path")
        recipes = {r.name: r for r in list_models()}
        model = table.read("model", Options(tuple(sorted(recipes))))
        try:
            system = load_model(model, progress=progress)
        except InputError as error:
            raise table.fail("model", str(error)) from None
        if not deterministic:
            system = system.randomized()
        return SystemChoice(system, name or model, recipes[model].dataset)
    file = resolve(base, table.read("path", Text()))
    shape = table.read("input_shape", INPUT_SHAPE, None)
    bounds = table.read("bounds", FILE_BOUNDS)
    output = table.read("output", OUTPUT, Output.LOGITS)
    if not file.exists():
        raise table.fail(
            "path",
            f"no model file at {file} (a relative path is read from the campaign file's "
            f"folder, {base}).",
        )
    from mallory.systems.saved import load_saved

    try:
        system = load_saved(
            file, shape, bounds, output=output, name=name, deterministic=deterministic
        )
    except InputError as error:
        raise table.fail("path", str(error)) from None
    return SystemChoice(system, name or file.stem, None)


# ------------------------------------------------------------------------ [data]
@dataclass(frozen=True)
class DataChoice:
    """The evaluated samples, and how to get the attacker's own data (disjoint from them) for
    a surrogate: ``own_data()`` raises an InputError that says why there is none (the caller
    adds the file and key)."""

    evaluated: Dataset
    own_data: Callable[[], Dataset]


def read_data(values: Any, system: SystemChoice, *, base: Path, where: str) -> DataChoice:
    """The ``[data]`` table (optional for a zoo model: its dataset's test split)."""
    if values is None:
        if system.dataset is None:
            raise InputError(
                f"{where}: data: this key is required with system.path: add a [data] table "
                "with dataset = (a zoo dataset) or path = (a .npz file with x and y)."
            )
        values = {}
    if isinstance(values, dict) and system.dataset and not {"dataset", "path"} & set(values):
        values = {"dataset": system.dataset, **values}  # a zoo model's own dataset
    table = Table(values, "data", where, DATA_KEYS)
    samples = table.read("samples", SAMPLES, None)
    label = table.read("name", Text(), None)
    if table.one_of("dataset", "path", "a zoo dataset") == "dataset":
        name = table.read("dataset", Options(tuple(list_datasets())))
        split = table.read("split", Options(SPLITS), "test")
        whole = load_dataset(name, split)
        key = "dataset"
    else:
        table.only_with(("split",), "dataset")
        whole = _read_npz(table, resolve(base, table.read("path", Text())), system.system)
        split, key = "", "path"
    if samples is not None and samples > len(whole):
        where_from = f"the {split} split of {whole.name}" if split else whole.name
        raise table.fail(
            "samples",
            f"asks for {samples} samples, but {where_from} has "
            f"{len(whole)}; give at most {len(whole)}, or leave it out.",
        )
    count = len(whole) if samples is None else samples
    evaluated = whole.head(count)
    if label:
        evaluated = replace(evaluated, name=label)
    _check_fit(table, key, evaluated, system)

    def own_data() -> Dataset:
        if split == "test":
            return load_dataset(whole.name, "train")
        rest = replace(whole, x=whole.x[count:], y=whole.y[count:])
        if not len(rest):
            raise InputError(
                f"every sample of {whole.name}{f' ({split} split)' if split else ''} is "
                "evaluated (data.samples), so the attacker has no data of its own to build a "
                "surrogate from: evaluate fewer samples, or the 'test' split of a zoo dataset "
                "(the surrogate then learns from 'train')."
            )
        return rest

    return DataChoice(evaluated, own_data)


def _check_fit(table: Table, key: str, data: Dataset, system: SystemChoice) -> None:
    """The data must fit the model: input shape, labels, bounds (errors at ``key``)."""
    model = system.system
    if tuple(data.input_shape) != tuple(model.input_shape):
        raise table.fail(
            key,
            f"the dataset {data.name!r} has inputs of shape {tuple(data.input_shape)}, but the "
            f"system {system.name!r} takes {tuple(model.input_shape)}. Use data made for this "
            "model.",
        )
    top = int(data.y.max())
    if top >= model.num_classes or int(data.y.min()) < 0:
        raise table.fail(
            key,
            f"the dataset {data.name!r} has labels from {int(data.y.min())} to {top}, but the "
            f"system {system.name!r} has {model.num_classes} classes (labels 0 to "
            f"{model.num_classes - 1}).",
        )
    outside = model.bounds.outside(data.x.to(torch.float64))
    if bool(outside.any()):
        raise table.fail(
            key,
            f"{int(outside.sum())} samples of {data.name!r} lie outside the system's input "
            f"bounds {model.bounds.to_dict()}. Scale the data into the bounds first.",
        )


def _read_npz(table: Table, file: Path, system: System) -> Dataset:
    if not file.is_file():
        raise table.fail(
            "path",
            f"no data file at {file} (a relative path is read from the campaign file's folder).",
        )
    try:
        archive = np.load(file, allow_pickle=False)  # no pickles: loading runs no code
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise table.fail(
                "path",
                f"{file} holds a single array; a data file is a .npz archive with the arrays x "
                "(inputs) and y (labels), saved with numpy.savez(path, x=x, y=y).",
            )
        with archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        if isinstance(error, InputError):
            raise
        raise table.fail(
            "path", f"cannot read {file} as a NumPy .npz archive of plain arrays ({error})."
        ) from None
    missing = [name for name in ("x", "y") if name not in arrays]
    if missing:
        raise table.fail(
            "path",
            f"{file} has no array {' or '.join(missing)}; it holds "
            f"{', '.join(sorted(arrays)) or 'nothing'}. A data file needs x (inputs, shape "
            "(n, *input_shape)) and y (integer labels, shape (n,)); optional: class_names, "
            "feature_names.",
        )
    x, y = arrays["x"], arrays["y"]
    if x.dtype.kind not in "fiu" or x.ndim < 2 or not len(x):
        raise table.fail(
            "path",
            f"x in {file} must be numbers of shape (n, *input_shape); got {x.dtype} "
            f"of shape {x.shape}.",
        )
    if y.dtype.kind not in "iu" or y.shape != (len(x),):
        raise table.fail(
            "path",
            f"y in {file} must hold {len(x)} integer labels (one per row of x); got "
            f"{y.dtype} of shape {y.shape}.",
        )
    if not np.isfinite(x).all():
        raise table.fail("path", f"x in {file} holds NaN or infinite values.")
    features = arrays.get("feature_names")
    width = math.prod(x.shape[1:])
    if features is not None and (features.dtype.kind != "U" or features.shape != (width,)):
        raise table.fail(
            "path",
            f"feature_names in {file} must be {width} strings (one per input feature); got "
            f"{features.dtype} of shape {features.shape}.",
        )
    names = arrays.get("class_names")
    if names is None:
        class_names = tuple(system.class_names)
    elif names.dtype.kind != "U" or names.shape != (system.num_classes,):
        raise table.fail(
            "path",
            f"class_names in {file} must be {system.num_classes} strings (one per class of the "
            f"system); got {names.dtype} of shape {names.shape}.",
        )
    else:
        class_names = tuple(str(n) for n in names)
    lower, upper = system.bounds.lower, system.bounds.upper
    return Dataset(
        name=file.stem,
        x=torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        y=torch.from_numpy(y.astype(np.int64)),
        input_shape=tuple(int(d) for d in x.shape[1:]),
        bounds=(float(lower.min()), float(upper.max())),
        class_names=class_names,
        feature_names=None if features is None else tuple(str(f) for f in features),
    )


# ------------------------------------------------------------------------ features
def read_features(table: Table, data: Dataset) -> FeatureConstraints:
    """``features = { mutable = [...], values = { feature = [...] } }``: names or indices."""
    if (priced := read_priced_features(table, data)) is not None:  # prices, groups, a file
        return priced
    sub = Table(table.get("features"), table.at("features"), table.where, FEATURE_KEYS)
    index = feature_indexer(sub, data.feature_names, math.prod(data.input_shape))

    mutable = sub.get("mutable")
    if not isinstance(mutable, list) or not mutable:
        raise sub.fail("mutable", f"must be a non-empty array of features; got {mutable!r}.")
    indices = [index(f"mutable[{k}]", item) for k, item in enumerate(mutable)]
    if len(set(indices)) != len(indices):
        raise sub.fail("mutable", f"names a feature twice; got {mutable!r}.")
    allowed: dict[int, tuple[float, ...]] = {}
    values = sub.get("values", {})
    if not isinstance(values, dict):
        raise sub.fail("values", f"must be a table of feature = [values]; got {kind(values)}.")
    for key, choices in values.items():
        at = f"values.{key}"
        feature = index(at, key)
        if feature not in indices:
            raise sub.fail(at, "allowed values for a feature that is not in mutable.")
        numeric = isinstance(choices, list) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in choices
        )
        if not numeric or not choices:
            raise sub.fail(at, f"must be a non-empty array of numbers; got {choices!r}.")
        allowed[feature] = tuple(float(v) for v in choices)
    per_feature = tuple(allowed.get(i, ()) for i in indices)
    return FeatureConstraints(tuple(indices), per_feature if allowed else ())
