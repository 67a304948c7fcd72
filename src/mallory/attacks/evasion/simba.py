"""SimBA: step along one orthonormal direction at a time, keep the step if the score drops."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

import torch
from torch import Tensor

from mallory.access.oracle import Access, Oracle
from mallory.access.view import OracleView
from mallory.attacks.base import register
from mallory.attacks.evasion.base import EvasionAttack
from mallory.attacks.evasion.estimate import complete_scores
from mallory.attacks.evasion.square import image_shape
from mallory.attacks.noise import Noise
from mallory.attacks.params import choice, integer, real
from mallory.threat import Norm
from mallory.threat.perturbation import project


class Basis(StrEnum):
    """The orthonormal directions SimBA tries."""

    PIXEL = "pixel"  # one input feature at a time (SimBA)
    DCT = "dct"  # low-frequency 2-D cosines first (SimBA-DCT)


@register("simba")
@dataclass(frozen=True, kw_only=True)
class SimBA(EvasionAttack):
    """Try ``x + step q`` and ``x - step q`` for one basis direction ``q`` after another.

    Guo, Gardner, You, Wilson and Weinberger, "Simple Black-box Adversarial Attacks",
    ICML 2019 (Algorithm 1; SimBA-DCT with the low-frequency block order).

    Threat model: scores (all, or the top k: hidden ones are estimated by
    :func:`~mallory.attacks.evasion.estimate.complete_scores`); L2 ball of finite radius ``eps``;
    untargeted (lower the probability of the true class) or targeted (raise the target's).
    Each sample first queries its clean input; then, for each direction in its own random
    order, a step of ``+step`` is kept if the probability improves, else ``-step`` is tried.
    A sample stops at its first success, when its budget is spent, or when every direction
    has been tried once.

    The directions are orthonormal, so the accepted steps add up to norm ``step *
    sqrt(accepted)``. A candidate is projected into the eps-ball and the input bounds before
    it is queried (so every point queried is a valid answer, and steps taken on the sphere
    keep searching instead of stopping); a candidate that the projection leaves equal to the
    current point (a pixel already at its bound) is skipped without a query.

    * ``basis="pixel"``: single input features, in a random order.
    * ``basis="dct"``: the 2-D DCT-II basis of each channel (orthonormal cosines
      ``cos(pi (2i+1) u / 2H) cos(pi (2j+1) v / 2W)``); frequencies ``(u, v)`` with ``max(u, v)
      < freq_dims`` come first, in random order, then bands of width ``stride`` of higher
      frequency, each in random order.

    Inputs of shape ``(C, H, W)`` are images; ``(H, W)`` is one channel and ``(d,)`` a
    ``1 x d`` strip (for tabular data, pixel basis is the natural choice).

    Cost: one query for the clean input, then one or two per direction tried, at most
    ``min(max_queries, remaining budget)`` per sample.

    Args:
        basis: ``"dct"`` (default) or ``"pixel"``.
        step: length of each step in L2, input units (0.2, the paper's ``epsilon``).
        max_queries: queries per sample at most (10000), capped by the threat model's budget.
        freq_dims: side of the low-frequency block tried first (14; at most the image side).
        stride: width of each later band of frequencies (7).

    Example::

        attack = create("simba", basis="dct", step=0.5)
        result = attack(Oracle(model, score_based("l2", 3.0, queries=2000)), x, y)
    """

    access = Access.SCORES
    fast: ClassVar[dict[str, Any]] = {"max_queries": 200}  # quick on a tiny model (tests)
    norms = frozenset({Norm.L2})
    paper = "Guo et al., Simple Black-box Adversarial Attacks, ICML 2019"

    basis: Basis = choice(Basis.DCT, help="directions: low-frequency DCT or single pixels")
    step: float = real(0.2, low=0.0, low_open=True, help="L2 length of each step (input units)")
    max_queries: int = integer(10000, low=1, help="queries per sample at most (capped by budget)")
    freq_dims: int = integer(14, low=1, help="side of the low-frequency block tried first (dct)")
    stride: int = integer(7, low=1, help="width of each later band of frequencies (dct)")

    def planned_queries(self, oracle: Oracle | OracleView) -> int | None:
        return self.max_queries

    def _run(
        self, oracle: OracleView, x: Tensor, y: Tensor, targets: Tensor | None, noise: Noise
    ) -> Tensor:
        n, shape = len(x), x.shape
        channels, height, width = image_shape(tuple(shape[1:]))
        size = channels * height * width
        device, dtype = x.device, x.dtype
        budget = oracle.remaining().clamp_max(self.max_queries).long().to(device)
        used = torch.zeros(n, dtype=torch.int64, device=device)
        current = x.clone()
        score = torch.zeros(n, dtype=torch.float64, device=device)
        everyone = torch.arange(n, device=device)

        live = everyone[budget >= 1]
        if len(live):
            probs = oracle.scores(x[live], rows=live.cpu())
            used[live] += 1
            done = torch.isnan(probs).all(1) | _reached(probs, y[live], targets, live)
            score[live] = self._score(probs, y[live], targets, live)
            live = live[~done & (used[live] < budget[live])]
        order = self._order(noise, everyone, (channels, height, width))
        if self.basis is Basis.DCT:
            cos_h = _dct_matrix(height, dtype, device)
            cos_w = _dct_matrix(width, dtype, device)
        for t in range(size):
            if not len(live):
                break
            index = order[live, t]
            if self.basis is Basis.DCT:
                q = _dct_direction(index, cos_h, cos_w, (channels, height, width))
            else:
                q = torch.zeros((len(live), size), dtype=dtype, device=device)
                q.scatter_(1, index[:, None], 1.0)
            q = q.reshape(len(live), *shape[1:])
            improved = torch.zeros(len(live), dtype=torch.bool, device=device)
            finished = torch.zeros(len(live), dtype=torch.bool, device=device)
            for sign in (1.0, -1.0):
                ask = (~improved & ~finished).nonzero().squeeze(1)
                ask = ask[used[live[ask]] < budget[live[ask]]]
                if not len(ask):
                    break
                rows = live[ask]
                candidate = project(
                    current[rows] + sign * self.step * q[ask],
                    x[rows],
                    Norm.L2,
                    oracle.eps,
                    oracle.bounds,
                )
                moved = (candidate != current[rows]).flatten(1).any(1)
                ask, rows, candidate = ask[moved], rows[moved], candidate[moved]
                if not len(ask):
                    continue
                probs = oracle.scores(candidate, rows=rows.cpu())
                used[rows] += 1
                refused = torch.isnan(probs).all(1)
                new = self._score(probs, y[rows], targets, rows)
                better = (new < score[rows]) & ~refused
                hit = _reached(probs, y[rows], targets, rows) & ~refused
                take = better | hit
                current[rows[take]] = candidate[take]
                score[rows[take]] = new[take]
                improved[ask[take]] = True
                finished[ask[hit | refused]] = True
            live = live[~finished & (used[live] < budget[live])]
        return current

    def _score(self, probs: Tensor, y: Tensor, targets: Tensor | None, rows: Tensor) -> Tensor:
        """What SimBA lowers: the true class's probability, or minus the target's."""
        full = complete_scores(probs).double()
        if targets is None:
            return full.gather(1, y[:, None]).squeeze(1)
        return -full.gather(1, targets[rows][:, None]).squeeze(1)

    def _order(self, noise: Noise, rows: Tensor, image: tuple[int, int, int]) -> Tensor:
        """Each sample's order of directions ``(n, C H W)``: indices into the flat basis."""
        channels, height, width = image
        draw = noise.fold("simba.order").uniform((channels * height * width,), rows.cpu())
        draw = draw.to(device=rows.device, dtype=torch.float64)
        if self.basis is Basis.PIXEL:
            return draw.argsort(1)
        u = torch.arange(height, device=rows.device)[:, None]
        v = torch.arange(width, device=rows.device)[None, :]
        # band 0: the low block; band k: the next ``stride`` frequencies beyond it
        reach = torch.maximum(u, v)
        band = torch.where(
            reach < self.freq_dims,
            0,
            1 + torch.div(reach - self.freq_dims, self.stride, rounding_mode="floor"),
        )
        band = band.expand(channels, height, width).flatten()
        return (band[None, :].double() + draw).argsort(1)


def _reached(probs: Tensor, y: Tensor, targets: Tensor | None, rows: Tensor) -> Tensor:
    predicted = probs.nan_to_num(-1.0).argmax(1)
    return predicted != y if targets is None else predicted == targets[rows]


def _dct_matrix(size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The orthonormal DCT-II matrix: row ``k`` is the k-th cosine over ``size`` points."""
    k = torch.arange(size, dtype=torch.float64)[:, None]
    i = torch.arange(size, dtype=torch.float64)[None, :]
    matrix = torch.cos(math.pi * (2 * i + 1) * k / (2 * size)) * math.sqrt(2.0 / size)
    matrix[0] /= math.sqrt(2.0)
    return matrix.to(dtype=dtype, device=device)


def _dct_direction(
    index: Tensor, cos_h: Tensor, cos_w: Tensor, image: tuple[int, int, int]
) -> Tensor:
    """Basis images ``(m, C, H, W)`` for flat indices into (channel, u, v)."""
    channels, height, width = image
    channel = torch.div(index, height * width, rounding_mode="floor")
    u = torch.div(index, width, rounding_mode="floor") % height
    v = index % width
    plane = cos_h[u][:, :, None] * cos_w[v][:, None, :]
    picked = torch.nn.functional.one_hot(channel, channels).to(plane.dtype)
    return picked[:, :, None, None] * plane[:, None]
