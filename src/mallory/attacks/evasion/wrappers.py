"""Adaptive-attack wrappers: any gradient attack, run against a defense the way an adaptive
attacker would (Athalye, Carlini and Wagner 2018; Tramer, Carlini, Brendel and Madry 2020).

* ``eot``: Expectation over Transformation: each gradient is the mean of ``draws`` gradients,
  for systems that answer the same input differently (random resizing, noise, dropout).
* ``bpda``: Backward Pass Differentiable Approximation: the named stages or parts (a
  quantizer inside a network, say) pass gradients straight through.
* ``logits``: the gradient of the logits under the system's final softmax, for systems that
  end in a saturated softmax (defensive distillation as it was deployed).

Each wraps an inner gradient attack, which runs unchanged on a view derived through the view's
public methods (:meth:`~mallory.access.view.OracleView.with_gradient`,
:meth:`~mallory.access.view.OracleView.with_options`); every query is counted by the oracle.
They nest in any order: ``{name = "eot", attack = {name = "logits", attack = "apgd"}}``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from mallory.access.oracle import Access, Gradient, LossFn, Oracle
from mallory.access.view import OracleView
from mallory.attacks.base import create, register
from mallory.attacks.evasion.base import EvasionAttack
from mallory.attacks.noise import Noise
from mallory.attacks.params import Rule, integer
from mallory.errors import InputError

_MODULE_PATH = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")

_MODULE_PATH = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")

ATHALYE = (
    "Athalye, Carlini and Wagner, Obfuscated Gradients Give a False Sense of Security: "
    "Circumventing Defenses to Adversarial Examples, ICML 2018"
)


def as_inner_attack(value: Any) -> Any:
    """An attack from an attack, a registered name, ``{"name": ..., **params}`` or
    ``{"name": ..., "params": {...}}``; an unknown name is refused with the known ones."""
    if isinstance(value, EvasionAttack):
        return value
    if isinstance(value, str):
        return create(value)
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        params = value.get("params") if set(value) <= {"name", "params"} else None
        if params is None:
            params = {k: v for k, v in value.items() if k != "name"}
        return create(value["name"], **params)
    return value


def inner_gradient_attack(default: str, *, help: str) -> Any:
    """The field of a wrapper's inner attack: a gradient attack."""
    rule = Rule(
        "a gradient attack: an Attack instance, a registered name, or {'name': ..., **params}",
        lambda v: isinstance(v, EvasionAttack) and v.access is Access.GRADIENTS,
        as_inner_attack,
    )
    return dataclasses.field(default=default, metadata={"rule": rule, "help": help})


class Wrapping(EvasionAttack):
    """An attack that runs another one, ``self.attack``, on a view of its own: an instance
    takes its inner attack's norms, goals and minimization (and the names in ``shadows``)."""

    attack: EvasionAttack
    shadows: ClassVar[tuple[str, ...]] = ("norms", "goals", "minimizes")

    def _check(self) -> None:
        # the inner attack's traits shadow the class's on this instance
        for name in self.shadows:
            object.__setattr__(self, name, getattr(self.attack, name))

    def keeps_closest(self) -> bool:
        return self.attack.keeps_closest()

    def planned_queries(self, oracle: Oracle | OracleView) -> int | None:
        return self.attack.planned_queries(oracle)

    def params(self) -> dict[str, Any]:
        """The hyperparameters; the inner attack as ``{"name": ..., **params}``."""
        out = super().params()
        out["attack"] = {"name": self.attack.name, **self.attack.params()}
        return out


@dataclass(frozen=True, kw_only=True)
class GradientWrapper(Wrapping):
    """A gradient attack run on a view whose gradients this wrapper changes. Its norms, goals
    and minimization are the inner attack's; :meth:`_derive` makes the view."""

    access = Access.GRADIENTS
    fast: ClassVar[dict[str, Any]] = {"attack": {"name": "pgd", "steps": 10}}

    attack: EvasionAttack = inner_gradient_attack("pgd", help="the gradient attack it runs")

    def _run(
        self, oracle: OracleView, x: Tensor, y: Tensor, targets: Tensor | None, noise: Noise
    ) -> Tensor:
        return self.attack._run(self._derive(oracle), x, y, targets, noise)

    def _derive(self, view: OracleView) -> OracleView:
        raise NotImplementedError


@register("eot")
@dataclass(frozen=True, kw_only=True)
class EOT(GradientWrapper):
    """Expectation over Transformation: each gradient the mean of ``draws`` gradients.

    Athalye, Engstrom, Ilyas and Kwok, "Synthesizing Robust Adversarial Examples", ICML 2018;
    applied to randomized defenses by Athalye, Carlini and Wagner, ICML 2018.

    Threat model: white-box (gradients) of a randomized system; the inner attack's norms and
    goals. Every gradient query of the inner attack becomes ``draws`` gradient queries of the
    same rows (each one query and one gradient evaluation, counted), whose gradients, losses
    and logits are averaged: the inner attack ascends the expected loss over the system's
    randomness instead of one draw of it.

    Cost: ``draws`` times the inner attack's queries and gradient evaluations.

    Args:
        attack: the gradient attack (default ``"pgd"``): an Attack, a registered name, or
            ``{"name": ..., **params}``.
        draws: gradients averaged per step (default 10).

    Example::

        attack = create("eot", attack=create("pgd", steps=40), draws=10)
        result = attack(Oracle(randomized, white_box("linf", 0.3)), x, y)
    """

    paper = "Athalye et al., Synthesizing Robust Adversarial Examples, ICML 2018; " + ATHALYE
    fast: ClassVar[dict[str, Any]] = {"attack": {"name": "pgd", "steps": 10}, "draws": 3}

    draws: int = integer(10, low=1, help="gradients averaged per step")

    def planned_queries(self, oracle: Oracle | OracleView) -> int | None:
        inner = self.attack.planned_queries(oracle)
        return None if inner is None else inner * self.draws

    def _derive(self, view: OracleView) -> OracleView:
        draws = self.draws

        def expected(base: OracleView, x: Tensor, loss: LossFn, rows: Tensor | None) -> Gradient:
            total_grad = torch.zeros_like(x)
            total_loss = torch.zeros(len(x), dtype=x.dtype, device=x.device)
            total_logits: Tensor | None = None
            for _ in range(draws):
                answer = base.gradient(x, loss, rows)
                total_grad += answer.grad
                total_loss += answer.loss
                logits = answer.logits
                total_logits = logits.clone() if total_logits is None else total_logits + logits
            assert total_logits is not None
            return Gradient(
                logits=total_logits / draws, loss=total_loss / draws, grad=total_grad / draws
            )

        return view.with_gradient(expected)


@register("bpda")
@dataclass(frozen=True, kw_only=True)
class BPDA(GradientWrapper):
    """Backward Pass Differentiable Approximation: named stages or parts pass gradients
    straight through (forward exact, backward the identity).

    Athalye, Carlini and Wagner, "Obfuscated Gradients Give a False Sense of Security:
    Circumventing Defenses to Adversarial Examples", ICML 2018.

    Threat model: white-box (gradients), with perfect knowledge of the stages named; the inner
    attack's norms and goals. A stage declared non-differentiable already passes gradients
    through its surrogate (the identity by default) for an attacker who knows it; this wrapper
    is for parts whose gradient autograd computes and is useless: a quantizer, rounding, or a
    layer that zeroes the gradient, inside a stage or a network (by its name among the system's
    parts, ``view.parts``). Each named part must keep the shape of its input.

    Cost: the inner attack's.

    Args:
        attack: the gradient attack (default ``"pgd"``).
        parts: the names of the stages or parts passed straight through (default ``()``: none
            beyond the declared non-differentiable stages).

    Example::

        attack = create("bpda", attack=create("pgd", steps=40), parts=["quantize"])
        result = attack(Oracle(defended, white_box("linf", 0.3)), x, y)
    """

    paper = ATHALYE

    parts: tuple[str, ...] = dataclasses.field(
        default=(),
        metadata={
            "rule": Rule(
                "a list of stage or part names (strings)",
                lambda v: isinstance(v, tuple) and all(isinstance(p, str) and p for p in v),
                lambda v: tuple(v) if isinstance(v, list | tuple) else v,
            ),
            "help": "the stages or parts passed straight through",
        },
    )

    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.parts))

    def check_applicable(self, oracle: Oracle) -> None:
        super().check_applicable(oracle)
        unknown = [name for name in self.names() if name not in oracle.parts]
        if unknown:
            raise InputError(
                f"{self.name}: the system {oracle.name!r} has no stage or part named "
                f"{', '.join(map(repr, unknown))}; it has: {', '.join(oracle.parts)}."
            )

    def _derive(self, view: OracleView) -> OracleView:
        return view.with_options(straight_through=self.names())


@register("logits")
@dataclass(frozen=True, kw_only=True)
class OnLogits(GradientWrapper):
    """Attack the logits under the system's final softmax, not its saturated probabilities.

    Carlini and Wagner, "Defensive Distillation is Not Robust to Adversarial Examples", 2016
    (arXiv:1607.04311): a network distilled at a high temperature and deployed with a softmax
    saturates it, so gradients of its probabilities vanish; its logits do not.

    Threat model: white-box (gradients) of a system whose final softmax is one of its parts
    (``view.softmax_part``), or the part named by ``before``; the inner attack's norms and goals.
    On a system that returns logits already, it changes nothing.
    Pair it with a loss that does not saturate either: ``{"name": "pgd", "loss": "margin"}`` or
    APGD's DLR (scale-invariant).

    Cost: the inner attack's.

    Args:
        attack: the gradient attack (default ``"pgd"``).
        before: the part whose input serves as the logits (default ``"softmax"``: the system's
            final softmax layer).

    Example::

        attack = create("logits", attack=create("pgd", loss="margin"))
        result = attack(Oracle(distilled, white_box("linf", 0.3)), x, y)
    """

    paper = "Carlini and Wagner, Defensive Distillation is Not Robust to Adversarial Examples, 2016"
    fast: ClassVar[dict[str, Any]] = {"attack": {"name": "pgd", "steps": 10, "loss": "margin"}}

    before: str = dataclasses.field(
        default="softmax",
        metadata={
            "rule": Rule(
                "'softmax', or the name of a part (a module path such as '3' or 'head.fc')",
                lambda v: isinstance(v, str) and _MODULE_PATH.fullmatch(v) is not None,
            ),
            "help": "the part whose input serves as the logits ('softmax': the final softmax)",
        },
    )

    def check_applicable(self, oracle: Oracle) -> None:
        super().check_applicable(oracle)
        if self.before == "softmax":
            if oracle.softmax_part is None and oracle.output != "logits":
                raise InputError(
                    f"{self.name}: the system {oracle.name!r} has no softmax layer among its "
                    "parts (a softmax called as a function cannot be found). Give mallory the "
                    "network before its softmax (output='logits') instead."
                )
        elif self.before not in oracle.parts:
            raise InputError(
                f"{self.name}: the system {oracle.name!r} has no part named {self.before!r}; it "
                f"has: {', '.join(oracle.parts)}."
            )

    def _derive(self, view: OracleView) -> OracleView:
        if self.before == "softmax" and view.softmax_part is None:
            return view  # the system answers with logits already
        return view.with_options(logits_before=self.before)
