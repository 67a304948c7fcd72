"""The HTML report: one self-contained page (no network, no script, no external file).

Plots are inline SVG (:mod:`mallory.report.plots`), images PNG data URIs
(:mod:`mallory.report.png`). Every section is a ``<section>`` with a stable id: ``header``,
``matrix``, ``security-curves``, ``survival``, ``confidence``, ``gallery``, ``grid``, ``risk``,
``footer``.
"""

from __future__ import annotations

from mallory.report.fmt import count, delta, ledger_text, num, pct
from mallory.report.html_charts import confidence_section, security_section, survival_section
from mallory.report.html_images import gallery_section, grid_section
from mallory.report.html_matrix import matrix_section
from mallory.report.markup import cell, esc, section, table
from mallory.report.model import Report
from mallory.report.risk_view import risk_section
from mallory.report.views import check_reports, system_labels

SECTIONS = (
    "header",
    "matrix",
    "security-curves",
    "survival",
    "confidence",
    "gallery",
    "grid",
    "risk",
    "footer",
)

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1b1b;
background:#fafafa}
main{max-width:1400px;margin:auto;padding:1em 2em}
h1{font-size:1.5em;margin:.4em 0}h2{border-bottom:2px solid #ddd;padding-bottom:.2em}
nav a{margin-right:1em}
table{border-collapse:collapse;margin:.5em 0 1em;background:#fff}
th,td{border:1px solid #ddd;padding:3px 7px;vertical-align:top;text-align:left}
thead th{background:#f0f0f0;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.delta,th.delta,.delta{background:#f7f7ff;font-style:italic}td.sys{white-space:nowrap}
.sys0{color:#1f4e8c}.sys1{color:#a0281e}
.missing,.noimage{color:#888;font-style:italic}
.error{color:#a0281e}
.warning{background:#fff3cd;border:1px solid #e0b000;padding:.6em 1em;font-weight:600}
.intro{color:#444;max-width:70em}
.sides{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
.charts{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0;background:#fff;border:1px solid #e4e4e4;padding:.5em}
figcaption{font-size:12px;color:#444;max-width:420px}
svg.plot text{font-size:10px;fill:#333}svg.plot text.title{font-size:12px;font-weight:600}
svg.plot .frame{fill:none;stroke:#999}svg.plot .grid{stroke:#eee}
svg.plot .band{fill:#f5c518;fill-opacity:.25}svg.plot .note{fill:#777}
img{image-rendering:pixelated;display:block;border:1px solid #ccc}
table.grid td{padding:1px;text-align:center;vertical-align:middle}
table.grid td.failed{background:#fde8e6;color:#a0281e;font-size:11px;width:56px;height:56px}
table.grid td.original{background:#1f4e8c}table.grid th{vertical-align:middle}
td.details{font-size:12px;min-width:16em}
footer{color:#444;font-size:13px}
"""


def _header(reports: list[Report]) -> str:
    labels = system_labels(reports)
    fields: list[tuple[str, list[str]]] = [
        ("run", [esc(r.run) for r in reports]),
        ("created", [esc(r.created) for r in reports]),
        ("dataset", [esc(r.dataset) for r in reports]),
        ("samples", [count(r.samples) for r in reports]),
        ("seed", [esc(r.seed) for r in reports]),
        ("status", [esc(r.status) for r in reports]),
        ("clean accuracy", [f"<b>{pct(r.clean_accuracy)}</b>" for r in reports]),
        ("review band", ["[" + ", ".join(num(v) for v in r.review_band) + "]" for r in reports]),
        ("attacker's total spend", [esc(ledger_text(r.ledger)) for r in reports]),
        ("judge", [esc(_judged(r)) for r in reports]),
        ("evaluator's own spend", [esc(ledger_text(r.evaluator)) for r in reports]),
    ]
    head = ["", *(f'<span class="sys{i}">{esc(label)}</span>' for i, label in enumerate(labels))]
    if len(reports) == 2:
        head.append("Δ (second − first)")
    rows = []
    for name, values in fields:
        row = [cell(esc(name), head=True), *values]
        if len(reports) == 2:
            diff = (
                delta(reports[0].clean_accuracy, reports[1].clean_accuracy, share=True)
                if name == "clean accuracy"
                else ""
            )
            row.append(cell(diff, cls="delta"))
        rows.append(row)
    warnings = [
        f'<p class="warning" role="alert">⚠ Partial run {esc(r.run)}: it stopped before its '
        "last attack, so the numbers cover only what ran.</p>"
        for r in reports
        if r.status == "partial"
    ]
    for report, label in zip(reports, labels, strict=True):
        for place, flag in report.all_flags():
            warnings.append(
                f'<p class="warning flag" role="alert" data-code="{esc(flag.code)}">⚠ '
                f"{esc(label)} · {esc(place)}: {esc(flag.message)}</p>"
            )
        for threat in report.threats:
            if threat.stopped:
                warnings.append(
                    f'<p class="warning" role="alert">⚠ {esc(label)} · {esc(threat.name)}: '
                    f"{esc(threat.stopped)}; the attacker had spent "
                    f"{num(threat.queries_until_stopped)} queries when first refused.</p>"
                )
    if len(reports) == 2 and (
        reports[0].dataset != reports[1].dataset or reports[0].samples != reports[1].samples
    ):
        warnings.append(
            '<p class="warning" role="alert">⚠ The two runs did not use the same data '
            "(dataset or number of samples differ): compare with care.</p>"
        )
    if len(reports) == 1:
        title = f"mallory: {esc(reports[0].system)} on {esc(reports[0].dataset)}"
    else:
        title = f"mallory: {esc(labels[0])} against {esc(labels[1])}"
    nav = " ".join(f'<a href="#{s}">{s.replace("-", " ")}</a>' for s in SECTIONS[1:-1])
    body = f"<nav>{nav}</nav>{''.join(warnings)}{table(head, rows, cls='header')}"
    return f'<section id="header"><h1>{title}</h1>{body}</section>'


def _judged(report: Report) -> str:
    if report.draws > 1:
        return f"majority over {count(report.draws)} draws per verdict (randomized system)"
    return "one answer per verdict (deterministic system)"


def _footer() -> str:
    lines = [
        "<b>Robust accuracy</b> (untargeted threat models): the share of all samples the system "
        "got right and no attack broke. <b>Success rate</b> (targeted): the share of attacked "
        "samples pushed to their target.",
        "Attacks run cheapest first, each on the samples still standing. <b>Marginal gain</b>: "
        "the share of the threat model's samples an attack broke that no earlier attack had "
        "broken; <b>standing after</b>: the share still standing after it.",
        "<b>Effort to the first mistake</b>: what the attacker spent per sample (queries, seconds, "
        "money) until its first successful input; higher means mistakes are harder to find.",
        "<b>Review band</b>: the range of confidence a human would review; the review share is "
        "the share of mistakes inside it. Lower confidence on mistakes is better.",
        "Each attack gets a <b>share</b> of the per-sample query budget (what it may spend, "
        "plus what earlier attacks left unspent); an attack with nothing to spend is listed "
        "as <b>not run</b>, never as breaking nothing. The <b>judge</b> decides every verdict, "
        "by a majority over draws for a randomized system; its own queries are the "
        "<b>evaluator's spend</b>, never charged to the attacker.",
        "Distances are medians over the broken samples, in the dataset's units. "
        "“—” means not measured; “∞” means unbounded.",
    ]
    items = "".join(f"<li>{line}</li>" for line in lines)
    return f"<footer>{section('footer', 'How to read the numbers', f'<ul>{items}</ul>')}</footer>"


def render_html(reports: list[Report]) -> str:
    """The report as one self-contained HTML page: one report shows a run, two compare two
    systems on the same campaign (threat models matched by name, the first run's order)."""
    check_reports(reports, "render_html")
    labels = system_labels(reports)
    title = " vs ".join(labels) + f" · {reports[0].dataset}"
    parts = [
        _header(reports),
        matrix_section(reports),
        security_section(reports),
        survival_section(reports),
        confidence_section(reports),
        gallery_section(reports),
        grid_section(reports),
        risk_section(reports),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>mallory · {esc(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(parts)}{_footer()}</main></body></html>\n"
    )
