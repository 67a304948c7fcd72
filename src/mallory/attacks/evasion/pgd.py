"""Projected gradient descent (PGD) and the basic iterative method (BIM), Linf and L2."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from mallory.access.oracle import Access, Oracle
from mallory.access.view import OracleView
from mallory.attacks.base import register
from mallory.attacks.evasion.base import EvasionAttack
from mallory.attacks.evasion.fgsm import steepest_step
from mallory.attacks.evasion.losses import Loss, loss_fn, reached
from mallory.attacks.noise import Noise
from mallory.attacks.params import choice, flag, integer, real
from mallory.errors import InputError
from mallory.threat import Norm
from mallory.threat.perturbation import project


@register("pgd")
@dataclass(frozen=True, kw_only=True)
class PGD(EvasionAttack):
    """Iterated gradient steps, each projected back into the eps-ball and the input bounds.

    Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep Learning Models Resistant to
    Adversarial Attacks", ICLR 2018 (with a random start); Kurakin, Goodfellow and Bengio,
    "Adversarial Examples in the Physical World", ICLR 2017 workshop (BIM: no random start).

    Threat model: white-box (gradients), Linf or L2 ball of radius ``eps`` (finite);
    untargeted (ascend the loss of the true class) or targeted (descend the loss of the
    target). Linf steps by ``step_size`` times the sign of the gradient, L2 by ``step_size``
    along its direction; after each step the iterate is clamped to the bounds and projected
    into the ball. Shapes: ``x`` is ``(n, *input_shape)`` inside the bounds.

    Every gradient query also returns the logits at the current iterate, so success is seen
    for free. The result is the last iterate (deepest in the wrong class); if a later step lost
    a success seen earlier, the attack base restores that one from the oracle's record, so a
    success is never lost. With ``stop_early`` a sample stops at its first success, and the batch is
    compacted so only the samples still standing are forwarded and backwarded. A restart
    runs again, from a fresh random start, only on the samples not yet broken; to know which
    those are it asks the labels of the last iterates (one query per sample still standing).
    A sample whose query budget runs out stops where it is.

    Cost per sample: at most ``restarts * steps`` gradient evaluations (each one query), plus
    one label query per restart after the first.

    Args:
        steps: gradient steps per restart (default 40).
        step_size: absolute step length in the threat model's norm (default ``2.5 * eps /
            steps``, Madry et al.'s choice).
        random_start: start from a uniform draw in the ball (default True); False gives BIM.
        restarts: runs from independent random starts, each on the samples still standing
            (default 1; more than 1 needs ``random_start``).
        stop_early: stop each sample at its first success (default False: a fixed budget).
        loss: ``"ce"`` (cross-entropy, default) or ``"margin"`` (logit margin).

    Example::

        attack = create("pgd", steps=40, step_size=0.01)
        result = attack(Oracle(model, white_box("linf", 0.3)), x, y, rng=0)
        result.robust_accuracy, result.gradients.double().mean()
    """

    default = True  # run by a campaign that names no attacks
    rank = 1

    access = Access.GRADIENTS
    fast: ClassVar[dict[str, Any]] = {"steps": 20}  # quick on a tiny model (tests)
    norms = frozenset({Norm.LINF, Norm.L2})
    paper = "Madry et al., Towards Deep Learning Models Resistant to Adversarial Attacks, ICLR 2018"

    steps: int = integer(40, low=1, help="gradient steps per restart")
    step_size: float | None = real(
        None,
        low=0.0,
        low_open=True,
        optional=True,
        help="absolute step length in the threat model's norm (None: 2.5 * eps / steps)",
    )
    random_start: bool = flag(True, help="start from a uniform draw in the eps-ball")
    restarts: int = integer(
        1, low=1, help="runs from fresh random starts, each on the samples still standing"
    )
    stop_early: bool = flag(False, help="stop each sample at its first success")
    loss: Loss = choice(Loss.CE, help="loss to ascend: cross-entropy or logit margin")

    def _check(self) -> None:
        if self.restarts > 1 and not self.random_start:
            raise InputError(
                f"The 'restarts' parameter of {type(self).__name__} must be 1 when "
                f"random_start=False (every restart would repeat the same run); got "
                f"{self.restarts!r} instead. Set random_start=True or restarts=1."
            )

    def planned_queries(self, oracle: Oracle | OracleView) -> int | None:
        return self.steps * self.restarts + self.restarts - 1

    def _run(
        self, oracle: OracleView, x: Tensor, y: Tensor, targets: Tensor | None, noise: Noise
    ) -> Tensor:
        step = self.step_size if self.step_size is not None else 2.5 * oracle.eps / self.steps
        x_adv = x.clone()
        broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for restart in range(self.restarts):
            rows = (~broken).nonzero().squeeze(1)
            if len(rows) == 0:
                break
            last = self._descend(oracle, x, y, targets, noise, rows, restart, step, x_adv, broken)
            # the last iterates are the result; a success seen earlier that a later step lost
            # is restored by the attack base from the oracle's record
            x_adv[rows] = last
            standing = rows[~broken[rows]]
            if restart + 1 < self.restarts and len(standing):
                # the last iterates were never checked; one label query tells which fell
                labels = oracle.labels(x_adv[standing], rows=standing.cpu())
                aim = y[standing] if targets is None else targets[standing]
                fell = (labels >= 0) & ((labels != aim) if targets is None else (labels == aim))
                broken[standing[fell]] = True
        return x_adv

    def _descend(
        self,
        oracle: OracleView,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        noise: Noise,
        rows: Tensor,
        restart: int,
        step: float,
        x_adv: Tensor,
        broken: Tensor,
    ) -> Tensor:
        """One run of ``steps`` iterations on the batch positions ``rows``.

        Writes each first success into ``x_adv`` and ``broken``; returns the last iterates
        of ``rows`` (those that stopped keep the iterate they stopped at).
        """
        region = _Region.around(x[rows], oracle)
        current = self._start(region.origin, noise, rows, restart, oracle)
        last = current.clone()
        live = torch.arange(len(rows), device=x.device)  # positions in ``rows`` still iterating
        goal = y[rows]
        aim = None if targets is None else targets[rows]
        objective = loss_fn(self.loss, goal, aim)
        for _ in range(self.steps):
            where = rows[live]
            # ``where`` is sorted and distinct: the whole batch when it is as long
            whole = len(where) == len(x)
            answer = oracle.gradient(current, objective, rows=None if whole else where.cpu())
            hit = reached(answer.logits, goal, aim)
            refused = ~torch.isfinite(answer.logits).all(1)
            fresh = hit & ~broken[where]
            if bool(fresh.any()):
                x_adv[where[fresh]] = current[fresh]
                broken[where[fresh]] = True
            current = region.step(current, answer.grad, step)
            stop = (hit | refused) if self.stop_early else refused
            if bool(stop.any()):
                last[live[stop]] = current[stop]
                keep = ~stop
                live, current, goal = live[keep], current[keep], goal[keep]
                aim = None if aim is None else aim[keep]
                region = region.keep(keep)
                objective = loss_fn(self.loss, goal, aim)
                if len(live) == 0:
                    break
        last[live] = current
        return last

    def _start(
        self,
        origin: Tensor,
        noise: Noise,
        rows: Tensor,
        restart: int,
        oracle: OracleView,
    ) -> Tensor:
        """The first iterate: the clean input, or a uniform draw from the ball (in bounds)."""
        if not self.random_start:
            return origin.clone()
        norm, eps = oracle.norm, oracle.eps
        shape, where = origin.shape[1:], rows.cpu()
        dtype, device = origin.dtype, origin.device
        draw = noise.fold("pgd.start", restart)
        if norm is Norm.LINF:
            u = draw.uniform(shape, where, dtype=dtype, device=device)
            delta = eps * (2.0 * u - 1.0)
        else:
            direction = draw.fold("direction").normal(shape, where, dtype=dtype, device=device)
            length = direction.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
            u = draw.fold("radius").uniform((), where, dtype=dtype, device=device)
            radius = eps * u ** (1.0 / shape.numel())
            delta = direction * (radius / length).view(-1, *[1] * len(shape))
        return project(origin + delta, origin, norm, eps, oracle.bounds)


@dataclass(frozen=True)
class _Region:
    """The perturbation set of the rows still iterating: each one's eps-ball, inside the bounds.

    In Linf that intersection is a box, computed once, so a step costs a sign, an add and a
    clamp (no more than a hand-written loop); in L2 each step is projected.
    """

    oracle: OracleView
    origin: Tensor
    lower: Tensor | None = None
    upper: Tensor | None = None

    @staticmethod
    def around(origin: Tensor, oracle: OracleView) -> _Region:
        if oracle.norm is not Norm.LINF:
            return _Region(oracle, origin)
        lo, hi = oracle.bounds.on(origin)
        eps = oracle.eps
        return _Region(
            oracle, origin, torch.maximum(origin - eps, lo), torch.minimum(origin + eps, hi)
        )

    def keep(self, mask: Tensor) -> _Region:
        """The region of the rows in ``mask``."""
        lower, upper = self.lower, self.upper
        return _Region(
            self.oracle,
            self.origin[mask],
            None if lower is None else lower[mask],
            None if upper is None else upper[mask],
        )

    def step(self, current: Tensor, grad: Tensor, size: float) -> Tensor:
        """``current`` moved by ``size`` along the steepest ascent direction, projected."""
        if self.lower is not None and self.upper is not None:
            return torch.clamp(current.add(grad.sign(), alpha=size), self.lower, self.upper)
        oracle = self.oracle
        moved = current + size * steepest_step(grad, oracle.norm)
        return project(moved, self.origin, oracle.norm, oracle.eps, oracle.bounds)


@register("bim")
@dataclass(frozen=True, kw_only=True)
class BIM(PGD):
    """PGD without a random start: the basic iterative method.

    Kurakin, Goodfellow and Bengio, "Adversarial Examples in the Physical World", ICLR 2017
    workshop. Same parameters and threat model as :class:`PGD`; only ``random_start``
    defaults to False.

    Example::

        result = create("bim", steps=10)(Oracle(model, white_box("linf", 0.1)), x, y)
    """

    paper = "Kurakin et al., Adversarial Examples in the Physical World, ICLR 2017 workshop"
    default = False  # PGD runs in its place

    random_start: bool = flag(False, help="start from a uniform draw in the eps-ball")
