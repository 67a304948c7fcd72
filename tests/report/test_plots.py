"""SVG charts: axis choice, awkward numbers, and what gets drawn."""

from __future__ import annotations

import math
import re

from mallory.report.model import Histogram
from mallory.report.plots import (
    Bars,
    Hist,
    Series,
    bar_chart,
    histogram_chart,
    make_scale,
    step_chart,
)


def paths(svg: str) -> list[str]:
    return re.findall(r'<path class="data" d="([^"]*)"', svg)


def test_log_axis_only_when_values_span_decades() -> None:
    wide = make_scale([0.0, 3.0, 40.0, 5000.0], 0, 100)
    narrow = make_scale([0.0, 3.0, 25.0], 0, 100)
    assert wide is not None and wide.log and (wide.low, wide.high) == (1.0, 10000.0)
    assert wide.ticks() == [1.0, 10.0, 100.0, 1000.0, 10000.0]
    assert wide(0.0) == 0 and wide(100.0) == 50.0  # zero sits on the left edge
    assert narrow is not None and not narrow.log and narrow.low == 0.0 and narrow.high >= 25


def test_single_point_and_no_point() -> None:
    one = make_scale([7.0], 0, 100)
    assert one is not None and one.low < 7.0 < one.high
    assert make_scale([math.nan, math.inf], 0, 100) is None
    svg = step_chart([Series("a", [2.0], [0.5], "#000")], title="t", x_label="x", y_label="y")
    (d,) = paths(svg)
    assert d.startswith("M") and "H" in d  # a visible step out to the right edge


def test_nan_and_infinite_points_are_left_out() -> None:
    series = Series("a", [0.0, math.nan, 10.0, math.inf, 1e4], [1.0, 0.9, 0.5, 0.2, 0.1], "#000")
    svg = step_chart([series], title="t", x_label="x", y_label="y")
    (d,) = paths(svg)
    assert d.count("V") == 2  # three finite points: a start and two steps
    assert "(log scale)" in svg and "nan" not in svg.lower()


def test_empty_charts_say_so() -> None:
    empty = Series("a", [], [], "#000")
    assert "no data" in step_chart([empty], title="t", x_label="x", y_label="y")
    assert 'class="plot empty"' in step_chart([], title="t", x_label="x", y_label="y")
    assert "no mistakes" in histogram_chart([Hist("a", Histogram([], []), "#000")], title="t",
                                            x_label="c")  # fmt: skip
    assert "no data" in bar_chart(["a"], [Bars("s", [math.nan], "#000")], title="t", y_label="y")


def test_histogram_shades_the_band_and_draws_each_system() -> None:
    first = Hist("A", Histogram([0.0, 0.5, 1.0], [2, 1]), "#111")
    second = Hist("B", Histogram([0.0, 0.25, 0.5, 0.75, 1.0], [0, 1, 0, 3]), "#222")
    svg = histogram_chart([first, second], title="t", x_label="c", band=[0.5, 0.8])
    assert len(paths(svg)) == 2 and 'class="band"' in svg
    y_ticks = re.findall(r'text-anchor="end">([^<]*)<', svg)
    assert y_ticks == ["0", "1", "2", "3"]  # whole counts up to the largest bin


def test_labels_are_escaped() -> None:
    svg = step_chart(
        [Series("<b>&", [0.0, 1.0], [1.0, 0.5], "#000")], title="<t>", x_label="x", y_label="y"
    )
    assert "<b>&" not in svg and "&lt;b&gt;&amp;" in svg and "&lt;t&gt;" in svg


def test_bars_follow_the_category_order() -> None:
    svg = bar_chart(["cheap", "dear"], [Bars("s", [0.9, 0.2], "#000")], title="t", y_label="share")
    heights = [float(h) for h in re.findall(r'<rect class="data"[^>]* height="([\d.]+)"', svg)]
    assert len(heights) == 2 and heights[0] > heights[1] > 0
