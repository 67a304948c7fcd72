"""End to end: a campaign file through ``mallory evaluate``, then ``mallory report`` and
``mallory compare`` from the store, and the real report rendered in headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mallory.cli import app
from report.test_html import load_in_chromium

pytestmark = pytest.mark.slow

CAMPAIGN = """
name = "{name}"
seed = 0
chunk = 25

[system]
model = "{model}"

[data]
dataset = "digits"
samples = 40

[[threat]]
preset = "no-knowledge"
norm = "linf"
eps = 0.3

[[threat]]
preset = "label-only"
norm = "linf"
eps = 0.3
queries_per_sample = 300
price_per_query = 0.01
attacks = ["gaussian-noise", {{ name = "hopskipjump", max_queries = 250 }}]

[[threat]]
preset = "white-box"
norm = "linf"
eps = 0.2
attacks = ["fgsm", {{ name = "pgd", steps = 10 }}]

[[threat]]
preset = "white-box"
name = "targeted grid"
norm = "l0"
eps = 20
goal = "targeted"
grid = true
attacks = ["jsma"]
"""

runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("runs")
    path = folder / "runs.db"
    file = folder / "digits.toml"
    file.write_text(CAMPAIGN.format(name="digits", model="digits-mlp"))
    done = runner.invoke(app, ["evaluate", str(file), "--store", str(path), "--quiet"])
    assert done.exit_code == 0, done.output
    assert "digits" in done.output and (folder / "digits.html").exists()
    return path


def test_evaluate_prints_the_matrix_and_resumes_as_a_no_op(store: Path) -> None:
    file = store.parent / "digits.toml"
    again = runner.invoke(app, ["evaluate", str(file), "--store", str(store), "--quiet"])
    assert again.exit_code == 0, again.output
    for name in ("no-knowledge", "label-only", "white-box", "targeted grid"):
        assert name in again.output


def test_report_renders_from_the_store_alone(store: Path, tmp_path: Path) -> None:
    html, data = tmp_path / "r.html", tmp_path / "r.json"
    done = runner.invoke(
        app, ["report", "digits", "--store", str(store), "--html", str(html), "--json", str(data)]
    )
    assert done.exit_code == 0, done.output
    report = json.loads(data.read_text())
    assert report["schema"] == "mallory.report/2" and report["status"] == "complete"
    names = [t["name"] for t in report["threats"]]
    assert names == ["no-knowledge", "label-only", "white-box", "targeted grid"]
    white = report["threats"][2]
    assert white["robust_accuracy"] < report["clean_accuracy"]
    assert len(report["threats"][3]["grid"]["cells"]) == 90

    facts = load_in_chromium(html.read_text(), tmp_path)
    assert facts["problems"] == [] and facts["console"] == []
    assert facts["images"], "the gallery and the grid show images"
    for image in facts["images"]:
        assert image["width"] > 0 and image["values"] >= 2, image
    for section in ("matrix", "security-curves", "survival", "confidence", "gallery", "grid"):
        assert section in facts["sections"]


def test_compare_puts_two_systems_side_by_side(store: Path, tmp_path: Path) -> None:
    file = store.parent / "mlp-again.toml"
    # the same campaign on a second run of the system, named apart
    file.write_text(CAMPAIGN.format(name="digits-b", model="digits-mlp"))
    done = runner.invoke(app, ["evaluate", str(file), "--store", str(store), "--quiet"])
    assert done.exit_code == 0, done.output
    html = tmp_path / "c.html"
    done = runner.invoke(
        app, ["compare", "digits", "digits-b", "--store", str(store), "--html", str(html)]
    )
    assert done.exit_code == 0, done.output
    page = html.read_text()
    assert "digits-b" in page and "digits" in page


def test_bad_runs_and_stores_are_clear_errors(store: Path, tmp_path: Path) -> None:
    missing = runner.invoke(app, ["report", "nope", "--store", str(store)])
    assert missing.exit_code == 2 and "No run 'nope'" in missing.output
    nowhere = runner.invoke(app, ["report", "digits", "--store", str(tmp_path / "x.db")])
    assert nowhere.exit_code == 2 and "No store" in nowhere.output
    notes = tmp_path / "notes.txt"
    notes.write_text("not a store")
    refused = runner.invoke(app, ["report", "digits", "--store", str(notes)])
    assert refused.exit_code == 2 and "not a mallory store" in refused.output
    assert notes.read_text() == "not a store"
