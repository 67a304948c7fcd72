"""One system under audit: its judge, its clean verdicts, and attacks run on all its samples.

The audit runs every attack on every sample the system gets right (not only on those an
earlier attack left standing, as a campaign does), and takes the worst case per sample: a
stage compares attack algorithms sample by sample, and a sample one attack missed must still
meet the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mallory.access.judge import Judge
from mallory.access.oracle import Oracle
from mallory.attacks.evasion.base import EvasionAttack
from mallory.attacks.evasion.result import AttackResult
from mallory.errors import AccessError, InputError
from mallory.flags import Flag
from mallory.report.model import Ledger
from mallory.systems.base import System
from mallory.threat import ThreatModel
from mallory.zoo.datasets import Dataset


@dataclass
class Measured:
    """The worst case of some attacks on every sample: ``broken`` per sample (clean mistakes
    included), its robust accuracy, the results, and what stopped an attack from running."""

    label: str
    broken: Tensor
    results: list[AttackResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def robust(self) -> float:
        return 1.0 - float(self.broken.double().mean()) if len(self.broken) else math.nan

    @property
    def flags(self) -> list[Flag]:
        return list(dict.fromkeys(f for r in self.results for f in r.flags))

    @property
    def measured(self) -> bool:
        return bool(self.results)


class Bench:
    """A system and the audit's data: its judge (votes over ``draws`` for a randomized
    system), the clean verdicts, and the attacker's spend over every attack run on it."""

    def __init__(self, system: System, data: Dataset, *, draws: int, seed: int) -> None:
        self.system = system
        self.data = data
        self.seed = seed
        self.judge = Judge(system, draws=draws)
        self.ids = torch.arange(len(data))
        clean = self.judge.clean(data.x, self.ids, data.y)
        self.correct = clean.predictions == data.y
        self.spent = Ledger()

    @property
    def clean_accuracy(self) -> float:
        return float(self.correct.double().mean()) if len(self.correct) else math.nan

    def run(self, threat: ThreatModel, attack: EvasionAttack) -> AttackResult | str:
        """The attack on every correct sample (a fresh oracle: its own budget), or why it
        could not run."""
        oracle = Oracle(self.system, threat, judge=self.judge)
        rows = self.correct.nonzero().squeeze(1)
        try:
            attack.check_applicable(oracle)
        except (InputError, AccessError) as error:
            return str(error)
        if not len(rows):
            return "no sample is classified correctly"
        result = attack(
            oracle, self.data.x[rows], self.data.y[rows], rng=self.seed, ids=self.ids[rows]
        )
        self.spent = Ledger(
            queries=self.spent.queries + oracle.total_queries,
            gradients=self.spent.gradients + oracle.total_gradients,
            seconds=self.spent.seconds + oracle.seconds,
            money=self.spent.money + oracle.money,
        )
        if result.error is not None:
            return f"the system failed: {result.error}"
        return result

    def measure(self, label: str, attacks: list[tuple[ThreatModel, EvasionAttack]]) -> Measured:
        """The worst case over ``attacks`` (each with its threat model) per sample."""
        broken = ~self.correct
        found = Measured(label, broken.clone())
        rows = self.correct.nonzero().squeeze(1)
        for threat, attack in attacks:
            outcome = self.run(threat, attack)
            if isinstance(outcome, str):
                found.skipped.append(f"{attack.name}: {outcome}")
                continue
            found.results.append(outcome)
            found.broken[rows[outcome.success.cpu()]] = True
        return found

    def evaluator(self) -> Ledger:
        log = self.judge.log
        return Ledger(queries=log.queries, seconds=log.seconds, money=log.money)


def union(label: str, parts: list[Measured]) -> Measured:
    """The worst case per sample over measurements of one bench."""
    measured = [p for p in parts if p.measured]
    if not measured:
        return Measured(
            label, parts[0].broken.clone(), skipped=[s for p in parts for s in p.skipped]
        )
    broken = measured[0].broken.clone()
    for part in measured[1:]:
        broken |= part.broken
    return Measured(
        label,
        broken,
        [r for p in measured for r in p.results],
        [s for p in parts for s in p.skipped],
    )
