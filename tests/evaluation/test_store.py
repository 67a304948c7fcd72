"""The store: a run killed at any point (kill -9) resumes with nothing lost and nothing counted
twice; a file that is not a mallory store is refused and left untouched."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from mallory import InputError, create, white_box
from mallory.evaluation import Campaign, ThreatPlan, build_report
from mallory.store import Store
from mallory.zoo import load_dataset, load_model

# A campaign of many small units: two threat models, a shared per-sample budget, a decision
# attack whose random draws would show any change in what each unit attacked.
SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from mallory import create, label_only, white_box
from mallory.evaluation import Campaign, ThreatPlan
from mallory.zoo import load_dataset, load_model
system = load_model("digits-mlp", progress=False)
data = load_dataset("digits", "test").head(48)
plans = (
    ThreatPlan(
        threat=label_only("linf", 0.15, queries_per_sample=120, price_per_query=0.5),
        attacks=(create("gaussian-noise"), create("blur"), create("hopskipjump", max_queries=100)),
    ),
    ThreatPlan(threat=white_box("linf", 0.1), attacks=(create("fgsm"), create("pgd", steps=20))),
)
Campaign(name="resume", system=system, data=data, plans=plans, chunk=4, seed=3).run(
    sys.argv[1], progress=False
)
"""


def run_script(store: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def committed_units(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1)
        try:
            return int(db.execute("SELECT COUNT(*) FROM units").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def table(store: Path, name: str, columns: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(store)
    try:
        return db.execute(f"SELECT {columns} FROM {name} ORDER BY 1, 2, 3, 4").fetchall()
    finally:
        db.close()


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_same_numbers(tmp_path: Path) -> None:
    whole, killed = tmp_path / "whole.db", tmp_path / "killed.db"
    done = run_script(whole)
    _, err = done.communicate(timeout=600)
    assert done.returncode == 0, err.decode()
    total = committed_units(whole)
    assert total > 10

    victim = run_script(killed)
    deadline = time.monotonic() + 600
    while committed_units(killed) < total // 3 and time.monotonic() < deadline:
        assert victim.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    at_kill = committed_units(killed)
    assert 0 < at_kill < total, "the kill must land partway"
    with Store(killed) as store:
        assert build_report(store, "resume").status == "partial"

    again = run_script(killed)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err.decode()

    # the same outcomes and ledger, row for row (wall seconds aside), and no unit twice
    assert committed_units(killed) == total
    outcome_columns = "threat, attack, id, success, prediction, confidence, l0, l2, linf, target"
    assert table(killed, "outcomes", outcome_columns) == table(whole, "outcomes", outcome_columns)
    ledger_columns = "threat, attack, id, queries, gradients, money"
    assert table(killed, "ledger", ledger_columns) == table(whole, "ledger", ledger_columns)
    with Store(whole) as a, Store(killed) as b:
        first, second = build_report(a, "resume"), build_report(b, "resume")
    assert second.status == "complete"
    for one, two in zip(first.threats, second.threats, strict=True):
        assert (one.broken, one.robust_accuracy) == (two.broken, two.robust_accuracy)
        assert one.ledger.queries == two.ledger.queries
        assert one.effort["queries"] == two.effort["queries"]
        assert one.confidence == two.confidence
        assert [a.broken for a in one.attacks] == [a.broken for a in two.attacks]
    # the budget held across the kill: no sample spent more than 120 queries in threat 0
    spent: dict[int, int] = {}
    for threat, _, sid, queries, _, _ in table(killed, "ledger", ledger_columns):
        if threat == 0:
            spent[sid] = spent.get(sid, 0) + queries
    assert max(spent.values()) <= 120


def test_a_file_that_is_not_a_store_is_refused_and_untouched(tmp_path: Path) -> None:
    text = tmp_path / "notes.db"
    text.write_text("my notes, not a database\n")
    with pytest.raises(InputError, match="not a mallory store"):
        Store(text)
    assert text.read_text() == "my notes, not a database\n"

    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE accounts (id INTEGER, owner TEXT)")
    db.execute("INSERT INTO accounts VALUES (1, 'alice')")
    db.commit()
    db.close()
    before = other.read_bytes()
    with pytest.raises(InputError, match="not a mallory store"):
        Store(other)
    assert other.read_bytes() == before

    with pytest.raises(InputError, match="folder"):
        Store(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        Store(tmp_path / "missing" / "runs.db")


def test_a_run_name_with_another_configuration_is_refused(tmp_path: Path) -> None:
    system = load_model("digits-mlp", progress=False)
    data = load_dataset("digits", "test").head(12)
    plan = ThreatPlan(threat=white_box("linf", 0.1), attacks=(create("fgsm"),))
    with Store(tmp_path / "runs.db") as store:
        first = Campaign(name="same", system=system, data=data, plans=(plan,))
        first.run(store, progress=False)
        units = len(store.units("same"))
        # the same campaign again: already complete, nothing re-run
        again = first.run(store, progress=False)
        assert len(store.units("same")) == units and again.status == "complete"
        changed = Campaign(name="same", system=system, data=data, plans=(plan,), seed=1)
        with pytest.raises(InputError, match="another configuration"):
            changed.run(store, progress=False)
        with pytest.raises(InputError, match=r"No run 'absent'.*same"):
            build_report(store, "absent")


def test_inputs_round_trip_through_the_store(tmp_path: Path) -> None:
    system = load_model("digits-mlp", progress=False)
    data = load_dataset("digits", "test").head(20)
    plan = ThreatPlan(threat=white_box("linf", 0.3), attacks=(create("fgsm"),))
    with Store(tmp_path / "runs.db") as store:
        report = Campaign(name="io", system=system, data=data, plans=(plan,)).run(
            store, progress=False
        )
        samples = store.samples("io", (1, 8, 8))
    assert torch.equal(samples.x, data.x)
    assert torch.equal(samples.labels, data.y)
    for example in report.threats[0].examples:
        clean = data.x[example.sample].flatten().tolist()
        assert example.original == pytest.approx(clean, abs=1e-4)


# A store written by mallory's previous release (store version 1): a campaign half done (the
# label-only threat model committed, the white-box one not started), made by
# the script in tests/evaluation/data/make_store_v1.md, with the release of commit 6ba8fa0.
STORE_V1 = Path(__file__).parent / "data" / "store-v1.db"


def test_a_store_of_the_previous_version_is_upgraded_and_resumes(tmp_path: Path) -> None:
    import shutil

    import mallory
    from mallory.store import VERSION

    path = tmp_path / "old.db"
    shutil.copy(STORE_V1, path)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone() == ("1",)
        old_outcomes = db.execute(
            "SELECT threat, attack, id, success FROM outcomes ORDER BY threat, attack, id"
        ).fetchall()
        old_spend = db.execute("SELECT SUM(queries) FROM ledger").fetchone()[0]
    torch.set_num_threads(1)
    system = load_model("digits-mlp", progress=False)
    data = load_dataset("digits", "test").head(16)
    plans = (
        ThreatPlan(
            threat=mallory.label_only("linf", 0.15, queries_per_sample=60),
            attacks=(create("gaussian-noise"), create("blur")),
        ),
        ThreatPlan(
            threat=white_box("linf", 0.1), attacks=(create("fgsm"), create("pgd", steps=10))
        ),
    )
    campaign = Campaign(name="old", system=system, data=data, plans=plans, chunk=8, seed=1)
    with Store(path) as store:
        # upgraded in place: the event log rebuilt from the ledger keeps every budget
        assert store.run("old")["status"] == "running"
        calls = store.events("old", threat=0, account="attacker")
        assert sum(int(c.charged.sum()) for c in calls) == old_spend
        report = campaign.run(store, progress=False)
        new_outcomes = store._db.execute(
            "SELECT threat, attack, id, success FROM outcomes WHERE threat = 0 "
            "ORDER BY threat, attack, id"
        ).fetchall()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone() == (VERSION,)
    # the old units were kept, not redone; the white-box threat model ran now
    assert new_outcomes == old_outcomes
    assert report.status == "complete"
    assert [a.attack for a in report.threats[1].attacks] == ["fgsm", "pgd"]
    assert report.threats[1].attacks[0].attempted > 0
    assert report.threats[0].ledger.queries == old_spend
