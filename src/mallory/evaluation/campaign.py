"""Campaign: threat models × the attacks each allows, cheapest attack first, each attack only on
the samples still standing, worst case per sample; resumable from its store.

The protocol follows AutoAttack (Croce and Hein, ICML 2020: attacks in sequence, each on the
points still robust) across the attacker spectrum of Apruzzese et al. (SaTML 2023): within a
threat model, the zero-knowledge tricks run first, then label-only, score-based, transfer and
white-box attacks (:class:`~mallory.attacks.base.Family`). One Oracle per threat model keeps
one ledger, so a per-sample query budget covers the whole sequence.

Work is committed to the :class:`~mallory.store.Store` in units of one attack on one chunk of
samples. Under an unbounded threat model (eps = inf) every sample falls to some perturbation,
so each attack runs on every attacked sample and the worst case per sample is the smallest
perturbation found. The samples a unit attacks follow only from what the store holds (the standing
samples, sorted by id, cut in chunks), and every random draw is keyed by the run's seed and the
sample id, so a run resumed after a crash does exactly what the uninterrupted run would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mallory.access.oracle import Oracle
from mallory.attacks.base import Attack, Family, create
from mallory.attacks.surrogate import Surrogate
from mallory.errors import AccessError, InputError, SystemFailure
from mallory.report.model import Report
from mallory.store import Outcomes, Samples, Store, Unit
from mallory.systems.base import System
from mallory.threat import Goal, Targets, ThreatModel
from mallory.zoo.datasets import Dataset

# The attacks a threat model gets when a campaign names none, cheapest family first; each is
# kept only where the threat model allows it (access, norm, goal, a finite eps).
DEFAULT_ATTACKS: dict[Family, tuple[str, ...]] = {
    Family.TRICK: (
        "gaussian-noise",
        "uniform-noise",
        "contrast",
        "blur",
        "shift",
        "rotate",
        "scale",
        "occlude",
        "jpeg",
        "feature-edit",
    ),
    Family.DECISION: ("hopskipjump",),
    Family.SCORE: ("square",),
    Family.TRANSFER: ("transfer",),
    Family.GRADIENT: ("fgsm", "pgd", "deepfool", "cw", "jsma"),
}

Listener = Callable[[str, dict[str, Any]], None]


def default_attacks(
    threat: ThreatModel, system: System, *, surrogate: Surrogate | None = None
) -> tuple[Attack, ...]:
    """The default attack sequence for ``threat`` on ``system``, cheapest first: those of
    :data:`DEFAULT_ATTACKS` the threat model allows (transfer only with a ``surrogate``;
    feature edits only on tabular inputs; with an unbounded eps only the attacks that minimize
    the perturbation)."""
    oracle = Oracle(system, threat)
    image = len(system.input_shape) == 3
    chosen = []
    for family in Family:
        for name in DEFAULT_ATTACKS[family]:
            if name == "feature-edit" and image:
                continue  # edits of single features are the tabular trick
            if name == "transfer":
                if surrogate is None:
                    continue
                attack = create(name, surrogate=surrogate)
            else:
                attack = create(name)
            if math.isinf(threat.eps) and (family is Family.TRICK or not attack.minimizes):
                continue  # unbounded: only a minimal perturbation says something
            if applicable(attack, oracle):
                chosen.append(attack)
    return tuple(chosen)


def applicable(attack: Attack, oracle: Oracle) -> bool:
    try:
        attack.check_applicable(oracle)
    except (InputError, AccessError):
        return False
    return True


@dataclass(frozen=True, kw_only=True)
class ThreatPlan:
    """One threat model and its attack sequence (sorted by attacker cost, stable).

    ``grid=True`` (targeted threat models only) attacks one correctly classified sample per
    class toward every other class: the source × target grid of the JSMA and Carlini-Wagner
    papers. Otherwise a targeted threat model needs ``targets="random"``.
    """

    threat: ThreatModel
    attacks: tuple[Attack, ...]
    grid: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.threat, ThreatModel):
            raise InputError(f"ThreatPlan needs a ThreatModel; got {type(self.threat).__name__}.")
        attacks = tuple(self.attacks)
        if not attacks or not all(isinstance(a, Attack) for a in attacks):
            raise InputError(
                f"The threat model {self.threat.name!r} needs a non-empty sequence of attacks "
                "(mallory.create(name, ...)); got "
                f"{[type(a).__name__ for a in attacks] or 'none'}."
            )
        ordered = tuple(sorted(attacks, key=lambda a: a.attacker_family()))
        object.__setattr__(self, "attacks", ordered)
        targeted = self.threat.goal is Goal.TARGETED
        if self.grid and not targeted:
            raise InputError(
                f"grid=True needs a targeted threat model; {self.threat.name!r} is untargeted."
            )
        if targeted and not self.grid and self.threat.targets is Targets.GIVEN:
            raise InputError(
                f"The targeted threat model {self.threat.name!r} says targets='given', but a "
                "campaign has no targets to give: use targets='random', or grid=True."
            )
        if self.grid and self.threat.targets is not Targets.GIVEN:
            object.__setattr__(self, "threat", self.threat.with_(targets=Targets.GIVEN))

    def describe(self) -> dict[str, Any]:
        return {
            "threat": self.threat.to_dict(),
            "grid": self.grid,
            "attacks": [
                {
                    "name": a.name,
                    "family": a.attacker_family().name.lower(),
                    "params": _plain(a.params()),
                }
                for a in self.attacks
            ],
        }


@dataclass(frozen=True, kw_only=True)
class Campaign:
    """Evaluate ``system`` on ``data`` under each plan; :meth:`run` returns the Report.

    ``name`` names the run in the store (running the same campaign again resumes it);
    ``system_name`` says in the report what was evaluated; ``chunk`` is the number of samples
    committed at once (smaller: less redone after a crash, more transactions);
    ``review_band`` is the ``(low, high)`` confidence a human would review; ``source`` is any
    JSON-ready description of where the system and data came from (kept with the run).
    """

    name: str
    system: System
    data: Dataset
    plans: tuple[ThreatPlan, ...]
    seed: int = 0
    chunk: int = 100
    review_band: tuple[float, float] = (0.0, 0.9)
    system_name: str = ""
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise InputError(f"A campaign needs a non-empty name; got {self.name!r}.")
        if not isinstance(self.system, System):
            raise InputError(
                f"A campaign needs a mallory System; got {type(self.system).__name__}."
            )
        if not isinstance(self.data, Dataset) or len(self.data) == 0:
            raise InputError("A campaign needs a non-empty mallory Dataset (x, y, bounds, ...).")
        if tuple(self.data.input_shape) != tuple(self.system.input_shape):
            raise InputError(
                f"The dataset {self.data.name!r} has inputs of shape {tuple(self.data.input_shape)}"
                f", but the system {self.system.name!r} takes {tuple(self.system.input_shape)}. "
                "Use data made for this model."
            )
        outside = self.system.bounds.outside(self.data.x)
        if bool(outside.any()):
            raise InputError(
                f"The dataset {self.data.name!r} has {int(outside.sum())} "
                f"samples outside the system's input bounds {self.system.bounds.to_dict()}; "
                "scale the data to the model's input range."
            )
        classes = self.system.num_classes
        if int(self.data.y.max()) >= classes or int(self.data.y.min()) < 0:
            raise InputError(
                f"The dataset {self.data.name!r} has labels up to {int(self.data.y.max())}, but "
                f"the system {self.system.name!r} has {classes} classes."
            )
        plans = tuple(self.plans)
        if not plans:
            raise InputError("A campaign needs at least one threat model.")
        names = [p.threat.name for p in plans]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise InputError(
                f"Threat model names must be unique in a campaign; {twice} appear twice. "
                "Give each its own name (ThreatModel(name=...) or threat.with_(name=...))."
            )
        object.__setattr__(self, "plans", plans)
        low, high = (float(v) for v in self.review_band)
        if not 0.0 <= low <= high <= 1.0:
            raise InputError(
                f"review_band must be (low, high) with 0 <= low <= high <= 1; got "
                f"{self.review_band!r}."
            )
        object.__setattr__(self, "review_band", (low, high))
        if isinstance(self.chunk, bool) or not isinstance(self.chunk, int) or self.chunk < 1:
            raise InputError(f"chunk must be an int >= 1; got {self.chunk!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"seed must be an int >= 0; got {self.seed!r}.")
        for plan in plans:
            oracle = Oracle(self.system, plan.threat)
            for attack in plan.attacks:
                try:
                    attack.check_applicable(oracle)
                except (InputError, AccessError) as error:
                    raise InputError(
                        f"Threat model {plan.threat.name!r}, attack {attack.name!r}: {error}"
                    ) from None

    def describe(self) -> dict[str, Any]:
        """The campaign as JSON-ready data: kept with the run, and compared on resume."""
        data = self.data
        return {
            "name": self.name,
            "system": self.system_name or self.system.name,
            "dataset": data.name,
            "samples": len(data),
            "input_shape": list(data.input_shape),
            "bounds": [float(data.bounds[0]), float(data.bounds[1])],
            "class_names": list(data.class_names),
            "feature_names": None if data.feature_names is None else list(data.feature_names),
            "seed": self.seed,
            "chunk": self.chunk,
            "review_band": list(self.review_band),
            "plans": [p.describe() for p in self.plans],
            "source": _plain(self.source),
        }

    def run(
        self,
        store: Store | str | Path | None = None,
        *,
        progress: bool = True,
        listener: Listener | None = None,
    ) -> Report:
        """Run (or resume) the campaign and return its Report.

        ``store``: a Store or a path (None: an in-memory store, gone afterwards). ``progress``
        shows bars on the terminal; ``listener(event, info)`` hears each committed unit."""
        from mallory.evaluation.metrics import build_report
        from mallory.evaluation.progress import Progress

        owned = not isinstance(store, Store)
        db = store if isinstance(store, Store) else Store(":memory:" if store is None else store)
        try:
            db.begin(self.name, self.describe())
            samples = self._samples(db)
            with Progress(enabled=progress) as bars:
                for t, plan in enumerate(self.plans):
                    self._run_plan(db, t, plan, samples, bars, listener)
            db.finish(self.name)
            return build_report(db, self.name)
        finally:
            if owned:
                db.close()

    # ------------------------------------------------------------------ internals
    def _samples(self, db: Store) -> Samples:
        shape = tuple(self.data.input_shape)
        if not db.has_samples(self.name):
            db.add_samples(self.name, self._clean_samples())
        return db.samples(self.name, shape)

    def _clean_samples(self) -> Samples:
        """The dataset's samples with the system's clean answers, then the grid rows."""
        x, y = self.data.x, self.data.y
        n = len(y)
        probs = _probabilities(self.system, x)
        confidence, predictions = probs.max(dim=1)
        ids = torch.arange(n)
        source = torch.full((n,), -1)
        target = torch.full((n,), -1)
        parts = [(ids, y, predictions, confidence.double(), x, source, target)]
        if any(p.grid for p in self.plans):
            correct = predictions == y
            rows: list[tuple[int, int]] = []
            classes = self.system.num_classes
            firsts = [
                int(torch.nonzero(correct & (y == c))[0])
                for c in range(classes)
                if bool((correct & (y == c)).any())
            ]
            for s in firsts:
                rows += [(s, t) for t in range(classes) if t != int(y[s])]
            src = torch.tensor([s for s, _ in rows], dtype=torch.int64)
            parts.append(
                (
                    n + torch.arange(len(rows)),
                    y[src],
                    predictions[src],
                    confidence[src].double(),
                    x[src],
                    src,
                    torch.tensor([t for _, t in rows], dtype=torch.int64),
                )
            )
        cols = list(zip(*parts, strict=True))
        return Samples(*(torch.cat(list(c)) for c in cols))

    def _run_plan(
        self,
        db: Store,
        t: int,
        plan: ThreatPlan,
        samples: Samples,
        bars: Any,
        listener: Listener | None,
    ) -> None:
        shape = tuple(self.data.input_shape)
        rows = samples.source >= 0 if plan.grid else samples.source < 0
        ids = samples.ids[rows]
        correct = (samples.predictions == samples.labels)[rows]
        standing = ids[correct]
        index = {int(i): k for k, i in enumerate(samples.ids)}
        done = {(u.threat, u.attack, u.chunk): u for u in db.units(self.name) if u.threat == t}
        oracle = Oracle(self.system, plan.threat)
        if done:
            self._replay(db, oracle, t, shape)
        bar = bars.add(plan.threat.name, len(plan.attacks))
        for a, attack in enumerate(plan.attacks):
            bars.describe(bar, f"{plan.threat.name}: {attack.name} on {len(standing)} samples")
            chunks = [standing[k : k + self.chunk] for k in range(0, len(standing), self.chunk)]
            for c, part in enumerate(chunks):
                if (t, a, c) in done:
                    continue
                rows_of = torch.tensor([index[int(i)] for i in part], dtype=torch.int64)
                outcomes, unit = self._attack(oracle, attack, t, a, c, part, rows_of, samples)
                db.commit_unit(self.name, unit, outcomes)
                if listener is not None:
                    listener(
                        "unit",
                        {
                            "threat": plan.threat.name,
                            "attack": attack.name,
                            "chunk": c,
                            "samples": len(part),
                            "broken": int(outcomes.success.sum()),
                        },
                    )
            if math.isfinite(plan.threat.eps):
                result = db.outcomes(self.name, t, a, shape, inputs=False)
                broken = set(result.ids[result.success].tolist())
                standing = torch.tensor(
                    [int(i) for i in standing if int(i) not in broken], dtype=torch.int64
                )
            bars.advance(bar)
        if math.isfinite(plan.threat.eps):
            bars.describe(bar, f"{plan.threat.name}: {len(standing)} of {len(ids)} standing")
        else:
            bars.describe(bar, f"{plan.threat.name}: smallest perturbations found")

    def _attack(
        self,
        oracle: Oracle,
        attack: Attack,
        t: int,
        a: int,
        c: int,
        part: Tensor,
        rows: Tensor,
        samples: Samples,
    ) -> tuple[Outcomes, Unit]:
        grid = self.plans[t].grid
        targets = samples.target[rows] if grid else None
        started = time.perf_counter()
        answered_before = oracle.seconds_of(part)
        result = attack(
            oracle, samples.x[rows], samples.labels[rows], rng=self.seed, targets=targets, ids=part
        )
        seconds = time.perf_counter() - started
        if result.error is not None:
            raise SystemFailure(
                f"{attack.name} under {self.plans[t].threat.name!r} stopped: {result.error}. "
                "Nothing of this unit was kept; run the campaign again to resume."
            )
        n = len(part)
        success = result.success
        outcomes = Outcomes(
            ids=part,
            success=success,
            interrupted=result.interrupted_mask,
            predictions=result.predictions,
            confidence=result.confidence.double(),
            l0=result.l0.double(),
            l2=result.l2.double(),
            linf=result.linf.double(),
            targets=result.targets if result.targets is not None else torch.full((n,), -1),
            queries=result.queries,
            gradients=result.gradients,
            # the oracle's ledger: the system's time answering each sample, and the money
            seconds=oracle.seconds_of(part) - answered_before,
            money=result.cost,
            x_adv={int(part[i]): result.x_adv[i] for i in range(n) if bool(success[i])},
        )
        unit = Unit(t, a, c, attack.name, _plain(result.params), n, seconds, None)
        return outcomes, unit

    def _replay(self, db: Store, oracle: Oracle, t: int, shape: tuple[int, ...]) -> None:
        """Enter into a fresh oracle what the committed units of threat ``t`` spent."""
        for attack in range(len(self.plans[t].attacks)):
            spent = db.outcomes(self.name, t, attack, shape, inputs=False)
            if len(spent.ids):
                oracle.restore(spent.ids, spent.queries, spent.gradients, spent.seconds)


def _probabilities(system: System, x: Tensor, batch: int = 512) -> Tensor:
    from mallory.access.oracle import _as_probabilities

    out = []
    with torch.no_grad():
        for k in range(0, len(x), batch):
            out.append(_as_probabilities(system.forward(x[k : k + batch]), system.output))
    return torch.cat(out)


def _plain(value: Any) -> Any:
    """JSON-ready (enums to values, tensors to lists, non-finite floats to strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Tensor):
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "value"):
        return _plain(value.value)
    return str(value)
