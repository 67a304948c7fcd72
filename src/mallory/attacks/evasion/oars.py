"""OARS: a query attack that answers a stateful detector's rejections by resampling."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from mallory.access.oracle import Access, Gradient, LossFn
from mallory.access.view import GradientSource, OracleView
from mallory.attacks.base import register
from mallory.attacks.evasion.base import EvasionAttack
from mallory.attacks.evasion.wrappers import Wrapping, as_inner_attack
from mallory.attacks.noise import Noise
from mallory.attacks.params import integer, param, real
from mallory.params import Converted, Instance
from mallory.threat import Norm
from mallory.threat.perturbation import project

REFUSED = -1  # the label a view shows for a query that got no answer (OracleView.labels)

FENG = (
    "Feng, Hooda, Mangaokar, Fawaz, Jha and Prakash, Stateful Defenses for Machine Learning "
    "Models Are Not Yet Secure Against Black-box Attacks, ACM CCS 2023"
)


def as_query_attack(value: Any) -> EvasionAttack:
    """A query attack (labels or scores) from an attack, a registered name, or
    ``{"name": ..., **params}``; a gradient attack is refused (ValueError)."""
    value = as_inner_attack(value)
    if not isinstance(value, EvasionAttack) or value.access is Access.GRADIENTS:
        raise ValueError("not a query attack")
    return value


QUERY_ATTACK = Converted(
    Instance(EvasionAttack, "a query attack"),
    as_query_attack,
    "a query attack (labels or scores, e.g. 'hopskipjump' or 'square'): an Attack, a "
    "registered name, or {'name': ..., **params}",
)


@register("oars")
@dataclass(frozen=True, kw_only=True)
class OARS(Wrapping):
    """A query attack that resamples each query a stateful detector rejects, with more noise.

    Feng, Hooda, Mangaokar, Fawaz, Jha and Prakash, "Stateful Defenses for Machine Learning
    Models Are Not Yet Secure Against Black-box Attacks" (OARS: Oracle-guided Adaptive
    Rejection Sampling), ACM CCS 2023.

    Threat model: the inner attack's (labels or scores; its norms and goals), with a feedback
    that shows a refusal (``"blocked"`` or ``"none"``: label -1, NaN scores); under
    ``feedback="label"`` a refusal looks like an answer and nothing is resampled.

    The inner attack (HopSkipJump, Square, ...) runs unchanged on a view that watches its
    answers. When a query comes back refused, the view sends it again with Gaussian noise of
    standard deviation ``scale_i`` times the input range per feature (moved into the
    perturbation set and the bounds), up to ``resamples`` times, until one try is answered:
    the inner attack gets that answer in place of the refusal. Each refused try multiplies the
    sample's ``scale_i`` by ``growth``; a query of the sample answered at once divides it by
    ``sqrt(growth)``, down to ``scale``: the attacker learns how much noise the detector
    tolerates from its rejections, as OARS adapts its proposal distribution. Any try that
    reaches the goal inside the perturbation set counts as found (the view's record).

    It helps against a detector that rejects single queries (``response="reject"``, as
    Blacklight does); one that refuses every later query of a flagged account leaves it nothing
    to resample, unless the attacker has accounts to spare. Refused tries are not charged;
    they cost the attacker time, and they stay in the defender's event log.

    Cost: the inner attack's charged queries (a resampled query is charged once, when it is
    answered), plus at most ``resamples`` refused tries per refused query.

    Args:
        attack: the query attack (``"hopskipjump"``): an Attack, a registered name, or
            ``{"name": ..., **params}``.
        resamples: tries per refused query at most (10).
        scale: the first noise level, a fraction of the input range per feature (0.01).
        growth: the noise level's factor per refused try (2.0).

    Example::

        detector = StatefulDetector.calibrate(train_x, response="reject")
        oracle = Oracle(system.with_policies(detector), label_only("l2", queries=1000))
        result = create("oars", attack="hopskipjump")(oracle, x, y)
    """

    access = Access.LABELS  # the default inner attack's; an instance takes its inner attack's
    norms = frozenset({Norm.L2, Norm.LINF})
    minimizes = True
    shadows = ("access", "norms", "goals", "minimizes")
    paper = FENG
    fast: ClassVar[dict[str, Any]] = {
        "attack": {"name": "hopskipjump", "max_queries": 200, "batch_starts": False}
    }

    attack: EvasionAttack = param(QUERY_ATTACK, "hopskipjump", help="the query attack it runs")
    resamples: int = integer(10, low=1, help="tries per refused query at most")
    scale: float = real(
        0.01,
        low=0.0,
        low_open=True,
        help="the first noise level: a fraction of the input range per feature",
    )
    growth: float = real(
        2.0, low=1.0, low_open=True, help="the noise level's factor per refused try"
    )

    def _run(
        self, oracle: OracleView, x: Tensor, y: Tensor, targets: Tensor | None, noise: Noise
    ) -> Tensor:
        view = Resampling(oracle, x, noise, self)
        return self.attack._run(view, x, y, targets, noise)


class Resampling(OracleView):
    """A view that sends a refused query again with noise, through the view it wraps.

    It uses only the public methods of that view (every try is counted, recorded and logged
    as usual) and holds nothing else; gradient queries and derived views pass through
    unchanged. ``clean`` are the batch's clean inputs (the perturbation set's centres).
    """

    # OracleView.__init__ is not called: every query goes to ``inner``, never to an oracle
    def __init__(
        self,
        inner: OracleView,
        clean: Tensor,
        noise: Noise,
        settings: OARS,
        level: Tensor | None = None,
    ) -> None:
        self._inner = inner
        self._clean = clean
        self._noise = noise
        self._settings = settings
        self._calls = 0
        self.level = (
            torch.full((len(clean),), settings.scale, dtype=torch.float64)
            if level is None
            else level
        )
        self.threat = inner.threat
        self.name = inner.name
        self.input_shape = inner.input_shape
        self.num_classes = inner.num_classes
        self.bounds = inner.bounds
        self.access = inner.access
        self.parts = inner.parts
        self.softmax_part = inner.softmax_part

    def __len__(self) -> int:
        return len(self._inner)

    def __repr__(self) -> str:
        return f"Resampling({self._inner!r})"

    # ------------------------------------------------------------------ queries
    def labels(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        return self._ask(x, rows, self._inner.labels, lambda out: out == REFUSED)

    def scores(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        return self._ask(x, rows, self._inner.scores, _no_answer)

    def logits(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        return self._ask(x, rows, self._inner.logits, _no_answer)

    def gradient(
        self,
        x: Tensor,
        loss: LossFn,
        rows: Tensor | None = None,
        *,
        straight_through: Sequence[str] = (),
        logits_before: str | None = None,
    ) -> Gradient:
        return self._inner.gradient(
            x, loss, rows, straight_through=straight_through, logits_before=logits_before
        )

    def _ask(
        self,
        x: Tensor,
        rows: Tensor | None,
        ask: Callable[[Tensor, Tensor | None], Tensor],
        refused_of: Callable[[Tensor], Tensor],
    ) -> Tensor:
        out = ask(x, rows)
        refused = refused_of(out)
        positions = torch.arange(len(x), device=x.device) if rows is None else rows.to(x.device)
        call = self._calls
        self._calls += 1
        settings = self._settings
        level = self.level
        at_once = ~refused
        for attempt in range(settings.resamples):
            if not bool(refused.any()):
                break
            pick = refused.nonzero().squeeze(1)
            at = positions[pick]
            trial = self._perturb(x[pick], at, call, attempt)
            answer = ask(trial, at)
            out[pick] = answer.to(out)
            still = refused_of(answer)
            refused[pick] = still
            struck = at[still].cpu().unique()
            level[struck] = (level[struck] * settings.growth).clamp_max(1.0)
        calm = positions[at_once].cpu().unique()
        if len(calm):
            calm = calm[~torch.isin(calm, positions[~at_once].cpu())]
            relaxed = level[calm] / math.sqrt(settings.growth)
            level[calm] = relaxed.clamp_min(settings.scale)
        return out

    def _perturb(self, x: Tensor, at: Tensor, call: int, attempt: int) -> Tensor:
        """``x`` plus Gaussian noise at each row's level, in the perturbation set and bounds;
        queries of the same row draw different noise."""
        unique, inverse = at.cpu().unique(return_inverse=True)
        rank = _rank_within(inverse)
        draws = int(rank.max()) + 1
        z = self._noise.fold("oars", call, attempt).normal(
            (draws, *x.shape[1:]), unique, dtype=x.dtype, device=x.device
        )
        z = z[inverse.to(x.device), rank.to(x.device)]
        lower, upper = self.bounds.on(x)
        level = self.level[at.cpu()].to(x).view(-1, *[1] * (x.dim() - 1))
        trial = x + z * level * (upper - lower)
        return project(trial, self._clean[at], self.norm, self.eps, self.bounds)

    # ------------------------------------------------------------------ budgets
    def remaining(self, rows: Tensor | None = None) -> Tensor:
        return self._inner.remaining(rows)

    def queries(self, rows: Tensor | None = None) -> Tensor:
        return self._inner.queries(rows)

    # ------------------------------------------------------------------ derived views
    def subset(self, rows: Tensor) -> OracleView:
        rows = rows.to("cpu", torch.int64)
        return Resampling(
            self._inner.subset(rows),
            self._clean[rows.to(self._clean.device)],
            self._noise.subset(rows),
            self._settings,
            self.level[rows].clone(),
        )

    def with_gradient(self, source: GradientSource) -> OracleView:
        return self._inner.with_gradient(source)

    def with_options(
        self, *, straight_through: Sequence[str] = (), logits_before: str | None = None
    ) -> OracleView:
        return self._inner.with_options(
            straight_through=straight_through, logits_before=logits_before
        )


def _no_answer(out: Tensor) -> Tensor:
    return torch.isnan(out).all(1)


def _rank_within(groups: Tensor) -> Tensor:
    """For each entry, how many earlier entries share its group."""
    order = torch.argsort(groups, stable=True)
    ordered = groups[order]
    first = torch.searchsorted(ordered, ordered)
    rank = torch.empty_like(groups)
    rank[order] = torch.arange(len(groups)) - first
    return rank
