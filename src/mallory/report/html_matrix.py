"""The threat-model matrix of the HTML report: one row per threat model (a row per system and
a difference row when two runs are compared), then each threat model's attack sequence."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

from mallory.report.fmt import count, delta, num, pct
from mallory.report.markup import cell, esc, section, table
from mallory.report.model import AttackSummary, Report, ThreatSummary
from mallory.report.views import (
    DISTANCE_NAMES,
    DISTANCES,
    EFFORTS,
    goal_text,
    headline,
    paired_threats,
    system_labels,
)

T = TypeVar("T")

_HEAD = [
    "samples<br><small>attacked · broken</small>",
    "robust accuracy (untargeted)<br>success rate (targeted)",
    *(f"median {DISTANCE_NAMES[d]}" for d in DISTANCES),
    *(f"median {e}<br><small>to first mistake</small>" for e in EFFORTS),
    "review share",
]


def _values(threat: ThreatSummary) -> list[str]:
    kind, value = headline(threat)
    return [
        f"{count(threat.samples)}<br><small>{count(threat.attacked)} · "
        f"{count(threat.broken)}</small>",
        f"{pct(value)} <small>{esc(kind)}</small>",
        *(num(threat.median_distance.get(d, math.nan)) for d in DISTANCES),
        *(num(threat.effort_median.get(e, math.nan)) for e in EFFORTS),
        pct(threat.review_share),
    ]


def _differences(a: ThreatSummary, b: ThreatSummary) -> list[str]:
    return [
        delta(a.samples, b.samples),
        delta(headline(a)[1], headline(b)[1], share=True),
        *(
            delta(a.median_distance.get(d, math.nan), b.median_distance.get(d, math.nan))
            for d in DISTANCES
        ),
        *(
            delta(a.effort_median.get(e, math.nan), b.effort_median.get(e, math.nan))
            for e in EFFORTS
        ),
        delta(a.review_share, b.review_share, share=True),
    ]


def _paired(
    lead: list[str],
    found: Sequence[T | None],
    labels: list[str],
    values: Callable[[T], list[str]],
    differences: Callable[[T, T], list[str]],
    width: int,
) -> list[list[str]]:
    """Rows for one item (a threat model, an attack): its ``lead`` cells, then a row of values
    per run, and in a comparison a difference row (second minus first)."""
    compare = len(found) > 1
    spanned = [cell(c, rows=len(found) + 1) for c in lead] if compare else list(lead)
    rows: list[list[str]] = []
    for i, item in enumerate(found):
        system = [cell(esc(labels[i]), cls=f"sys sys{i}")] if compare else []
        if item is None:
            shown = [cell("not in this run", cls="missing", span=width)]
        else:
            shown = [v if v.startswith("<td") else cell(v, cls="num") for v in values(item)]
        rows.append([*(spanned if i == 0 else []), *system, *shown])
    if compare:
        a, b = found[0], found[1]
        diffs = differences(a, b) if a is not None and b is not None else ["—"] * width
        rows.append(
            [cell("Δ (second − first)", cls="sys delta")]
            + [cell(d, cls="num delta") for d in diffs]
        )
    return rows


def _matrix_rows(reports: list[Report]) -> list[list[str]]:
    labels = system_labels(reports)
    rows: list[list[str]] = []
    for name, found in paired_threats(reports):
        known = next(t for t in found if t is not None)
        lead = [f"<b>{esc(name)}</b>", esc(goal_text(known))]
        rows += _paired(lead, found, labels, _values, _differences, len(_HEAD))
    return rows


_ATTACK_HEAD = [
    "status",
    "share / sample",
    "planned / sample",
    "attempted",
    "broken",
    "success rate",
    "marginal gain",
    "standing after",
    "queries",
    "gradients",
    "seconds",
    "money",
    "refused rows",
    "problems and flags",
]


def _attack_values(attack: AttackSummary) -> list[str]:
    problems = []
    if attack.interrupted:
        problems.append(f"{count(attack.interrupted)} interrupted")
    if attack.error:
        problems.append(esc(attack.error))
    problems += [f"<b>{esc(f.code)}</b>: {esc(f.message)}" for f in attack.flags]
    ledger = attack.ledger
    status = "ran" if attack.status == "ran" else f"<b>not run</b>: {esc(attack.reason or '')}"
    return [
        cell(status, cls="" if attack.status == "ran" else "error"),
        "∞" if attack.budget is None else count(attack.budget),
        "—" if attack.planned is None else count(attack.planned),
        count(attack.attempted),
        count(attack.broken),
        pct(attack.success_rate),
        pct(attack.marginal_gain),
        pct(attack.standing_after),
        count(ledger.queries),
        count(ledger.gradients),
        num(ledger.seconds),
        num(ledger.money),
        count(attack.refused),
        cell("<br>".join(problems) or "—", cls="error" if problems else ""),
    ]


def _attack_differences(a: AttackSummary, b: AttackSummary) -> list[str]:
    return [
        "",
        "",
        "",
        delta(a.attempted, b.attempted),
        delta(a.broken, b.broken),
        delta(a.success_rate, b.success_rate, share=True),
        delta(a.marginal_gain, b.marginal_gain, share=True),
        delta(a.standing_after, b.standing_after, share=True),
        delta(a.ledger.queries, b.ledger.queries),
        delta(a.ledger.gradients, b.ledger.gradients),
        delta(a.ledger.seconds, b.ledger.seconds),
        delta(a.ledger.money, b.ledger.money),
        delta(a.refused, b.refused),
        "",
    ]


def _param(value: object) -> str:
    """A hyperparameter as the rest of the report writes numbers (JSON keeps "inf")."""
    if value in ("inf", "-inf"):
        value = float(str(value))
    if isinstance(value, float):
        return num(value, 4)
    return str(value)


def _attack_table(found: list[ThreatSummary | None], labels: list[str]) -> str:
    """The attack sequence of one threat model, attacks of the runs matched by name."""
    names: list[str] = []
    for threat in found:
        names.extend(a.attack for a in (threat.attacks if threat else []) if a.attack not in names)
    by_name = [{a.attack: a for a in (t.attacks if t else [])} for t in found]
    head = ["#", "attack", "family", *(["system"] if len(found) > 1 else []), *_ATTACK_HEAD]
    rows: list[list[str]] = []
    for k, name in enumerate(names, 1):
        pair = [runs.get(name) for runs in by_name]
        known = next(a for a in pair if a is not None)
        params = ", ".join(f"{k}={_param(v)}" for k, v in sorted(known.params.items()))
        lead = [str(k), f'<span title="{esc(params)}">{esc(name)}</span>', esc(known.family)]
        rows += _paired(lead, pair, labels, _attack_values, _attack_differences, len(_ATTACK_HEAD))
    if not rows:
        rows = [[cell("no attack ran", cls="missing", span=len(head))]]
    return table(head, rows, cls="attacks")


def _sequences(reports: list[Report]) -> str:
    labels = system_labels(reports)
    return "".join(
        f'<div class="sequence"><h3>{esc(name)}</h3>{_attack_table(found, labels)}</div>'
        for name, found in paired_threats(reports)
    )


def matrix_section(reports: list[Report]) -> str:
    """The ``matrix`` section."""
    head = ["threat model", "goal · norm ≤ ε"]
    if len(reports) > 1:
        head.append("system")
    body = table(head + _HEAD, _matrix_rows(reports), cls="matrix")
    intro = (
        "One row per threat model, cheapest attacker first. Then each threat model's attack "
        "sequence: every attack runs only on the samples still standing."
    )
    return section(
        "matrix",
        "Threat-model matrix",
        body + "<h3>Attack sequences</h3>" + _sequences(reports),
        intro=intro,
    )
