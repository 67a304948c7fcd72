"""The public conformance kit: check any attack, system or stage the way mallory checks its own.

Like scikit-learn's ``check_estimator``: a plug-in attack, a system adapter or a defense stage
passes the same checks as the built-in ones, and mallory's own conformance suite
(``tests/test_conformance.py``) is nothing but these checks, parametrized over the registry::

    from mallory.testing import check_attack, check_stage, check_system

    check_attack(MyAttack)          # builds its own bench: an 8x8 digits MLP (about a second)
    check_system(my_system, x)      # x: a few inputs of the system's task
    check_stage(my_stage, x)

Each function runs every check that applies and raises one :class:`ConformanceError` (an
``AssertionError``) that lists every failed check with every problem it found, in plain words;
it returns None when all pass. :func:`attack_checks`, :func:`system_checks` and
:func:`stage_checks` give the same checks one by one (named, documented callables), for a
test suite that reports each on its own line; the checks of one attack share its runs, so
running them all costs what :func:`check_attack` costs.

What :func:`check_attack` checks depends on the attack's kind:

* every kind: documented (paper, docstring naming its first author, help and a validation
  rule for every parameter, ``describe()`` JSON), a frozen keyword-only dataclass whose
  ``params()`` round-trip through its constructor and :func:`mallory.create`, defaults and
  fast parameters that build, and bad parameter values refused with an ``InputError`` that
  names the parameter;
* evasion: results inside the perturbation set and the bounds, inputs untouched, the same
  seed gives the same result, success is the system's own verdict, per-sample and total query
  budgets never exceeded, reported counts equal the oracle's event
  log, no more queries than ``planned_queries()`` announced, batch size does not change the
  outcome, result fields typed with one row per sample, refused before any query when it needs
  more access than granted (or gradients from a system that has none), refused outside its
  norms, goals and eps, and feature constraints respected;
* extraction and inference: inputs untouched, same seed same result, typed results, the query
  budget respected, counts equal to the event log, refused without the access it needs;
* poisoning: inputs untouched, same seed same result, a typed result whose ``changed`` lists
  every row it changed.

The attack runs under a threat model its class accepts (the preset for its ``access``, its
first norm, untargeted when it can be), with the parameters ``test_params(system, x, y)``
gives when ``quick`` (the default), on the bench given or the kit's own
(:func:`digits_bench`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mallory.attacks.base import Attack, Kind, attack_class
from mallory.attacks.evasion.base import EvasionAttack
from mallory.errors import InputError
from mallory.systems.base import Stage, System
from mallory.testing import evasion, kinds
from mallory.testing.bench import Bench, digits_bench
from mallory.testing.checks import Check, ConformanceError, Failure, run_checks
from mallory.testing.classes import class_checks, label
from mallory.testing.stages import stage_checks
from mallory.testing.systems import system_checks

__all__ = [
    "Bench",
    "Check",
    "ConformanceError",
    "Failure",
    "attack_checks",
    "check_attack",
    "check_stage",
    "check_system",
    "digits_bench",
    "stage_checks",
    "system_checks",
]


def _resolve(attack: Attack | type[Attack] | str) -> tuple[type[Attack], Attack | None]:
    if isinstance(attack, str):
        return attack_class(attack), None
    if isinstance(attack, type) and issubclass(attack, Attack):
        return attack, None
    if isinstance(attack, Attack):
        return type(attack), attack
    raise InputError(
        "check_attack needs an attack: a registered name, an Attack subclass or an instance of "
        f"one; got {type(attack).__name__}."
    )


def _bench(system: System | None, x: Tensor | None, y: Tensor | None) -> tuple[Bench | None, bool]:
    """The caller's bench (None: the kit's own, built when first needed)."""
    if system is None:
        if x is not None or y is not None:
            raise InputError("check_attack: x and y come with a system; pass system= too.")
        return None, False
    if not isinstance(system, System):
        raise InputError(f"check_attack needs a mallory System; got {type(system).__name__}.")
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise InputError(
            "check_attack: with a system, pass x (a few inputs of its task, inside its bounds) "
            "and y (their labels) as tensors."
        )
    if len(x) < 8 or len(y) != len(x):
        raise InputError(
            f"check_attack needs at least 8 samples and one label each; got {len(x)} inputs "
            f"and {len(y)} labels."
        )
    return Bench(system, x.detach().clone(), y.detach().to(torch.int64).clone()), True


def attack_checks(
    attack_or_class: Attack | type[Attack] | str,
    *,
    system: System | None = None,
    x: Tensor | None = None,
    y: Tensor | None = None,
    quick: bool = True,
) -> list[Check]:
    """The checks :func:`check_attack` runs, as named callables (nothing runs until one is
    called; they share the attack's runs). See :func:`check_attack` for the arguments."""
    cls, given = _resolve(attack_or_class)
    own, _ = _bench(system, x, y)

    def bench() -> Bench:
        return own if own is not None else digits_bench()

    checks = class_checks(cls, given)
    if issubclass(cls, EvasionAttack):
        evasive = given if isinstance(given, EvasionAttack) else None
        checks += evasion.checks_for(cls, evasive, bench, quick)
    elif cls.kind in (Kind.EXTRACTION, Kind.POISONING, Kind.INFERENCE):
        checks += kinds.checks_for(cls, given, bench, quick)
    return checks


def check_attack(
    attack_or_class: Attack | type[Attack] | str,
    *,
    system: System | None = None,
    x: Tensor | None = None,
    y: Tensor | None = None,
    quick: bool = True,
) -> None:
    """Check an attack against mallory's conformance rules; raise :class:`ConformanceError`
    listing every failed check, or return None.

    ``attack_or_class``: a registered name, an :class:`~mallory.Attack` subclass, or an
    instance (checked with its own parameters). ``system``, ``x`` and ``y``: the bench to run
    it on (a System, at least 8 inputs inside its bounds and their labels); by default the
    kit's own, :func:`digits_bench`. ``quick``: build a class with its
    ``test_params(system, x, y)`` (its ``fast`` parameters, and anything it needs built, such
    as a surrogate); ``quick=False`` runs it with its defaults. An evasion check costs a few
    runs of the attack (eight or so); the class checks run no attack.
    """
    cls, _ = _resolve(attack_or_class)
    checks = attack_checks(attack_or_class, system=system, x=x, y=y, quick=quick)
    run_checks(label(cls), checks)


def check_system(
    system: System, x: Tensor, *, y: Tensor | None = None, sum_tolerance: float = 1e-4
) -> None:
    """Check a System on the inputs ``x`` (at least 2, inside its bounds; ``y``: their labels,
    optional, for the gradient query's loss); raise :class:`ConformanceError` listing every
    failed check, or return None.

    Checks: ``answer()`` returns a Verdict of ``(n, num_classes)`` outputs (and ``forward()``
    its values); outputs finite on decided rows; declared probabilities in [0, 1] summing to 1
    (within ``sum_tolerance``: raise it for a system that rounds its scores); inputs untouched;
    deterministic as declared (a system declared deterministic answers twice the same) and
    independent of the batch size; ``gradient_path`` and ``forward_differentiable`` as the
    stages declare (each stage differentiable as it says, on the inputs it really gets);
    answers no richer than the declared exposure; and labels, scores, logits and gradients
    through :class:`mallory.Oracle` under every threat model the exposure allows.
    """
    checks = system_checks(system, x, y=y, sum_tolerance=sum_tolerance)
    run_checks(f"system {system.name!r}", checks)


def check_stage(
    stage: object,
    x: Tensor,
    *,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    keeps_shape: bool = True,
) -> None:
    """Check a single :class:`~mallory.Stage` on the inputs ``x`` (at least 2); raise
    :class:`ConformanceError` listing every failed check, or return None.

    Checks: declared flags are bools; one output row per input, of the input's shape unless
    ``keeps_shape=False`` (a model or feature extractor); outputs finite and inside ``bounds``
    (``None``: no bounds to keep); the input untouched; deterministic as declared (twice the
    same, and whatever the batch size); differentiable as declared (a gradient that is finite
    and not zero everywhere, or a surrogate that passes one); and for an output stage that
    declares an exposure, answers no richer than it.
    """
    if not isinstance(stage, Stage):
        raise InputError(f"check_stage needs a mallory Stage; got {type(stage).__name__}.")
    checks = stage_checks(stage, x, bounds=bounds, keeps_shape=keeps_shape)
    run_checks(f"stage {stage.name!r}", checks)
