"""Declared parameters for defenses: the attacks' field rules, checked the same way.

A recipe's fields are declared with :mod:`mallory.attacks.params` (``integer``, ``real``,
``choice``, ``flag``), so recipes, attacks, the CLI and configuration files share one message
form: "The 'eps' parameter of PGDTraining must be a finite number > 0; got -1 instead.".
:func:`rules_of` declares such a field without a default (an ``eps`` has no value that fits
every dataset): ``eps: float = dataclasses.field(metadata=rules_of(real(None, ...)))``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any

from mallory.attacks.params import Rule
from mallory.errors import InputError, bad_param


def rules_of(declared: Any) -> Mapping[str, Any]:
    """The metadata (rule and help) of a field declared with ``integer``, ``real``, ...: give
    it to ``dataclasses.field(metadata=...)`` to declare a required field of that rule."""
    if not isinstance(declared, dataclasses.Field):
        raise TypeError(f"rules_of() takes a declared field; got {declared!r}")
    return declared.metadata


def check_fields(obj: Any) -> None:
    """Validate and convert every declared field of the frozen dataclass ``obj`` in place."""
    owner = type(obj).__name__
    for f in dataclasses.fields(obj):
        rule: Rule | None = f.metadata.get("rule")
        if rule is None:
            continue
        value = getattr(obj, f.name)
        if value is None and rule.optional:
            continue
        if rule.convert is not None and not isinstance(value, bool):  # True is no number
            with contextlib.suppress(TypeError, ValueError):  # reported below, in one form
                value = rule.convert(value)
        if not rule.test(value):
            raise bad_param(owner, f.name, rule.expected, getattr(obj, f.name))
        object.__setattr__(obj, f.name, value)


def check_number(
    owner: str,
    name: str,
    value: object,
    *,
    low: float,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integral: bool = False,
    odd: bool = False,
) -> None:
    """Raise the one-form InputError unless ``value`` is a number (an int when ``integral``)
    in the interval from ``low`` to ``high`` (open ends as asked)."""
    kind = "an odd int" if odd else "an int" if integral else "a finite number"
    parts = [f"{'>' if low_open else '>='} {low:g}"]
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    expected = f"{kind} {' and '.join(parts)}"
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and integral:
        ok = isinstance(value, int) and (not odd or value % 2 == 1)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = v == v and v not in (float("inf"), float("-inf"))
        ok = ok and (v > low if low_open else v >= low)
        if high is not None:
            ok = ok and (v < high if high_open else v <= high)
    if not ok:
        raise bad_param(owner, name, expected, value)


def check_type(owner: str, name: str, value: object, kind: type, expected: str) -> None:
    """Raise the one-form InputError unless ``value`` is an instance of ``kind``."""
    if not isinstance(value, kind):
        raise InputError(
            f"The {name!r} parameter of {owner} must be {expected}; got "
            f"{type(value).__name__} {value!r} instead."
        )
