"""The HTML report, loaded in headless Chromium: it loads without errors or network, every
image decodes and shows something, the plots draw, every section is there, and a comparison
shows both systems. Plus the content checks that need no browser.

How the browser check works: the page is copied with two scripts added, a hook at the top of
``<head>`` that records errors (script errors, failed loads, console.error) before any of the
page is read, and a script that runs after ``load``, measures the page (image sizes and pixel
values drawn on a canvas, SVG path lengths, section ids, resource loads) and writes the facts
as JSON into ``<pre id="check">``. ``chromium --dump-dom`` prints the DOM after load; the test
parses the JSON back. Console messages also reach Chromium's log (``--enable-logging``).
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mallory.errors import InputError
from mallory.report import Report, render_html
from mallory.report.html import SECTIONS
from mallory.report.model import Curve, Histogram

CHROMIUM = "/usr/bin/chromium"

HOOK = """<script>
window.__problems = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  if (t && t !== window && (t.src || t.href)) {
    window.__problems.push('failed to load ' + String(t.src || t.href).slice(0, 80));
  } else {
    window.__problems.push('error: ' + e.message);
  }
}, true);
window.addEventListener('unhandledrejection', function (e) {
  window.__problems.push('unhandled rejection: ' + e.reason);
});
document.addEventListener('securitypolicyviolation', function (e) {
  window.__problems.push('blocked: ' + e.blockedURI);
});
var __consoleError = console.error;
console.error = function () {
  window.__problems.push('console.error: ' + Array.from(arguments).join(' '));
  __consoleError.apply(console, arguments);
};
</script>"""

MEASURE = """<script>
window.addEventListener('load', function () {
  var out = {problems: window.__problems, sections: [], images: [], plots: []};
  document.querySelectorAll('section[id]').forEach(function (s) { out.sections.push(s.id); });
  Array.from(document.images).forEach(function (img) {
    var info = {alt: img.alt, complete: img.complete, width: img.naturalWidth,
                height: img.naturalHeight, values: 0};
    if (img.naturalWidth > 0) {
      var c = document.createElement('canvas');
      c.width = img.naturalWidth; c.height = img.naturalHeight;
      var g = c.getContext('2d');
      g.drawImage(img, 0, 0);
      var d = g.getImageData(0, 0, c.width, c.height).data, seen = new Set();
      for (var i = 0; i < d.length && seen.size < 3; i += 4) {
        seen.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2] + ',' + d[i + 3]);
      }
      info.values = seen.size;
    }
    out.images.push(info);
  });
  document.querySelectorAll('svg.plot').forEach(function (svg) {
    var data = Array.from(svg.querySelectorAll('.data'));
    var length = 0, drawn = 0;
    data.forEach(function (el) {
      var box = el.getBBox();
      if (box.width > 0 || box.height > 0) drawn += 1;
      if (el.tagName === 'path') length += el.getTotalLength();
    });
    out.plots.push({section: (svg.closest('section') || {}).id,
                    title: svg.getAttribute('aria-label'), empty: svg.classList.contains('empty'),
                    data: data.length, drawn: drawn, length: length});
  });
  out.resources = performance.getEntriesByType('resource').map(function (r) { return r.name; });
  out.header = (document.getElementById('header') || {}).innerText;
  out.matrix = (document.getElementById('matrix') || {}).innerText;
  out.matrixRows = document.querySelectorAll('#matrix table.matrix tbody tr').length;
  out.grid = {ok: document.querySelectorAll('#grid td.ok img').length,
              failed: document.querySelectorAll('#grid td.failed').length,
              original: document.querySelectorAll('#grid td.original img').length};
  var pre = document.createElement('pre');
  pre.id = 'check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium_or_skip() -> str:
    """Chromium's path; skipped when it is missing outside CI, a failure on CI."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {CHROMIUM} is missing: .ci/run installs it with apt-get.")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium); CI runs this test")


def load_in_chromium(page: str, folder: Path) -> dict[str, Any]:
    """Load ``page`` in headless Chromium and return the facts the MEASURE script found."""
    browser = chromium_or_skip()
    assert page.count("<head>") == 1 and page.count("</body>") == 1
    checked = page.replace("<head>", "<head>" + HOOK).replace("</body>", MEASURE + "</body>")
    path = folder / "page.html"
    path.write_text(checked, encoding="utf-8")
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={folder / 'profile'}",
        "--virtual-time-budget=5000",
        "--enable-logging=stderr",
        "--v=0",
        "--dump-dom",
        path.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    found = re.search(r'<pre id="check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"Chromium wrote no check (exit {done.returncode}): {done.stderr[-2000:]}"
    facts: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    facts["console"] = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    shutil.rmtree(folder / "profile", ignore_errors=True)
    return facts


@pytest.fixture(scope="module")
def pages(
    mnist: Report, mnist_weak: Report, phishing: Report
) -> dict[str, tuple[list[Report], str]]:
    runs = {"single": [mnist], "compare": [mnist_weak, mnist], "tabular": [phishing]}
    return {name: (reports, render_html(reports)) for name, reports in runs.items()}


@pytest.fixture(scope="module")
def browser_facts(
    pages: dict[str, tuple[list[Report], str]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    chromium_or_skip()
    return {
        name: load_in_chromium(page, tmp_path_factory.mktemp(name))
        for name, (_, page) in pages.items()
    }


def expected_images(report: Report) -> int:
    """<img> elements the page should hold for one run: three per gallery example (the
    perturbation only when something changed), a successful grid cell each, the originals."""
    if len(report.input_shape) == 1:
        return 0
    count = 0
    for threat in report.threats:
        for ex in threat.examples:
            count += 2 + (ex.original != ex.adversarial)
        if threat.grid is not None:
            count += sum(c.success for c in threat.grid.cells) + len(threat.grid.classes)
    return count


@pytest.mark.parametrize("name", ["single", "compare", "tabular"])
def test_page_loads_without_errors_or_network(
    name: str, browser_facts: dict[str, dict[str, Any]]
) -> None:
    facts = browser_facts[name]
    assert facts["problems"] == []
    assert facts["console"] == []
    assert [r for r in facts["resources"] if not r.startswith("data:")] == []


@pytest.mark.parametrize("name", ["single", "compare", "tabular"])
def test_every_image_decodes_and_is_not_blank(
    name: str,
    browser_facts: dict[str, dict[str, Any]],
    pages: dict[str, tuple[list[Report], str]],
) -> None:
    images = browser_facts[name]["images"]
    reports = pages[name][0]
    assert len(images) == sum(expected_images(r) for r in reports)
    for image in images:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
        assert image["values"] >= 2, f"image {image['alt']!r} is one flat colour"
    if name != "tabular":
        assert {(i["width"], i["height"]) for i in images} == {(112, 112), (56, 56)}


@pytest.mark.parametrize("name", ["single", "compare", "tabular"])
def test_plots_are_drawn(name: str, browser_facts: dict[str, dict[str, Any]]) -> None:
    plots = browser_facts[name]["plots"]
    for section in ("security-curves", "survival", "confidence"):
        mine = [p for p in plots if p["section"] == section]
        assert mine, f"no plot in {section}"
        for plot in mine:
            assert not plot["empty"], f"{plot['title']} has no data"
            assert plot["drawn"] >= 1 and plot["drawn"] == plot["data"], plot
    assert sum(p["length"] for p in plots) > 1000  # drawn paths, not empty `d` attributes


@pytest.mark.parametrize("name", ["single", "compare", "tabular"])
def test_every_section_and_the_matrix_are_there(
    name: str,
    browser_facts: dict[str, dict[str, Any]],
    pages: dict[str, tuple[list[Report], str]],
) -> None:
    facts, reports = browser_facts[name], pages[name][0]
    assert facts["sections"] == list(SECTIONS)
    rows_per_threat = 1 if len(reports) == 1 else 3  # a row per system and a Δ row
    assert facts["matrixRows"] == rows_per_threat * len(reports[0].threats)
    for threat in reports[0].threats:
        assert threat.name in facts["matrix"]


def test_grid_shows_every_cell(browser_facts: dict[str, dict[str, Any]], mnist: Report) -> None:
    grid = mnist.threat("targeted").grid
    assert grid is not None
    failed = sum(not c.success for c in grid.cells)
    assert 0 < failed < 90
    assert browser_facts["single"]["grid"] == {"ok": 90 - failed, "failed": failed, "original": 10}


def test_comparison_shows_both_systems(
    browser_facts: dict[str, dict[str, Any]], mnist: Report, mnist_weak: Report
) -> None:
    facts = browser_facts["compare"]
    for text in (facts["header"], facts["matrix"]):
        assert mnist.system in text and mnist_weak.system in text
    # robust accuracy under the white-box threat model: 55.0% against 65.0%, +10.0 pp
    weak, strong = mnist_weak.threat("white-box"), mnist.threat("white-box")
    assert (weak.robust_accuracy, strong.robust_accuracy) == (0.55, 0.65)
    assert "+10.0 pp" in facts["matrix"]


# --- content checks without a browser ---------------------------------------------------------


def test_page_is_self_contained_and_small(pages: dict[str, tuple[list[Report], str]]) -> None:
    for _, page in pages.values():
        assert "<script" not in page and "@import" not in page and "url(" not in page
        assert not re.search(r"""(src|href)=["'](?!data:image/png;base64,|#)""", page)
        assert len(page.encode()) < 1_000_000


def test_strings_are_escaped(mnist: Report) -> None:
    evil = "<script>alert('x')</script>"
    threat = dataclasses.replace(mnist.threats[0], name=f"a&b {evil}")
    report = dataclasses.replace(mnist, system=evil, class_names=[evil] * 10, threats=[threat])
    page = render_html([report])
    assert evil not in page and "<script" not in page
    assert html.escape(evil) in page and "a&amp;b" in page


def test_missing_and_infinite_numbers(mnist: Report) -> None:
    page = render_html([mnist])
    matrix = page[page.index('id="matrix"') : page.index('id="security-curves"')]
    assert "L∞ ≤ ∞" in matrix and "L2 ≤ ∞" in matrix  # unbounded eps
    targeted = matrix[matrix.index("<b>targeted</b>") :]
    assert '<td class="num">—</td>' in targeted  # median L0 and money were not measured
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"\b(nan|inf)\b", text, re.I)


def test_partial_run_warns(mnist: Report, mnist_partial: Report) -> None:
    assert 'class="warning"' in render_html([mnist_partial])
    assert "Partial run" in render_html([mnist_partial])
    assert 'class="warning"' not in render_html([mnist])


def test_comparison_marks_threat_models_one_run_lacks(mnist: Report, mnist_weak: Report) -> None:
    fewer = dataclasses.replace(mnist, threats=mnist.threats[1:])
    page = render_html([mnist_weak, fewer])
    assert page.count("not in this run") >= 2  # matrix, attack sequence, gallery


def test_clean_mistake_shows_no_blank_perturbation(mnist: Report) -> None:
    threat = mnist.threats[0]
    same = dataclasses.replace(threat.examples[0], adversarial=threat.examples[0].original)
    report = dataclasses.replace(
        mnist, threats=[dataclasses.replace(threat, examples=[same]), *mnist.threats[1:]]
    )
    assert "unchanged (a clean mistake)" in render_html([report])


def test_degenerate_numbers_do_not_break_the_page(mnist: Report) -> None:
    nothing = Curve([], [], "queries", "share")
    odd = Curve([0.0, math.nan, math.inf, 5.0], [math.nan, 0.5, 0.2, math.inf], "x", "y")
    bare = dataclasses.replace(
        mnist.threats[0],
        attacks=[],
        effort={"queries": nothing, "seconds": odd, "money": Curve([3.0], [0.4], "m", "s")},
        effort_median={},
        median_distance={},
        epsilon_curve=nothing,
        confidence=[],
        confidence_histogram=Histogram([], []),
        review_share=math.nan,
        examples=[],
        grid=None,
    )
    report = dataclasses.replace(mnist, threats=[bare], clean_accuracy=math.nan, samples=0)
    page = render_html([report])
    assert "no data" in page and "no mistakes to show" in page and "no attack ran" in page
    assert "No targeted threat model recorded a grid" in page
    assert render_html([dataclasses.replace(mnist, threats=[])]).count("<section") == len(SECTIONS)


def test_tabular_gallery_lists_changed_features(phishing: Report) -> None:
    page = render_html([phishing])
    example = phishing.threats[0].examples[0]
    names = phishing.feature_names or []
    pairs = zip(names, example.original, example.adversarial, strict=True)
    changed = [name for name, a, b in pairs if a != b]
    assert changed and all(f"<td>{name}</td>" in page for name in changed)
    assert "<img" not in page


@pytest.mark.parametrize("bad", [[], "report", [1], None])
def test_wrong_arguments_are_input_errors(bad: Any, mnist: Report) -> None:
    with pytest.raises(InputError, match="render_html"):
        render_html(bad)
    with pytest.raises(InputError, match="one Report"):
        render_html([mnist, mnist, mnist])


def test_missing_chromium_skips_outside_ci_and_fails_on_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", str(tmp_path / "chromium"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        chromium_or_skip()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        chromium_or_skip()
