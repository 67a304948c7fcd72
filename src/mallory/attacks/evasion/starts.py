"""Starting points for decision-based attacks, and the label-only searches they share.

A decision-based attack (HopSkipJump, the Boundary attack) walks along the decision boundary
from an input the system already gets wrong (or already puts in the target class) towards the
clean input. :func:`find_starts` finds such a point for each sample, cheapest source first:

1. the clean input itself, when the system already misclassifies it (one query per sample,
   which also labels every input of the batch);
2. the closest other input of the batch whose label reaches this sample's goal (any other
   class when untargeted, the target class when targeted): no further query, but the choice
   depends on which samples share the batch;
3. each :data:`Proposer` in turn (by default the cheap tricks of real attackers on images,
   then uniform noise inside the bounds, a few draws): a function that proposes one candidate
   per sample still without a start.

:func:`boundary_search` then bisects the segment (L2) or the shrinking box (Linf) between the
clean input and the starting point, to land just on the adversarial side of the boundary.
Every query goes through a :class:`LabelProbe`, which keeps each sample's allowance of queries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mallory.access.view import OracleView
from mallory.attacks.noise import Noise
from mallory.ops import transforms
from mallory.threat import Norm
from mallory.threat.perturbation import norm_of

# Proposes candidate starting points: given the clean inputs of the samples still without a
# start (m, *input_shape), their rows in the batch, the input box (lower, upper), the noise
# streams and the attempt number (0, 1, ...), it returns m candidates (clamped into the box
# afterwards), or None when it has nothing more to propose.
Proposer = Callable[[Tensor, Tensor, tuple[Tensor, Tensor], Noise, int], Tensor | None]

# Noise keys of the starting-point search, far from the attacks' own (iteration) keys.
# Samples whose distances to the whole batch are computed at once (bounds the memory).
_NEIGHBOUR_ROWS = 512


class LabelProbe:
    """Label queries for a batch, with each sample's allowance and the attacker's goal.

    ``left[i]`` is what row ``i`` may still spend: ``max_queries``, or less when the oracle's
    budget is smaller. A row the oracle refuses (-1, a shared budget spent) is left nothing.
    """

    def __init__(
        self, oracle: OracleView, y: Tensor, targets: Tensor | None, max_queries: int
    ) -> None:
        self.oracle = oracle
        self.y = y
        self.targets = targets
        remaining = oracle.remaining().to(y.device).clamp_max(float(max_queries))
        self.left = remaining.long()

    def reached(self, labels: Tensor, rows: Tensor) -> Tensor:
        """Whether each answer reaches the goal of its row (a refused answer never does)."""
        if self.targets is None:
            return (labels >= 0) & (labels != self.y[rows])
        return (labels >= 0) & (labels == self.targets[rows])

    def labels(self, points: Tensor, rows: Tensor) -> Tensor:
        """The system's labels for ``points`` (row ``rows[j]`` pays for point ``j``)."""
        if not len(rows):
            return torch.zeros(0, dtype=torch.int64, device=self.y.device)
        labels = self.oracle.labels(points, rows=rows).to(self.y.device)
        self.left.index_add_(0, rows, torch.full_like(rows, -1))
        refused = labels < 0
        if bool(refused.any()):
            self.left[rows[refused]] = 0
        self.left.clamp_(min=0)
        return labels

    def ask(self, points: Tensor, rows: Tensor) -> Tensor:
        """Whether each of ``points`` reaches its row's goal."""
        return self.reached(self.labels(points, rows), rows)


def uniform_noise(tries: int = 5) -> Proposer:
    """A proposer of uniform noise inside the bounds, ``tries`` draws per sample."""

    def propose(
        x: Tensor, rows: Tensor, box: tuple[Tensor, Tensor], noise: Noise, attempt: int
    ) -> Tensor | None:
        if attempt >= tries:
            return None
        lower, upper = box
        u = noise.fold("start.noise", attempt).uniform(
            x.shape[1:], rows, dtype=x.dtype, device=x.device
        )
        return lower + u * (upper - lower)

    return propose


def cheap_tricks() -> Proposer:
    """A proposer of the cheap tricks of real attackers, for images (C, H, W): cover the
    centre, shift by a quarter, rotate by 45 degrees, blur hard, wash out the contrast; one
    trick per attempt, deterministic. Tabular inputs get no proposal."""

    def propose(
        x: Tensor, rows: Tensor, box: tuple[Tensor, Tensor], noise: Noise, attempt: int
    ) -> Tensor | None:
        if x.dim() != 4:
            return None
        height, width = x.shape[-2:]
        dark = float(box[0].min())
        tricks = (
            lambda: transforms.occlude(x, height // 4, width // 4, max(1, height // 2), dark),
            lambda: transforms.shift(x, width // 4, height // 4, dark),
            lambda: transforms.rotate(x, 45.0, dark),
            lambda: transforms.blur(x, max(1.0, height / 10)),
            lambda: transforms.contrast(x, 0.3),
        )
        return tricks[attempt]() if attempt < len(tricks) else None

    return propose


def find_starts(
    probe: LabelProbe,
    x: Tensor,
    noise: Noise,
    proposers: Sequence[Proposer] | None = None,
    *,
    batch: bool = True,
) -> tuple[Tensor, Tensor]:
    """An input that reaches the goal for each sample, and a mask of the samples given one.

    Samples without a start keep their clean input (mask False). See the module docstring for
    the order of the sources; ``batch=False`` skips the other inputs of the batch (the outcome
    then no longer depends on which samples share it); ``proposers`` default to the cheap
    tricks, then five draws of uniform noise.
    """
    n = len(x)
    device = x.device
    starts = x.clone()
    found = torch.zeros(n, dtype=torch.bool, device=device)
    rows = (probe.left > 0).nonzero().squeeze(1)
    if not len(rows):
        return starts, found
    labels = torch.full((n,), -1, dtype=torch.int64, device=device)
    labels[rows] = probe.labels(x[rows], rows)
    found[rows] = probe.reached(labels[rows], rows)

    # the closest input of the batch that the system puts where this sample wants to go
    if batch:
        _closest_in_batch(probe, x, labels, starts, found)

    box = probe.oracle.bounds.on(x)
    for propose in (cheap_tricks(), uniform_noise()) if proposers is None else proposers:
        attempt = 0
        while True:
            rows = (~found & (probe.left > 0)).nonzero().squeeze(1)
            if not len(rows):
                return starts, found
            candidates = propose(x[rows], rows, box, noise, attempt)
            if candidates is None:
                break
            candidates = probe.oracle.bounds.clamp(candidates.to(x))
            hit = probe.ask(candidates, rows)
            starts[rows[hit]] = candidates[hit]
            found[rows[hit]] = True
            attempt += 1
    return starts, found


def _closest_in_batch(
    probe: LabelProbe, x: Tensor, labels: Tensor, starts: Tensor, found: Tensor
) -> None:
    """Give each sample without a start the closest input of the batch (in the oracle's norm)
    whose label reaches its goal; in place."""
    need = (~found & (labels >= 0)).nonzero().squeeze(1)
    others = (labels >= 0).nonzero().squeeze(1)
    flat = x.flatten(1).double()
    p = math.inf if probe.oracle.norm is Norm.LINF else 2.0
    for first in range(0, len(need), _NEIGHBOUR_ROWS):
        rows = need[first : first + _NEIGHBOUR_ROWS]
        goal = probe.y[rows] if probe.targets is None else probe.targets[rows]
        fits = labels[others][None, :] != goal[:, None]
        if probe.targets is not None:
            fits = ~fits
        gap = torch.cdist(flat[rows], flat[others], p=p).masked_fill(~fits, math.inf)
        closest, which = gap.min(1)
        ok = torch.isfinite(closest)
        starts[rows[ok]] = x[others[which[ok]]]
        found[rows[ok]] = True


def toward(x: Tensor, adv: Tensor, alpha: Tensor, norm: Norm) -> Tensor:
    """The point a fraction ``alpha`` (per row) of the way from ``x`` to ``adv``.

    L2: on the segment, ``x + alpha (adv - x)``. Linf: ``adv`` clipped into the box of radius
    ``alpha * ||adv - x||_inf`` around ``x``. Both give ``x`` at 0 and ``adv`` at 1, and stay
    inside the input bounds when ``x`` and ``adv`` are.
    """
    view = (-1,) + (1,) * (x.dim() - 1)
    delta = adv - x
    a = alpha.to(x).view(view)
    if norm is Norm.LINF:
        radius = a * delta.flatten(1).abs().amax(1).view(view)
        return x + torch.maximum(torch.minimum(delta, radius), -radius)
    return x + a * delta


def boundary_search(
    probe: LabelProbe,
    x: Tensor,
    adv: Tensor,
    rows: Tensor,
    tolerance: float,
) -> Tensor:
    """Bisect between the clean inputs ``x`` and adversarial points ``adv`` of batch ``rows``.

    Returns, per row, the adversarial end of an interval of relative width ``tolerance``
    (the fraction of the way from ``x``, in the oracle's norm: see :func:`toward`); a row that
    runs out of queries stops with the closest adversarial point found so far. One label query
    per row and step, all rows in one call: about ``log2(1 / tolerance)`` steps.
    """
    low = torch.zeros(len(rows), dtype=torch.float64, device=x.device)
    high = torch.ones(len(rows), dtype=torch.float64, device=x.device)
    norm = probe.oracle.norm
    while True:
        going = ((high - low) > tolerance) & (probe.left[rows] > 0)
        if not bool(going.any()):
            break
        at = going.nonzero().squeeze(1)
        mid = (low[at] + high[at]) / 2
        labels = probe.labels(toward(x[at], adv[at], mid, norm), rows[at])
        hit = probe.reached(labels, rows[at])
        high[at] = torch.where(hit, mid, high[at])
        low[at] = torch.where(~hit & (labels >= 0), mid, low[at])
    return toward(x, adv, high, norm)


def distance(a: Tensor, b: Tensor, norm: Norm) -> Tensor:
    """Per-row distance between two batches in ``norm``, as float64."""
    return norm_of(a - b, norm).double()
