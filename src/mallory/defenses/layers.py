"""Layered systems: what stands between an attacker and a deployed model.

Deployed detectors are funnels, not models: an automation check and a rate limiter in front,
several models and rules that vote, a threshold that decides, a response policy that bans,
blocks or sends the case to a human (Apruzzese et al., SaTML 2023). The pieces here compose
with any System:

* admission policies, on the event log (see :mod:`mallory.access.policies`):
  :class:`Quota` (an account's queries in all), :class:`AutomationCheck` (requests that come
  faster than a person sends them), with the rate limit and the ban of that module;
* stages: :func:`ensemble` (models that vote), :func:`threshold` (a decision with a review
  band: the cases in the band go to a human, refused to the attacker);
* :func:`layered`: a system behind all of it, with the response to a flag (``"block"`` the
  request, ``"ban"`` the account for good) and the label a refusal shows.

The attacker sees a refusal only as its threat model's ``feedback`` allows.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mallory.access.events import EventLog, Reason
from mallory.access.exposure import as_probabilities
from mallory.access.policies import Admission, Ban, Policy, RateLimit, Request
from mallory.errors import InputError, bad_param
from mallory.params import Interval, ListOf, Options, OrNone, check_values
from mallory.systems.base import Output, Stage, System, Verdict

RESPONSES = ("block", "ban")


class Quota(Policy):
    """At most ``per_account`` queries processed for an account, in all (a free tier, an API
    plan): the rows past it are refused."""

    reason = Reason.RATE

    def __init__(self, per_account: int) -> None:
        check_values(
            "Quota", {"per_account": Interval(low=1, integral=True)}, {"per_account": per_account}
        )
        self.per_account = per_account

    def admit(self, request: Request, log: EventLog) -> Admission:
        used = sum(int(c.charged.sum()) for c in log.calls(0, request.account))
        left = max(self.per_account - used, 0)
        ok = torch.arange(len(request)) < left
        return Admission.refuse(ok, self.reason, system=True)

    def describe(self) -> dict[str, object]:
        return {"policy": "quota", "per_account": self.per_account}


class AutomationCheck(Policy):
    """Flags an account whose last ``run`` requests each came less than ``interval`` seconds
    after the one before: a script, not a person (a CAPTCHA's trigger). Flagged, its requests
    are refused (``Reason.DETECTOR``) until it slows down; a :class:`Ban` after it makes the
    flag final. The times are the log's: the oracle's clock (simulated for an in-process
    attack) or the server's."""

    reason = Reason.DETECTOR

    def __init__(self, interval: float = 0.2, run: int = 20) -> None:
        check_values(
            "AutomationCheck",
            {"interval": Interval(low=0.0, low_open=True), "run": Interval(low=2, integral=True)},
            {"interval": interval, "run": run},
        )
        self.interval = float(interval)
        self.run = run
        self._times: dict[str, list[float]] = {}

    def admit(self, request: Request, log: EventLog) -> Admission:
        times = self._times.setdefault(request.account, [])
        times.append(request.time)
        del times[: -self.run - 1]
        n = len(request)
        if len(times) > self.run:
            gaps = [b - a for a, b in itertools.pairwise(times)]
            if all(gap < self.interval for gap in gaps[-self.run :]):
                return Admission.refuse(torch.zeros(n, dtype=torch.bool), self.reason, system=True)
        return Admission.everything(n)

    def describe(self) -> dict[str, object]:
        return {"policy": "automation-check", "interval": self.interval, "run": self.run}


def ensemble(systems: Sequence[System], *, name: str = "ensemble") -> System:
    """Models that vote: the mean of their probabilities (a soft vote). The members take the
    same inputs and have the same classes; the ensemble is differentiable where they all are,
    and randomized where one is."""
    members = list(systems)
    if len(members) < 2 or not all(isinstance(m, System) for m in members):
        raise bad_param("ensemble", "systems", "at least two mallory Systems", systems)
    first = members[0]
    for other in members[1:]:
        if other.input_shape != first.input_shape or other.num_classes != first.num_classes:
            raise InputError(
                f"ensemble: {other.name!r} takes {other.input_shape} with {other.num_classes} "
                f"classes; {first.name!r} takes {first.input_shape} with {first.num_classes}. "
                "Members must share the task."
            )

    def vote(x: Tensor) -> Tensor:
        total = None
        for member in members:
            out = as_probabilities(member.forward_differentiable(x, adaptive=True), member.output)
            total = out if total is None else total + out.to(total)
        assert total is not None
        return total / len(members)

    def answer(x: Tensor) -> Tensor:
        total = None
        for member in members:
            out = as_probabilities(member.forward(x), member.output)
            total = out if total is None else total + out.to(total)
        assert total is not None
        return total / len(members)

    stage = Stage(
        name=name,
        fn=answer,
        differentiable=all(_differentiable(m) for m in members),
        deterministic=all(m.deterministic for m in members),
        surrogate=vote if all(_differentiable(m) for m in members) else None,
    )
    return System(
        [stage],
        input_shape=first.input_shape,
        bounds=first.bounds,
        num_classes=first.num_classes,
        output=Output.PROBABILITIES,
        class_names=first.class_names,
        name=name,
    )


def _differentiable(system: System) -> bool:
    try:
        system.gradient_path(adaptive=True)
    except Exception:
        return False
    return True


THRESHOLD_PARAMS = {
    "positive": Interval(low=0, integral=True),
    "at": Interval(low=0.0, high=1.0),
    "review": OrNone(ListOf(Interval(low=0.0, high=1.0), length=2, order="<=")),
}


def threshold(
    positive: int,
    at: float = 0.5,
    *,
    review: tuple[float, float] | None = None,
    name: str = "threshold",
) -> Stage:
    """The decision: class ``positive`` when its probability reaches ``at``, else the most
    likely other class; inputs whose probability of ``positive`` falls inside ``review``
    (``(low, high)``) go to a human: refused to the attacker (reason "sent to review"). Put it
    after a model that returns probabilities or logits (it takes a softmax of logits); the
    answer is the decision as one-hot scores, so the system shows a label."""
    check_values("threshold", THRESHOLD_PARAMS, {"positive": positive, "at": at, "review": review})
    band = None if review is None else (float(review[0]), float(review[1]))

    def decide(scores: Tensor) -> Verdict:
        probs = scores if _are_probabilities(scores) else scores.softmax(1)
        p = probs[:, positive]
        others = probs.clone()
        others[:, positive] = -1.0
        decision = torch.where(p >= at, positive, others.argmax(1))
        values = torch.nn.functional.one_hot(decision, probs.shape[1]).to(probs)
        refused = None if band is None else (p >= band[0]) & (p <= band[1])
        return Verdict(values, refused=refused, reason="sent to review")

    return Stage(name=name, fn=decide, differentiable=False, surrogate=None, defense=True)


def _are_probabilities(scores: Tensor) -> bool:
    return bool(((scores >= 0) & (scores <= 1)).all()) and bool(
        ((scores.sum(1) - 1).abs() < 1e-3).all()
    )


LAYER_PARAMS: dict[str, Any] = {
    "response": Options(RESPONSES),
    "strikes": Interval(low=1, integral=True),
}


def layered(
    system: System,
    *,
    policies: Sequence[Policy] = (),
    stages: Sequence[Stage] = (),
    response: str = "block",
    strikes: int = 1,
    refusal_label: int | None = None,
    name: str | None = None,
) -> System:
    """``system`` behind ``policies`` (checked in order) and followed by ``stages`` (a threshold,
    say). ``response`` is what a flag or a refusal by the system does: ``"block"`` the request
    only, or ``"ban"`` the account for good after ``strikes`` of them. ``refusal_label`` is the
    label a refusal shows an attacker whose threat model's feedback is ``"label"``."""
    check_values("layered", LAYER_PARAMS, {"response": response, "strikes": strikes})
    out: System = system
    if stages:
        # the decision stages come after the model: the system then shows a label
        out = System(
            [*system.stages, *stages],
            input_shape=system.input_shape,
            bounds=system.bounds,
            num_classes=system.num_classes,
            output=Output.PROBABILITIES,
            class_names=system.class_names,
            name=name or f"{system.name} (layered)",
            exposes="label",
            policies=system.policies,
        )
    front = list(policies)
    if response == "ban":
        front.insert(0, Ban(after=strikes))
    layered_system = out.with_policies(*front, refusal_label=refusal_label)
    if name is not None:
        layered_system.name = name
    return layered_system


__all__ = [
    "RESPONSES",
    "AutomationCheck",
    "Quota",
    "RateLimit",
    "ensemble",
    "layered",
    "threshold",
]
