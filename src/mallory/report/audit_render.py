"""The audit in the terminal (plain lines, 80 columns) and as one self-contained HTML page: the
pipeline of defense failures stage by stage, each with its status, its finding, its evidence
(tables, the robust accuracy against eps, the samples listed) and its flags."""

from __future__ import annotations

import math
import textwrap

from mallory.report.audit_model import FAILED, PASSED, AuditReport, AuditStage
from mallory.report.fmt import count, ledger_text, num, pct
from mallory.report.html import _CSS
from mallory.report.markup import cell, esc, section, table
from mallory.report.plots import Series, colour, step_chart

WIDTH = 80
_MARK = {PASSED: "passed", FAILED: "FAILED", "not measured": "not measured"}


def audit_lines(report: AuditReport, width: int = WIDTH) -> list[str]:
    """The audit as plain lines no wider than ``width``."""

    def wrap(text: str, indent: str = "") -> list[str]:
        return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent) or [""]

    lines = wrap(
        f"Audit of {report.defended} against {report.baseline} on {report.dataset}: "
        f"{count(report.samples)} samples, {report.norm} eps {num(report.eps)}, margin "
        f"{pct(report.margin)}, clean accuracy tolerance {pct(report.tolerance)}"
    )
    lines += wrap(
        f"clean accuracy: defended {pct(report.clean_defended)}, baseline "
        f"{pct(report.clean_baseline)}"
    )
    for flag in report.flags:
        lines += wrap(f"warning: {flag.message}")
    for stage in report.stages:
        lines.append("")
        lines += wrap(f"{stage.number}. {stage.name}: {_MARK.get(stage.status, stage.status)}")
        lines += wrap(stage.finding, "   ")
        for row in stage.rows:
            base = "" if math.isnan(row.baseline) else f", baseline {pct(row.baseline)}"
            detail = f" ({row.detail})" if row.detail else ""
            lines += wrap(f"- {row.label.strip()}: {pct(row.defended)}{base}{detail}", "   ")
        if stage.samples:
            shown = ", ".join(str(s) for s in stage.samples[:20])
            more = f" and {len(stage.samples) - 20} more" if len(stage.samples) > 20 else ""
            lines += wrap(f"samples: {shown}{more}", "   ")
    lines.append("")
    lines += wrap(f"verdict: {report.verdict}")
    lines += wrap(f"attackers' spend: {ledger_text(report.ledger)}")
    lines += wrap(f"evaluator's spend: {ledger_text(report.evaluator)}")
    return lines


def _stage_html(stage: AuditStage) -> str:
    badge = {"passed": "pass", "failed": "fail"}.get(stage.status, "unknown")
    rows = [
        [
            esc(row.label.strip()),
            cell(pct(row.defended), cls="num"),
            cell(pct(row.baseline), cls="num"),
            esc(row.detail) or "—",
        ]
        for row in stage.rows
    ]
    parts = [
        f'<p class="status {badge}"><b>{esc(stage.status)}</b>: {esc(stage.finding)}</p>',
        f'<p class="question">{esc(stage.question)}</p>',
    ]
    if rows:
        parts.append(
            table(["measurement", "defended", "baseline", "detail"], rows, cls="audit-rows")
        )
    for curve in stage.curves:
        series = [Series(label="defended", x=curve.x, y=curve.y, colour=colour(0))]
        parts.append(
            "<figure>"
            + step_chart(
                series,
                title="robust accuracy against eps",
                x_label=curve.x_label,
                y_label=curve.y_label,
            )
            + "</figure>"
        )
    if stage.samples:
        parts.append(
            "<p>Samples worth a look (ids): "
            + esc(", ".join(str(s) for s in stage.samples))
            + "</p>"
        )
    for flag in stage.flags:
        parts.append(
            f'<p class="warning flag" data-code="{esc(flag.code)}">⚠ {esc(flag.message)}</p>'
        )
    return section(f"stage-{stage.number}", f"{stage.number}. {stage.name}", "".join(parts))


def audit_section(report: AuditReport) -> str:
    """The audit as a section: the pipeline at a glance, then each stage with its evidence."""
    overview = table(
        ["stage", "question", "status"],
        [
            [
                f'<a href="#stage-{s.number}">{s.number}. {esc(s.name)}</a>',
                esc(s.question),
                cell(esc(s.status), cls="error" if s.status == FAILED else ""),
            ]
            for s in report.stages
        ],
        cls="pipeline",
    )
    verdict = f'<p class="warning" role="status"><b>Verdict</b>: {esc(report.verdict)}</p>'
    body = verdict + overview + "".join(_stage_html(s) for s in report.stages)
    return section(
        "audit",
        "The pipeline of defense failures",
        body,
        intro="A defense (1) has no effect on adversarial examples, or (2) costs too much clean "
        "accuracy, or (3) does not stop an adaptive attacker, or (4) does not generalize over "
        "attack algorithms, or (5) seems to generalize but it is an illusion, or (6) does not "
        "generalize over threat models. Each stage below measures the defended system against "
        "the baseline; the verdict is the first stage it fails.",
    )


def render_audit_html(report: AuditReport) -> str:
    """The audit as one self-contained HTML page (no network, no script)."""
    head = table(
        ["", "defended", "baseline"],
        [
            [cell("system", head=True), esc(report.defended), esc(report.baseline)],
            [
                cell("clean accuracy", head=True),
                cell(pct(report.clean_defended), cls="num"),
                cell(pct(report.clean_baseline), cls="num"),
            ],
        ],
        cls="header",
    )
    facts = (
        f"<p>{esc(report.dataset)}: {count(report.samples)} samples · {esc(report.norm)} eps "
        f"{num(report.eps)} · margin {pct(report.margin)} · tolerance {pct(report.tolerance)} · "
        f"seed {report.seed} · {esc(report.created)}</p>"
        f"<p>Attackers' spend: {esc(ledger_text(report.ledger))}. Evaluator's spend: "
        f"{esc(ledger_text(report.evaluator))}.</p>"
    )
    warnings = "".join(
        f'<p class="warning flag" data-code="{esc(f.code)}">⚠ {esc(f.message)}</p>'
        for f in report.flags
    )
    title = f"mallory audit: {report.defended} against {report.baseline}"
    header = f'<section id="header"><h1>{esc(title)}</h1>{head}{facts}{warnings}</section>'
    css = _CSS + (
        ".status.fail{color:#a0281e}.status.pass{color:#1e6b2e}"
        ".question{color:#555;font-style:italic}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{css}</style></head>"
        f"<body><main>{header}{audit_section(report)}</main></body></html>\n"
    )
