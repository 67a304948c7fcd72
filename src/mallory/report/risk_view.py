"""The economics of a report as text lines (terminal, CI log) and as the HTML ``risk`` section.

Both read only :class:`~mallory.report.model.Risk` rows (``ThreatSummary.risk``) and the
priced edits of attacks in problem space (``ThreatSummary.edits``); a run with neither says
how to declare them.
"""

from __future__ import annotations

import math
import textwrap

from mallory.report.fmt import count, num, pct
from mallory.report.markup import cell, esc, section, table
from mallory.report.model import Edits, Report, Risk, ThreatSummary
from mallory.report.plots import Series, colour, step_chart
from mallory.report.views import paired_threats, system_labels

WIDTH = 79  # a line of text fits an 80-column terminal


def verdict(risk: Risk) -> str:
    """Whether the attack pays its attacker, and whether the countermeasure pays the defender."""
    pays = "pays the attacker" if risk.attacker_profit > 0 else "does not pay a profit-seeker"
    if risk.countermeasure <= 0:
        return pays
    worth = "worth" if risk.worth_countermeasure else "not worth"
    return f"{pays}; countermeasure {worth} its cost"


def risk_lines(threat: ThreatSummary) -> list[str]:
    """The economics of ``threat`` as short lines (none without a risk row)."""
    risk = threat.risk
    if risk is None:
        return []
    level = risk.expertise or "—"
    return [
        f"  economics: cheapest break {num(risk.cheapest)}, median {num(risk.median)} per "
        f"sample; {count(risk.paying)}/{count(risk.attacked)} pay at damage {num(risk.damage)}",
        f"  likelihood {pct(risk.likelihood)} ({risk.band}); expertise needed: {level} "
        f"(one-off {num(risk.fixed)})",
        f"  over {count(risk.volume)} inputs: expected loss {num(risk.expected_loss)}, "
        f"attacker spends {num(risk.attacker_cost)}",
        f"  it {verdict(risk)}",
    ]


def edits_lines(threat: ThreatSummary, *, most: int = 5) -> list[str]:
    """The priced edits of ``threat``'s breaking inputs as short lines (none when its
    features carry no prices)."""
    edits = threat.edits
    if edits is None:
        return []
    if not edits.samples:
        return ["  edits: no priced edit broke a sample"]
    used = ", ".join(f"{name} ({count(n)})" for name, n in list(edits.usage.items())[:most])
    return [
        f"  edits: cheapest {num(edits.cheapest)}, median {num(edits.median)} per broken sample",
        *textwrap.wrap(
            f"edits attackers use: {used}",
            WIDTH,
            initial_indent="  ",
            subsequent_indent="    ",
            break_on_hyphens=False,
        ),
    ]


def _usage_table(name: str, edits: Edits) -> str:
    rows = [[cell(esc(feature)), cell(count(n), cls="num")] for feature, n in edits.usage.items()]
    return table([f"{esc(name)}: edit", "breaking inputs"], rows, cls="edits")


def _cost_curve(risk: Risk) -> tuple[list[float], list[float]]:
    """The share of attacked samples broken at a cost at most x (a step function)."""
    found = sorted(c for c in risk.costs if not math.isnan(c))
    if not risk.attacked:
        return [], []
    xs = [0.0, *found]
    ys = [0.0, *((k + 1) / risk.attacked for k in range(len(found)))]
    return xs, ys


_HEAD = (
    "threat model",
    "cheapest",
    "median",
    "expertise (one-off)",
    "paying / attacked",
    "likelihood",
    "expected loss",
    "attacker's cost",
    "attacker's profit",
    "countermeasure",
    "verdict",
)


def risk_section(reports: list[Report]) -> str:
    """The ``risk`` section: one row per threat model with economics, and the share of
    samples an attacker breaks at each cost."""
    labels = system_labels(reports)
    rows, series, damages, usage = [], [], set(), []
    for k, (name, found) in enumerate(paired_threats(reports)):
        for i, threat in enumerate(found):
            label = name if len(reports) == 1 else f"{name} · {labels[i]}"
            if threat is not None and threat.edits is not None:
                usage.append(_usage_table(label, threat.edits))
            risk = None if threat is None else threat.risk
            if risk is None:
                continue
            damages.add(num(risk.damage))
            rows.append(
                [
                    cell(esc(label), cls="sys"),
                    *(
                        cell(text, cls="num")
                        for text in (
                            num(risk.cheapest),
                            num(risk.median),
                            f"{esc(risk.expertise or '—')} ({num(risk.fixed)})",
                            f"{count(risk.paying)} / {count(risk.attacked)}",
                            f"{pct(risk.likelihood)} ({esc(risk.band)})",
                            num(risk.expected_loss),
                            num(risk.attacker_cost),
                            num(risk.attacker_profit),
                            num(risk.countermeasure),
                        )
                    ),
                    cell(esc(verdict(risk))),
                ]
            )
            xs, ys = _cost_curve(risk)
            series.append(Series(label, xs, ys, colour(k), dashed=i == 1))
    edits = ""
    if usage:
        edits = (
            "<h3>Edits attackers would use</h3><p>The features the breaking inputs change, "
            "under priced feature constraints (attacks in problem space).</p>"
            f'<div class="sides">{"".join(usage)}</div>'
        )
    if not rows:
        body = (
            '<p class="missing">No economics: the campaign declared no damage. Add an '
            "<code>[economics]</code> table (damage, countermeasure, volume, expertise) and "
            "prices to the threat models to see what breaking the system costs and earns.</p>"
        )
        return section("risk", "Economics", body + edits)
    chart = step_chart(
        series,
        title="Share of samples broken at a cost of at most x",
        x_label="money per sample",
        y_label="share broken",
    )
    caption = f"damage per evasion: {', '.join(sorted(damages))}; a sample pays below it"
    intro = (
        "What the cheapest successful attack costs per sample (queries, computing, new "
        "accounts and, in problem space, the edit, at the threat model's prices), against the "
        "damage the defender declared. "
        "The attacker is taken to be rational: it gives up on an input once it has spent the "
        "damage there, and buys the expertise that pays best. Expected loss = volume × "
        "likelihood × damage; a countermeasure is worth it when it costs less."
    )
    body = table(list(_HEAD), rows, cls="risk")
    body += f"<figure>{chart}<figcaption>{esc(caption)}</figcaption></figure>{edits}"
    return section("risk", "Economics", body, intro=intro)
