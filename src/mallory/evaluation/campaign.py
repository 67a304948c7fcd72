"""Campaign: threat models × the attacks each allows, cheapest attack first, each attack only on
the samples still standing and with its stated share of the budget, worst case per sample;
resumable from its store.

The protocol follows AutoAttack (Croce and Hein, ICML 2020: attacks in sequence, each on the
points still robust) across the attacker spectrum of Apruzzese et al. (SaTML 2023): within a
threat model, the zero-knowledge tricks run first, then label-only, score-based, transfer and
white-box attacks (:class:`~mallory.attacks.evasion.base.Family`). One Oracle per threat model
keeps one event log, so a per-sample query budget covers the whole sequence, and each attack
gets a stated share of it (:mod:`mallory.evaluation.budget`): an attack that could not run says
why instead of reporting that it broke nothing. One judge (:mod:`mallory.access.judge`)
decides every verdict of the run, by a majority over draws for a randomized system, with a
ledger of its own.

Work is committed to the :class:`~mallory.store.Store` in units of one attack on one chunk of
samples, with the events the unit logged. Under an unbounded threat model (eps = inf) every
sample falls to some perturbation, so each attack runs on every attacked sample and the worst
case per sample is the smallest perturbation found. The samples a unit attacks follow only from
what the store holds (the standing samples, sorted by id, cut in chunks), and every random draw
is keyed by the run's seed and the sample id, so a run resumed after a crash does exactly what
the uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mallory import flags as flag_codes
from mallory.access.judge import Judge
from mallory.access.oracle import Oracle
from mallory.attacks.base import REGISTRY, Kind, Need, attack_class, create
from mallory.attacks.evasion.base import EvasionAttack, Family
from mallory.attacks.extraction.base import ExtractionAttack
from mallory.attacks.surrogate import Surrogate
from mallory.errors import AccessError, InputError, SystemFailure, bad_param
from mallory.evaluation.budget import shares as budget_shares
from mallory.evaluation.economics import Economics
from mallory.jsonable import plain
from mallory.params import Boolean, Instance, Interval, ListOf, OrNone, Text, check_fields, param
from mallory.report.model import Report
from mallory.store import Outcomes, Samples, Store, Unit, load_object, save_object
from mallory.systems.base import System
from mallory.threat import Goal, Knowledge, Targets, ThreatModel
from mallory.zoo.datasets import Dataset

Listener = Callable[[str, dict[str, Any]], None]

SHARE = Interval(0.0, 1.0, note="a fraction of the per-sample budget")
"""An attack's share of the per-sample query budget."""

# flags about the system itself: kept once per run, not with every unit
RUN_FLAGS = {
    flag_codes.RANDOMIZED,
    flag_codes.UNDECLARED_RANDOMNESS,
    flag_codes.SATURATED_SOFTMAX,
    flag_codes.PROBABILITIES_AS_LOGITS,
}


def default_attacks(
    threat: ThreatModel,
    system: System,
    *,
    surrogate: Surrogate | None = None,
    extracted: bool = False,
) -> tuple[EvasionAttack, ...]:
    """The default attack sequence for ``threat`` on ``system``, cheapest first: the evasion
    attacks whose class says ``default = True`` (in family order, then ``rank``) that the
    threat model allows (transfer only with a ``surrogate``, and an attacker who knows the task:
    knowledge limited or perfect; feature edits only on tabular
    inputs; with an unbounded eps only the attacks that minimize the perturbation), without
    those to which the per-sample budget cannot give a single query. ``extracted``: the plan
    extracts its surrogate during the run, so transfer attacks come without one."""
    oracle = Oracle(system, threat)
    image = len(system.input_shape) == 3
    attack_class("fgsm")  # loads the registry
    candidates = sorted(
        (
            cls
            for cls in REGISTRY.values()
            if cls.kind is Kind.EVASION and cls.default and issubclass(cls, EvasionAttack)
        ),
        key=lambda c: (c.attacker_family(), c.rank, c.name),  # type: ignore[attr-defined]
    )
    chosen = []
    for cls in candidates:
        if cls.name == "feature-edit" and image:
            continue  # edits of single features are the tabular trick
        waits = False
        if Need.SURROGATE in cls.needs:
            if threat.knowledge is Knowledge.ZERO or (surrogate is None and not extracted):
                continue  # a surrogate is built from knowledge of the task
            attack = create(cls.name, surrogate=surrogate)
            waits = surrogate is None
        else:
            attack = create(cls.name)
        family = cls.attacker_family()  # type: ignore[attr-defined]
        if math.isinf(threat.eps) and (family is Family.TRICK or not attack.minimizes):
            continue  # unbounded: only a minimal perturbation says something
        if waits or applicable(attack, oracle):
            chosen.append(attack)
    # an attack the budget cannot give a single query is left out (a transfer attacker with one
    # query per sample runs no trick before it submits)
    while chosen:
        planned = [a.planned_queries(oracle) for a in chosen]
        allotted = budget_shares(threat.queries_per_sample, chosen, planned)
        if allotted is None or all(share > 0 for share in allotted):
            break
        chosen = [a for a, share in zip(chosen, allotted, strict=True) if share > 0]
    return tuple(chosen)


def applicable(attack: EvasionAttack, oracle: Oracle) -> bool:
    try:
        attack.check_applicable(oracle)
    except (InputError, AccessError):
        return False
    return True


@dataclass(frozen=True)
class Extraction:
    """A threat model's preface: a surrogate extracted from the system (its queries in the
    threat model's event log), for the plan's attacks that need one and were given none."""

    attack: ExtractionAttack
    seed_x: Tensor

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.attack.name,
            "params": plain(self.attack.params()),
            "seeds": len(self.seed_x),
        }


@dataclass(frozen=True, kw_only=True)
class ThreatPlan:
    """One threat model and its attack sequence (sorted by attacker cost, stable).

    ``grid=True`` (targeted threat models only) attacks one correctly classified sample per
    class toward every other class: the source × target grid of the JSMA and Carlini-Wagner
    papers. Otherwise a targeted threat model needs ``targets="random"``. ``shares`` gives
    each attack a fraction of the per-sample query budget (None entries: automatic, see
    :mod:`mallory.evaluation.budget`). ``extraction`` extracts the surrogate of the attacks
    that need one, through this threat model's oracle.
    """

    threat: ThreatModel = param(Instance(ThreatModel, "a ThreatModel"), help="the threat model")
    attacks: tuple[EvasionAttack, ...] = param(
        ListOf(
            Instance(EvasionAttack, "an evasion attack"),
            nonempty=True,
            text="a non-empty sequence of evasion attacks (mallory.create(name, ...))",
        ),
        help="the attacks it allows",
    )
    grid: bool = param(Boolean(), False, help="attack the source x target grid (targeted only)")
    shares: tuple[float | None, ...] | None = param(
        OrNone(ListOf(OrNone(SHARE, "for automatic"))),
        None,
        help="each attack's fraction of the per-sample budget (None: automatic)",
    )
    extraction: Extraction | None = param(
        OrNone(Instance(Extraction, "a mallory Extraction")),
        None,
        help="extracts the surrogate of the attacks that need one",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        attacks = self.attacks
        given = self.shares
        if given is not None:
            if len(given) != len(attacks):
                raise bad_param(
                    "ThreatPlan",
                    "shares",
                    f"one share per attack ({len(attacks)} of the threat model "
                    f"{self.threat.name!r}; None: automatic)",
                    given,
                )
            if sum(s for s in given if s is not None) > 1 + 1e-9:
                raise bad_param(
                    "ThreatPlan",
                    "shares",
                    "fractions that add up to at most the whole budget (1.0)",
                    given,
                )
        order = sorted(range(len(attacks)), key=lambda i: attacks[i].attacker_family())
        object.__setattr__(self, "attacks", tuple(attacks[i] for i in order))
        if given is not None:
            object.__setattr__(self, "shares", tuple(given[i] for i in order))
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

    def waits_for_surrogate(self, attack: EvasionAttack) -> bool:
        """Whether the attack's surrogate comes from this plan's extraction."""
        return (
            self.extraction is not None
            and Need.SURROGATE in attack.needs
            and getattr(attack, "surrogate", None) is None
        )

    def describe(self) -> dict[str, Any]:
        return {
            "threat": self.threat.to_dict(),
            "grid": self.grid,
            "shares": None if self.shares is None else list(self.shares),
            "extraction": None if self.extraction is None else self.extraction.describe(),
            "attacks": [
                {
                    "name": a.name,
                    "family": a.attacker_family().name.lower(),
                    "expertise": a.expertise(),
                    "params": plain(a.params()),
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
    ``review_band`` is the ``(low, high)`` confidence a human would review; ``draws`` is how
    many answers the judge's vote takes on a randomized system (None: the judge's default);
    ``economics`` holds the defender's figures (damage per evasion, the countermeasure's
    cost) that the report's risk rows weigh the attacker's costs against (None: no risk
    rows); ``source`` is any JSON-ready description of where the system and data came from (kept
    with the run).
    """

    name: str = param(Text(), help="names the run in the store")
    system: System = param(Instance(System, "a mallory System"), help="what is evaluated")
    data: Dataset = param(
        Instance(Dataset, "a non-empty mallory Dataset (x, y, bounds, ...)"),
        help="the evaluated samples",
    )
    plans: tuple[ThreatPlan, ...] = param(
        ListOf(Instance(ThreatPlan, "a ThreatPlan"), nonempty=True),
        help="a threat model and its attacks, each",
    )
    seed: int = param(Interval(low=0, integral=True), 0, help="seeds every random draw")
    chunk: int = param(
        Interval(low=1, integral=True), 100, help="samples committed to the store at once"
    )
    review_band: tuple[float, float] = param(
        ListOf(
            Interval(0.0, 1.0),
            length=2,
            order="<=",
            text="a pair (low, high) of confidences with 0 <= low <= high <= 1",
            toml_text="[low, high]: two confidences with 0 <= low <= high <= 1",
        ),
        (0.0, 0.9),
        help="the confidences a human would review",
    )
    draws: int | None = param(
        OrNone(Interval(low=1, integral=True), "for the judge's default"),
        None,
        help="answers per vote on a randomized system",
    )
    economics: Economics | None = param(
        OrNone(Instance(Economics, "an Economics"), "for no risk rows"),
        None,
        help="the defender's damage and countermeasure figures",
    )
    system_name: str = param(Text(blank=True), "", help="what the report calls the system")
    source: dict[str, Any] = param(
        Instance(dict, "a JSON-ready dict"),
        default_factory=dict,
        help="where the system and data came from (kept with the run)",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if len(self.data) == 0:
            raise bad_param(
                "Campaign", "data", "a non-empty mallory Dataset (x, y, bounds, ...)", self.data
            )
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
        plans = self.plans
        names = [p.threat.name for p in plans]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise InputError(
                f"Threat model names must be unique in a campaign; {twice} appear twice. "
                "Give each its own name (ThreatModel(name=...) or threat.with_(name=...))."
            )
        for plan in plans:
            oracle = Oracle(self.system, plan.threat)
            for attack in plan.attacks:
                if plan.waits_for_surrogate(attack):
                    continue  # checked once the extraction has built the surrogate
                try:
                    attack.check_applicable(oracle)
                except (InputError, AccessError) as error:
                    raise InputError(
                        f"Threat model {plan.threat.name!r}, attack {attack.name!r}: {error}"
                    ) from None
            if plan.extraction is not None:
                try:
                    oracle.require(plan.extraction.attack.access, plan.extraction.attack.name)
                except AccessError as error:
                    raise InputError(f"Threat model {plan.threat.name!r}: {error}") from None

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
            "draws": self.draws,
            "economics": None if self.economics is None else self.economics.to_dict(),
            "plans": [p.describe() for p in self.plans],
            "source": plain(self.source),
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
            price = max(p.threat.price_per_query for p in self.plans)
            judge = Judge(self.system, draws=self.draws, price_per_query=price)
            samples = self._samples(db, judge)
            with Progress(enabled=progress) as bars:
                for t, plan in enumerate(self.plans):
                    _Plan(self, db, t, plan, samples, judge, bars, listener).run()
            db.add_flags(self.name, [f.to_dict() for f in judge.flags])
            db.finish(self.name)
            return build_report(db, self.name)
        finally:
            if owned:
                db.close()

    # ------------------------------------------------------------------ samples
    def _samples(self, db: Store, judge: Judge) -> Samples:
        shape = tuple(self.data.input_shape)
        if not db.has_samples(self.name):
            mark = judge.log.mark()
            samples = self._clean_samples(judge)
            db.add_samples(self.name, samples, judge.log.calls(mark))
            db.add_flags(self.name, [f.to_dict() for f in judge.flags])
        stored = db.samples(self.name, shape)
        judge.remember(
            stored.x, stored.ids, stored.predictions, stored.confidence, stored.agreement
        )
        return stored

    def _clean_samples(self, judge: Judge) -> Samples:
        """The dataset's samples with the judge's clean verdicts, then the grid rows."""
        x, y = self.data.x, self.data.y
        n = len(y)
        ids = torch.arange(n)
        verdict = judge.clean(x, ids, y)
        predictions, confidence = verdict.predictions, verdict.confidence
        source = torch.full((n,), -1)
        target = torch.full((n,), -1)
        parts = [(ids, y, predictions, confidence, verdict.agreement, x, source, target)]
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
                    confidence[src],
                    verdict.agreement[src],
                    x[src],
                    src,
                    torch.tensor([t for _, t in rows], dtype=torch.int64),
                )
            )
        cols = list(zip(*parts, strict=True))
        ids_, labels, preds, conf, agree, xs, srcs, targets = (torch.cat(list(c)) for c in cols)
        return Samples(ids_, labels, preds, conf.double(), xs, srcs, targets, agree.double())


class _Plan:
    """One threat model of a run: its oracle, its budget shares, its units."""

    def __init__(
        self,
        campaign: Campaign,
        db: Store,
        t: int,
        plan: ThreatPlan,
        samples: Samples,
        judge: Judge,
        bars: Any,
        listener: Listener | None,
    ) -> None:
        self.campaign, self.db, self.t, self.plan = campaign, db, t, plan
        self.samples, self.judge, self.bars, self.listener = samples, judge, bars, listener
        self.name = campaign.name
        self.shape = tuple(campaign.data.input_shape)
        self.index = {int(i): k for k, i in enumerate(samples.ids)}

    def run(self) -> None:
        plan, samples, t = self.plan, self.samples, self.t
        rows = samples.source >= 0 if plan.grid else samples.source < 0
        ids = samples.ids[rows]
        correct = (samples.predictions == samples.labels)[rows]
        standing = ids[correct]
        done = {(u.attack, u.chunk) for u in self.db.units(self.name) if u.threat == t}
        oracle = Oracle(self.campaign.system, plan.threat, judge=self.judge)
        replayed = self.db.events(self.name, threat=t, account="attacker")
        if replayed:
            oracle.log.extend(replayed)
        self.bar = bar = self.bars.add(plan.threat.name, len(plan.attacks))
        attacks = self._attacks(oracle, done)
        planned = [a.planned_queries(oracle) for a in attacks]
        allotted = budget_shares(plan.threat.queries_per_sample, attacks, planned, plan.shares)
        cumulative = None if allotted is None else torch.cumsum(torch.tensor(allotted), 0).tolist()
        for a, attack in enumerate(attacks):
            self.bars.describe(bar, f"{plan.threat.name}: {attack.name} on {len(standing)} samples")
            budget = None if allotted is None else allotted[a]
            cap = None if cumulative is None else int(cumulative[a])
            reason = self._why_not(oracle, standing, budget, cap)
            if reason is not None:
                if (a, 0) not in done:
                    self._commit_not_run(a, attack, reason, budget, planned[a])
                self.bars.advance(bar)
                continue
            chunks = [
                standing[k : k + self.campaign.chunk]
                for k in range(0, len(standing), self.campaign.chunk)
            ]
            for c, part in enumerate(chunks):
                if (a, c) in done:
                    continue
                if cap is not None:
                    oracle.allowance.grant(part, torch.full((len(part),), cap))
                try:
                    self._unit(oracle, attack, a, c, part, budget, planned[a])
                finally:
                    oracle.allowance.clear()
            if math.isfinite(plan.threat.eps):
                result = self.db.outcomes(self.name, t, a, self.shape, inputs=False)
                broken = set(result.ids[result.success].tolist())
                standing = torch.tensor(
                    [int(i) for i in standing if int(i) not in broken], dtype=torch.int64
                )
            self.bars.advance(bar)
        if math.isfinite(plan.threat.eps):
            self.bars.describe(bar, f"{plan.threat.name}: {len(standing)} of {len(ids)} standing")
        else:
            self.bars.describe(bar, f"{plan.threat.name}: smallest perturbations found")

    # ------------------------------------------------------------------ extraction
    def _attacks(self, oracle: Oracle, done: set[tuple[int, int]]) -> list[EvasionAttack]:
        """The plan's attacks, with the extracted surrogate given to those waiting for it."""
        plan = self.plan
        if plan.extraction is None or not any(plan.waits_for_surrogate(a) for a in plan.attacks):
            return list(plan.attacks)
        surrogate = self._extract(oracle, done)
        attacks = []
        for attack in plan.attacks:
            if plan.waits_for_surrogate(attack):
                attack = dataclasses.replace(attack, surrogate=surrogate)  # type: ignore[call-arg]
                try:
                    attack.check_applicable(oracle)
                except (InputError, AccessError) as error:
                    raise InputError(
                        f"Threat model {plan.threat.name!r}, attack {attack.name!r} with the "
                        f"extracted surrogate: {error}"
                    ) from None
            attacks.append(attack)
        return attacks

    def _extract(self, oracle: Oracle, done: set[tuple[int, int]]) -> Surrogate:
        """Run the plan's extraction through its oracle (committed with its events and the
        surrogate, so a resumed run neither pays for it again nor rebuilds it)."""
        extraction = self.plan.extraction
        assert extraction is not None
        if (-1, 0) in done:
            data = self.db.artifact(self.name, self.t, "surrogate")
            if data is None:
                raise SystemFailure(
                    f"The store has the extraction of threat model {self.plan.threat.name!r} but "
                    "not its surrogate; start the campaign under a new name."
                )
            surrogate: Surrogate = load_object(data)
            return surrogate
        self.bars.describe(self.bar, f"{self.plan.threat.name}: extracting a surrogate")
        started = time.perf_counter()
        mark = oracle.log.mark()
        result = extraction.attack(oracle, extraction.seed_x, rng=self.campaign.seed)
        unit = Unit(
            self.t,
            -1,
            0,
            extraction.attack.name,
            plain(extraction.attack.params()),
            0,
            time.perf_counter() - started,
            None,
            evaluator={},
            refusals={},
        )
        self.db.commit_unit(
            self.name,
            unit,
            None,
            oracle.log.calls(mark),
            {"surrogate": save_object(result.surrogate)},
        )
        return result.surrogate

    # ------------------------------------------------------------------ units
    def _why_not(
        self, oracle: Oracle, standing: Tensor, budget: int | None, cap: int | None
    ) -> str | None:
        if not len(standing):
            return "no sample left standing"
        if cap is None:
            return None
        spent = oracle.queries_of(standing)
        if bool((spent >= cap).all()):
            total = self.plan.threat.queries_per_sample
            if budget == 0:
                return f"no budget left (its share is 0 of {total:,} queries per sample)"
            return f"no budget left (the earlier attacks spent all {cap:,} queries per sample)"
        return None

    def _commit_not_run(
        self, a: int, attack: EvasionAttack, reason: str, budget: int | None, planned: int | None
    ) -> None:
        unit = Unit(
            self.t,
            a,
            0,
            attack.name,
            plain(attack.params()),
            0,
            0.0,
            None,
            status="not-run",
            reason=reason,
            budget=budget,
            planned=planned,
        )
        self.db.commit_unit(self.name, unit, None)
        if self.listener is not None:
            self.listener(
                "not-run",
                {"threat": self.plan.threat.name, "attack": attack.name, "reason": reason},
            )

    def _unit(
        self,
        oracle: Oracle,
        attack: EvasionAttack,
        a: int,
        c: int,
        part: Tensor,
        budget: int | None,
        planned: int | None,
    ) -> None:
        samples, plan = self.samples, self.plan
        rows = torch.tensor([self.index[int(i)] for i in part], dtype=torch.int64)
        targets = samples.target[rows] if plan.grid else None
        started = time.perf_counter()
        mark, judge_mark = oracle.log.mark(), self.judge.log.mark()
        result = attack(
            oracle,
            samples.x[rows],
            samples.labels[rows],
            rng=self.campaign.seed,
            targets=targets,
            ids=part,
        )
        seconds = time.perf_counter() - started
        if result.error is not None:
            raise SystemFailure(
                f"{attack.name} under {plan.threat.name!r} stopped: {result.error}. "
                "Nothing of this unit was kept; run the campaign again to resume."
            )
        n = len(part)
        success = result.success
        spent = oracle.log.per_sample(part, since=mark)
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
            queries=spent.queries,
            gradients=spent.gradients,
            seconds=spent.seconds,
            money=spent.money,
            x_adv={int(part[i]): result.x_adv[i] for i in range(n) if bool(success[i])},
            agreement=result.agreement,
        )
        evaluator = self.judge.log.totals(since=judge_mark)
        unit = Unit(
            self.t,
            a,
            c,
            attack.name,
            plain(result.params),
            n,
            seconds,
            None,
            budget=budget,
            planned=planned,
            flags=[f.to_dict() for f in result.flags if f.code not in RUN_FLAGS],
            evaluator={
                "queries": evaluator.queries,
                "seconds": evaluator.seconds,
                "money": evaluator.money,
            },
            refusals=dict(result.refusals),
        )
        calls = oracle.log.calls(mark) + self.judge.log.calls(judge_mark)
        self.db.commit_unit(self.name, unit, outcomes, calls)
        if self.listener is not None:
            self.listener(
                "unit",
                {
                    "threat": plan.threat.name,
                    "attack": attack.name,
                    "chunk": c,
                    "samples": n,
                    "broken": int(success.sum()),
                },
            )
