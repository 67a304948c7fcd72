"""Budget shares: every attack of a threat model gets a stated share of the per-sample budget.

A threat model's attacks run cheapest first, and they share its per-sample query budget ``B``.
Spent in order, first come first served, the budget starved the attacks that define the threat
model: under a score-based budget of 500 queries the tricks and HopSkipJump spent everything and
Square ran on nothing. So each attack gets a share, stated before the campaign starts:

* the attacks of the **defining family** (the last family in the sequence: the score-based
  attacks of a score-based threat model, transfer under the transfer preset, the label-only
  attacks of a no-knowledge one) are reserved ``ceil(B * RESERVE)`` queries, split equally;
* the earlier attacks share the rest equally, each capped at the queries it plans to spend
  (:meth:`~mallory.attacks.evasion.base.EvasionAttack.planned_queries`), and what a capped
  attack leaves goes to the others, then to the reserve;
* shares given explicitly (a fraction of ``B`` per attack) are taken as they are, and the
  automatic ones share what is left.

Shares are caps on a cumulative allowance: an attack may spend its share plus whatever the
earlier attacks left unspent on that sample, so nothing is wasted and nobody is starved. An
attack whose allowance is zero on every sample is not run, and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mallory.attacks.evasion.base import EvasionAttack

RESERVE = 0.5
"""The share of a per-sample budget kept for the threat model's defining family."""


def shares(
    budget: int | None,
    attacks: Sequence[EvasionAttack],
    planned: Sequence[int | None],
    given: Sequence[float | None] | None = None,
) -> list[int] | None:
    """Queries per sample for each attack (in order), summing to at most ``budget``; None
    when the budget is unlimited."""
    if budget is None:
        return None
    n = len(attacks)
    out: list[int | None] = [None] * n
    if given is not None:
        for i, fraction in enumerate(given):
            if fraction is not None:
                out[i] = math.floor(fraction * budget)
    left = budget - sum(v for v in out if v is not None)
    if left < 0:
        raise ValueError("explicit shares exceed the budget")  # validated by ThreatPlan first
    free = [i for i in range(n) if out[i] is None]
    if not free:
        return [v or 0 for v in out]
    families = [attacks[i].attacker_family() for i in free]
    top = max(families)
    defining = [i for i, fam in zip(free, families, strict=True) if fam == top]
    earlier = [i for i in free if i not in defining]
    reserve = math.ceil(left * RESERVE) if earlier else left
    rest = left - reserve
    # earlier attacks: equal shares, capped at what each plans; the leftover flows onward
    open_ = list(earlier)
    while open_:
        fair = rest // len(open_)
        capped = [i for i in open_ if planned[i] is not None and planned[i] <= fair]  # type: ignore[operator]
        if not capped:
            for k, i in enumerate(open_):
                out[i] = fair + (1 if k < rest - fair * len(open_) else 0)
            rest = 0
            break
        for i in capped:
            out[i] = int(planned[i])  # type: ignore[arg-type]
            rest -= int(planned[i])  # type: ignore[arg-type]
            open_.remove(i)
    reserve += rest
    for k, i in enumerate(defining):
        out[i] = reserve // len(defining) + (1 if k < reserve % len(defining) else 0)
    return [v or 0 for v in out]
