"""Square Attack: random search over square-shaped updates, with scores only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from mallory.access.oracle import Access, Oracle
from mallory.access.view import OracleView
from mallory.attacks.base import register
from mallory.attacks.evasion.base import EvasionAttack
from mallory.attacks.evasion.estimate import log_scores
from mallory.attacks.evasion.losses import Loss
from mallory.attacks.noise import Noise
from mallory.attacks.params import choice, integer, real
from mallory.threat import Norm

# The paper's schedule for 10,000 queries: p halves after each of these iterations; other
# budgets rescale it (iteration i of n counts as i * 10000 / n).
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)

Clamp = Callable[[Tensor], Tensor]


@register("square")
@dataclass(frozen=True, kw_only=True)
class Square(EvasionAttack):
    """Random search: change a random square of the image, keep the change if the loss drops.

    Andriushchenko, Croce, Flammarion and Hein, "Square Attack: a query-efficient black-box
    adversarial attack via random search", ECCV 2020.

    Threat model: scores (all, or the top k: hidden ones are estimated by
    :func:`~mallory.attacks.evasion.estimate.complete_scores`); Linf or L2 ball of finite radius
    ``eps``; untargeted or targeted. The loss is computed on log-probabilities: the margin
    ``log p_y - max_{j != y} log p_j`` (targeted: ``max_{j != t} log p_j - log p_t``), or the
    cross-entropy; a candidate is kept when it lowers the loss, and a sample stops at its
    first misclassification.

    * Linf: start from vertical stripes of ``+-eps`` (one sign per channel and column); each
      step sets a random ``s x s`` window (every channel) to ``x +- eps``, one sign per channel.
    * L2: start from a grid of windows, each holding the "centered mass" pattern (two halves
      of opposite sign, concentric squares weighted ``1/(k+1)^2``), with random signs, scaled
      to norm ``eps``. Each step moves the mass of a second random window into a first one,
      on top of a fresh pattern, keeping the total norm ``eps``.

    The window covers about a fraction ``p`` of the image; ``p`` starts at ``p_init`` and
    halves on the paper's schedule over a sample's budget ``min(n_queries, remaining)``, so
    a sample's search never depends on the other samples. Window positions and signs are
    drawn per sample from the seed.

    Inputs of shape ``(C, H, W)`` are images; ``(H, W)`` is one channel, ``(d,)`` a ``1 x d``
    strip whose windows are runs of about ``p * d`` consecutive features (feature order in
    tabular data carries no meaning, so a run is an arbitrary subset). More leading
    dimensions fold into channels.

    Cost: one query per iteration and sample still standing, the first on the starting point
    (the clean input is never queried), at most ``min(n_queries, remaining budget)``.

    Args:
        n_queries: queries per sample at most (5000), capped by the threat model's budget.
        p_init: starting fraction of the image a window covers (0.05; the paper uses 0.05
            for Linf and 0.1 for L2).
        loss: ``"margin"`` (default) or ``"ce"``.

    Example::

        result = create("square")(Oracle(model, score_based("linf", 0.3, queries=1000)), x, y)
        result.queries[result.success].median()
    """

    default = True  # run by a campaign that names no attacks
    rank = 0

    access = Access.SCORES
    fast: ClassVar[dict[str, Any]] = {"n_queries": 200}  # quick on a tiny model (tests)
    norms = frozenset({Norm.LINF, Norm.L2})
    paper = (
        "Andriushchenko et al., Square Attack: a query-efficient black-box adversarial attack "
        "via random search, ECCV 2020"
    )

    n_queries: int = integer(5000, low=1, help="queries per sample at most (capped by the budget)")
    p_init: float = real(
        0.05,
        low=0.0,
        low_open=True,
        high=1.0,
        help="starting fraction of the image a window covers",
    )
    loss: Loss = choice(Loss.MARGIN, help="loss on log-probabilities: margin or cross-entropy")

    def planned_queries(self, oracle: Oracle | OracleView) -> int | None:
        return self.n_queries

    def _run(
        self, oracle: OracleView, x: Tensor, y: Tensor, targets: Tensor | None, noise: Noise
    ) -> Tensor:
        n, shape = len(x), x.shape
        image = image_shape(tuple(x.shape[1:]))
        origin = x.reshape(n, *image)
        linf = oracle.norm is Norm.LINF
        eps = oracle.eps

        def clamp(z: Tensor) -> Tensor:
            return oracle.bounds.clamp(z.reshape(len(z), *shape[1:])).reshape(z.shape)

        budget = oracle.remaining().clamp_max(self.n_queries).long().to(x.device)
        everyone = torch.arange(n, device=x.device)
        if linf:
            start = clamp(origin + eps * _stripes(noise, image, origin))
        else:
            start = clamp(origin + _l2_start(noise, everyone, origin, eps))
        best = origin.clone()
        best_loss = torch.full((n,), torch.inf, dtype=torch.float64, device=x.device)
        live = everyone[budget >= 1]
        candidate = start[live]
        used = torch.zeros(n, dtype=torch.int64, device=x.device)
        step = 0
        while len(live):
            probs = oracle.scores(candidate.reshape(len(live), *shape[1:]), rows=live.cpu())
            refused = torch.isnan(probs).all(1)
            aim = None if targets is None else targets[live]
            value, hit = self._objective(probs, y[live], aim)
            value = value.double()
            keep = ((value < best_loss[live]) | hit) & ~refused
            best[live[keep]] = candidate[keep]
            best_loss[live[keep]] = value[keep]
            used[live] += 1
            stop = hit | refused | (used[live] >= budget[live])
            live = live[~stop]
            step += 1
            if not len(live):
                break
            p = _schedule(self.p_init, step - 1, budget[live])
            if linf:
                candidate = _linf_step(noise, step, live, origin[live], best[live], p, eps, clamp)
            else:
                candidate = _l2_step(noise, step, live, origin[live], best[live], p, eps, clamp)
        return best.reshape(shape)

    def _objective(self, probs: Tensor, y: Tensor, targets: Tensor | None) -> tuple[Tensor, Tensor]:
        """The loss to lower, per row, and whether the row already meets the goal."""
        logp = log_scores(probs)
        goal = y if targets is None else targets
        mine = logp.gather(1, goal[:, None]).squeeze(1)
        other = logp.scatter(1, goal[:, None], -torch.inf).amax(1)
        if self.loss is Loss.MARGIN:
            value = mine - other if targets is None else other - mine
        else:  # the cross-entropy, to ascend (untargeted) or descend (targeted)
            value = mine if targets is None else -mine
        predicted = probs.nan_to_num(-1.0).argmax(1)
        hit = predicted != y if targets is None else predicted == targets
        return value, hit


def image_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(C, H, W)`` for an input shape: images as they are, fewer dims padded, more folded."""
    if len(shape) >= 3:
        return (int(torch.Size(shape[:-2]).numel()), shape[-2], shape[-1])
    if len(shape) == 2:
        return (1, shape[0], shape[1])
    return (1, 1, shape[0] if shape else 1)


def _schedule(p_init: float, step: int, budget: Tensor) -> Tensor:
    """The window fraction at iteration ``step`` (from 0) of each sample's ``budget``."""
    progress = (step * 10000) // budget.clamp_min(1)
    halvings = torch.bucketize(progress, torch.tensor(_HALVINGS, device=budget.device))
    return p_init / 2.0 ** halvings.double()


def _sides(p: Tensor, height: int, width: int, *, l2: bool) -> tuple[Tensor, Tensor]:
    """Window height and width per sample, covering about ``p`` of an ``height x width`` image.

    Squares of side ``round(sqrt(p H W))``: at least 1 and at most the image side minus 1 for
    Linf (the paper), at least 3 and odd for L2. An image too thin for the square (a strip)
    gets a run of about the same area along its long side instead.
    """
    area = p * height * width
    side = area.sqrt().round().long()
    smallest = 3 if l2 else 1
    side = side.clamp_min(smallest)
    if l2:
        side = side + (side % 2 == 0).long()
    short, long = min(height, width), max(height, width)
    if not l2 and short >= 2:
        side = side.clamp_max(short - 1)
    run = (area / short).round().long().clamp(smallest, long)
    if not l2 and long >= 2:
        run = run.clamp_max(long - 1)
    square = side <= short
    thin = torch.full_like(side, short)
    along = torch.where(square, side, run)
    across = torch.where(square, side, thin)
    if height <= width:
        return across.clamp(1, height), along.clamp(1, width)
    return along.clamp(1, height), across.clamp(1, width)


def _window(top: Tensor, left: Tensor, tall: Tensor, wide: Tensor, image: Tensor) -> Tensor:
    """Masks ``(m, 1, H, W)`` of the windows at ``(top, left)`` of size ``tall x wide``."""
    height, width = image.shape[-2:]
    r = torch.arange(height, device=image.device)[None, :, None]
    c = torch.arange(width, device=image.device)[None, None, :]
    t, lf = top[:, None, None], left[:, None, None]
    inside = (r >= t) & (r < t + tall[:, None, None]) & (c >= lf) & (c < lf + wide[:, None, None])
    return inside[:, None]


def _place(
    noise: Noise, rows: Tensor, tall: Tensor, wide: Tensor, image: Tensor
) -> tuple[Tensor, Tensor]:
    """Top row and left column of a window of each size, at random inside the image."""
    height, width = image.shape[-2:]
    where = rows.cpu()
    top = noise.fold("top").integers((height - tall + 1).cpu(), rows=where).to(image.device)
    left = noise.fold("left").integers((width - wide + 1).cpu(), rows=where).to(image.device)
    return top, left


def _stripes(noise: Noise, image: tuple[int, int, int], like: Tensor) -> Tensor:
    """One random sign per channel and column, the same down each column: ``(n, C, 1, W)``."""
    channels, _, width = image
    return noise.fold("square.stripes").sign(
        (channels, 1, width), dtype=like.dtype, device=like.device
    )


def _linf_step(
    noise: Noise,
    step: int,
    rows: Tensor,
    origin: Tensor,
    best: Tensor,
    p: Tensor,
    eps: float,
    clamp: Clamp,
) -> Tensor:
    """Candidates: ``best`` with a random window set to ``origin +- eps`` (a sign per channel).

    A proposal that would change nothing (the window already holds those values) takes the
    opposite signs instead, as the paper redraws such proposals.
    """
    draw = noise.fold("square.step", step)
    tall, wide = _sides(p, origin.shape[2], origin.shape[3], l2=False)
    mask = _window(*_place(draw.fold("window"), rows, tall, wide, origin), tall, wide, origin)
    sign = draw.fold("sign").sign((origin.shape[1], 1, 1), rows.cpu(), dtype=origin.dtype)
    sign = sign.to(origin.device)
    candidate = torch.where(mask, clamp(origin + eps * sign), best)
    same = ((candidate - best).abs() <= 1e-7).flatten(1).all(1)
    if bool(same.any()):
        flipped = torch.where(mask, clamp(origin - eps * sign), best)
        candidate = torch.where(same.view(-1, 1, 1, 1), flipped, candidate)
    return candidate


def _l2_step(
    noise: Noise,
    step: int,
    rows: Tensor,
    origin: Tensor,
    best: Tensor,
    p: Tensor,
    eps: float,
    clamp: Clamp,
) -> Tensor:
    """Candidates: the paper's L2 update (Algorithm 3, windows W1 and W2).

    The perturbation in W1 becomes a fresh centered-mass pattern (a random sign per channel)
    plus the old W1 content normalized, rescaled per channel to hold the mass of W1 and W2
    together (and whatever the ball has left); W2 outside W1 is emptied; the whole
    perturbation is then rescaled to norm ``eps`` and clamped to the bounds.
    """
    draw = noise.fold("square.step", step)
    channels, height, width = origin.shape[1:]
    tall, wide = _sides(p, height, width, l2=True)
    top, left = _place(draw.fold("window"), rows, tall, wide, origin)
    first = _window(top, left, tall, wide, origin)
    second = _window(*_place(draw.fold("second"), rows, tall, wide, origin), tall, wide, origin)
    where = rows.cpu()
    sign = draw.fold("sign").sign((channels, 1, 1), where, dtype=origin.dtype).to(origin.device)
    split = draw.fold("split").uniform((), where).to(origin.device) < 0.5
    delta = best - origin
    total = _norm(delta, (1, 2, 3))
    in_first = _norm(delta * first, (2, 3))
    in_both = _norm(delta * (first | second), (2, 3))
    pattern = _centered_mass(top, left, tall, wide, split, origin)
    fresh = pattern * sign + delta * first / (in_first + 1e-10)
    room = ((eps**2 - total**2).clamp_min(0.0) / channels + in_both**2).sqrt()
    fresh = fresh / _norm(fresh, (2, 3)).clamp_min(1e-12) * room
    delta = torch.where(second, 0.0, delta)
    delta = torch.where(first, fresh, delta)
    delta = delta / _norm(delta, (1, 2, 3)).clamp_min(1e-12) * eps
    return clamp(origin + delta)


def _l2_start(noise: Noise, rows: Tensor, origin: Tensor, eps: float) -> Tensor:
    """The paper's L2 start: a grid of windows (side about a fifth of the image), each holding
    a centered-mass pattern with a random sign per channel; scaled to norm ``eps``."""
    n = len(origin)
    channels, height, width = origin.shape[1:]
    tile_h, tile_w = max(height // 5, 1), max(width // 5, 1)
    count_h, count_w = height // tile_h, width // tile_w
    off_h, off_w = (height - count_h * tile_h) // 2, (width - count_w * tile_w) // 2
    tiles = count_h * count_w
    where = rows.cpu()
    splits = noise.fold("square.start.split").uniform((tiles,), where).to(origin.device) < 0.5
    signs = (
        noise.fold("square.start.sign")
        .sign((tiles, channels, 1, 1), where, dtype=origin.dtype)
        .to(origin.device)
    )
    tall = torch.full((n,), tile_h, device=origin.device)
    wide = torch.full((n,), tile_w, device=origin.device)
    delta = torch.zeros_like(origin)
    for k in range(tiles):
        i, j = divmod(k, count_w)
        top = torch.full((n,), off_h + i * tile_h, device=origin.device)
        left = torch.full((n,), off_w + j * tile_w, device=origin.device)
        delta += _centered_mass(top, left, tall, wide, splits[:, k], origin) * signs[:, k]
    return delta / _norm(delta, (1, 2, 3)).clamp_min(1e-12) * eps


def _centered_mass(
    top: Tensor, left: Tensor, tall: Tensor, wide: Tensor, split_rows: Tensor, image: Tensor
) -> Tensor:
    """The paper's L2 window pattern, ``(m, 1, H, W)``, zero outside the window, unit norm.

    The window is cut in two halves (across its rows or its columns; a one-pixel side cannot
    be cut), each holding concentric rectangles around its centre, the k-th (from 0) adding
    ``1 / (k + 1)^2``, normalized; the second half is negated.
    """
    height, width = image.shape[-2:]
    dtype, device = image.dtype, image.device
    r = torch.arange(height, device=device)[None, :, None] - top[:, None, None]
    c = torch.arange(width, device=device)[None, None, :] - left[:, None, None]
    a, b = tall[:, None, None], wide[:, None, None]
    split_rows = split_rows[:, None, None]
    by_rows = (a >= 2) & (split_rows | (b < 2))
    by_cols = (b >= 2) & ~by_rows
    a1 = torch.where(by_rows, a // 2, a)
    b1 = torch.where(by_cols, b // 2, b)
    r2, a2 = torch.where(by_rows, r - a1, r), torch.where(by_rows, a - a1, a)
    c2, b2 = torch.where(by_cols, c - b1, c), torch.where(by_cols, b - b1, b)
    weights = 1.0 / torch.arange(1, max(height, width) + 2, dtype=dtype, device=device) ** 2
    cumulative = torch.cat([torch.zeros(1, dtype=dtype, device=device), weights.cumsum(0)])
    first = _unit(_rectangle(r, c, a1, b1, cumulative))
    # a window that cannot be cut is all first half: the second is then empty
    second = _unit(_rectangle(r2, c2, a2, b2, cumulative) * (by_rows | by_cols))
    return _unit(first - second)[:, None]


def _rectangle(r: Tensor, c: Tensor, a: Tensor, b: Tensor, cumulative: Tensor) -> Tensor:
    """Concentric rectangles in an ``a x b`` box at local coordinates ``(r, c)``: the value at
    Chebyshev distance ``d`` from the centre is ``sum_{k=d}^{K-1} 1/(k+1)^2``."""
    inside = (r >= 0) & (r < a) & (c >= 0) & (c < b)
    ca, cb = a // 2, b // 2
    rings = torch.maximum(ca, cb) + 1
    d = torch.maximum((r - ca).abs(), (c - cb).abs())
    d = torch.minimum(d, rings).clamp_min(0)
    value = cumulative[rings.expand_as(d)] - cumulative[d]
    return torch.where(inside, value, 0.0)


def _unit(pattern: Tensor) -> Tensor:
    return pattern / _norm(pattern, (-2, -1)).clamp_min(1e-30)


def _norm(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    return t.pow(2).sum(dims, keepdim=True).sqrt()
