"""The report in the terminal (rich tables), and as plain lines of text.

Report strings are never read as rich markup: a system named ``[red]x`` prints as written.
"""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mallory.report.fmt import count, delta, ledger_text, num, pct
from mallory.report.model import AttackSummary, Report, ThreatSummary
from mallory.report.risk_view import edits_lines, risk_lines
from mallory.report.views import (
    DISTANCE_NAMES,
    DISTANCES,
    EFFORTS,
    check_reports,
    goal_text,
    headline,
    paired_threats,
    system_labels,
)

_PARTIAL = "partial run: it stopped before its last attack; the numbers cover only what ran"


WIDE = 120  # columns needed by the attack-sequence table


def budget_text(attack: AttackSummary) -> str:
    """What the attack was given and what it spent: "given 250 of 1,000 queries/sample
    (planned 1,000), spent 12,345", or "unlimited"."""
    given = "unlimited budget" if attack.budget is None else f"share {count(attack.budget)}/sample"
    planned = "" if attack.planned is None else f", planned {count(attack.planned)}"
    return f"{given}{planned}, spent {count(attack.ledger.queries)} queries"


def _attack_line(index: int, attack: AttackSummary) -> str:
    if attack.status != "ran":
        return (
            f"  {index}. {attack.attack} ({attack.family}): not run: {attack.reason}; "
            f"{budget_text(attack)}"
        )
    if attack.family in ("inherited", "extraction"):
        what = (
            f"broke {count(attack.broken)} (counted from a weaker threat model)"
            if attack.family == "inherited"
            else f"{count(attack.ledger.queries)} queries to build the surrogate"
        )
        return f"  {index}. {attack.attack} ({attack.family}): {what}"
    line = (
        f"  {index}. {attack.attack} ({attack.family}): broke {count(attack.broken)}/"
        f"{count(attack.attempted)} ({pct(attack.success_rate)}), marginal gain "
        f"{pct(attack.marginal_gain)}, standing after {pct(attack.standing_after)}, "
        f"{budget_text(attack)}"
    )
    if attack.refused:
        line += f", {count(attack.refused)} rows refused"
    if attack.flagged:
        line += f", flagged after {num(attack.queries_until_flagged)} of its queries"
    if attack.interrupted:
        line += f", {count(attack.interrupted)} interrupted"
    if attack.error:
        line += f", error: {attack.error}"
    return line


def detector_line(threat: ThreatSummary) -> str | None:
    """When a query-stream detector flagged the attacker, beside the queries a sample's first
    mistake took, and which attacks evaded it; None when no detector refused anything."""
    if math.isnan(threat.queries_until_flagged):
        return None
    ran = [a for a in threat.attacks if a.status == "ran" and a.family != "inherited"]
    evaded = [a.attack for a in ran if not a.flagged]
    mistake = num(threat.effort_median.get("queries", math.nan))
    return (
        f"  a detector flagged the attacker after {num(threat.queries_until_flagged)} queries "
        f"in all (a sample's first mistake took a median of {mistake}); "
        + (f"evaded it: {', '.join(evaded)}" if evaded else "no attack evaded it")
    )


def _threat_line(threat: ThreatSummary) -> str:
    kind, value = headline(threat)
    distance = threat.median_distance.get(threat.norm, math.nan)
    return (
        f"{threat.name} ({goal_text(threat)}): {kind} {pct(value)}, "
        f"median {DISTANCE_NAMES.get(threat.norm, threat.norm)} {num(distance)}, "
        f"median queries to first mistake {num(threat.effort_median.get('queries', math.nan))}, "
        f"review share {pct(threat.review_share)}"
    )


def judge_line(report: Report) -> str:
    """How verdicts were decided, and what deciding them cost (never the attacker's)."""
    how = (
        "each verdict a majority over " + count(report.draws) + " draws (randomized system)"
        if report.draws > 1
        else "one answer per verdict (deterministic system)"
    )
    return f"judge: {how}; evaluator's own spend: {ledger_text(report.evaluator)}"


def flag_lines(report: Report) -> list[str]:
    """Every flag, with where it was raised."""
    return [f"warning ({place}): {flag.message}" for place, flag in report.all_flags()]


def summary_lines(report: Report) -> list[str]:
    """The report's findings as plain lines: the run, clean accuracy, the warnings, then per
    threat model its headline numbers and its attack sequence with marginal gains."""
    lines = [
        f"{report.system} on {report.dataset}: {count(report.samples)} samples, run "
        f"{report.run}, seed {report.seed}, status {report.status}"
    ]
    if report.status == "partial":
        lines.append(f"warning: {_PARTIAL}")
    lines.append(f"clean accuracy {pct(report.clean_accuracy)}")
    lines.append(judge_line(report))
    lines.extend(flag_lines(report))
    for threat in report.threats:
        lines.append(_threat_line(threat))
        if threat.stopped:
            lines.append(
                f"  {threat.stopped}; the attacker had spent {num(threat.queries_until_stopped)} "
                "queries when it was first refused"
            )
        flagged = detector_line(threat)
        if flagged is not None:
            lines.append(flagged)
        lines.extend(_attack_line(i, a) for i, a in enumerate(threat.attacks, 1))
        lines.extend(edits_lines(threat))
        lines.extend(risk_lines(threat))
    lines.append(f"attacker's total spend: {ledger_text(report.ledger)}")
    return lines


def _matrix(report: Report, width: int) -> Table:
    """The threat-model matrix: every measure on a wide terminal; on a narrow one (a CI log,
    80 columns) the headline, the median distance in the threat model's own norm, the median
    queries to the first mistake and the review share."""
    table = Table(title="Threat models (cheapest attacker first)", title_justify="left")
    if width < WIDE:
        for name, right in (
            ("threat model", False),
            ("goal · norm ≤ ε", False),
            ("robust / success", True),
            ("median dist.", True),
            ("median queries", True),
            ("review", True),
        ):
            table.add_column(name, justify="right" if right else "left", overflow="fold")
        for t in report.threats:
            kind, value = headline(t)
            distance = t.median_distance.get(t.norm, math.nan)
            table.add_row(
                Text(t.name),
                Text(goal_text(t)),
                f"{pct(value)} {'acc.' if kind.startswith('robust') else 'succ.'}",
                num(distance),
                num(t.effort_median.get("queries", math.nan)),
                pct(t.review_share),
            )
        return table
    for name in ("threat model", "goal · norm ≤ ε", "robust acc. / success"):
        table.add_column(name)
    for d in DISTANCES:
        table.add_column(f"median {DISTANCE_NAMES[d]}", justify="right")
    for e in EFFORTS:
        table.add_column(f"median {e}", justify="right")
    table.add_column("review share", justify="right")
    for t in report.threats:
        kind, value = headline(t)
        table.add_row(
            Text(t.name),
            Text(goal_text(t)),
            f"{pct(value)} {kind}",
            *(num(t.median_distance.get(d, math.nan)) for d in DISTANCES),
            *(num(t.effort_median.get(e, math.nan)) for e in EFFORTS),
            pct(t.review_share),
        )
    return table


def _attacks(threat: ThreatSummary) -> Table:
    table = Table(title=Text(f"{threat.name}: attack sequence"), title_justify="left")
    for name in ("#", "attack", "family", "broken / attempted", "success rate"):
        table.add_column(name, justify="right" if name == "#" else "left")
    for name in ("marginal gain", "standing after", "share / sample", "queries", "gradients"):
        table.add_column(name, justify="right")
    table.add_column("status and problems")
    for i, a in enumerate(threat.attacks, 1):
        problems = [] if a.status == "ran" else [f"not run: {a.reason}"]
        problems += [f"{count(a.interrupted)} interrupted"] if a.interrupted else []
        problems += [f"{count(a.refused)} rows refused"] if a.refused else []
        flagged = f"flagged after {num(a.queries_until_flagged)} queries"
        problems += [flagged] if a.flagged else []
        problems += [f.code for f in a.flags]
        problems += [a.error] if a.error else []
        share = "∞" if a.budget is None else count(a.budget)
        if a.planned is not None:
            share += f" (plans {count(a.planned)})"
        table.add_row(
            str(i),
            Text(a.attack),
            Text(a.family),
            f"{count(a.broken)} / {count(a.attempted)}",
            pct(a.success_rate),
            pct(a.marginal_gain),
            pct(a.standing_after),
            share,
            count(a.ledger.queries),
            count(a.ledger.gradients),
            Text("; ".join(problems) or "—", style="red" if problems else ""),
        )
    return table


def _compare_matrix(reports: list[Report], labels: list[str]) -> Table:
    table = Table(title="Threat models: second run against first", title_justify="left")
    table.add_column("threat model")
    table.add_column("metric")
    for label in labels:
        table.add_column(Text(label), justify="right")
    table.add_column("Δ", justify="right")
    for name, found in paired_threats(reports):
        known = next(t for t in found if t is not None)
        kind = headline(known)[0]
        values = [headline(t)[1] if t else math.nan for t in found]
        table.add_row(Text(name), kind, *map(pct, values), delta(*values, share=True))
        norm = DISTANCE_NAMES.get(known.norm, known.norm)
        dist = [t.median_distance.get(known.norm, math.nan) if t else math.nan for t in found]
        table.add_row("", f"median {norm}", *map(num, dist), delta(*dist))
        spend = [t.effort_median.get("queries", math.nan) if t else math.nan for t in found]
        table.add_row("", "median queries", *map(num, spend), delta(*spend))
        review = [t.review_share if t else math.nan for t in found]
        table.add_row(
            "", "review share", *map(pct, review), delta(*review, share=True), end_section=True
        )
    return table


def _compare_attacks(name: str, found: list[ThreatSummary | None], labels: list[str]) -> Table:
    table = Table(title=Text(f"{name}: attack sequence"), title_justify="left")
    table.add_column("attack")
    for label in labels:
        table.add_column(Text(f"{label}\nmarginal gain"), justify="right")
    table.add_column("Δ gain", justify="right")
    for label in labels:
        table.add_column(Text(f"{label}\nstanding after"), justify="right")
    table.add_column("Δ standing", justify="right")
    names: list[str] = []
    for threat in found:
        names.extend(a.attack for a in (threat.attacks if threat else []) if a.attack not in names)
    runs = [{a.attack: a for a in (t.attacks if t else [])} for t in found]
    for attack in names:
        pair = [r.get(attack) for r in runs]
        gains = [a.marginal_gain if a else math.nan for a in pair]
        after = [a.standing_after if a else math.nan for a in pair]
        table.add_row(
            Text(attack),
            *map(pct, gains),
            delta(*gains, share=True),
            *map(pct, after),
            delta(*after, share=True),
        )
    return table


def render_terminal(reports: list[Report], console: Console | None = None) -> None:
    """Print one run, or two runs side by side with their differences (second minus first)."""
    check_reports(reports, "render_terminal")
    out = console or Console()
    labels = system_labels(reports)
    for report, label in zip(reports, labels, strict=True):
        out.print(Text(f"{label} on {report.dataset}", style="bold"), end=" ")
        out.print(Text(f"run {report.run} · {count(report.samples)} samples · seed {report.seed}"))
        out.print(f"clean accuracy [bold]{pct(report.clean_accuracy)}[/bold]")
        if report.status == "partial":
            out.print(Text(f"warning: {_PARTIAL}", style="bold yellow"))
        out.print(Text(f"attacker's total spend: {ledger_text(report.ledger)}"))
        out.print(Text(judge_line(report)))
        for line in flag_lines(report):
            out.print(Text(line, style="bold yellow"))
    if len(reports) == 1:
        out.print(_matrix(reports[0], out.width))
        for threat in reports[0].threats:
            if threat.stopped:
                out.print(
                    Text(
                        f"{threat.name}: {threat.stopped}; the attacker had spent "
                        f"{num(threat.queries_until_stopped)} queries when first refused",
                        style="yellow",
                    )
                )
            flagged = detector_line(threat)
            if flagged is not None:
                out.print(Text(f"{threat.name}:{flagged.removeprefix(' ')}", style="yellow"))
            if out.width >= WIDE:
                out.print(_attacks(threat))
            else:  # a narrow terminal: one line per attack reads better than a crushed table
                out.print(Text(f"{threat.name}: attack sequence", style="italic"))
                for i, attack in enumerate(threat.attacks, 1):
                    out.print(Text(_attack_line(i, attack)))
            priced = [*edits_lines(threat), *risk_lines(threat)]
            if priced:
                out.print(Text(f"{threat.name}: edits and economics", style="italic"))
                for line in priced:
                    out.print(Text(line))
        return
    a, b = reports
    change = delta(a.clean_accuracy, b.clean_accuracy, share=True)
    out.print(f"Δ clean accuracy (second − first): {change}")
    out.print(_compare_matrix(reports, labels))
    for name, found in paired_threats(reports):
        out.print(_compare_attacks(name, found, labels))
