"""The conformance checks of extraction, poisoning and membership-inference attacks.

The checks that apply to each kind: inputs untouched, the same seed gives the same result,
typed results, and, for the kinds that query (extraction, inference), budgets respected and
reported counts equal to the oracle's event log, and a refusal before any query when the
attack needs more access than granted. Runs are made once and shared, as for evasion.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mallory.access.oracle import Access, Oracle
from mallory.attacks.base import Attack
from mallory.attacks.extraction.base import ExtractionAttack, ExtractionResult
from mallory.attacks.inference.base import InferenceAttack, InferenceResult
from mallory.attacks.poisoning.base import PoisoningAttack, PoisoningResult
from mallory.attacks.surrogate import Surrogate
from mallory.errors import AccessError
from mallory.testing.bench import Bench
from mallory.testing.checks import Check, Findings, describe_error
from mallory.testing.runs import AttackRuns
from mallory.threat import Norm, ThreatModel, score_based, white_box
from mallory.threat import label_only as label_only_threat
from mallory.zoo.datasets import Dataset

SEED = 7
TOTAL_PER_SAMPLE = 1.5  # an extraction's total budget, per seed input
INFERENCE_BUDGET = 1  # queries per record in an inference's budget run
SPENT_BEFORE = 1  # queries the first records spent before the budget run


def unlimited_threat(access: Access) -> ThreatModel:
    """The preset for ``access`` with no query budget."""
    if access is Access.GRADIENTS:
        return white_box(Norm.LINF, 0.1)
    if access is Access.SCORES:
        return score_based(Norm.LINF, 0.1, queries=None)
    return label_only_threat(Norm.LINF, 0.1, queries=None)


def weaker_threats(access: Access) -> list[ThreatModel]:
    out = [label_only_threat(Norm.LINF, 0.1, queries=None)]
    if access is Access.GRADIENTS:
        out.append(score_based(Norm.LINF, 0.1, queries=None))
    return out


@dataclass(frozen=True, eq=False)
class Outcome:
    """One run: the result, the oracle (None for poisoning), what the call modified, where
    the log stood before it, and the data it was given."""

    variant: str
    result: Any
    oracle: Oracle | None
    changed: tuple[str, ...]
    mark: int
    data: dict[str, Tensor]


class KindRuns(AttackRuns[Any]):  # its attack is called with each kind's own arguments
    """The runs of one non-evasion attack on one bench, made once and kept."""

    def __init__(
        self, cls: type[Attack], given: Attack | None, bench: Callable[[], Bench], quick: bool
    ) -> None:
        super().__init__(cls, given, bench, quick)
        self._runs: dict[str, Outcome | str] = {}

    # ------------------------------------------------------------------ data per kind
    @functools.cached_property
    def records(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """Inference candidates: half members, half not, when the bench knows members."""
        b = self.bench
        if b.members_x is None or b.members_y is None:
            return b.x, b.y, None
        half = len(b.x) // 2
        x = torch.cat([b.members_x[:half], b.x[:half]])
        y = torch.cat([b.members_y[:half], b.y[:half]])
        members = torch.arange(len(x)) < half
        return x, y, members

    @functools.cached_property
    def dataset(self) -> Dataset:
        """The training set a poisoning attack is given."""
        b = self.bench
        x = b.members_x if b.members_x is not None else b.x
        y = b.members_y if b.members_y is not None else b.y
        system = b.system
        low, high = system.bounds.to_dict()["lower"], system.bounds.to_dict()["upper"]
        return Dataset(
            name="bench",
            x=x.clone(),
            y=y.clone(),
            input_shape=system.input_shape,
            bounds=(low, high),
            class_names=system.class_names,
        )

    @functools.cached_property
    def ids(self) -> Tensor:
        return 1000 + 3 * torch.arange(len(self.records[0]))

    def threat_of(self, variant: str) -> ThreatModel:
        threat = unlimited_threat(self.cls.access)
        if variant == "budget" and issubclass(self.cls, ExtractionAttack):
            total = max(1, round(TOTAL_PER_SAMPLE * len(self.bench.x)))
            return threat.with_(queries_total=total)
        if variant == "budget":
            return threat.with_(queries_per_sample=INFERENCE_BUDGET)
        return threat

    # ------------------------------------------------------------------ runs
    def run(self, variant: str) -> Outcome:
        if variant not in self._runs:
            try:
                self._runs[variant] = self._make(variant)
            except Exception as error:
                self._runs[variant] = f"the {variant} run of {self.who} {describe_error(error)}"
        made = self._runs[variant]
        if isinstance(made, str):
            raise Findings().stop(made)
        return made

    def _make(self, variant: str) -> Outcome:
        attack = self.attack
        if isinstance(attack, PoisoningAttack):
            data = self.dataset
            before = {"x": data.x.clone(), "y": data.y.clone()}
            poisoned = attack(data, rng=SEED)
            return Outcome(variant, poisoned, None, _changed(before, data.x, data.y), 0, before)
        oracle = Oracle(self.bench.system, self.threat_of(variant))
        if isinstance(attack, ExtractionAttack):
            seed_x = self.bench.x.clone()
            mark = oracle.log.mark()
            extracted = attack(oracle, seed_x, rng=SEED)
            touched: tuple[str, ...] = () if torch.equal(seed_x, self.bench.x) else ("seed_x",)
            return Outcome(variant, extracted, oracle, touched, mark, {"x": self.bench.x})
        x, y, members = self.records
        ids = self.ids
        if variant == "budget":
            first = min(5, len(ids))
            for _ in range(SPENT_BEFORE):
                oracle.labels(x[:first], ids[:first])
        mark = oracle.log.mark()
        xs, ys, sample_ids = x.clone(), y.clone(), ids.clone()
        result = attack(oracle, xs, ys, members=members, ids=sample_ids, rng=SEED)
        changed = _changed({"x": x, "y": y, "ids": ids}, xs, ys, sample_ids)
        return Outcome(variant, result, oracle, changed, mark, {"x": x, "y": y})


def _changed(before: dict[str, Tensor], *now: Tensor) -> tuple[str, ...]:
    pairs = zip(before.items(), now, strict=False)
    return tuple(name for (name, then), current in pairs if not torch.equal(then, current))


# ---------------------------------------------------------------- checks
def kind_checks(runs: KindRuns) -> list[Check]:
    cls, subject = runs.cls, runs.who

    def make(name: str, explains: str, body: Callable[[Findings], None]) -> Check:
        return Check(name, subject, explains, body)

    checks = [
        make(
            "inputs-untouched",
            "the caller's data is not modified",
            lambda f: _untouched(runs, f),
        ),
        make(
            "same-seed-same-result",
            "the same seed gives the same result",
            lambda f: _same_seed(runs, f),
        ),
        make(
            "result-fields",
            "the kind's typed result, with one row per record where it has rows",
            lambda f: _fields(runs, f),
        ),
    ]
    if issubclass(cls, ExtractionAttack | InferenceAttack):
        checks += [
            make(
                "query-budget",
                "never more queries than the budget (total for extraction, per record for "
                "inference)",
                lambda f: _budget(runs, f),
            ),
            make(
                "counts-match-event-log",
                "the reported queries are what the oracle's event log recorded",
                lambda f: _counts(runs, f),
            ),
        ]
        if cls.access > Access.LABELS:
            checks.append(
                make(
                    "refused-without-access",
                    "refused with an AccessError, before any query, under a threat model that "
                    "grants less than it needs",
                    lambda f: _refused(runs, f),
                )
            )
    return checks


def _untouched(runs: KindRuns, f: Findings) -> None:
    outcome = runs.run("base")
    f.expect(
        not outcome.changed,
        lambda: (
            f"{runs.who} modified the caller's {' and '.join(outcome.changed)}: an attack "
            "works on copies, never in place on what it was given"
        ),
    )


def _same_seed(runs: KindRuns, f: Findings) -> None:
    first, again = runs.run("base").result, runs.run("again").result
    hint = ": draw every random number from the seed, never from global state or the clock"
    if isinstance(first, ExtractionResult) and isinstance(again, ExtractionResult):
        probe = runs.bench.x
        same = (
            first.queries == again.queries
            and first.surrogate.training_size == again.surrogate.training_size
            and torch.equal(first.surrogate.predict(probe), again.surrogate.predict(probe))
        )
        f.expect(same, f"two runs with the same seed bought different labels or surrogates{hint}")
    elif isinstance(first, PoisoningResult) and isinstance(again, PoisoningResult):
        same = (
            torch.equal(first.data.x, again.data.x)
            and torch.equal(first.data.y, again.data.y)
            and torch.equal(first.changed, again.changed)
        )
        f.expect(same, f"two runs with the same seed poisoned differently{hint}")
    elif isinstance(first, InferenceResult) and isinstance(again, InferenceResult):
        same = torch.equal(first.queries, again.queries) and bool(
            torch.isclose(first.score, again.score, rtol=0, atol=0, equal_nan=True).all()
        )
        f.expect(same, f"two runs with the same seed gave different scores or queries{hint}")


def _fields(runs: KindRuns, f: Findings) -> None:
    outcome = runs.run("base")
    result, attack = outcome.result, runs.attack
    expected = {
        ExtractionAttack: ExtractionResult,
        PoisoningAttack: PoisoningResult,
        InferenceAttack: InferenceResult,
    }
    wanted = next((r for k, r in expected.items() if isinstance(attack, k)), None)
    if wanted is not None and not f.expect(
        isinstance(result, wanted),
        f"{runs.who} returned {type(result).__name__}, not a {getattr(wanted, '__name__', '')}",
    ):
        return
    f.expect(result.attack == attack.name, f"result.attack is {result.attack!r}")
    f.expect(result.params == attack.params(), "result.params is not the attack's params()")
    if isinstance(result, ExtractionResult):
        _extraction_fields(runs, result, f)
    elif isinstance(result, PoisoningResult):
        _poisoning_fields(runs, result, f)
    elif isinstance(result, InferenceResult):
        _inference_fields(runs, result, f)
    try:
        json.dumps(result.summary(), allow_nan=True)
    except (TypeError, ValueError) as error:
        f.expect(False, f"result.summary() is not JSON: {error}")


def _extraction_fields(runs: KindRuns, result: ExtractionResult, f: Findings) -> None:
    system = runs.bench.system
    surrogate = result.surrogate
    if f.expect(isinstance(surrogate, Surrogate), "result.surrogate is not a Surrogate"):
        f.expect(
            surrogate.input_shape == system.input_shape
            and surrogate.num_classes == system.num_classes,
            "the surrogate's input shape or number of classes is not the target's",
        )
        predictions = surrogate.predict(runs.bench.x)
        f.expect(
            predictions.shape == (len(runs.bench.x),),
            "the surrogate does not predict one class per input",
        )
    f.expect(
        isinstance(result.queries, int) and result.queries >= 0,
        f"result.queries should be an int >= 0; got {result.queries!r}",
    )
    f.expect(
        isinstance(result.fidelity, float)
        and (math.isnan(result.fidelity) or 0.0 <= result.fidelity <= 1.0),
        f"result.fidelity should be a share in [0, 1]; got {result.fidelity!r}",
    )
    f.expect(isinstance(result.calls, tuple), "result.calls should be a tuple of calls")


def _poisoning_fields(runs: KindRuns, result: PoisoningResult, f: Findings) -> None:
    original = runs.run("base").data
    data = result.data
    if not f.expect(isinstance(data, Dataset), "result.data is not a mallory Dataset"):
        return
    n = len(original["y"])
    if not f.expect(
        data.x.shape == original["x"].shape and data.y.shape == (n,),
        f"the poisoned set has x {tuple(data.x.shape)} and y {tuple(data.y.shape)}; the training "
        f"set has {tuple(original['x'].shape)} and ({n},)",
    ):
        return
    classes = len(data.class_names)
    f.expect(
        data.y.dtype == torch.int64 and bool(((data.y >= 0) & (data.y < classes)).all()),
        f"the poisoned labels are not int64 classes in 0..{classes - 1}",
    )
    changed = result.changed
    if not f.expect(
        isinstance(changed, Tensor) and changed.dtype == torch.int64 and changed.dim() == 1,
        "result.changed should be an int64 tensor of row indices",
    ):
        return
    f.expect(
        bool(((changed >= 0) & (changed < n)).all()) and len(changed.unique()) == len(changed),
        "result.changed holds indices outside the training set, or repeats one",
    )
    kept = torch.ones(n, dtype=torch.bool)
    kept[changed] = False
    differs = (data.x != original["x"]).flatten(1).any(1) | (data.y != original["y"])
    f.expect(
        not bool(differs[kept].any()),
        lambda: f"{int(differs[kept].sum())} rows changed that result.changed does not list",
    )
    f.expect(0.0 <= result.rate <= 1.0, f"result.rate should be in [0, 1]; got {result.rate}")


def _inference_fields(runs: KindRuns, result: InferenceResult, f: Findings) -> None:
    _, _, members = runs.records
    n = len(runs.ids)
    f.expect(torch.equal(result.ids.cpu(), runs.ids), "result.ids are not the ids passed")
    for field, dtype in (("score", torch.float64), ("queries", torch.int64)):
        value = getattr(result, field)
        f.expect(
            isinstance(value, Tensor) and value.shape == (n,) and value.dtype == dtype,
            f"result.{field} should be a {dtype} tensor of shape ({n},)",
        )
    if members is not None:
        f.expect(
            result.members is not None and torch.equal(result.members, members),
            "result.members is not the ground truth passed",
        )
        for name in ("auc", "advantage"):
            value = getattr(result, name)
            f.expect(
                isinstance(value, float) and 0.0 <= value <= 1.0,
                f"result.{name} should be in [0, 1] with ground truth; got {value!r}",
            )
    f.expect(result.error is None, f"the result reports an error: {result.error}")


def _budget(runs: KindRuns, f: Findings) -> None:
    outcome = runs.run("budget")
    oracle, result = outcome.oracle, outcome.result
    assert oracle is not None  # the querying kinds have one
    threat = oracle.threat
    if isinstance(result, ExtractionResult):
        total = threat.queries_total
        assert total is not None  # the extraction budget run has one
        f.expect(
            oracle.total_queries <= total,
            f"the event log counted {oracle.total_queries} queries under a total budget of {total}",
        )
        f.expect(
            result.queries <= total,
            f"{runs.who} reports {result.queries} queries under a total budget of {total}",
        )
        return
    ids, first = runs.ids, min(5, len(runs.ids))
    spent = oracle.queries_of(ids)
    f.expect(
        bool((spent <= INFERENCE_BUDGET).all()),
        f"the event log charged more than {INFERENCE_BUDGET} queries to a record",
    )
    queries = result.queries.cpu()
    f.expect(
        bool((queries <= INFERENCE_BUDGET).all()),
        f"{runs.who} reports more than {INFERENCE_BUDGET} queries on a record under that budget",
    )
    f.expect(
        bool((queries[:first] <= INFERENCE_BUDGET - SPENT_BEFORE).all()),
        "records that had spent their budget earlier were reported new queries: the budget "
        "did not carry over",
    )


def _counts(runs: KindRuns, f: Findings) -> None:
    for variant in ("base", "budget"):
        outcome = runs.run(variant)
        oracle, result = outcome.oracle, outcome.result
        assert oracle is not None  # the querying kinds have one
        if isinstance(result, ExtractionResult):
            totals = oracle.log.totals(since=outcome.mark)
            f.expect(
                result.queries == totals.queries,
                f"{runs.who} reports {result.queries} queries in the {variant} run; the event "
                f"log recorded {totals.queries}",
                key="queries",
            )
            f.expect(
                len(result.calls) == len(oracle.log.calls(outcome.mark)),
                f"result.calls does not hold the calls the event log recorded ({variant} run)",
                key="calls",
            )
            f.expect(
                math.isclose(result.money, totals.money, abs_tol=1e-12),
                f"result.money is not what the event log recorded ({variant} run)",
                key="money",
            )
        elif isinstance(result, InferenceResult):
            logged = oracle.log.per_sample(runs.ids, since=outcome.mark)
            queries = result.queries.cpu()
            if queries.shape != logged.queries.shape or not torch.equal(queries, logged.queries):
                f.fail(
                    f"the queries {runs.who} reports differ from the oracle's event log in "
                    f"the {variant} run (reported {int(queries.sum())}, logged "
                    f"{int(logged.queries.sum())})",
                    key="queries",
                )


def _refused(runs: KindRuns, f: Findings) -> None:
    attack, access = runs.attack, runs.cls.access.name.lower()
    x, y, _ = runs.records
    for threat in weaker_threats(runs.cls.access):
        oracle = Oracle(runs.bench.system, threat)
        why: str | None = None
        try:
            if isinstance(attack, ExtractionAttack):
                attack(oracle, runs.bench.x.clone(), rng=SEED)
            else:
                attack(oracle, x.clone(), y.clone(), rng=SEED)
            why = "it ran"
        except AccessError:
            if oracle.total_queries:
                why = f"it was refused only after {oracle.total_queries} queries"
        except Exception as error:
            why = f"it raised {type(error).__name__}, not AccessError: {error}"
        f.expect(
            why is None,
            f"{runs.who} needs {access}, but under the {threat.name!r} threat model {why}: it "
            "must be refused with an AccessError before any query",
        )


def checks_for(
    cls: type[Attack], given: Attack | None, bench: Callable[[], Bench], quick: bool
) -> list[Check]:
    return kind_checks(KindRuns(cls, given, bench, quick))
