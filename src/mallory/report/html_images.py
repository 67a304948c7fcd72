"""The image sections of the HTML report: the gallery of broken samples and the targeted
source x target grid. Tabular runs show the features an attack changed instead of images."""

from __future__ import annotations

import math

from mallory.report.fmt import count, num, pct
from mallory.report.markup import cell, esc, image, section, table
from mallory.report.model import Example, Grid, GridCell, Report
from mallory.report.png import display_size, image_uri, perturbation_uri
from mallory.report.views import class_name, finite_median, paired_threats, system_labels

GALLERY_SIZE = 112
GRID_SIZE = 56


def _is_image(report: Report) -> bool:
    return display_size(report.input_shape) is not None


def _details(report: Report, ex: Example) -> str:
    target = f" (target {esc(class_name(report, ex.target))})" if ex.target is not None else ""
    return (
        f"sample #{ex.sample} · {esc(ex.attack)}<br>"
        f"label {esc(class_name(report, ex.label))} → "
        f"<b>{esc(class_name(report, ex.prediction))}</b>{target}<br>"
        f"confidence {num(ex.confidence)} (clean {num(ex.clean_confidence)})<br>"
        f"L0 {num(ex.l0)} · L2 {num(ex.l2)} · L∞ {num(ex.linf)} · {count(ex.queries)} queries"
    )


def _image_row(report: Report, ex: Example) -> list[str]:
    shape, bounds = report.input_shape, report.bounds
    size = display_size(shape, min_size=GALLERY_SIZE) or (GALLERY_SIZE, GALLERY_SIZE)
    label = class_name(report, ex.label)
    original = image(
        image_uri(ex.original, shape, bounds, min_size=GALLERY_SIZE),
        f"original, label {label}",
        size=size,
        missing="input does not match the run's shape",
    )
    change = image(
        perturbation_uri(ex.original, ex.adversarial, shape, min_size=GALLERY_SIZE),
        f"perturbation of sample {ex.sample}",
        size=size,
        missing="unchanged (a clean mistake)",
    )
    adversarial = image(
        image_uri(ex.adversarial, shape, bounds, min_size=GALLERY_SIZE),
        f"adversarial, predicted {class_name(report, ex.prediction)}",
        size=size,
        missing="input does not match the run's shape",
    )
    return [original, change, adversarial, cell(_details(report, ex), cls="details")]


def _feature_row(report: Report, ex: Example) -> list[str]:
    names = report.feature_names or [f"feature {i}" for i in range(len(ex.original))]
    changed = [
        [esc(name), cell(num(a, 4), cls="num"), cell(num(b, 4), cls="num")]
        for name, a, b in zip(names, ex.original, ex.adversarial, strict=False)
        if not (a == b or (math.isnan(a) and math.isnan(b)))
    ]
    if changed:
        features = table(["feature", "original", "adversarial"], changed, cls="features")
    else:
        features = '<span class="noimage">no feature changed (a clean mistake)</span>'
    return [features, cell(_details(report, ex), cls="details")]


def _gallery(report: Report, examples: list[Example]) -> str:
    if not examples:
        return '<p class="missing">no broken sample recorded</p>'
    if _is_image(report):
        head = ["original", "perturbation", "adversarial", "what happened"]
        return table(head, [_image_row(report, ex) for ex in examples], cls="gallery")
    head = ["changed features", "what happened"]
    return table(head, [_feature_row(report, ex) for ex in examples], cls="gallery tabular")


def gallery_section(reports: list[Report]) -> str:
    """The ``gallery`` section."""
    labels = system_labels(reports)
    blocks = []
    for name, found in paired_threats(reports):
        sides = []
        for i, threat in enumerate(found):
            caption = f'<h4 class="sys{i}">{esc(labels[i])}</h4>' if len(found) > 1 else ""
            inner = (
                _gallery(reports[i], threat.examples)
                if threat
                else '<p class="missing">not in this run</p>'
            )
            sides.append(f'<div class="side">{caption}{inner}</div>')
        blocks.append(f'<h3>{esc(name)}</h3><div class="sides">{"".join(sides)}</div>')
    intro = (
        "Broken samples: the original, the perturbation (adversarial minus original, scaled so "
        "the largest change is black or white and no change is mid-gray), the adversarial input."
        if any(_is_image(r) for r in reports)
        else "Broken samples and the features each attack changed."
    )
    return section("gallery", "Gallery", "".join(blocks), intro=intro)


def _grid_cell(report: Report, found: GridCell | None) -> str:
    if found is None:
        return cell("—", cls="missing")
    if not found.success:
        return cell("✗<br>failed", cls="failed")
    tip = f"confidence {num(found.confidence)} · L2 {num(found.l2)} · L0 {num(found.l0)}"
    size = display_size(report.input_shape, min_size=GRID_SIZE)
    if size is None:
        return cell(f"✓<br><small>{tip}</small>", cls="ok")
    uri = image_uri(found.adversarial, report.input_shape, report.bounds, min_size=GRID_SIZE)
    alt = f"{class_name(report, found.source)} pushed to {class_name(report, found.target)}"
    return f'<td class="ok" title="{esc(tip)}">{image(uri, alt, size=size)}</td>'


def _grid(report: Report, grid: Grid) -> str:
    cells = {(c.source, c.target): c for c in grid.cells}
    wins = [c for c in grid.cells if c.success]
    rate = len(wins) / len(grid.cells) if grid.cells else math.nan
    stats = (
        f"attack <b>{esc(grid.attack)}</b> · success {count(len(wins))}/{count(len(grid.cells))} "
        f"({pct(rate)}) · median L2 {num(finite_median(c.l2 for c in wins))} · median L0 "
        f"{num(finite_median(c.l0 for c in wins))}"
    )
    size = display_size(report.input_shape, min_size=GRID_SIZE)
    head = ["source ↓ · target →", *(esc(class_name(report, c)) for c in grid.classes)]
    rows = []
    for k, source in enumerate(grid.classes):
        row = [cell(esc(class_name(report, source)), head=True)]
        for target in grid.classes:
            if target == source:
                original = grid.originals[k] if k < len(grid.originals) else []
                uri = image_uri(original, report.input_shape, report.bounds, min_size=GRID_SIZE)
                shown = image(uri, f"original {source}", size=size) if size else "original"
                row.append(cell(shown, cls="original"))
            else:
                row.append(_grid_cell(report, cells.get((source, target))))
        rows.append(row)
    return f'<p class="stats">{stats}</p>' + table(head, rows, cls="grid")


def grid_section(reports: list[Report]) -> str:
    """The ``grid`` section (a note when no threat model has a grid)."""
    labels = system_labels(reports)
    blocks = []
    for name, found in paired_threats(reports):
        for i, threat in enumerate(found):
            if threat is not None and threat.grid is not None:
                who = f" · {esc(labels[i])}" if len(reports) > 1 else ""
                blocks.append(f"<h3>{esc(name)}{who}</h3>{_grid(reports[i], threat.grid)}")
    if not blocks:
        blocks.append('<p class="missing">No targeted threat model recorded a grid.</p>')
    intro = (
        "One sample per source class (rows) pushed toward every other class (columns); the "
        "diagonal shows the original."
    )
    return section("grid", "Targeted grid", "".join(blocks), intro=intro)
