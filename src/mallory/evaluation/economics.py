"""The economics of an attack: what the cheapest successful attack costs, against the damage.

A defender's question is not only whether a system breaks, but whether breaking it pays:
what the cheapest successful attack on an input costs the attacker (queries at the threat
model's price, seconds of computing at its price, new accounts after bans, and the expertise
the attack assumes), against the damage a successful evasion does to the defender; and
whether the expected loss is worth a countermeasure's cost. :class:`Economics` holds the
defender's figures (a campaign's ``[economics]``); :func:`risk` turns per-sample costs into a
:class:`~mallory.report.model.Risk` row of the report, in the spirit of a risk matrix:
likelihood (the share of inputs an attacker breaks at a cost below the damage) × impact (the
expected loss over ``volume`` inputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mallory.params import Interval, Options, PairsOf, check_fields, param
from mallory.report.model import Risk

EXPERTISE = ("none", "low", "medium", "high")
"""What an attack assumes of its attacker: nothing (the cheap tricks), running a tool (query
attacks), building a model (transfer), the model itself and the skill to attack it
(white-box)."""

LIKELIHOOD = ((0.01, "rare"), (0.1, "unlikely"), (0.5, "possible"), (math.inf, "likely"))


@dataclass(frozen=True, kw_only=True)
class Economics:
    """The defender's figures: ``damage`` (money lost per successful evasion),
    ``countermeasure`` (what the defense or control under review costs over the period),
    ``volume`` (the inputs an attacker would try to evade over that period), and the one-off
    price of each level of ``expertise`` an attack assumes (``none``, ``low``, ``medium``,
    ``high``; missing levels cost nothing)."""

    damage: float = param(Interval(low=0.0), help="money lost per successful evasion")
    countermeasure: float = param(
        Interval(low=0.0), 0.0, help="what the countermeasure costs over the period (money)"
    )
    volume: int = param(
        Interval(low=1, integral=True), 1000, help="inputs an attacker tries over the period"
    )
    expertise: tuple[tuple[str, float], ...] = param(
        PairsOf(Options(EXPERTISE), Interval(low=0.0), "a table of expertise level = price"),
        (),
        help="the one-off price of each level of expertise an attack assumes (money)",
    )

    def __post_init__(self) -> None:
        check_fields(self)

    def price_of(self, level: str) -> float:
        return dict(self.expertise).get(level, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "damage": self.damage,
            "countermeasure": self.countermeasure,
            "volume": self.volume,
            "expertise": dict(self.expertise),
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Economics:
        return Economics(
            damage=data["damage"],
            countermeasure=data.get("countermeasure", 0.0),
            volume=data.get("volume", 1000),
            expertise=tuple(dict(data.get("expertise", {})).items()),
        )


def risk(
    threat: str,
    costs: Tensor,
    spend: Tensor,
    levels: list[str | None],
    economics: Economics,
) -> Risk:
    """The risk row of one threat model.

    Per attacked sample: ``costs`` is the attacker's money until the first mistake (NaN where
    the sample stood), ``spend`` all the attacker spent on it, ``levels`` the expertise of
    the attack that broke it. The attacker is taken to be rational: it stops spending on an
    input once its spend reaches the damage (the gain), and it buys the level of expertise
    whose attacks pay best over ``economics.volume`` inputs. The spend on an input that
    resists is counted with every attack the campaign ran on it, also those above the chosen
    level: the attacker's cost is an upper bound, its profit a lower bound."""
    attacked = len(costs)
    costs = costs.double()
    broken = ~torch.isnan(costs)
    damage = economics.damage
    given_up = torch.where(broken, costs, spend.double()).clamp(max=damage)
    order = {level: k for k, level in enumerate(EXPERTISE)}
    rank = torch.tensor([order.get(level or "", -1) for level in levels], dtype=torch.int64)
    best: tuple[float, str | None, Tensor] = (-math.inf, None, torch.zeros_like(broken))
    found_levels = {level for level in levels if level}
    ranked = sorted(found_levels, key=lambda v: order.get(v, 9))
    candidates: list[str | None] = [*ranked] if ranked else [None]
    for candidate in candidates:
        reach = broken & (rank <= order.get(candidate or "", -1)) & (costs <= damage)
        fixed = economics.price_of(candidate) if candidate else 0.0
        per_input = torch.where(reach, costs, given_up)
        mean_spend = float(per_input.mean()) if attacked else 0.0
        share = float(reach.sum()) / attacked if attacked else 0.0
        profit = economics.volume * (share * damage - mean_spend) - fixed
        if profit > best[0]:
            best = (profit, candidate, reach)
    profit, level, reach = best
    fixed = economics.price_of(level) if level else 0.0
    paying = int(reach.sum())
    likelihood = paying / attacked if attacked else math.nan
    loss = economics.volume * (likelihood if attacked else 0.0) * damage
    found = costs[broken]
    return Risk(
        threat=threat,
        attacked=attacked,
        broken=int(broken.sum()),
        costs=[float(c) for c in costs],
        levels=list(levels),
        cheapest=float(found.min()) if len(found) else math.nan,
        median=float(found.median()) if len(found) else math.nan,
        expertise=level,
        fixed=fixed,
        paying=paying,
        likelihood=likelihood,
        band=band(likelihood),
        damage=damage,
        volume=economics.volume,
        expected_loss=loss,
        attacker_cost=loss - profit,
        attacker_profit=profit,
        countermeasure=economics.countermeasure,
        worth_countermeasure=loss > economics.countermeasure,
    )


def band(likelihood: float) -> str:
    """The likelihood's name in a risk matrix (``-`` when unknown)."""
    if math.isnan(likelihood):
        return "-"
    return next(name for bound, name in LIKELIHOOD if likelihood < bound)
