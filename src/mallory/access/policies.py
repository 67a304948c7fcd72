"""Admission policies: one interface for budgets, rate limits, bans and detectors.

A :class:`Policy` looks at a :class:`Request` (the rows of one call, whose samples, when, from
which account) and at the :class:`~mallory.access.events.EventLog`, and says which rows it
admits, why it refuses the others, and how long the request would have to wait to be served.
Policies are chained (:class:`Chain`): each sees only the rows the ones before it admitted.

Who owns a policy matters for what the attacker learns from a refusal. The attacker's own
limits (:class:`QueryBudget`, a campaign's :class:`Allowance`) are known to it: their refusals
always come back as "blocked". The system's policies (:class:`RateLimit`, :class:`Ban`, a
detector) are the defender's, and reach the attacker only as the threat model's feedback
allows (the label, "blocked", a delay, nothing: see :class:`~mallory.threat.Feedback`).

The same classes serve ``mallory serve`` (a real clock, one account per client) and the HTTP
client's own rate limit (:class:`TokenBucket`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from mallory.access.events import EventLog, Kind, Reason
from mallory.params import Constraint, Interval, Options, OrNone, check_values


@dataclass(frozen=True)
class Request:
    """The rows of one call: the sample of each row (``-1``: none), the account that sent
    it, when (the clock's time), what it asks for, and the inputs (detectors look at them)."""

    ids: Tensor
    account: str = "attacker"
    time: float = 0.0
    kind: Kind = Kind.QUERY
    x: Tensor | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def part(self, rows: Tensor) -> Request:
        return Request(
            self.ids[rows],
            self.account,
            self.time,
            self.kind,
            None if self.x is None else self.x[rows.to(self.x.device)],
        )


@dataclass(frozen=True)
class Admission:
    """Per row: admitted or not, and the :class:`~mallory.access.events.Reason` of a refusal;
    ``wait``: seconds after which the refused rows would be admitted (0 when waiting would not
    help, or nothing was refused); ``owner``: ``"attacker"`` or ``"system"`` per refused row's
    policy (the attacker's own limits are always seen as blocked)."""

    admitted: Tensor
    reason: Tensor
    wait: float = 0.0
    by_system: Tensor | None = None

    @staticmethod
    def everything(n: int) -> Admission:
        return Admission(torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.int8))

    @staticmethod
    def refuse(admitted: Tensor, reason: Reason, wait: float = 0.0, *, system: bool) -> Admission:
        codes = torch.where(admitted, 0, int(reason)).to(torch.int8)
        owner = (~admitted) if system else torch.zeros_like(admitted)
        return Admission(admitted, codes, wait, owner)

    @property
    def all(self) -> bool:
        return bool(self.admitted.all())

    def system_mask(self) -> Tensor:
        if self.by_system is None:
            return torch.zeros_like(self.admitted)
        return self.by_system


class Policy:
    """One admission rule. ``owner`` says whose rule it is (``"attacker"``: a refusal is the
    attacker's own decision, always seen as blocked; ``"system"``: the defender's)."""

    owner: ClassVar[str] = "system"
    reason: ClassVar[Reason] = Reason.NONE

    def admit(self, request: Request, log: EventLog) -> Admission:
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        return {"policy": type(self).__name__}


class Chain:
    """Policies applied in order, each to the rows the earlier ones admitted."""

    def __init__(self, policies: Sequence[Policy] = ()) -> None:
        self.policies: list[Policy] = list(policies)

    def __len__(self) -> int:
        return len(self.policies)

    def admit(self, request: Request, log: EventLog) -> Admission:
        n = len(request)
        admitted = torch.ones(n, dtype=torch.bool)
        reason = torch.zeros(n, dtype=torch.int8)
        by_system = torch.zeros(n, dtype=torch.bool)
        wait = 0.0
        for policy in self.policies:
            rows = admitted.nonzero().squeeze(1)
            if not len(rows):
                break
            part = request if len(rows) == n else request.part(rows)
            answer = policy.admit(part, log)
            if answer.all:
                continue
            refused = rows[~answer.admitted]
            admitted[refused] = False
            reason[refused] = answer.reason[~answer.admitted]
            if policy.owner == "system":
                by_system[refused] = True
            wait = max(wait, answer.wait)
        return Admission(admitted, reason, wait, by_system)


def _rank_within_sample(ids: Tensor) -> Tensor:
    """For each row, how many earlier rows of the call belong to the same sample."""
    order = torch.argsort(ids, stable=True)
    sorted_ids = ids[order]
    first = torch.searchsorted(sorted_ids, sorted_ids)
    rank = torch.empty_like(ids)
    rank[order] = torch.arange(len(ids)) - first
    return rank


_BUDGET = OrNone(Interval(low=0, integral=True), "for unlimited")
POLICY_PARAMS: dict[str, Constraint] = {
    "per_sample": _BUDGET,  # QueryBudget
    "total": _BUDGET,
    "rate": Interval(low=0.0, low_open=True, note="per second"),  # RateLimit, TokenBucket
    "burst": Interval(low=1.0),
    "per": Options(("requests", "rows")),
    "after": Interval(low=1, integral=True),  # Ban
}
"""The constraints of the policies' parameters, by name."""


class QueryBudget(Policy):
    """The threat model's query budget: at most ``per_sample`` charged queries per sample id and
    ``total`` over the log (None: unlimited). Rows of one call take the next queries of their
    sample in order; rows tied to no sample count against the total only."""

    owner = "attacker"
    reason = Reason.BUDGET

    def __init__(self, per_sample: int | None = None, total: int | None = None) -> None:
        check_values("QueryBudget", POLICY_PARAMS, {"per_sample": per_sample, "total": total})
        self.per_sample = per_sample
        self.total = total

    def admit(self, request: Request, log: EventLog) -> Admission:
        ids = request.ids
        ok = torch.ones(len(ids), dtype=torch.bool)
        if self.per_sample is not None:
            owned = ids >= 0
            spent = log.queries_of(ids)
            ok &= ~owned | (spent + _rank_within_sample(ids) < self.per_sample)
        if self.total is not None:
            ok &= torch.cumsum(ok.long(), 0) <= self.total - log.queries
        return Admission.refuse(ok, self.reason, system=False)

    def describe(self) -> dict[str, object]:
        return {"policy": "budget", "per_sample": self.per_sample, "total": self.total}


class Allowance(Policy):
    """A campaign's share of the budget for the attack now running: each sample may be charged
    until its total reaches its cap (set by :meth:`grant`); samples without a cap are not
    limited."""

    owner = "attacker"
    reason = Reason.SHARE

    def __init__(self) -> None:
        self._cap = torch.zeros(0, dtype=torch.int64)  # -1: no cap
        self.active = False

    def grant(self, ids: Tensor, caps: Tensor) -> None:
        """Let each sample in ``ids`` be charged until its total reaches ``caps`` (replaces
        any earlier grant)."""
        ids = ids.to(device="cpu", dtype=torch.int64)
        size = int(ids.max()) + 1 if len(ids) else 0
        self._cap = torch.full((size,), -1, dtype=torch.int64)
        self._cap[ids] = caps.to(device="cpu", dtype=torch.int64)
        self.active = bool(len(ids))

    def clear(self) -> None:
        self._cap = torch.zeros(0, dtype=torch.int64)
        self.active = False

    def caps(self, ids: Tensor) -> Tensor:
        """The cap of each sample id (``-1``: none)."""
        ids = ids.to(device="cpu", dtype=torch.int64)
        out = torch.full((len(ids),), -1, dtype=torch.int64)
        inside = (ids >= 0) & (ids < len(self._cap))
        out[inside] = self._cap[ids[inside]]
        return out

    def admit(self, request: Request, log: EventLog) -> Admission:
        if not self.active:
            return Admission.everything(len(request))
        ids = request.ids
        cap = self.caps(ids)
        ok = (cap < 0) | (log.queries_of(ids) + _rank_within_sample(ids) < cap)
        return Admission.refuse(ok, self.reason, system=False)


@dataclass
class TokenBucket:
    """A token bucket: ``rate`` tokens per second, holding at most ``burst``; spending ``n``
    tokens waits until they are there. One bucket per key (an account, a client address)."""

    rate: float
    burst: float = 1.0
    _level: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_values("a rate limit", POLICY_PARAMS, {"rate": self.rate, "burst": self.burst})

    def _fill(self, key: str, now: float) -> float:
        level, then = self._level.get(key, (float(self.burst), now))
        return min(float(self.burst), level + max(0.0, now - then) * self.rate)

    def wait_for(self, key: str, tokens: float, now: float) -> float:
        """Seconds until ``tokens`` are available (0: now), without spending them."""
        missing = min(tokens, float(self.burst)) - self._fill(key, now)
        return max(0.0, missing / self.rate)

    def take(self, key: str, tokens: float, now: float) -> bool:
        """Spend ``tokens`` now if they are there."""
        level = self._fill(key, now)
        if level + 1e-9 < min(tokens, float(self.burst)):
            self._level[key] = (level, now)
            return False
        self._level[key] = (level - tokens, now)
        return True

    def reserve(self, key: str, tokens: float, now: float) -> float:
        """Spend ``tokens``, going into debt if need be; returns the seconds to wait before
        using them (the client side of a rate limit: wait, then send)."""
        level = self._fill(key, now)
        self._level[key] = (level - tokens, now)
        return max(0.0, -(level - tokens) / self.rate)


class RateLimit(Policy):
    """At most ``rate`` requests (or rows, ``per="rows"``) per second per account, with bursts
    of ``burst``; a request over the limit is refused whole, and says how long to wait."""

    reason = Reason.RATE

    def __init__(self, rate: float, *, burst: float = 1.0, per: str = "requests") -> None:
        check_values("RateLimit", POLICY_PARAMS, {"rate": rate, "burst": burst, "per": per})
        self.bucket = TokenBucket(rate, burst)
        self.per = per

    def admit(self, request: Request, log: EventLog) -> Admission:
        n = len(request)
        tokens = float(n) if self.per == "rows" else 1.0
        if self.bucket.take(request.account, tokens, request.time):
            return Admission.everything(n)
        wait = self.bucket.wait_for(request.account, tokens, request.time)
        return Admission.refuse(torch.zeros(n, dtype=torch.bool), self.reason, wait, system=True)

    def describe(self) -> dict[str, object]:
        return {
            "policy": "rate-limit",
            "rate": self.bucket.rate,
            "burst": self.bucket.burst,
            "per": self.per,
        }


class Ban(Policy):
    """Ban an account for good once it has been refused ``after`` rows by the system's other
    policies or blocked by its stages (a rate limit it kept hitting, a detector that flagged
    it): every later row is refused."""

    reason = Reason.BAN

    def __init__(self, after: int = 1) -> None:
        check_values("Ban", POLICY_PARAMS, {"after": after})
        self.after = after
        self.banned: set[str] = set()
        self._seen: dict[str, int] = {}  # log position read so far, per account
        self._strikes: dict[str, int] = {}

    def admit(self, request: Request, log: EventLog) -> Admission:
        account = request.account
        if account not in self.banned:
            start = self._seen.get(account, 0)
            strikes = self._strikes.get(account, 0)
            for call in log.calls(start, account):
                hit = (call.reason == int(Reason.RATE)) | (call.reason == int(Reason.DETECTOR))
                hit |= call.reason == int(Reason.SYSTEM)
                strikes += int(hit.sum())
            self._seen[account] = log.mark()
            self._strikes[account] = strikes
            if strikes >= self.after:
                self.banned.add(account)
        n = len(request)
        if account in self.banned:
            return Admission.refuse(torch.zeros(n, dtype=torch.bool), self.reason, system=True)
        return Admission.everything(n)

    def describe(self) -> dict[str, object]:
        return {"policy": "ban", "after": self.after}
