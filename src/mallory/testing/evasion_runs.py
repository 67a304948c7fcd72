"""The runs the evasion checks read: each made once per attack and bench, and shared.

Every check runs the attack on a bench (a system and samples) under a threat model its class
accepts: the preset for its ``access``, its first norm, an eps sized to the bounds and the
input dimension (0.2, 1.5 and 10 on the 8x8 digits in [0, 1]), untargeted when it can be.
The runs are shared between the checks of one attack, and each is made once:

=========  ====================================================================
run        what changes from the base run
=========  ====================================================================
base       nothing: the threat model above, no budget for gradient attacks
again      a fresh oracle, the same seed (determinism)
batch      ``batch_size=7``
budget     7 queries per sample (the first five samples already spent two), priced
total      a total budget of 1.5 queries per sample, none per sample
targeted   the targeted goal (when the class supports both)
unbounded  ``eps=inf`` (for minimizing attacks)
features   only the middle half of the features may change
=========  ====================================================================
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mallory.access.exposure import as_probabilities
from mallory.access.oracle import Access, Oracle
from mallory.attacks.evasion.base import EvasionAttack
from mallory.attacks.evasion.result import AttackResult
from mallory.systems.base import ABSTAINED, REFUSED, System
from mallory.testing.bench import Bench
from mallory.testing.checks import Findings, describe_error
from mallory.testing.runs import AttackRuns
from mallory.threat import (
    FeatureConstraints,
    Goal,
    Norm,
    ThreatModel,
    score_based,
    white_box,
)
from mallory.threat import label_only as label_only_threat

SEED = 7
BUDGET = 7  # queries per sample in the budget run
SPENT_BEFORE = 2  # queries the first samples spent before the budget run
PRICE = 0.25  # money per query in the budget run
TOTAL_PER_SAMPLE = 1.5  # the total budget, per sample
CHUNK = 7  # the batch size of the batch run
QUERIES = 200  # per-sample budget of the score and label presets
FEATURE_QUERIES = 50  # per-sample budget of a query attack in the features run
BOUND_SLACK = 1e-6  # the oracle's own tolerance on the input bounds
CLOSE = 1e-5  # tolerance on confidences and on x_adv across batch sizes

RESULT_DTYPES = {
    "ids": torch.int64,
    "labels": torch.int64,
    "success": torch.bool,
    "predictions": torch.int64,
    "confidence": torch.float64,
    "l0": torch.float64,
    "l2": torch.float64,
    "linf": torch.float64,
    "queries": torch.int64,
    "gradients": torch.int64,
}


def eps_for(norm: Norm, system: System) -> float:
    """The radius the checks use: 0.2 of the bounds' width in Linf, ``0.1875 * width *
    sqrt(d)`` in L2 and ``0.15625 * d`` features in L0 (0.2, 1.5 and 10 for 8x8 images in
    [0, 1])."""
    width = float(system.bounds.width.double().mean())
    features = math.prod(system.input_shape)
    if norm is Norm.LINF:
        return 0.2 * width
    if norm is Norm.L2:
        return 0.1875 * width * math.sqrt(features)
    return float(max(1, round(0.15625 * features)))


def threat_for(cls: type[EvasionAttack], system: System) -> ThreatModel:
    """A threat model the attack accepts: the preset for its access, its first norm, a
    finite eps, untargeted if it can (else targeted with random targets)."""
    norm = next(n for n in Norm if n in cls.norms)
    goal = Goal.UNTARGETED if Goal.UNTARGETED in cls.goals else Goal.TARGETED
    eps = eps_for(norm, system)
    if cls.access is Access.GRADIENTS:
        return white_box(norm, eps, goal=goal)
    if cls.access is Access.SCORES:
        return score_based(norm, eps, queries=QUERIES, goal=goal)
    return label_only_threat(norm, eps, queries=QUERIES, goal=goal)


@dataclass(frozen=True, eq=False)
class Run:
    """One run of the attack and what the checks read about it."""

    variant: str
    attack: EvasionAttack
    result: AttackResult
    oracle: Oracle
    threat: ThreatModel
    changed: tuple[str, ...]  # the caller's tensors (x, y, ids) the call modified
    x_address: int  # where the x passed to the call lives
    spent_before: Tensor  # queries per sample in the ledger before the call
    mark: int  # the event log's position before the call
    planned: int | None  # planned_queries() before the call


class EvasionRuns(AttackRuns[EvasionAttack]):
    """The runs of one evasion attack on one bench, made on first use and kept."""

    def __init__(
        self,
        cls: type[EvasionAttack],
        given: EvasionAttack | None,
        bench: Callable[[], Bench],
        quick: bool,
    ) -> None:
        super().__init__(cls, given, bench, quick)
        self._runs: dict[str, Run | str] = {}

    @property
    def system(self) -> System:
        return self.bench.system

    @functools.cached_property
    def ids(self) -> Tensor:
        # not 0..n-1: the ledger is keyed by these
        return 1000 + 3 * torch.arange(len(self.bench.x))

    @functools.cached_property
    def threat(self) -> ThreatModel:
        return threat_for(self.cls, self.system)

    def variants(self) -> list[str]:
        """The runs whose results every check of the outcome applies to."""
        out = ["base", "budget"]
        if Goal.TARGETED in self.cls.goals and self.threat.goal is Goal.UNTARGETED:
            out.append("targeted")
        if self.cls.minimizes:
            out.append("unbounded")
        return out

    def threat_of(self, variant: str) -> ThreatModel:
        threat = self.threat
        n = len(self.bench.x)
        if variant == "budget":
            return threat.with_(queries_per_sample=BUDGET, price_per_query=PRICE)
        if variant == "total":
            total = max(1, round(TOTAL_PER_SAMPLE * n))
            return threat.with_(queries_per_sample=None, queries_total=total)
        if variant == "targeted":
            return threat.with_(goal=Goal.TARGETED)
        if variant == "unbounded":
            return threat.with_(eps=math.inf)
        if variant == "features":
            features = math.prod(self.system.input_shape)
            mutable = tuple(range(features // 4, 3 * features // 4))
            threat = threat.with_(features=FeatureConstraints(mutable))
            if self.cls.access is not Access.GRADIENTS:
                threat = threat.with_(queries_per_sample=FEATURE_QUERIES)
        return threat

    def run(self, variant: str) -> Run:
        """The run of a kind (made once; a run that raised raises the same finding again)."""
        if variant not in self._runs:
            try:
                self._runs[variant] = self._make(variant)
            except Exception as error:
                threat = self.threat_of(variant)
                self._runs[variant] = (
                    f"the {variant} run of {self.who} (threat model {threat.name!r}, "
                    f"{threat.norm.value} eps {threat.eps:g}) {describe_error(error)}"
                )
        made = self._runs[variant]
        if isinstance(made, str):
            raise Findings().stop(made)
        return made

    def _make(self, variant: str) -> Run:
        bench, ids = self.bench, self.ids
        attack = self.attack
        if variant == "batch":
            attack = dataclasses.replace(attack, batch_size=CHUNK)
        threat = self.threat_of(variant)
        oracle = Oracle(bench.system, threat)
        if variant == "budget":
            first = min(5, len(ids))
            for _ in range(SPENT_BEFORE):
                oracle.labels(bench.x[:first], ids[:first])
        x, y, sample_ids = bench.x.clone(), bench.y.clone(), ids.clone()
        spent_before = oracle.queries_of(ids)
        mark = oracle.log.mark()
        planned = attack.planned_queries(oracle)
        result = attack(oracle, x, y, rng=SEED, ids=sample_ids)
        changed = tuple(
            name
            for name, now, then in (("x", x, bench.x), ("y", y, bench.y), ("ids", sample_ids, ids))
            if not torch.equal(now, then)
        )
        return Run(
            variant=variant,
            attack=attack,
            result=result,
            oracle=oracle,
            threat=threat,
            changed=changed,
            x_address=x.data_ptr(),
            spent_before=spent_before,
            mark=mark,
            planned=planned,
        )


# ---------------------------------------------------------------- the system's own view
def system_verdict(system: System, x: Tensor) -> tuple[Tensor, Tensor]:
    """The system's predictions on ``x`` (``-1`` refused, ``-2`` abstained) and its probability
    of the predicted class (NaN where it did not decide), on the CPU."""
    verdict = system.answer(x)
    values = verdict.values.detach().cpu()
    predictions = values.nan_to_num(-math.inf).argmax(1)
    predictions[verdict.mask("abstained")] = ABSTAINED
    predictions[verdict.mask("refused")] = REFUSED
    probs = as_probabilities(values.double(), system.output)
    confidence = probs.gather(1, predictions.clamp_min(0)[:, None]).squeeze(1)
    confidence[predictions < 0] = math.nan
    return predictions, confidence
