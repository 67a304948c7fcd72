"""Campaign files, part one: reading TOML tables key by key, and the ``[system]`` and ``[data]``
sections. :mod:`mallory.evaluation.config` holds the public API and the threat models.

Every error names the file and the key path (``threat[1].attacks[0].steps``), says what was
wrong and what the key accepts; the format is documented in ``docs/campaign.md``.
"""

from __future__ import annotations

import difflib
import math
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mallory.errors import InputError
from mallory.systems.base import Output, System
from mallory.zoo.datasets import SPLITS, Dataset, list_datasets, load_dataset

_MISSING: Any = object()

SYSTEM_KEYS = ("model", "path", "input_shape", "bounds", "output", "name")
DATA_KEYS = ("dataset", "path", "split", "samples", "name")


def kind(value: Any) -> str:
    """The TOML name of a value's type, for messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime | date | time):
        return "a date or time"
    return type(value).__name__


def closest(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or nothing."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def plain(value: Any) -> Any:
    """A parsed TOML value as JSON-ready data (dates as ISO text, non-finite floats as text)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class Table:
    """One table of a campaign file, read key by key; unknown keys are refused on arrival.

    ``path`` is the table's key path (``""`` at the top, ``"threat[0]"``, ``"system"``);
    ``where`` names the file in every message.
    """

    def __init__(self, values: Any, path: str, where: str, keys: Sequence[str]) -> None:
        self.path, self.where, self.keys = path, where, tuple(keys)
        if not isinstance(values, dict):
            raise self.fail(None, f"must be a table; got {kind(values)} ({values!r}).")
        self.values: dict[str, Any] = values
        for key in values:
            if key not in self.keys:
                raise self.fail(
                    key,
                    f"unknown key{closest(key, self.keys)}. The keys here are: "
                    f"{', '.join(self.keys)}.",
                )

    def at(self, key: str | None) -> str:
        """The key path of ``key`` in this table (the table's own path for None)."""
        if key is None:
            return self.path or "(top level)"
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str | None, message: str) -> InputError:
        return InputError(f"{self.where}: {self.at(key)}: {message}")

    def has(self, key: str) -> bool:
        return key in self.values

    def get(self, key: str, default: Any = _MISSING) -> Any:
        if key in self.values:
            return self.values[key]
        if default is _MISSING:
            raise self.fail(key, "this key is required.")
        return default

    def text(self, key: str, default: Any = _MISSING, choices: Sequence[str] = ()) -> Any:
        value = self.get(key, default)
        if key not in self.values:
            return value
        if not isinstance(value, str) or not value.strip():
            accepted = f"one of {_quoted(choices)}" if choices else "a non-empty string"
            raise self.fail(key, f"must be {accepted}; got {kind(value)} ({value!r}).")
        if choices and value not in choices:
            raise self.fail(
                key, f"got {value!r}{closest(value, choices)}; expected one of {_quoted(choices)}."
            )
        return value

    def integer(self, key: str, default: Any = _MISSING, low: int = 0) -> Any:
        value = self.get(key, default)
        if key not in self.values:
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise self.fail(key, f"must be an integer >= {low}; got {kind(value)} ({value!r}).")
        return value

    def number(self, key: str, default: Any = _MISSING) -> Any:
        value = self.get(key, default)
        if key not in self.values:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"must be a number; got {kind(value)} ({value!r}).")
        return float(value)

    def flag(self, key: str, default: Any = _MISSING) -> Any:
        value = self.get(key, default)
        if key in self.values and not isinstance(value, bool):
            raise self.fail(key, f"must be true or false; got {kind(value)} ({value!r}).")
        return value

    def pair(self, key: str, default: Any = _MISSING) -> Any:
        """``[low, high]``: two finite numbers (their order is the caller's to check)."""
        value = self.get(key, default)
        if key not in self.values:
            return value
        numbers = isinstance(value, list) and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        )
        if not numbers or len(value) != 2:
            raise self.fail(key, f"must be [low, high], two finite numbers; got {value!r}.")
        return float(value[0]), float(value[1])

    def shape(self, key: str) -> tuple[int, ...] | None:
        value = self.get(key, None)
        if value is None:
            return None
        if (
            not isinstance(value, list)
            or not value
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)
        ):
            raise self.fail(
                key,
                f"must be the shape of one input without the batch dimension, an array of "
                f"integers >= 1 such as [1, 28, 28]; got {value!r}.",
            )
        return tuple(value)

    def only_with(self, keys: Sequence[str], other: str) -> None:
        """Refuse ``keys`` when the table does not have ``other``."""
        for key in keys:
            if key in self.values:
                raise self.fail(key, f"is only read together with {self.at(other)}.")

    def one_of(self, first: str, second: str, what: str) -> str:
        """The one key present among ``first`` and ``second``; both or neither is an error."""
        if self.has(first) == self.has(second):
            raise self.fail(
                None,
                f"give either {first} ({what}) or {second}, not "
                f"{'both' if self.has(first) else 'neither'}.",
            )
        return first if self.has(first) else second


def _quoted(choices: Sequence[str]) -> str:
    return ", ".join(repr(c) for c in choices)


def resolve(base: Path, value: str) -> Path:
    """A path from a campaign file: ``~`` expanded, relative to the file's folder."""
    path = Path(value).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


# ------------------------------------------------------------------------ [system]
@dataclass(frozen=True)
class SystemChoice:
    system: System
    name: str
    dataset: str | None  # the zoo dataset the model was trained for


def read_system(values: Any, *, base: Path, where: str, progress: bool) -> SystemChoice:
    """The ``[system]`` table: a zoo model, or a saved model file."""
    from mallory.zoo import list_models, load_model

    table = Table(values, "system", where, SYSTEM_KEYS)
    name = table.text("name", None)
    if table.one_of("model", "path", "a zoo model") == "model":
        table.only_with(("input_shape", "bounds", "output"), "path")
        recipes = {r.name: r for r in list_models()}
        model = table.text("model", choices=sorted(recipes))
        try:
            system = load_model(model, progress=progress)
        except InputError as error:
            raise table.fail("model", str(error)) from None
        return SystemChoice(system, name or model, recipes[model].dataset)
    file = resolve(base, table.text("path"))
    shape = table.shape("input_shape")
    bounds = table.pair("bounds")
    if not bounds[0] < bounds[1]:
        raise table.fail("bounds", f"needs low < high; got {list(bounds)}.")
    output = table.text("output", Output.LOGITS.value, [o.value for o in Output])
    if not file.exists():
        raise table.fail(
            "path",
            f"no model file at {file} (a relative path is read from the campaign file's "
            f"folder, {base}).",
        )
    from mallory.systems.saved import load_saved

    try:
        system = load_saved(file, shape, bounds, output=output, name=name)
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
    key: str  # the key that named the data, for messages


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
    samples = table.integer("samples", None, low=1)
    label = table.text("name", None)
    if table.one_of("dataset", "path", "a zoo dataset") == "dataset":
        name = table.text("dataset", choices=list_datasets())
        split = table.text("split", "test", SPLITS)
        whole = load_dataset(name, split)
        key = "data.dataset"
    else:
        table.only_with(("split",), "dataset")
        whole = _read_npz(table, resolve(base, table.text("path")), system.system)
        split, key = "", "data.path"
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

    return DataChoice(evaluated, own_data, key)


def _check_fit(table: Table, key: str, data: Dataset, system: SystemChoice) -> None:
    """The data must fit the model: input shape, labels, bounds."""
    model = system.system
    field = key.split(".")[1]
    if tuple(data.input_shape) != tuple(model.input_shape):
        raise table.fail(
            field,
            f"the dataset {data.name!r} has inputs of shape {tuple(data.input_shape)}, but the "
            f"system {system.name!r} takes {tuple(model.input_shape)}. Use data made for this "
            "model.",
        )
    top = int(data.y.max())
    if top >= model.num_classes or int(data.y.min()) < 0:
        raise table.fail(
            field,
            f"the dataset {data.name!r} has labels from {int(data.y.min())} to {top}, but the "
            f"system {system.name!r} has {model.num_classes} classes (labels 0 to "
            f"{model.num_classes - 1}).",
        )
    outside = model.bounds.outside(data.x.to(torch.float64))
    if bool(outside.any()):
        raise table.fail(
            field,
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
        archive = np.load(file, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise table.fail("path", f"cannot read {file} as a NumPy .npz archive ({error}).") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise table.fail(
            "path",
            f"{file} holds a single array; a data file is a .npz archive with the arrays x "
            "(inputs) and y (labels), saved with numpy.savez(path, x=x, y=y).",
        )
    with archive:
        arrays = {name: archive[name] for name in archive.files}
    missing = [name for name in ("x", "y") if name not in arrays]
    if missing:
        raise table.fail(
            "path",
            f"{file} has no array {' or '.join(missing)}; it holds "
            f"{', '.join(sorted(arrays)) or 'nothing'}. A data file needs x (inputs, shape "
            "(n, *input_shape)) and y (integer labels, shape (n,)); optional: class_names.",
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
