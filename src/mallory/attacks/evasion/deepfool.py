"""DeepFool: the minimal step to the nearest linearized decision boundary, repeated."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from mallory.access.oracle import Access
from mallory.access.view import OracleView
from mallory.attacks.base import register
from mallory.attacks.evasion.base import EvasionAttack
from mallory.attacks.evasion.losses import reached
from mallory.attacks.noise import Noise
from mallory.attacks.params import flag, integer, real
from mallory.threat import Goal, Norm

# Added to |f_l| in every step so that the linearized step ends just past the boundary, not
# on it (a point on the boundary is a tie, not a misclassification).
MARGIN = 1e-4


@register("deepfool")
@dataclass(frozen=True, kw_only=True)
class DeepFool(EvasionAttack):
    """Step to the nearest boundary of the linearized classifier until the label changes.

    Moosavi-Dezfooli, Fawzi and Frossard, "DeepFool: a simple and accurate method to fool deep
    neural networks", CVPR 2016 (Algorithm 2, and its Lp form with q the dual norm).

    Threat model: white-box (gradients), L2 or Linf, untargeted; a minimal-perturbation attack,
    so ``eps`` may be ``inf`` (a finite eps clips the result, as for every attack). At each
    iteration, for the current point and each candidate class ``k`` (the ``candidates`` classes
    ranked highest by the clean logits, the true class ``y`` first), ``f_k = z_k - z_y`` and
    ``w_k = grad f_k``; the class with the nearest linearized boundary, ``l = argmin |f_k| /
    ||w_k||_q`` (q = 2 for L2, 1 for Linf), gives the step ``r = (|f_l| + 1e-4) / ||w_l||_2^2
    * w_l`` (L2) or ``(|f_l| + 1e-4) / ||w_l||_1 * sign(w_l)`` (Linf). Steps accumulate in
    ``r_total``; the point queried next is ``x + (1 + overshoot) * r_total`` clamped to the
    bounds, and a sample stops as soon as that point's label is no longer ``y`` (seen in the
    logits of the next gradient query, at no extra cost). A sample misclassified from the start
    is left as it is.

    With ``box_aware`` (not in the paper), each gradient loses the components that would push a
    feature already at a bound further out, and the accumulated step is kept inside the box: the
    linearized step then lands where the bounds let it, not partly beyond them. On the MNIST
    CNN (pixels mostly at 0 or 1) that takes 2-3 steps instead of 6-15, about 4x fewer
    gradients, for perturbations about 4 % larger.

    Cost: one gradient query per candidate other than ``y`` (each gives ``grad (z_k - z_y)``
    directly), so ``candidates - 1`` gradient evaluations per iteration and per sample still
    standing; a sample whose label changes after ``s`` steps spends ``(candidates - 1) * s + 1``
    (the last one observes the change), one that never breaks ``(candidates - 1) * steps``, one
    misclassified from the start 1.

    Shapes: ``x`` is ``(n, *input_shape)`` inside the bounds; the result has the same shape.

    Args:
        steps: the most iterations per sample (50).
        overshoot: the accumulated step is scaled by ``1 + overshoot`` (0.02).
        candidates: classes considered, the true class included: the top classes of the
            clean logits (10; at most the number of classes).
        box_aware: drop gradient components that point out of the input box (False).

    Example::

        result = create("deepfool")(Oracle(model, white_box("l2")), x, y)
        result.l2.median()
    """

    default = True  # run by a campaign that names no attacks
    rank = 2

    access = Access.GRADIENTS
    fast: ClassVar[dict[str, Any]] = {"steps": 20}  # quick on a tiny model (tests)
    norms = frozenset({Norm.L2, Norm.LINF})
    goals = frozenset({Goal.UNTARGETED})
    minimizes = True
    paper = (
        "Moosavi-Dezfooli, Fawzi and Frossard, DeepFool: a simple and accurate method to fool "
        "deep neural networks, CVPR 2016"
    )

    steps: int = integer(50, low=1, help="the most iterations per sample")
    overshoot: float = real(0.02, low=0.0, help="scale the accumulated step by 1 + overshoot")
    candidates: int = integer(
        10, low=2, help="classes considered (the true one included), top of the clean logits"
    )
    box_aware: bool = flag(
        False, help="drop gradient components pointing out of the input box (fewer steps)"
    )

    def _run(
        self, oracle: OracleView, x: Tensor, y: Tensor, targets: Tensor | None, noise: Noise
    ) -> Tensor:
        n, k = len(x), min(self.candidates, oracle.num_classes)
        linf = oracle.norm is Norm.LINF
        scale = 1.0 + self.overshoot
        view = (-1,) + (1,) * (x.dim() - 1)
        r_total = torch.zeros_like(x)
        others = torch.zeros((n, k - 1), dtype=torch.int64, device=x.device)
        active = torch.arange(n, device=x.device)
        for step in range(self.steps):
            if not len(active):
                break
            point = oracle.bounds.clamp(x[active] + scale * r_total[active])
            ya = y[active]
            # The first query gives the logits (to see whether the label changed) and, in the
            # same pass, the gradient of the first candidate. Before the first step the
            # candidates are not known yet: its loss is the margin to the best other class,
            # which is that candidate by construction.
            first = _margin_to_best if step == 0 else _margin_to(others[active, 0])
            answer = oracle.gradient(point, first(ya), rows=active)
            logits = answer.logits
            go_on = ~reached(logits, ya.to(logits.device), None) & torch.isfinite(logits).all(1)
            if step == 0:
                ranked = _ranked_others(logits.nan_to_num(0.0), ya)[:, : k - 1]
                others[active] = ranked.to(x.device)
            keep = go_on.nonzero().squeeze(1).to(x.device)
            active, point, ya = active[keep], point[keep], ya[keep]
            if not len(active):
                break
            logits, grad = logits[keep.to(logits.device)].to(x), answer.grad[keep]
            cand = others[active]
            # |f_k| = z_y - z_k >= 0 for every candidate: y is still the predicted class
            gaps = (logits.gather(1, ya[:, None]) - logits.gather(1, cand)).abs()

            best_ratio = torch.full((len(active),), torch.inf, dtype=x.dtype, device=x.device)
            best_f = torch.zeros_like(best_ratio)
            best_w = torch.zeros_like(point)
            for j in range(k - 1):
                if j:
                    answer = oracle.gradient(point, _margin_to(cand[:, j])(ya), rows=active)
                    grad = answer.grad
                if self.box_aware:
                    grad = _inward(grad, point, *oracle.bounds.on(point))
                f = gaps[:, j]
                ratio = (f / _dual_norm(grad, linf)).nan_to_num(torch.inf, torch.inf, torch.inf)
                better = ratio < best_ratio
                best_ratio = torch.where(better, ratio, best_ratio)
                best_f = torch.where(better, f, best_f)
                best_w = torch.where(better.view(view), grad, best_w)

            length = _dual_norm(best_w, linf).clamp_min(1e-30)
            if linf:
                r = ((best_f + MARGIN) / length).view(view) * best_w.sign()
            else:
                r = ((best_f + MARGIN) / length**2).view(view) * best_w
            # a sample with no usable gradient (all zero, or refused) takes no step
            r = torch.where(torch.isfinite(best_ratio).view(view), r, torch.zeros_like(r))
            if self.box_aware:
                moved = oracle.bounds.clamp(x[active] + scale * (r_total[active] + r))
                r_total[active] = (moved - x[active]) / scale
            else:
                r_total[active] += r
        return oracle.bounds.clamp(x + scale * r_total)


def _dual_norm(w: Tensor, linf: bool) -> Tensor:
    """Per-sample ||w||_1 (dual of Linf) or ||w||_2."""
    flat = w.flatten(1)
    return flat.abs().sum(1) if linf else flat.norm(p=2, dim=1)


def _inward(grad: Tensor, point: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """The gradient without the components that push a feature at a bound further out."""
    return grad.masked_fill(((point <= lo) & (grad < 0)) | ((point >= hi) & (grad > 0)), 0.0)


def _ranked_others(logits: Tensor, y: Tensor) -> Tensor:
    """Classes other than ``y`` from the highest logit down (ties: lowest index first)."""
    masked = logits.scatter(1, y[:, None].to(logits.device), -torch.inf)
    return torch.sort(masked, dim=1, descending=True, stable=True).indices


def _margin_to_best(y: Tensor) -> Callable[[Tensor], Tensor]:
    """Loss ``z_c - z_y`` with ``c`` the best other class at the queried point."""

    def loss(logits: Tensor) -> Tensor:
        best = _ranked_others(logits.detach(), y)[:, :1]
        yy = y[:, None].to(logits.device)
        return (logits.gather(1, best) - logits.gather(1, yy)).squeeze(1)

    return loss


def _margin_to(c: Tensor) -> Callable[[Tensor], Callable[[Tensor], Tensor]]:
    """Loss ``z_c - z_y`` for fixed classes ``c``, as a factory taking ``y``."""

    def with_labels(y: Tensor) -> Callable[[Tensor], Tensor]:
        def loss(logits: Tensor) -> Tensor:
            cc, yy = c[:, None].to(logits.device), y[:, None].to(logits.device)
            return (logits.gather(1, cc) - logits.gather(1, yy)).squeeze(1)

        return loss

    return with_labels
