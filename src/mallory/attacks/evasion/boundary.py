"""The Boundary attack: a random walk along the decision boundary towards the clean input."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from mallory.access.oracle import Access, Oracle
from mallory.access.view import OracleView
from mallory.attacks.base import register
from mallory.attacks.evasion.base import EvasionAttack
from mallory.attacks.evasion.starts import LabelProbe, boundary_search, distance, find_starts
from mallory.attacks.noise import Noise
from mallory.attacks.params import flag, integer, real
from mallory.threat import Norm

# Relative tolerance of the bisection from the starting point towards the clean input.
_START_TOLERANCE = 1e-3
# A sample whose step towards the clean input shrank below this has converged.
_CONVERGED = 1e-7
# Success rates that make the step sizes grow (above the first) or shrink (below the second).
_GROW, _SHRINK = 0.5, 0.2


@register("boundary")
@dataclass(frozen=True, kw_only=True)
class BoundaryAttack(EvasionAttack):
    """Start from an adversarial input and walk along the boundary, closer to the clean input.

    Brendel, Rauber and Bethge, "Decision-Based Adversarial Attacks: Reliable Attacks Against
    Black-Box Machine Learning Models", ICLR 2018.

    Threat model: labels only (any exposure); L2; untargeted or targeted; eps may be ``inf``
    (it minimizes the perturbation; with a finite eps a sample stops as soon as it is
    adversarial inside the ball).

    Each sample starts from an input that already reaches the goal (see
    :mod:`mallory.attacks.evasion.starts`), bisected towards the clean input ``o``. Each step then
    draws ``candidates`` proposals from the current point ``x`` at distance ``r = ||x - o||``:

    1. an orthogonal step: Gaussian noise, made orthogonal to ``x - o`` and scaled to length
       ``spherical_step * r``, then projected back onto the sphere of radius ``r`` around
       ``o`` (and clipped into the bounds);
    2. for each orthogonal candidate that is still adversarial, a step towards ``o`` that
       brings it to distance ``(1 - source_step) r``.

    The closest adversarial candidate of step 2 becomes the new point. Every ``window`` steps
    each sample adjusts its step sizes, as in the paper's trust-region rule: the orthogonal
    step grows by ``step_adaptation`` when more than half of its candidates stayed
    adversarial and shrinks when fewer than a fifth did; the step towards ``o`` does the same
    with the success rate of step 2. A sample has converged when its step towards ``o`` falls
    below 1e-7.

    All samples still standing move in lockstep; each step's orthogonal candidates of every
    sample go in one label call, their steps towards ``o`` in a second.

    Cost: one query per sample for the clean input, a few for the start, about 10 for the
    bisection, then ``candidates`` plus one per adversarial orthogonal candidate each step,
    at most ``min(max_queries, remaining)`` in all. Deterministic given the seed; with
    ``batch_starts`` the starting point depends on which samples share the batch.

    Args:
        max_queries: queries per sample at most (5000), capped by the threat model's budget.
        spherical_step: first length of the orthogonal step, relative to the distance (0.01).
        source_step: first length of the step towards the clean input, relative (0.01).
        candidates: proposals per sample and step (10).
        step_adaptation: factor by which the step sizes grow or shrink (1.5).
        window: steps between two adjustments of the step sizes (10).
        batch_starts: look for starting points among the other inputs of the batch (True);
            False starts from noise only, so the outcome no longer depends on the batch.

    Example::

        result = create("boundary")(Oracle(model, label_only("l2", queries=5000)), x, y)
        result.l2[result.success].median()
    """

    access = Access.LABELS
    norms = frozenset({Norm.L2})
    minimizes = True
    # quick on a tiny model; starts drawn from the batch depend on it by design, so they are
    # off where tests check that batching changes nothing
    fast: ClassVar[dict[str, Any]] = {"max_queries": 200, "batch_starts": False}
    paper = (
        "Brendel, Rauber and Bethge, Decision-Based Adversarial Attacks: Reliable Attacks "
        "Against Black-Box Machine Learning Models, ICLR 2018"
    )

    max_queries: int = integer(
        5000, low=1, help="queries per sample at most (capped by the threat model's budget)"
    )
    spherical_step: float = real(
        0.01, low=0.0, low_open=True, help="first orthogonal step, relative to the distance"
    )
    source_step: float = real(
        0.01,
        low=0.0,
        low_open=True,
        high=1.0,
        help="first step towards the clean input, relative to the distance",
    )
    candidates: int = integer(10, low=1, help="proposals per sample and step")
    step_adaptation: float = real(
        1.5, low=1.0, low_open=True, help="factor by which the step sizes grow or shrink"
    )
    window: int = integer(10, low=1, help="steps between two adjustments of the step sizes")
    batch_starts: bool = flag(
        True,
        help="start from other inputs of the batch (the outcome then depends on the batch)",
    )

    def planned_queries(self, oracle: Oracle | OracleView) -> int | None:
        return self.max_queries

    def _run(
        self, oracle: OracleView, x: Tensor, y: Tensor, targets: Tensor | None, noise: Noise
    ) -> Tensor:
        norm = Norm.L2
        probe = LabelProbe(oracle, y, targets, self.max_queries)
        starts, found = find_starts(probe, x, noise, batch=self.batch_starts)
        out = torch.where(found.view(-1, *[1] * (x.dim() - 1)), starts, x)
        stop_at = oracle.eps if math.isfinite(oracle.eps) else 0.0
        rows = (found & (distance(starts, x, norm) > stop_at)).nonzero().squeeze(1)
        if not len(rows):
            return out
        current = boundary_search(probe, x[rows], starts[rows], rows, _START_TOLERANCE)
        out[rows] = current
        dist = distance(current, x[rows], norm)

        n = len(x)
        spherical = torch.full((n,), self.spherical_step, dtype=torch.float64, device=x.device)
        source = torch.full((n,), self.source_step, dtype=torch.float64, device=x.device)
        counts = torch.zeros((4, n), dtype=torch.float64, device=x.device)  # tried/ok, twice
        step = 0
        while True:
            keep = (probe.left[rows] > 0) & (dist > stop_at) & (source[rows] >= _CONVERGED)
            rows, current, dist = rows[keep], current[keep], dist[keep]
            if not len(rows):
                return out
            current, dist = self._step(
                probe, x[rows], current, dist, rows, spherical, source, counts, noise, step
            )
            out[rows] = current
            step += 1
            if step % self.window == 0:
                _adapt(spherical, counts[0], counts[1], self.step_adaptation)
                _adapt(source, counts[2], counts[3], self.step_adaptation)
                source.clamp_(max=1.0)
                counts.zero_()

    def _step(
        self,
        probe: LabelProbe,
        x: Tensor,
        current: Tensor,
        dist: Tensor,
        rows: Tensor,
        spherical: Tensor,
        source: Tensor,
        counts: Tensor,
        noise: Noise,
        step: int,
    ) -> tuple[Tensor, Tensor]:
        """One step of every sample still standing; returns the new points and distances."""
        m, k = len(rows), self.candidates
        shape = x.shape[1:]
        view = (m, 1) + (1,) * len(shape)
        towards = (current - x).unsqueeze(1)  # (m, 1, *shape), length dist
        r = dist.to(x).view(view)
        unit = towards / r
        eta = noise.fold("boundary.step", step).normal(
            (k, *shape), rows, dtype=x.dtype, device=x.device
        )
        eta = eta - (eta * unit).flatten(2).sum(2).view(m, k, *[1] * len(shape)) * unit
        length = eta.flatten(2).norm(dim=2).clamp_min(1e-30).view(m, k, *[1] * len(shape))
        delta = spherical[rows].to(x).view(view)
        eta = eta * (delta * r / length)
        # orthogonal to x - o with length delta r: rescaling by 1/sqrt(1 + delta^2) puts
        # the point back on the sphere of radius r around o
        orbit = probe.oracle.bounds.clamp(x.unsqueeze(1) + (towards + eta) / (1 + delta**2).sqrt())
        allowed = probe.left[rows].clamp(max=k)
        valid = torch.arange(k, device=x.device)[None, :] < allowed[:, None]
        owners = rows[:, None].expand(m, k)
        stays = torch.zeros((m, k), dtype=torch.bool, device=x.device)
        stays[valid] = probe.ask(orbit[valid], owners[valid])

        # each orbit point still adversarial moves to distance (1 - source_step) r
        offset = orbit - x.unsqueeze(1)
        reach = offset.flatten(2).norm(dim=2).clamp_min(1e-30).double()
        goal = (1 - source[rows])[:, None] * dist[:, None]
        scale = (goal / reach).clamp(max=1.0).to(x).view(m, k, *[1] * len(shape))
        closer = x.unsqueeze(1) + offset * scale
        budget = probe.left[rows][:, None]
        tries = stays & (torch.cumsum(stays.long(), 1) <= budget)
        lands = torch.zeros((m, k), dtype=torch.bool, device=x.device)
        lands[tries] = probe.ask(closer[tries], owners[tries])

        counts[0, rows] += valid.sum(1).double()
        counts[1, rows] += stays.sum(1).double()
        counts[2, rows] += tries.sum(1).double()
        counts[3, rows] += lands.sum(1).double()
        gap = (scale.view(m, k).double() * reach).masked_fill(~lands, math.inf)
        best_gap, best = gap.min(1)
        moved = torch.isfinite(best_gap)
        current = torch.where(
            moved.view(-1, *[1] * len(shape)), closer[torch.arange(m), best], current
        )
        dist = torch.where(moved, distance(current, x, Norm.L2), dist)
        return current, dist


def _adapt(size: Tensor, tried: Tensor, succeeded: Tensor, factor: float) -> None:
    """Grow the step sizes whose success rate is high, shrink those whose rate is low (a
    sample that tried nothing in the window shrinks too: none of its proposals qualified)."""
    rate = succeeded / tried.clamp_min(1.0)
    size.mul_(torch.where(rate > _GROW, factor, torch.where(rate < _SHRINK, 1 / factor, 1.0)))
