"""Gradient estimation from scores: any gradient attack, run as a score-based one.

The wrapper replaces only the gradient source (composition, as Foolbox's gradient-estimator
wrapper does): the inner attack runs unchanged against a view of the oracle whose
``gradient()`` is estimated from score queries, and every query is counted by the real oracle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
from torch import Tensor

from mallory.access.oracle import Access, Gradient, LossFn, Oracle
from mallory.access.view import OracleView
from mallory.attacks.base import register
from mallory.attacks.evasion import pgd as _pgd  # noqa: F401  (registers "pgd", the default inner attack)
from mallory.attacks.evasion.base import EvasionAttack
from mallory.attacks.evasion.wrappers import as_inner_attack
from mallory.attacks.noise import Noise
from mallory.attacks.params import choice, integer, real
from mallory.errors import InputError
from mallory.params import Converted, Instance, param


class Method(StrEnum):
    """How the gradient is estimated from scores."""

    NES = "nes"  # antithetic Gaussian directions (Ilyas et al. 2018)
    FD = "fd"  # symmetric differences along random coordinates (Chen et al. 2017, ZOO)


def complete_scores(probs: Tensor) -> Tensor:
    """Class probabilities with the hidden ones (NaN, top-k exposure) estimated.

    Each hidden class gets an equal share of the mass the shown ones leave, at most the
    smallest shown probability (a hidden class ranks below every shown one). A row with
    nothing shown (a refused query) comes back uniform: callers test refusal themselves.
    """
    hidden = torch.isnan(probs)
    if not bool(hidden.any()):
        return probs
    shown = probs.nan_to_num(0.0)
    left = (1.0 - shown.sum(1, keepdim=True)).clamp_min(0.0)
    share = left / hidden.sum(1, keepdim=True).clamp_min(1)
    smallest = probs.nan_to_num(math.inf).amin(1, keepdim=True)
    return torch.where(hidden, torch.minimum(share, smallest), probs)


def log_scores(probs: Tensor) -> Tensor:
    """Log-probabilities of (completed) scores: logits up to a per-row shift."""
    return complete_scores(probs).clamp_min(1e-30).log()


def _inner_attack(default: str, *, help: str) -> Any:
    rule = Converted(
        Instance(EvasionAttack, "an evasion attack"),
        as_inner_attack,
        "a gradient attack: an Attack instance, a registered name, or {'name': ..., **params}",
    )
    return param(rule, default, help=help)


@register("nes")
@dataclass(frozen=True, kw_only=True)
class EstimatedGradient(EvasionAttack):
    """Any gradient attack run on scores alone, with gradients estimated from queries.

    Ilyas, Engstrom, Athalye and Lin, "Black-box Adversarial Attacks with Limited Queries and
    Information", ICML 2018 (NES: antithetic Gaussian samples); Chen, Zhang, Sharma, Yi and
    Hsieh, "ZOO: Zeroth Order Optimization Based Black-box Attacks", AISec 2017 (coordinate
    finite differences).

    Threat model: scores (all, or the top k: hidden ones are estimated by
    :func:`complete_scores`); the norms and goals of the inner ``attack`` (an instance's
    ``norms``, ``goals`` and ``minimizes`` are its inner attack's). The inner attack
    runs unchanged; only its oracle's ``gradient(x, loss, rows)`` is replaced by an estimate
    of d loss / d x from one batched ``scores`` query per call, holding for each row the point
    itself and ``2 * samples`` perturbed copies:

    * ``method="nes"``: ``g = sum_i (L(x + sigma u_i) - L(x - sigma u_i)) u_i / (2 sigma
      samples)`` with ``u_i`` standard normal (unbiased for the gradient of the Gaussian-smoothed
      loss);
    * ``method="fd"``: ``samples`` distinct random coordinates (all of them when ``samples``
      exceeds the input size) get the symmetric difference ``(L(x + sigma e_k) - L(x - sigma
      e_k))`` over the step actually taken after clamping to the bounds; the others are zero.

    The inner loss sees log-probabilities in place of logits. They differ from the logits by a
    per-row constant, to which the cross-entropy, the logit margin and every loss built from
    logit differences are blind, so the inner attack ascends the same function. The answer's
    ``logits`` are the log-probabilities at ``x`` itself. Perturbed points are clamped to the
    bounds, which makes NES pairs one-sided at a bound.

    Cost: ``1 + 2 * samples`` queries (FD: at most 1 + 2 * input size) per estimated gradient
    and per row, no true gradient evaluations. A row whose remaining budget cannot pay a whole
    estimate is refused without spending anything (NaN logits and loss, zero gradient, as the
    oracle answers a row out of budget), so the inner attack stops it and keeps its best.
    Size the inner attack to the budget: PGD's default 40 steps at 101 queries each would
    stop after 9 steps under a budget of 1000, with steps sized for 40.

    The inner attack's own access check is skipped on purpose (its ``_run`` is called
    directly): it asks for gradients and gets estimates, while this wrapper's ``access`` is
    scores. Its ``batch_size`` is ignored; set this wrapper's, since one call holds ``rows *
    (1 + 2 * samples)`` inputs in memory.

    Args:
        attack: the gradient attack to run: an Attack, a registered name, or a dict
            ``{"name": ..., **params}`` (default ``"pgd"`` with its defaults).
        samples: antithetic pairs (NES) or coordinates (FD) per estimate (default 50).
        sigma: the finite-difference step, in input units (default 0.001).
        method: ``"nes"`` (default) or ``"fd"``.

    Example::

        attack = create("nes", attack=create("pgd", steps=10), samples=20)
        result = attack(Oracle(model, score_based("linf", 0.3, queries=1000)), x, y)
    """

    access = Access.SCORES
    paper = (
        "Ilyas et al., Black-box Adversarial Attacks with Limited Queries and Information, "
        "ICML 2018"
    )

    attack: EvasionAttack = _inner_attack(
        "pgd", help="the gradient attack whose gradients are estimated"
    )
    samples: int = integer(
        50, low=1, help="antithetic pairs (nes) or coordinates (fd) per estimate"
    )
    sigma: float = real(0.001, low=0.0, low_open=True, help="finite-difference step (input units)")
    method: Method = choice(Method.NES, help="nes: Gaussian directions; fd: random coordinates")

    def _check(self) -> None:
        inner = self.attack
        if inner.access is not Access.GRADIENTS:
            raise InputError(
                f"The 'attack' parameter of {type(self).__name__} must be a gradient attack; got "
                f"{inner.name!r}, which needs {inner.access.name.lower()}. Run it directly: it "
                "needs no estimated gradients."
            )
        # The norms, goals and minimization are the inner attack's: they shadow the class's
        # (which admit any) on this instance, so the base's checks apply the inner's.
        object.__setattr__(self, "norms", inner.norms)
        object.__setattr__(self, "goals", inner.goals)
        object.__setattr__(self, "minimizes", inner.minimizes)

    def keeps_closest(self) -> bool:
        return self.attack.keeps_closest()

    def params(self) -> dict[str, Any]:
        """The hyperparameters as plain values; the inner attack as ``{"name": ..., **params}``."""
        out = super().params()
        out["attack"] = {"name": self.attack.name, **self.attack.params()}
        return out

    def planned_queries(self, oracle: Oracle | OracleView) -> int | None:
        inner = self.attack.planned_queries(oracle)
        if inner is None:
            return None
        count = self.samples
        if self.method is Method.FD:
            count = min(count, math.prod(oracle.input_shape))
        return inner * (1 + 2 * count)

    def _run(
        self, oracle: OracleView, x: Tensor, y: Tensor, targets: Tensor | None, noise: Noise
    ) -> Tensor:
        view = oracle.with_gradient(Estimator(self, noise, len(oracle)))
        return self.attack._run(view, x, y, targets, noise)


class Estimator:
    """The gradient source of an estimating view: ``gradient(x, loss, rows)`` answered from
    score queries made through the view it was derived from (see
    :meth:`~mallory.access.view.OracleView.with_gradient`), so the real oracle counts every
    query, and a probe that happened to be adversarial is recorded and not lost.
    """

    def __init__(self, estimator: EstimatedGradient, noise: Noise, rows: int) -> None:
        self._estimator = estimator
        self._noise = noise
        # estimates made per row so far: the stream of a row's next draw, so a sample's
        # directions never depend on which other samples are in the batch
        self._calls = torch.zeros(rows, dtype=torch.int64)

    def __call__(self, view: OracleView, x: Tensor, loss: LossFn, rows: Tensor | None) -> Gradient:
        return self.gradient(view, x, loss, rows)

    def gradient(self, view: OracleView, x: Tensor, loss: LossFn, rows: Tensor | None) -> Gradient:
        m, shape = len(x), x.shape[1:]
        where = torch.arange(len(view)) if rows is None else rows.to("cpu", torch.int64)
        if len(where) != m:
            raise InputError(f"A gradient query of {m} inputs came with {len(where)} rows.")
        count = self._count(shape.numel())
        width = 1 + 2 * count
        able = (view.remaining(where) >= width).nonzero().squeeze(1)
        logp = torch.zeros((m, width, view.num_classes), dtype=x.dtype, device=x.device)
        steps = torch.ones((m, count), dtype=x.dtype, device=x.device)
        directions = torch.zeros((m, count, *shape), dtype=x.dtype, device=x.device)
        refused = torch.ones(m, dtype=torch.bool, device=x.device)
        if len(able):
            a = able.to(x.device)
            points, directions_a, steps_a = self._probes(view, x[a], where[able])
            probs = view.scores(points.flatten(0, 1), rows=where[able].repeat_interleave(width))
            probs = probs.view(len(able), width, -1)
            refused[a] = torch.isnan(probs).all(2).any(1)
            logp[a] = log_scores(probs.flatten(0, 1)).view(len(able), width, -1).nan_to_num(0.0)
            directions[a], steps[a] = directions_a, steps_a
            self._calls[where[able]] += 1
        with torch.no_grad():
            values = torch.stack([loss(logp[:, j]) for j in range(width)], 1)
        diff = (values[:, 1 : 1 + count] - values[:, 1 + count :]) / steps
        if self._estimator.method is Method.NES:
            diff = diff / count
        grad = (diff.view(m, count, *[1] * len(shape)) * directions).sum(1)
        fill = refused.view(-1, *[1] * len(shape))
        center = logp[:, 0].masked_fill(refused[:, None], math.nan)
        return Gradient(
            logits=center,
            loss=values[:, 0].masked_fill(refused, math.nan),
            grad=grad.masked_fill(fill, 0.0),
        )

    def _count(self, size: int) -> int:
        """Directions per estimate: ``samples``, at most every coordinate for FD."""
        est = self._estimator
        return est.samples if est.method is Method.NES else min(est.samples, size)

    def _probes(self, view: OracleView, x: Tensor, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Points ``(m, 1 + 2 * count, ...)``: x, x + sigma d_i, x - sigma d_i (clamped);
        the directions d_i ``(m, count, ...)``; and the divisor of each difference."""
        est, m, shape = self._estimator, len(x), x.shape[1:]
        count = self._count(shape.numel())
        directions = torch.empty((m, count, *shape), dtype=x.dtype, device=x.device)
        for made in torch.unique(self._calls[ids]).tolist():
            group = (self._calls[ids] == made).nonzero().squeeze(1)
            directions[group.to(x.device)] = self._directions(ids[group], made, x)
        ahead = view.bounds.clamp(x[:, None] + est.sigma * directions)
        back = view.bounds.clamp(x[:, None] - est.sigma * directions)
        points = torch.cat([x[:, None], ahead, back], 1)
        if est.method is Method.NES:
            steps = torch.full((m, count), 2.0 * est.sigma, dtype=x.dtype, device=x.device)
        else:  # the step actually taken along each coordinate, after clamping
            steps = ((ahead - back) * directions).flatten(2).sum(2).clamp_min(1e-12)
        return points, directions, steps

    def _directions(self, rows: Tensor, made: int, like: Tensor) -> Tensor:
        """Directions ``(len(rows), count, ...)`` for rows that made ``made`` estimates."""
        est, shape = self._estimator, like.shape[1:]
        stream = self._noise.fold("nes.directions", made)
        kw: dict[str, Any] = {"rows": rows, "dtype": like.dtype, "device": like.device}
        if est.method is Method.NES:
            return stream.normal((est.samples, *shape), **kw)
        size = shape.numel()
        count = self._count(size)
        picks = stream.uniform((size,), **kw).argsort(1)[:, :count]  # distinct
        onehot = torch.zeros((len(rows), count, size), dtype=like.dtype, device=like.device)
        onehot.scatter_(2, picks[:, :, None], 1.0)
        return onehot.view(len(rows), count, *shape)
