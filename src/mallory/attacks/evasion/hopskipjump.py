"""HopSkipJump: a decision-based attack that estimates the boundary's normal from labels."""

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
from mallory.errors import InputError
from mallory.threat import Norm

# The most elements (inputs x features) one gradient-estimate query may hold; more samples
# than fit are estimated in several calls, so memory stays bounded for any batch.
_MAX_ELEMENTS = 1 << 22
# Halvings of the step size before giving up on a step (the boundary point itself is
# adversarial, so a small enough step always is, up to the search tolerance).
_MAX_HALVINGS = 20


@register("hopskipjump")
@dataclass(frozen=True, kw_only=True)
class HopSkipJump(EvasionAttack):
    """Walk along the decision boundary towards the clean input, led by a gradient-direction
    estimate made from labels alone.

    Chen, Jordan and Wainwright, "HopSkipJumpAttack: A Query-Efficient Decision-Based Attack",
    IEEE S&P 2020.

    Threat model: labels only (any exposure); L2 or Linf; untargeted or targeted; eps may be
    ``inf`` (it minimizes the perturbation; with a finite eps a sample stops as soon as it is
    adversarial inside the ball).

    Each sample starts from an input that already reaches the goal (see
    :mod:`mallory.attacks.evasion.starts`: the clean input when already misclassified, else the
    closest input of the batch with a fitting label, else uniform noise), bisected towards
    the clean input ``x*`` down to a relative tolerance ``theta = gamma d^(-3/2)`` (L2) or
    ``gamma d^(-2)`` (Linf), ``d`` the number of features. Iteration ``t`` then

    1. estimates the direction of the boundary's normal at the boundary point ``x_t`` from
       ``B_t = min(init_evals sqrt(t), max_evals)`` random unit directions ``u_b`` (uniform on
       the sphere): ``sum_b (phi_b - mean phi) u_b``, where ``phi_b = +1`` if
       ``x_t + delta_t u_b`` is adversarial and -1 if not (no baseline when all agree), with
       ``delta_t = sqrt(d) theta d_(t-1)`` (L2) or ``d theta d_(t-1)`` (Linf), ``d_(t-1)``
       the current distance to ``x*``;
    2. steps along that direction (Linf: its sign) by ``xi_t = ||x_t - x*|| / sqrt(t)``,
       halving ``xi_t`` until the step is still adversarial;
    3. bisects between ``x*`` and the new point again.

    All samples still standing move in lockstep: each step's queries of every sample go in one
    label call (the estimate of a large batch is split so a call holds at most
    ``_MAX_ELEMENTS`` numbers). The closest adversarial input found is returned.

    Cost: one query per sample for the clean input, a few for the start, about
    ``log2(1/theta) + 1`` per bisection (15 on MNIST's 784 features in L2, 20 in Linf), and
    ``B_t`` per estimate; a sample stops when it could no longer pay for an iteration's
    bisection, its budget being ``min(max_queries, remaining)``. Deterministic given the seed;
    with ``batch_starts`` the starting point depends on which samples share the batch.

    Args:
        max_queries: queries per sample at most (1000), capped by the threat model's budget.
        init_evals: random directions of the first gradient estimate, ``B_0`` (100).
        max_evals: the most random directions of one estimate (10,000).
        gamma: scales the bisection tolerance ``theta`` and the probe radius ``delta_t`` (1.0).
        batch_starts: look for starting points among the other inputs of the batch (True);
            False starts from noise only, so the outcome no longer depends on the batch.

    Example::

        result = create("hopskipjump")(Oracle(model, label_only("l2", queries=1000)), x, y)
        result.l2[result.success].median()
    """

    default = True  # run by a campaign that names no attacks
    rank = 0

    access = Access.LABELS
    norms = frozenset({Norm.L2, Norm.LINF})
    minimizes = True
    # quick on a tiny model; starts drawn from the batch depend on it by design, so they are
    # off where tests check that batching changes nothing
    fast: ClassVar[dict[str, Any]] = {"max_queries": 200, "batch_starts": False}
    paper = (
        "Chen, Jordan and Wainwright, HopSkipJumpAttack: A Query-Efficient Decision-Based "
        "Attack, IEEE S&P 2020"
    )

    max_queries: int = integer(
        1000, low=1, help="queries per sample at most (capped by the threat model's budget)"
    )
    init_evals: int = integer(100, low=1, help="random directions of the first estimate (B_0)")
    max_evals: int = integer(10_000, low=1, help="most random directions of one estimate")
    gamma: float = real(1.0, low=0.0, low_open=True, help="scales the bisection tolerance theta")
    batch_starts: bool = flag(
        True,
        help="start from other inputs of the batch (the outcome then depends on the batch)",
    )

    def _check(self) -> None:
        if self.init_evals > self.max_evals:
            raise InputError(
                f"The 'init_evals' parameter of HopSkipJump ({self.init_evals}) must not exceed "
                f"'max_evals' ({self.max_evals}); raise max_evals or lower init_evals."
            )

    def planned_queries(self, oracle: Oracle | OracleView) -> int | None:
        return self.max_queries

    def _run(
        self, oracle: OracleView, x: Tensor, y: Tensor, targets: Tensor | None, noise: Noise
    ) -> Tensor:
        norm = oracle.norm
        probe = LabelProbe(oracle, y, targets, self.max_queries)
        starts, found = find_starts(probe, x, noise, batch=self.batch_starts)
        out = torch.where(found.view(-1, *[1] * (x.dim() - 1)), starts, x)
        d = x[0].numel()
        theta = self.gamma / (d**1.5 if norm is Norm.L2 else d**2)
        probe_scale = math.sqrt(d) * theta if norm is Norm.L2 else d * theta
        bisect_cost = max(1, math.ceil(math.log2(1 / theta))) if theta < 1 else 1
        stop_at = oracle.eps if math.isfinite(oracle.eps) else 0.0

        rows = (found & (distance(starts, x, norm) > stop_at)).nonzero().squeeze(1)
        if not len(rows):
            return out
        current = boundary_search(probe, x[rows], starts[rows], rows, theta)
        dist = distance(current, x[rows], norm)
        out[rows] = current
        best = torch.full((len(x),), math.inf, dtype=torch.float64, device=x.device)
        best[rows] = dist
        t = 1
        while True:
            keep = (probe.left[rows] > bisect_cost) & (dist > stop_at)
            rows, current, dist = rows[keep], current[keep], dist[keep]
            if not len(rows):
                return out
            evals = min(int(self.init_evals * math.sqrt(t)), self.max_evals)
            counts = (probe.left[rows] - bisect_cost).clamp(max=evals)
            direction = _direction(probe, current, rows, counts, dist * probe_scale, noise, t)
            if norm is Norm.LINF:
                direction = direction.sign()
            else:
                length = direction.flatten(1).norm(dim=1).clamp_min(1e-30)
                direction = direction / length.view(-1, *[1] * (x.dim() - 1))
            stepped = _geometric_step(probe, current, rows, direction, dist / math.sqrt(t))
            current = boundary_search(probe, x[rows], stepped, rows, theta)
            dist = distance(current, x[rows], norm)
            closer = dist < best[rows]
            out[rows[closer]] = current[closer]
            best[rows[closer]] = dist[closer]
            t += 1


def _direction(
    probe: LabelProbe,
    points: Tensor,
    rows: Tensor,
    counts: Tensor,
    radius: Tensor,
    noise: Noise,
    key: int,
) -> Tensor:
    """The Monte-Carlo estimate of the boundary's normal at ``points`` (unnormalized).

    Sample ``i`` probes ``counts[i]`` points ``points[i] + radius[i] u`` (``u`` uniform on the
    unit sphere, clipped into the bounds); refused probes are left out of the estimate.
    """
    shape = points.shape[1:]
    features = points[0].numel()
    view = (-1, 1) + (1,) * len(shape)
    total = torch.zeros_like(points)
    per_call = max(1, _MAX_ELEMENTS // max(1, int(counts.max()) * features))
    for first in range(0, len(rows), per_call):
        part = slice(first, first + per_call)
        n, k = len(rows[part]), int(counts[part].max())
        if k <= 0:
            continue
        u = noise.fold("hopskipjump.direction", key).normal(
            (k, *shape), rows[part], dtype=points.dtype, device=points.device
        )
        u = u / u.flatten(2).norm(dim=2).clamp_min(1e-30).view(n, k, *[1] * len(shape))
        r = radius[part].to(points).view(view)
        probes = probe.oracle.bounds.clamp(points[part, None] + r * u)
        valid = torch.arange(k, device=points.device)[None, :] < counts[part, None]
        owners = rows[part, None].expand(n, k)[valid]
        labels = torch.full((n, k), -1, dtype=torch.int64, device=points.device)
        labels[valid] = probe.labels(probes[valid], owners)
        answered = (labels >= 0).to(points.dtype)
        phi = torch.where(probe.reached(labels, rows[part, None].expand(n, k)), 1.0, -1.0).to(
            points.dtype
        )
        mean = (phi * answered).sum(1) / answered.sum(1).clamp_min(1.0)
        baseline = torch.where(mean.abs() < 1, mean, torch.zeros_like(mean))
        weight = (phi - baseline[:, None]) * answered
        unit = (probes - points[part, None]) / r  # the directions actually probed, after clipping
        total[part] = torch.einsum("nk,nk...->n...", weight, unit)
    return total


def _geometric_step(
    probe: LabelProbe, points: Tensor, rows: Tensor, direction: Tensor, size: Tensor
) -> Tensor:
    """``points + size * direction``, halving ``size`` per sample until the step reaches the
    goal; a sample whose every try fails (or whose queries run out) stays where it is."""
    view = (-1,) + (1,) * (points.dim() - 1)
    out = points.clone()
    size = size.clone()
    pending = torch.arange(len(rows), device=points.device)
    for _ in range(_MAX_HALVINGS):
        pending = pending[probe.left[rows[pending]] > 0]
        if not len(pending):
            break
        trial = probe.oracle.bounds.clamp(
            points[pending] + size[pending].to(points).view(view) * direction[pending]
        )
        hit = probe.ask(trial, rows[pending])
        out[pending[hit]] = trial[hit]
        pending = pending[~hit]
        size[pending] /= 2
    return out
