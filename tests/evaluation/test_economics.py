"""The economics: per-sample attacker costs from the store, the rational attacker's level of
expertise, the risk row of the report, and the ``[economics]`` table of a campaign file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mallory import InputError, create, label_only, no_knowledge
from mallory.evaluation import Campaign, ThreatPlan
from mallory.evaluation.config import parse_campaign
from mallory.evaluation.economics import Economics, risk
from mallory.jsonable import plain
from mallory.report.model import Report
from mallory.store import Store
from mallory.zoo import Dataset, load_dataset, load_model

NAN = math.nan


def test_the_attacker_buys_the_expertise_that_pays_best() -> None:
    economics = Economics(damage=10.0, volume=100, expertise=(("low", 50.0), ("high", 1000.0)))
    costs = torch.tensor([1.0, 5.0, NAN, 20.0])
    spend = torch.tensor([1.0, 5.0, 30.0, 20.0])
    row = risk("t", costs, spend, ["none", "low", None, "high"], economics)
    # per input the attacker spends its cost, or gives up at the damage: 1, 5, 10, 10
    # none: 100 * (1/4 * 10 - 6.5) = -400; low: 100 * (2/4 * 10 - 6.5) - 50 = -200;
    # high: the same inputs pay (20 > 10 does not), minus 1000
    assert row.expertise == "low"
    assert row.paying == 2 and row.broken == 3 and row.attacked == 4
    assert row.likelihood == pytest.approx(0.5)
    assert row.band == "likely"
    assert row.expected_loss == pytest.approx(500.0)
    assert row.attacker_cost == pytest.approx(700.0)
    assert row.attacker_profit == pytest.approx(-200.0)
    assert row.cheapest == pytest.approx(1.0) and row.median == pytest.approx(5.0)
    assert row.worth_countermeasure  # 500 > 0
    assert Economics(damage=10.0, countermeasure=600.0).countermeasure == 600.0


def test_free_attacks_pay_and_nothing_broken_pays_nothing() -> None:
    economics = Economics(damage=2.0, volume=10, countermeasure=15.0)
    free = risk("t", torch.tensor([0.0, 0.0, NAN]), torch.zeros(3), ["none"] * 3, economics)
    assert free.paying == 2 and free.attacker_cost == 0.0
    assert free.expected_loss == pytest.approx(10 * 2 / 3 * 2.0)
    assert not free.worth_countermeasure  # 13.3 < 15
    none = risk("t", torch.tensor([NAN, NAN]), torch.tensor([4.0, 1.0]), [None] * 2, economics)
    assert none.expertise is None and none.paying == 0 and none.expected_loss == 0.0
    assert none.band == "rare"
    # what trying costs: each input until the attacker gives up at the damage (2 and 1)
    assert none.attacker_cost == pytest.approx(10 * 1.5)
    assert math.isnan(none.cheapest)


def test_a_campaign_prices_every_sample_to_its_first_mistake(tmp_path: Path) -> None:
    system = load_model("digits-mlp", progress=False)
    data = load_dataset("digits", "test").head(24)
    threat = label_only(eps=3.0, queries=60, price_per_query=0.01)
    plan = ThreatPlan(
        threat=threat,
        attacks=(create("gaussian-noise"), create("hopskipjump", max_queries=60)),
    )
    economics = Economics(damage=0.3, volume=1000, expertise=(("low", 5.0),))
    store = Store(tmp_path / "runs.db")
    report = Campaign(
        name="priced", system=system, data=data, plans=(plan,), economics=economics
    ).run(store, progress=False)
    summary = report.threats[0]
    row = summary.risk
    assert row is not None and row.attacked == summary.attacked
    with torch.no_grad():
        right = system.forward(data.x).argmax(1) == data.y
    position = {int(sid): k for k, sid in enumerate(torch.nonzero(right).flatten())}
    assert row.broken == summary.broken > 0
    # each broken sample's cost is its queries (summed over the attacks up to the breaking
    # one) at the price of a query
    queries = torch.zeros(len(data), dtype=torch.float64)
    first: dict[int, str] = {}
    for a, attack in enumerate(summary.attacks):
        out = store.outcomes("priced", 0, a, (1, 8, 8))
        queries[out.ids] += out.queries.double()
        for sid in out.ids[out.success].tolist():
            first.setdefault(int(sid), attack.attack)
            assert row.costs[position[sid]] == pytest.approx(float(queries[sid]) * 0.01)
    levels = {"gaussian-noise": "none", "hopskipjump": "low"}
    for sid, attack in first.items():
        assert row.levels[position[sid]] == levels[attack]
    finite = [c for c in row.costs if not math.isnan(c)]
    assert row.cheapest == pytest.approx(min(finite))
    assert sum(c <= 0.3 for c in finite) >= row.paying
    # the row survives JSON
    again = Report.from_dict(json.loads(report.to_json())).threats[0].risk
    assert json.dumps(plain(again)) == json.dumps(plain(row))


def test_the_economics_table_of_a_campaign_file(tmp_path: Path) -> None:
    base = {
        "system": {"model": "digits-mlp"},
        "data": {"dataset": "digits", "samples": 10},
        "threat": [{"preset": "label-only", "attacks": ["gaussian-noise"]}],
    }
    read = parse_campaign(
        {**base, "economics": {"damage": 120.0, "volume": 50, "expertise": {"high": 900.0}}},
        base=tmp_path,
        where="c.toml",
        progress=False,
    )
    assert read.campaign.economics == Economics(
        damage=120.0, volume=50, expertise=(("high", 900.0),)
    )
    assert read.campaign.describe()["economics"]["expertise"] == {"high": 900.0}
    bad = [
        ({"volume": 5}, r"economics: needs damage"),
        ({"damage": -1.0}, r"economics\.damage: must be"),
        ({"damage": 1.0, "expertise": {"guru": 5.0}}, r"economics\.expertise: must be"),
        ({"damage": 1.0, "dammage": 2.0}, r"economics.*dammage"),
    ]
    for table, message in bad:
        with pytest.raises(InputError, match=message):
            parse_campaign({**base, "economics": table}, base=tmp_path, where="c.toml")


def test_priced_edits_are_in_the_report_and_in_the_attackers_costs(tmp_path: Path) -> None:
    from tests.attacks.test_cheapest import BOUNDS, WIDTH, _data, brute_force, constraints, model

    x, y = _data(40, 3)
    x, y = x[:12], y[:12]
    data = Dataset("toy", x, y, (WIDTH,), BOUNDS, ("benign", "malicious"))
    features = constraints()
    threat = no_knowledge(eps=math.inf, queries=400, features=features, price_per_query=0.01)
    plan = ThreatPlan(threat=threat, attacks=(create("cheapest", search="exact"),))
    store = Store(tmp_path / "runs.db")
    report = Campaign(
        name="edits", system=model(), data=data, plans=(plan,), economics=Economics(damage=4.0)
    ).run(store, progress=False)
    summary = report.threats[0]
    edits, row = summary.edits, summary.risk
    assert edits is not None and row is not None
    assert summary.attacked == len(data)  # the labels are the model's: costs[k] is sample k
    assert len(edits.samples) == summary.broken > 0
    # each breaking edit's price is the constraints' price of that edit: the brute-force
    # minimum on this small space
    out = store.outcomes("edits", 0, 0, (WIDTH,))
    cheapest = brute_force(x, y, features)
    for sid, price, words in zip(edits.samples, edits.prices, edits.changes, strict=True):
        x_adv = out.x_adv[sid].unsqueeze(0)
        assert price == pytest.approx(float(features.cost(x_adv, x[sid : sid + 1])[0]))
        assert price == pytest.approx(float(cheapest[sid]))
        assert bool(features.feasible(x_adv, x[sid : sid + 1])[0]) and words
        assert int(model().forward(x_adv).argmax(1)[0]) != int(y[sid])
    used = sum(edits.usage.values())
    assert used == sum(len(w) for w in edits.changes)
    # the attacker's money per broken sample: its queries at 0.01, plus the edit
    position = {int(sid): k for k, sid in enumerate(out.ids)}
    for sid, price in zip(edits.samples, edits.prices, strict=True):
        queries = float(out.queries[position[sid]])
        assert row.costs[sid] == pytest.approx(queries * 0.01 + price)
