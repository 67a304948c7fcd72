"""The event log and admission policies: what the attacker sent and got, refusals seen only as
the threat model's feedback allows, and a campaign that reports where the system stopped it."""

from __future__ import annotations

import pytest
import torch

import mallory
from mallory import CallableModel, Oracle, create
from mallory.access.events import EventLog, Kind, Outcome, Reason, VirtualClock
from mallory.access.policies import (
    Allowance,
    Ban,
    Chain,
    QueryBudget,
    RateLimit,
    Request,
    TokenBucket,
)
from mallory.evaluation import Campaign, ThreatPlan
from mallory.systems import System
from mallory.threat import Feedback
from mallory.zoo import Dataset, load_dataset, load_model


@pytest.fixture(scope="module")
def digits() -> tuple[System, Dataset]:
    torch.set_num_threads(1)
    return load_model("digits-mlp", progress=False), load_dataset("digits", "test").head(16)


# ---------------------------------------------------------------- the log
def test_the_log_derives_per_sample_totals_and_keeps_rows_of_no_sample() -> None:
    log = EventLog()
    ids = torch.tensor([0, 0, 3, -1])
    log.record(
        account="attacker",
        kind=Kind.QUERY,
        ids=ids,
        outcome=torch.tensor([0, 3, 0, 0]),
        reason=torch.tensor([0, 1, 0, 0]),
        seconds=0.3,
        price=2.0,
    )
    log.record(
        account="attacker", kind=Kind.GRADIENT, ids=torch.tensor([3]), outcome=torch.tensor([4])
    )
    assert log.queries_of(torch.tensor([0, 3, 7])).tolist() == [1, 1, 0]
    assert log.refused_of(torch.tensor([0])).tolist() == [1]
    assert log.failed_of(torch.tensor([3])).tolist() == [1]
    assert log.queries == 3 and log.money == 6.0 and log.refused == 1 and log.failed == 1
    assert log.gradients == 0  # the failed gradient call charged nothing
    # seconds are shared by the rows that were not refused
    assert log.seconds_of(torch.tensor([0, 3])).tolist() == pytest.approx([0.1, 0.1])
    totals = log.per_sample(torch.tensor([0, 3]))
    assert totals.queries.tolist() == [1, 1] and totals.failed.tolist() == [0, 1]
    assert log.reasons() == {Reason.BUDGET: 1}
    # the totals are derived from the calls: replaying them elsewhere gives the same
    again = EventLog()
    again.extend(log.calls())
    assert again.queries_of(torch.tensor([0, 3])).tolist() == [1, 1] and again.money == 6.0


def test_totals_read_between_calls_equal_totals_read_once_at_the_end() -> None:
    gen = torch.Generator().manual_seed(0)
    watched, unwatched = EventLog(), EventLog()
    samples = torch.arange(-1, 12)
    for k in range(40):
        n = int(torch.randint(1, 9, (1,), generator=gen))
        call = {
            "account": "attacker",
            "kind": Kind.GRADIENT if k % 3 else Kind.QUERY,
            "ids": torch.randint(-1, 12, (n,), generator=gen),
            "outcome": torch.randint(0, 5, (n,), generator=gen),
            "seconds": 0.01 * k,
            "price": 0.5 * (k % 2),
        }
        watched.record(**call)
        unwatched.record(**call)
        if k < 10 or k % 7 == 0:  # a reader after every call (a budget policy), or now and then
            assert watched.queries_of(samples).sum() <= watched.queries
    for read in ("queries_of", "gradients_of", "refused_of", "failed_of", "seconds_of"):
        torch.testing.assert_close(
            getattr(watched, read)(samples), getattr(unwatched, read)(samples)
        )
    for total in ("queries", "gradients", "money", "refused", "failed"):
        assert getattr(watched, total) == getattr(unwatched, total)
    assert watched.seconds == pytest.approx(unwatched.seconds)
    # and both agree with the per-sample sums over the whole log
    every = unwatched.per_sample(samples[1:])
    assert every.queries.tolist() == unwatched.queries_of(samples[1:]).tolist()
    torch.testing.assert_close(every.seconds, unwatched.seconds_of(samples[1:]))


# ---------------------------------------------------------------- policies
def test_budget_allowance_and_chain() -> None:
    log = EventLog()
    allowance = Allowance()
    allowance.grant(torch.tensor([0, 1]), torch.tensor([1, 5]))
    chain = Chain([QueryBudget(per_sample=3), allowance])
    answer = chain.admit(Request(torch.tensor([0, 0, 1, 1, 1, 1, 2, 2, 2, 2])), log)
    # sample 0: its allowance of 1; sample 1: the budget of 3; sample 2: no cap, budget 3
    assert answer.admitted.tolist() == [1, 0, 1, 1, 1, 0, 1, 1, 1, 0]
    assert answer.reason.tolist() == [0, 2, 0, 0, 0, 1, 0, 0, 0, 1]
    assert not bool(answer.system_mask().any())  # the attacker's own limits


def test_token_bucket_and_rate_limit_share_the_same_code() -> None:
    bucket = TokenBucket(rate=2.0, burst=2)
    assert bucket.take("a", 1, now=0.0) and bucket.take("a", 1, now=0.0)
    assert not bucket.take("a", 1, now=0.1)
    assert bucket.wait_for("a", 1, now=0.1) == pytest.approx(0.4)
    assert bucket.take("b", 1, now=0.1)  # one bucket per key
    # the client side: reserve, then wait that long
    client = TokenBucket(rate=10.0)
    waits = [client.reserve("me", 1, now=0.0) for _ in range(3)]
    assert waits == pytest.approx([0.0, 0.1, 0.2])
    limit = RateLimit(2.0, burst=1)
    log = EventLog()
    first = limit.admit(Request(torch.tensor([0]), time=0.0), log)
    second = limit.admit(Request(torch.tensor([0]), time=0.1), log)
    assert first.all and not second.all
    assert second.reason.tolist() == [int(Reason.RATE)] and second.wait == pytest.approx(0.4)
    assert bool(second.system_mask().all())
    with pytest.raises(mallory.InputError, match="'rate'"):
        RateLimit(0.0)


def test_a_ban_follows_strikes_of_the_other_policies() -> None:
    log = EventLog()
    ban = Ban(after=2)
    log.record(
        account="mallet",
        kind=Kind.QUERY,
        ids=torch.tensor([0, 1]),
        outcome=torch.tensor([3, 3]),
        reason=torch.tensor([int(Reason.RATE)] * 2),
    )
    assert not ban.admit(Request(torch.tensor([0]), account="mallet"), log).all
    assert ban.admit(Request(torch.tensor([0]), account="alice"), log).all
    assert "mallet" in ban.banned


# ---------------------------------------------------------------- what the attacker sees
def banning_system(system: System, after: int, refusal_label: int | None = None) -> System:
    """The system behind a rate limit of 1 request per second that bans after ``after``
    refusals: an attacker that queries in a loop is stopped mid-attack."""
    return CallableModel(
        system.forward,
        input_shape=system.input_shape,
        num_classes=system.num_classes,
        bounds=(0.0, 1.0),
        output="logits",
        name="guarded",
    ).with_policies(Ban(after=after), RateLimit(1.0, burst=3), refusal_label=refusal_label)


@pytest.mark.parametrize("feedback", list(Feedback))
def test_a_refusal_mid_attack_is_seen_only_as_the_feedback_allows(
    digits: tuple[System, Dataset], feedback: Feedback
) -> None:
    system, data = digits
    guarded = banning_system(system, after=2, refusal_label=7)
    threat = mallory.label_only("linf", 0.1, queries=50, feedback=feedback)
    oracle = Oracle(guarded, threat, clock=VirtualClock())
    x, ids = data.x[:2], torch.tensor([0, 1])
    seen = [oracle.labels(x, ids) for _ in range(6)]
    truth = system.forward(x).argmax(1)
    assert torch.equal(seen[0], truth)
    last = seen[-1]
    if feedback is Feedback.DELAY:
        # a rate limit answers late instead of refusing: every answer comes, time is charged
        assert all(torch.equal(s, truth) for s in seen)
        assert oracle.seconds >= 2.0 and oracle.log.refused == 0
        return
    if feedback is Feedback.LABEL:
        assert last.tolist() == [7, 7]  # an ordinary-looking label: the attacker cannot tell
    else:
        assert last.tolist() == [-1, -1]  # "blocked", or nothing at all
    reasons = oracle.log.reasons()
    assert reasons.get(Reason.RATE, 0) >= 2 and reasons.get(Reason.BAN, 0) >= 2
    # the refused rows cost no budget
    assert int(oracle.queries_of(ids).max()) < 6


def test_a_campaign_reports_where_and_why_the_system_stopped_it(
    digits: tuple[System, Dataset],
) -> None:
    system, data = digits
    guarded = banning_system(system, after=3)
    threat = mallory.label_only("linf", 0.3, queries=200)
    plan = ThreatPlan(
        threat=threat, attacks=(create("gaussian-noise"), create("hopskipjump", max_queries=100))
    )
    report = Campaign(name="banned", system=guarded, data=data, plans=(plan,)).run(progress=False)
    row = report.threats[0]
    assert row.stopped is not None and "banned" in row.stopped and "rate limited" in row.stopped
    assert row.queries_until_stopped >= 1 and row.queries_until_stopped < row.ledger.queries + 1
    assert row.refusals.get("banned", 0) > 0
    # partial results kept: what the attacker found before the ban still counts
    assert report.status == "complete"
    assert any(f.code == mallory.flags.STOPPED_BY_SYSTEM for a in row.attacks for f in a.flags)


# ---------------------------------------------------------------- stages that refuse or abstain
def test_a_blocking_stage_is_an_answer_not_a_success(digits: tuple[System, Dataset]) -> None:
    from mallory.systems import Pipeline, Stage
    from mallory.systems.base import Verdict

    system, data = digits

    def detector(x: torch.Tensor) -> Verdict:
        # blocks any input with a bright pixel in the top-left corner
        return Verdict(x, refused=x[:, 0, 0, 0] > 0.5, reason="detector")

    guarded = Pipeline([Stage(name="detector", fn=detector, defense=True), system])
    oracle = Oracle(guarded, mallory.label_only("linf", 1.0, queries=10))
    bright = data.x[:4].clone()
    bright[:, 0, 0, 0] = 1.0
    labels = oracle.labels(bright, torch.arange(4))
    assert labels.tolist() == [-1] * 4
    call = oracle.log.calls()[-1]
    assert (call.outcome == int(Outcome.BLOCKED)).all() and oracle.total_queries == 4
    verdict = oracle.judge.judge(bright, torch.arange(4), data.y[:4])
    assert verdict.predictions.tolist() == [-1] * 4
