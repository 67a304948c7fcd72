"""A served system that rate-limits and bans stops a campaign's attacker: the report says the
system stopped it, keeps what was broken before, and counts the queries until the ban."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mallory import create, label_only
from mallory.access.policies import Ban, RateLimit
from mallory.cli import app
from mallory.errors import SystemFailure
from mallory.evaluation import Campaign, ThreatPlan
from mallory.serve.server import serve
from mallory.store import Store
from mallory.systems.http import HttpModel
from mallory.zoo import load_dataset, load_model


def test_a_banning_server_stops_the_campaign_with_partial_results(tmp_path: Path) -> None:
    local = load_model("digits-mlp", progress=False)
    data = load_dataset("digits", "test").head(12)
    guarded = local.with_policies(Ban(after=1), RateLimit(5.0, burst=15.0))
    with serve(guarded, exposure="label") as server:
        remote = HttpModel(server.url, retries=0)
        plan = ThreatPlan(
            threat=label_only(eps=4.0, queries=300),
            attacks=(
                create("gaussian-noise"),
                create("hopskipjump", max_queries=300),
            ),
        )
        store = Store(tmp_path / "runs.db")
        report = Campaign(name="banned", system=remote, data=data, plans=(plan,), chunk=6).run(
            store, progress=False
        )
        remote.close()
    summary = report.threats[0]
    assert report.status == "complete"
    assert summary.stopped is not None and "banned" in summary.stopped, summary.stopped
    assert summary.refusals.get("banned", 0) > 0
    assert "stopped-by-system" in {f.code for a in summary.attacks for f in a.flags}
    # the attacker had spent some queries when the system first refused it
    assert 0 < summary.queries_until_stopped < summary.ledger.queries
    # what was broken before the ban is kept, and really fools the model
    assert 0 < summary.broken < summary.attacked
    for a, attack in enumerate(summary.attacks):
        out = store.outcomes("banned", 0, a, (1, 8, 8))
        for sid in out.ids[out.success].tolist():
            x_adv = out.x_adv[sid].unsqueeze(0)
            with torch.no_grad():
                fooled = int(local.forward(x_adv).argmax(1)[0])
            assert fooled != int(data.y[sid]), attack.attack
            assert float((x_adv[0] - data.x[sid]).norm()) <= 4.0 + 1e-4


def test_a_refusal_before_any_answer_is_a_setup_failure() -> None:
    local = load_model("digits-mlp", progress=False)
    banned = local.with_policies(Ban(after=1), RateLimit(0.001, burst=1.0))
    x = load_dataset("digits", "test").head(2).x
    with serve(banned) as server:
        remote = HttpModel(server.url, retries=0)
        remote.answer(x)  # the one request the bucket holds
        with pytest.raises(SystemFailure):  # the next is refused, and then the ban
            HttpModel(server.url, retries=0).answer(x)
        verdict = remote.answer(x)  # a client that was answered before sees refused rows
        assert bool(verdict.mask("refused").all()) and "banned" in verdict.reason
        remote.close()


def test_serve_refuses_a_ban_without_a_policy_to_count() -> None:
    result = CliRunner().invoke(app, ["serve", "digits-mlp", "--ban-after", "3"])
    assert result.exit_code == 2
    assert "--ban-after" in result.output and "--rate-limit" in result.output
