"""The cheapest evasion: the least costly edit the attacker may make that flips the decision.

Real attackers pay for what they change: a certificate, a URL shortener, hosting the page's
images themselves. Given the threat model's priced
:class:`~mallory.threat.features.FeatureConstraints`, this attack searches, per sample, the
edits the attacker may make in order of what they cost, and reports the cheapest one that
evades the system, with its price and the edits it used.

The search space of a sample is a set of *slots*, one per mutable feature (its allowed values,
or a grid over its range) and one per one-hot group (which feature is hot); an edit sets some
slots to one of their options, and costs the sum of their prices. Derived features are computed
again from every edited input (by formula, or by the constraints' feature extractor: the raw
object to the features), and every candidate is checked feasible (constraints, input bounds,
the threat model's ball) before it is queried.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from mallory.access.oracle import Access, Oracle
from mallory.access.view import OracleView
from mallory.attacks.base import register
from mallory.attacks.evasion.base import EvasionAttack, Family
from mallory.attacks.evasion.result import AttackResult
from mallory.attacks.inputs import as_inputs
from mallory.attacks.noise import Noise
from mallory.attacks.params import choice, flag, integer
from mallory.threat import Norm
from mallory.threat.features import TOLERANCE, FeatureConstraints
from mallory.threat.perturbation import norm_of

PAPERS = (
    "Kulynych, Hayes, Samarin and Troncoso, Evading classifiers in discrete domains with "
    "provable optimality guarantees, NeurIPS 2018 Workshop on Security in Machine Learning "
    "(arXiv:1810.10939); Pierazzi, Pendlebury, Cortellazzi and Cavallaro, Intriguing Properties "
    "of Adversarial ML Attacks in the Problem Space, IEEE S&P 2020"
)
BALL_SLACK = 1e-6  # float round-off on the ball's radius, as the attacker's record allows

State = tuple[tuple[int, int], ...]
"""An edit: (slot, option) pairs, slots in increasing order; options are ranked by price."""
Floats = npt.NDArray[np.float64]


class Search(StrEnum):
    """How the cheapest evasion is searched for."""

    AUTO = "auto"  # exact when the sample's space has at most exact_limit edits, else beam
    EXACT = "exact"  # every edit by increasing price (at most exact_limit of them)
    BEAM = "beam"  # level by level (one more edited slot each), keeping the best `beam` edits


@dataclass(frozen=True)
class Slot:
    """What one slot may become: ``options[r]`` written at ``columns`` costs ``costs[r]``
    (ranks in increasing price)."""

    columns: npt.NDArray[np.int64]
    options: Floats  # (ranks, len(columns))
    costs: Floats  # (ranks,), increasing


@dataclass(frozen=True, eq=False)
class Space:
    """One sample's edits: its flattened input and its slots, cheapest first."""

    x: Floats
    slots: tuple[Slot, ...]

    @property
    def size(self) -> float:
        """How many edits there are, the unedited input included (capped at inf)."""
        total = 1.0
        for slot in self.slots:
            total *= 1 + len(slot.costs)
            if total > 1e18:
                return math.inf
        return total

    def cost(self, state: State) -> float:
        return math.fsum(self.slots[k].costs[r] for k, r in state)

    def rows(self, states: list[State]) -> Floats:
        out = np.tile(self.x, (len(states), 1))
        for i, state in enumerate(states):
            for k, r in state:
                slot = self.slots[k]
                out[i, slot.columns] = slot.options[r]
        return out


@dataclass(eq=False)
class Context:
    """What every sample's search shares: the view's task and the constraints."""

    view: OracleView
    constraints: FeatureConstraints
    dtype: torch.dtype
    device: torch.device

    def feasible(self, rows: Floats, x: Tensor) -> tuple[Tensor, Tensor]:
        """The candidates of ``rows`` (flattened, derived features not yet computed) as inputs
        with derived features computed, and the mask of those the attacker may submit."""
        shape = self.view.input_shape
        raw = torch.from_numpy(rows).to(device=self.device, dtype=self.dtype)
        candidates = self.constraints.complete(raw.reshape(len(rows), *shape))
        original = x.expand(len(rows), *shape)
        ok = self.constraints.feasible(candidates, original)
        ok &= ~self.view.bounds.outside(candidates, tol=BALL_SLACK).to(ok.device)
        eps = self.view.eps
        if math.isfinite(eps):
            size = norm_of((candidates - original).double(), self.view.norm)
            ok &= size <= eps * (1 + BALL_SLACK) + BALL_SLACK
        return candidates, ok


class Searcher(Protocol):
    """One sample's search: it proposes candidates, and is told which evaded."""

    done: bool
    best: Tensor | None  # the cheapest evasion found (an input), None when none
    best_cost: float

    def propose(self, limit: int) -> Tensor | None:
        """At most ``limit`` feasible candidates to query (None: the search is over)."""

    def observe(self, hits: Tensor, margins: Tensor | None) -> None:
        """Which of the proposed candidates evaded (the first ``len(hits)`` of them), and how
        far from evading each was (lower is closer) when scores were seen."""


class Exact:
    """Uniform-cost enumeration: every edit exactly once, by increasing price.

    Slots are sorted by the price of their cheapest option, options by price. From an edit
    whose last slot is ``k`` at rank ``r``: add slot ``k+1`` at its cheapest rank, raise ``r``
    by one, or (at rank 0) move the edit to slot ``k+1``. Each edit has exactly one parent and
    costs at least as much as it, so a heap pops the edits in order of price; the first
    feasible evasion popped is the cheapest there is (Dijkstra's argument on a tree).
    Infeasible edits are expanded but never queried."""

    def __init__(
        self, space: Space, context: Context, x: Tensor, *, max_edits: int, limit: int
    ) -> None:
        self.space, self.context, self.x = space, context, x
        self.max_edits, self.limit = max_edits, limit
        self.heap: list[tuple[float, int, State]] = [(0.0, 0, ())]
        self.pushed = 1
        self.popped = 0
        self.pending: list[tuple[State, float, Tensor]] = []
        self.asked: list[tuple[State, float, Tensor]] = []
        self.done = False
        self.best: Tensor | None = None
        self.best_cost = math.inf

    def _children(self, state: State) -> Iterator[State]:
        slots = self.space.slots
        if not state:
            if slots:
                yield ((0, 0),)
            return
        k, r = state[-1]
        last = k + 1 < len(slots)
        if last and len(state) < self.max_edits:
            yield (*state, (k + 1, 0))
        if r + 1 < len(slots[k].costs):
            yield (*state[:-1], (k, r + 1))
        if r == 0 and last:
            yield (*state[:-1], (k + 1, 0))

    def _pop(self, count: int) -> list[State]:
        out: list[State] = []
        while self.heap and len(out) < count and self.popped < self.limit:
            _, _, state = heapq.heappop(self.heap)
            for child in self._children(state):
                heapq.heappush(self.heap, (self.space.cost(child), self.pushed, child))
                self.pushed += 1
            if state:
                self.popped += 1
                out.append(state)
        return out

    def propose(self, limit: int) -> Tensor | None:
        while len(self.pending) < limit:
            states = self._pop(max(2 * limit, 16))
            if not states:
                break
            candidates, ok = self.context.feasible(self.space.rows(states), self.x)
            for i in ok.nonzero().squeeze(1).tolist():
                self.pending.append((states[i], self.space.cost(states[i]), candidates[i]))
        self.asked, self.pending = self.pending[:limit], self.pending[limit:]
        if not self.asked:
            self.done = True
            return None
        return torch.stack([row for _, _, row in self.asked])

    def observe(self, hits: Tensor, margins: Tensor | None) -> None:
        for (_, cost, row), hit in zip(self.asked, hits.tolist(), strict=False):
            if hit:
                self.best, self.best_cost, self.done = row, cost, True
                return


class Beam:
    """Beam search with branch and bound, then a cost-reduction descent.

    Level ``L`` queries the edits of ``L`` slots made by adding one slot to an edit of the
    beam, cheapest first, only those cheaper than the best evasion found (a level stops at
    its first evasion: the rest cost more). The beam of the next level is the ``width`` edits
    of this level that came closest to evading (by the scores' margin when they are seen, else
    the cheapest). When no level is left, the best evasion is made cheaper while it still
    evades: drop one of its edits, or take a cheaper option of one, cheapest first."""

    def __init__(
        self, space: Space, context: Context, x: Tensor, *, max_edits: int, width: int
    ) -> None:
        self.space, self.context, self.x = space, context, x
        self.max_edits, self.width = max_edits, width
        self.level = 0
        self.beam: list[State] = [()]
        self.queue: list[State] = []
        self.scored: list[tuple[float, float, State]] = []
        self.refining = False
        self.asked: list[tuple[State, float, Tensor]] = []
        self.done = False
        self.best: Tensor | None = None
        self.best_state: State = ()
        self.refined: State | None = None  # the evasion whose refinements were made last
        self.best_cost = math.inf

    def _cheaper(self, states: set[State]) -> list[State]:
        priced = [(self.space.cost(s), s) for s in states]
        return [s for c, s in sorted(priced) if c < self.best_cost]

    def _next_level(self) -> list[State]:
        """The next level's queue (empty: no level is left)."""
        if self.level:
            ranked = sorted(self.scored)
            self.beam = [state for _, _, state in ranked[: self.width]]
            self.scored = []
        self.level += 1
        if self.level > self.max_edits or not self.beam:
            return []
        children: set[State] = set()
        for state in self.beam:
            used = {k for k, _ in state}
            for k, slot in enumerate(self.space.slots):
                if k not in used:
                    for r in range(len(slot.costs)):
                        children.add(tuple(sorted((*state, (k, r)))))
        return self._cheaper(children)

    def _refinements(self) -> list[State]:
        """Cheaper variants of the best evasion: one edit dropped, or one option cheaper."""
        state = self.refined = self.best_state
        variants: set[State] = set()
        for i, (k, r) in enumerate(state):
            variants.add(state[:i] + state[i + 1 :])
            for lower in range(r):
                variants.add((*state[:i], (k, lower), *state[i + 1 :]))
        variants.discard(())
        return self._cheaper(variants)

    def _refill(self) -> bool:
        """The next queue: the next level, else the refinements of a new best evasion; False
        when the search is over."""
        if not self.refining:
            self.queue = self._next_level()
            if self.queue:
                return True
            self.refining = True
        if self.best is None or self.refined == self.best_state:
            return False
        self.queue = self._refinements()
        return bool(self.queue)

    def propose(self, limit: int) -> Tensor | None:
        asked: list[tuple[State, float, Tensor]] = []
        while len(asked) < limit:
            if not self.queue:
                if asked or not self._refill():
                    break  # a level (or a refinement round) is judged before the next
                continue
            take = limit - len(asked)
            states, self.queue = self.queue[:take], self.queue[take:]
            candidates, ok = self.context.feasible(self.space.rows(states), self.x)
            for i in ok.nonzero().squeeze(1).tolist():
                asked.append((states[i], self.space.cost(states[i]), candidates[i]))
        self.asked = asked
        if not asked:
            self.done = True
            return None
        return torch.stack([row for _, _, row in asked])

    def observe(self, hits: Tensor, margins: Tensor | None) -> None:
        for i, ((state, cost, row), hit) in enumerate(zip(self.asked, hits.tolist(), strict=False)):
            if hit:
                if cost < self.best_cost:
                    self.best, self.best_state, self.best_cost = row, state, cost
                # the rest of the queue costs more; refinements start again from here
                self.queue = self._refinements() if self.refining else []
                return
            closeness = cost if margins is None else float(margins[i])
            self.scored.append((closeness, cost, state))


def slots_of(context: Context, x: Tensor, levels: int) -> tuple[Slot, ...]:
    """The slots of one sample (input ``x``), those with no option left out, sorted by the
    price of their cheapest option."""
    constraints, view = context.constraints, context.view
    flat = x.flatten().double().cpu().numpy()
    lower, upper = (b.expand(view.input_shape).flatten() for b in view.bounds.on(x))
    linf = view.eps if view.norm is Norm.LINF else math.inf
    reach = linf * (1 + BALL_SLACK) + BALL_SLACK
    out: list[Slot] = []
    if constraints.mutable:
        table = constraints.table
        cols = table.columns
        v = flat[cols][:, None]
        low = np.maximum(lower.double().cpu().numpy()[cols], table.low)[:, None]
        high = np.minimum(upper.double().cpu().numpy()[cols], table.high)[:, None]
        # each feature's options: its allowed values, else a grid over its range (and +-eps)
        grid = low + (high - low) * np.linspace(0.0, 1.0, levels)[None, :]
        if math.isfinite(linf):
            grid = np.concatenate([grid, v - linf, v + linf], 1)
        listed = ~np.all(np.isnan(table.values), axis=1, keepdims=True)
        width = max(grid.shape[1], table.values.shape[1])
        values = np.where(listed, _pad(table.values, width), _pad(grid, width))
        step = values - v
        keep = (np.abs(step) > TOLERANCE) & (np.abs(step) <= reach)
        keep &= (values >= low - TOLERANCE) & (values <= high + TOLERANCE)
        keep &= table.direction[:, None] * step >= 0
        values = np.sort(np.where(keep, values, np.nan), 1)
        values[:, 1:][values[:, 1:] == values[:, :-1]] = np.nan  # each value once
        size = np.abs(values - v)
        costs = table.price[:, None] + table.unit_price[:, None] * size
        costs = np.where(np.isnan(values), np.inf, costs)
        order = np.lexsort((size, costs))
        values = np.take_along_axis(values, order, 1)
        costs = np.take_along_axis(costs, order, 1)
        counts = np.isfinite(costs).sum(1)
        for j in np.flatnonzero(counts):
            n = counts[j]
            out.append(Slot(cols[j : j + 1], values[j, :n, None], costs[j, :n].copy()))
    for group in constraints.groups:
        cols = np.array(group.features, dtype=np.int64)
        now = flat[cols]
        hot = np.abs(now - group.hot) <= TOLERANCE
        cold = np.abs(now - group.cold) <= TOLERANCE
        one_hot = bool((hot | cold).all() and hot.sum() == 1)
        choices = [m for m in range(len(cols)) if not (one_hot and hot[m])]
        options = np.full((len(choices), len(cols)), group.cold, dtype=np.float64)
        options[np.arange(len(choices)), choices] = group.hot
        step = np.abs(options - now).max(1) if len(choices) else np.zeros(0)
        options = options[step <= reach]
        if len(options):
            out.append(Slot(cols, options, np.full(len(options), group.price, dtype=np.float64)))
    return tuple(sorted(out, key=lambda slot: float(slot.costs[0])))


def _pad(a: Floats, width: int) -> Floats:
    """``a`` with NaN columns added up to ``width``."""
    return np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=np.nan)


@dataclass(frozen=True, eq=False)
class CheapestResult(AttackResult):
    """An :class:`AttackResult` with, per sample, the price of the evasion it found
    (``edit_cost``, float64: ``inf`` where the attack failed, 0 where the clean input was
    already wrong) and the edits it used, in words (``edits``; empty where it failed)."""

    edit_cost: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    edits: tuple[tuple[str, ...], ...] = ()

    def median_edit_cost(self) -> float:
        """The median price of the evasions found (NaN when none was)."""
        found = self.edit_cost[self.success]
        return float(found.median()) if len(found) else math.nan

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["median_edit_cost"] = self.median_edit_cost()
        return out

    def to_dict(self, *, inputs: bool = False) -> dict[str, Any]:
        out = super().to_dict(inputs=inputs)
        out["samples"]["edit_cost"] = self.edit_cost.tolist()
        out["samples"]["edits"] = [list(e) for e in self.edits]
        return out


@register("cheapest")
@dataclass(frozen=True, kw_only=True)
class Cheapest(EvasionAttack):
    """The cheapest feasible edit that flips the system's decision, per sample.

    Kulynych, Hayes, Samarin and Troncoso, "Evading classifiers in discrete domains with
    provable optimality guarantees" (2018): uniform-cost search over the attacker's edits finds
    the least costly adversarial example; Pierazzi et al., "Intriguing Properties of
    Adversarial ML Attacks in the Problem Space" (S&P 2020): edits of the object (the problem
    space), with the features computed from it.

    Threat model: labels only (the system's decisions; with ``scores=True`` and a threat model
    that shows scores, the beam is ranked by them); any norm, eps may be ``inf`` (the usual
    case: the perturbation set is the priced feature constraints of the threat model);
    untargeted or targeted. Without feature constraints every input feature is mutable, any
    value in the bounds, at a unit price of 1 (the cost is the L1 distance), so it runs on
    images too, pixels as features.

    Each mutable feature may take its allowed values, or ``levels`` points evenly spread over
    its range (and, under a finite Linf eps, its value plus and minus eps); a one-hot group may
    make any other feature hot. ``search="exact"`` enumerates the edits by increasing price and
    stops at the first that evades: exact, the cheapest evasion of that space, unless the
    budget or ``exact_limit`` runs out first. ``search="beam"`` searches level by level (edits
    of one feature, then two, ...) keeping the ``beam`` best, prunes what costs more than the
    best evasion found, then makes that one cheaper while it still evades. ``"auto"`` is exact
    when a sample has at most ``exact_limit`` edits. Every candidate is feasible (constraints,
    bounds, ball) before it is queried; ``chunk`` candidates per sample go in one query call.

    Cost: at most ``max_queries`` queries per sample (fewer under a smaller budget). The
    result is a :class:`CheapestResult`: per sample the price of the evasion and its edits.

    Args:
        search: ``"auto"``, ``"exact"`` or ``"beam"`` (auto).
        exact_limit: the most edits an exact search examines per sample (100,000).
        beam: edits kept per level by the beam search (8).
        levels: grid points over a mutable feature's range when it lists no values (5).
        max_edits: the most slots one edit may change (None: as many as there are).
        max_queries: the most queries per sample (1,000).
        chunk: candidates per sample in one query call (8; an exact search may spend up to
            ``chunk - 1`` queries past its answer).
        scores: rank the beam by the scores' margin when the threat model shows scores (True).

    Example::

        names = load_dataset("phishing").feature_names
        features = FeatureConstraints.by_name(
            names, ["https", "long_url"], {"https": [0.5, 1.0], "long_url": [0.5, 1.0]},
            directions={"https": "up", "long_url": "up"}, prices={"https": 10, "long_url": 3},
        )
        result = create("cheapest")(Oracle(model, no_knowledge(features=features)), x, y)
        result.edit_cost, result.edits
    """

    paper = PAPERS
    access = Access.LABELS
    family = Family.DECISION
    minimizes = True
    rank = 5
    fast: ClassVar[dict[str, Any]] = {"max_queries": 12, "beam": 2, "levels": 3, "chunk": 4}

    search: Search = choice(Search.AUTO, help="how the cheapest evasion is searched for")
    exact_limit: int = integer(
        100_000, low=1, help="the most edits an exact search examines per sample"
    )
    beam: int = integer(8, low=1, help="edits kept per level by the beam search")
    levels: int = integer(5, low=2, help="grid points over a range with no listed values")
    max_edits: int | None = integer(
        None, low=1, optional=True, help="the most slots one edit changes (None: any number)"
    )
    max_queries: int = integer(1000, low=1, help="the most queries per sample")
    chunk: int = integer(8, low=1, help="candidates per sample in one query call")
    scores: bool = flag(True, help="rank the beam by the scores' margin when they are shown")

    def keeps_closest(self) -> bool:
        return False  # the answer is the cheapest evasion, not the closest in a norm

    def planned_queries(self, oracle: Oracle | OracleView) -> int | None:
        return self.max_queries

    def constraints(self, oracle: Oracle | OracleView) -> FeatureConstraints:
        """The threat model's feature constraints, or every feature at a unit price of 1."""
        given = oracle.threat.features
        if given is not None:
            return given
        return FeatureConstraints(tuple(range(math.prod(oracle.input_shape))))

    def __call__(
        self,
        oracle: Oracle,
        x: Tensor | np.ndarray[Any, Any],
        y: Tensor | np.ndarray[Any, Any],
        *,
        rng: int = 0,
        targets: Tensor | np.ndarray[Any, Any] | None = None,
        ids: Tensor | np.ndarray[Any, Any] | None = None,
    ) -> CheapestResult:
        """As :meth:`EvasionAttack.__call__`, with the price and edits of each evasion."""
        result = super().__call__(oracle, x, y, rng=rng, targets=targets, ids=ids)
        clean = as_inputs(x, oracle.input_shape, oracle.bounds).to(result.x_adv)
        constraints = self.constraints(oracle)
        price = constraints.cost(result.x_adv, clean).cpu()
        price[~result.success.cpu()] = math.inf
        words = constraints.edits(result.x_adv, clean)
        edits = tuple(w if ok else () for w, ok in zip(words, result.success.tolist(), strict=True))
        fields = {f: getattr(result, f) for f in result.__dataclass_fields__}
        return CheapestResult(**fields, edit_cost=price, edits=edits)

    def _run(
        self, oracle: OracleView, x: Tensor, y: Tensor, targets: Tensor | None, noise: Noise
    ) -> Tensor:
        constraints = self.constraints(oracle)
        constraints.check(math.prod(oracle.input_shape))
        context = Context(oracle, constraints, x.dtype, x.device)
        use_scores = self.scores and oracle.access >= Access.SCORES and oracle.threat.sees_scores
        searchers = [self._searcher(context, x[i : i + 1]) for i in range(len(x))]
        used = [0] * len(x)
        active = list(range(len(x)))
        while active:
            left = oracle.remaining(torch.tensor(active)).tolist()
            batch: list[Tensor] = []
            owners: list[int] = []
            for i, room in zip(active, left, strict=True):
                limit = int(min(self.chunk, self.max_queries - used[i], room))
                if limit <= 0:
                    searchers[i].done = True
                    continue
                rows = searchers[i].propose(limit)
                if rows is not None:
                    batch.append(rows)
                    owners += [i] * len(rows)
            if not batch:
                break
            self._ask(oracle, torch.cat(batch), owners, y, targets, searchers, used, use_scores)
            active = [i for i in active if not searchers[i].done]
        out = x.clone()
        for i, searcher in enumerate(searchers):
            if searcher.best is not None:
                out[i] = searcher.best.to(out)
        return out

    def _searcher(self, context: Context, x: Tensor) -> Searcher:
        view = context.view
        space = Space(x.flatten().double().cpu().numpy(), slots_of(context, x, self.levels))
        most = len(space.slots) if self.max_edits is None else min(self.max_edits, len(space.slots))
        if view.norm is Norm.L0 and math.isfinite(view.eps):
            most = min(most, int(view.eps))  # each slot edit changes at least one feature
        exact = self.search is Search.EXACT or (
            self.search is Search.AUTO and space.size <= self.exact_limit
        )
        if exact:
            return Exact(space, context, x, max_edits=most, limit=self.exact_limit)
        return Beam(space, context, x, max_edits=most, width=self.beam)

    @staticmethod
    def _ask(
        oracle: OracleView,
        candidates: Tensor,
        owners: list[int],
        y: Tensor,
        targets: Tensor | None,
        searchers: list[Searcher],
        used: list[int],
        use_scores: bool,
    ) -> None:
        """One query call for every sample's candidates; each search is told its answers."""
        rows = torch.tensor(owners, device=y.device)
        margins: Tensor | None = None
        if use_scores:
            probs = oracle.scores(candidates, rows=rows).double()
            shown = probs.nan_to_num(-1.0)
            labels = shown.argmax(1)
            labels[torch.isnan(probs).all(1)] = -1
            goal = y[rows] if targets is None else targets[rows]
            own = shown.gather(1, goal[:, None]).squeeze(1).clamp_min(0)
            rest = shown.scatter(1, goal[:, None], -1.0).amax(1).clamp_min(0)
            margins = own - rest if targets is None else rest - own
            margins = margins.masked_fill(labels < 0, math.inf)
        else:
            labels = oracle.labels(candidates, rows=rows).to(y.device)
        goal = y[rows] if targets is None else targets[rows]
        hits = (labels != goal) if targets is None else (labels == goal)
        hits &= labels >= 0
        refused = labels == -1
        start = 0
        for i, group in itertools.groupby(owners):
            count = len(list(group))
            part = slice(start, start + count)
            start += count
            used[i] += count
            stop = refused[part].nonzero()
            answered = count if not len(stop) else int(stop[0])
            searchers[i].observe(
                hits[part][:answered].cpu(),
                None if margins is None else margins[part][:answered].cpu(),
            )
            if answered < count:
                searchers[i].done = True  # refused: the rest of its search is unknown
