"""The extraction attack base: a copy of the target model, bought with queries.

An extraction attack is called as ``attack(oracle, seed_x, rng=seed)``: ``seed_x`` are the
attacker's own unlabelled inputs of the task. Every label it buys goes through a view of the
oracle whose rows belong to no sample (id ``-1``): the queries are in the oracle's event log
(and a campaign's ledger), count against a total budget, and never against the per-sample
budget of the samples attacked later.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mallory.access.events import Call
from mallory.access.oracle import Access, Oracle
from mallory.access.view import OracleView
from mallory.attacks.base import Attack, Kind, Need
from mallory.attacks.surrogate import Surrogate
from mallory.errors import InputError


@dataclass(frozen=True, eq=False)
class ExtractionResult:
    """The extracted surrogate and what it cost: ``queries`` (labels bought), ``seconds``
    (the system's time answering) and ``money``, the calls as the event log recorded them,
    and ``fidelity``: the surrogate's agreement with the target on the inputs it bought."""

    attack: str
    params: dict[str, Any]
    surrogate: Surrogate
    queries: int
    seconds: float
    money: float
    fidelity: float
    calls: tuple[Call, ...]
    wall_seconds: float

    def summary(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "params": self.params,
            "queries": self.queries,
            "seconds": self.seconds,
            "money": self.money,
            "fidelity": self.fidelity,
            "training_size": self.surrogate.training_size,
        }


class ExtractionAttack(Attack):
    """Base of every extraction attack: implement :meth:`_extract`."""

    kind = Kind.EXTRACTION
    access = Access.LABELS
    needs = frozenset({Need.SEED_DATA})

    def __call__(
        self, oracle: Oracle, seed_x: Tensor | np.ndarray[Any, Any], *, rng: int = 0
    ) -> ExtractionResult:
        """Extract a surrogate of the system behind ``oracle`` from the seed inputs."""
        if not isinstance(oracle, Oracle):
            raise InputError(
                f"{self.name} must be called with a mallory Oracle; got {type(oracle).__name__}."
            )
        oracle.require(self.access, self.name)
        if isinstance(rng, bool) or not isinstance(rng, int) or rng < 0:
            raise InputError(f"rng must be an int seed >= 0; got {rng!r}.")
        x = torch.from_numpy(seed_x) if isinstance(seed_x, np.ndarray) else seed_x
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise InputError("seed_x must be a float tensor or numpy array of the task's inputs.")
        if tuple(x.shape[1:]) != oracle.input_shape or not len(x):
            raise InputError(
                f"{self.name}: the seed inputs have shape {tuple(x.shape)}; the target takes "
                f"(n, {', '.join(map(str, oracle.input_shape))}) with n >= 1."
            )
        if bool(oracle.bounds.outside(x).any()):
            raise InputError(
                f"{self.name}: seed inputs lie outside the target's bounds "
                f"{oracle.bounds.to_dict()}."
            )
        started, mark = time.perf_counter(), oracle.log.mark()
        surrogate = self._extract(LabelBuyer(oracle), x.detach(), rng)
        totals = oracle.log.totals(since=mark)
        return ExtractionResult(
            attack=self.name,
            params=self.params(),
            surrogate=surrogate,
            queries=totals.queries,
            seconds=totals.seconds,
            money=totals.money,
            fidelity=surrogate.fit_accuracy,
            calls=tuple(oracle.log.calls(mark)),
            wall_seconds=time.perf_counter() - started,
        )

    def _extract(self, buyer: LabelBuyer, seed_x: Tensor, rng: int) -> Surrogate:
        raise NotImplementedError


class LabelBuyer:
    """Buys the target's labels for points tied to no sample, within the budget."""

    def __init__(self, oracle: Oracle) -> None:
        self._oracle = oracle
        self.input_shape = oracle.input_shape
        self.num_classes = oracle.num_classes
        self.bounds = oracle.bounds

    def view(self, n: int) -> OracleView:
        return self._oracle.bind(torch.full((n,), -1, dtype=torch.int64))

    def buy(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """The labels of as many of ``points`` as the budget answers (in order), and those
        points; refused ones are left out."""
        view = self.view(len(points))
        left = view.remaining()
        afford = int(min(float(left.min()) if len(left) else 0.0, len(points)))
        points = points[:afford]
        if not len(points):
            return points, torch.zeros(0, dtype=torch.int64)
        labels = self.view(len(points)).labels(points).cpu()
        answered = labels >= 0
        return points[answered], labels[answered]
