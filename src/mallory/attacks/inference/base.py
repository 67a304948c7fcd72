"""The membership-inference base: tell training records from others, through queries.

An inference attack is called as ``attack(oracle, x, y, members=..., rng=seed)``: candidate
records and, when the evaluator knows it, which of them were in the training set. Its queries
go through a view of the oracle like every attack's, so they are counted and budgeted per
record. The result scores each record (higher: more likely a member) and, with ground truth,
gives the attack's AUC and its advantage (the best true-positive rate minus false-positive
rate over thresholds).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mallory.access.oracle import Oracle
from mallory.access.view import OracleView
from mallory.attacks.base import Attack, Kind
from mallory.attacks.inputs import as_ids, as_inputs, as_labels
from mallory.errors import InputError, SystemFailure


@dataclass(frozen=True, eq=False)
class InferenceResult:
    """Per record: the membership ``score`` and the ``queries`` spent; ``members`` is the
    ground truth when it was given; ``auc`` and ``advantage`` are NaN without it."""

    attack: str
    params: dict[str, Any]
    ids: Tensor
    score: Tensor
    queries: Tensor
    members: Tensor | None
    auc: float
    advantage: float
    seconds: float
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "params": self.params,
            "records": len(self.score),
            "auc": self.auc,
            "advantage": self.advantage,
            "queries_total": int(self.queries.sum()),
            "seconds": self.seconds,
            "error": self.error,
        }


class InferenceAttack(Attack):
    """Base of every membership-inference attack: implement :meth:`_score`."""

    kind = Kind.INFERENCE

    def __call__(
        self,
        oracle: Oracle,
        x: Tensor | np.ndarray[Any, Any],
        y: Tensor | np.ndarray[Any, Any],
        *,
        members: Tensor | np.ndarray[Any, Any] | None = None,
        ids: Tensor | np.ndarray[Any, Any] | None = None,
        rng: int = 0,
    ) -> InferenceResult:
        if not isinstance(oracle, Oracle):
            raise InputError(
                f"{self.name} must be called with a mallory Oracle; got {type(oracle).__name__}."
            )
        oracle.require(self.access, self.name)
        x = as_inputs(x, oracle.input_shape, oracle.bounds)
        y = as_labels("y", y, len(x), oracle.num_classes, x.device)
        id_tensor = as_ids(ids, len(x))
        truth = None
        if members is not None:
            truth = torch.as_tensor(members).to("cpu")
            if truth.shape != (len(x),) or truth.dtype != torch.bool:
                raise InputError(f"members must be {len(x)} booleans, one per record.")
        started, mark = time.perf_counter(), oracle.log.mark()
        error = None
        try:
            score = self._score(oracle.bind(id_tensor), x, y, rng).double().cpu()
        except SystemFailure as failure:
            error, score = str(failure), torch.full((len(x),), math.nan, dtype=torch.float64)
        spent = oracle.log.per_sample(id_tensor, since=mark)
        auc, advantage = (math.nan, math.nan) if truth is None else _auc_advantage(score, truth)
        return InferenceResult(
            attack=self.name,
            params=self.params(),
            ids=id_tensor,
            score=score,
            queries=spent.queries,
            members=truth,
            auc=auc,
            advantage=advantage,
            seconds=time.perf_counter() - started,
            error=error,
        )

    def _score(self, oracle: OracleView, x: Tensor, y: Tensor, rng: int) -> Tensor:
        raise NotImplementedError


def _auc_advantage(score: Tensor, members: Tensor) -> tuple[float, float]:
    """The ROC AUC of ``score`` for ``members`` (ties count half) and the membership
    advantage, max over thresholds of TPR - FPR."""
    finite = torch.isfinite(score)
    score, members = score[finite], members[finite]
    positives, negatives = int(members.sum()), int((~members).sum())
    if not positives or not negatives:
        return math.nan, math.nan
    order = torch.argsort(score, descending=True, stable=True)
    ranked = members[order]
    tpr = torch.cumsum(ranked.double(), 0) / positives
    fpr = torch.cumsum((~ranked).double(), 0) / negatives
    advantage = float((tpr - fpr).max().clamp_min(0.0))
    greater = (score[members][:, None] > score[~members][None, :]).double()
    equal = (score[members][:, None] == score[~members][None, :]).double()
    auc = float((greater + 0.5 * equal).mean())
    return auc, advantage
