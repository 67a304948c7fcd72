"""Campaign files: a threat model's priced ``features`` (problem-space constraints).

:func:`read_priced_features` reads the ``features`` of a ``[[threat]]`` table when it uses more
than ``mutable`` and ``values`` (which :func:`mallory.evaluation.config_data.read_features`
reads itself), or when it names a file of its own: ranges, directions, prices per edit and per
unit, one-hot groups, derived features and a feature extractor. Features are named as the
data names them, or by index. The format is documented in ``docs/campaign.md``.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mallory.errors import InputError
from mallory.evaluation.config_table import Table, closest, kind
from mallory.params import Interval, ListOf, Options, Text
from mallory.threat.features import (
    CONSTRAINT_KEYS,
    Derived,
    Direction,
    FeatureConstraints,
    Formula,
    OneHot,
    resolve,
)
from mallory.zoo.datasets import Dataset

__all__ = ["PRICED_KEYS", "read_priced_features"]

BASIC_KEYS = ("mutable", "values")
PRICED_KEYS = CONSTRAINT_KEYS
GROUP_KEYS = ("features", "price", "hot", "cold")
DERIVED_KEYS = ("feature", "formula", "of")
_PRICE = Interval(low=0.0)
_RANGE = ListOf(Interval(), length=2, order="<=", toml_text="[low, high], with low <= high")
_NUMBERS = ListOf(Interval(), nonempty=True, toml_text="a non-empty array of numbers")


def read_priced_features(table: Table, data: Dataset) -> FeatureConstraints | None:
    """The priced constraints of ``table``'s ``features``; None when it holds only ``mutable``
    and ``values`` (the basic reader's keys) and is not a file name."""
    value = table.get("features")
    at = table.at("features")
    if isinstance(value, str):
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = Path(table.where).resolve().parent / path
        value = _load(table, path)
        at = f"{at} ({path.name})"
    elif not isinstance(value, dict) or set(value) <= set(BASIC_KEYS):
        return None
    sub = Table(value, at, table.where, PRICED_KEYS)
    return _read(sub, data)


def _load(table: Table, path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise table.fail(
            "features",
            f"no constraints file at {path} (a relative path is read from the campaign file's "
            "folder).",
        ) from None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise table.fail("features", f"cannot read {path} as TOML: {error}") from None


def _read(sub: Table, data: Dataset) -> FeatureConstraints:
    names = data.feature_names
    width = math.prod(data.input_shape)
    index = feature_indexer(sub, names, width)
    mutable_given = sub.get("mutable", [])
    if not isinstance(mutable_given, list):
        raise sub.fail("mutable", f"must be an array of features; got {kind(mutable_given)}.")
    mutable = [index(f"mutable[{k}]", item) for k, item in enumerate(mutable_given)]
    if len(set(mutable)) != len(mutable):
        raise sub.fail("mutable", f"names a feature twice; got {mutable_given!r}.")

    def per_feature(key: str, constraint: Any) -> dict[int, Any]:
        """``key = { feature = value, ... }``, each value read by ``constraint``."""
        given = sub.get(key, {})
        if not isinstance(given, dict):
            raise sub.fail(key, f"must be a table of feature = value; got {kind(given)}.")
        inner = Table(given, sub.at(key), sub.where, tuple(given))
        out = {}
        for name in given:
            feature = index(f"{key}.{name}", name)
            if feature not in mutable:
                raise inner.fail(name, "given for a feature that is not in mutable.")
            out[feature] = inner.read(name, constraint)
        return out

    values = per_feature("values", _NUMBERS)
    ranges = per_feature("ranges", _RANGE)
    directions = per_feature("directions", Options(Direction))
    prices = per_feature("prices", _PRICE)
    unit_prices = per_feature("unit_prices", _PRICE)
    groups = [_group(sub, k, item, index) for k, item in enumerate(_array(sub, "groups"))]
    derived = [_derived(sub, k, item, index) for k, item in enumerate(_array(sub, "derived"))]
    extractor = None
    if sub.has("extractor"):
        reference = sub.read("extractor", Text())
        try:
            extractor = resolve(reference)
        except InputError as error:
            raise sub.fail("extractor", str(error)) from None

    def column(given: dict[int, Any], default: Any) -> tuple[Any, ...]:
        return tuple(given.get(i, default) for i in mutable) if given else ()

    try:
        return FeatureConstraints(
            tuple(mutable),
            column(values, ()),
            ranges=column(ranges, None),
            directions=column(directions, Direction.ANY),
            prices=column(prices, 0.0),
            unit_prices=column(unit_prices, 0.0),
            groups=tuple(groups),
            derived=tuple(derived),
            extractor=extractor,
            names=tuple(names or ()),
        )
    except InputError as error:
        raise sub.fail(None, str(error)) from None


def feature_indexer(
    sub: Table, names: tuple[str, ...] | None, width: int
) -> Callable[[str, Any], int]:
    """Reads a feature by name or index for the table ``sub`` (an error names the key)."""
    accepted = (
        f"a feature name ({', '.join(names)}) or an index 0 to {width - 1}"
        if names
        else f"a feature index 0 to {width - 1} (the data names no features)"
    )

    def index(key: str, item: Any) -> int:
        if isinstance(item, str) and names and item in names:
            return names.index(item)
        if isinstance(item, str) and item.isdigit():
            item = int(item)
        if isinstance(item, int) and not isinstance(item, bool) and 0 <= item < width:
            return item
        hint = closest(item, names) if isinstance(item, str) and names else ""
        raise sub.fail(key, f"unknown feature {item!r}{hint}; expected {accepted}.")

    return index


def _array(sub: Table, key: str) -> list[Any]:
    given = sub.get(key, [])
    if not isinstance(given, list):
        raise sub.fail(key, f"must be an array of tables; got {kind(given)}.")
    return given


def _group(sub: Table, k: int, item: Any, index: Callable[[str, Any], int]) -> OneHot:
    table = Table(item, sub.at(f"groups[{k}]"), sub.where, GROUP_KEYS)
    members = table.get("features")
    if not isinstance(members, list):
        raise table.fail("features", f"must be an array of features; got {kind(members)}.")
    features = tuple(index(f"features[{j}]", m) for j, m in enumerate(members))
    try:
        return OneHot(
            features=features,
            price=table.read("price", _PRICE, 1.0),
            hot=table.read("hot", Interval(), 1.0),
            cold=table.read("cold", Interval(), 0.0),
        )
    except InputError as error:
        raise table.fail(None, str(error)) from None


def _derived(sub: Table, k: int, item: Any, index: Callable[[str, Any], int]) -> Derived:
    table = Table(item, sub.at(f"derived[{k}]"), sub.where, DERIVED_KEYS)
    feature = index("feature", table.get("feature"))
    formula = table.read("formula", Options(Formula))
    of = table.get("of", [])
    if not isinstance(of, list):
        raise table.fail("of", f"must be an array of features; got {kind(of)}.")
    try:
        return Derived(
            feature=feature,
            formula=formula,
            of=tuple(index(f"of[{j}]", m) for j, m in enumerate(of)),
        )
    except InputError as error:
        raise table.fail(None, str(error)) from None
