"""ThreatModel: presets, immutability, validation of impossible combinations, serialization."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

import mallory
from mallory import Exposure, Goal, InputError, Knowledge, Norm, Targets, ThreatModel
from mallory.threat import PRESETS


# ---------------------------------------------------------------- presets
def test_white_box_preset() -> None:
    t = mallory.white_box("linf", 0.3)
    assert t.name == "white-box"
    assert (t.norm, t.eps) == (Norm.LINF, 0.3)
    assert t.knowledge is Knowledge.PERFECT
    assert t.exposure is Exposure.LOGITS
    assert t.adaptive is True
    assert t.queries_per_sample is None and t.queries_total is None
    assert t.goal is Goal.UNTARGETED
    assert t.description


def test_score_based_preset() -> None:
    t = mallory.score_based("l2", 1.5)
    assert t.name == "score-based"
    assert (t.norm, t.eps) == (Norm.L2, 1.5)
    assert t.knowledge is Knowledge.ZERO
    assert t.exposure is Exposure.SCORES
    assert t.queries_per_sample == 1000
    assert t.adaptive is False
    assert mallory.score_based(queries=50).queries_per_sample == 50
    assert mallory.score_based(queries=None).queries_per_sample is None


def test_label_only_preset() -> None:
    t = mallory.label_only()
    assert t.name == "label-only"
    assert t.norm is Norm.L2 and math.isinf(t.eps)
    assert t.knowledge is Knowledge.ZERO
    assert t.exposure is Exposure.LABEL
    assert t.queries_per_sample == 1000
    assert t.adaptive is False
    assert not t.sees_scores


def test_transfer_preset() -> None:
    t = mallory.transfer("linf", 0.1)
    assert t.name == "transfer"
    assert t.knowledge is Knowledge.LIMITED
    assert t.exposure is Exposure.LABEL
    assert t.queries_per_sample == 1
    assert t.adaptive is False


def test_no_knowledge_preset() -> None:
    t = mallory.no_knowledge()
    assert t.name == "no-knowledge"
    assert t.knowledge is Knowledge.ZERO
    assert t.exposure is Exposure.LABEL
    assert t.queries_per_sample == 100
    assert t.adaptive is False


def test_presets_registry_and_overrides() -> None:
    assert set(PRESETS) == {"white-box", "score-based", "label-only", "transfer", "no-knowledge"}
    for name, make in PRESETS.items():
        t = make()
        assert isinstance(t, ThreatModel)
        assert t.name == name
        assert t.description
    t = mallory.white_box("l2", 2.0, goal="targeted", queries_per_sample=5, price_per_query=0.01)
    assert t.goal is Goal.TARGETED
    assert t.queries_per_sample == 5
    assert t.price_per_query == 0.01
    assert t.name == "white-box"


def test_default_threat_model() -> None:
    t = ThreatModel()
    assert t.norm is Norm.LINF and math.isinf(t.eps)
    assert t.knowledge is Knowledge.PERFECT
    assert t.exposure is Exposure.LOGITS
    assert t.targets is Targets.RANDOM


# ---------------------------------------------------------------- value semantics
def test_immutable() -> None:
    t = mallory.white_box("linf", 0.3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.eps = 0.5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.norm = Norm.L2  # type: ignore[misc]


def test_equal_and_hashable() -> None:
    a = mallory.white_box("linf", 0.3)
    b = mallory.white_box(Norm.LINF, 0.3)
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b, mallory.white_box("linf", 0.2)}) == 2


def test_enums_accept_strings() -> None:
    t = ThreatModel(
        norm="l2",
        knowledge="limited",
        exposure="top-k",
        top_k=3,
        goal="targeted",
        targets="given",
        stage_knowledge={"model": "zero"},
    )
    assert t.norm is Norm.L2
    assert t.knowledge is Knowledge.LIMITED
    assert t.exposure is Exposure.TOP_K
    assert t.goal is Goal.TARGETED
    assert t.targets is Targets.GIVEN
    assert t.stage_knowledge == (("model", Knowledge.ZERO),)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("norm", "l3"),
        ("knowledge", "some"),
        ("exposure", "everything"),
        ("goal", "chaos"),
        ("targets", "whatever"),
    ],
)
def test_bad_enum_value_names_field_and_choices(field: str, value: str) -> None:
    with pytest.raises(InputError, match=rf"'{field}' parameter of ThreatModel") as info:
        ThreatModel(**{field: value})
    assert repr(value) in str(info.value)
    assert "one of" in str(info.value)


def test_bad_stage_knowledge_names_stage() -> None:
    with pytest.raises(InputError, match="stage_knowledge"):
        ThreatModel(stage_knowledge={"model": "omniscient"})


def test_preset_with_bad_norm_raises_input_error() -> None:
    with pytest.raises(InputError, match="'norm' parameter"):
        mallory.white_box("l3", 0.1)


def test_with_returns_validated_copy() -> None:
    t = mallory.white_box("linf", 0.3)
    u = t.with_(eps=0.1, queries_per_sample=7)
    assert u is not t
    assert (u.eps, u.queries_per_sample) == (0.1, 7)
    assert (t.eps, t.queries_per_sample) == (0.3, None)
    assert u.name == t.name and u.description == t.description
    assert t.with_(norm="l2").norm is Norm.L2
    with pytest.raises(InputError, match="'eps'"):
        t.with_(eps=-1.0)
    with pytest.raises(TypeError):
        t.with_(epsilon=0.1)


def test_eps_stored_as_float() -> None:
    t = ThreatModel(norm="l0", eps=10)
    assert isinstance(t.eps, float) and t.eps == 10.0


# ---------------------------------------------------------------- impossible combinations
@pytest.mark.parametrize(
    ("changes", "names"),
    [
        ({"eps": -0.1}, ["'eps'", "-0.1"]),
        ({"eps": math.nan}, ["'eps'", "nan"]),
        ({"eps": "0.3"}, ["'eps'"]),
        ({"eps": True}, ["'eps'"]),
        ({"norm": "l0", "eps": 2.5}, ["'eps'", "whole number", "L0"]),
        ({"exposure": "top-k"}, ["'top_k'", "top-k"]),
        ({"exposure": "top-k", "top_k": 0}, ["'top_k'"]),
        ({"top_k": 3}, ["'top_k'", "top-k", "logits"]),
        ({"exposure": "scores", "top_k": 3}, ["'top_k'", "scores"]),
        ({"queries_per_sample": -1}, ["'queries_per_sample'", "-1"]),
        ({"queries_per_sample": 2.5}, ["'queries_per_sample'"]),
        ({"queries_total": -5}, ["'queries_total'"]),
        ({"price_per_query": -0.01}, ["'price_per_query'"]),
        ({"price_per_query": math.inf}, ["'price_per_query'", "finite"]),
        ({"price_per_query": math.nan}, ["'price_per_query'"]),
        ({"targets": "given"}, ["targets='given'", "goal='targeted'"]),
    ],
)
def test_impossible_combinations_raise(changes: dict[str, object], names: list[str]) -> None:
    with pytest.raises(InputError) as info:
        ThreatModel(**changes)  # type: ignore[arg-type]
    message = str(info.value)
    for name in names:
        assert name in message, (name, message)


def test_input_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        ThreatModel(eps=-1)


def test_legal_edge_values() -> None:
    assert ThreatModel(eps=0.0).eps == 0.0
    assert math.isinf(ThreatModel(norm="l0").eps)
    assert ThreatModel(queries_per_sample=0).queries_per_sample == 0
    assert ThreatModel(queries_total=0).queries_total == 0
    assert ThreatModel(exposure="top-k", top_k=1).top_k == 1
    assert ThreatModel(goal="targeted", targets="given").targets is Targets.GIVEN


# ---------------------------------------------------------------- knowledge per stage
def test_knowledge_of_stage() -> None:
    t = mallory.white_box(
        "linf", 0.1, stage_knowledge={"detector": "zero", "preprocess": Knowledge.LIMITED}
    )
    assert t.knowledge_of("detector") is Knowledge.ZERO
    assert t.knowledge_of("preprocess") is Knowledge.LIMITED
    assert t.knowledge_of("model") is Knowledge.PERFECT
    assert t.knowledge_of("anything-else") is Knowledge.PERFECT
    u = mallory.score_based(stage_knowledge=(("model", "perfect"),))
    assert u.knowledge_of("model") is Knowledge.PERFECT
    assert u.knowledge_of("preprocess") is Knowledge.ZERO


def test_sees_scores() -> None:
    assert ThreatModel(exposure="logits").sees_scores
    assert ThreatModel(exposure="scores").sees_scores
    assert ThreatModel(exposure="top-k", top_k=2).sees_scores
    assert not ThreatModel(exposure="label").sees_scores


# ---------------------------------------------------------------- serialization
@pytest.mark.parametrize("make", sorted(PRESETS))
def test_to_dict_json_serializable(make: str) -> None:
    t = PRESETS[make]("linf", 0.25)
    data = t.to_dict()
    text = json.dumps(data, allow_nan=False)
    back = json.loads(text)
    assert back["name"] == make
    assert back["norm"] == "linf"
    assert back["eps"] == 0.25
    assert back["knowledge"] == t.knowledge.value
    assert back["exposure"] == t.exposure.value


def test_to_dict_infinite_eps_and_stage_knowledge() -> None:
    t = ThreatModel(stage_knowledge={"model": "zero"}, exposure="top-k", top_k=2)
    data = json.loads(json.dumps(t.to_dict(), allow_nan=False))
    assert data["eps"] == "inf"
    assert data["stage_knowledge"] == {"model": "zero"}
    assert data["top_k"] == 2
    expected = {f.name for f in dataclasses.fields(ThreatModel)} - {"description"}
    assert set(data) == expected
