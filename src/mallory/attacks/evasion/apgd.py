"""Auto-PGD (APGD): PGD with momentum and a step size that adapts itself, Linf and L2."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

import torch
from torch import Tensor

from mallory.access import Access, Oracle, OracleView
from mallory.attacks.base import register
from mallory.attacks.evasion.base import EvasionAttack
from mallory.attacks.evasion.fgsm import steepest_step
from mallory.attacks.evasion.losses import cross_entropy, dlr, reached
from mallory.attacks.noise import Noise
from mallory.attacks.params import flag, integer, real
from mallory.errors import InputError
from mallory.params import Options, OrNone, param
from mallory.threat import Goal, Norm
from mallory.threat.perturbation import project

MOMENTUM = 0.75  # alpha: the weight of the new step against the previous move
FIRST_STEP = 2.0  # the step size starts at 2 * eps
# checkpoints p_j, in hundredths of the steps: p_1 = 0.22; each interval is 0.03 shorter than
# the one before, and never shorter than 0.06
FIRST_CHECKPOINT, SHRINK, SHORTEST = 22, 3, 6


class APGDLoss(StrEnum):
    """The loss APGD ascends."""

    CE = "ce"  # cross-entropy
    DLR = "dlr"  # difference of logits ratio
    DLR_TARGETED = "dlr-targeted"  # DLR towards a target class (APGD-T)


def checkpoints(steps: int) -> list[int]:
    """The iterations ``w_j = ceil(p_j * steps)`` at which APGD reviews its step size.

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``; only
    the distinct ones inside the run (``0 < w_j < steps``) are returned. For 100 steps:
    ``[22, 41, 57, 70, 80, 87, 93, 99]``. Computed in integer hundredths, so no rounding
    error can move a checkpoint.
    """
    out: list[int] = []
    before, p = 0, FIRST_CHECKPOINT
    while True:
        w = -(-p * steps // 100)  # ceil(p / 100 * steps)
        if w >= steps:
            return out
        if w > (out[-1] if out else 0):
            out.append(w)
        before, p = p, p + max(p - before - SHRINK, SHORTEST)


class StepSchedule:
    """APGD's step-size rule for a batch of rows climbing a loss, one call per iteration.

    At each checkpoint ``w_j`` a row's step size is halved, and the row restarts from the
    best point it has seen, when

    1. fewer than ``rho * (w_j - w_{j-1})`` of its steps since the last checkpoint raised the
       loss (``f(x_{i+1}) > f(x_i)``), or
    2. neither its step size nor its best loss changed since the last checkpoint.

    Condition 2 applies at the first checkpoint as written in the paper (the reference
    implementation skips it there). After a restart, the next step is compared with the best
    loss, the loss of the point it starts from.
    """

    def __init__(self, steps: int, rho: float, size: Tensor) -> None:
        self.rho = rho
        self.size = size.clone()  # (n,) the current step sizes
        self._checkpoints = checkpoints(steps)
        self._iteration = -1
        self._last_checkpoint = 0
        self.best = torch.full_like(size, float("-inf"))  # f_max per row
        self._last = torch.full_like(size, float("-inf"))  # loss at the point last stepped from
        self._rises = torch.zeros(size.shape, dtype=torch.int64, device=size.device)
        self._best_at_check = torch.full_like(size, float("-inf"))
        self._halved_at_check = torch.zeros(size.shape, dtype=torch.bool, device=size.device)

    def observe(self, loss: Tensor) -> tuple[Tensor, Tensor | None]:
        """Note the losses at the current iterates.

        Returns the rows whose loss beats their best so far (all rows on the first call), and,
        at a checkpoint, the rows whose step size was just halved: they must move back to
        their best point (None between checkpoints).
        """
        # a refused row's loss is NaN (the caller drops such rows before the next call); a
        # NaN never counts as a rise or an improvement
        self._iteration += 1
        if self._iteration == 0:
            improved = ~loss.isnan()
            self.best = self._best_at_check = torch.where(improved, loss, self.best)
        else:
            self._rises += loss > self._last
            improved = loss > self.best
            self.best = torch.where(improved, loss, self.best)
        self._last = loss
        if self._iteration not in self._checkpoints:
            return improved, None
        interval = self._iteration - self._last_checkpoint
        too_few_rises = self._rises < self.rho * interval
        stalled = ~self._halved_at_check & (self.best <= self._best_at_check)
        halve = too_few_rises | stalled
        self.size = torch.where(halve, self.size / 2, self.size)
        self._last = torch.where(halve, self.best, self._last)
        self._halved_at_check = halve
        self._best_at_check = self.best.clone()
        self._rises.zero_()
        self._last_checkpoint = self._iteration
        return improved, halve

    def keep(self, mask: Tensor) -> None:
        """Keep only the rows in ``mask``."""
        self.size, self.best, self._last = self.size[mask], self.best[mask], self._last[mask]
        self._rises = self._rises[mask]
        self._best_at_check = self._best_at_check[mask]
        self._halved_at_check = self._halved_at_check[mask]


def _loss_field() -> Any:
    return param(
        OrNone(Options(APGDLoss)),
        None,
        help="loss to ascend: 'ce', 'dlr' or 'dlr-targeted' (None: 'ce' when "
        "untargeted, 'dlr-targeted' when targeted)",
    )


@register("apgd")
@dataclass(frozen=True, kw_only=True)
class APGD(EvasionAttack):
    """PGD with momentum whose step size halves whenever progress stalls: no step to tune.

    Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020 (APGD-CE, APGD-DLR and APGD-T of AutoAttack).

    Threat model: white-box (gradients), Linf or L2 ball of radius ``eps`` (finite);
    untargeted or targeted. Shapes: ``x`` is ``(n, *input_shape)`` inside the bounds.

    Each run starts from a random point on the surface of the ball (clamped into the bounds)
    with step size ``2 * eps`` and climbs the loss ``f``: a steepest-ascent step (the sign of
    the gradient in Linf, its direction in L2) to ``z``, then ``x_{k+1} = P(x_k + 0.75 (z -
    x_k) + 0.25 (x_k - x_{k-1}))`` (``P``: projection into the ball and the bounds; the first
    step has no momentum). At the checkpoints of :func:`checkpoints` the step size is halved,
    and the run goes back to its best point, where too few steps raised the loss or nothing
    improved (:class:`StepSchedule`).

    Every gradient query also returns the logits, so success is seen for free. With
    ``stop_early`` (the default) a sample stops at its first success and the batch is
    compacted, so only the samples still standing are forwarded and backwarded; without it,
    every sample runs all its steps, and the base restores a success a later step lost. A
    sample still standing ends a run at the step taken from its last gradient. Restarts (and
    target classes) run only on the samples still standing. A sample whose query budget runs
    out stops where it is and is not attacked again.

    Losses: ``"ce"`` (cross-entropy; towards the target when targeted), ``"dlr"`` (difference
    of logits ratio, invariant to shifting and scaling the logits; its targeted form when
    the threat model is targeted) and ``"dlr-targeted"``. Under a targeted threat model,
    ``"dlr-targeted"`` aims at the threat model's targets. Under an untargeted one it is
    AutoAttack's APGD-T: one query on the clean inputs ranks the classes, and the
    ``target_classes`` most likely wrong classes are tried in turn as targets, each on the
    samples still standing; reaching any wrong class is a success. DLR needs at least 3 classes
    (its targeted form 4).

    Cost per sample: at most ``restarts * steps`` gradient evaluations (each one query),
    times ``target_classes`` plus one for APGD-T under an untargeted threat model.

    Args:
        steps: gradient evaluations per run (default 100, AutoAttack's standard version).
        restarts: runs from fresh random starts, each on the samples still standing
            (default 1).
        rho: the share of steps since the last checkpoint that must raise the loss for the
            step size to stay (default 0.75).
        loss: ``"ce"``, ``"dlr"`` or ``"dlr-targeted"`` (default None: ``"ce"`` under an
            untargeted threat model, ``"dlr-targeted"`` under a targeted one).
        target_classes: under an untargeted threat model with ``loss="dlr-targeted"``, how
            many of the most likely wrong classes to try as targets (default 9).
        stop_early: stop each sample at its first success (default True).

    Example::

        # AutoAttack's standard APGD-CE, then APGD-T on what still stands
        threat = white_box("linf", 0.3)
        ce = create("apgd")(Oracle(model, threat), x, y, rng=0)
        standing = ~ce.success
        t = create("apgd", loss="dlr-targeted")(
            Oracle(model, threat), x[standing], y[standing], rng=0
        )
    """

    access = Access.GRADIENTS
    fast: ClassVar[dict[str, Any]] = {"steps": 20}  # quick on a tiny model (tests)
    norms = frozenset({Norm.LINF, Norm.L2})
    paper = (
        "Croce and Hein, Reliable evaluation of adversarial robustness with an ensemble of "
        "diverse parameter-free attacks, ICML 2020"
    )

    steps: int = integer(100, low=1, help="gradient evaluations per run")
    restarts: int = integer(
        1, low=1, help="runs from fresh random starts, each on the samples still standing"
    )
    rho: float = real(
        0.75,
        low=0.0,
        high=1.0,
        low_open=True,
        help="share of steps between checkpoints that must raise the loss to keep the step",
    )
    loss: APGDLoss | None = _loss_field()
    target_classes: int = integer(
        9,
        low=1,
        help="untargeted threat with loss='dlr-targeted': most likely wrong classes tried",
    )
    stop_early: bool = flag(True, help="stop each sample at its first success")

    def _loss(self, goal: Goal) -> APGDLoss:
        if self.loss is not None:
            return self.loss
        return APGDLoss.CE if goal is Goal.UNTARGETED else APGDLoss.DLR_TARGETED

    def planned_queries(self, oracle: Oracle | OracleView) -> int | None:
        goal = oracle.threat.goal
        if self._loss(goal) is APGDLoss.DLR_TARGETED and goal is Goal.UNTARGETED:
            classes = min(self.target_classes, oracle.num_classes - 1)
            return 1 + classes * self.restarts * self.steps
        return self.restarts * self.steps

    # ------------------------------------------------------------------ the attack
    def _run(
        self, oracle: OracleView, x: Tensor, y: Tensor, targets: Tensor | None, noise: Noise
    ) -> Tensor:
        loss = self._loss(oracle.threat.goal)
        self._check_classes(loss, oracle)
        x_adv = x.clone()
        broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        spent = torch.zeros_like(broken)  # refused by the oracle: not attacked again
        if targets is None and loss is APGDLoss.DLR_TARGETED:
            ranked = self._rank_wrong_classes(oracle, x, y, broken, spent)
            aims: list[Tensor | None] = list(ranked.unbind(1))
        else:
            aims = [targets]
        for rank, aim in enumerate(aims):
            for restart in range(self.restarts):
                rows = (~broken & ~spent).nonzero().squeeze(1)
                if len(rows) == 0:
                    return x_adv
                run = (rank, restart)
                self._climb(
                    oracle, x, y, targets, aim, loss, noise, rows, run, x_adv, broken, spent
                )
        return x_adv

    def _check_classes(self, loss: APGDLoss, oracle: OracleView) -> None:
        """Refuse, before any query, a DLR loss on too few classes."""
        if loss is APGDLoss.CE:
            return
        needed = 3 if loss is APGDLoss.DLR and oracle.threat.goal is Goal.UNTARGETED else 4
        if oracle.num_classes < needed:
            raise InputError(
                f"{self.name} with loss={loss.value!r} needs at least {needed} classes (the DLR "
                f"loss divides by a gap between sorted logits); the system has "
                f"{oracle.num_classes}. Use loss='ce'."
            )

    def _rank_wrong_classes(
        self, oracle: OracleView, x: Tensor, y: Tensor, broken: Tensor, spent: Tensor
    ) -> Tensor:
        """The ``target_classes`` most likely wrong classes of each clean input, ``(n, k)``.

        One gradient query (gradients come with the logits, whatever the exposure); a clean
        input already misclassified is marked broken, and is not attacked."""
        answer = oracle.gradient(x, lambda logits: cross_entropy(logits, y))
        refused = ~torch.isfinite(answer.logits).all(1)
        spent |= refused
        broken |= reached(answer.logits, y, None)
        logits = answer.logits.nan_to_num(0.0).scatter(1, y[:, None], float("-inf"))
        k = min(self.target_classes, oracle.num_classes - 1)
        return logits.topk(k, dim=1).indices

    def _climb(
        self,
        oracle: OracleView,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        aim: Tensor | None,
        loss: APGDLoss,
        noise: Noise,
        rows: Tensor,
        run: tuple[int, int],
        x_adv: Tensor,
        broken: Tensor,
        spent: Tensor,
    ) -> None:
        """One run of ``steps`` gradient evaluations on the batch positions ``rows``, ascending
        ``loss`` (towards ``aim`` when it is given); success means reaching ``targets`` (any
        wrong class when None).

        Writes each first success into ``x_adv`` and ``broken``, the point where a sample
        stopped, or its last iterate, into ``x_adv``, and refused samples into ``spent``.
        """
        climb = _Climb.start(self._start(x[rows], noise, rows, run, oracle), x, y, rows, oracle)
        climb.aim = None if aim is None else aim[rows]
        climb.goal = None if targets is None else targets[rows]
        first = torch.full((len(rows),), FIRST_STEP * oracle.eps, dtype=x.dtype, device=x.device)
        schedule = StepSchedule(self.steps, self.rho, first)
        objective = _objective(loss, climb.y, climb.aim)
        for k in range(self.steps):
            where = climb.where
            # ``where`` is sorted and distinct: the whole batch when it is as long
            whole = where.shape[0] == x.shape[0]
            answer = oracle.gradient(climb.current, objective, rows=None if whole else where.cpu())
            hit = reached(answer.logits, climb.y, climb.goal)
            refused = answer.logits.isnan().any(1)  # a refused row is NaN
            if self.stop_early:  # a row still climbing has never been broken
                fresh, stop = hit, hit | refused
                act = bool(stop.any())
            else:
                fresh, stop = hit & ~broken[where], refused
                act = bool((fresh | stop).any())
            if act and bool(fresh.any()):
                x_adv[where[fresh]] = climb.current[fresh]
                broken[where[fresh]] = True
            climb.grad = answer.grad
            improved, halved = schedule.observe(answer.loss)
            climb.note_best(improved)
            if act and bool(stop.any()):
                x_adv[where[stop]] = climb.current[stop]
                spent[where[refused]] = True
                keep = ~stop
                climb.keep(keep)
                schedule.keep(keep)
                objective = _objective(loss, climb.y, climb.aim)
                if halved is not None:
                    halved = halved[keep]
                if climb.where.shape[0] == 0:
                    return
            if halved is not None and bool(halved.any()):
                climb.back_to_best(halved)
            climb.step(schedule.size, 1.0 if k == 0 else MOMENTUM)
        x_adv[climb.where] = climb.current

    def _start(
        self, origin: Tensor, noise: Noise, rows: Tensor, run: tuple[int, int], oracle: OracleView
    ) -> Tensor:
        """A random point on the surface of the ball (Linf: a uniform draw scaled so that its
        largest coordinate is eps; L2: a uniform direction at radius eps), in the bounds."""
        shape, where = origin.shape[1:], rows.cpu()
        dtype, device = origin.dtype, origin.device
        view = (-1,) + (1,) * len(shape)
        draw = noise.fold("apgd.start", *run)
        if oracle.norm is Norm.LINF:
            u = 2.0 * draw.uniform(shape, where, dtype=dtype, device=device) - 1.0
            size = u.flatten(1).abs().amax(1).clamp_min(1e-12)
        else:
            u = draw.normal(shape, where, dtype=dtype, device=device)
            size = u.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
        delta = oracle.eps * u / size.view(view)
        return project(origin + delta, origin, oracle.norm, oracle.eps, oracle.bounds)


def _objective(loss: APGDLoss, y: Tensor, aim: Tensor | None) -> Any:
    """The closure ``logits -> (n,)`` for the oracle's gradient query."""
    if loss is APGDLoss.CE:
        return lambda logits: cross_entropy(logits, y, aim)
    return lambda logits: dlr(logits, y, aim)


@dataclass
class _Climb:
    """The rows of one run still climbing, compacted together: their batch positions, labels,
    targets, region of the input space and iterates."""

    where: Tensor  # positions in the batch
    y: Tensor
    aim: Tensor | None  # the targets the loss aims at
    goal: Tensor | None  # the targets success is judged by
    origin: Tensor
    lower: Tensor | None  # Linf: the eps-box inside the bounds
    upper: Tensor | None
    current: Tensor
    previous: Tensor
    grad: Tensor
    best: Tensor
    best_grad: Tensor
    oracle: OracleView = dataclasses.field(repr=False)

    @staticmethod
    def start(start: Tensor, x: Tensor, y: Tensor, rows: Tensor, oracle: OracleView) -> _Climb:
        origin = x[rows]
        lower = upper = None
        if oracle.norm is Norm.LINF:
            lo, hi = oracle.bounds.on(origin)
            lower = torch.maximum(origin - oracle.eps, lo)
            upper = torch.minimum(origin + oracle.eps, hi)
        zeros = torch.zeros_like(start)
        return _Climb(
            where=rows,
            y=y[rows],
            aim=None,
            goal=None,
            origin=origin,
            lower=lower,
            upper=upper,
            current=start,
            previous=start,
            grad=zeros,
            best=start.clone(),  # best and best_grad own their storage: updated in place
            best_grad=torch.zeros_like(start),
            oracle=oracle,
        )

    def keep(self, mask: Tensor) -> None:
        """Keep only the rows in ``mask``."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                setattr(self, f.name, value[mask])

    def note_best(self, improved: Tensor) -> None:
        """Copy the current iterate (and its gradient) of rows that beat their best loss into
        their best point: in place, and only those rows (usually a few)."""
        rows = improved.nonzero().squeeze(1)
        count = rows.shape[0]
        if count == improved.shape[0]:
            self.best.copy_(self.current)
            self.best_grad.copy_(self.grad)
        elif count:
            self.best.index_copy_(0, rows, self.current.index_select(0, rows))
            self.best_grad.index_copy_(0, rows, self.grad.index_select(0, rows))

    def back_to_best(self, rows: Tensor) -> None:
        """Move ``rows`` back to their best point and its gradient (the previous iterate, for
        the momentum, stays)."""
        self.current, self.grad = self.current.clone(), self.grad.clone()
        self.current[rows] = self.best[rows]
        self.grad[rows] = self.best_grad[rows]

    def step(self, size: Tensor, alpha: float) -> None:
        """The next iterate: a steepest step to ``z``, then momentum, each projected.

        ``x_k + alpha (z - x_k) + (1 - alpha) (x_k - x_{k-1})`` is computed as the equal
        ``alpha z + 2 (1 - alpha) x_k - (1 - alpha) x_{k-1}``, in place on the fresh ``z``:
        fewer passes over the batch, and no new tensor."""
        size = size.view(-1, *[1] * (self.current.dim() - 1))
        direction = steepest_step(self.grad, self.oracle.norm)
        z = self._project(torch.addcmul(self.current, size, direction))
        if alpha != 1.0:
            rest = 1.0 - alpha
            z = z.mul_(alpha).add_(self.current, alpha=2 * rest).sub_(self.previous, alpha=rest)
            z = self._project(z)
        self.previous, self.current = self.current, z

    def _project(self, moved: Tensor) -> Tensor:
        """``moved`` (a fresh tensor, clamped in place in Linf) in the ball and the bounds."""
        if self.lower is not None and self.upper is not None:
            return moved.clamp_(self.lower, self.upper)
        oracle = self.oracle
        return project(moved, self.origin, oracle.norm, oracle.eps, oracle.bounds)
