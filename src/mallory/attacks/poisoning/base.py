"""The poisoning attack base: training data changed before the defender trains on it.

A poisoning attack is called as ``attack(data, rng=seed)`` with the defender's training set (a
:class:`~mallory.zoo.datasets.Dataset`): the threat model of a poisoner is write access to the
training data, not queries. It returns the poisoned set; the defender's own training recipe
(:mod:`mallory.defenses`: data in, model out) then trains on it, so poisoning enters through the
same path as every defense.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from mallory.access.oracle import Access
from mallory.attacks.base import Attack, Kind, Need
from mallory.errors import InputError
from mallory.zoo.datasets import Dataset


@dataclass(frozen=True, eq=False)
class PoisoningResult:
    """The poisoned training set, which rows of it were changed (``changed``, indices into
    the set) and how many, and the attack's wall time."""

    attack: str
    params: dict[str, Any]
    data: Dataset
    changed: Tensor
    seconds: float

    @property
    def rate(self) -> float:
        """The share of the training set the attacker changed."""
        return len(self.changed) / len(self.data) if len(self.data) else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "params": self.params,
            "samples": len(self.data),
            "changed": len(self.changed),
            "rate": self.rate,
            "seconds": self.seconds,
        }


class PoisoningAttack(Attack):
    """Base of every poisoning attack: implement :meth:`_poison`, which returns new labels
    and inputs and the indices it changed."""

    kind = Kind.POISONING
    access = Access.LABELS  # it queries nothing; the lowest level says so
    needs = frozenset({Need.TRAINING_DATA})

    def __call__(self, data: Dataset, *, rng: int = 0) -> PoisoningResult:
        if not isinstance(data, Dataset) or not len(data):
            raise InputError(f"{self.name} needs the training set as a non-empty mallory Dataset.")
        if isinstance(rng, bool) or not isinstance(rng, int) or rng < 0:
            raise InputError(f"rng must be an int seed >= 0; got {rng!r}.")
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(rng)
        x, y, changed = self._poison(data.x.clone(), data.y.clone(), data, generator)
        poisoned = replace(data, name=f"{data.name}+{self.name}", x=x, y=y)
        return PoisoningResult(
            attack=self.name,
            params=self.params(),
            data=poisoned,
            changed=changed,
            seconds=time.perf_counter() - started,
        )

    def _poison(
        self, x: Tensor, y: Tensor, data: Dataset, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError
