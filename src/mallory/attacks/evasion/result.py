"""AttackResult: everything an attack produced and what it cost, per sample."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mallory.flags import Flag
from mallory.jsonable import plain
from mallory.threat import Goal, Norm, ThreatModel


@dataclass(frozen=True, eq=False)
class AttackResult:
    """The outcome of one attack on a batch; every tensor has one row per sample.

    ``success`` is decided by the judge on ``x_adv`` (after the perturbation set and bounds
    were enforced): a wrong label (untargeted) or the target label (targeted), by a majority
    over draws for a randomized system (``agreement``: the share of draws that gave the
    prediction; None for a deterministic system). A refusal (prediction ``-1``) or an
    abstention (``-2``) is never a success. A clean input the judge already finds wrong counts
    as a success at distance 0. ``queries`` and ``gradients`` are what the oracle's event log
    charged to each sample during this attack, ``refused`` the rows refused before reaching
    the system, and ``refusals`` those rows by reason; ``cost`` is queries times the threat
    model's price per query. ``evaluator_queries`` counts the judge's own rows (never the
    attacker's). ``confidence`` is the system's probability of its predicted class on
    ``x_adv``. Where the attacker saw, among its own queries, an adversarial input closer than
    the attack's final output, that input is the result (nothing seen is lost). ``flags`` are
    findings that make the numbers doubtful (see :mod:`mallory.flags`).

    When the system failed during the attack, ``error`` says how, ``interrupted`` marks the
    samples whose attack was cut short, and their outcome is what the attacker had seen by then
    (if the system could not even judge, predictions are the labels it last answered, -1 where
    none, and confidence is NaN where only labels were seen).
    """

    attack: str
    params: dict[str, Any]
    threat: ThreatModel
    ids: Tensor
    x_adv: Tensor
    labels: Tensor
    targets: Tensor | None
    success: Tensor
    predictions: Tensor
    confidence: Tensor
    l0: Tensor
    l2: Tensor
    linf: Tensor
    queries: Tensor
    gradients: Tensor
    seconds: float
    interrupted: Tensor | None = None
    error: str | None = None
    agreement: Tensor | None = None
    refused: Tensor | None = None
    refusals: dict[str, int] = field(default_factory=dict)
    evaluator_queries: int = 0
    flags: tuple[Flag, ...] = ()

    def __len__(self) -> int:
        return len(self.success)

    @staticmethod
    def concat(parts: list[AttackResult]) -> AttackResult:
        """One result from the results of the same attack on consecutive chunks of samples."""
        if not parts:
            raise ValueError("concat needs at least one result")
        first = parts[0]
        if any(p.attack != first.attack or p.threat != first.threat for p in parts):
            raise ValueError("concat joins results of one attack under one threat model")

        def cat(name: str) -> Tensor:
            return torch.cat([getattr(p, name) for p in parts])

        return AttackResult(
            attack=first.attack,
            params=first.params,
            threat=first.threat,
            ids=cat("ids"),
            x_adv=cat("x_adv"),
            labels=cat("labels"),
            targets=None if first.targets is None else cat("targets"),
            success=cat("success"),
            predictions=cat("predictions"),
            confidence=cat("confidence"),
            l0=cat("l0"),
            l2=cat("l2"),
            linf=cat("linf"),
            queries=cat("queries"),
            gradients=cat("gradients"),
            seconds=sum(p.seconds for p in parts),
            interrupted=torch.cat([p.interrupted_mask for p in parts]),
            error="; ".join(p.error for p in parts if p.error) or None,
            agreement=None
            if any(p.agreement is None for p in parts)
            else torch.cat([p.agreement for p in parts if p.agreement is not None]),
            refused=torch.cat([p.refused_rows for p in parts]),
            refusals=_sum_counts([p.refusals for p in parts]),
            evaluator_queries=sum(p.evaluator_queries for p in parts),
            flags=tuple(dict.fromkeys(f for p in parts for f in p.flags)),
        )

    @property
    def interrupted_mask(self) -> Tensor:
        """Samples whose attack a system failure cut short (all False when none)."""
        if self.interrupted is None:
            return torch.zeros(len(self), dtype=torch.bool)
        return self.interrupted

    @property
    def refused_rows(self) -> Tensor:
        """Rows refused before reaching the system, per sample (zeros when none)."""
        if self.refused is None:
            return torch.zeros(len(self), dtype=torch.int64)
        return self.refused

    @property
    def cost(self) -> Tensor:
        """Money spent per sample."""
        return self.queries.double() * self.threat.price_per_query

    def distance(self, norm: Norm) -> Tensor:
        return {Norm.L0: self.l0, Norm.L2: self.l2, Norm.LINF: self.linf}[Norm(norm)]

    @property
    def success_rate(self) -> float:
        return float(self.success.double().mean()) if len(self) else math.nan

    @property
    def robust_accuracy(self) -> float:
        """Share of the samples fully attacked that the attack did not break (untargeted goal
        only). Samples a system failure left unattacked are not counted as robust: NaN when
        no sample was fully attacked."""
        if self.threat.goal is not Goal.UNTARGETED:
            raise ValueError("robust accuracy is defined for untargeted attacks; use success_rate")
        done = ~self.interrupted_mask
        if not bool(done.any()):
            return math.nan
        return 1.0 - float(self.success[done].double().mean())

    def median_distance(self, norm: Norm) -> float:
        """Median distance over the successful samples (NaN when none succeeded)."""
        values = self.distance(norm)[self.success]
        return float(values.median()) if len(values) else math.nan

    def summary(self) -> dict[str, Any]:
        """Headline numbers, JSON-ready."""
        n = len(self)
        out: dict[str, Any] = {
            "attack": self.attack,
            "params": self.params,
            "threat": self.threat.to_dict(),
            "samples": n,
            "success_rate": self.success_rate,
            "median_l0": self.median_distance(Norm.L0),
            "median_l2": self.median_distance(Norm.L2),
            "median_linf": self.median_distance(Norm.LINF),
            "queries_total": int(self.queries.sum()),
            "queries_mean": float(self.queries.double().mean()) if n else math.nan,
            "gradients_total": int(self.gradients.sum()),
            "cost_total": float(self.cost.sum()),
            "seconds": self.seconds,
            "mean_confidence_on_success": float(self.confidence[self.success].mean())
            if bool(self.success.any())
            else math.nan,
            "interrupted": int(self.interrupted_mask.sum()),
            "error": self.error,
            "refused_total": int(self.refused_rows.sum()),
            "refusals": dict(self.refusals),
            "evaluator_queries": self.evaluator_queries,
            "mean_agreement": float(self.agreement.double().mean())
            if self.agreement is not None and len(self)
            else None,
            "flags": [f.to_dict() for f in self.flags],
        }
        if self.threat.goal is Goal.UNTARGETED:
            out["robust_accuracy"] = self.robust_accuracy
        return out

    def to_dict(self, *, inputs: bool = False) -> dict[str, Any]:
        """Summary plus per-sample outcomes; ``inputs=True`` adds the adversarial inputs."""
        per_sample: dict[str, Any] = {
            "id": self.ids.tolist(),
            "label": self.labels.tolist(),
            "success": self.success.tolist(),
            "prediction": self.predictions.tolist(),
            "confidence": self.confidence.tolist(),
            "l0": self.l0.tolist(),
            "l2": self.l2.tolist(),
            "linf": self.linf.tolist(),
            "queries": self.queries.tolist(),
            "gradients": self.gradients.tolist(),
        }
        if self.agreement is not None:
            per_sample["agreement"] = self.agreement.tolist()
        if self.refused is not None:
            per_sample["refused"] = self.refused.tolist()
        if self.targets is not None:
            per_sample["target"] = self.targets.tolist()
        if inputs:
            per_sample["x_adv"] = self.x_adv.tolist()
        return {"summary": plain(self.summary()), "samples": per_sample}


def _sum_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in counts:
        for key, value in part.items():
            out[key] = out.get(key, 0) + value
    return out
