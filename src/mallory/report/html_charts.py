"""The chart sections of the HTML report: security curves, survival of effort to the first
mistake, and confidence on mistakes. Colours tell threat models apart; in a comparison the
second system's lines are dashed."""

from __future__ import annotations

import math

from mallory.report.fmt import count, num, pct
from mallory.report.markup import esc, section
from mallory.report.model import Curve, Report, ThreatSummary
from mallory.report.plots import Bars, Hist, Series, bar_chart, colour, histogram_chart, step_chart
from mallory.report.views import (
    DISTANCE_NAMES,
    EFFORTS,
    finite_median,
    paired_threats,
    standing,
    system_labels,
)

SYSTEM_COLOURS = ("#1f4e8c", "#e8891c")  # first and second system of a comparison
_UNITS = {"queries": "queries per sample", "seconds": "seconds per sample", "money": "money"}


def _figure(svg: str, caption: str = "") -> str:
    text = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure>{svg}{text}</figure>"


def _series(reports: list[Report]) -> list[tuple[int, int, str, ThreatSummary]]:
    """(threat index, system index, legend label, summary) for every summary of every run."""
    labels = system_labels(reports)
    out = []
    for k, (name, found) in enumerate(paired_threats(reports)):
        for i, threat in enumerate(found):
            if threat is not None:
                label = name if len(reports) == 1 else f"{name} · {labels[i]}"
                out.append((k, i, label, threat))
    return out


def _accuracy_curve(threat: ThreatSummary, effort: str) -> Curve | None:
    """The effort curve as accuracy: the survival share of the attacked samples times the
    share of samples the system got right to begin with."""
    curve = threat.effort.get(effort)
    if curve is None:
        return None
    scale = threat.attacked / threat.samples if threat.samples else math.nan
    return Curve(curve.x, [y * scale for y in curve.y], curve.x_label, curve.y_label)


def _epsilon_charts(reports: list[Report]) -> list[str]:
    entries = _series(reports)
    norms = list(dict.fromkeys(t.norm for *_, t in entries))
    charts = []
    for norm in norms:
        chosen = [(k, i, label, t) for k, i, label, t in entries if t.norm == norm]
        x_label = next((t.epsilon_curve.x_label for *_, t in chosen if t.epsilon_curve.x), "ε")
        series = [
            Series(label, t.epsilon_curve.x, t.epsilon_curve.y, colour(k), dashed=i == 1)
            for k, i, label, t in chosen
        ]
        y_names = dict.fromkeys(t.epsilon_curve.y_label for *_, t in chosen if t.epsilon_curve.x)
        y_label = " / ".join(y_names) or "accuracy"
        title = f"Accuracy against ε ({DISTANCE_NAMES.get(norm, norm)})"
        charts.append(_figure(step_chart(series, title=title, x_label=x_label, y_label=y_label)))
    return charts


def _effort_chart(reports: list[Report], effort: str, *, accuracy: bool) -> str:
    series = []
    for k, i, label, threat in _series(reports):
        curve = _accuracy_curve(threat, effort) if accuracy else threat.effort.get(effort)
        if curve is not None:
            series.append(Series(label, curve.x, curve.y, colour(k), dashed=i == 1))
    if accuracy:
        title = f"Accuracy against attacker {'cost' if effort == 'money' else effort}"
        y_label = "accuracy"
    else:
        title = f"Survival against {effort} to the first mistake"
        y_label = "share still standing"
    svg = step_chart(series, title=title, x_label=_UNITS[effort], y_label=y_label)
    spent = [x for s in series for x in s.x if math.isfinite(x) and x > 0]
    note = ""
    if effort == "money" and series and not spent:
        note = "No attack cost money: the threat models set no price per query."
    return _figure(svg, note)


def security_section(reports: list[Report]) -> str:
    """The ``security-curves`` section."""
    names = [name for name, _ in paired_threats(reports)]
    groups = []
    for i, label in enumerate(system_labels(reports)):
        by_name = {t.name: t for t in reports[i].threats}
        values = [standing(by_name[n]) if n in by_name else math.nan for n in names]
        groups.append(Bars(label, values, SYSTEM_COLOURS[i]))
    bars = bar_chart(
        names,
        groups,
        title="Standing share per threat model",
        y_label="robust accuracy / standing",
    )
    charts = [
        *_epsilon_charts(reports),
        _effort_chart(reports, "queries", accuracy=True),
        _effort_chart(reports, "money", accuracy=True),
        _figure(bars, "Untargeted: robust accuracy. Targeted: share not pushed to its target."),
    ]
    intro = (
        "Accuracy against the perturbation size, the attacker's query budget and its cost. "
        "The ε curves come from the smallest perturbations found: an upper bound on the true "
        "robust accuracy."
    )
    body = f'<div class="charts">{"".join(charts)}</div>'
    return section("security-curves", "Security curves", body, intro=intro)


def survival_section(reports: list[Report]) -> str:
    """The ``survival`` section."""
    charts = [_effort_chart(reports, e, accuracy=False) for e in EFFORTS]
    intro = (
        "The share of attacked samples (those the system got right) still standing against "
        "what the attacker spent per sample. Higher and further right: mistakes harder to find."
    )
    body = f'<div class="charts">{"".join(charts)}</div>'
    return section("survival", "Effort to the first mistake", body, intro=intro)


def confidence_section(reports: list[Report]) -> str:
    """The ``confidence`` section."""
    labels = system_labels(reports)
    band = reports[0].review_band
    figures = []
    for k, (name, found) in enumerate(paired_threats(reports)):
        hists, notes = [], []
        for i, threat in enumerate(found):
            if threat is None:
                continue
            label = labels[i] if len(reports) > 1 else name
            tint = colour(k) if len(reports) == 1 else SYSTEM_COLOURS[i]
            hists.append(Hist(label, threat.confidence_histogram, tint))
            who = f"{esc(labels[i])}: " if len(reports) > 1 else ""
            notes.append(
                f"{who}{count(len(threat.confidence))} mistakes · median confidence "
                f"{num(finite_median(threat.confidence))} · "
                f'<b class="share">{pct(threat.review_share)}</b> inside the review band'
            )
        title = f"Confidence on mistakes: {name}"
        svg = histogram_chart(hists, title=title, x_label="confidence", band=band)
        figures.append(_figure(svg, "<br>".join(notes)))
    bands = dict.fromkeys("[" + ", ".join(num(v) for v in r.review_band) + "]" for r in reports)
    band_text = " and ".join(bands)
    intro = (
        "How sure the system was when it was wrong; the shaded review band "
        f"{esc(band_text)} is where a human would look. For two models with the same error "
        "volume, prefer the one with lower confidence on its mistakes and the one whose "
        "mistakes are harder to find (more effort to the first mistake)."
    )
    body = f'<div class="charts">{"".join(figures)}</div>'
    return section("confidence", "Confidence on mistakes", body, intro=intro)
