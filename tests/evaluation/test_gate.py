"""The robustness gate: ``mallory check`` on a cheap campaign of the digits MLP (16 digits, a
noise trick, Square and FGSM: under a second), its exit codes, summary and JUnit XML, the gate on
a saved report and with an audit, and ``assert_robust`` with its pytest fixture."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mallory.cli import app
from mallory.errors import InputError
from mallory.evaluation.gate import (
    CHECK_KEYS,
    METRICS,
    THRESHOLD_KEYS,
    Gate,
    Threshold,
    load_gate,
    read_gate,
    read_report,
)
from mallory.report.model import Report
from mallory.testing.robustness import RobustnessError, assert_robust

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGN = """
name = "gate"
store = "gate.db"

[system]
model = "digits-mlp"

[data]
dataset = "digits"
samples = 16

[[threat]]
preset = "no-knowledge"
eps = 0.1
attacks = [{ name = "gaussian-noise", tries = 2 }]

[[threat]]
preset = "score-based"
eps = 0.3
queries_per_sample = 60
attacks = [{ name = "square", n_queries = 60 }]

[[threat]]
preset = "white-box"
eps = 0.3
attacks = ["fgsm"]
"""
# what this campaign measures (seed 0): clean accuracy 0.94, no-knowledge robust accuracy
# 0.88, score-based median queries to the first mistake 10, white-box robust accuracy 0
PASSING = """
[[check.threshold]]
threat = "no-knowledge"
metric = "robust_accuracy"
at_least = 0.5

[[check.threshold]]
threat = "score-based"
metric = "median_queries"
at_least = 2

[[check.threshold]]
metric = "clean_accuracy"
at_least = 0.8

[check]
flags = ["zero-gradients", "undeclared-randomness"]
"""
FAILING = """
[[check.threshold]]
metric = "clean_accuracy"
at_least = 0.8

[[check.threshold]]
threat = "score-based"
metric = "median_queries"
at_least = 10000

[[check.threshold]]
threat = "white-box"
metric = "robust_accuracy"
at_least = 0.5
"""
AUDIT = """
[system]
model = "digits-mlp"
defenses = [{{ name = "bit-depth", bits = 3 }}]

[data]
dataset = "digits"
samples = 16

[audit]
eps = 0.3
steps = 5
queries = 50
draws = 3
stages = {stages}
"""

runner = CliRunner()


def check(*args: str | Path) -> Any:
    return runner.invoke(app, ["check", *map(str, args), "--quiet"])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The campaign run once (by the passing gate), its store and JSON report kept."""
    path = tmp_path_factory.mktemp("gate")
    (path / "pass.toml").write_text(CAMPAIGN + PASSING)
    (path / "fail.toml").write_text(CAMPAIGN + FAILING)
    (path / "held.toml").write_text(AUDIT.format(stages="[2]"))
    (path / "broken.toml").write_text(AUDIT.format(stages="[1, 2]"))
    done = check(path / "pass.toml", "--junit", path / "pass.xml")
    assert done.exit_code == 0, done.output
    return path


def test_passing_thresholds_exit_0_with_a_line_each_and_the_report_written(folder: Path) -> None:
    done = check(folder / "pass.toml")  # resumes the stored run
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    for label in (
        "PASS  no-knowledge: robust_accuracy",
        "PASS  score-based: median_queries",
        "PASS  clean_accuracy",
        "PASS  flags (zero-gradients, undeclared-randomness)",
    ):
        assert any(line.startswith(label) for line in lines), done.output
    assert "4 of 4 thresholds passed: PASSED" in done.output
    assert max(map(len, lines)) <= 80
    saved = read_report(folder / "gate.json", "gate")
    assert saved.status == "complete" and [t.name for t in saved.threats] == [
        "no-knowledge",
        "score-based",
        "white-box",
    ]


def test_failing_thresholds_exit_1_and_every_one_is_reported(folder: Path) -> None:
    done = check(folder / "fail.toml", "--junit", folder / "fail.xml")
    assert done.exit_code == 1, done.output
    lines = done.output.splitlines()
    assert any(line.startswith("PASS  clean_accuracy") for line in lines)
    failed = [line for line in lines if line.startswith("FAIL")]
    assert len(failed) == 2, done.output
    assert re.match(r"FAIL  score-based: median_queries +10 +>= 10000$", failed[0])
    assert re.match(r"FAIL  white-box: robust_accuracy +0 +>= 0\.5$", failed[1])
    assert "1 of 3 thresholds passed: FAILED (2 of 3 failed)" in done.output


def test_the_junit_xml_has_a_case_per_threshold_and_a_failure_per_failed_one(
    folder: Path,
) -> None:
    check(folder / "fail.toml", "--junit", folder / "fail.xml")
    for name, failures in (("pass.xml", 0), ("fail.xml", 2)):
        root = ET.parse(folder / name).getroot()
        (suite,) = root.findall("testsuite")
        cases = suite.findall("testcase")
        assert len(cases) == int(suite.get("tests", "")) == (4 if failures == 0 else 3)
        assert int(suite.get("failures", "")) == failures
        failed = [c for c in cases if c.find("failure") is not None]
        assert len(failed) == failures
        properties = {p.get("name"): p.get("value") for p in suite.iterfind("properties/property")}
        assert properties["report"] == str(folder / "gate.json")
        assert properties["run"] == "gate" and properties["store"] == str(folder / "gate.db")
    root = ET.parse(folder / "fail.xml").getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    case = cases["score-based: median_queries >= 10000"]
    failure = case.find("failure")
    assert failure is not None
    assert failure.get("message") == "score-based: median_queries is 10; the bound is >= 10000"
    assert "measured: 10" in (failure.text or "") and "bound: >= 10000" in (failure.text or "")
    own = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert own == {"measured": "10", "bound": ">= 10000"}
    assert cases["clean_accuracy >= 0.8"].find("failure") is None


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        (
            ('threat = "no-knowledge"', 'threat = "no-knowlege"'),
            "check.threshold[0].threat",
            ["did you mean 'no-knowledge'?", "no-knowledge, score-based, white-box"],
        ),
        (
            ('metric = "robust_accuracy"', 'metric = "robust_acc"'),
            "check.threshold[0].metric",
            ["'success_rate'", "'median_queries'", "did you mean 'robust_accuracy'?"],
        ),
        (("at_least = 0.5", "at_least = 50"), "check.threshold[0].at_least", ["from 0 to 1"]),
        (("at_least = 0.5", "at_most = 0.5\nat_least = 0.9"), "check.threshold[0].at_most", [">="]),
        (("at_least = 0.5", ""), "check.threshold[0].at_least", ["needs a bound"]),
        (('threat = "no-knowledge"\n', ""), "check.threshold[0].threat", ["per threat model"]),
        (("[check]", "[check]\nthreshholds = 1"), "check.threshholds", ["'threshold'"]),
        (('flags = ["zero-gradients"', 'flags = ["zero-gradient"'), "check.flags", ["zero"]),
        (("[check]", "[check]\naudit_stages_failed = 0"), "check.audit_stages_failed", ["audit"]),
        (("[check]", '[check]\naudit = "nowhere.toml"'), "check.audit", ["no audit file"]),
    ],
)
def test_a_bad_file_exits_2_naming_the_key(
    folder: Path, change: tuple[str, str], key: str, words: list[str]
) -> None:
    text = CAMPAIGN + PASSING
    assert change[0] in text
    bad = folder / "bad.toml"
    bad.write_text(text.replace(change[0], change[1], 1))
    done = check(bad)
    assert done.exit_code == 2, done.output
    message = " ".join(done.output.split())
    assert f"bad.toml: {key}: " in message, message
    for word in words:
        assert word in message, message


def test_a_file_without_anything_to_check_exits_2(folder: Path) -> None:
    (folder / "none.toml").write_text(CAMPAIGN)
    done = check(folder / "none.toml")
    assert done.exit_code == 2 and "check: this key is required" in " ".join(done.output.split())


def test_the_gate_on_a_saved_report(folder: Path) -> None:
    saved = folder / "gate.json"
    store = (folder / "gate.db").stat().st_mtime_ns
    assert check(folder / "pass.toml", "--report", saved).exit_code == 0
    done = check(folder / "fail.toml", "--report", saved, "--junit", folder / "saved.xml")
    assert done.exit_code == 1 and done.output.count("FAIL  ") == 2, done.output
    assert (folder / "gate.db").stat().st_mtime_ns == store  # nothing ran
    properties = {p.get("name"): p.get("value") for p in ET.parse(folder / "saved.xml").iter()}
    assert properties.get("report") == str(saved)
    # a report of another run, a partial one, and no JSON at all are errors
    other = json.loads(saved.read_text())
    (folder / "other.json").write_text(json.dumps({**other, "run": "other"}))
    (folder / "partial.json").write_text(json.dumps({**other, "status": "partial"}))
    (folder / "junk.json").write_text("{")
    for name, words in (
        ("other.json", "is the report of the run 'other', not of 'gate'"),
        ("partial.json", "is partial"),
        ("junk.json", "not a JSON report"),
    ):
        done = check(folder / "pass.toml", "--report", folder / name)
        assert done.exit_code == 2 and words in " ".join(done.output.split()), done.output


def test_an_audit_runs_with_the_campaign_and_its_failed_stages_are_counted(folder: Path) -> None:
    for audit, code in (("held.toml", 0), ("broken.toml", 1)):
        (folder / "audited.toml").write_text(
            CAMPAIGN + PASSING.replace("[check]", f'[check]\naudit = "{audit}"')
        )
        done = check(folder / "audited.toml")
        assert done.exit_code == code, done.output
        status = "PASS" if code == 0 else "FAIL"
        assert f"{status}  audit_stages_failed" in done.output
    assert "stage 1, no effect" in done.output
    assert (folder / "gate.audit.json").exists()
    # the same gate on the saved reports: the audit's is needed
    saved = ("--report", folder / "gate.json")
    done = check(folder / "audited.toml", *saved)
    assert done.exit_code == 2 and "--audit-report" in done.output
    done = check(folder / "audited.toml", *saved, "--audit-report", folder / "gate.audit.json")
    assert done.exit_code == 1 and "FAIL  audit_stages_failed" in done.output


# ---------------------------------------------------------------- the gate as data
@pytest.fixture(scope="module")
def report(folder: Path) -> Report:
    return read_report(folder / "gate.json")


def test_thresholds_are_validated_on_construction() -> None:
    for fields, words in (
        ({"metric": "robust_accuracy", "at_least": 0.4}, "'threat' parameter of Threshold"),
        ({"metric": "clean_accuracy", "threat": "x", "at_least": 0.4}, "whole run"),
        ({"metric": "success_rate", "threat": "x"}, "needs a bound"),
        ({"metric": "success_rate", "threat": "x", "at_most": 1.5}, "a share from 0 to 1"),
        ({"metric": "flags", "at_least": 2, "at_most": 1}, "'at_most' parameter"),
        ({"metric": "clean_accuracy", "at_least": 0.4, "codes": ["randomized"]}, "'codes'"),
        ({"metric": "flags", "at_most": 0, "codes": ["randomised"]}, "'randomized'"),
        ({"metric": "accuracy", "at_least": 0.4}, "'metric' parameter of Threshold"),
        ({"metric": "clean_accuracy", "at_least": math.nan}, "'at_least' parameter"),
    ):
        with pytest.raises(InputError, match=re.escape(words)):
            Threshold(**fields)
    assert Threshold(metric="flags", at_most=0).bound == "<= 0"
    assert Threshold(metric="clean_accuracy", at_least=0.2, at_most=0.8).bound == "in [0.2, 0.8]"


def test_missing_numbers_fail_and_mistakes_never_found_take_the_best_value(
    report: Report,
) -> None:
    gate = Gate.of(
        [
            {"threat": "no-knowledge", "metric": "median_queries", "at_least": 1000},
            {"threat": "no-knowledge", "metric": "review_share", "at_least": 0.99},
            {"threat": "no-knowledge", "metric": "success_rate", "at_most": 0.5},
        ],
        "test",
    )
    first = report.threats[0]
    unbroken = dataclasses.replace(
        first,
        broken=0,
        effort_median=dict.fromkeys(first.effort_median, math.nan),
        review_share=math.nan,
        success_rate=math.nan,  # as when no sample was right before the attacks
    )
    result = gate.evaluate(dataclasses.replace(report, threats=[unbroken, *report.threats[1:]]))
    queries, review, success = result.outcomes
    assert queries.passed and math.isinf(queries.value) and queries.note == "no mistake found"
    assert review.passed and review.value == 1.0
    assert not success.passed and success.note == "not measured in this run"
    with pytest.raises(InputError, match="robust_accuracy is measured on untargeted"):
        Gate.of([{"threat": "t", "metric": "robust_accuracy", "at_least": 0.1}], "x").check_threats(
            {"t": "targeted"}
        )


def test_flags_are_counted_where_they_were_raised(report: Report) -> None:
    from mallory.flags import Flag

    white = report.threats[2]
    attack = dataclasses.replace(white.attacks[0], flags=[Flag("zero-gradients", "zeros")])
    flagged = dataclasses.replace(
        report, threats=[*report.threats[:2], dataclasses.replace(white, attacks=[attack])]
    )
    gate = Gate.of(
        [
            {"metric": "flags", "at_most": 0},
            {"metric": "flags", "at_most": 0, "codes": ["randomized"]},
            {"metric": "flags", "threat": "score-based", "at_most": 0},
            {"metric": "flags", "threat": "white-box", "at_most": 0},
        ],
        "test",
    )
    every, other_code, elsewhere, here = gate.evaluate(flagged).outcomes
    assert not every.passed and every.note == "zero-gradients at white-box: fgsm"
    assert other_code.passed and elsewhere.passed and not here.passed


# ---------------------------------------------------------------- assert_robust
def test_assert_robust_passes_and_fails_with_every_failed_threshold(
    folder: Path, report: Report
) -> None:
    result = assert_robust(report, [{"metric": "clean_accuracy", "at_least": 0.8}])
    assert result.passed and result.run == "gate"
    assert assert_robust(folder / "pass.toml").passed  # the file's own [check] (resumed)
    with pytest.raises(RobustnessError) as caught:
        assert_robust(folder / "fail.toml")
    message = str(caught.value)
    assert isinstance(caught.value, AssertionError)
    assert message.startswith("run 'gate' failed 2 of 3 robustness thresholds:")
    assert re.search(r"FAIL  score-based: median_queries +10 +>= 10000", message)
    assert re.search(r"FAIL  white-box: robust_accuracy +0 +>= 0\.5", message)
    assert re.search(r"PASS  clean_accuracy", message)
    with pytest.raises(InputError, match=r"thresholds\[0\]: .*'threat' parameter"):
        assert_robust(report, [{"metric": "robust_accuracy", "at_least": 0.1}])
    with pytest.raises(InputError, match=r"thresholds\[0\]: A threshold has no key 'at_leest'"):
        assert_robust(report, [{"metric": "clean_accuracy", "at_leest": 0.1}])
    with pytest.raises(InputError, match="no threat model 'label-only'"):
        assert_robust(report, [{"threat": "label-only", "metric": "success_rate", "at_most": 1}])


def test_the_documented_example_runs() -> None:
    """The Python example of docs/testing.md's section on assert_robust."""
    namespace = _docs_namespace()
    assert namespace["failure"].startswith("run 'digits-gate' failed 1 of 1")


def test_the_documented_pytest_fixture_passes_and_fails(pytester: pytest.Pytester) -> None:
    """The docs' conftest.py, test module and campaign file, run by pytest."""
    conftest, module = _docs_blocks("python")[1:3]
    (campaign,) = _docs_blocks("toml")
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_robustness=module)
    pytester.path.joinpath("robustness.toml").write_text(campaign)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
    assert (pytester.path / "robustness.db").exists()  # beside the file, as documented
    pytester.path.joinpath("robustness.toml").write_text(
        campaign.replace("at_least = 5", "at_least = 5000")
    )
    run = pytester.runpytest("-p", "no:cacheprovider")
    run.assert_outcomes(passed=1, failed=1)
    run.stdout.fnmatch_lines(["*RobustnessError: run 'digits-robustness' failed 1 of 2*"])


# ---------------------------------------------------------------- the documentation
def _docs_blocks(language: str) -> list[str]:
    text = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    section = text[text.index("## Assert robustness in your own test suite") :]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def _docs_namespace() -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "docs_robustness"}
    exec(compile(_docs_blocks("python")[0], "docs/testing.md", "exec"), namespace)
    return namespace


def test_the_reference_documents_every_key_and_metric() -> None:
    text = (ROOT / "docs" / "campaign.md").read_text(encoding="utf-8")
    section = text[text.index("## `[check]`") :]
    missing = [k for k in (*CHECK_KEYS, *THRESHOLD_KEYS) if f"| `{k}` |" not in section]
    missing += [m for m in METRICS if f"`{m}`" not in section]
    assert not missing, f"docs/campaign.md's [check] section does not document {missing}"
    (example,) = re.findall(r"```toml\n(.*?)```", section, re.S)
    gate = read_gate(tomllib.loads(example), base=ROOT / "examples", where="docs")
    assert [t.label for t in gate.thresholds] == [
        "label-only: robust_accuracy",
        "score-based: median_queries",
        "clean_accuracy",
        "audit_stages_failed",
        "flags (zero-gradients, undeclared-randomness)",
    ]


def test_the_example_campaign_has_a_gate_on_its_threat_models() -> None:
    file = ROOT / "examples" / "campaign.toml"
    gate = load_gate(file)
    threats = tomllib.loads(file.read_text())["threat"]
    names = {t.get("name", t["preset"]): "untargeted" for t in threats}
    gate.check_threats(names)
    assert {t.metric for t in gate.thresholds} >= {"robust_accuracy", "median_queries"}
