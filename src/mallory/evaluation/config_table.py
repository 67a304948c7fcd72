"""Campaign files: reading a parsed TOML table key by key, with errors that name the file and
the key path, say what was wrong and what the key accepts (``docs/campaign.md``)."""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from mallory.errors import InputError
from mallory.jsonable import plain

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
