"""Layered systems: quotas, automation checks, ensembles, thresholds with a review band, and the
response to a flag; attacks run through all of it unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mallory
from mallory import Oracle, create
from mallory.access.detectors import StatefulDetector
from mallory.access.events import EventLog, Kind, Reason, VirtualClock
from mallory.access.policies import RateLimit, Request
from mallory.defenses.layers import AutomationCheck, Quota, ensemble, layered, threshold
from mallory.evaluation import Campaign, ThreatPlan
from mallory.evaluation.config import parse_campaign
from mallory.evaluation.config_layers import read_layers
from mallory.systems import System
from mallory.zoo import Dataset, load_dataset, load_model


@pytest.fixture(scope="module")
def phishing() -> tuple[System, System, Dataset]:
    torch.set_num_threads(1)
    return (
        load_model("phishing-gb", progress=False),
        load_model("phishing-logreg", progress=False),
        load_dataset("phishing", "test").head(30),
    )


def test_a_quota_refuses_an_accounts_queries_past_it() -> None:
    log = EventLog()
    quota = Quota(5)
    log.record(account="a", kind=Kind.QUERY, ids=torch.arange(4), outcome=torch.zeros(4))
    answer = quota.admit(Request(torch.arange(3), account="a"), log)
    assert answer.admitted.tolist() == [True, False, False]
    assert quota.admit(Request(torch.arange(3), account="b"), log).all
    with pytest.raises(mallory.InputError, match="'per_account' parameter of Quota"):
        Quota(0)


def test_the_automation_check_flags_scripts_not_people() -> None:
    check = AutomationCheck(interval=0.5, run=5)
    log = EventLog()
    script = [
        check.admit(Request(torch.arange(1), account="bot", time=0.01 * k), log) for k in range(8)
    ]
    assert all(a.all for a in script[:5]) and not script[-1].all
    assert script[-1].reason.tolist() == [int(Reason.DETECTOR)]
    person = [
        check.admit(Request(torch.arange(1), account="me", time=2.0 * k), log) for k in range(8)
    ]
    assert all(a.all for a in person)


def test_an_ensemble_votes_and_a_threshold_sends_the_doubtful_to_review(
    phishing: tuple[System, System, Dataset],
) -> None:
    gb, logreg, data = phishing
    both = ensemble([gb, logreg])
    mean = gb.forward(data.x).softmax(1) if gb.output == "logits" else gb.forward(data.x)
    other = logreg.forward(data.x)
    expected = (
        mallory.access.exposure.as_probabilities(gb.forward(data.x), gb.output)
        + mallory.access.exposure.as_probabilities(other, logreg.output)
    ) / 2
    torch.testing.assert_close(both.forward(data.x), expected.to(both.forward(data.x)))
    del mean
    decided = layered(both, stages=[threshold(1, 0.5, review=(0.3, 0.7))])
    assert decided.exposes is mallory.Exposure.LABEL
    verdict = decided.answer(data.x)
    p = expected[:, 1]
    in_band = (p >= 0.3) & (p <= 0.7)
    assert torch.equal(verdict.mask("refused"), in_band)
    labels = verdict.values.argmax(1)
    assert torch.equal(labels[~in_band], (p[~in_band] >= 0.5).long())
    # the attacker sees the review band as refusals, and none is ever a success
    oracle = Oracle(decided, mallory.label_only("linf", 1.0, queries=10))
    shown = oracle.labels(data.x, torch.arange(len(data.x)))
    assert bool((shown[in_band] == -1).all())
    judged = oracle.judge.judge(data.x, torch.arange(len(data.x)), data.y)
    assert bool((judged.predictions[in_band] == -1).all())


def test_an_attack_runs_through_every_layer_and_the_ban_stops_it(
    phishing: tuple[System, System, Dataset],
) -> None:
    gb, _, data = phishing
    guarded = layered(
        gb,
        policies=[AutomationCheck(interval=0.05, run=10), Quota(2000), RateLimit(50.0, burst=50)],
        response="ban",
        strikes=3,
        refusal_label=1,
    )
    threat = mallory.no_knowledge("linf", 0.05, queries=200)
    plan = ThreatPlan(threat=threat, attacks=(create("hopskipjump", max_queries=200),))
    report = Campaign(name="layers", system=guarded, data=data, plans=(plan,)).run(progress=False)
    row = report.threats[0]
    assert row.stopped is not None and "banned" in row.stopped
    assert row.queries_until_stopped >= 1
    # under feedback = "label" the ban shows as the refusal label, and the attacker cannot tell
    oracle = Oracle(guarded, threat.with_(feedback="label"), clock=VirtualClock())
    for _ in range(60):
        shown = oracle.labels(data.x[:2], torch.arange(2))
    assert shown.tolist() == [1, 1]
    assert oracle.log.reasons().get(Reason.BAN, 0) > 0


def test_layers_in_a_campaign_file(tmp_path: Path) -> None:
    data = {
        "system": {
            "model": "phishing-gb",
            "layers": {
                "rate_limit": {"rate": 20.0, "burst": 40},
                "quota": 500,
                "automation": {"interval": 0.01, "run": 50},
                "detector": {"threshold": 0.05, "k": 5, "response": "reject"},
                "ensemble": [{"model": "phishing-logreg"}],
                "threshold": {"class": 1, "at": 0.5, "review": [0.45, 0.55]},
                "response": "ban",
                "strikes": 3,
                "refusal_label": 1,
            },
        },
        "data": {"samples": 10},
        "threat": [{"preset": "no-knowledge", "eps": 1.0, "queries_per_sample": 20}],
    }
    campaign = parse_campaign(data, base=tmp_path, where="layers.toml").campaign
    system = campaign.system
    assert system.exposes is mallory.Exposure.LABEL and system.refusal_label == 1
    assert [type(p).__name__ for p in system.policies] == [
        "Ban",
        "AutomationCheck",
        "Quota",
        "RateLimit",
        "StatefulDetector",
    ]
    detector = system.policies[-1]
    assert detector.k == 5 and detector.threshold == 0.05  # type: ignore[attr-defined]
    # without a threshold, a zoo model's detector is calibrated on the model's training data
    digits = {
        "system": {"model": "digits-mlp", "layers": {"detector": {"fpr": 0.01}}},
        "data": {"samples": 5},
        "threat": [{"preset": "label-only", "attacks": ["gaussian-noise"]}],
    }
    (calibrated,) = parse_campaign(digits, base=tmp_path, where="d.toml").campaign.system.policies
    expected = StatefulDetector.calibrate(load_dataset("digits", "train").x, fpr=0.01)
    assert calibrated.threshold == pytest.approx(expected.threshold)  # type: ignore[attr-defined]
    report = campaign.run(progress=False)
    assert report.status == "complete"
    bad = {**data, "system": {**data["system"], "layers": {"response": "explode"}}}
    with pytest.raises(mallory.InputError, match=r"system.layers.response"):
        parse_campaign(bad, base=tmp_path, where="layers.toml")
    # a saved model brings no benign data to calibrate a detector on: it needs a threshold
    with pytest.raises(mallory.InputError, match=r"system.layers.detector: needs threshold"):
        read_layers(
            {"detector": {"k": 5}},
            system,
            base=tmp_path,
            where="layers.toml",
            at="system",
            progress=False,
            dataset=None,
        )
