"""Parameters, checked one way: structured constraints and one message form.

Every value mallory takes from its user (an attack's hyperparameters, a threat model's and a
campaign's fields, a system's constructor arguments, the server's settings, a defense's
parameters, a campaign file's keys) is checked by a **constraint**: data that says what the
parameter accepts, never a hand-written test.

===================  ======================================================================
constraint           accepts
===================  ======================================================================
:class:`Interval`    a number from ``low`` to ``high`` (open or closed ends): an int, or a
                     real (ints accepted, stored as floats), finite unless told otherwise
:class:`Options`     one of a closed set: an Enum's members (or their values as strings), or
                     strings
:class:`Boolean`     True or False
:class:`Text`        a string (non-blank unless told otherwise)
:class:`Instance`    an instance of a class
:class:`OrNone`      None, or what another constraint accepts
:class:`ListOf`      a list or tuple (of a length, in order, when told), each item checked;
                     stored as a tuple
:class:`PairsOf`     a mapping, or (key, value) pairs, each key and value checked; stored as a
                     tuple of pairs (or a dict)
:class:`Names`       a comma-separated list of names from a set, or the word for all of them
:class:`Converted`   what a conversion makes of the value (an attack from its registered
                     name, say), checked by another constraint
===================  ======================================================================

From one constraint come:

- :meth:`Constraint.check`: the value as stored, or an :class:`~mallory.errors.InputError` in
  the one message form, "The 'steps' parameter of PGD must be an int >= 1; got 0 instead."
  (a conversion that fails with a reason of its own keeps it, after a colon);
- :attr:`Constraint.expected`: what it accepts, in words, for help and documentation;
- :meth:`Constraint.invalid_examples`: values it must refuse, for generated tests;
- :attr:`Constraint.toml_type`, :attr:`Constraint.toml_expected` and
  :meth:`Constraint.from_toml`: how a campaign file gives the value (TOML has no null: an
  optional budget reads ``inf`` as None);
- :attr:`Constraint.choices`: the closed set of values, for a CLI option
  (:meth:`Options.as_enum` makes a StrEnum of them for Typer).

A dataclass declares a field's constraint once, with :func:`param` (or, for attacks and
recipes, the shorthands :func:`integer`, :func:`real`, :func:`choice`, :func:`flag`), and runs
them all with :func:`check_fields` in ``__post_init__``; :func:`constraints` lists them for
readers (the campaign file, the CLI, the documentation, the generated tests). A function
checks an argument with ``CONSTRAINT.check(owner, name, value)``, or several with
:func:`check_values` and a table of constraints by name. Checks across parameters stay code,
and say what is wrong with one parameter in the same form (:func:`mallory.errors.bad_param`).
:class:`Rule` (a description, a test function, a conversion) is kept for plug-ins written
before these constraints.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any, Literal

from mallory.errors import MalloryError, bad_param

__all__ = [
    "RULE",
    "Boolean",
    "Constraint",
    "Converted",
    "Instance",
    "Interval",
    "ListOf",
    "Names",
    "Options",
    "OrNone",
    "PairsOf",
    "Refused",
    "Rule",
    "Text",
    "check_fields",
    "check_values",
    "choice",
    "constraints",
    "flag",
    "integer",
    "param",
    "real",
]

RULE = "rule"
"""The key of a field's constraint in its ``dataclasses.field`` metadata (beside ``"help"``)."""


class Refused(Exception):
    """Raised by :meth:`Constraint.coerce`: the value is not one the constraint accepts."""


class Constraint:
    """What a parameter accepts. Subclasses are frozen dataclasses: plain, comparable data."""

    @property
    def expected(self) -> str:
        """What the constraint accepts, in words ("an int >= 1")."""
        raise NotImplementedError

    def coerce(self, value: Any) -> Any:
        """The value as stored (an Enum member for its string, a float for an int, a tuple for
        a list); :class:`Refused` when it is not accepted, or a
        :class:`~mallory.errors.MalloryError` when a conversion has its own reason."""
        raise NotImplementedError

    def invalid_examples(self) -> tuple[Any, ...]:
        """A few values the constraint refuses (for generated tests)."""
        raise NotImplementedError

    def check(self, owner: str, name: str, value: Any) -> Any:
        """``value`` as stored, or an InputError in the one message form naming ``name`` of
        ``owner``, ``value`` and what is expected."""
        try:
            return self.coerce(value)
        except Refused:
            raise bad_param(owner, name, self.expected, value) from None
        except MalloryError as error:  # a conversion's own reason (an inner attack's, say)
            raise bad_param(owner, name, self.expected, value, reason=str(error)) from error

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` passes (a conversion's own error counts as a refusal)."""
        try:
            self.coerce(value)
        except (Refused, MalloryError):
            return False
        return True

    # ---------------------------------------------------------------- campaign files
    @property
    def toml_type(self) -> str:
        """The TOML type that gives the value ("integer", "float", "string", "boolean",
        "array", "table"), or "" when a file cannot give it."""
        return ""

    @property
    def toml_expected(self) -> str:
        """What the constraint accepts, in the words of a TOML file."""
        return self.expected

    def from_toml(self, value: Any) -> Any:
        """A TOML value as the Python value to check (``inf`` for None where that is how a
        file says "no limit")."""
        return value

    # ---------------------------------------------------------------- command line
    @property
    def choices(self) -> tuple[str, ...] | None:
        """The closed set of values as strings, where there is one (for CLI choices)."""
        return None


def _number(value: float, integral: bool) -> str:
    return str(int(value)) if integral else f"{value:g}"


@dataclass(frozen=True)
class Interval(Constraint):
    """A number from ``low`` to ``high`` (None: no bound; ``low_open``/``high_open`` exclude
    the end). ``integral``: an int (bools are not numbers here), else a real number, int or
    float, stored as a float: finite unless ``finite=False`` (then ``inf`` is accepted; NaN
    never is). ``odd``: an odd int. ``note`` is said after the range ("seconds")."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integral: bool = False
    finite: bool = True
    odd: bool = False
    note: str = ""

    def __post_init__(self) -> None:
        if self.odd and not self.integral:
            raise ValueError("Interval(odd=True) needs integral=True")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"Interval with low {self.low} > high {self.high}")

    def _text(self, toml: bool) -> str:
        if self.integral:
            kind = ("an odd " if self.odd else "an ") + ("integer" if toml else "int")
        else:
            kind = "a finite number" if self.finite else "a number"
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_number(self.low, self.integral)}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {_number(self.high, self.integral)}")
        text = " ".join([kind, " and ".join(parts)]).strip()
        return f"{text} ({self.note})" if self.note else text

    @property
    def expected(self) -> str:
        return self._text(toml=False)

    @property
    def toml_expected(self) -> str:
        return self._text(toml=True)

    @property
    def toml_type(self) -> str:
        return "integer" if self.integral else "float"

    def coerce(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Refused
        if self.integral:
            if not isinstance(value, int) or (self.odd and value % 2 == 0):
                raise Refused
        else:
            try:
                number = float(value)
            except OverflowError:  # an int too large for a float
                raise Refused from None
            if math.isnan(number) or (self.finite and math.isinf(number)):
                raise Refused
        low, high = self.low, self.high
        if low is not None and (value <= low if self.low_open else value < low):
            raise Refused
        if high is not None and (value >= high if self.high_open else value > high):
            raise Refused
        return value if self.integral else float(value)

    def invalid_examples(self) -> tuple[Any, ...]:
        out: list[Any] = ["1", None, True, math.nan]
        step = 1 if self.integral else 0.5
        if self.integral:
            out.append(1.5)
        elif self.finite:
            out.append(math.inf)
        if self.low is not None:
            out.append(self.low if self.low_open else self.low - step)
            if not self.integral:
                out.append(-math.inf)
        if self.high is not None:
            out.append(self.high if self.high_open else self.high + step)
        if self.odd:
            even = 0 if self.low is None else int(self.low) + int(self.low) % 2
            if self.high is None or even <= self.high:
                out.append(even)
        return tuple(out)


@dataclass(frozen=True)
class Options(Constraint):
    """One of a closed set: the members of an Enum (their values as strings are accepted and
    converted), or strings (stored as given)."""

    values: type[Enum] | tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.values, type):
            object.__setattr__(self, "values", tuple(self.values))
        if not self.choices:
            raise ValueError("Options needs at least one value")

    @property
    def enum(self) -> type[Enum] | None:
        """The Enum whose members these are, when there is one."""
        return self.values if isinstance(self.values, type) else None

    @property
    def choices(self) -> tuple[str, ...]:
        if isinstance(self.values, type):
            return tuple(str(member.value) for member in self.values)
        return self.values

    def as_enum(self, name: str) -> type[StrEnum]:
        """A StrEnum of the choices (for a Typer option whose choices are strings)."""
        enum: type[StrEnum] = StrEnum(  # type: ignore[assignment, misc]
            name, [(choice, choice) for choice in self.choices]
        )
        return enum

    @property
    def expected(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)

    @property
    def toml_type(self) -> str:
        return "string"

    def coerce(self, value: Any) -> Any:
        enum = self.enum
        if enum is None:
            if isinstance(value, str) and value in self.choices:
                return value
            raise Refused
        if isinstance(value, enum):
            return value
        try:
            return enum(value)
        except (ValueError, TypeError):
            raise Refused from None

    def invalid_examples(self) -> tuple[Any, ...]:
        out: list[Any] = ["no-such-option", "", 3, None]
        shouted = self.choices[0].upper()
        if shouted != self.choices[0]:
            out.append(shouted)
        return tuple(v for v in out if v not in self.choices)


@dataclass(frozen=True)
class Boolean(Constraint):
    """True or False (not 1, 0 or "yes")."""

    @property
    def expected(self) -> str:
        return "True or False"

    @property
    def toml_expected(self) -> str:
        return "true or false"

    @property
    def toml_type(self) -> str:
        return "boolean"

    def coerce(self, value: Any) -> Any:
        if not isinstance(value, bool):
            raise Refused
        return value

    def invalid_examples(self) -> tuple[Any, ...]:
        return (1, 0, "yes", "True", None)


@dataclass(frozen=True)
class Text(Constraint):
    """A string; not empty or only spaces unless ``blank``."""

    blank: bool = False

    @property
    def expected(self) -> str:
        return "a string" if self.blank else "a non-empty string"

    @property
    def toml_type(self) -> str:
        return "string"

    def coerce(self, value: Any) -> Any:
        if not isinstance(value, str) or not (self.blank or value.strip()):
            raise Refused
        return value

    def invalid_examples(self) -> tuple[Any, ...]:
        return (3, None, b"bytes") + (() if self.blank else ("", "  "))


@dataclass(frozen=True)
class Instance(Constraint):
    """An instance of ``kind`` (a class, or a tuple of classes), described as ``what``."""

    kind: type | tuple[type, ...]
    what: str

    @property
    def expected(self) -> str:
        return self.what

    def coerce(self, value: Any) -> Any:
        if not isinstance(value, self.kind):
            raise Refused
        return value

    def invalid_examples(self) -> tuple[Any, ...]:
        return tuple(v for v in (object(), "text", 1.5, None) if not isinstance(v, self.kind))


@dataclass(frozen=True)
class OrNone(Constraint):
    """None, or what ``inner`` accepts. ``meaning`` says what None means ("for unlimited").
    ``toml_none`` is the value a campaign file writes for None (TOML has no null; ``math.inf``
    for "no budget"); without it, a file leaves the key out."""

    inner: Constraint
    meaning: str = ""
    toml_none: float | None = None

    @property
    def expected(self) -> str:
        return " ".join(filter(None, [f"{self.inner.expected}, or None", self.meaning]))

    @property
    def toml_expected(self) -> str:
        if self.toml_none is None:
            return self.inner.toml_expected
        none = f"{self.inner.toml_expected}, or {self.toml_none:g}"
        return " ".join(filter(None, [none, self.meaning]))

    @property
    def toml_type(self) -> str:
        return self.inner.toml_type

    @property
    def choices(self) -> tuple[str, ...] | None:
        return self.inner.choices

    def from_toml(self, value: Any) -> Any:
        if (
            self.toml_none is not None
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and value == self.toml_none
        ):
            return None
        return self.inner.from_toml(value)

    def coerce(self, value: Any) -> Any:
        return None if value is None else self.inner.coerce(value)

    def invalid_examples(self) -> tuple[Any, ...]:
        return tuple(v for v in self.inner.invalid_examples() if v is not None)


_ORDER_WORDS = {"<": "less than", "<=": "at most"}


@dataclass(frozen=True)
class ListOf(Constraint):
    """A list or tuple (not a string), each item checked by ``item``; stored as a tuple.
    ``length``: exactly that many items; ``nonempty``: at least one; ``order``: each item
    ``"<"`` or ``"<="`` the next. ``text`` and ``toml_text`` replace the generated wording."""

    item: Constraint
    length: int | None = None
    nonempty: bool = False
    order: Literal["", "<", "<="] = ""
    text: str = ""
    toml_text: str = ""

    def _text(self, toml: bool) -> str:
        item = self.item.toml_expected if toml else self.item.expected
        if toml:
            size = (
                f"an array of {self.length}"
                if self.length is not None
                else "a non-empty array"
                if self.nonempty
                else "an array"
            )
        else:
            size = (
                "a pair"
                if self.length == 2
                else f"a sequence of {self.length}"
                if self.length is not None
                else "a non-empty sequence"
                if self.nonempty
                else "a sequence"
            )
        order = f", each {_ORDER_WORDS[self.order]} the next" if self.order else ""
        return f"{size}, each {item}{order}"

    @property
    def expected(self) -> str:
        return self.text or self._text(toml=False)

    @property
    def toml_expected(self) -> str:
        return self.toml_text or self.text or self._text(toml=True)

    @property
    def toml_type(self) -> str:
        return "array"

    def from_toml(self, value: Any) -> Any:
        return [self.item.from_toml(v) for v in value] if isinstance(value, list) else value

    def coerce(self, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise Refused
        if (self.length is not None and len(value) != self.length) or (self.nonempty and not value):
            raise Refused
        items = tuple(self.item.coerce(v) for v in value)
        for a, b in itertools.pairwise(items):
            if (self.order == "<" and not a < b) or (self.order == "<=" and not a <= b):
                raise Refused
        return items

    def invalid_examples(self) -> tuple[Any, ...]:
        bad_item = self.item.invalid_examples()[0]
        out: list[Any] = ["text", 3, None, [bad_item] * (self.length or 1)]
        if self.nonempty or self.length:
            out.append([])
        return tuple(out)


@dataclass(frozen=True)
class PairsOf(Constraint):
    """A mapping of keys to values, or a sequence of (key, value) pairs, each key checked by
    ``key`` and each value by ``value``; stored as a tuple of pairs (a dict when
    ``as_dict``)."""

    key: Constraint
    value: Constraint
    text: str = ""
    as_dict: bool = False

    @property
    def expected(self) -> str:
        return self.text or (
            f"a mapping of keys ({self.key.expected}) to values ({self.value.expected})"
        )

    @property
    def toml_type(self) -> str:
        return "table"

    def coerce(self, value: Any) -> Any:
        if isinstance(value, Mapping):
            pairs = list(value.items())
        elif isinstance(value, list | tuple):
            pairs = list(value)
            if not all(isinstance(p, list | tuple) and len(p) == 2 for p in pairs):
                raise Refused
        else:
            raise Refused
        checked = tuple((self.key.coerce(k), self.value.coerce(v)) for k, v in pairs)
        return dict(checked) if self.as_dict else checked

    def invalid_examples(self) -> tuple[Any, ...]:
        return ("text", 3, [("a", "b", "c")], {object(): self.value.invalid_examples()[0]})


@dataclass(frozen=True)
class Names(Constraint):
    """A comma-separated list of names among ``options`` (spaces around names ignored, each
    name once), or ``every`` for all of them; stored as given (:meth:`parse` reads it)."""

    options: tuple[str, ...]
    what: str = "names"
    every: str = "all"

    def parse(self, value: object) -> tuple[str, ...] | None:
        """The names in ``value`` (empty for ``every``); None when it is not valid."""
        if not isinstance(value, str):
            return None
        if value.strip() == self.every:
            return ()
        names = tuple(dict.fromkeys(part.strip() for part in value.split(",")))
        if not names or any(name not in self.options for name in names):
            return None
        return names

    @property
    def expected(self) -> str:
        return (
            f"{self.every!r} or a comma-separated list of {self.what} among "
            f"{', '.join(self.options)}"
        )

    @property
    def toml_type(self) -> str:
        return "string"

    def coerce(self, value: Any) -> Any:
        if self.parse(value) is None:
            raise Refused
        return value

    def invalid_examples(self) -> tuple[Any, ...]:
        return ("", ",", 3, None, f"{self.options[0]},no-such-name")


@dataclass(frozen=True)
class Converted(Constraint):
    """What ``conversion`` makes of the value, checked by ``inner`` (``text`` replaces its
    wording). A conversion that raises TypeError or ValueError refuses the value in the one
    form; one that raises a MalloryError keeps its reason (an unknown inner attack's name
    says which attacks there are)."""

    inner: Constraint
    conversion: Callable[[Any], Any]
    text: str = ""

    @property
    def expected(self) -> str:
        return self.text or self.inner.expected

    @property
    def toml_type(self) -> str:
        return self.inner.toml_type

    def coerce(self, value: Any) -> Any:
        try:
            converted = self.conversion(value)
        except MalloryError:
            raise
        except (TypeError, ValueError):
            raise Refused from None
        return self.inner.coerce(converted)

    def invalid_examples(self) -> tuple[Any, ...]:
        return tuple(v for v in self.inner.invalid_examples() if not self.accepts(v))


class Rule(Constraint):
    """A hand-written rule: a description, a test and an optional conversion.

    Kept for plug-ins written before the structured constraints; prefer those, whose wording,
    invalid examples and campaign-file types come for free. ``convert`` runs first: its
    MalloryError keeps its reason, its TypeError or ValueError leaves the value for ``test``.
    """

    def __init__(
        self,
        expected: str,
        test: Callable[[Any], bool],
        convert: Callable[[Any], Any] | None = None,
        optional: bool = False,
    ) -> None:
        self._expected = expected
        self.test = test
        self.convert = convert
        self.optional = optional

    def __repr__(self) -> str:
        return f"Rule({self._expected!r})"

    @property
    def expected(self) -> str:
        return self._expected + (", or None" if self.optional else "")

    def coerce(self, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if self.convert is not None:
            try:
                value = self.convert(value)
            except MalloryError:
                raise
            except (TypeError, ValueError):
                raise Refused from None
        if not self.test(value):
            raise Refused
        return value

    def invalid_examples(self) -> tuple[Any, ...]:
        return tuple(v for v in (object(),) if not self.test(v))


# ---------------------------------------------------------------- declaring fields
def param(
    constraint: Constraint,
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    default_factory: Any = dataclasses.MISSING,
    compare: bool = True,
) -> Any:
    """A dataclass field checked by ``constraint`` (no default: a required field)."""
    return dataclasses.field(
        default=default,
        default_factory=default_factory,
        compare=compare,
        metadata={RULE: constraint, "help": help},
    )


def constraints(cls: Any) -> dict[str, Constraint]:
    """The constraint of each declared field of a dataclass (or instance), in field order."""
    return {
        f.name: f.metadata[RULE]
        for f in dataclasses.fields(cls)
        if f.metadata.get(RULE) is not None
    }


def check_values(
    owner: str, rules: Mapping[str, Constraint], values: Mapping[str, Any]
) -> dict[str, Any]:
    """Each of ``values`` as stored, checked by the constraint of its name in ``rules`` (the
    arguments of a function or constructor that is not a dataclass)."""
    return {name: rules[name].check(owner, name, value) for name, value in values.items()}


def check_fields(obj: Any, owner: str = "") -> None:
    """Check and convert every declared field of the (frozen) dataclass ``obj`` in place;
    messages name the field of ``owner`` (default: the class's name)."""
    owner = owner or type(obj).__name__
    for name, constraint in constraints(obj).items():
        object.__setattr__(obj, name, constraint.check(owner, name, getattr(obj, name)))


def integer(
    default: int | None,
    *,
    help: str,
    low: int | None = None,
    high: int | None = None,
    optional: bool = False,
) -> Any:
    """An int field within ``[low, high]``; ``optional`` also accepts None."""
    rule: Constraint = Interval(low, high, integral=True)
    return param(OrNone(rule) if optional else rule, default, help=help)


def real(
    default: float | None,
    *,
    help: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    optional: bool = False,
) -> Any:
    """A finite number field within the range; ints are accepted and stored as floats."""
    rule: Constraint = Interval(low, high, low_open=low_open)
    return param(OrNone(rule) if optional else rule, default, help=help)


def choice(default: Enum, *, help: str) -> Any:
    """An Enum field; its value as a string is accepted too."""
    return param(Options(type(default)), default, help=help)


def flag(default: bool, *, help: str) -> Any:
    """A bool field."""
    return param(Boolean(), default, help=help)
