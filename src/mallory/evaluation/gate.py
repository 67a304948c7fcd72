"""The robustness gate: thresholds on a campaign's report (and an audit's), checked for CI.

A campaign file's ``[check]`` table (``docs/campaign.md``) states what the system must hold::

    [[check.threshold]]
    threat = "label-only"            # a threat model of the campaign, by name
    metric = "robust_accuracy"
    at_least = 0.4
    [check]
    audit = "audit.toml"             # optional: an audit file, run too
    audit_stages_failed = 0          # with an audit: no stage may fail (the default)
    flags = "forbid"                 # or ["zero-gradients", ...]; default "allow"

Every threshold is measured on the :class:`~mallory.report.model.Report` (and the
:class:`~mallory.report.audit_model.AuditReport`), so a gate runs as well on a saved JSON
report as on a fresh run; each is reported PASS or FAIL with its value and its bound, never only
the first failure. A number the run could not measure fails its threshold (a gate does not pass
on a number it has not got); a metric about mistakes on a threat model where no attack found one
takes its best value (medians ``inf``, ``review_share`` 1). ``mallory check`` is the command
(:mod:`mallory.cli.check`); :mod:`mallory.testing.robustness` the helper for a test suite.

Example::

    gate = load_gate("examples/campaign.toml")
    result = gate.evaluate(report)        # a Report of that campaign
    print("\\n".join(summary_lines(result)))
"""

from __future__ import annotations

import json
import math
import re
import textwrap
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mallory import flags as flag_codes
from mallory.errors import InputError, bad_param
from mallory.evaluation.config_table import Table, closest, kind, resolve
from mallory.flags import Flag
from mallory.params import (
    Interval,
    ListOf,
    Options,
    OrNone,
    Text,
    check_fields,
    constraints,
    param,
)
from mallory.report.audit_model import FAILED, AuditReport
from mallory.report.model import Report, ThreatSummary

__all__ = [
    "METRICS",
    "CheckResult",
    "Checked",
    "Gate",
    "Metric",
    "Outcome",
    "Threshold",
    "campaign_name",
    "format_value",
    "junit_xml",
    "load_gate",
    "outcome_lines",
    "read_audit_report",
    "read_gate",
    "read_report",
    "run_campaign_file",
    "summary_lines",
]


# ------------------------------------------------------------------------ metrics
@dataclass(frozen=True)
class Metric:
    """What a threshold can bound: ``scope`` is ``"threat"`` (read from one threat model's
    summary: the threshold names it), ``"run"`` (the whole report), ``"audit"`` (the audit's
    report) or ``"any"`` (the run, or one threat model when named). ``share``: a value in
    [0, 1]; ``count``: a whole number. ``best`` is the value of a metric about mistakes on a
    threat model where no attack found one (None: the metric has no such value)."""

    name: str
    scope: str
    meaning: str
    share: bool = False
    count: bool = False
    best: float | None = None


def _metrics(*items: Metric) -> dict[str, Metric]:
    return {m.name: m for m in items}


METRICS = _metrics(
    Metric(
        "robust_accuracy",
        "threat",
        "share of the samples correct and never broken (untargeted threat models)",
        share=True,
    ),
    Metric(
        "success_rate",
        "threat",
        "share of the attacked samples broken (pushed to their target, when targeted)",
        share=True,
    ),
    Metric("median_queries", "threat", "median queries to the first mistake", best=math.inf),
    Metric("median_seconds", "threat", "median seconds to the first mistake", best=math.inf),
    Metric("median_money", "threat", "median money to the first mistake", best=math.inf),
    Metric("median_l0", "threat", "median L0 distance of the breaking inputs", best=math.inf),
    Metric("median_l2", "threat", "median L2 distance of the breaking inputs", best=math.inf),
    Metric("median_linf", "threat", "median Linf distance of the breaking inputs", best=math.inf),
    Metric(
        "review_share",
        "threat",
        "share of the mistakes whose confidence falls inside the review band",
        share=True,
        best=1.0,
    ),
    Metric("clean_accuracy", "run", "share of the samples classified correctly", share=True),
    Metric(
        "flags",
        "any",
        "flags raised (the run's, or one threat model's and its attacks'; 'codes': only those)",
        count=True,
    ),
    Metric("audit_stages_failed", "audit", "stages of the audit that failed", count=True),
)
FLAG_CODES = tuple(
    sorted(v for k, v in vars(flag_codes).items() if k.isupper() and isinstance(v, str))
)
"""The flag codes a threshold may name: those of :mod:`mallory.flags`."""


def _threat_value(metric: str, summary: ThreatSummary) -> float:
    if metric.startswith("median_") and metric[7:] in summary.effort_median:
        return float(summary.effort_median[metric[7:]])
    if metric.startswith("median_"):
        return float(summary.median_distance.get(metric[7:], math.nan))
    return float(getattr(summary, metric))


# ------------------------------------------------------------------------ thresholds
class ThresholdError(InputError):
    """A Threshold whose fields do not fit together; ``field`` is the one to change."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, kw_only=True)
class Threshold:
    """A bound on one metric: ``at_least``, ``at_most`` or both (a range). ``threat`` names
    the threat model of a per-threat-model metric (and may narrow ``flags`` to one); ``codes``
    narrows ``flags`` to those flag codes. Shares are bounded in [0, 1] (0.4 is 40%)."""

    metric: str = param(Options(tuple(METRICS)), help="what is measured (METRICS)")
    threat: str | None = param(
        OrNone(Text()), None, help="the threat model, by name, of a per-threat-model metric"
    )
    at_least: float | None = param(OrNone(Interval()), None, help="the lowest value that passes")
    at_most: float | None = param(OrNone(Interval()), None, help="the highest value that passes")
    codes: tuple[str, ...] = param(
        ListOf(Options(FLAG_CODES)), (), help="metric 'flags' only: the codes counted (all)"
    )

    def __post_init__(self) -> None:
        check_fields(self)
        metric = METRICS[self.metric]
        if metric.scope == "threat" and self.threat is None:
            raise self._bad("threat", f"a threat model's name ({self.metric} is per threat model)")
        if metric.scope in ("run", "audit") and self.threat is not None:
            raise self._bad("threat", f"None ({self.metric} is measured over the whole run)")
        if self.at_least is None and self.at_most is None:
            raise ThresholdError(
                f"A Threshold on {self.metric} needs a bound: at_least, at_most or both; got "
                "neither.",
                "at_least",
            )
        low = 0.0 if metric.share or metric.count or self.metric.startswith("median_") else None
        high = 1.0 if metric.share else None
        for name in ("at_least", "at_most"):
            value = getattr(self, name)
            if value is not None and (
                (low is not None and value < low) or (high is not None and value > high)
            ):
                what = "a share from 0 to 1 (0.4 is 40%)" if metric.share else "a number >= 0"
                raise self._bad(name, f"{what} for {self.metric}")
        if self.at_least is not None and self.at_most is not None and self.at_least > self.at_most:
            raise self._bad("at_most", f"a number >= at_least ({self.at_least:g})")
        if self.codes and self.metric != "flags":
            raise self._bad("codes", "empty: codes narrow the metric 'flags' only")

    def _bad(self, name: str, expected: str) -> ThresholdError:
        return ThresholdError(
            str(bad_param("Threshold", name, expected, getattr(self, name))), name
        )

    @property
    def label(self) -> str:
        """What is measured, in words: ``"label-only: robust_accuracy"``."""
        what = self.metric
        if self.codes:
            what += f" ({', '.join(self.codes)})"
        return f"{self.threat}: {what}" if self.threat is not None else what

    @property
    def bound(self) -> str:
        """``">= 0.4"``, ``"<= 0"`` or ``"in [0.2, 0.8]"``."""
        if self.at_least is not None and self.at_most is not None:
            return f"in [{format_value(self.at_least)}, {format_value(self.at_most)}]"
        if self.at_least is not None:
            return f">= {format_value(self.at_least)}"
        return f"<= {format_value(math.inf if self.at_most is None else self.at_most)}"

    def holds(self, value: float) -> bool:
        """Whether ``value`` is inside the bounds (NaN never is)."""
        if math.isnan(value):
            return False
        low = -math.inf if self.at_least is None else self.at_least
        high = math.inf if self.at_most is None else self.at_most
        return low <= value <= high


def _from_mapping(values: Any) -> Threshold:
    """A Threshold from a mapping of its fields (an unknown key is an InputError)."""
    names = [f.name for f in fields(Threshold)]
    if not isinstance(values, Mapping):
        raise InputError(
            f"must be a Threshold or a dict of its keys ({', '.join(names)}); got "
            f"{type(values).__name__}."
        )
    for key in values:
        if key not in names:
            raise InputError(
                f"A threshold has no key {key!r}{closest(str(key), names)}; its keys: "
                f"{', '.join(names)}."
            )
    return Threshold(**values)


# ------------------------------------------------------------------------ results
@dataclass(frozen=True)
class Outcome:
    """One threshold checked: the measured ``value`` (NaN: not measured), whether it
    ``passed``, and a ``note`` (why a value is missing or best, which flags were seen)."""

    threshold: Threshold
    value: float
    passed: bool
    note: str = ""


@dataclass(frozen=True)
class CheckResult:
    """Every threshold of a gate checked on one run. ``properties`` say where the evidence
    is (the run, the campaign file, the report's path), for the JUnit file."""

    run: str
    outcomes: tuple[Outcome, ...]
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outcomes)

    @property
    def failures(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if not o.passed)


# ------------------------------------------------------------------------ the gate
@dataclass(frozen=True)
class Gate:
    """Thresholds, each with the key it was read from (``keys[i]``, for messages); ``audit``
    is the audit file to run with the campaign; ``where`` names the file (or the caller)."""

    thresholds: tuple[Threshold, ...]
    keys: tuple[str, ...] = ()
    audit: Path | None = None
    where: str = "thresholds"

    def __post_init__(self) -> None:
        if not self.keys:
            keys = tuple(f"thresholds[{i}]" for i in range(len(self.thresholds)))
            object.__setattr__(self, "keys", keys)
        if len(self.keys) != len(self.thresholds):
            raise InputError("A Gate needs one key per threshold.")

    @classmethod
    def of(cls, thresholds: Sequence[Threshold | Mapping[str, Any]], where: str) -> Gate:
        """A gate from Thresholds or mappings of their fields; errors name ``where`` and the
        threshold (``thresholds[1]``)."""
        if isinstance(thresholds, Mapping | str) or not isinstance(thresholds, Sequence):
            raise InputError(
                f"{where}: thresholds must be a list of Thresholds or of dicts of their keys "
                f"(metric, threat, at_least, at_most, codes); got {type(thresholds).__name__}."
            )
        built = []
        for i, item in enumerate(thresholds):
            try:
                built.append(item if isinstance(item, Threshold) else _from_mapping(item))
            except InputError as error:
                raise InputError(f"{where}: thresholds[{i}]: {error}") from None
        return cls(tuple(built), where=where)

    @property
    def needs_audit(self) -> bool:
        return any(METRICS[t.metric].scope == "audit" for t in self.thresholds)

    def check_threats(self, goals: Mapping[str, str]) -> None:
        """Refuse a threshold on a threat model the campaign has not (``goals``: each threat
        model's goal by name), or robust accuracy on a targeted one."""
        known = list(goals)
        for t, key in zip(self.thresholds, self.keys, strict=True):
            if t.threat is None:
                continue
            if t.threat not in goals:
                raise InputError(
                    f"{self.where}: {key}.threat: no threat model {t.threat!r} in the campaign"
                    f"{closest(t.threat, known)}; its threat models: {', '.join(known)}."
                )
            if t.metric == "robust_accuracy" and goals[t.threat] != "untargeted":
                raise InputError(
                    f"{self.where}: {key}.metric: robust_accuracy is measured on untargeted "
                    f"threat models only; {t.threat!r} is {goals[t.threat]}: bound its "
                    "success_rate (the share pushed to its target) instead."
                )

    def evaluate(
        self,
        report: Report,
        audit: AuditReport | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> CheckResult:
        """Check every threshold on ``report`` (and ``audit``, which audit metrics need)."""
        if report.status != "complete":
            raise InputError(
                f"{self.where}: the run {report.run!r} is {report.status}: its numbers cover "
                "only what ran; run it to the end (mallory check resumes it) before checking it."
            )
        self.check_threats({t.name: t.goal for t in report.threats})
        if self.needs_audit and audit is None:
            raise InputError(
                f"{self.where}: audit_stages_failed needs the audit's report; none was given."
            )
        outcomes = tuple(_measure(t, report, audit) for t in self.thresholds)
        return CheckResult(report.run, outcomes, dict(properties or {}))


def _measure(t: Threshold, report: Report, audit: AuditReport | None) -> Outcome:
    metric = METRICS[t.metric]
    note = ""
    if t.metric == "audit_stages_failed":
        failed = [s for s in audit.stages if s.status == FAILED] if audit else []
        value = float(len(failed)) if audit else math.nan
        note = "; ".join(f"stage {s.number}, {s.name}" for s in failed)
    elif t.metric == "flags":
        seen = _flags(report, t.threat)
        counted = [(place, f) for place, f in seen if not t.codes or f.code in t.codes]
        value = float(len(counted))
        note = "; ".join(f"{f.code} at {place}" for place, f in counted)
    elif t.metric == "clean_accuracy":
        value = report.clean_accuracy
    else:
        summary = report.threat(str(t.threat))
        value = _threat_value(t.metric, summary)
        if math.isnan(value) and metric.best is not None and summary.broken == 0:
            value, note = metric.best, "no mistake found"
    if math.isnan(value):
        note = "not measured in this run"
    return Outcome(t, value, t.holds(value), note)


def _flags(report: Report, threat: str | None) -> list[tuple[str, Flag]]:
    everything = report.all_flags()
    if threat is None:
        return everything
    return [(p, f) for p, f in everything if p == threat or p.startswith(f"{threat}: ")]


# ------------------------------------------------------------------------ the [check] table
CHECK_KEYS = ("threshold", "audit", "audit_stages_failed", "flags")
THRESHOLD_KEYS = tuple(f.name for f in fields(Threshold))
FLAGS = ("allow", "forbid")
_THRESHOLD_RULES = constraints(Threshold)


def read_gate(data: Mapping[str, Any], *, base: Path, where: str) -> Gate:
    """The gate of a parsed campaign file: its ``[check]`` table (paths read from ``base``;
    errors name ``where`` and the key). A file with nothing to check is an error."""
    if "check" not in data:
        raise InputError(
            f"{where}: check: this key is required: a [check] table with [[check.threshold]] "
            "tables (threat, metric, at_least or at_most), see docs/campaign.md."
        )
    table = Table(data["check"], "check", where, CHECK_KEYS)
    thresholds: list[Threshold] = []
    keys: list[str] = []
    items = table.get("threshold", [])
    if not isinstance(items, list):
        raise table.fail(
            "threshold",
            f"must be an array of tables, one [[check.threshold]] each; got {kind(items)}.",
        )
    for i, values in enumerate(items):
        sub = Table(values, table.at(f"threshold[{i}]"), where, THRESHOLD_KEYS)
        given = {
            key: sub.read(key, _THRESHOLD_RULES[key]) for key in THRESHOLD_KEYS if sub.has(key)
        }
        if "metric" not in given:
            raise sub.fail("metric", f"this key is required: one of {', '.join(METRICS)}.")
        thresholds.append(_built(given, sub))
        keys.append(sub.path)
    audit = None
    if table.has("audit"):
        audit = resolve(base, table.text("audit"))
        if not audit.is_file():
            raise table.fail("audit", f"no audit file at {audit} (read from the file's folder).")
        most = table.integer("audit_stages_failed", 0)
        thresholds.append(Threshold(metric="audit_stages_failed", at_most=most))
        keys.append(table.at("audit_stages_failed"))
    else:
        table.only_with(["audit_stages_failed"], "audit")
        for t, key in zip(thresholds, keys, strict=True):
            if t.metric == "audit_stages_failed":
                raise InputError(f"{where}: {key}.metric: needs an audit: add check.audit.")
    rule = table.get("flags", "allow")
    if isinstance(rule, list):
        codes = table.read("flags", _THRESHOLD_RULES["codes"])
        if codes:
            thresholds.append(Threshold(metric="flags", at_most=0, codes=codes))
            keys.append(table.at("flags"))
    elif table.text("flags", "allow", choices=FLAGS) == "forbid":
        thresholds.append(Threshold(metric="flags", at_most=0))
        keys.append(table.at("flags"))
    if not thresholds:
        raise table.fail(
            None,
            'has nothing to check: add [[check.threshold]] tables, an audit, or flags = "forbid".',
        )
    return Gate(tuple(thresholds), tuple(keys), audit, where)


def _built(given: dict[str, Any], table: Table) -> Threshold:
    try:
        return Threshold(**given)
    except ThresholdError as error:
        raise table.fail(error.field, str(error)) from None


def load_gate(path: str | Path) -> Gate:
    """The gate of the campaign file at ``path`` (its ``[check]`` table)."""
    file = Path(path)
    return read_gate(_toml(file), base=file.resolve().parent, where=str(file))


def campaign_name(path: str | Path) -> str:
    """The run name a campaign file gives (its ``name``, else its stem), read without
    building the campaign."""
    file = Path(path)
    name = _toml(file).get("name", file.stem)
    return name if isinstance(name, str) else file.stem


def _toml(file: Path) -> dict[str, Any]:
    if not file.is_file():
        what = "is a folder" if file.is_dir() else "does not exist"
        raise InputError(f"No campaign file at {file.resolve()}: it {what}.")
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise InputError(f"{file}: not UTF-8 text ({error}); a campaign file is TOML.") from None
    except tomllib.TOMLDecodeError as error:
        raise InputError(
            f"{file}: not valid TOML: {error}. See docs/campaign.md for the format."
        ) from None


def read_report(path: str | Path, run: str | None = None) -> Report:
    """A saved JSON report (``mallory evaluate --json``); from a list of reports, the one of
    ``run``. When ``run`` is given, a report of another run is an error."""
    data = _json(Path(path))
    if isinstance(data, list):
        found = [d for d in data if isinstance(d, dict) and d.get("run") == run]
        if len(found) != 1:
            runs = ", ".join(repr(d.get("run")) for d in data if isinstance(d, dict))
            raise InputError(f"{path}: holds no single report of the run {run!r}; it has {runs}.")
        data = found[0]
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a mallory report (a JSON object); got {kind(data)}.")
    try:
        report = Report.from_dict(data)
    except ValueError as error:
        raise InputError(f"{path}: not a mallory report: {error}.") from None
    if run is not None and report.run != run:
        raise InputError(
            f"{path}: is the report of the run {report.run!r}, not of {run!r}, the run of the "
            "campaign file: check a report of the same campaign."
        )
    return report


def read_audit_report(path: str | Path) -> AuditReport:
    """A saved JSON audit report (``mallory audit --json``)."""
    data = _json(Path(path))
    try:
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {kind(data)}")
        return AuditReport.from_dict(data)
    except ValueError as error:
        raise InputError(f"{path}: not a mallory audit report: {error}.") from None


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise InputError(f"Cannot read the report {str(path)!r}: {error.strerror}.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a JSON report: {error}.") from None


# ------------------------------------------------------------------------ running a file
@dataclass(frozen=True)
class Checked:
    """What a gate reads: the campaign's report, the audit's (when the gate needs one), and
    the store the run is in."""

    report: Report
    audit: AuditReport | None
    store: Path


def run_campaign_file(
    path: str | Path, gate: Gate, *, store: str | Path | None = None, progress: bool = True
) -> Checked:
    """Run (or resume) the campaign of the file at ``path`` in ``store`` (None: the file's
    own), and the gate's audit when its thresholds need it, keeping the audit's finished
    stages beside the store (``<audit name>.audit-checkpoint.json``) so it resumes too.

    Everything is read and checked before anything runs: the campaign, the thresholds'
    threat models, the audit file."""
    from mallory.evaluation.audit.config import load_audit
    from mallory.evaluation.config import load_campaign

    loaded = load_campaign(path, progress=progress)
    gate.check_threats({p.threat.name: p.threat.goal.value for p in loaded.campaign.plans})
    job = None
    if gate.needs_audit and gate.audit is not None:
        name, job = load_audit(gate.audit, progress=progress)
    where = Path(store) if store is not None else loaded.store
    report = loaded.campaign.run(where, progress=progress)
    audited = None
    if job is not None:
        checkpoint = where.with_name(f"{name}.audit-checkpoint.json")
        try:
            audited = job.run(progress=progress, checkpoint=checkpoint)
        except InputError as error:
            raise InputError(
                f"{error} (mallory check keeps the audit's finished stages in {checkpoint}: "
                "delete it to start the audit afresh.)"
            ) from None
    return Checked(report, audited, where)


# ------------------------------------------------------------------------ rendering
def format_value(value: float) -> str:
    """A measured value or a bound as the summary shows it (``n/a`` for NaN)."""
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def summary_lines(result: CheckResult, *, width: int = 80) -> list[str]:
    """One screen of plain text, ``width`` columns at most: the run, a line per threshold
    (:func:`outcome_lines`), the count, and where the evidence is."""
    width = max(width, 60)
    lines = [f"mallory check: run {result.run!r}"[:width]]
    lines += outcome_lines(result.outcomes, width=width)
    failed = len(result.failures)
    total = len(result.outcomes)
    verdict = "PASSED" if not failed else f"FAILED ({failed} of {total} failed)"
    lines.append(f"{total - failed} of {total} thresholds passed: {verdict}")
    for key, value in result.properties.items():
        lines += textwrap.wrap(f"{key}: {value}", width, subsequent_indent="  ")
    return lines


def outcome_lines(outcomes: Sequence[Outcome], *, width: int = 80) -> list[str]:
    """A line per threshold: PASS or FAIL, what, the measured value, the bound (a label too
    long goes on lines of its own); its note below it."""
    width = max(width, 60)
    value_width, bound_width = 10, 16
    label_width = width - 6 - value_width - bound_width - 2
    lines = []
    for o in outcomes:
        status = "PASS" if o.passed else "FAIL"
        label = o.threshold.label
        cells = f"{format_value(o.value):>{value_width}}  {o.threshold.bound}"
        if len(label) <= label_width:
            lines.append(f"{status}  {label:<{label_width}}{cells}")
        else:
            lines += textwrap.wrap(
                label, width, initial_indent=f"{status}  ", subsequent_indent="      "
            )
            lines.append(f"{'':6}{'':<{label_width}}{cells}")
        if o.note:
            lines += textwrap.wrap(
                o.note, width, initial_indent="      ", subsequent_indent="      "
            )
    return lines


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(text: str) -> str:
    """Text XML 1.0 can hold: control characters (from a remote API's words) dropped."""
    return _NOT_XML.sub("", text)


def junit_xml(result: CheckResult, *, name: str = "mallory check") -> bytes:
    """JUnit XML: one test case per threshold, a failure for each that failed (with the
    measured value and the bound), the result's properties on the suite."""
    failures = len(result.failures)
    suites = ET.Element("testsuites", name=name, tests=str(len(result.outcomes)))
    suites.set("failures", str(failures))
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=_xml_text(f"{name}: {result.run}"),
        tests=str(len(result.outcomes)),
        failures=str(failures),
        errors="0",
        skipped="0",
    )
    properties = ET.SubElement(suite, "properties")
    for key, value in {"run": result.run, **result.properties}.items():
        ET.SubElement(properties, "property", name=key, value=_xml_text(value))
    for o in result.outcomes:
        t = o.threshold
        case = ET.SubElement(
            suite,
            "testcase",
            classname=_xml_text(f"mallory.check.{result.run}"),
            name=_xml_text(f"{t.label} {t.bound}"),
            time="0",
        )
        own = ET.SubElement(case, "properties")
        for key, value in (("measured", format_value(o.value)), ("bound", t.bound)):
            ET.SubElement(own, "property", name=key, value=value)
        if not o.passed:
            failure = ET.SubElement(
                case,
                "failure",
                type="threshold",
                message=_xml_text(f"{t.label} is {format_value(o.value)}; the bound is {t.bound}"),
            )
            detail = f"measured: {format_value(o.value)}\nbound: {t.bound}"
            failure.text = _xml_text(detail + (f"\n{o.note}" if o.note else ""))
    ET.indent(suites)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True) + b"\n"
