"""Campaign files: reading a parsed TOML table key by key, with errors that name the file and
the key path, say what was wrong and what the key accepts (``docs/campaign.md``)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from mallory.errors import InputError, MalloryError
from mallory.jsonable import plain
from mallory.params import Boolean, Constraint, Interval, ListOf, Options, Refused, Text

__all__ = ["Table", "closest", "kind", "plain", "resolve"]

_MISSING: Any = object()


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

    def read(self, key: str, constraint: Constraint, default: Any = _MISSING) -> Any:
        """The value of ``key`` as ``constraint`` stores it (``default`` when the key is
        absent), or an error that says what the key accepts, in TOML's words."""
        value = self.get(key, default)
        if key not in self.values:
            return value
        try:
            given = constraint.from_toml(value)  # inf may stand for None
            if given is not None and not _is_toml(value, constraint.toml_type):
                raise Refused
            return constraint.coerce(given)
        except Refused:
            choices = constraint.choices
            hint = closest(value, choices) if choices and isinstance(value, str) else ""
            raise self.fail(
                key,
                f"must be {constraint.toml_expected}; got {kind(value)} ({value!r}){hint}.",
            ) from None
        except MalloryError as error:  # a conversion's own reason
            raise self.fail(
                key, f"must be {constraint.toml_expected}; got {value!r}: {error}"
            ) from None

    def text(self, key: str, default: Any = _MISSING, choices: Sequence[str] = ()) -> Any:
        """A non-empty string (one of ``choices``, when given)."""
        return self.read(key, Options(tuple(choices)) if choices else Text(), default)

    def integer(self, key: str, default: Any = _MISSING, low: int = 0) -> Any:
        return self.read(key, Interval(low=low, integral=True), default)

    def number(self, key: str, default: Any = _MISSING) -> Any:
        return self.read(key, Interval(finite=False), default)

    def flag(self, key: str, default: Any = _MISSING) -> Any:
        return self.read(key, Boolean(), default)

    def pair(self, key: str, default: Any = _MISSING) -> Any:
        """``[low, high]``: two finite numbers (their order is the caller's to check)."""
        return self.read(key, _PAIR, default)

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


_PAIR = ListOf(Interval(), length=2, text="[low, high], two finite numbers")
_TOML_TYPES: dict[str, type | tuple[type, ...]] = {
    "integer": int,
    "float": (int, float),
    "string": str,
    "boolean": bool,
    "array": list,
    "table": dict,
}


def _is_toml(value: Any, toml_type: str) -> bool:
    """Whether a TOML value has the type ``toml_type`` ("": any; an integer is a float too,
    but a boolean is no number)."""
    if not toml_type:
        return True
    if isinstance(value, bool) and toml_type != "boolean":
        return False
    return isinstance(value, _TOML_TYPES[toml_type])


def resolve(base: Path, value: str) -> Path:
    """A path from a campaign file: ``~`` expanded, relative to the file's folder."""
    path = Path(value).expanduser()
    return (path if path.is_absolute() else base / path).resolve()
