"""The conformance checks of an evasion attack: (a)-(h) of the conformance suite, and more.

Each check reads the runs of :mod:`mallory.testing.evasion_runs` (made once per attack and
shared), and notes every problem it finds in plain words.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import torch
from torch import Tensor

from mallory.access.oracle import Access, Oracle
from mallory.attacks.evasion.base import EvasionAttack
from mallory.attacks.evasion.result import AttackResult
from mallory.errors import AccessError, InputError
from mallory.systems.callable import CallableModel
from mallory.testing.bench import Bench
from mallory.testing.checks import Check, Findings
from mallory.testing.evasion_runs import (
    BOUND_SLACK,
    BUDGET,
    CHUNK,
    CLOSE,
    PRICE,
    RESULT_DTYPES,
    SPENT_BEFORE,
    EvasionRuns,
    Run,
    eps_for,
    system_verdict,
)
from mallory.threat import (
    Exposure,
    Goal,
    Norm,
    ThreatModel,
    score_based,
    transfer,
)
from mallory.threat import label_only as label_only_threat
from mallory.threat.perturbation import distances, norm_of


def _equal(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


# ---------------------------------------------------------------- the checks
def evasion_checks(runs: EvasionRuns) -> list[Check]:
    cls = runs.cls
    subject = runs.who

    def make(name: str, explains: str, body: Callable[[Findings], None]) -> Check:
        return Check(name, subject, explains, body)

    checks = [
        make(
            "inside-perturbation-set",
            "results lie inside the threat model's ball and the input bounds, and the reported "
            "distances are those of the results",
            lambda f: _inside(runs, f),
        ),
        make(
            "inputs-untouched",
            "the caller's x, y and ids are not modified, and x_adv does not alias x",
            lambda f: _untouched(runs, f),
        ),
        make(
            "same-seed-same-result",
            "the same seed gives the same result on a fresh oracle",
            lambda f: _same_seed(runs, f),
        ),
        make(
            "success-is-the-systems-verdict",
            "success, predictions and confidence are the system's own answer on x_adv; targets "
            "are wrong classes",
            lambda f: _verdict(runs, f),
        ),
        make(
            "per-sample-query-budget",
            "never more queries per sample than the budget, carried over from earlier spending; "
            "costs priced",
            lambda f: _per_sample_budget(runs, f),
        ),
        make(
            "total-query-budget",
            "never more queries in all than the total budget",
            lambda f: _total_budget(runs, f),
        ),
        make(
            "counts-match-event-log",
            "reported queries and gradient evaluations are what the oracle's event log recorded",
            lambda f: _counts(runs, f),
        ),
        make(
            "planned-queries-kept",
            "no sample gets more queries than planned_queries() announced",
            lambda f: _planned(runs, f),
        ),
        make(
            "batch-size-independent",
            f"batch_size={CHUNK} gives the same outcome as one batch",
            lambda f: _batch(runs, f),
        ),
        make(
            "result-fields",
            "an AttackResult with one row per sample in every field, with the documented dtypes",
            lambda f: _fields(runs, f),
        ),
    ]
    if cls.access > Access.LABELS:
        checks.append(
            make(
                "refused-without-access",
                "refused with an AccessError, before any query, under a threat model that "
                "grants less than it needs",
                lambda f: _refused_without_access(runs, f),
            )
        )
    if cls.access is Access.GRADIENTS:
        checks.append(
            make(
                "refused-on-opaque-system",
                "refused, before any query, on a system that offers no gradients",
                lambda f: _refused_on_opaque(runs, f),
            )
        )
    checks += [
        make(
            "refused-outside-its-norms-goals-eps",
            "refused with an InputError, before any query, under a norm, goal or infinite eps "
            "it does not support",
            lambda f: _refused_outside(runs, f),
        ),
        make(
            "feature-constraints-respected",
            "changes only the features the threat model lets it change",
            lambda f: _features(runs, f),
        ),
    ]
    return checks


def _inside(runs: EvasionRuns, f: Findings) -> None:
    for variant in [*runs.variants(), "total"]:
        outcome = runs.run(variant)
        inside(outcome, runs.bench, f)


def inside(outcome: Run, bench: Bench, f: Findings) -> None:
    """Notes where ``outcome``'s results leave the perturbation set or the bounds."""
    result, threat, variant = outcome.result, outcome.threat, outcome.variant
    x = bench.x.cpu()
    x_adv = result.x_adv
    if not f.expect(
        isinstance(x_adv, Tensor) and x_adv.shape == x.shape and x_adv.dtype == x.dtype,
        lambda: (
            f"x_adv has shape {tuple(x_adv.shape)} and dtype {x_adv.dtype} in the {variant} "
            f"run; the inputs have {tuple(x.shape)} and {x.dtype}"
        ),
        key="shape",
    ):
        return
    x_adv = x_adv.detach().cpu()
    finite = torch.isfinite(x_adv.flatten(1)).all(1)
    f.expect(
        bool(finite.all()),
        lambda: (
            f"x_adv holds NaN or infinite values on {int((~finite).sum())} samples in the "
            f"{variant} run"
        ),
        key="finite",
    )
    outside = bench.system.bounds.outside(x_adv, tol=BOUND_SLACK)
    f.expect(
        not bool(outside.any()),
        lambda: (
            f"x_adv leaves the input bounds {bench.system.bounds.to_dict()} on "
            f"{int(outside.sum())} of {len(x)} samples in the {variant} run"
        ),
        key="bounds",
    )
    size = norm_of(x_adv - x, threat.norm).double()
    if math.isfinite(threat.eps):
        slack = 0.0 if threat.norm is Norm.L0 else 1e-5 * (1 + threat.eps)
        over = size > threat.eps + slack
        f.expect(
            not bool(over.any()),
            lambda: (
                f"x_adv leaves the {threat.norm.value} ball of radius {threat.eps:g} on "
                f"{int(over.sum())} of {len(x)} samples in the {variant} run (largest distance "
                f"{float(size.max()):.6g}): the attack's results must stay in the perturbation set "
                "(the base class projects what _run returns; nothing may change it afterwards)"
            ),
            key="ball",
        )
    d = distances(x_adv, x)
    for norm, reported in ((Norm.L0, result.l0), (Norm.L2, result.l2), (Norm.LINF, result.linf)):
        ok = (
            isinstance(reported, Tensor)
            and reported.shape == d[norm].shape
            and bool(torch.isclose(reported.cpu().double(), d[norm].double(), atol=1e-6).all())
        )
        f.expect(
            ok,
            f"the reported {norm.value} distances are not those of x_adv to x in the {variant} run",
            key=f"distance-{norm.value}",
        )


def _untouched(runs: EvasionRuns, f: Findings) -> None:
    for variant in runs.variants():
        outcome = runs.run(variant)
        if outcome.changed:
            f.fail(
                f"{runs.who} modified the caller's {' and '.join(outcome.changed)} in the "
                f"{outcome.variant} run: an attack works on copies (x.clone()), never in place "
                "on what it was given",
                key="changed",
            )
    outcome = runs.run("base")
    f.expect(
        outcome.result.x_adv.data_ptr() != outcome.x_address,
        f"x_adv returned by {runs.who} is the caller's x itself (the same storage): return a "
        "new tensor",
    )


def _same_seed(runs: EvasionRuns, f: Findings) -> None:
    first, again = runs.run("base").result, runs.run("again").result
    hint = (
        ": draw every random number from the noise argument of _run (noise.fold(name)), never "
        "from torch's global generator or the clock"
    )
    for field in ("x_adv", "success", "queries", "gradients"):
        a, b = getattr(first, field), getattr(again, field)
        same = a.shape == b.shape and torch.equal(a, b)
        f.expect(same, f"two runs with the same seed gave different {field}{hint}", key="seed")
    if first.targets is not None:
        f.expect(
            again.targets is not None and torch.equal(again.targets, first.targets),
            f"two runs with the same seed drew different targets{hint}",
        )


def _verdict(runs: EvasionRuns, f: Findings) -> None:
    for variant in runs.variants():
        verdict(runs.run(variant), runs.bench, f)


def verdict(outcome: Run, bench: Bench, f: Findings) -> None:
    """Notes where ``outcome``'s success, predictions and confidence are not the system's."""
    result, y, variant, system = outcome.result, bench.y.cpu(), outcome.variant, bench.system
    n = len(y)
    predictions = result.predictions.cpu()
    decided = predictions >= 0
    targets = result.targets
    goal = result.threat.goal
    if goal is Goal.UNTARGETED:
        f.expect(
            targets is None,
            f"the {variant} run is untargeted, but the result has targets",
            key="targets",
        )
        expected = decided & (predictions != y)
    else:
        if not f.expect(
            targets is not None and targets.shape == (n,) and targets.dtype == torch.int64,
            f"the {variant} run is targeted, but the result has no int64 targets, one per sample",
            key="targets",
        ):
            return
        assert targets is not None  # for the type checker: tested above
        targets = targets.cpu()
        f.expect(
            bool((targets != y).all())
            and bool((targets >= 0).all())
            and bool((targets < system.num_classes).all()),
            f"the targets of the {variant} run are not all wrong classes in "
            f"0..{system.num_classes - 1}",
            key="target-values",
        )
        expected = decided & (predictions == targets)
    f.expect(
        torch.equal(result.success.cpu(), expected),
        f"success is not what the predictions say in the {variant} run: success means a wrong "
        "class (untargeted) or the target (targeted) as the judge decides, never the attack's own "
        "opinion",
        key="success",
    )
    if not system.deterministic:
        return  # one fresh answer of a randomized system says nothing exact
    own, confidence = system_verdict(system, result.x_adv)
    wrong = predictions != own
    f.expect(
        not bool(wrong.any()),
        lambda: (
            f"the predictions reported in the {variant} run differ from the system's own "
            f"answer on x_adv for {int(wrong.sum())} of {n} samples"
        ),
        key="predictions",
    )
    if system.exposes is not Exposure.LABEL:
        reported = result.confidence.cpu().double()
        close = torch.isclose(reported, confidence, atol=CLOSE, rtol=CLOSE, equal_nan=True)
        f.expect(
            bool(close.all()),
            lambda: (
                f"the confidence reported in the {variant} run is not the system's "
                f"probability of its prediction on x_adv for {int((~close).sum())} samples"
            ),
            key="confidence",
        )


def _per_sample_budget(runs: EvasionRuns, f: Findings) -> None:
    outcome = runs.run("budget")
    result, oracle, ids = outcome.result, outcome.oracle, runs.ids
    first = min(5, len(ids))
    queries = result.queries.cpu()
    f.expect(bool((queries >= 0).all()), "negative query counts were reported")
    f.expect(
        bool((queries <= BUDGET).all()),
        lambda: (
            f"{runs.who} reports up to {int(queries.max())} queries on a sample under a "
            f"budget of {BUDGET} per sample"
        ),
    )
    spent = oracle.queries_of(ids)
    f.expect(
        bool((spent <= BUDGET).all()),
        f"the event log charged more than the budget of {BUDGET} queries to a sample",
    )
    f.expect(
        bool((queries[:first] <= BUDGET - SPENT_BEFORE).all()),
        f"samples that had already spent {SPENT_BEFORE} of their {BUDGET} queries were reported "
        f"more than the {BUDGET - SPENT_BEFORE} left: the budget did not carry over",
    )
    gradients = result.gradients.cpu()
    f.expect(
        bool((gradients <= queries).all()),
        "more gradient evaluations than queries were reported for some samples (each gradient "
        "is a query too)",
    )
    f.expect(
        torch.equal(oracle.gradients_of(ids), gradients),
        "the reported gradient evaluations are not what the event log charged",
    )
    f.expect(
        bool(torch.isclose(result.cost.cpu(), queries.double() * PRICE).all()),
        f"the reported cost is not the queries times the price ({PRICE} per query)",
    )
    f.expect(
        math.isclose(oracle.money, PRICE * oracle.total_queries, rel_tol=1e-9),
        "the money in the event log is not the queries times the price",
    )


def _total_budget(runs: EvasionRuns, f: Findings) -> None:
    outcome = runs.run("total")
    total = outcome.threat.queries_total
    assert total is not None  # the total run has one
    oracle, result = outcome.oracle, outcome.result
    f.expect(
        oracle.total_queries <= total,
        f"the event log counted {oracle.total_queries} queries under a total budget of {total}",
    )
    f.expect(
        int(result.queries.sum()) == oracle.total_queries,
        lambda: (
            f"{runs.who} reports {int(result.queries.sum())} queries in all; the event log "
            f"counted {oracle.total_queries}"
        ),
    )
    verdict(outcome, runs.bench, f)


def _counts(runs: EvasionRuns, f: Findings) -> None:
    ids = runs.ids
    for variant in ("base", "budget"):
        outcome = runs.run(variant)
        result, oracle = outcome.result, outcome.oracle
        logged = oracle.log.per_sample(ids, since=outcome.mark)
        queries, gradients = result.queries.cpu(), result.gradients.cpu()
        if not _equal(queries, logged.queries):
            f.fail(
                f"the queries {runs.who} reports differ from the oracle's event log in the "
                f"{variant} run (reported {int(queries.sum())} in all, logged "
                f"{int(logged.queries.sum())}): report what the oracle counted, never a count "
                "of your own",
                key="queries",
            )
        if not _equal(gradients, logged.gradients):
            f.fail(
                f"the gradient evaluations {runs.who} reports differ from the oracle's event "
                f"log in the {variant} run (reported {int(gradients.sum())}, logged "
                f"{int(logged.gradients.sum())})",
                key="gradients",
            )
        f.expect(
            oracle.total_queries == int(outcome.spent_before.sum() + queries.sum()),
            f"the oracle counted queries in the {variant} run that the result does not report "
            "(queries charged to other samples)",
            key="total",
        )
    base = runs.run("base")
    below = torch.arange(int(ids.min())) if len(ids) else ids
    f.expect(
        int(base.oracle.queries_of(below).sum()) == 0,
        "queries were charged to samples outside the batch: query through the view you are "
        "given, with rows= for part of the batch",
    )
    f.expect(
        bool((base.result.queries > 0).all()),
        "some samples got no query at all: every sample needs at least one",
    )


def _planned(runs: EvasionRuns, f: Findings) -> None:
    for variant in ("base", "budget"):
        outcome = runs.run(variant)
        if outcome.planned is None:
            continue
        most = int(outcome.result.queries.max()) if len(outcome.result.queries) else 0
        f.expect(
            most <= outcome.planned,
            f"planned_queries() returned {outcome.planned}, but a sample got {most} queries in "
            f"the {variant} run: campaigns size budgets by it, so it must be an upper bound on "
            "the queries per sample (or None when not known)",
            key="planned",
        )


def _batch(runs: EvasionRuns, f: Findings) -> None:
    whole, chunked = runs.run("base").result, runs.run("batch").result
    f.expect(
        chunked.params.get("batch_size") == CHUNK,
        f"the result's params do not record batch_size={CHUNK}",
    )
    differ = whole.success != chunked.success
    f.expect(
        not bool(differ.any()),
        lambda: (
            f"batch_size={CHUNK} changes which samples succeed ({int(differ.sum())} of "
            f"{len(differ)}): per-sample random streams (noise) and per-sample stopping make the "
            "outcome independent of the batch"
        ),
    )
    close = torch.isclose(chunked.x_adv, whole.x_adv, atol=CLOSE, rtol=0)
    f.expect(
        bool(close.all()),
        lambda: (
            f"batch_size={CHUNK} changes x_adv on {int((~close).flatten(1).any(1).sum())} samples"
        ),
    )
    if whole.targets is not None:
        f.expect(
            chunked.targets is not None and torch.equal(chunked.targets, whole.targets),
            f"batch_size={CHUNK} changes the targets",
        )


def _fields(runs: EvasionRuns, f: Findings) -> None:
    outcome = runs.run("base")
    result, attack, bench = outcome.result, outcome.attack, runs.bench
    n = len(bench.x)
    if not f.expect(
        isinstance(result, AttackResult),
        f"{runs.who} returned {type(result).__name__}, not an AttackResult",
    ):
        return
    f.expect(result.attack == attack.name, f"result.attack is {result.attack!r}")
    f.expect(result.params == attack.params(), "result.params is not the attack's params()")
    f.expect(result.threat == outcome.threat, "result.threat is not the oracle's threat model")
    f.expect(len(result) == n, f"the result has {len(result)} rows for {n} samples")
    f.expect(torch.equal(result.ids.cpu(), runs.ids), "result.ids are not the ids passed")
    f.expect(
        torch.equal(result.labels.cpu(), bench.y.cpu()), "result.labels are not the labels passed"
    )
    for field, dtype in RESULT_DTYPES.items():
        value = getattr(result, field)
        if isinstance(value, Tensor) and value.shape == (n,) and value.dtype == dtype:
            continue
        got = (
            f"{value.dtype} of shape {tuple(value.shape)}"
            if isinstance(value, Tensor)
            else type(value).__name__
        )
        f.fail(f"result.{field} should be a {dtype} tensor of shape ({n},); got {got}")
    f.expect(
        result.interrupted_mask.shape == (n,) and not bool(result.interrupted_mask.any()),
        "samples were reported interrupted on a system that never failed",
    )
    f.expect(result.error is None, f"the result reports an error: {result.error}")
    f.expect(
        isinstance(result.seconds, float) and result.seconds > 0,
        f"result.seconds should be a positive float; got {result.seconds!r}",
    )
    if bench.system.exposes is not Exposure.LABEL:
        confidence = result.confidence[result.predictions >= 0]
        f.expect(
            bool((confidence > 0).all()) and bool((confidence <= 1).all()),
            "confidences outside (0, 1] were reported",
        )
    f.expect(0.0 <= result.success_rate <= 1.0, "the success rate is not in [0, 1]")
    if runs.cls.access is not Access.GRADIENTS:
        f.expect(
            not bool(result.gradients.any()),
            f"{runs.who} declares access={runs.cls.access.name.lower()} but gradient "
            "evaluations were recorded",
        )
    try:
        json.dumps(result.to_dict(inputs=True), allow_nan=True)
        json.dumps(result.summary(), allow_nan=True)
    except (TypeError, ValueError) as error:
        f.expect(False, f"result.to_dict(inputs=True) or summary() is not JSON: {error}")


def _weaker(runs: EvasionRuns) -> list[ThreatModel]:
    base = runs.threat
    norm, eps, goal = base.norm, base.eps, base.goal
    out = [label_only_threat(norm, eps, goal=goal)]
    if runs.cls.access is Access.GRADIENTS:
        out.append(score_based(norm, eps, goal=goal))
        out.append(transfer(norm, eps, goal=goal))
    return out


def refused(
    attack: EvasionAttack,
    oracle: Oracle,
    bench: Bench,
    error: type[Exception],
    ids: Tensor,
    *,
    names: str = "",
) -> str | None:
    """Why the call of ``attack`` was not refused as it should have been (None: it was);
    the error must name the attack, and ``names`` too when given."""
    try:
        attack(oracle, bench.x.clone(), bench.y.clone(), ids=ids.clone())
    except error as raised:
        if attack.name and attack.name not in str(raised):
            return f"the {error.__name__} does not name the attack: {str(raised)!r}"
        if names and names not in str(raised):
            return f"the {error.__name__} does not name {names!r}: {str(raised)!r}"
        if oracle.total_queries or oracle.total_gradients:
            return (
                f"it was refused only after {oracle.total_queries} queries: check what it "
                "needs before any query (the base class does, from its class metadata)"
            )
        return None
    except Exception as other:
        return f"it raised {type(other).__name__}, not {error.__name__}: {other}"
    return "it ran"


def _refused_without_access(runs: EvasionRuns, f: Findings) -> None:
    attack, access = runs.attack, runs.cls.access.name.lower()
    for threat in _weaker(runs):
        why = refused(attack, Oracle(runs.system, threat), runs.bench, AccessError, runs.ids)
        f.expect(
            why is None,
            f"{runs.who} needs {access}, but under the {threat.name!r} threat model "
            f"(exposure {threat.exposure.value!r}) {why}: it must be refused with an AccessError "
            "before any query",
        )


def _refused_on_opaque(runs: EvasionRuns, f: Findings) -> None:
    system = runs.system
    opaque = CallableModel(
        system.forward,
        input_shape=system.input_shape,
        num_classes=system.num_classes,
        bounds=system.bounds,
        output=system.output,
        name="opaque-api",
    )
    oracle = Oracle(opaque, runs.threat)
    why = refused(runs.attack, oracle, runs.bench, AccessError, runs.ids, names="opaque-api")
    f.expect(
        why is None,
        f"{runs.who} needs gradients, but on a system with none {why}",
    )


def _refused_outside(runs: EvasionRuns, f: Findings) -> None:
    cls, base = runs.cls, runs.threat
    threats: list[tuple[str, ThreatModel]] = []
    for norm in Norm:
        if norm not in cls.norms:
            eps = eps_for(norm, runs.system)
            threats.append((f"the {norm.value} norm", base.with_(norm=norm, eps=eps)))
    for goal in Goal:
        if goal not in cls.goals:
            threats.append((f"the {goal.value} goal", base.with_(goal=goal)))
    if not cls.minimizes:
        threats.append(("eps=inf (it does not minimize)", base.with_(eps=math.inf)))
    for what, threat in threats:
        why = refused(runs.attack, Oracle(runs.system, threat), runs.bench, InputError, runs.ids)
        f.expect(
            why is None,
            f"{runs.who} does not support {what}, but {why}: it must be refused with an "
            "InputError before any query",
        )


def _features(runs: EvasionRuns, f: Findings) -> None:
    outcome = runs.run("features")
    features = outcome.threat.features
    assert features is not None  # the features run has them
    x, n = runs.bench.x.cpu(), len(runs.bench.x)
    changed = (outcome.result.x_adv.cpu() != x).flatten(1)
    frozen = torch.ones(changed.shape[1], dtype=torch.bool)
    frozen[list(features.mutable)] = False
    rows = changed[:, frozen].any(1)
    f.expect(
        not bool(rows.any()),
        lambda: (
            f"{runs.who} changed features the threat model keeps fixed on {int(rows.sum())} "
            f"of {n} samples"
        ),
    )
    verdict(outcome, runs.bench, f)


def checks_for(
    cls: type[EvasionAttack], given: EvasionAttack | None, bench: Callable[[], Bench], quick: bool
) -> list[Check]:
    return evasion_checks(EvasionRuns(cls, given, bench, quick))


__all__ = ["checks_for", "evasion_checks"]
