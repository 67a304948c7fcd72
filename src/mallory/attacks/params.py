"""Declarative hyperparameters: one validation rule per field, one message form.

An attack's fields are declared with :func:`integer`, :func:`real`, :func:`choice` or
:func:`flag`; the base class checks them all after construction, so every attack, the CLI and
configuration files get the same errors ("The 'steps' parameter of PGD must be an int >= 1;
got 0 instead.") and the same help text.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


@dataclass(frozen=True)
class Rule:
    """What a parameter accepts: a description, a test, and an optional conversion."""

    expected: str
    test: Callable[[Any], bool]
    convert: Callable[[Any], Any] | None = None
    optional: bool = False


def _range_text(low: float | None, high: float | None, low_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"<= {high:g}")
    return " and ".join(parts)


def integer(
    default: int | None,
    *,
    help: str,
    low: int | None = None,
    high: int | None = None,
    optional: bool = False,
) -> Any:
    """An int field, within ``[low, high]``; ``optional`` also accepts None."""

    def test(v: Any) -> bool:
        return (
            isinstance(v, int)
            and not isinstance(v, bool)
            and (low is None or v >= low)
            and (high is None or v <= high)
        )

    text = " ".join(filter(None, ["an int", _range_text(low, high, False)]))
    rule = Rule(text + (", or None" if optional else ""), test, optional=optional)
    return field(default=default, metadata={"rule": rule, "help": help})


def real(
    default: float | None,
    *,
    help: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    optional: bool = False,
) -> Any:
    """A finite number field, within the range; ints are accepted and stored as floats."""

    def test(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return False
        if low is not None and (v <= low if low_open else v < low):
            return False
        return high is None or v <= high

    text = " ".join(filter(None, ["a finite number", _range_text(low, high, low_open)]))
    rule = Rule(text + (", or None" if optional else ""), test, float, optional)
    return field(default=default, metadata={"rule": rule, "help": help})


def choice(default: Enum, *, help: str) -> Any:
    """An Enum field; its value as a string is accepted too."""
    enum = type(default)
    names = ", ".join(repr(m.value) for m in enum)

    def test(v: Any) -> bool:
        return isinstance(v, enum)

    def convert(v: Any) -> Any:
        return v if isinstance(v, enum) else enum(v)

    rule = Rule(f"one of {names}", test, convert)
    return field(default=default, metadata={"rule": rule, "help": help})


def flag(default: bool, *, help: str) -> Any:
    """A bool field."""
    rule = Rule("True or False", lambda v: isinstance(v, bool))
    return field(default=default, metadata={"rule": rule, "help": help})
