"""The evasion attack base: adversarial inputs at test time.

An evasion attack is called as ``attack(oracle, x, y, rng=seed)``. Subclasses implement only
``_run``, which sees an :class:`~mallory.access.view.OracleView` and returns candidate
adversarial inputs; the base class does the rest, the same way for every attack:

* refuses, before anything runs, an attack that needs more access than the threat model grants,
  or a norm or goal it does not support;
* validates the inputs, labels and targets (and draws random targets from the seed);
* splits the batch into ``batch_size`` chunks (per-sample random streams make the outcome
  independent of that split);
* enforces the perturbation set and the input bounds on what ``_run`` returns;
* asks the judge (:mod:`mallory.access.judge`), not the attack, whether each sample is broken:
  by a majority over draws for a randomized system; a clean input the judge already finds
  wrong is a success at distance 0;
* reports distances, confidence, and what the event log recorded: queries and gradient
  evaluations per sample, refusals and why, the judge's own queries (never the attacker's);
* raises flags where the numbers are doubtful: gradients that were zero or not finite on most
  samples, a budget smaller than the attack plans to spend, a system that stopped answering.
"""

from __future__ import annotations

import math
import time
from enum import IntEnum
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from mallory import flags
from mallory.access.events import Reason
from mallory.access.judge import Judge
from mallory.access.oracle import REFUSED, Access, Oracle
from mallory.access.record import Record
from mallory.access.view import OracleView
from mallory.attacks.base import Attack, Kind, attack_class, list_attacks
from mallory.attacks.evasion.result import AttackResult
from mallory.attacks.inputs import as_ids, as_inputs, as_labels
from mallory.attacks.noise import Noise
from mallory.errors import InputError, SystemFailure
from mallory.flags import Flag
from mallory.threat import Goal, Norm, Targets
from mallory.threat.perturbation import distances, norm_of, project

ZERO_GRADIENT_SHARE = 0.5  # flag when this share of the samples mostly saw zero gradients


class Family(IntEnum):
    """What kind of attacker an attack assumes, in the order of what it costs the attacker:
    a campaign runs the cheap tricks first and white-box gradients last."""

    TRICK = 0  # zero-knowledge transformations anyone can try (noise, blur, feature edits)
    DECISION = 1  # query attacks that see only the predicted label
    SCORE = 2  # query attacks that see the scores
    TRANSFER = 3  # a surrogate model built by the attacker, then a few queries
    GRADIENT = 4  # white-box: the model's gradients

    @staticmethod
    def of_access(access: Access) -> Family:
        return {
            Access.LABELS: Family.DECISION,
            Access.SCORES: Family.SCORE,
            Access.GRADIENTS: Family.GRADIENT,
        }[access]


_EXPERTISE = {
    Family.TRICK: "none",
    Family.DECISION: "low",
    Family.SCORE: "low",
    Family.TRANSFER: "medium",
    Family.GRADIENT: "high",
}


class EvasionAttack(Attack):
    """Base of every evasion attack. See the module docstring for what it does around ``_run``.

    Class metadata: ``norms`` and ``goals`` it supports, ``minimizes`` (it searches for a
    minimal perturbation, so eps may be inf), ``family`` (None: derived from ``access``).
    """

    kind = Kind.EVASION
    norms: ClassVar[frozenset[Norm]] = frozenset(Norm)
    goals: ClassVar[frozenset[Goal]] = frozenset(Goal)
    minimizes: ClassVar[bool] = False
    family: ClassVar[Family | None] = None
    expertise_level: ClassVar[str | None] = None  # None: derived from the family

    def keeps_closest(self) -> bool:
        """Whether the base may replace a successful output by a closer adversarial query the
        attacker saw. True for minimizing attacks, whose answer is the smallest perturbation;
        an attack whose output must meet more than the threat model's goal (a margin, say)
        returns False, so that its own successes are kept."""
        return self.minimizes

    def planned_queries(self, oracle: Oracle | OracleView) -> int | None:
        """The queries per sample this attack plans to spend with its parameters (None: not
        known in advance). A budget below it is flagged: the attack will stop early."""
        return None

    # ------------------------------------------------------------------ the call
    def __call__(
        self,
        oracle: Oracle,
        x: Tensor | np.ndarray[Any, Any],
        y: Tensor | np.ndarray[Any, Any],
        *,
        rng: int = 0,
        targets: Tensor | np.ndarray[Any, Any] | None = None,
        ids: Tensor | np.ndarray[Any, Any] | None = None,
    ) -> AttackResult:
        """Attack the samples ``x`` with true labels ``y``.

        ``rng`` seeds every random draw (the same seed gives the same result); ``targets`` are
        the target classes when the threat model says ``targets='given'``; ``ids`` name the
        samples in the oracle's event log (default ``0..n-1``), so that budgets carry across
        attacks on the same samples.
        """
        started = time.perf_counter()
        self.check_applicable(oracle)
        threat, judge = oracle.threat, oracle.judge
        x = as_inputs(x, oracle.input_shape, oracle.bounds)
        n = len(x)
        y = as_labels("y", y, n, oracle.num_classes, x.device)
        id_tensor = as_ids(ids, n)
        if isinstance(rng, bool) or not isinstance(rng, int):
            raise InputError(f"rng must be an int seed; got {rng!r}.")
        noise = Noise(rng, id_tensor)
        goal_targets = self._targets(threat.goal, threat.targets, targets, y, noise, oracle)
        mark, judge_mark = oracle.log.mark(), judge.log.mark()
        raised = self._budget_flags(oracle, id_tensor)

        record = Record(x, y, goal_targets, threat.norm, threat.eps, threat.features)
        finished = torch.zeros(n, dtype=torch.bool)
        candidates = x.clone()
        error: str | None = None
        step = self.batch_size or max(n, 1)
        for start in range(0, n, step):
            rows = slice(start, start + step)
            part_ids = id_tensor[rows]
            try:
                candidate = self._run(
                    oracle.bind(part_ids, record.part(rows)),
                    x[rows],
                    y[rows],
                    None if goal_targets is None else goal_targets[rows],
                    noise.bind(part_ids),
                )
            except SystemFailure as failure:
                # keep what was found so far; samples not yet attacked stay as they are
                error = str(failure)
                break
            if not isinstance(candidate, Tensor) or candidate.shape != x[rows].shape:
                got = tuple(candidate.shape) if isinstance(candidate, Tensor) else candidate
                raise RuntimeError(
                    f"{self.name} returned {got!r} for inputs of shape {tuple(x[rows].shape)}"
                )
            candidates[rows] = candidate.detach().to(x)
            finished[rows] = True
        candidates = torch.where(torch.isfinite(candidates), candidates, x)
        if threat.features is not None:
            candidates = threat.features.apply(candidates, x)
        candidates = project(candidates, x, threat.norm, threat.eps, oracle.bounds)
        agreement: Tensor | None
        try:
            verdict = _judge_with_record(
                judge,
                candidates,
                x,
                y,
                id_tensor,
                goal_targets,
                record,
                closest=self.keeps_closest(),
            )
            x_adv, success, predictions, confidence, agreement = verdict
        except SystemFailure as failure:
            error = error or str(failure)
            x_adv, success, predictions, confidence = _verdict_from_record(x, record)
            agreement = None
            finished &= record.found  # unjudged samples: outcome unknown
        spent = oracle.log.per_sample(id_tensor, since=mark)
        refusals = oracle.log.reasons(since=mark)
        raised += self._gradient_flags(
            spent.gradients, spent.zero_gradients, spent.nonfinite_gradients
        )
        raised += _stop_flags(refusals, oracle)
        raised += judge.flags
        d = distances(x_adv, x)
        return AttackResult(
            attack=self.name,
            params=self.params(),
            threat=threat,
            ids=id_tensor,
            x_adv=x_adv,
            labels=y,
            targets=goal_targets,
            success=success,
            predictions=predictions,
            confidence=confidence,
            l0=d[Norm.L0],
            l2=d[Norm.L2],
            linf=d[Norm.LINF],
            queries=spent.queries,
            gradients=spent.gradients,
            seconds=time.perf_counter() - started,
            interrupted=~finished,
            error=error,
            agreement=agreement if judge.randomized else None,
            refused=spent.refused,
            refusals={reason.text: count for reason, count in refusals.items()},
            evaluator_queries=judge.log.totals(since=judge_mark).queries,
            flags=flags.unique(raised),
        )

    def _run(
        self,
        oracle: OracleView,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        noise: Noise,
    ) -> Tensor:
        """Candidate adversarial inputs for a batch; ``targets`` is None when untargeted."""
        raise NotImplementedError

    # ------------------------------------------------------------------ flags
    def _budget_flags(self, oracle: Oracle, ids: Tensor) -> list[Flag]:
        planned = self.planned_queries(oracle)
        if planned is None or not len(ids):
            return []
        left = oracle.remaining_of(ids)
        allowed = float(left.max())
        if allowed >= planned:
            return []
        return [
            Flag(
                flags.OVER_BUDGET,
                f"{self.name} plans {planned:,} queries per sample, but at most "
                f"{int(allowed):,} are left to it under the threat model {oracle.threat.name!r}: "
                "it stops early, and its figures are those of a smaller attack. Raise the budget "
                "or size the attack to it.",
            )
        ]

    def _gradient_flags(self, gradients: Tensor, zero: Tensor, nonfinite: Tensor) -> list[Flag]:
        used = gradients > 0
        if not bool(used.any()):
            return []
        out = []
        masked = ((zero + nonfinite) * 2 >= gradients) & used
        share = float(masked.double().sum() / used.double().sum())
        if share >= ZERO_GRADIENT_SHARE:
            out.append(
                Flag(
                    flags.ZERO_GRADIENTS,
                    f"{self.name} saw zero or non-finite gradients on {share:.0%} of the samples "
                    "it attacked (at least half of their gradient queries): the gradients are "
                    "masked, saturated or obfuscated, and robust accuracy under this attack is "
                    "an upper bound, not a measurement. Try loss='margin' on the logits, BPDA "
                    "for non-differentiable stages, and black-box attacks.",
                )
            )
        broken = int((nonfinite > 0).sum())
        if broken:
            out.append(
                Flag(
                    flags.NONFINITE_GRADIENTS,
                    f"{self.name} got NaN or infinite gradients for {broken} samples (answered "
                    "as zero): the loss overflows or the system divides by zero somewhere.",
                )
            )
        return out

    # ------------------------------------------------------------------ checks
    def check_applicable(self, oracle: Oracle) -> None:
        """Raise before anything runs if this attack cannot run under the oracle's threat model."""
        if not isinstance(oracle, Oracle):
            raise InputError(
                f"{self.name} must be called with a mallory Oracle; got {type(oracle).__name__}. "
                "Build one with mallory.Oracle(system, threat_model)."
            )
        oracle.require(self.access, self.name)
        threat = oracle.threat
        if threat.norm not in self.norms:
            norms = ", ".join(sorted(n.value for n in self.norms))
            raise InputError(
                f"{self.name} works in {norms}; the threat model {threat.name!r} uses "
                f"{threat.norm.value}. Pick a threat model with norm={norms.split(', ')[0]!r}."
            )
        if threat.goal not in self.goals:
            raise InputError(
                f"{self.name} supports only the {'/'.join(g.value for g in self.goals)} goal; the "
                f"threat model {threat.name!r} is {threat.goal.value}."
            )
        if not self.minimizes and math.isinf(threat.eps):
            raise InputError(
                f"{self.name} needs a finite eps: it searches inside the ball of radius eps. "
                "Give the threat model an eps (e.g. white_box('linf', 0.3))."
            )

    def _targets(
        self,
        goal: Goal,
        source: Targets,
        given: Tensor | np.ndarray[Any, Any] | None,
        y: Tensor,
        noise: Noise,
        oracle: Oracle,
    ) -> Tensor | None:
        classes = oracle.num_classes
        if goal is Goal.UNTARGETED:
            if given is not None:
                raise InputError(
                    "targets were given, but the threat model is untargeted. Use a threat model "
                    "with goal='targeted', targets='given'."
                )
            return None
        if source is Targets.GIVEN:
            if given is None:
                raise InputError(
                    "The threat model says targets='given', but no targets= were passed. Pass one "
                    "target class per sample, or use targets='random'."
                )
            t = as_labels("targets", given, len(y), classes, y.device)
            if bool((t == y).any()):
                raise InputError(
                    f"targets equal the true label for {int((t == y).sum())} samples; a target "
                    "must be a wrong class."
                )
            return t
        if given is not None:
            raise InputError("targets were given, but the threat model says targets='random'.")
        shift = 1 + noise.fold("targets").integers(classes - 1, device=y.device)
        return (y + shift) % classes

    # ------------------------------------------------------------------ description
    @classmethod
    def attacker_family(cls) -> Family:
        """The attacker this attack assumes (campaigns order attacks by it)."""
        return cls.family if cls.family is not None else Family.of_access(cls.access)

    @classmethod
    def expertise(cls) -> str:
        """The expertise it assumes of its attacker (its one-off price in the economics):
        ``none`` (the cheap tricks), ``low`` (a query tool), ``medium`` (a surrogate to build),
        ``high`` (white-box: the model and the skill to attack it)."""
        if cls.expertise_level is not None:
            return cls.expertise_level
        return _EXPERTISE[cls.attacker_family()]

    @classmethod
    def _describe_more(cls) -> dict[str, Any]:
        return {
            "norms": sorted(n.value for n in cls.norms),
            "goals": sorted(g.value for g in cls.goals),
            "minimizes": cls.minimizes,
            "family": cls.attacker_family().name.lower(),
            "expertise": cls.expertise(),
        }


def _stop_flags(refusals: dict[Reason, int], oracle: Oracle) -> list[Flag]:
    by_system = {
        reason: count
        for reason, count in refusals.items()
        if reason not in (Reason.BUDGET, Reason.SHARE, Reason.NONE)
    }
    if not by_system:
        return []
    why = ", ".join(f"{count:,} rows {reason.text}" for reason, count in by_system.items())
    return [
        Flag(
            flags.STOPPED_BY_SYSTEM,
            f"The system {oracle.name!r} refused queries during the attack ({why}); the attack "
            "went on with what it was answered, and its results are partial where it was stopped.",
        )
    ]


def _success(predictions: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
    """A refusal or an abstention (negative predictions) is never a success."""
    decided = predictions >= 0
    return decided & (predictions != y if targets is None else predictions == targets)


Verdict = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


def _judge_with_record(
    judge: Judge,
    candidates: Tensor,
    x: Tensor,
    y: Tensor,
    ids: Tensor,
    targets: Tensor | None,
    record: Record,
    *,
    closest: bool,
) -> Verdict:
    """The judge's verdict on the candidates, improved by the record where it holds the only
    adversarial input the attacker saw, or (``closest``, see
    :meth:`EvasionAttack.keeps_closest`) a closer one.

    A bounded attack's own success is kept even when a closer one was seen: its output is
    what the attacker chose (deep inside the wrong class, say, which transfers better)."""
    if not len(x):
        empty = torch.zeros(0, dtype=torch.float64)
        return candidates, torch.zeros(0, dtype=torch.bool), y.clone(), empty, empty
    # a clean input the judge already finds wrong (or on target) is a success at distance 0
    clean = judge.clean(x, ids, y)
    clean_ok = _success(clean.predictions.to(y.device), y, targets)
    if bool(clean_ok.any()):
        candidates = torch.where(clean_ok.view(-1, *[1] * (x.dim() - 1)), x, candidates)
    verdict = judge.judge(candidates, ids, y)
    predictions = verdict.predictions.to(y.device)
    confidence, agreement = verdict.confidence.clone(), verdict.agreement.clone()
    if bool(clean_ok.any()):
        # the clean verdict stands for those samples, whatever a fresh draw says
        where = clean_ok.cpu()
        predictions[clean_ok] = clean.predictions.to(y.device)[clean_ok]
        confidence[where], agreement[where] = clean.confidence[where], clean.agreement[where]
    success = _success(predictions, y, targets)
    distance = norm_of(candidates - x, record.norm).double()
    swap = record.found & ~success
    if closest:
        swap |= record.found & (record.distance < distance)
    if bool(swap.any()):
        rows = swap.nonzero().squeeze(1)
        alt = judge.judge(record.best[rows], ids[rows.cpu()], y[rows])
        alt_pred = alt.predictions.to(y.device)
        alt_ok = _success(alt_pred, y[rows], None if targets is None else targets[rows])
        take = alt_ok | ~success[rows]  # never trade a success for a failure
        keep = take.cpu()
        rows, alt_pred, alt_ok = rows[take], alt_pred[take], alt_ok[take]
        candidates = candidates.clone()
        candidates[rows] = record.best[rows]
        predictions[rows], success[rows] = alt_pred, alt_ok
        confidence[rows.cpu()] = alt.confidence[keep]
        agreement[rows.cpu()] = alt.agreement[keep]
    # a system that refuses the judge as well (a remote API that banned this client): what
    # the attacker saw the system answer before is the only evidence left
    unheard = (predictions == REFUSED) & record.found.to(y.device) & ~success
    if bool(unheard.any()):
        rows = unheard.nonzero().squeeze(1)
        candidates = candidates.clone()
        candidates[rows] = record.best[rows]
        predictions[rows] = record.label[rows].to(predictions)
        success[rows] = _success(
            predictions[rows], y[rows], None if targets is None else targets[rows]
        )
        confidence[rows.cpu()] = record.confidence[rows].to(confidence)
        agreement[rows.cpu()] = math.nan
    return candidates, success, predictions, confidence, agreement


def _verdict_from_record(x: Tensor, record: Record) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """When the system can no longer answer: what the attacker saw is all there is."""
    found = record.found
    x_adv = torch.where(found.view(-1, *[1] * (x.dim() - 1)), record.best, x)
    return x_adv, found.clone(), record.label.clone(), record.confidence.clone()


def evasion_class(name: str) -> type[EvasionAttack]:
    """The evasion attack registered as ``name`` (another kind is an error that says so)."""
    cls = attack_class(name)
    if not issubclass(cls, EvasionAttack):
        raise InputError(
            f"{name!r} is a {cls.kind.value} attack, not an evasion attack; evasion attacks: "
            f"{', '.join(list_attacks(Kind.EVASION))}."
        )
    return cls
