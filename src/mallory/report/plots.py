"""Inline SVG charts for the HTML report, drawn here without a plotting library.

Three kinds: step curves (every :class:`~mallory.report.model.Curve` is a step function),
histograms, and grouped bars. The x axis turns logarithmic by itself when the positive values
span two decades or more; on a log axis zero and negative values sit on the left edge. NaN and
infinite points are left out; a chart with nothing to draw says "no data" instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from mallory.report.fmt import pct, tick
from mallory.report.model import Histogram

PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
)
WIDTH, PLOT_HEIGHT = 420, 180
LEFT, RIGHT, TOP, BOTTOM = 52, 14, 24, 40
LEGEND_ROW = 15


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


@dataclass(frozen=True)
class Series:
    """One line of a step chart (dashed lines tell a second system apart)."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    colour: str
    dashed: bool = False


@dataclass(frozen=True)
class Bars:
    """One group of a bar chart: a value per category."""

    label: str
    values: Sequence[float]
    colour: str


@dataclass(frozen=True)
class Hist:
    label: str
    histogram: Histogram
    colour: str


@dataclass(frozen=True)
class Scale:
    """Maps data values in ``[low, high]`` to pixels in ``[start, end]``."""

    low: float
    high: float
    log: bool
    start: float
    end: float
    step: float = 0.0  # linear tick step; 0 chooses about five ticks

    def __call__(self, value: float) -> float:
        if self.log:
            where = (math.log10(max(value, self.low)) - math.log10(self.low)) / (
                math.log10(self.high) - math.log10(self.low)
            )
        else:
            where = (value - self.low) / (self.high - self.low)
        return round(self.start + min(max(where, 0.0), 1.0) * (self.end - self.start), 2)

    def ticks(self) -> list[float]:
        if self.log:
            first, last = round(math.log10(self.low)), round(math.log10(self.high))
            every = max(1, math.ceil((last - first) / 6))
            return [10.0**k for k in range(first, last + 1, every)]
        step = self.step or _nice_step((self.high - self.low) / 5)
        start = math.ceil(self.low / step - 1e-9)
        return [k * step for k in range(start, math.floor(self.high / step + 1e-9) + 1)]


def _nice_step(raw: float) -> float:
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * 0.999)


def make_scale(
    values: Sequence[float],
    start: float,
    end: float,
    *,
    log: bool | None = None,
    min_step: float = 0.0,
) -> Scale | None:
    """A scale that holds the finite ``values``; None when there are none. ``log=None``
    chooses a log scale when the positive values span two decades or more; ``min_step``
    bounds the linear tick step from below (1 for counts)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    positive = [v for v in finite if v > 0]
    if log is None:
        log = len(positive) >= 2 and max(positive) >= 100 * min(positive)
    if log and positive:
        low = 10.0 ** math.floor(math.log10(min(positive)))
        high = 10.0 ** math.ceil(math.log10(max(positive)))
        if high <= low:
            low, high = low / 10, high * 10
        return Scale(low, high, True, start, end)
    low, high = min(finite), max(finite)
    if high == low:
        pad = abs(low) / 2 or 1.0
        low, high = (low - pad if low - pad >= 0 or low < 0 else 0.0), high + pad
    step = max(_nice_step((high - low) / 5), min_step)
    low, high = math.floor(low / step) * step, math.ceil(high / step) * step
    return Scale(low, high, False, start, end, step)


def _svg(width: float, height: float, title: str, body: list[str], *, empty: bool) -> str:
    kind = "plot empty" if empty else "plot"
    return (
        f'<svg class="{kind}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
        f'<text class="title" x="{LEFT}" y="15">{escape(title)}</text>' + "".join(body) + "</svg>"
    )


def _empty(title: str, note: str) -> str:
    body = [
        f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" '
        f'height="{PLOT_HEIGHT}"/>',
        f'<text class="note" x="{(WIDTH + LEFT - RIGHT) / 2}" y="{TOP + PLOT_HEIGHT / 2}" '
        f'text-anchor="middle">{escape(note)}</text>',
    ]
    return _svg(WIDTH, TOP + PLOT_HEIGHT + BOTTOM, title, body, empty=True)


def _axes(
    sx: Scale, sy: Scale, x_label: str, y_label: str, *, y_share: bool, x_ticks: bool = True
) -> list[str]:
    bottom, top = sy.start, sy.end
    out = [
        f'<rect class="frame" x="{sx.start}" y="{top}" width="{sx.end - sx.start}" '
        f'height="{bottom - top}"/>'
    ]
    for value in sx.ticks() if x_ticks else []:
        px = sx(value)
        out.append(f'<line class="grid" x1="{px}" y1="{top}" x2="{px}" y2="{bottom}"/>')
        out.append(f'<text x="{px}" y="{bottom + 13}" text-anchor="middle">{tick(value)}</text>')
    for value in sy.ticks():
        py = sy(value)
        label = pct(value) if y_share else tick(value)
        out.append(f'<line class="grid" x1="{sx.start}" y1="{py}" x2="{sx.end}" y2="{py}"/>')
        out.append(f'<text x="{sx.start - 4}" y="{py + 3}" text-anchor="end">{label}</text>')
    log_note = " (log scale)" if sx.log else ""
    out.append(
        f'<text class="label" x="{(sx.start + sx.end) / 2}" y="{bottom + 30}" '
        f'text-anchor="middle">{escape(x_label)}{log_note}</text>'
    )
    out.append(
        f'<text class="label" transform="translate(12 {(top + bottom) / 2}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    return out


def _legend(entries: list[tuple[str, str, bool]], y: float, *, box: bool = False) -> list[str]:
    out = []
    for i, (label, col, dashed) in enumerate(entries):
        row = y + i * LEGEND_ROW
        dash = ' stroke-dasharray="6 3"' if dashed else ""
        if box:
            out.append(
                f'<rect x="{LEFT}" y="{row - 8}" width="20" height="9" fill="{col}" '
                f'fill-opacity="0.4" stroke="{col}"/>'
            )
        else:
            out.append(
                f'<line x1="{LEFT}" y1="{row - 4}" x2="{LEFT + 20}" y2="{row - 4}" '
                f'stroke="{col}" stroke-width="2"{dash}/>'
            )
        out.append(f'<text x="{LEFT + 26}" y="{row}">{escape(label)}</text>')
    return out


def _points(series: Series) -> list[tuple[float, float]]:
    pairs = [
        (float(x), float(y))
        for x, y in zip(series.x, series.y, strict=False)
        if math.isfinite(x) and math.isfinite(y)
    ]
    return sorted(pairs, key=lambda p: p[0])


def step_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    share: bool = True,
    log: bool | None = None,
) -> str:
    """Step curves on shared axes; ``share`` fixes the y axis to [0, 1] in percent."""
    drawn = [(s, _points(s)) for s in series]
    xs = [x for _, pts in drawn for x, _ in pts]
    ys = [y for _, pts in drawn for _, y in pts]
    bottom = TOP + PLOT_HEIGHT
    sx = make_scale(xs, LEFT, WIDTH - RIGHT, log=log)
    sy = make_scale([0.0, 1.0] if share else [0.0, *ys], bottom, TOP, log=False)
    if sx is None or sy is None:
        return _empty(title, "no data")
    body = _axes(sx, sy, x_label, y_label, y_share=share)
    for s, pts in drawn:
        if not pts:
            continue
        dash = ' stroke-dasharray="6 3"' if s.dashed else ""
        path = f"M{sx(pts[0][0])},{sy(pts[0][1])}"
        path += "".join(f"H{sx(x)}V{sy(y)}" for x, y in pts[1:]) + f"H{sx.end}"
        body.append(
            f'<path class="data" d="{path}" fill="none" stroke="{s.colour}" '
            f'stroke-width="2"{dash}><title>{escape(s.label)}</title></path>'
        )
        if len(pts) <= 25:
            body.extend(
                f'<circle cx="{sx(x)}" cy="{sy(y)}" r="2.5" fill="{s.colour}"/>' for x, y in pts
            )
    legend = [(s.label if pts else f"{s.label} (no data)", s.colour, s.dashed) for s, pts in drawn]
    body += _legend(legend, bottom + BOTTOM + 6)
    height = bottom + BOTTOM + LEGEND_ROW * len(legend) + 4
    return _svg(WIDTH, height, title, body, empty=False)


def histogram_chart(
    hists: Sequence[Hist],
    *,
    title: str,
    x_label: str,
    band: Sequence[float] | None = None,
) -> str:
    """Histograms overlaid as translucent step areas; ``band`` ``[low, high]`` is shaded."""
    shapes = []
    for h in hists:
        edges, counts = h.histogram.edges, h.histogram.counts
        bins = [
            (edges[i], edges[i + 1], counts[i])
            for i in range(min(len(counts), len(edges) - 1))
            if math.isfinite(edges[i]) and math.isfinite(edges[i + 1])
        ]
        shapes.append((h, bins))
    xs = [e for _, bins in shapes for lo, hi, _ in bins for e in (lo, hi)]
    if not any(c for _, bins in shapes for *_, c in bins):
        return _empty(title, "no mistakes to show")
    bottom = TOP + PLOT_HEIGHT
    sx = make_scale(xs, LEFT, WIDTH - RIGHT, log=False)
    tallest = max(c for _, bins in shapes for *_, c in bins)
    sy = make_scale([0.0, float(tallest)], bottom, TOP, log=False, min_step=1.0)
    if sx is None or sy is None:
        return _empty(title, "no data")
    body = []
    if band is not None and len(band) == 2 and all(math.isfinite(b) for b in band):
        left, right = sx(band[0]), sx(band[1])
        body.append(
            f'<rect class="band" x="{left}" y="{TOP}" width="{max(right - left, 0)}" '
            f'height="{PLOT_HEIGHT}"><title>review band</title></rect>'
            f'<text class="note" x="{(left + right) / 2}" y="{TOP + 11}" '
            f'text-anchor="middle">review band</text>'
        )
    body += _axes(sx, sy, x_label, "mistakes", y_share=False)
    for h, bins in shapes:
        if not bins:
            continue
        path = f"M{sx(bins[0][0])},{sy(0)}"
        path += "".join(f"V{sy(c)}H{sx(hi)}" for _, hi, c in bins) + f"V{sy(0)}Z"
        body.append(
            f'<path class="data" d="{path}" fill="{h.colour}" fill-opacity="0.35" '
            f'stroke="{h.colour}" stroke-width="1.5"><title>{escape(h.label)}</title></path>'
        )
    legend = [(h.label, h.colour, False) for h in hists]
    body += _legend(legend, bottom + BOTTOM + 6, box=True)
    height = bottom + BOTTOM + LEGEND_ROW * len(legend) + 4
    return _svg(WIDTH, height, title, body, empty=False)


def bar_chart(
    categories: Sequence[str], groups: Sequence[Bars], *, title: str, y_label: str
) -> str:
    """Grouped bars of shares in [0, 1], one group per system, in the categories' order."""
    values = [v for g in groups for v in g.values if math.isfinite(v)]
    if not categories or not values:
        return _empty(title, "no data")
    width = max(WIDTH, LEFT + RIGHT + 64 * len(categories))
    bottom = TOP + PLOT_HEIGHT
    sy = Scale(0.0, 1.0, False, bottom, TOP)
    sx = Scale(0.0, 1.0, False, LEFT, width - RIGHT)
    x_label = "threat models, cheapest attacker first"
    body = _axes(sx, sy, x_label, y_label, y_share=True, x_ticks=False)
    slot = (sx.end - sx.start) / len(categories)
    bar = min(slot * 0.7 / max(1, len(groups)), 48.0)
    room = max(4, int(slot / 6))  # characters that fit under a slot
    for i, name in enumerate(categories):
        left = sx.start + (i + 0.5) * slot - bar * len(groups) / 2
        for j, group in enumerate(groups):
            value = group.values[i] if i < len(group.values) else math.nan
            x = round(left + j * bar, 2)
            if not math.isfinite(value):
                body.append(f'<text class="note" x="{x + bar / 2}" y="{bottom - 4}">—</text>')
                continue
            top = sy(min(max(value, 0.0), 1.0))
            body.append(
                f'<rect class="data" x="{x}" y="{top}" width="{round(bar - 1, 2)}" '
                f'height="{round(bottom - top, 2)}" fill="{group.colour}">'
                f"<title>{escape(group.label)} · {escape(name)}: {pct(value)}</title></rect>"
            )
        short = name if len(name) <= room else name[: room - 1] + "…"
        body.append(
            f'<text x="{round(sx.start + (i + 0.5) * slot, 2)}" y="{bottom + 13}" '
            f'text-anchor="middle">{escape(short)}<title>{escape(name)}</title></text>'
        )
    legend = [(g.label, g.colour, False) for g in groups]
    body += _legend(legend, bottom + BOTTOM + 6, box=True)
    return _svg(width, bottom + BOTTOM + LEGEND_ROW * len(legend) + 4, title, body, empty=False)
