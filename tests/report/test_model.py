"""The Report's JSON form against its JSON Schema (src/mallory/report/schema.json) and its
documentation (docs/report-schema.md): the schema validates real reports, lists exactly the
dataclass fields with matching types, and the document names every field."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest

import mallory.report
from mallory.report import model
from mallory.report.model import Report

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = Path(mallory.report.__file__).parent / "schema.json"
DOC_FILE = ROOT / "docs" / "report-schema.md"
DATACLASSES = [
    model.Report,
    model.ThreatSummary,
    model.AttackSummary,
    model.Example,
    model.Grid,
    model.GridCell,
    model.Curve,
    model.Histogram,
    model.Ledger,
    model.Risk,
    model.Edits,
]

# The subset of JSON Schema (draft 2020-12) that schema.json may use: the validator below
# checks every assertion keyword it knows and refuses any other, so the schema cannot rely on
# a keyword nobody checks.
ANNOTATIONS = {"$schema", "$id", "$defs", "title", "description"}
TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate(value: Any, schema: dict[str, Any], root: dict[str, Any], where: str = "$") -> None:
    """Raise AssertionError naming the first place where ``value`` breaks ``schema``."""
    unknown = set(schema) - ANNOTATIONS - {
        "type", "enum", "const", "properties", "required", "additionalProperties",
        "items", "minItems", "maxItems", "minimum", "anyOf", "$ref",
    }  # fmt: skip
    assert not unknown, f"{where}: the schema uses keywords this validator ignores: {unknown}"
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/$defs/"), f"{where}: only local $defs references: {ref}"
        validate(value, root["$defs"][ref.removeprefix("#/$defs/")], root, where)
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert any(TYPES[k](value) for k in kinds), f"{where}: {value!r} is not {kinds}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if "const" in schema:
        assert value == schema["const"], f"{where}: {value!r} != {schema['const']!r}"
    if "minimum" in schema and TYPES["number"](value):
        assert value >= schema["minimum"], f"{where}: {value} < {schema['minimum']}"
    if "anyOf" in schema:
        failures = []
        for option in schema["anyOf"]:
            try:
                validate(value, option, root, where)
                break
            except AssertionError as error:
                failures.append(str(error))
        else:
            raise AssertionError(f"{where}: no option of anyOf fits: {failures}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            assert name in value, f"{where}: missing {name!r}"
        for name, item in value.items():
            if name in properties:
                validate(item, properties[name], root, f"{where}.{name}")
            elif schema.get("additionalProperties") is False:
                raise AssertionError(f"{where}: unexpected field {name!r}")
            elif isinstance(schema.get("additionalProperties"), dict):
                validate(item, schema["additionalProperties"], root, f"{where}.{name}")
    if isinstance(value, list):
        assert len(value) >= schema.get("minItems", 0), f"{where}: too few items"
        assert len(value) <= schema.get("maxItems", math.inf), f"{where}: too many items"
        if "items" in schema:
            for i, item in enumerate(value):
                validate(item, schema["items"], root, f"{where}[{i}]")


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def schema_of(cls: type, schema: dict[str, Any]) -> dict[str, Any]:
    return schema if cls is Report else schema["$defs"][cls.__name__]


@pytest.mark.parametrize("name", ["mnist", "mnist_weak", "mnist_partial", "phishing"])
def test_fixture_reports_conform_to_the_schema(
    name: str, schema: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    report: Report = request.getfixturevalue(name)
    data = json.loads(report.to_json())  # through real JSON text
    validate(data, schema, schema)


def test_the_validator_rejects_what_the_schema_forbids(
    mnist: Report, schema: dict[str, Any]
) -> None:
    good = mnist.to_dict()
    broken = [
        ("clean_accuracy", "high"),  # a string that is not "inf"
        ("status", "finished"),  # not an allowed status
        ("schema", "mallory.report/0"),
        ("review_band", [0.5]),  # needs [low, high]
        ("surprise", 1),  # not a field
    ]
    for field, value in broken:
        with pytest.raises(AssertionError):
            validate({**good, field: value}, schema, schema)
    missing = dict(good)
    del missing["ledger"]
    with pytest.raises(AssertionError, match="missing 'ledger'"):
        validate(missing, schema, schema)
    threat = {**good["threats"][0], "robust_accuracy": True}  # a bool is not a number
    with pytest.raises(AssertionError, match="robust_accuracy"):
        validate({**good, "threats": [threat]}, schema, schema)


@pytest.mark.parametrize("cls", DATACLASSES, ids=lambda c: c.__name__)
def test_schema_lists_exactly_the_dataclass_fields(cls: type, schema: dict[str, Any]) -> None:
    part = schema_of(cls, schema)
    names = [f.name for f in dataclasses.fields(cls)]
    assert list(part["properties"]) == names
    assert part["required"] == names  # to_dict writes every field
    assert part["additionalProperties"] is False


def kind_of_hint(hint: Any) -> str:
    """A short name of a field's Python type, comparable with :func:`kind_of_schema`."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        return f"{kind_of_hint(args[0])}?"
    if get_origin(hint) is list:
        return f"[{kind_of_hint(get_args(hint)[0])}]"
    if get_origin(hint) is dict:
        item = get_args(hint)[1]
        return "{}" if item is Any else "{" + kind_of_hint(item) + "}"
    if dataclasses.is_dataclass(hint):
        return hint.__name__
    return {int: "integer", float: "number", str: "string", bool: "boolean"}[hint]


def kind_of_schema(part: dict[str, Any]) -> str:
    if "anyOf" in part:
        options = [o for o in part["anyOf"] if o != {"type": "null"}]
        assert len(options) == 1 and len(options) < len(part["anyOf"])
        return f"{kind_of_schema(options[0])}?"
    if "$ref" in part:
        name = part["$ref"].removeprefix("#/$defs/")
        return "number" if name == "number" else name
    if "enum" in part or "const" in part:
        return "string"
    kind = part["type"]
    if isinstance(kind, list):
        (single,) = [k for k in kind if k != "null"]
        return f"{single}?"
    if kind == "array":
        return f"[{kind_of_schema(part['items'])}]"
    if kind == "object":
        extra = part.get("additionalProperties")
        return "{" + kind_of_schema(extra) + "}" if isinstance(extra, dict) else "{}"
    return str(kind)


@pytest.mark.parametrize("cls", DATACLASSES, ids=lambda c: c.__name__)
def test_schema_types_match_the_dataclass_types(cls: type, schema: dict[str, Any]) -> None:
    hints = get_type_hints(cls)
    part = schema_of(cls, schema)
    for f in dataclasses.fields(cls):
        assert kind_of_schema(part["properties"][f.name]) == kind_of_hint(hints[f.name]), f.name


def test_schema_numbers_allow_null_and_infinities(schema: dict[str, Any]) -> None:
    number = schema["$defs"]["number"]
    for value in (0.5, 3, None, "inf", "-inf"):
        validate(value, number, schema)
    for value in ("nan", True, [1.0]):
        with pytest.raises(AssertionError):
            validate(value, number, schema)


@pytest.mark.parametrize("cls", DATACLASSES, ids=lambda c: c.__name__)
def test_the_document_describes_every_field(cls: type) -> None:
    text = DOC_FILE.read_text(encoding="utf-8")
    heading = re.search(rf"^## `{cls.__name__}`.*?(?=^## |\Z)", text, re.M | re.S)
    assert heading, f"docs/report-schema.md has no section for {cls.__name__}"
    for f in dataclasses.fields(cls):
        assert f"| `{f.name}` |" in heading.group(0), f"{cls.__name__}.{f.name} undocumented"


def test_the_document_example_is_a_valid_report_fragment(schema: dict[str, Any]) -> None:
    text = DOC_FILE.read_text(encoding="utf-8")
    block = re.search(r"```json\n(.*?)```", text, re.S)
    assert block, "docs/report-schema.md has no JSON example"
    example = json.loads(block.group(1))
    validate(example, schema, schema)
    assert Report.from_dict(example).to_dict() == example


@pytest.mark.parametrize("name", ["mnist", "mnist_partial", "phishing"])
def test_reports_round_trip_through_json(name: str, request: pytest.FixtureRequest) -> None:
    report: Report = request.getfixturevalue(name)
    again = Report.from_dict(json.loads(report.to_json()))
    assert again.to_dict() == report.to_dict()
    assert again.to_json() == report.to_json()


def test_nan_and_infinity_survive_the_round_trip(mnist: Report) -> None:
    data = json.loads(mnist.to_json())
    tricks = data["threats"][0]
    assert tricks["eps"] == "inf" and tricks["epsilon_curve"]["x"][-1] == "inf"
    assert tricks["epsilon_curve"]["y"][-1] is None
    again = Report.from_dict(data)
    curve = again.threats[0].epsilon_curve
    assert math.isinf(again.threats[0].eps) and math.isinf(curve.x[-1])
    assert math.isnan(curve.y[-1])
    assert math.isnan(again.threat("targeted").robust_accuracy)
    grid = again.threat("targeted").grid
    assert grid is not None and len(grid.cells) == 90
    failed = [c for c in grid.cells if not c.success]
    assert failed and all(math.isnan(c.l2) for c in failed)


def test_from_dict_names_what_does_not_fit(mnist: Report) -> None:
    data = mnist.to_dict()
    data["threats"][0]["attacks"] = "fgsm"
    with pytest.raises(ValueError, match=r"report\.threats\[0\]\.attacks"):
        Report.from_dict(data)
