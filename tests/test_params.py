"""One way to validate parameters (:mod:`mallory.params`).

Two halves: unit tests of the constraints themselves (intervals with open and closed ends, ints
against reals against bools, NaN and inf, options from Enums given as strings, None, sequences,
conversions that keep their own reason), and tests generated from the declarations: for every
registered attack, every field of ThreatModel, ThreatPlan and Campaign, every shared parameter
of the systems, the judge, the policies, the server's settings and the training recipes, each
value the parameter's constraint says it refuses is refused in the one message form that names
the parameter, the value and what is allowed. A new attack or field is tested without anyone
writing a test for it.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from collections.abc import Callable, Mapping
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import mallory
from mallory.access.judge import JUDGE_PARAMS, Judge
from mallory.access.policies import POLICY_PARAMS, Ban, QueryBudget, RateLimit, TokenBucket
from mallory.attacks.surrogate import ARCHITECTURE, EPOCHS, SEED, train_surrogate
from mallory.defenses import training
from mallory.defenses.smoothing import SMOOTHING_PARAMS, SmoothedClassifier
from mallory.defenses.stages import center_crop
from mallory.errors import InputError, MalloryError, shown
from mallory.evaluation.campaign import Campaign, ThreatPlan
from mallory.evaluation.config_table import Table
from mallory.params import (
    RULE,
    Boolean,
    Constraint,
    Converted,
    Instance,
    Interval,
    ListOf,
    Names,
    Options,
    OrNone,
    PairsOf,
    Refused,
    Rule,
    Text,
    check_fields,
    constraints,
    param,
)
from mallory.serve import ServeSettings
from mallory.systems import CallableModel, TorchModel
from mallory.systems.base import SYSTEM_PARAMS, Stage, System
from mallory.systems.http.mapping import HttpMapping
from mallory.systems.http.model import _OPTIONS, HTTP_PARAMS, HttpModel
from mallory.systems.pipeline import Pipeline
from mallory.threat import ThreatModel, white_box
from mallory.zoo.datasets import Dataset


def one_form(owner: str, name: str, constraint: Constraint, value: object) -> str:
    """The start of the one message form for ``value`` refused as ``name`` of ``owner``."""
    return (
        f"The {name!r} parameter of {owner} must be {constraint.expected}; got {shown(value)} "
        "instead"
    )


def assert_refused(
    make: Callable[[Any], object],
    owner: str,
    name: str,
    constraint: Constraint,
    *,
    none_is_default: bool = False,
) -> None:
    """Every invalid example of ``constraint``, given as ``name`` to ``make``, is refused with
    the one message form (a conversion's own reason may follow after a colon).
    ``none_is_default``: None means "not given" for this parameter, and is not an example."""
    examples = [
        bad for bad in constraint.invalid_examples() if not (none_is_default and bad is None)
    ]
    assert examples, f"{owner}.{name}: its constraint gives no invalid example"
    for bad in examples:
        with pytest.raises(InputError) as caught:
            make(bad)
        message = str(caught.value)
        start = one_form(owner, name, constraint, bad)
        assert message.startswith(start), f"{message!r} does not start with {start!r}"
        assert message[len(start) :] == "." or message[len(start) :].startswith(": "), message


# ================================================================ generated: attacks
ATTACK_PARAMS = [
    (name, param_name)
    for name in mallory.list_attacks()
    for param_name in constraints(mallory.attack_class(name))
]


def test_every_attack_parameter_has_a_constraint() -> None:
    for name in mallory.list_attacks():
        cls = mallory.attack_class(name)
        unchecked = [f.name for f in dataclasses.fields(cls) if f.name not in constraints(cls)]
        assert not unchecked, f"{name}: no constraint on {unchecked}"


@pytest.mark.parametrize(
    ("attack", "name"), ATTACK_PARAMS, ids=[f"{a}.{p}" for a, p in ATTACK_PARAMS]
)
def test_attack_parameters_refuse_what_their_constraint_refuses(attack: str, name: str) -> None:
    cls = mallory.attack_class(attack)
    cls()  # the defaults pass
    assert_refused(lambda bad: cls(**{name: bad}), cls.__name__, name, constraints(cls)[name])
    assert cls.describe()["params"][name]["expected"] == constraints(cls)[name].expected


# ====================================================== generated: threat models, campaigns
@pytest.mark.parametrize("name", list(constraints(ThreatModel)))
def test_threat_model_fields(name: str) -> None:
    assert_refused(
        lambda bad: ThreatModel(**{name: bad}), "ThreatModel", name, constraints(ThreatModel)[name]
    )


def test_every_threat_model_field_has_a_constraint() -> None:
    assert list(constraints(ThreatModel)) == [f.name for f in dataclasses.fields(ThreatModel)]


def _tiny_system() -> CallableModel:
    return CallableModel(
        lambda x: torch.softmax(x.flatten(1)[:, :3], 1),
        input_shape=(4,),
        num_classes=3,
        bounds=(0.0, 1.0),
        differentiable=True,
    )


def _tiny_data() -> Dataset:
    return Dataset(
        name="tiny",
        x=torch.rand(6, 4),
        y=torch.arange(6) % 3,
        input_shape=(4,),
        bounds=(0.0, 1.0),
        class_names=("a", "b", "c"),
    )


def _plan() -> ThreatPlan:
    return ThreatPlan(threat=white_box("linf", 0.1), attacks=(mallory.create("fgsm"),))


@pytest.mark.parametrize("name", list(constraints(ThreatPlan)))
def test_threat_plan_fields(name: str) -> None:
    valid = {"threat": white_box("linf", 0.1), "attacks": (mallory.create("fgsm"),)}
    assert_refused(
        lambda bad: ThreatPlan(**{**valid, name: bad}),
        "ThreatPlan",
        name,
        constraints(ThreatPlan)[name],
    )


@pytest.mark.parametrize("name", list(constraints(Campaign)))
def test_campaign_fields(name: str) -> None:
    valid = {"name": "c", "system": _tiny_system(), "data": _tiny_data(), "plans": (_plan(),)}
    Campaign(**valid)
    assert_refused(
        lambda bad: Campaign(**{**valid, name: bad}), "Campaign", name, constraints(Campaign)[name]
    )


def test_every_campaign_field_has_a_constraint() -> None:
    for cls in (Campaign, ThreatPlan):
        assert list(constraints(cls)) == [f.name for f in dataclasses.fields(cls)]


# ================================================================ generated: systems
def _module() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


def _fail(request: Any) -> Any:
    raise AssertionError("a parameter check must come before any request")


def _tiny_image_system() -> TorchModel:
    return TorchModel(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), input_shape=(1, 2, 2))


# each system: its class, how to build it with some parameters given, and the constraints of
# the parameters it checks
SYSTEMS: dict[str, tuple[type, Callable[..., object], Mapping[str, Constraint]]] = {
    "System": (
        System,
        lambda **kw: System(
            [Stage(name="model", fn=lambda x: x)],
            **{"input_shape": (3,), "bounds": (0.0, 1.0), "num_classes": 3, **kw},
        ),
        SYSTEM_PARAMS,
    ),
    "TorchModel": (
        TorchModel,
        lambda **kw: TorchModel(_module(), **{"input_shape": (4,), **kw}),
        SYSTEM_PARAMS,
    ),
    "CallableModel": (
        CallableModel,
        lambda **kw: CallableModel(
            lambda x: x[:, :3],
            **{"input_shape": (4,), "num_classes": 3, "bounds": (0.0, 1.0), **kw},
        ),
        SYSTEM_PARAMS,
    ),
    "Pipeline": (
        Pipeline,
        lambda **kw: Pipeline([center_crop(), _tiny_image_system()], **kw),
        {**SYSTEM_PARAMS, "exposes": OrNone(SYSTEM_PARAMS["exposes"])},
    ),
    "HttpModel": (
        HttpModel,
        lambda **kw: HttpModel("http://127.0.0.1:9", transport=_fail, **kw),
        {k: v for k, v in HTTP_PARAMS.items() if k not in _OPTIONS},
    ),
}
SYSTEM_CASES = [
    (system, name)
    for system, (cls, _, table) in SYSTEMS.items()
    for name in table
    if name in inspect.signature(cls).parameters
]


@pytest.mark.parametrize(
    ("system", "name"), SYSTEM_CASES, ids=[f"{s}.{p}" for s, p in SYSTEM_CASES]
)
def test_system_parameters(system: str, name: str) -> None:
    cls, make, table = SYSTEMS[system]
    default = inspect.signature(cls).parameters[name].default
    assert_refused(
        lambda bad: make(**{name: bad}), system, name, table[name], none_is_default=default is None
    )


def test_the_shared_system_parameters_are_all_tested() -> None:
    tested = {name for _, name in SYSTEM_CASES}
    assert set(SYSTEM_PARAMS) <= tested


def test_a_refusal_label_outside_the_classes() -> None:
    _, make, _ = SYSTEMS["CallableModel"]
    system = make()
    assert isinstance(system, System)
    with pytest.raises(InputError, match=r"'refusal_label' parameter of CallableModel\.with_"):
        system.with_policies(refusal_label=3)


# ================================================================ generated: the rest
OTHERS: list[tuple[str, Callable[..., object], Mapping[str, Constraint]]] = [
    ("Judge", lambda **kw: Judge(_tiny_system(), **kw), JUDGE_PARAMS),
    ("QueryBudget", QueryBudget, {k: POLICY_PARAMS[k] for k in ("per_sample", "total")}),
    (
        "RateLimit",
        lambda **kw: RateLimit(**{"rate": 1.0, **kw}),
        {k: POLICY_PARAMS[k] for k in ("rate", "burst", "per")},
    ),
    (
        "a rate limit",
        lambda **kw: TokenBucket(**{"rate": 1.0, **kw}),
        {"burst": POLICY_PARAMS["burst"]},
    ),
    ("Ban", Ban, {"after": POLICY_PARAMS["after"]}),
    ("serve", ServeSettings, constraints(ServeSettings)),
    (
        "HttpMapping",
        lambda **kw: HttpMapping(**{"path": "/p", "labels": "label", **kw}),
        constraints(HttpMapping),
    ),
    (
        "SmoothedClassifier",
        lambda **kw: SmoothedClassifier(**{"base": _tiny_system(), "sigma": 0.5, **kw}),
        {k: SMOOTHING_PARAMS[k] for k in ("base", "sigma", "n", "alpha", "batch", "name")},
    ),
    (
        "train_surrogate",
        lambda **kw: train_surrogate(torch.rand(4, 4), torch.arange(4) % 2, **kw),
        {"architecture": ARCHITECTURE, "epochs": EPOCHS, "seed": SEED},
    ),
]
OTHER_CASES = [(owner, name) for owner, _, table in OTHERS for name in table]


@pytest.mark.parametrize(("owner", "name"), OTHER_CASES, ids=[f"{o}.{p}" for o, p in OTHER_CASES])
def test_other_parameters(owner: str, name: str) -> None:
    make, table = next((m, t) for o, m, t in OTHERS if o == owner)
    none_is_default = owner == "SmoothedClassifier" and name == "name"
    assert_refused(
        lambda bad: make(**{name: bad}),
        owner,
        name,
        table[name],
        none_is_default=none_is_default,
    )


RECIPES = [
    cls
    for cls in vars(mallory.defenses).values()
    if isinstance(cls, type) and issubclass(cls, training.Recipe) and cls is not training.Recipe
]
RECIPE_CASES = [(cls, name) for cls in RECIPES for name in constraints(cls)]


@pytest.mark.parametrize(
    ("recipe", "name"), RECIPE_CASES, ids=[f"{c.__name__}.{p}" for c, p in RECIPE_CASES]
)
def test_recipe_parameters(recipe: type, name: str) -> None:
    required = {
        f.name: 0.1
        for f in dataclasses.fields(recipe)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    assert_refused(
        lambda bad: recipe(**{**required, name: bad}),
        recipe.__name__,
        name,
        constraints(recipe)[name],
    )


# ================================================================ the constraints themselves
class Colour(StrEnum):
    RED = "red"
    DARK_BLUE = "dark-blue"


def test_interval_ends_closed_and_open() -> None:
    closed = Interval(0.0, 1.0)
    assert closed.coerce(0) == 0.0 and closed.coerce(1.0) == 1.0
    assert closed.expected == "a finite number >= 0 and <= 1"
    opened = Interval(0.0, 1.0, low_open=True, high_open=True)
    assert opened.expected == "a finite number > 0 and < 1"
    for edge in (0.0, 1.0, 0, 1):
        assert not opened.accepts(edge)
    assert opened.coerce(0.5) == 0.5
    assert Interval(low=2, integral=True).expected == "an int >= 2"
    assert Interval().expected == "a finite number"


def test_interval_ints_reals_and_bools() -> None:
    real, whole = Interval(low=0.0), Interval(low=0, integral=True)
    stored = real.coerce(3)
    assert stored == 3.0 and isinstance(stored, float)  # an int is a real number, kept as float
    assert whole.coerce(3) == 3 and isinstance(whole.coerce(3), int)
    assert not whole.accepts(3.0)  # a float is no int, even a whole one
    for flag in (True, False):
        assert not real.accepts(flag) and not whole.accepts(flag)  # a bool is no number
    assert not real.accepts("3") and not whole.accepts("3")
    assert not real.accepts(10**400)  # too large for a float
    odd = Interval(low=1, integral=True, odd=True)
    assert odd.expected == "an odd int >= 1"
    assert odd.accepts(3) and not odd.accepts(4)
    with pytest.raises(ValueError):
        Interval(odd=True)
    with pytest.raises(ValueError):
        Interval(2, 1)


def test_interval_nan_and_inf() -> None:
    finite = Interval(low=0.0)
    assert not finite.accepts(math.nan) and not finite.accepts(math.inf)
    unbounded = Interval(low=0.0, finite=False, note="inf: unbounded")
    assert unbounded.coerce(math.inf) == math.inf
    assert not unbounded.accepts(math.nan) and not unbounded.accepts(-math.inf)
    assert unbounded.expected == "a number >= 0 (inf: unbounded)"


def test_interval_toml_words() -> None:
    assert Interval(low=1, integral=True).toml_expected == "an integer >= 1"
    assert Interval(low=1, integral=True).toml_type == "integer"
    assert Interval().toml_type == "float"


def test_options_from_an_enum_take_its_values_as_strings() -> None:
    colours = Options(Colour)
    assert colours.coerce("dark-blue") is Colour.DARK_BLUE
    assert colours.coerce(Colour.RED) is Colour.RED
    assert colours.choices == ("red", "dark-blue")
    assert colours.expected == "one of 'red', 'dark-blue'"
    for bad in ("DARK_BLUE", "RED", "Red", 0, None, "blue"):
        assert not colours.accepts(bad), bad
    assert colours.enum is Colour


def test_options_of_strings_and_their_enum_for_the_cli() -> None:
    letters = Options(["a", "b-c"])
    assert letters.values == ("a", "b-c") and letters.enum is None
    assert letters.coerce("b-c") == "b-c" and not letters.accepts("c")
    made = letters.as_enum("Letters")
    assert issubclass(made, Enum) and [m.value for m in made] == ["a", "b-c"]
    with pytest.raises(ValueError):
        Options(())


def test_boolean_text_and_instance() -> None:
    assert Boolean().coerce(False) is False
    for bad in (0, 1, "true", None):
        assert not Boolean().accepts(bad)
    assert Boolean().toml_expected == "true or false"
    assert Text().coerce("x") == "x" and not Text().accepts("  ") and not Text().accepts(3)
    assert Text(blank=True).coerce("") == ""
    paths = Instance((str, Path), "a path")
    assert paths.accepts(Path(".")) and not paths.accepts(3)
    assert "text" not in paths.invalid_examples()  # a str is a path here


def test_or_none_and_toml_budgets() -> None:
    budget = OrNone(Interval(low=0, integral=True), "for no budget", toml_none=math.inf)
    assert budget.coerce(None) is None and budget.coerce(5) == 5
    assert budget.expected == "an int >= 0, or None for no budget"
    assert budget.toml_expected == "an integer >= 0, or inf for no budget"
    assert budget.from_toml(math.inf) is None and budget.from_toml(3) == 3
    assert None not in budget.invalid_examples()
    assert OrNone(Text()).toml_expected == "a non-empty string"  # a file leaves the key out


def test_list_of() -> None:
    shape = ListOf(Interval(low=1, integral=True), nonempty=True)
    assert shape.coerce([1, 28, 28]) == (1, 28, 28)
    assert shape.coerce(torch.Size([2, 3])) == (2, 3)
    for bad in ([], "12", [0], [1.5], None, (1, True)):
        assert not shape.accepts(bad), bad
    assert shape.expected == "a non-empty sequence, each an int >= 1"
    band = ListOf(Interval(0.0, 1.0), length=2, order="<=")
    assert band.coerce([0, 1]) == (0.0, 1.0) and band.coerce((0.5, 0.5)) == (0.5, 0.5)
    assert not band.accepts((0.9, 0.1)) and not band.accepts((0.1,))
    assert band.expected == "a pair, each a finite number >= 0 and <= 1, each at most the next"
    strict = ListOf(Interval(), length=2, order="<")
    assert not strict.accepts((1, 1))
    assert band.toml_type == "array" and band.from_toml([0, 1]) == [0, 1]


def test_pairs_of() -> None:
    knowledge = PairsOf(Text(), Options(Colour))
    assert knowledge.coerce({"m": "red"}) == (("m", Colour.RED),)
    assert knowledge.coerce([("m", Colour.RED)]) == (("m", Colour.RED),)
    for bad in ({"m": "blue"}, {3: "red"}, [("m",)], "m=red"):
        assert not knowledge.accepts(bad), bad
    headers = PairsOf(Text(blank=True), Text(blank=True), as_dict=True)
    assert headers.coerce({"X": ""}) == {"X": ""}


def test_names() -> None:
    tricks = Names(("blur", "jpeg"), what="tricks")
    assert tricks.parse("all") == () and tricks.parse(" jpeg, blur ,jpeg") == ("jpeg", "blur")
    assert tricks.coerce(" jpeg ") == " jpeg "  # stored as given
    for bad in ("", ",", "blur,blurr", 3):
        assert not tricks.accepts(bad), bad
    assert tricks.expected == "'all' or a comma-separated list of tricks among blur, jpeg"


def test_converted_keeps_its_own_reason() -> None:
    def double(value: Any) -> Any:
        if value == "explain":
            raise InputError("a reason of its own")
        return 2 * value  # "x" * 2 is a str, refused by the inner constraint

    doubled = Converted(Interval(low=0, integral=True), double, "half of an int >= 0")
    assert doubled.coerce(3) == 6
    with pytest.raises(InputError) as caught:
        doubled.check("Owner", "p", "explain")
    assert str(caught.value) == (
        "The 'p' parameter of Owner must be half of an int >= 0; got 'explain' instead: a "
        "reason of its own"
    )
    with pytest.raises(InputError, match=r"^The 'p' parameter of Owner must be half.*; got None"):
        doubled.check("Owner", "p", None)  # 2 * None: a TypeError, refused in one form
    assert all(not doubled.accepts(v) for v in doubled.invalid_examples())


def test_a_hand_written_rule_still_works() -> None:
    def strict(value: object) -> str:
        if value not in ("a", "b"):
            raise InputError(f"There is no letter {value!r} here.")
        return str(value)

    rule = Rule("'a' or 'b'", lambda v: v in ("a", "b"), convert=strict, optional=True)
    assert rule.coerce(None) is None and rule.coerce("a") == "a"
    assert rule.expected == "'a' or 'b', or None"
    with pytest.raises(InputError, match=r"got 'z' instead: There is no letter 'z' here\.$"):
        rule.check("Picky", "letter", "z")


SAMPLES: list[Constraint] = [
    Interval(0.0, 1.0, low_open=True),
    Interval(low=1, high=9, integral=True, odd=True),
    Interval(finite=False),
    Options(Colour),
    Options(("x", "y")),
    Boolean(),
    Text(),
    Text(blank=True),
    Instance(Path, "a path"),
    OrNone(Interval(low=0, integral=True)),
    ListOf(Interval(low=1, integral=True), nonempty=True),
    ListOf(Interval(), length=2, order="<"),
    PairsOf(Text(), Options(Colour)),
    Names(("blur", "jpeg")),
]


@pytest.mark.parametrize("constraint", SAMPLES, ids=[repr(c) for c in SAMPLES])
def test_invalid_examples_are_refused_in_the_one_form(constraint: Constraint) -> None:
    for bad in constraint.invalid_examples():
        with pytest.raises(Refused):
            constraint.coerce(bad)
        with pytest.raises(InputError) as caught:
            constraint.check("Owner", "p", bad)
        assert str(caught.value) == one_form("Owner", "p", constraint, bad) + "."
        assert isinstance(caught.value, MalloryError) and isinstance(caught.value, ValueError)


def test_long_values_are_cut_short_in_messages() -> None:
    with pytest.raises(InputError) as caught:
        Interval().check("Owner", "x", list(range(1000)))
    message = str(caught.value)
    assert len(message) < 300 and message.endswith(" ...> instead.")


# ================================================================ declaring fields
@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    steps: int = param(Interval(low=1, integral=True), 10, help="how many")
    colour: Colour = param(Options(Colour), Colour.RED, help="which")
    limit: float | None = param(OrNone(Interval(low=0.0)), None, help="up to")
    required: str = param(Text(), help="no default")
    plain: int = 0  # no constraint: not checked

    def __post_init__(self) -> None:
        check_fields(self)


def test_fields_declare_their_constraint_once() -> None:
    made = Settings(required="r", colour="dark-blue", limit=2)  # type: ignore[arg-type]
    assert made.colour is Colour.DARK_BLUE and made.limit == 2.0
    assert list(constraints(Settings)) == ["steps", "colour", "limit", "required"]
    assert dataclasses.fields(Settings)[0].metadata[RULE] == Interval(low=1, integral=True)
    with pytest.raises(InputError, match=r"^The 'steps' parameter of Settings must be an int"):
        Settings(required="r", steps=0)
    with pytest.raises(TypeError, match="required"):
        Settings()  # type: ignore[call-arg]


def test_constraints_are_plain_comparable_data() -> None:
    assert Interval(low=1, integral=True) == Interval(low=1, integral=True)
    assert OrNone(Options(Colour)) == OrNone(Options(Colour))
    assert "lambda" not in repr(constraints(ThreatModel))


# ================================================================ campaign files
def test_a_table_reads_by_constraint_in_toml_words() -> None:
    table = Table({"n": 3, "k": "1", "b": 1, "q": math.inf, "c": "reed"}, "t", "f.toml", "nkbqc")
    assert table.read("n", Interval(low=1, integral=True)) == 3
    assert table.read("q", OrNone(Interval(low=0, integral=True), toml_none=math.inf)) is None
    assert table.read("absent", Text(), "x") == "x"
    with pytest.raises(
        InputError, match=re.escape("f.toml: t.k: must be an integer >= 1; got a string ('1').")
    ):
        table.read("k", Interval(low=1, integral=True))
    with pytest.raises(
        InputError, match=re.escape("t.b: must be true or false; got an integer (1).")
    ):
        table.read("b", Boolean())
    with pytest.raises(
        InputError, match=r"t\.c: must be one of 'red', 'dark-blue'.*did you mean 'red'"
    ):
        table.read("c", Options(Colour))
    with pytest.raises(InputError, match=r"t\.n: must be a finite number"):
        Table({"n": True}, "t", "f.toml", "n").read("n", Interval())  # a boolean is no number
