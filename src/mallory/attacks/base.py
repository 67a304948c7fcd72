"""The attack base class and the registry.

An attack is configuration plus one call: a frozen, keyword-only dataclass of hyperparameters,
registered by name, called as ``attack(oracle, x, y, rng=seed)``. Subclasses implement only
``_run``, which sees an :class:`~mallory.access.oracle.OracleView` and returns candidate adversarial
inputs; the base class does the rest, the same way for every attack:

* refuses, before anything runs, an attack that needs more access than the threat model grants,
  or a norm or goal it does not support;
* validates the inputs, labels and targets (and draws random targets from the seed);
* splits the batch into ``batch_size`` chunks (per-sample random streams make the outcome
  independent of that split);
* enforces the perturbation set and the input bounds on what ``_run`` returns;
* judges success with the system's own predictions and reports distances, confidence and the
  oracle's counts of queries and gradients (a clean input the system already gets wrong is a
  success at distance 0: the evaluator checks, uncounted).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from enum import Enum, IntEnum
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import Tensor

from mallory.access.oracle import Access, Oracle, OracleView
from mallory.access.record import Record
from mallory.attacks.evasion.result import AttackResult
from mallory.attacks.noise import Noise
from mallory.attacks.params import Rule, integer
from mallory.errors import InputError, MalloryError, SystemFailure
from mallory.threat import Goal, Norm, Targets
from mallory.threat.perturbation import distances, norm_of, project

REGISTRY: dict[str, type[Attack]] = {}


class Family(IntEnum):
    """What kind of attacker an attack assumes, in the order of what it costs the attacker:
    a campaign runs the cheap tricks first and white-box gradients last."""

    TRICK = 0  # zero-knowledge transformations anyone can try (noise, blur, feature edits)
    DECISION = 1  # query attacks that see only the predicted label
    SCORE = 2  # query attacks that see the scores
    TRANSFER = 3  # a surrogate model built by the attacker, then a few queries
    GRADIENT = 4  # white-box: the model's gradients

    @staticmethod
    def of_access(access: Access) -> Family:
        return {
            Access.LABELS: Family.DECISION,
            Access.SCORES: Family.SCORE,
            Access.GRADIENTS: Family.GRADIENT,
        }[access]


A = TypeVar("A", bound="type[Attack]")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Attack:
    """Base of every attack. See the module docstring for what it does around ``_run``."""

    name: ClassVar[str] = ""
    access: ClassVar[Access] = Access.GRADIENTS
    norms: ClassVar[frozenset[Norm]] = frozenset(Norm)
    goals: ClassVar[frozenset[Goal]] = frozenset(Goal)
    minimizes: ClassVar[bool] = False  # searches for a minimal perturbation; eps may be inf
    family: ClassVar[Family | None] = None  # None: derived from ``access``
    paper: ClassVar[str] = ""

    batch_size: int | None = integer(
        None, low=1, optional=True, help="samples attacked at once (None: all)"
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            rule: Rule | None = f.metadata.get("rule")
            if rule is None:
                continue
            value = getattr(self, f.name)
            if value is None and rule.optional:
                continue
            if rule.convert is not None:
                try:
                    value = rule.convert(value)
                except MalloryError as error:  # its own reason (an inner attack's, say)
                    raise InputError(
                        f"The {f.name!r} parameter of {type(self).__name__} must be "
                        f"{rule.expected}; got {value!r} instead: {error}"
                    ) from error
                except (TypeError, ValueError):
                    pass  # reported below in the one message form
            if not rule.test(value):
                raise InputError(
                    f"The {f.name!r} parameter of {type(self).__name__} must be "
                    f"{rule.expected}; got {getattr(self, f.name)!r} instead."
                )
            object.__setattr__(self, f.name, value)
        self._check()

    def _check(self) -> None:
        """Checks across parameters; override to add some."""

    def keeps_closest(self) -> bool:
        """Whether the base may replace a successful output by a closer adversarial query the
        attacker saw. True for minimizing attacks, whose answer is the smallest perturbation;
        an attack whose output must meet more than the threat model's goal (a margin, say)
        returns False, so that its own successes are kept."""
        return self.minimizes

    # ------------------------------------------------------------------ the call
    def __call__(
        self,
        oracle: Oracle,
        x: Tensor | np.ndarray[Any, Any],
        y: Tensor | np.ndarray[Any, Any],
        *,
        rng: int = 0,
        targets: Tensor | np.ndarray[Any, Any] | None = None,
        ids: Tensor | np.ndarray[Any, Any] | None = None,
    ) -> AttackResult:
        """Attack the samples ``x`` with true labels ``y``.

        ``rng`` seeds every random draw (the same seed gives the same result); ``targets`` are
        the target classes when the threat model says ``targets='given'``; ``ids`` name the
        samples in the oracle's ledger (default ``0..n-1``), so that budgets carry across
        attacks on the same samples.
        """
        started = time.perf_counter()
        self.check_applicable(oracle)
        threat, system = oracle.threat, oracle.system
        x = _as_inputs(x, system.input_shape, system.bounds)
        n = len(x)
        y = _as_labels("y", y, n, system.num_classes, x.device)
        id_tensor = _as_ids(ids, n)
        if isinstance(rng, bool) or not isinstance(rng, int):
            raise InputError(f"rng must be an int seed; got {rng!r}.")
        noise = Noise(rng, id_tensor)
        goal_targets = self._targets(threat.goal, threat.targets, targets, y, noise, oracle)
        queries_before = oracle.queries_of(id_tensor)
        gradients_before = oracle.gradients_of(id_tensor)

        record = Record(x, y, goal_targets, threat.norm, threat.eps, threat.features)
        finished = torch.zeros(n, dtype=torch.bool)
        candidates = x.clone()
        error: str | None = None
        step = self.batch_size or max(n, 1)
        for start in range(0, n, step):
            rows = slice(start, start + step)
            part_ids = id_tensor[rows]
            try:
                candidate = self._run(
                    oracle.bind(part_ids, record.part(rows)),
                    x[rows],
                    y[rows],
                    None if goal_targets is None else goal_targets[rows],
                    noise.bind(part_ids),
                )
            except SystemFailure as failure:
                # keep what was found so far; samples not yet attacked stay as they are
                error = str(failure)
                break
            if not isinstance(candidate, Tensor) or candidate.shape != x[rows].shape:
                got = tuple(candidate.shape) if isinstance(candidate, Tensor) else candidate
                raise RuntimeError(
                    f"{self.name} returned {got!r} for inputs of shape {tuple(x[rows].shape)}"
                )
            candidates[rows] = candidate.detach().to(x)
            finished[rows] = True
        candidates = torch.where(torch.isfinite(candidates), candidates, x)
        if threat.features is not None:
            candidates = threat.features.apply(candidates, x)
        candidates = project(candidates, x, threat.norm, threat.eps, system.bounds)
        try:
            verdict = _judge_with_record(
                oracle, candidates, x, y, goal_targets, record, closest=self.keeps_closest()
            )
        except SystemFailure as failure:
            error = error or str(failure)
            verdict = _verdict_from_record(x, record)
            finished &= record.found  # unjudged samples: outcome unknown
        x_adv, success, predictions, confidence = verdict
        d = distances(x_adv, x)
        return AttackResult(
            attack=self.name,
            params=self.params(),
            threat=threat,
            ids=id_tensor,
            x_adv=x_adv,
            labels=y,
            targets=goal_targets,
            success=success,
            predictions=predictions,
            confidence=confidence,
            l0=d[Norm.L0],
            l2=d[Norm.L2],
            linf=d[Norm.LINF],
            queries=oracle.queries_of(id_tensor) - queries_before,
            gradients=oracle.gradients_of(id_tensor) - gradients_before,
            seconds=time.perf_counter() - started,
            interrupted=~finished,
            error=error,
        )

    def _run(
        self,
        oracle: OracleView,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        noise: Noise,
    ) -> Tensor:
        """Candidate adversarial inputs for a batch; ``targets`` is None when untargeted."""
        raise NotImplementedError

    # ------------------------------------------------------------------ checks
    def check_applicable(self, oracle: Oracle) -> None:
        """Raise before anything runs if this attack cannot run under the oracle's threat model."""
        if not isinstance(oracle, Oracle):
            raise InputError(
                f"{self.name} must be called with a mallory Oracle; got {type(oracle).__name__}. "
                "Build one with mallory.Oracle(system, threat_model)."
            )
        oracle.require(self.access, self.name)
        threat = oracle.threat
        if threat.norm not in self.norms:
            norms = ", ".join(sorted(n.value for n in self.norms))
            raise InputError(
                f"{self.name} works in {norms}; the threat model {threat.name!r} uses "
                f"{threat.norm.value}. Pick a threat model with norm={norms.split(', ')[0]!r}."
            )
        if threat.goal not in self.goals:
            raise InputError(
                f"{self.name} supports only the {'/'.join(g.value for g in self.goals)} goal; the "
                f"threat model {threat.name!r} is {threat.goal.value}."
            )
        if not self.minimizes and math.isinf(threat.eps):
            raise InputError(
                f"{self.name} needs a finite eps: it searches inside the ball of radius eps. "
                "Give the threat model an eps (e.g. white_box('linf', 0.3))."
            )

    def _targets(
        self,
        goal: Goal,
        source: Targets,
        given: Tensor | np.ndarray[Any, Any] | None,
        y: Tensor,
        noise: Noise,
        oracle: Oracle,
    ) -> Tensor | None:
        classes = oracle.system.num_classes
        if goal is Goal.UNTARGETED:
            if given is not None:
                raise InputError(
                    "targets were given, but the threat model is untargeted. Use a threat model "
                    "with goal='targeted', targets='given'."
                )
            return None
        if source is Targets.GIVEN:
            if given is None:
                raise InputError(
                    "The threat model says targets='given', but no targets= were passed. Pass one "
                    "target class per sample, or use targets='random'."
                )
            t = _as_labels("targets", given, len(y), classes, y.device)
            if bool((t == y).any()):
                raise InputError(
                    f"targets equal the true label for {int((t == y).sum())} samples; a target "
                    "must be a wrong class."
                )
            return t
        if given is not None:
            raise InputError("targets were given, but the threat model says targets='random'.")
        shift = 1 + noise.fold("targets").integers(classes - 1, device=y.device)
        return (y + shift) % classes

    # ------------------------------------------------------------------ description
    def params(self) -> dict[str, Any]:
        """The hyperparameters as plain values."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, Enum) else value
        return out

    @classmethod
    def attacker_family(cls) -> Family:
        """The attacker this attack assumes (campaigns order attacks by it)."""
        return cls.family if cls.family is not None else Family.of_access(cls.access)

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Name, paper, required access, norms, goals and every parameter with its help."""
        params = {}
        for f in dataclasses.fields(cls):
            rule: Rule | None = f.metadata.get("rule")
            default = f.default
            params[f.name] = {
                "default": default.value if isinstance(default, Enum) else default,
                "expected": rule.expected if rule else "",
                "help": f.metadata.get("help", ""),
            }
        return {
            "name": cls.name,
            "access": cls.access.name.lower(),
            "norms": sorted(n.value for n in cls.norms),
            "goals": sorted(g.value for g in cls.goals),
            "minimizes": cls.minimizes,
            "family": cls.attacker_family().name.lower(),
            "paper": cls.paper,
            "summary": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
            "params": params,
        }


def register(name: str) -> Callable[[A], A]:
    """Class decorator adding an attack to the registry under ``name`` (unique)."""

    def add(cls: A) -> A:
        if name in REGISTRY:
            raise ValueError(
                f"An attack named {name!r} is already registered ({REGISTRY[name].__name__})."
            )
        params = cls.__dict__.get("__dataclass_params__")
        if params is None or not params.frozen:
            raise TypeError(f"{cls.__name__} must be a frozen dataclass to be registered")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return add


def list_attacks() -> list[str]:
    """Registered attack names, sorted."""
    _load_builtin()
    return sorted(REGISTRY)


def attack_class(name: str) -> type[Attack]:
    """The class registered as ``name``."""
    _load_builtin()
    if name not in REGISTRY:
        raise InputError(f"No attack named {name!r}. Known attacks: {', '.join(sorted(REGISTRY))}.")
    return REGISTRY[name]


def create(name: str, **params: Any) -> Attack:
    """Build the attack registered as ``name`` with ``params`` (unknown names are an error)."""
    cls = attack_class(name)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise InputError(
            f"{cls.__name__} has no parameter {', '.join(map(repr, unknown))}. "
            f"Its parameters: {', '.join(sorted(known))}."
        )
    return cls(**params)


def _load_builtin() -> None:
    import mallory.attacks  # noqa: F401  (registers the built-in attacks)


Verdict = tuple[Tensor, Tensor, Tensor, Tensor]


def _success(predictions: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
    return predictions != y if targets is None else predictions == targets


def _judge_with_record(
    oracle: Oracle,
    candidates: Tensor,
    x: Tensor,
    y: Tensor,
    targets: Tensor | None,
    record: Record,
    *,
    closest: bool,
) -> Verdict:
    """The system's verdict on the candidates, improved by the record where it holds the only
    adversarial input the attacker saw, or (``closest``, see :meth:`Attack.keeps_closest`) a
    closer one.

    A bounded attack's own success is kept even when a closer one was seen: its output is
    what the attacker chose (deep inside the wrong class, say, which transfers better)."""
    if not len(x):
        empty = torch.zeros(0, dtype=torch.float64)
        return candidates, torch.zeros(0, dtype=torch.bool), y.clone(), empty
    # a clean input that already meets the goal is a success at distance 0
    clean_probs = oracle._judge(x)
    clean_ok = _success(clean_probs.argmax(1).to(y.device), y, targets)
    if bool(clean_ok.any()):
        candidates = torch.where(clean_ok.view(-1, *[1] * (x.dim() - 1)), x, candidates)
    probs = oracle._judge(candidates)
    confidence, predictions = probs.double().max(1)
    predictions = predictions.to(y.device)
    success = _success(predictions, y, targets)
    distance = norm_of(candidates - x, record.norm).double()
    swap = record.found & ~success
    if closest:
        swap |= record.found & (record.distance < distance)
    if bool(swap.any()):
        rows = swap.nonzero().squeeze(1)
        alt_probs = oracle._judge(record.best[rows])
        alt_conf, alt_pred = alt_probs.double().max(1)
        alt_pred = alt_pred.to(y.device)
        alt_ok = _success(alt_pred, y[rows], None if targets is None else targets[rows])
        take = alt_ok | ~success[rows]  # never trade a success for a failure
        rows, alt_pred, alt_conf, alt_ok = rows[take], alt_pred[take], alt_conf[take], alt_ok[take]
        candidates = candidates.clone()
        candidates[rows] = record.best[rows]
        predictions[rows], confidence[rows], success[rows] = alt_pred, alt_conf, alt_ok
    return candidates, success, predictions, confidence


def _verdict_from_record(x: Tensor, record: Record) -> Verdict:
    """When the system can no longer answer: what the attacker saw is all there is."""
    found = record.found
    x_adv = torch.where(found.view(-1, *[1] * (x.dim() - 1)), record.best, x)
    return x_adv, found.clone(), record.label.clone(), record.confidence.clone()


def _as_inputs(x: Any, shape: tuple[int, ...], bounds: Any) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise InputError(f"x must be a torch.Tensor or numpy array; got {type(x).__name__}.")
    if not x.is_floating_point():
        raise InputError(f"x must hold floats; got dtype {x.dtype}. Scale it into the bounds.")
    if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        raise InputError(
            f"x must have shape (n, {', '.join(map(str, shape))}) for this system; got "
            f"{tuple(x.shape)}."
        )
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x.flatten(1))).any(1).sum())
        raise InputError(f"x holds NaN or infinite values in {bad} samples.")
    outside = bounds.outside(x)
    if bool(outside.any()):
        raise InputError(
            f"{int(outside.sum())} samples of x lie outside the system's input bounds "
            f"{bounds.to_dict()}; scale the data into the bounds first."
        )
    return x.detach()


def _as_labels(what: str, y: Any, n: int, classes: int, device: torch.device) -> Tensor:
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(y)
    if not isinstance(y, Tensor):
        raise InputError(f"{what} must be a tensor of class indices; got {type(y).__name__}.")
    if y.shape != (n,):
        raise InputError(
            f"{what} must have shape ({n},), one class per sample; got {tuple(y.shape)}."
        )
    if y.is_floating_point() or y.dtype == torch.bool:
        raise InputError(f"{what} must hold integer class indices; got dtype {y.dtype}.")
    if n and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise InputError(
            f"{what} must hold classes 0..{classes - 1}; got values from {int(y.min())} to "
            f"{int(y.max())}."
        )
    return y.to(device=device, dtype=torch.int64)


def _as_ids(ids: Any, n: int) -> Tensor:
    if ids is None:
        return torch.arange(n)
    if isinstance(ids, np.ndarray):
        ids = torch.from_numpy(ids)
    if not isinstance(ids, Tensor) or ids.shape != (n,) or ids.is_floating_point():
        raise InputError(f"ids must be {n} integer sample ids, one per sample.")
    ids = ids.to(device="cpu", dtype=torch.int64)
    if n and (int(ids.min()) < 0 or len(torch.unique(ids)) != n):
        raise InputError("ids must be distinct non-negative integers.")
    return ids
