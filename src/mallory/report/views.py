"""Values every rendering derives from a Report: the headline metric of a threat model, the
threat models of two runs matched by name, and names for the systems compared."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

from mallory.errors import InputError
from mallory.report.fmt import eps
from mallory.report.model import Report, ThreatSummary

EFFORTS = ("queries", "seconds", "money")
DISTANCES = ("l0", "l2", "linf")
DISTANCE_NAMES = {"l0": "L0", "l2": "L2", "linf": "L∞"}


def check_reports(reports: list[Report], owner: str) -> None:
    """One report (a run) or two (a comparison); anything else is an InputError."""
    if not isinstance(reports, list | tuple) or not 1 <= len(reports) <= 2:
        got = len(reports) if isinstance(reports, list | tuple) else reports
        raise InputError(
            f"{owner} takes a list of one Report (a run) or two (a comparison); got {got!r}. "
            "Pass [report] or [baseline, candidate]."
        )
    for report in reports:
        if not isinstance(report, Report):
            raise InputError(
                f"{owner} takes Report values; got {type(report).__name__}. "
                "Load saved reports with Report.from_dict(json.load(file))."
            )


def system_labels(reports: list[Report]) -> list[str]:
    """The systems' names, with the run appended when two runs share a system name."""
    names = [r.system for r in reports]
    if len(set(names)) < len(names):
        return [f"{r.system} ({r.run})" for r in reports]
    return names


def paired_threats(reports: list[Report]) -> list[tuple[str, list[ThreatSummary | None]]]:
    """Each threat model's name with its summary in every report (None where a run lacks it),
    in the first report's order (cheapest first), then the names only later runs have."""
    names: list[str] = []
    for report in reports:
        names.extend(t.name for t in report.threats if t.name not in names)
    by_name = [{t.name: t for t in r.threats} for r in reports]
    return [(name, [found.get(name) for found in by_name]) for name in names]


def targeted(threat: ThreatSummary) -> bool:
    return threat.goal == "targeted"


def headline(threat: ThreatSummary) -> tuple[str, float]:
    """The threat model's main number: robust accuracy (untargeted) or success rate
    (targeted)."""
    if targeted(threat):
        return "success rate", threat.success_rate
    return "robust accuracy", threat.robust_accuracy


def standing(threat: ThreatSummary) -> float:
    """The share of the threat model's samples still standing at the end: the robust accuracy
    of an untargeted goal; for a targeted goal, the standing share after the last attack."""
    if not targeted(threat) and not math.isnan(threat.robust_accuracy):
        return threat.robust_accuracy
    if threat.attacks:
        return threat.attacks[-1].standing_after
    return math.nan


def finite_median(values: Iterable[float]) -> float:
    """The median of the finite values (infinite ones count as large); NaN when there are
    none."""
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else math.nan


def class_name(report: Report, index: int | None) -> str:
    """The name of class ``index``; its number when the run has no name for it."""
    if index is None:
        return "—"
    if 0 <= index < len(report.class_names):
        name = report.class_names[index]
        return name if name == str(index) else f"{name} ({index})"
    return str(index)


def goal_text(threat: ThreatSummary) -> str:
    return f"{threat.goal} · {DISTANCE_NAMES.get(threat.norm, threat.norm)} ≤ {eps(threat.eps)}"
