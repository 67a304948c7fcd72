"""Checks of an attack class that need no system: documentation, the frozen keyword-only
dataclass, its defaults, and the errors its parameters raise.

Parameter rules are read through :meth:`Attack.describe` (``expected`` and ``help`` of each
parameter), never through how a rule is stored, so any way of declaring fields that feeds
``describe()`` and validates on construction passes.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from collections.abc import Callable
from enum import Enum
from typing import Any

from mallory.attacks.base import REGISTRY, Attack
from mallory.attacks.base import create as create_registered
from mallory.attacks.evasion.base import EvasionAttack
from mallory.errors import InputError
from mallory.testing.checks import Check, Findings

# values no parameter rule should accept: each must raise an InputError naming the parameter
BAD_VALUES: tuple[object, ...] = (object(), "not-a-value", math.nan)
_PROBE = "_conformance_probe"


def label(cls: type[Attack]) -> str:
    """How messages name the attack: its registered name and class, or its class."""
    return f"{cls.name!r} ({cls.__name__})" if cls.name else cls.__name__


def registered(cls: type[Attack]) -> bool:
    return bool(cls.name) and REGISTRY.get(cls.name) is cls


def build(cls: type[Attack], **params: Any) -> Attack:
    """The attack with ``params``: through :func:`mallory.create` when it is registered (so
    unknown names are caught the way users meet them), else its constructor."""
    if registered(cls):
        attack: Attack = create_registered(cls.name, **params)
        return attack
    return cls(**params)


def class_checks(cls: type[Attack], given: Attack | None) -> list[Check]:
    """The checks of ``cls`` that run no attack; ``given`` is an instance the caller passed
    (its parameters must round-trip too)."""
    subject = label(cls)

    def make(name: str, explains: str, body: Callable[[Findings], None]) -> Check:
        return Check(name, subject, explains, body)

    return [
        make(
            "documented",
            "names its paper, has a docstring, and documents every parameter (help and rule); "
            "describe() is JSON",
            lambda f: _documented(cls, f),
        ),
        make(
            "frozen-keyword-only-dataclass",
            "a frozen, keyword-only dataclass of its own whose params() round-trip through its "
            "constructor and mallory.create",
            lambda f: _frozen(cls, given, f),
        ),
        make(
            "defaults-valid",
            "builds with its defaults, which describe() reports, and with its fast parameters",
            lambda f: _defaults(cls, f),
        ),
        make(
            "bad-values-named",
            "a bad value of any parameter is an InputError that names the parameter and the class",
            lambda f: _bad_values(cls, f),
        ),
    ]


# ---------------------------------------------------------------- documentation
def _own_docstring(cls: type[Attack]) -> str:
    doc = cls.__dict__.get("__doc__") or ""
    # @dataclass writes "Name(field: type = ...)" where a class has no docstring
    return "" if doc.startswith(f"{cls.__name__}(") else doc


def _documented(cls: type[Attack], f: Findings) -> None:
    who = label(cls)
    if cls.name and not registered(cls):
        owner = REGISTRY.get(cls.name)
        f.fail(
            f"{cls.__name__} carries the name {cls.name!r}, which the registry gives to "
            f"{owner.__name__ if owner else 'no class'}: its results would be reported under "
            "that name. Register it under a name of its own with mallory.register(name) (a "
            "subclass inherits its parent's name), and never set name by hand",
        )
    f.expect(
        bool(cls.paper.strip()),
        f"{who} names no paper: set the class attribute paper = 'Author et al., Title, Venue "
        "Year' (the method it implements, or the baseline it follows)",
    )
    doc = _own_docstring(cls)
    documented = f.expect(
        bool(doc.strip()),
        f"{who} has no docstring of its own: say what it does, the paper, the threat model it "
        "needs, shapes and defaults",
    )
    if documented and cls.paper.strip():
        first_author = cls.paper.replace(",", " ").split()[0]
        f.expect(
            first_author in doc,
            f"the docstring of {who} does not name {first_author!r}, the first author of its "
            f"paper ({cls.paper!r})",
        )
    try:
        described = cls.describe()
    except Exception as error:
        raise f.stop(f"{who}.describe() raised {type(error).__name__}: {error}") from error
    f.expect(described.get("name") == cls.name, f"describe() names it {described.get('name')!r}")
    f.expect(
        described.get("kind") == cls.kind.value,
        f"describe() gives kind {described.get('kind')!r}; the class says {cls.kind.value!r}",
    )
    f.expect(described.get("paper") == cls.paper, "describe() does not give the class's paper")
    f.expect(
        bool(described.get("summary")),
        f"describe() of {who} has no summary (the first line of the docstring)",
    )
    f.expect(
        described.get("access") == cls.access.name.lower(),
        f"describe() gives access {described.get('access')!r}; the class says "
        f"{cls.access.name.lower()!r}",
    )
    if issubclass(cls, EvasionAttack):
        norms = set(described.get("norms", ()))
        goals = set(described.get("goals", ()))
        f.expect(
            bool(norms) and norms == {n.value for n in cls.norms},
            f"describe() gives norms {sorted(norms)}; the class supports "
            f"{sorted(n.value for n in cls.norms)} (and must support one at least)",
        )
        f.expect(
            bool(goals) and goals == {g.value for g in cls.goals},
            f"describe() gives goals {sorted(goals)}; the class supports "
            f"{sorted(g.value for g in cls.goals)} (and must support one at least)",
        )
        f.expect(
            described.get("minimizes") == cls.minimizes,
            "describe() and the class disagree on whether it minimizes",
        )
    params = described.get("params", {})
    fields = [fl.name for fl in dataclasses.fields(cls)]
    f.expect(
        list(params) == fields,
        f"describe() lists the parameters {list(params)}; the dataclass fields are {fields}",
    )
    for param, info in params.items():
        f.expect(
            bool(str(info.get("help", "")).strip()),
            f"the parameter {param!r} of {who} has no help text: declare it with help='...' "
            "(mallory.attacks.params: integer, real, choice, flag)",
        )
        f.expect(
            bool(str(info.get("expected", "")).strip()),
            f"the parameter {param!r} of {who} has no validation rule: declare it with "
            "mallory.attacks.params (integer, real, choice, flag), which checks its values "
            "on construction",
        )
    try:
        json.dumps(described)
    except (TypeError, ValueError) as error:
        f.expect(False, f"describe() of {who} is not JSON: {error}")


# ---------------------------------------------------------------- the dataclass
def _loose_names(cls: type[Attack]) -> list[str]:
    """Names annotated on the class (or its own bases) that are not dataclass fields."""
    fields = {fl.name for fl in dataclasses.fields(cls)}
    names: list[str] = []
    for klass in cls.__mro__:
        if klass is Attack or not issubclass(klass, Attack):
            continue
        for name, kind in inspect.get_annotations(klass).items():
            if "ClassVar" in str(kind) or name in fields or name.startswith("_"):
                continue
            names.append(name)
    return list(dict.fromkeys(names))


def _frozen(cls: type[Attack], given: Attack | None, f: Findings) -> None:
    who = label(cls)
    own = cls.__dict__.get("__dataclass_params__")
    loose = _loose_names(cls)
    if own is None:
        extra = (
            f" (its parameters {', '.join(map(repr, loose))} are plain class attributes, not "
            "fields: they are neither validated, nor in params(), nor frozen)"
            if loose
            else ""
        )
        f.expect(
            False,
            f"{who} is not a dataclass of its own: decorate it with "
            f"@dataclasses.dataclass(frozen=True, kw_only=True){extra}",
        )
    elif not own.frozen:
        f.expect(False, f"{who} is a dataclass but not frozen: use frozen=True")
    try:
        attack = cls()
    except Exception as error:
        raise f.stop(f"{who}() with its defaults raised {type(error).__name__}: {error}") from error
    params = attack.params()
    fields = [fl.name for fl in dataclasses.fields(cls)]
    f.expect(
        list(params) == fields,
        f"params() gives {list(params)}; the fields are {fields}",
    )
    for name in (*fields[:1], *loose, _PROBE):
        try:
            setattr(attack, name, getattr(attack, name, 1))
        except dataclasses.FrozenInstanceError:
            continue
        except Exception as error:
            f.expect(
                False,
                f"setting {name!r} on {who} raised {type(error).__name__}, not "
                "dataclasses.FrozenInstanceError",
                key="setattr",
            )
            continue
        f.expect(
            False,
            f"instances of {who} can be changed after construction (setting {name!r} worked): "
            "an attack must be a frozen dataclass, so that a run cannot change its parameters",
            key="setattr",
        )
    try:
        cls(1)  # type: ignore[call-arg]
        f.expect(False, f"{who}(1) worked: its parameters must be keyword-only (kw_only=True)")
    except TypeError:
        pass
    except Exception as error:
        f.expect(
            False,
            f"{who}(1) raised {type(error).__name__}, not TypeError: its parameters must be "
            "keyword-only (kw_only=True)",
        )
    for instance, what in ((attack, "the default instance"), (given, "the instance given")):
        if instance is None:
            continue
        _round_trip(cls, instance, what, f)
    try:
        json.dumps(params)
    except (TypeError, ValueError) as error:
        f.expect(False, f"params() of the default {who} is not JSON: {error}")
    f.expect(
        cls.__name__ in repr(attack),
        f"repr() of {who} does not name its class: {repr(attack)[:80]!r}",
    )


def _round_trip(cls: type[Attack], attack: Attack, what: str, f: Findings) -> None:
    who = label(cls)
    params = attack.params()
    try:
        again = cls(**params)
    except Exception as error:
        f.expect(
            False,
            f"{who}(**params()) of {what} raised {type(error).__name__}: {error}: params() must "
            "give back what the constructor takes",
        )
        return
    f.expect(
        again == attack,
        f"{who}(**params()) of {what} is not equal to it: params() must give every "
        "parameter as the constructor takes it back",
    )
    if registered(cls):
        try:
            created = create_registered(cls.name, **params)
        except Exception as error:
            f.expect(False, f"mallory.create({cls.name!r}, **params()) raised {error!r}")
            return
        f.expect(
            created == attack,
            f"mallory.create({cls.name!r}, **params()) of {what} is not equal to it",
        )


# ---------------------------------------------------------------- values
def _plain(value: object) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _defaults(cls: type[Attack], f: Findings) -> None:
    who = label(cls)
    try:
        attack = build(cls)
    except Exception as error:
        raise f.stop(
            f"{who} does not build with its defaults: {type(error).__name__}: {error}"
        ) from error
    described = cls.describe()["params"]
    params = attack.params()
    for param, value in params.items():
        if param not in described:
            continue
        default = described[param]["default"]
        if isinstance(default, Enum):
            default = default.value
        f.expect(
            not _plain(value) or value == default or _both_nan(value, default),
            f"the default of {param!r} is {value!r}, but describe() says {default!r}",
        )
    fields = {fl.name for fl in dataclasses.fields(cls)}
    unknown = sorted(set(cls.fast) - fields)
    if not f.expect(
        not unknown,
        f"{who}.fast names parameters it does not have: {', '.join(map(repr, unknown))}",
    ):
        return
    try:
        quick = build(cls, **dict(cls.fast))
    except Exception as error:
        raise f.stop(
            f"{who} does not build with its fast parameters {dict(cls.fast)!r}: "
            f"{type(error).__name__}: {error}"
        ) from error
    changed = {k for k, v in quick.params().items() if v != params[k]}
    f.expect(
        changed <= set(cls.fast),
        f"building {who} with its fast parameters changed {sorted(changed - set(cls.fast))} "
        "too: a quick run must differ only in what fast names",
    )


def _both_nan(a: object, b: object) -> bool:
    return isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)


def _bad_values(cls: type[Attack], f: Findings) -> None:
    who = label(cls)
    for fl in dataclasses.fields(cls):
        param = fl.name
        for bad in BAD_VALUES:
            try:
                build(cls, **{param: bad})
            except InputError as error:
                message = str(error)
                f.expect(
                    repr(param) in message and cls.__name__ in message,
                    f"the error for {param}={bad!r} does not name the parameter {param!r} and "
                    f"the class {cls.__name__}: {message!r}",
                    key=f"name:{param}",
                )
                f.expect(
                    "must be" in message and "got" in message,
                    f"the error for {param}={bad!r} does not say what was expected and what it "
                    f"got ('... must be ...; got ... instead'): {message!r}",
                    key=f"form:{param}",
                )
            except Exception as error:
                f.expect(
                    False,
                    f"{param}={bad!r} raised {type(error).__name__}, not mallory.InputError: "
                    "declare the parameter with a validation rule",
                    key=f"type:{param}",
                )
            else:
                f.expect(
                    False,
                    f"{who} accepted {param}={bad!r}: the parameter {param!r} is not validated "
                    "on construction (declare it with mallory.attacks.params)",
                    key=f"accepted:{param}",
                )
    if registered(cls):
        try:
            create_registered(cls.name, definitely_not_a_parameter=1)
        except InputError as error:
            f.expect(
                "definitely_not_a_parameter" in str(error) and "batch_size" in str(error),
                f"mallory.create with an unknown parameter must name it and list the real "
                f"ones: {str(error)!r}",
            )
        else:
            f.expect(False, "mallory.create accepted an unknown parameter")
