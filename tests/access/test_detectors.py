"""The stateful query-stream detector: what it flags (query attacks, within their first
queries) and what it lets through (benign accounts sending distinct held-out digits), its
memory, its parameters, the adaptive attacker (OARS) that answers its rejections, a served
model that refuses an attacking client over HTTP, and a campaign that reports it."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

import mallory
from mallory import Oracle, create
from mallory.access.detectors import Response, StatefulDetector, queries_until_flagged
from mallory.access.events import EventLog, Kind, Outcome, Reason
from mallory.access.policies import Ban, Request
from mallory.evaluation import Campaign, ThreatPlan
from mallory.report.terminal import summary_lines
from mallory.serve import serve
from mallory.systems import HttpModel, System
from mallory.zoo import Dataset, load_dataset, load_model


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> System:
    return load_model("digits-mlp", progress=False)


@pytest.fixture(scope="module")
def train() -> Dataset:
    return load_dataset("digits", "train")


@pytest.fixture(scope="module")
def held_out() -> Dataset:
    return load_dataset("digits", "test")


@pytest.fixture(scope="module")
def calibrated(train: Dataset) -> StatefulDetector:
    """Calibrated on the training digits at 0.1% false positives; tested on held-out ones."""
    return StatefulDetector.calibrate(train.x, fpr=0.001)


def fresh(detector: StatefulDetector, **changes: object) -> StatefulDetector:
    """A detector with the same threshold and parameters (and any changed), nothing seen."""
    params: dict[str, object] = {
        "k": detector.k,
        "memory": detector.memory,
        "accounts": detector.accounts,
        "dim": detector.dim,
        "response": detector.response,
        **changes,
    }
    return StatefulDetector(detector.threshold, **params)  # type: ignore[arg-type]


def correct(model: System, data: Dataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` held-out digits the model gets right (a run on a digit it gets wrong
    is over after one query: there is nothing to detect)."""
    right = model.forward(data.x).argmax(1) == data.y
    return data.x[right][:n], data.y[right][:n]


def stream(n: int, *, start: float = 0.3, step: float = 0.01) -> torch.Tensor:
    """``n`` inputs of 64 features, each a small step from the one before."""
    base = torch.full((n, 1, 8, 8), start)
    base[:, 0, 0, :] += step * torch.arange(n)[:, None]
    return base.clamp(0, 1)


# ---------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": math.nan}, "threshold"),
        ({"k": 0}, "k"),
        ({"memory": 5}, "memory"),  # fewer than k
        ({"accounts": 0}, "accounts"),
        ({"dim": 0}, "dim"),
        ({"response": "ban"}, "response"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_parameters_are_named(changes: dict[str, object], name: str) -> None:
    params: dict[str, object] = {"threshold": 1.0, **changes}
    with pytest.raises(mallory.InputError, match=f"'{name}' parameter of StatefulDetector"):
        StatefulDetector(**params)  # type: ignore[arg-type]


def test_calibration_needs_enough_benign_inputs(train: Dataset) -> None:
    with pytest.raises(mallory.InputError, match="more than k=10 benign inputs"):
        StatefulDetector.calibrate(train.x[:5])
    with pytest.raises(mallory.InputError, match="'fpr'"):
        StatefulDetector.calibrate(train.x, fpr=1.0)
    with pytest.raises(mallory.InputError, match="duplicates"):
        StatefulDetector.calibrate(train.x[:1].repeat(20, 1, 1, 1))


# ---------------------------------------------------------------- the policy
def test_it_flags_an_account_whose_queries_are_too_close_and_refuses_it_from_then_on() -> None:
    detector = StatefulDetector(0.5, k=3)
    log = EventLog()
    x = stream(6)
    first = detector.admit(Request(torch.full((2,), -1), "mallet", x=x[:2]), log)
    assert first.all  # fewer than k earlier queries: no decision
    second = detector.admit(Request(torch.full((4,), -1), "mallet", x=x[2:]), log)
    # the fourth query has three close ones before it: it and every later one are refused
    assert second.admitted.tolist() == [True, False, False, False]
    assert second.reason.tolist() == [0] + [int(Reason.DETECTOR)] * 3
    assert bool(second.system_mask()[1:].all())  # the defender's refusal
    assert detector.flagged(log) == {"mallet": 3}
    far = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert not detector.admit(Request(torch.tensor([-1]), "mallet", x=far), log).all
    assert detector.admit(Request(torch.tensor([-1]), "alice", x=x[:1]), log).all


def test_scores_are_the_same_in_one_batch_as_one_query_at_a_time() -> None:
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x[20:] = x[19] + 0.001 * torch.arange(20).view(-1, 1, 1, 1)
    batched, single = StatefulDetector(0.3, k=5), StatefulDetector(0.3, k=5)
    log = EventLog()
    whole = batched.admit(Request(torch.full((40,), -1), x=x), log)
    one_by_one = [single.admit(Request(torch.tensor([-1]), x=row[None]), log).all for row in x]
    assert whole.admitted.tolist() == one_by_one
    assert whole.admitted.tolist().index(False) == 24  # five close ones before it
    scores = StatefulDetector(0.3, k=5).scores(x)
    assert bool(torch.isinf(scores[:5]).all()) and bool((scores[24:] < 0.3).all())


def test_reject_refuses_only_the_queries_too_close_to_earlier_ones() -> None:
    detector = StatefulDetector(0.5, k=3, response="reject")
    log = EventLog()
    x = stream(5)
    answer = detector.admit(Request(torch.full((5,), -1), "mallet", x=x), log)
    assert answer.admitted.tolist() == [True, True, True, False, False]
    far = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    assert detector.admit(Request(torch.full((3,), -1), "mallet", x=far), log).all
    assert detector.response is Response.REJECT and detector.flagged(log) == {"mallet": 3}


def test_memory_is_bounded_per_account_and_in_accounts() -> None:
    detector = StatefulDetector(0.5, k=1, memory=4, accounts=2)
    log = EventLog()
    x = torch.rand(3, 3, 3, 1, 8, 8, generator=torch.Generator().manual_seed(3))  # far apart
    for a, name in enumerate(("a", "b", "c")):
        for call in range(3):
            assert detector.admit(Request(torch.full((3,), -1), name, x=x[a, call]), log).all
    state = detector._streams[log]
    assert list(state.accounts) == ["b", "c"]  # "a", the least recently active, forgotten
    for account in state.accounts.values():
        assert account.store is not None and len(account.remembered(4, 64)[0]) == 4
    # c's first input is forgotten, its last one remembered
    assert detector.admit(Request(torch.tensor([-1]), "c", x=x[2, 0, :1]), log).all
    assert not detector.admit(Request(torch.tensor([-1]), "c", x=x[2, 2, 2:]), log).all


def test_each_log_is_a_stream_of_its_own_and_a_resumed_log_keeps_its_flags() -> None:
    detector = StatefulDetector(0.5, k=3)
    log = EventLog()
    assert not detector.admit(Request(torch.full((5,), -1), "mallet", x=stream(5)), log).all
    other = EventLog()
    assert detector.admit(Request(torch.full((2,), -1), "mallet", x=stream(2)), other).all
    resumed = EventLog()
    resumed.record(
        account="mallet",
        kind=Kind.QUERY,
        ids=torch.tensor([0]),
        outcome=torch.tensor([int(Outcome.REFUSED)]),
        reason=torch.tensor([int(Reason.DETECTOR)]),
    )
    assert not detector.admit(Request(torch.tensor([0]), "mallet", x=stream(1)), resumed).all
    assert detector.flagged(resumed) == {"mallet": 0}


def test_a_ban_before_it_turns_its_rejections_into_a_ban(model: System) -> None:
    detector = StatefulDetector(0.5, k=3, response="reject")
    guarded = model.with_policies(Ban(after=2), detector)  # the Ban reads the detector's refusals
    oracle = Oracle(guarded, mallory.label_only("l2", queries=None))
    far = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    oracle.labels(stream(5), torch.arange(5))  # two rejected
    assert oracle.labels(far, torch.arange(4)).tolist() == [-1] * 4  # then banned
    reasons = oracle.log.reasons()
    assert reasons == {Reason.DETECTOR: 2, Reason.BAN: 4}
    assert queries_until_flagged(oracle.log.calls()) == 3.0


# ---------------------------------------------------------------- what it must show
@pytest.mark.slow
def test_it_flags_query_attacks_early_and_benign_accounts_almost_never(
    model: System, calibrated: StatefulDetector, held_out: Dataset
) -> None:
    x, y = correct(model, held_out, 40)
    runs = {
        # HopSkipJump minimizes: every run on a digit the model gets right lasts its budget
        "hopskipjump": (create("hopskipjump", max_queries=50), mallory.label_only("l2"), 50),
        # at eps 0.03 Square wins on one digit of the 40, at its second query (before anyone
        # could tell a stream from one query); every other run lasts its 100 queries
        "square": (create("square", n_queries=100), mallory.score_based("linf", 0.03), 100),
    }
    for name, (attack, threat, window) in runs.items():
        flagged_after = []
        for i in range(len(x)):
            detector = fresh(calibrated)  # a run of its own: one account, nothing seen before
            oracle = Oracle(model.with_policies(detector), threat.with_(queries_per_sample=window))
            attack(oracle, x[i : i + 1], y[i : i + 1], ids=torch.tensor([i]))
            flagged_after.append(queries_until_flagged(oracle.log.calls()))
        caught = sum(1 for q in flagged_after if q < window)
        assert caught >= 0.95 * len(x), (name, flagged_after)
        # it decides as soon as it can: after k = 10 queries
        assert max(q for q in flagged_after if q == q) <= calibrated.k + 1, (name, flagged_after)
    # 100 benign accounts, each sending 100 distinct held-out digits, 20 at a time (the
    # detector scores the rows of a call as if sent one by one)
    detector = fresh(calibrated)
    oracle = Oracle(model.with_policies(detector), mallory.label_only("l2", queries=None))
    generator = torch.Generator().manual_seed(0)
    for account in range(100):
        oracle.account = f"user-{account}"
        order = torch.randperm(len(held_out), generator=generator)[:100]
        for part in order.split(20):
            oracle.labels(held_out.x[part], torch.full((len(part),), -1))
    assert len(detector.flagged(oracle.log)) <= 1
    assert oracle.log.refused <= 100


@pytest.mark.slow
def test_the_adaptive_attacker_beside_the_plain_one(
    model: System, calibrated: StatefulDetector, held_out: Dataset
) -> None:
    """OARS against a detector that rejects single queries wins back most of what the
    detector took; against one that flags the account it has nothing to resample."""
    x, y = correct(model, held_out, 12)
    threat = mallory.label_only("l2", 1.2, queries=300)
    hsj = create("hopskipjump", max_queries=300)
    oars = create("oars", attack=hsj)

    def broken(attack: mallory.Attack, response: str | None) -> int:
        total = 0
        for i in range(len(x)):
            system = (
                model
                if response is None
                else model.with_policies(fresh(calibrated, response=response))
            )
            result = attack(Oracle(system, threat), x[i : i + 1], y[i : i + 1])  # type: ignore[operator]
            total += int(result.success.sum())
        return total

    undefended = broken(hsj, None)
    plain = broken(hsj, "reject")
    adaptive = broken(oars, "reject")
    against_flags = broken(oars, "flag")
    # measured: 11, 1, 9 and 1 of 12
    assert undefended >= 10
    assert plain <= 2 and against_flags <= 2
    assert adaptive >= plain + 5


# ---------------------------------------------------------------- served, and reported
def test_a_served_model_with_the_detector_refuses_a_query_attack_over_http(
    model: System, calibrated: StatefulDetector, held_out: Dataset
) -> None:
    detector = fresh(calibrated)
    with serve(model.with_policies(detector), exposure="label") as server:
        remote = HttpModel(server.url, retries=0)
        benign = Oracle(remote, mallory.label_only("l2", queries=None))
        for i in range(30):  # distinct digits, one request each: all answered
            benign.labels(held_out.x[i : i + 1], torch.tensor([i]))
        x, y = correct(model, held_out, 1)
        oracle = Oracle(remote, mallory.label_only("l2", queries=200))
        result = create("hopskipjump", max_queries=200)(oracle, x, y, ids=torch.tensor([99]))
    # the API answered this client before: its 403 is the system refusing it, and the attack
    # goes on with what it is told ("blocked"), stopped by the system
    assert result.error is None
    if bool(result.success.any()):  # found before the flag (eps is unbounded): a real mistake
        with torch.no_grad():
            assert int(model.forward(result.x_adv).argmax(1)[0]) != int(y[0])
    assert "stopped-by-system" in {f.code for f in result.flags}
    calls = oracle.log.calls()
    refused = [c for c in calls if bool((c.reason == int(Reason.DETECTOR)).any())]
    assert refused and all(bool((c.reason == int(Reason.DETECTOR)).all()) for c in refused)
    assert "127.0.0.1" in detector.flagged()
    answered = sum(c.count(Outcome.ANSWERED) for c in calls)
    assert answered <= detector.k + 1


def test_a_campaign_reports_queries_until_flagged_and_the_attacks_that_evade(
    model: System, calibrated: StatefulDetector, held_out: Dataset
) -> None:
    data = held_out.head(16)
    plan = ThreatPlan(
        threat=mallory.label_only("linf", 0.3, queries=300),
        attacks=(create("shift", levels=1), create("hopskipjump", max_queries=100)),
    )
    guarded = model.with_policies(fresh(calibrated))
    report = Campaign(name="watched", system=guarded, data=data, plans=(plan,)).run(progress=False)
    row = report.threats[0]
    shift, hsj = row.attacks
    assert not shift.flagged and math.isnan(shift.queries_until_flagged)  # it evades
    # flagged within its first calls (16 digits at once), and refused everything after
    assert hsj.flagged and 0 < hsj.queries_until_flagged == hsj.ledger.queries <= 2 * len(data)
    assert row.queries_until_flagged == shift.ledger.queries + hsj.queries_until_flagged
    assert row.refusals.get(Reason.DETECTOR.text, 0) > 0
    text = "\n".join(summary_lines(report))
    assert "a detector flagged the attacker after" in text and "evaded it: shift" in text
    again = mallory.Report.from_dict(report.to_dict())
    assert again.threats[0].attacks[1].flagged


def test_the_cli_builds_the_detector_or_says_what_it_needs() -> None:
    from typer.testing import CliRunner

    from mallory.cli import app
    from mallory.cli.serving import build_detector

    runner = CliRunner()
    result = runner.invoke(app, ["serve", "model.pt", "--detector"])
    assert result.exit_code == 2 and "--detector-threshold" in result.output
    result = runner.invoke(app, ["serve", "digits-mlp", "--detector", "--detector-threshold", "0"])
    assert result.exit_code == 2 and "'threshold'" in result.output
    assert build_detector("model.pt", 0.5, 3).threshold == 0.5
    zoo = build_detector("digits-mlp", None, 10)
    assert 0 < zoo.threshold < 2 and zoo.k == 10
