"""Fast Gradient Sign Method (and its L2 form, the fast gradient method)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mallory.access.oracle import Access, Oracle
from mallory.access.view import OracleView
from mallory.attacks.base import register
from mallory.attacks.evasion.base import EvasionAttack
from mallory.attacks.evasion.losses import Loss, loss_fn
from mallory.attacks.noise import Noise
from mallory.attacks.params import choice
from mallory.threat import Norm


@register("fgsm")
@dataclass(frozen=True, kw_only=True)
class FGSM(EvasionAttack):
    """One gradient step of size eps: the sign of the gradient (Linf) or its direction (L2).

    Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.

    Threat model: white-box (gradients), Linf or L2 ball of radius ``eps``; untargeted (ascend
    the loss of the true class) or targeted (descend the loss of the target). One gradient
    evaluation per sample. Shapes: ``x`` is ``(n, *input_shape)`` inside the bounds.

    Args:
        loss: ``"ce"`` (cross-entropy, default) or ``"margin"`` (logit margin).

    Example::

        result = create("fgsm")(Oracle(model, white_box("linf", 0.1)), x, y)
    """

    default = True  # run by a campaign that names no attacks
    rank = 0

    access = Access.GRADIENTS
    norms = frozenset({Norm.LINF, Norm.L2})
    paper = "Goodfellow et al., Explaining and Harnessing Adversarial Examples, ICLR 2015"

    loss: Loss = choice(Loss.CE, help="loss to ascend: cross-entropy or logit margin")

    def planned_queries(self, oracle: Oracle | OracleView) -> int | None:
        return 1

    def _run(
        self, oracle: OracleView, x: Tensor, y: Tensor, targets: Tensor | None, noise: Noise
    ) -> Tensor:
        answer = oracle.gradient(x, loss_fn(self.loss, y, targets))
        step = steepest_step(answer.grad, oracle.norm)
        return oracle.bounds.clamp(x + oracle.eps * step)


def steepest_step(grad: Tensor, norm: Norm) -> Tensor:
    """The unit-norm step that increases a linear function fastest: sign for Linf, direction
    for L2 (zero where the gradient is zero)."""
    if norm is Norm.LINF:
        return grad.sign()
    length = grad.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
    return grad / length.view(-1, *[1] * (grad.dim() - 1))
