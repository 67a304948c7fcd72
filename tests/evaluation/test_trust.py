"""Numbers a defender can trust: budgets that reach every attack, a judge that votes, threat
models whose robust accuracy never rises with the attacker's power, and warnings where the
gradients lie."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import mallory
from mallory import CallableModel, Oracle, TorchModel, create, flags
from mallory.attacks.surrogate import train_surrogate
from mallory.evaluation import Campaign, ThreatPlan, default_attacks
from mallory.evaluation.budget import shares
from mallory.evaluation.metrics import dominates
from mallory.report.html import render_html
from mallory.report.terminal import summary_lines
from mallory.systems import System
from mallory.threat import PRESETS
from mallory.zoo import Dataset, load_dataset, load_model


@pytest.fixture(scope="module")
def digits() -> tuple[System, Dataset]:
    torch.set_num_threads(1)
    return load_model("digits-mlp", progress=False), load_dataset("digits", "test").head(24)


@pytest.fixture(scope="module")
def surrogate(digits: tuple[System, Dataset]) -> mallory.attacks.surrogate.Surrogate:
    own = load_dataset("digits", "train").head(600)
    return train_surrogate(own.x, own.y, architecture="mlp", epochs=15, num_classes=10)


# ---------------------------------------------------------------- budgets that reach every attack
DEFINING = {
    "score-based": "square",
    "label-only": "hopskipjump",
    "no-knowledge": "hopskipjump",
    "transfer": "transfer",
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_presets_default_attacks_get_a_real_budget(
    digits: tuple[System, Dataset], surrogate: mallory.attacks.surrogate.Surrogate, preset: str
) -> None:
    system = digits[0]
    threat = PRESETS[preset](norm="linf", eps=0.2)
    attacks = default_attacks(threat, system, surrogate=surrogate)
    assert attacks
    oracle = Oracle(system, threat)
    given = shares(threat.queries_per_sample, attacks, [a.planned_queries(oracle) for a in attacks])
    if threat.queries_per_sample is None:
        assert given is None
        return
    assert given is not None and all(share > 0 for share in given), given
    assert sum(given) <= threat.queries_per_sample
    # the attack that defines the threat model runs with at least half the budget
    defining = DEFINING[preset]
    assert attacks[-1].name == defining
    assert given[-1] >= threat.queries_per_sample // 2
    if preset == "transfer":  # one query per sample: the transfer attack gets it, no trick
        assert [a.name for a in attacks] == ["transfer"] and given == [1]


def test_a_score_based_campaign_runs_its_score_based_attack(
    digits: tuple[System, Dataset],
) -> None:
    system, data = digits
    threat = mallory.score_based("linf", 0.15, queries=300)
    attacks = (create("gaussian-noise"), create("hopskipjump"), create("square"))
    report = Campaign(
        name="score", system=system, data=data, plans=(ThreatPlan(threat=threat, attacks=attacks),)
    ).run(progress=False)
    rows = {a.attack: a for a in report.threats[0].attacks}
    square = rows["square"]
    # square had a real budget (the reserve, and what the others left), and spent it
    assert square.status == "ran" and square.budget is not None and square.budget >= 150
    assert square.attempted > 0 and square.ledger.queries > 0
    # HopSkipJump plans 1,000 queries per sample and got less: the report says so
    hsj = rows["hopskipjump"]
    assert hsj.budget is not None and hsj.budget < 1000
    assert any(f.code == flags.OVER_BUDGET for f in hsj.flags)
    # every sample's spend stays inside the threat model's budget
    assert report.threats[0].ledger.queries <= 300 * report.threats[0].attacked
    lines = "\n".join(summary_lines(report))
    assert "share" in lines and "spent" in lines


def test_an_attack_with_no_budget_is_listed_as_not_run(
    digits: tuple[System, Dataset], surrogate: mallory.attacks.surrogate.Surrogate
) -> None:
    system, data = digits
    threat = mallory.transfer("linf", 0.2)  # one query per sample
    attacks = (create("gaussian-noise"), create("transfer", surrogate=surrogate))
    report = Campaign(
        name="starved",
        system=system,
        data=data,
        plans=(ThreatPlan(threat=threat, attacks=attacks),),
    ).run(progress=False)
    noise, transfer = report.threats[0].attacks
    assert noise.status == "not run" and noise.reason is not None
    assert "no budget left" in noise.reason and noise.budget == 0
    assert noise.broken == 0 and noise.attempted == 0
    assert transfer.status == "ran" and transfer.budget == 1 and transfer.ledger.queries > 0
    # the transfer row says something: it breaks samples the clean model got right
    assert report.threats[0].robust_accuracy < report.clean_accuracy
    lines = "\n".join(summary_lines(report))
    assert "gaussian-noise (trick): not run: no budget left" in lines
    assert "broke 0" not in lines.split("gaussian-noise")[1].split("\n")[0]
    page = render_html([report])
    assert "not run" in page and "no budget left" in page


def test_an_attack_planning_more_than_the_budget_says_so_with_both_numbers(
    digits: tuple[System, Dataset],
) -> None:
    system, data = digits
    oracle = Oracle(system, mallory.label_only("l2", queries=1000))
    result = create("hopskipjump", max_queries=2600)(oracle, data.x[:4], data.y[:4])
    flag = next(f for f in result.flags if f.code == flags.OVER_BUDGET)
    assert "2,600" in flag.message and "1,000" in flag.message
    assert int(result.queries.max()) <= 1000


@pytest.mark.slow
def test_the_transfer_row_differs_from_clean_accuracy_on_the_zoo_cnn() -> None:
    system = load_model("mnist-cnn", progress=False)
    data = load_dataset("mnist", "test").head(60)
    own = load_dataset("mnist", "train").head(1500)
    surrogate = train_surrogate(own.x, own.y, architecture="cnn", epochs=2, num_classes=10)
    threat = mallory.transfer("linf", 0.3)
    attacks = default_attacks(threat, system, surrogate=surrogate)
    assert [a.name for a in attacks] == ["transfer"]
    report = Campaign(
        name="transfer",
        system=system,
        data=data,
        plans=(ThreatPlan(threat=threat, attacks=attacks),),
    ).run(progress=False)
    row = report.threats[0]
    assert row.attacks[0].ledger.queries == row.attacked  # submitted once per sample
    assert row.robust_accuracy < report.clean_accuracy - 0.2


# ---------------------------------------------------------------- the judge votes
def flaky(system: System, p: float, *, declared: bool) -> CallableModel:
    """The system's logits, except that each answer is, with probability ``p``, replaced by a
    confident vote for a random class (drawn from a seeded generator)."""
    gen = torch.Generator().manual_seed(0)

    def answer(x: torch.Tensor) -> torch.Tensor:
        logits = system.forward(x)
        flip = torch.rand(len(x), generator=gen) < p
        other = torch.randint(0, logits.shape[1], (len(x),), generator=gen)
        noise = torch.nn.functional.one_hot(other, logits.shape[1]).to(logits) * 1e3
        return torch.where(flip[:, None], noise, logits)

    return CallableModel(
        answer,
        input_shape=system.input_shape,
        num_classes=system.num_classes,
        bounds=(0.0, 1.0),
        output="logits",
        deterministic=not declared,
        name="flaky",
    )


@pytest.mark.parametrize("declared", [True, False])
def test_a_randomized_system_is_judged_by_the_majority(
    digits: tuple[System, Dataset], declared: bool
) -> None:
    system, data = digits
    noisy = flaky(system, 0.3, declared=declared)
    with torch.no_grad():
        truth = system.forward(data.x).argmax(1) == data.y  # what the majority recovers
    threat = mallory.label_only("linf", 0.02, queries=30)
    plan = ThreatPlan(threat=threat, attacks=(create("gaussian-noise"),))
    report = Campaign(name="flaky", system=noisy, data=data, plans=(plan,), draws=15).run(
        progress=False
    )
    assert report.draws == 15
    assert report.clean_accuracy == pytest.approx(float(truth.double().mean()))
    # one draw would flip about 30% of answers; the noise at eps 0.02 changes no majority
    row = report.threats[0]
    assert row.robust_accuracy == pytest.approx(report.clean_accuracy, abs=1.5 / len(data))
    codes = {f.code for f in report.flags}
    assert flags.RANDOMIZED in codes
    assert (flags.UNDECLARED_RANDOMNESS in codes) == (not declared)
    # the judge's queries are its own, shown apart from the attacker's
    assert report.evaluator.queries >= 15 * len(data)


def test_a_single_attack_on_a_randomized_system_votes_too(digits: tuple[System, Dataset]) -> None:
    system, data = digits
    noisy = flaky(system, 0.3, declared=True)
    oracle = Oracle(noisy, mallory.label_only("linf", 0.02, queries=20))
    result = create("uniform-noise")(oracle, data.x, data.y)
    with torch.no_grad():
        wrong = system.forward(data.x).argmax(1) != data.y
    # clean mistakes are broken at distance 0; nothing else falls to noise this small
    assert torch.equal(result.success, wrong)
    assert result.agreement is not None and float(result.agreement.mean()) > 0.6
    assert oracle.judge.draws == mallory.access.judge.DEFAULT_DRAWS
    assert result.evaluator_queries > 0


# ---------------------------------------------------------------- stronger never looks safer
def test_a_stronger_threat_model_never_reports_a_higher_robust_accuracy(
    digits: tuple[System, Dataset],
) -> None:
    system, data = digits
    threats = [
        mallory.no_knowledge("linf", 0.15, queries=40),
        mallory.label_only("linf", 0.15, queries=120),
        mallory.score_based("linf", 0.15, queries=120),
        mallory.white_box("linf", 0.15),
    ]
    plans = tuple(ThreatPlan(threat=t, attacks=default_attacks(t, system)) for t in threats)
    report = Campaign(name="monotone", system=system, data=data, plans=plans).run(progress=False)
    by_name = {t.name: t for t in report.threats}
    pairs = 0
    for strong in report.threats:
        for weak in report.threats:
            if dominates(strong.threat, weak.threat):
                pairs += 1
                assert strong.robust_accuracy <= weak.robust_accuracy, (strong.name, weak.name)
    assert pairs >= 4  # white-box dominates the three; score-based the label-only ones
    assert dominates(by_name["white-box"].threat, by_name["no-knowledge"].threat)
    assert not dominates(by_name["no-knowledge"].threat, by_name["white-box"].threat)


def test_dominance_needs_the_same_norm_goal_and_at_least_every_power() -> None:
    base = mallory.label_only("linf", 0.1, queries=100).to_dict()
    assert dominates(mallory.score_based("linf", 0.1, queries=100).to_dict(), base)
    assert dominates(mallory.label_only("linf", 0.2, queries=100).to_dict(), base)
    assert not dominates(mallory.label_only("l2", 0.5, queries=100).to_dict(), base)
    assert not dominates(mallory.score_based("linf", 0.1, queries=50).to_dict(), base)
    assert not dominates(mallory.label_only("linf", 0.05, queries=100).to_dict(), base)
    assert not dominates(base, base)


# ---------------------------------------------------------------- warnings where gradients lie
def saturated_softmax(system: TorchModel) -> TorchModel:
    """The digits MLP with its logits scaled by 100 and a softmax on top, declared to return
    probabilities: a distilled network as it was deployed."""
    module = nn.Sequential(system.module, _Scale(100.0), nn.Softmax(dim=1))
    return TorchModel(module, input_shape=system.input_shape, output="probabilities", name="soft")


class _Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def test_a_saturated_softmax_is_flagged_and_a_plain_logit_model_is_not(
    digits: tuple[System, Dataset],
) -> None:
    system, data = digits
    assert isinstance(system, TorchModel)
    threat = mallory.white_box("linf", 0.1)
    soft = saturated_softmax(system)
    result = create("pgd", steps=10)(Oracle(soft, threat), data.x, data.y)
    codes = {f.code for f in result.flags}
    assert flags.SATURATED_SOFTMAX in codes and flags.ZERO_GRADIENTS in codes
    message = next(f.message for f in result.flags if f.code == flags.SATURATED_SOFTMAX)
    assert "logits" in message and "margin" in message
    plain = create("pgd", steps=10)(Oracle(system, threat), data.x, data.y)
    assert not {f.code for f in plain.flags} & {
        flags.SATURATED_SOFTMAX,
        flags.ZERO_GRADIENTS,
        flags.PROBABILITIES_AS_LOGITS,
    }
    # the flag costs nothing in robustness: PGD on the saturated softmax breaks far less
    assert result.robust_accuracy > plain.robust_accuracy


def test_probabilities_declared_as_logits_are_flagged(digits: tuple[System, Dataset]) -> None:
    system, data = digits
    assert isinstance(system, TorchModel)
    module = nn.Sequential(system.module, nn.Softmax(dim=1))
    wrong = TorchModel(module, input_shape=system.input_shape, output="logits", name="mislabelled")
    result = create("fgsm")(Oracle(wrong, mallory.white_box("linf", 0.1)), data.x, data.y)
    assert flags.PROBABILITIES_AS_LOGITS in {f.code for f in result.flags}


# ---------------------------------------------------------------- every query counted once
def test_a_failed_call_is_recorded_as_failed_not_answered(digits: tuple[System, Dataset]) -> None:
    system, data = digits
    calls = {"n": 0}

    def sometimes(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("upstream went away")
        return system.forward(x)

    remote = CallableModel(
        sometimes, input_shape=system.input_shape, num_classes=10, bounds=(0, 1), output="logits"
    )
    oracle = Oracle(remote, mallory.label_only("linf", 0.1, queries=10))
    ids = torch.arange(4)
    oracle.labels(data.x[:4], ids)
    with pytest.raises(mallory.SystemFailure):
        oracle.labels(data.x[:4], ids)
    assert oracle.queries_of(ids).tolist() == [1, 1, 1, 1]  # only the answered call
    assert oracle.log.failed == 4 and oracle.total_queries == 4
    assert oracle.remaining_of(ids).tolist() == [9.0] * 4  # the failure spent no budget


def test_judge_rows_are_in_its_own_ledger_not_the_attackers(
    digits: tuple[System, Dataset],
) -> None:
    system, data = digits
    oracle = Oracle(system, mallory.label_only("linf", 0.2, queries=12, price_per_query=0.5))
    result = create("gaussian-noise")(oracle, data.x, data.y)
    assert int(result.queries.sum()) == oracle.total_queries
    # the judge answered the clean inputs twice (its randomness check) and the candidates
    assert result.evaluator_queries == oracle.judge.log.queries >= 2 * len(data.x)
    assert oracle.judge.log.money == pytest.approx(0.5 * oracle.judge.log.queries)
    assert oracle.money == pytest.approx(0.5 * oracle.total_queries)
    assert math.isclose(float(result.cost.sum()), oracle.money)


# ---------------------------------------------------------------- extraction in the ledger
def test_extraction_queries_are_in_the_campaigns_ledger_and_not_paid_twice(
    digits: tuple[System, Dataset], tmp_path: pytest.TempPathFactory
) -> None:
    from mallory.evaluation.campaign import Extraction
    from mallory.store import Store

    system, data = digits
    seeds = load_dataset("digits", "train").x[:30]
    extraction = Extraction(
        attack=create("jacobian-extraction", rounds=2, epochs=5, architecture="mlp"),
        seed_x=seeds,
    )
    threat = mallory.transfer("linf", 0.2)
    plan = ThreatPlan(threat=threat, attacks=(create("transfer"),), extraction=extraction)
    campaign = Campaign(name="stolen", system=system, data=data, plans=(plan,))
    path = tmp_path / "runs.db"  # type: ignore[operator]
    report = campaign.run(path, progress=False)
    row = report.threats[0]
    first, transfer = row.attacks
    assert first.family == "extraction" and first.attack == "jacobian-extraction"
    assert first.ledger.queries == 30 * 2**2  # the seeds, doubled twice
    assert transfer.status == "ran" and transfer.ledger.queries == row.attacked
    assert row.ledger.queries == first.ledger.queries + transfer.ledger.queries
    assert report.ledger.queries == row.ledger.queries
    # run again: the surrogate comes from the store, nothing is bought twice
    with Store(path) as store:
        before = len(store.events("stolen", account="attacker"))
        again = campaign.run(store, progress=False)
        assert len(store.events("stolen", account="attacker")) == before
    assert again.threats[0].ledger.queries == row.ledger.queries
