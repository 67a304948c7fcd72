"""The record an oracle view keeps of what the attacker has already seen.

Every answer the system gives is evidence: when a query inside the perturbation set comes back
with the attacker's goal reached (a wrong label, or the target), the attacker has found an
adversarial input, whatever the attack does next. The record keeps, per sample, the closest
such input (in the threat model's norm), the label the system gave, and its confidence when
scores were seen. The attack base uses it so that no success the attacker saw is ever lost: an
attack whose last iterate is worse than an earlier query, or one cut short by a failing system,
still reports what was found.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from mallory.threat import Norm
from mallory.threat.features import FeatureConstraints
from mallory.threat.perturbation import norm_of

# Slack on the ball's radius, for float round-off in the attacks' own projections.
EPS_SLACK = 1e-6


class Record:
    """Best adversarial input seen per row of a batch, from the system's own answers."""

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        norm: Norm,
        eps: float,
        features: FeatureConstraints | None = None,
    ) -> None:
        self.x = x
        self.features = features
        self.y = y
        self.targets = targets
        self.norm = norm
        self.limit = eps * (1 + EPS_SLACK) + EPS_SLACK if math.isfinite(eps) else math.inf
        n = len(x)
        self.best = x.clone()
        self.distance = torch.full((n,), math.inf, dtype=torch.float64, device=x.device)
        self.label = torch.full((n,), -1, dtype=torch.int64, device=x.device)
        self.confidence = torch.full((n,), math.nan, dtype=torch.float64, device=x.device)

    def part(self, rows: slice) -> Record:
        """The record of a slice of the batch, sharing storage with this one."""
        part = Record.__new__(Record)
        part.x, part.y = self.x[rows], self.y[rows]
        part.targets = None if self.targets is None else self.targets[rows]
        part.norm, part.limit, part.features = self.norm, self.limit, self.features
        part.best, part.distance = self.best[rows], self.distance[rows]
        part.label, part.confidence = self.label[rows], self.confidence[rows]
        return part

    @property
    def found(self) -> Tensor:
        """Rows for which an adversarial input was seen."""
        return torch.isfinite(self.distance)

    def see(
        self,
        x: Tensor,
        rows: Tensor | None,
        labels: Tensor,
        confidence: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        """Take note of answers: ``labels`` (-1 for refused rows) for inputs ``x``;
        ``confidence`` gives the confidence of the answers at given positions (called only
        for the answers kept).
        """
        labels = labels.to(self.y.device)
        wanted = self.y if self.targets is None else self.targets
        goal = wanted if rows is None else wanted[rows.to(wanted.device)]
        hit = (labels != goal) if self.targets is None else (labels == goal)
        hit &= labels >= 0
        if not bool(hit.any()):
            return
        rows_t = (
            torch.arange(len(self.x), device=self.x.device) if rows is None else rows.to(x.device)
        )
        if bool(hit.all()):
            # the usual case once an attack has broken its batch: no gathers of whole inputs
            where, r = torch.arange(len(hit), device=hit.device), rows_t
            d = norm_of(x - (self.x if rows is None else self.x[r]), self.norm).double()
        else:
            where = hit.nonzero().squeeze(1)
            r = rows_t[where]
            d = norm_of(x[where] - self.x[r], self.norm).double()
        better = (d <= self.limit) & (d < self.distance[r])
        if self.features is not None:
            # only edits the attacker may make count
            allowed = self.features.apply(x[where], self.x[r])
            better &= (allowed - x[where]).flatten(1).abs().amax(1) <= 1e-6
        if not bool(better.any()):
            return
        where, r, d = where[better], r[better], d[better]
        # several candidates of one row in a call: keep the closest
        best_d = self.distance.clone().scatter_reduce_(0, r, d, "amin")
        keep = d == best_d[r]
        where, r = where[keep], r[keep]
        self.distance[r] = d[keep]
        self.best[r] = x[where].to(self.best)
        self.label[r] = labels[where]
        if confidence is not None:
            self.confidence[r] = confidence(where).to(self.confidence)
        else:
            self.confidence[r] = math.nan
