"""Carlini-Wagner L2: the smallest L2 perturbation found by optimisation over a tanh box."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from mallory.access.oracle import Access, Oracle
from mallory.access.view import OracleView
from mallory.attacks.base import register
from mallory.attacks.evasion.base import EvasionAttack
from mallory.attacks.evasion.losses import margin, reached
from mallory.attacks.noise import Noise
from mallory.attacks.params import flag, integer, real
from mallory.threat import Norm

# tanh(w) stays strictly inside (-1, 1) at the start, so that atanh of a pixel on a bound is finite
_SHRINK = 1.0 - 1e-6
# Adam's moment decay rates and denominator guard (Kingma and Ba's defaults, as in the paper)
_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8
# abort_early: a sample stops a binary step when its loss fell by less than this share over a
# tenth of the steps (the paper's rule), once it has fallen by more at least once: a pixel on a
# bound starts where tanh is flat (w = atanh(_SHRINK) ~ 7.25), and Adam needs about 5 / lr steps
# to move it, a plateau that is a slow start, not convergence
_STALL = 1e-4


@register("cw")
@dataclass(frozen=True, kw_only=True)
class CarliniWagnerL2(EvasionAttack):
    """Minimise ``||delta||_2^2 + c * f(x + delta)`` with Adam, binary-searching ``c`` per sample.

    Carlini and Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017
    (the L2 attack of section V).

    The box constraint becomes a change of variables, ``x' = mid + half * tanh(w)`` with the
    system's per-feature bounds, so every query lies inside the bounds. ``f`` is the paper's f6
    on logits: ``max(z_y - max_{j!=y} z_j, -confidence)`` untargeted, ``max(max_{j!=t} z_j - z_t,
    -confidence)`` targeted. Each binary step restarts Adam from the clean input (its first
    query is the clean input itself); the constant ``c`` of a sample grows tenfold until a step
    succeeds, then is bisected between the largest failing and smallest successful c. The smallest
    successful input of each sample over every step is returned (the clean input when none
    succeeded); success means the goal is met with a logit margin of at least ``confidence``.
    With ``confidence > 0`` the base keeps that input rather than a closer query the attacker saw
    that only just met the goal (see :meth:`keeps_closest`); only a sample for which no input
    with that margin was found falls back on such a query, as an adversarial input below kappa.

    Threat model: white-box (gradients), L2; untargeted or targeted; ``eps`` may be inf. With a
    finite ``eps`` a sample stops as soon as a success within ``eps`` is found (the base then
    judges inside the ball). Cost per sample: at most ``binary_steps * steps`` gradient
    evaluations; ``abort_early`` and finished samples cut that a lot. Shapes: ``x`` is
    ``(n, *input_shape)`` inside the bounds.

    Args:
        confidence: kappa, the logit margin a success must have (default 0).
        c_init: the first constant ``c`` weighing the misclassification term (default 1e-2).
        binary_steps: binary-search steps over ``c`` (default 9).
        steps: Adam iterations per binary step (default 1000).
        learning_rate: Adam's step size in the tanh space (default 1e-2).
        abort_early: stop a sample's binary step when its loss, having started to fall, falls
            by less than 0.01% over a tenth of ``steps`` (default True).

    Example::

        result = create("cw", steps=200)(Oracle(model, white_box("l2")), x, y)
        result.l2.median()
    """

    default = True  # run by a campaign that names no attacks
    rank = 3

    access = Access.GRADIENTS
    fast: ClassVar[dict[str, Any]] = {
        "binary_steps": 3,
        "steps": 20,
    }  # quick on a tiny model (tests)
    norms = frozenset({Norm.L2})
    minimizes = True
    paper = (
        "Carlini and Wagner, Towards Evaluating the Robustness of Neural Networks, IEEE S&P 2017"
    )

    confidence: float = real(0.0, low=0.0, help="kappa: logit margin a success must reach")
    c_init: float = real(
        1e-2, low=0.0, low_open=True, help="first constant c on the misclassification term"
    )
    binary_steps: int = integer(9, low=1, help="binary-search steps over the constant c")
    steps: int = integer(1000, low=1, help="Adam iterations per binary step")
    learning_rate: float = real(1e-2, low=0.0, low_open=True, help="Adam step size (tanh space)")
    abort_early: bool = flag(True, help="stop a binary step once the loss stops improving")

    def keeps_closest(self) -> bool:
        """Only without a margin: a closer query that just met the goal lacks kappa's margin."""
        return self.confidence == 0

    def planned_queries(self, oracle: Oracle | OracleView) -> int | None:
        return self.binary_steps * self.steps  # at most: abort_early stops most steps sooner

    def _run(
        self, oracle: OracleView, x: Tensor, y: Tensor, targets: Tensor | None, noise: Noise
    ) -> Tensor:
        n = len(x)
        lo, hi = oracle.bounds.on(x)
        mid = torch.broadcast_to((hi + lo) / 2, x.shape)
        half = torch.broadcast_to((hi - lo) / 2, x.shape)
        w_clean = torch.atanh(((x - mid) / half).clamp(-_SHRINK, _SHRINK))
        search = _Search(n, self.c_init, x.device)
        best = _Best(x, oracle.eps)
        spent = torch.zeros(n, dtype=torch.bool, device=x.device)  # budget gone: stop for good
        for _ in range(self.binary_steps):
            rows = (~(spent | best.done)).nonzero().squeeze(1)
            if not len(rows):
                break
            hit = self._descend(oracle, x, y, targets, w_clean, mid, half, search.c, rows, best)
            spent |= hit.isnan()
            search.update(rows, hit[rows] == 1)
        return best.x

    def _descend(
        self,
        oracle: OracleView,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        w_clean: Tensor,
        mid: Tensor,
        half: Tensor,
        c: Tensor,
        rows: Tensor,
        best: _Best,
    ) -> Tensor:
        """One binary step: Adam on the samples ``rows`` at their constants ``c``.

        Returns per batch row 1 where this step found a success, 0 where not, NaN where the
        query budget ran out.
        """
        hit = torch.zeros(len(x), dtype=torch.float64, device=x.device)
        w = w_clean[rows].clone()
        m = torch.zeros_like(w)
        v = torch.zeros_like(w)
        x0, mid_r, half_r = x[rows], mid[rows], half[rows]
        y_r = y[rows]
        t_r = None if targets is None else targets[rows]
        c_r = c[rows]
        prev = torch.full((len(rows),), math.inf, dtype=torch.float64, device=x.device)
        falling = torch.zeros(len(rows), dtype=torch.bool, device=x.device)
        check_every = max(self.steps // 10, 1)
        kappa = self.confidence
        for it in range(self.steps):
            tanh_w = torch.tanh(w)
            # the first iterate is the clean input itself, not its image through the shrunk
            # atanh: a sample the system already gets wrong is then found at distance 0
            x_adv = x0 if it == 0 else oracle.bounds.clamp(torch.addcmul(mid_r, half_r, tanh_w))
            answer = oracle.gradient(x_adv, _weighted_f6(y_r, t_r, c_r, kappa), rows=rows)
            delta = x_adv - x0
            l2 = delta.flatten(1).norm(dim=1).double()
            answered = torch.isfinite(answer.logits).all(1)
            success = reached(answer.logits, y_r, t_r) & (margin(answer.logits, y_r, t_r) >= kappa)
            hit[rows[success]] = 1.0
            best.offer(rows, x_adv, l2, success)

            # d/dw of ||x' - x||^2 + c f(x'), chained through x' = mid + half tanh(w)
            grad = torch.add(answer.grad, delta, alpha=2.0).mul_(half_r)
            grad.mul_(tanh_w.mul_(tanh_w).neg_().add_(1.0))
            # Adam, with the bias corrections folded into the step size and the guard
            step = it + 1
            m.mul_(_BETA1).add_(grad, alpha=1 - _BETA1)
            v.mul_(_BETA2).addcmul_(grad, grad, value=1 - _BETA2)
            root = math.sqrt(1 - _BETA2**step)
            denominator = v.sqrt().add_(_ADAM_EPS * root)
            w.addcdiv_(m, denominator, value=-self.learning_rate * root / (1 - _BETA1**step))

            keep = answered & ~best.done[rows]
            if self.abort_early and it % check_every == 0:
                loss = l2 * l2 + answer.loss.double()
                fell = loss < prev - _STALL * prev.abs()  # False at the first check
                keep &= ~(falling & ~fell)
                falling |= fell
                prev = loss
            hit[rows[~answered]] = math.nan
            if not bool(keep.all()):
                if not bool(keep.any()):
                    break
                rows, w, m, v = rows[keep], w[keep], m[keep], v[keep]
                x0, mid_r, half_r, y_r, c_r = (
                    x0[keep],
                    mid_r[keep],
                    half_r[keep],
                    y_r[keep],
                    c_r[keep],
                )
                t_r = None if t_r is None else t_r[keep]
                prev, falling = prev[keep], falling[keep]
        return hit


def _weighted_f6(
    y: Tensor, targets: Tensor | None, c: Tensor, kappa: float
) -> Callable[[Tensor], Tensor]:
    """``c * f6(logits)``: how far each row is from its goal with margin ``kappa``, clipped."""

    def loss(logits: Tensor) -> Tensor:
        f = (-margin(logits, y, targets)).clamp_min(-kappa)
        return c.to(f.dtype) * f

    return loss


class _Search:
    """Per-sample binary search over ``c``: up tenfold until a success, then bisection."""

    def __init__(self, n: int, c_init: float, device: torch.device) -> None:
        self.c = torch.full((n,), c_init, dtype=torch.float64, device=device)
        self.lower = torch.zeros(n, dtype=torch.float64, device=device)
        self.upper = torch.full((n,), math.inf, dtype=torch.float64, device=device)

    def update(self, rows: Tensor, success: Tensor) -> None:
        c, lower, upper = self.c[rows], self.lower[rows], self.upper[rows]
        upper = torch.where(success, torch.minimum(upper, c), upper)
        lower = torch.where(success, lower, torch.maximum(lower, c))
        self.c[rows] = torch.where(torch.isfinite(upper), (lower + upper) / 2, c * 10)
        self.lower[rows], self.upper[rows] = lower, upper


class _Best:
    """The smallest successful input of each sample so far (the clean input until one)."""

    def __init__(self, x: Tensor, eps: float) -> None:
        self.x = x.clone()
        self.l2 = torch.full((len(x),), math.inf, dtype=torch.float64, device=x.device)
        self.eps = eps
        self.done = torch.zeros(len(x), dtype=torch.bool, device=x.device)

    def offer(self, rows: Tensor, x_adv: Tensor, l2: Tensor, success: Tensor) -> None:
        better = success & (l2 < self.l2[rows])
        if not bool(better.any()):
            return
        where = rows[better]
        self.x[where] = x_adv[better]
        self.l2[where] = l2[better]
        if math.isfinite(self.eps):
            # a success inside the threat model's ball answers its question: stop this sample
            self.done[where] = l2[better] <= self.eps
