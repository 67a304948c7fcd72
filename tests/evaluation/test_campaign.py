"""Campaigns: cheapest attack first, only the samples still standing, worst case per sample,
one ledger per threat model, and metrics that agree with the per-sample outcomes."""

from __future__ import annotations

import math

import pytest
import torch

from mallory import InputError, Oracle, create, label_only, white_box
from mallory.evaluation import Campaign, ThreatPlan, default_attacks
from mallory.store import Store
from mallory.systems.base import System
from mallory.threat.perturbation import distances
from mallory.zoo import Dataset, load_dataset, load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits() -> tuple[System, Dataset]:
    return load_model("digits-mlp", progress=False), load_dataset("digits", "test").head(60)


def predict(system: System, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return system.forward(x).argmax(1)


def test_attacks_run_cheapest_first_on_the_samples_still_standing(
    digits: tuple[System, Dataset], tmp_path: object
) -> None:
    system, data = digits
    threat = white_box("linf", 0.15)
    # the trick given last runs first; within a family the given order stays
    plan = ThreatPlan(threat=threat, attacks=(create("fgsm"), create("pgd"), create("blur")))
    assert [a.name for a in plan.attacks] == ["blur", "fgsm", "pgd"]
    store = Store(f"{tmp_path}/runs.db")
    report = Campaign(name="seq", system=system, data=data, plans=(plan,), chunk=16).run(
        store, progress=False
    )
    summary = report.threats[0]
    clean_right = predict(system, data.x) == data.y
    assert summary.attacked == int(clean_right.sum())
    assert report.clean_accuracy == pytest.approx(float(clean_right.double().mean()))

    # each attack ran only on what the earlier ones left standing
    standing = set(torch.nonzero(clean_right).flatten().tolist())
    for a, attack in enumerate(summary.attacks):
        out = store.outcomes("seq", 0, a, (1, 8, 8))
        assert set(out.ids.tolist()) == standing, attack.attack
        broken = set(out.ids[out.success].tolist())
        assert attack.broken == len(broken)
        # every breaking input is inside the ball and the bounds, and really misclassified
        for sid in broken:
            x_adv = out.x_adv[sid].unsqueeze(0)
            x = data.x[sid : sid + 1]
            assert float(distances(x_adv, x)["linf"][0]) <= 0.15 + 1e-5
            assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
            assert int(predict(system, x_adv)[0]) != int(data.y[sid])
        standing -= broken
    assert summary.broken == summary.attacked - len(standing)
    assert summary.robust_accuracy == pytest.approx(len(standing) / len(data))
    assert summary.attacks[-1].standing_after == pytest.approx(summary.robust_accuracy)
    assert sum(a.marginal_gain for a in summary.attacks) == pytest.approx(
        summary.broken / len(data)
    )
    # the survivors really resist the last attack: it fails on them when run directly
    survivors = torch.tensor(sorted(standing), dtype=torch.int64)
    if len(survivors):
        direct = create("pgd")(
            Oracle(system, threat), data.x[survivors], data.y[survivors], ids=survivors
        )
        assert not bool(direct.success.any())
    # the strong attack found something the cheap ones missed, so the sequence matters
    assert summary.attacks[2].broken > 0 and summary.robust_accuracy < 0.5
    store.close()


def test_one_budget_per_sample_across_the_sequence(digits: tuple[System, Dataset]) -> None:
    system, data = digits
    threat = label_only("linf", 0.1, queries_per_sample=40)
    attacks = (create("gaussian-noise"), create("contrast"), create("hopskipjump"))
    report = Campaign(
        name="budget", system=system, data=data, plans=(ThreatPlan(threat=threat, attacks=attacks),)
    ).run(progress=False)
    summary = report.threats[0]
    spent = summary.effort["queries"]
    assert max(spent.x) <= 40  # no sample spent more than its budget over all attacks
    assert summary.ledger.queries <= 40 * summary.attacked
    assert summary.attacks[-1].ledger.queries > 0  # the decision attack used what was left


def test_survival_and_effort_agree_with_the_ledger(digits: tuple[System, Dataset]) -> None:
    system, data = digits
    threat = label_only("linf", 0.2, price_per_query=0.01)
    attacks = (create("gaussian-noise"), create("hopskipjump", max_queries=200))
    report = Campaign(
        name="effort", system=system, data=data, plans=(ThreatPlan(threat=threat, attacks=attacks),)
    ).run(progress=False)
    summary = report.threats[0]
    queries, money = summary.effort["queries"], summary.effort["money"]
    assert queries.y[0] <= 1.0 and all(
        a >= b for a, b in zip(queries.y, queries.y[1:], strict=False)
    )
    # the curve ends at the share left standing
    assert queries.y[-1] == pytest.approx((summary.attacked - summary.broken) / summary.attacked)
    # money is queries times the price
    assert money.x[1:] == pytest.approx([0.01 * q for q in queries.x[1:]])
    assert summary.effort_median["money"] == pytest.approx(0.01 * summary.effort_median["queries"])
    assert summary.ledger.money == pytest.approx(0.01 * summary.ledger.queries)
    assert 0 < summary.effort_median["queries"] <= 1 + 200 + 10


def test_unbounded_threat_models_keep_the_closest_input(digits: tuple[System, Dataset]) -> None:
    system, data = digits
    threat = white_box("l2", math.inf)
    attacks = (create("hopskipjump", max_queries=100), create("deepfool"))
    plan = ThreatPlan(threat=threat, attacks=attacks)
    campaign = Campaign(name="closest", system=system, data=data.head(30), plans=(plan,))
    with Store(":memory:") as store:
        report = campaign.run(store, progress=False)
        first = store.outcomes("closest", 0, 0, (1, 8, 8))
        second = store.outcomes("closest", 0, 1, (1, 8, 8))
    summary = report.threats[0]
    # deepfool ran on every attacked sample, not only those hopskipjump missed
    assert len(second.ids) == summary.attacked
    best = {}
    for out in (first, second):
        for i, sid in enumerate(out.ids.tolist()):
            if bool(out.success[i]):
                best[sid] = min(best.get(sid, math.inf), float(out.l2[i]))
    expected = float(torch.tensor(sorted(best.values())).median())
    assert summary.median_distance["l2"] == pytest.approx(expected, rel=1e-5)


def test_targeted_grid_covers_every_source_and_target(digits: tuple[System, Dataset]) -> None:
    system, data = digits
    threat = white_box("l0", 20, goal="targeted")
    plan = ThreatPlan(threat=threat, attacks=(create("jsma"),), grid=True)
    report = Campaign(name="grid", system=system, data=data, plans=(plan,)).run(progress=False)
    grid = report.threats[0].grid
    assert grid is not None and grid.classes == list(range(10))
    assert {(c.source, c.target) for c in grid.cells} == {
        (s, t) for s in range(10) for t in range(10) if s != t
    }
    hits = [c for c in grid.cells if c.success]
    assert len(hits) >= 60
    for cell in hits:  # a success is the target class, within 20 changed features
        x_adv = torch.tensor(cell.adversarial).view(1, 1, 8, 8)
        assert int(predict(system, x_adv)[0]) == cell.target
        assert cell.l0 <= 20


def test_default_attacks_follow_the_threat_model(digits: tuple[System, Dataset]) -> None:
    system, _ = digits
    label = [a.name for a in default_attacks(label_only("linf", 0.1), system)]
    assert label[-1] == "hopskipjump" and "pgd" not in label and "square" not in label
    white = [a.name for a in default_attacks(white_box("linf", 0.1), system)]
    assert white.index("blur") < white.index("hopskipjump") < white.index("square")
    assert white.index("square") < white.index("fgsm") < white.index("pgd")
    unbounded = [a.name for a in default_attacks(white_box("l2", math.inf), system)]
    assert "blur" not in unbounded and "deepfool" in unbounded and "pgd" not in unbounded
    assert "feature-edit" not in white


def test_bad_campaigns_are_refused(digits: tuple[System, Dataset]) -> None:
    system, data = digits
    plan = ThreatPlan(threat=white_box("linf", 0.1), attacks=(create("fgsm"),))
    phishing = load_dataset("phishing", "test")
    with pytest.raises(InputError, match=r"shape \(9,\).*takes \(1, 8, 8\)"):
        Campaign(name="x", system=system, data=phishing, plans=(plan,))
    with pytest.raises(InputError, match="unique"):
        Campaign(name="x", system=system, data=data, plans=(plan, plan))
    with pytest.raises(InputError, match="targeted"):
        ThreatPlan(threat=white_box("linf", 0.1), attacks=(create("fgsm"),), grid=True)
    with pytest.raises(InputError, match="square"):
        Campaign(
            name="x",
            system=system,
            data=data,
            plans=(ThreatPlan(threat=label_only("linf", 0.1), attacks=(create("square"),)),),
        )
    with pytest.raises(InputError, match="review_band"):
        Campaign(name="x", system=system, data=data, plans=(plan,), review_band=(0.9, 0.1))
