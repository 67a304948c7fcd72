"""The event log: the ordered record of everything an attacker sent and got.

Each entry is one :class:`Call`: the rows sent together, when, by which account, of which kind
(a query, or a gradient query that also returns the logits), the sample each row belongs to
(``-1`` for a row tied to no sample, an extraction query say), what became of each row (its
:class:`Outcome`), why a refused row was refused (its :class:`Reason`), the seconds the system
spent, and the price of an answered row. Per-sample totals, budgets, cost curves and stream
detectors all read the log; the totals are kept up to date as calls are appended (they are
derived from the log and never set any other way), so a budget check costs no more than an
index.

A row is *charged* (counted as a query, priced) when the system processed it: it answered,
abstained, or one of its stages blocked it. A row refused before it reached the system (the
attacker's own budget, a rate limit, a ban) and a row whose call failed are recorded, and cost
nothing but the time they took.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Protocol

import torch
from torch import Tensor


class Kind(StrEnum):
    """What a call asked for."""

    QUERY = "query"  # the system's answer (logits, scores or a label, as exposed)
    GRADIENT = "gradient"  # the answer and the gradient of a loss with respect to the input


class Outcome(IntEnum):
    """What became of one row of a call."""

    ANSWERED = 0  # the system answered
    ABSTAINED = 1  # the system processed it and declined to decide (a certified model)
    BLOCKED = 2  # the system processed it and one of its stages refused (a detector)
    REFUSED = 3  # refused before the system saw it (budget, rate limit, ban)
    FAILED = 4  # the call failed (the system raised, timed out, answered garbage)

    @property
    def charged(self) -> bool:
        """Whether the system processed the row (it counts as a query and is priced)."""
        return self in (Outcome.ANSWERED, Outcome.ABSTAINED, Outcome.BLOCKED)


class Reason(IntEnum):
    """Why a row was refused or blocked (``NONE`` for the others)."""

    NONE = 0
    BUDGET = 1  # the threat model's query budget is spent (the attacker's own limit)
    SHARE = 2  # this attack's share of the budget is spent (the campaign's allotment)
    RATE = 3  # a rate limit
    BAN = 4  # the account is banned
    DETECTOR = 5  # a query-stream detector flagged the account
    SYSTEM = 6  # a stage of the system refused the input

    @property
    def text(self) -> str:
        return _REASON_TEXT[self]

    @staticmethod
    def of_text(text: str) -> Reason:
        """The reason a stage's refusal names (a remote system's "banned", say: the texts of
        a ban, a detector and a rate limit); ``SYSTEM`` for any other."""
        for reason in (Reason.BAN, Reason.DETECTOR, Reason.RATE):
            if reason.text in text:
                return reason
        return Reason.SYSTEM


_REASON_TEXT = {
    Reason.NONE: "",
    Reason.BUDGET: "query budget spent",
    Reason.SHARE: "the attack's share of the budget spent",
    Reason.RATE: "rate limited",
    Reason.BAN: "banned",
    Reason.DETECTOR: "flagged by a detector",
    Reason.SYSTEM: "refused by the system",
}


class Clock(Protocol):
    """Where the log's times come from."""

    def now(self) -> float: ...

    def wait(self, seconds: float) -> None: ...


class WallClock:
    """Real time (a served model, an HTTP client): waiting sleeps."""

    def now(self) -> float:
        return time.monotonic()

    def wait(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class VirtualClock:
    """Simulated time for an in-process attack: it advances by the seconds the system spends
    answering and by every wait, without sleeping, so a rate limit costs the attacker time in
    the ledger and none in the test suite."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def wait(self, seconds: float) -> None:
        if seconds > 0:
            self._now += seconds

    def advance(self, seconds: float) -> None:
        self.wait(seconds)


@dataclass(frozen=True, eq=False)
class Call:
    """One call: rows sent together, with what became of each.

    ``ids``, ``outcome`` and ``reason`` have one entry per row; ``flags`` marks, for gradient
    calls, rows whose gradient was exactly zero (1) or not finite (2). ``seconds`` is the time
    the call took (the system answering, and any wait a policy imposed); it is shared equally
    by the rows that were not refused.
    """

    seq: int
    time: float
    seconds: float
    account: str
    kind: Kind
    ids: Tensor
    outcome: Tensor
    reason: Tensor
    price: float = 0.0
    flags: Tensor | None = None

    @property
    def rows(self) -> int:
        return len(self.ids)

    @property
    def charged(self) -> Tensor:
        return self.outcome <= int(Outcome.BLOCKED)

    @property
    def cost(self) -> float:
        return float(self.charged.sum()) * self.price

    def count(self, outcome: Outcome) -> int:
        return int((self.outcome == int(outcome)).sum())


ZERO_GRADIENT = 1
NONFINITE_GRADIENT = 2


class EventLog:
    """An ordered, append-only log of calls, with totals derived from it.

    Sample ids are non-negative ints (dataset indices); ``-1`` marks rows tied to no sample,
    which count in the totals of the whole log but in no sample's. Appending a call does no
    arithmetic: the totals (whole-log and per sample) take in the calls appended since they
    were last read, all at once, when they are read, so that an attack that sends a thousand
    small calls without reading a total pays for one sum, not a thousand.
    """

    def __init__(self) -> None:
        self._calls: list[Call] = []
        self._settled = 0  # calls folded into the totals below
        self._lock = threading.Lock()
        size = 0
        self._queries = torch.zeros(size, dtype=torch.int64)
        self._gradients = torch.zeros(size, dtype=torch.int64)
        self._seconds = torch.zeros(size, dtype=torch.float64)
        self._refused = torch.zeros(size, dtype=torch.int64)
        self._failed = torch.zeros(size, dtype=torch.int64)
        self._sums = Totals()  # blocked and abstained stay 0: not kept for the whole log

    @property
    def queries(self) -> int:
        """Charged rows, all samples and none."""
        return self._totals().queries

    @property
    def gradients(self) -> int:
        return self._totals().gradients

    @property
    def seconds(self) -> float:
        return self._totals().seconds

    @property
    def money(self) -> float:
        return self._totals().money

    @property
    def refused(self) -> int:
        return self._totals().refused

    @property
    def failed(self) -> int:
        return self._totals().failed

    def __len__(self) -> int:
        return len(self._calls)

    def calls(self, since: int = 0, account: str | None = None) -> list[Call]:
        """The calls from position ``since`` on (see :meth:`mark`), of one account or all."""
        chosen = self._calls[since:]
        return chosen if account is None else [c for c in chosen if c.account == account]

    def mark(self) -> int:
        """A position in the log: :meth:`calls` and :meth:`totals` read what came after it."""
        return len(self._calls)

    # ------------------------------------------------------------------ writing
    def record(
        self,
        *,
        account: str,
        kind: Kind,
        ids: Tensor,
        outcome: Tensor,
        reason: Tensor | None = None,
        time: float = 0.0,
        seconds: float = 0.0,
        price: float = 0.0,
        flags: Tensor | None = None,
    ) -> Call:
        """Append one call (``outcome`` and ``reason`` per row, ints of :class:`Outcome` and
        :class:`Reason`) and update the totals."""
        ids = ids.to(device="cpu", dtype=torch.int64)
        outcome = outcome.to(device="cpu", dtype=torch.int8)
        reason = (
            torch.zeros(len(ids), dtype=torch.int8)
            if reason is None
            else reason.to(device="cpu", dtype=torch.int8)
        )
        if flags is not None:
            flags = flags.to(device="cpu", dtype=torch.int8)
        call = Call(
            seq=len(self._calls),
            time=float(time),
            seconds=float(seconds),
            account=account,
            kind=Kind(kind),
            ids=ids,
            outcome=outcome,
            reason=reason,
            price=float(price),
            flags=flags,
        )
        self._add(call)
        return call

    def extend(self, calls: list[Call]) -> None:
        """Append calls recorded elsewhere (a resumed run replays its store)."""
        for call in calls:
            self._add(
                Call(
                    seq=len(self._calls),
                    time=call.time,
                    seconds=call.seconds,
                    account=call.account,
                    kind=call.kind,
                    ids=call.ids,
                    outcome=call.outcome,
                    reason=call.reason,
                    price=call.price,
                    flags=call.flags,
                )
            )

    def _add(self, call: Call) -> None:
        self._calls.append(call)

    def _totals(self) -> Totals:
        """The whole-log totals, after folding in the calls not yet counted."""
        if self._settled < len(self._calls):
            self._settle()
        return self._sums

    def _settle(self) -> None:
        """Fold the calls appended since the last read into the totals."""
        with self._lock:
            end = len(self._calls)
            calls = self._calls[self._settled : end]
            if len(calls) == 1:  # a reader after every call (a budget policy): no batching
                self._fold_one(calls[0])
            elif calls:
                self._fold(calls)
            self._settled = end

    def _sum(self, call: Call, charged: int) -> None:
        """The whole-log sums, call by call in order (the float sums of a running total)."""
        sums = self._sums
        sums.queries += charged
        sums.money += charged * call.price
        sums.seconds += call.seconds
        if call.kind is Kind.GRADIENT:
            sums.gradients += charged

    def _fold(self, calls: list[Call]) -> None:
        rows = _Rows.of(calls)
        for call, charged in zip(calls, rows.charged_per_call.tolist(), strict=True):
            self._sum(call, charged)
        self._sums.refused += int(rows.refused.sum())
        self._sums.failed += int(rows.failed.sum())
        owned = rows.ids >= 0
        if not bool(owned.any()):
            return
        ids = rows.ids[owned]
        self._grow(int(ids.max()) + 1)
        charged_rows = rows.charged[owned].long()
        self._queries.index_add_(0, ids, charged_rows)
        self._gradients.index_add_(0, ids, charged_rows * rows.gradient[owned])
        self._refused.index_add_(0, ids, rows.refused[owned].long())
        self._failed.index_add_(0, ids, rows.failed[owned].long())
        self._seconds.index_add_(0, ids, rows.seconds[owned])

    def _fold_one(self, call: Call) -> None:
        """:meth:`_fold` for one call, with fewer operations when every row was charged."""
        charged = call.charged
        n = call.ids.shape[0]
        n_charged = int(charged.sum())
        self._sum(call, n_charged)
        every = n_charged == n  # the usual case: no row refused or failed
        refused = failed = None
        if not every:
            refused = call.outcome == int(Outcome.REFUSED)
            failed = call.outcome == int(Outcome.FAILED)
            self._sums.refused += int(refused.sum())
            self._sums.failed += int(failed.sum())
        if n == 0:
            return
        low, high = torch.aminmax(call.ids)
        if high.item() < 0:
            return
        ids = call.ids
        if low.item() < 0:  # rows tied to no sample
            owned = ids >= 0
            ids, charged = ids[owned], charged[owned]
            if refused is not None and failed is not None:
                refused, failed = refused[owned], failed[owned]
        self._grow(int(high.item()) + 1)
        counts = charged.long()
        self._queries.index_add_(0, ids, counts)
        if call.kind is Kind.GRADIENT:
            self._gradients.index_add_(0, ids, counts)
        if refused is not None and failed is not None:
            self._refused.index_add_(0, ids, refused.long())
            self._failed.index_add_(0, ids, failed.long())
        if call.seconds:
            # shared by the rows the call did not refuse
            waited = n if every else int((call.outcome != int(Outcome.REFUSED)).sum())
            share = torch.full(ids.shape, call.seconds / max(waited, 1), dtype=torch.float64)
            self._seconds.index_add_(0, ids, share if refused is None else share * ~refused)

    def _grow(self, need: int) -> None:
        if need <= len(self._queries):
            return
        size = max(need, 2 * len(self._queries))
        extra = size - len(self._queries)

        def grow(t: Tensor) -> Tensor:
            return torch.cat([t, torch.zeros(extra, dtype=t.dtype)])

        self._queries, self._gradients = grow(self._queries), grow(self._gradients)
        self._seconds, self._refused = grow(self._seconds), grow(self._refused)
        self._failed = grow(self._failed)

    # ------------------------------------------------------------------ reading
    def queries_of(self, ids: Tensor) -> Tensor:
        """Charged queries per sample id."""
        return self._gather("_queries", ids)

    def gradients_of(self, ids: Tensor) -> Tensor:
        """Gradient evaluations per sample id."""
        return self._gather("_gradients", ids)

    def seconds_of(self, ids: Tensor) -> Tensor:
        """Seconds per sample id (a call's time is shared by the rows it did not refuse)."""
        return self._gather("_seconds", ids)

    def refused_of(self, ids: Tensor) -> Tensor:
        """Rows refused before reaching the system, per sample id."""
        return self._gather("_refused", ids)

    def failed_of(self, ids: Tensor) -> Tensor:
        """Rows of failed calls, per sample id."""
        return self._gather("_failed", ids)

    def _gather(self, name: str, ids: Tensor) -> Tensor:
        """The per-sample table ``name`` at ``ids`` (0 for ids it has never seen)."""
        if self._settled < len(self._calls):
            self._settle()
        table: Tensor = getattr(self, name)
        ids = ids.to(device="cpu", dtype=torch.int64)
        out = torch.zeros(len(ids), dtype=table.dtype)
        owned = (ids >= 0) & (ids < len(table))
        out[owned] = table[ids[owned]]
        return out

    def totals(self, since: int = 0, account: str | None = None) -> Totals:
        """What the calls from ``since`` on (of one account, or all) added up to."""
        totals = Totals()
        for call in self.calls(since, account):
            charged = int(call.charged.sum())
            totals.queries += charged
            totals.money += charged * call.price
            totals.seconds += call.seconds
            totals.refused += call.count(Outcome.REFUSED)
            totals.failed += call.count(Outcome.FAILED)
            totals.blocked += call.count(Outcome.BLOCKED)
            totals.abstained += call.count(Outcome.ABSTAINED)
            if call.kind is Kind.GRADIENT:
                totals.gradients += charged
        return totals

    def per_sample(self, ids: Tensor, since: int = 0) -> SampleTotals:
        """Per-sample totals over the calls from ``since`` on, for the samples ``ids``."""
        ids = ids.to(device="cpu", dtype=torch.int64)
        position = {int(i): k for k, i in enumerate(ids.tolist())}
        n = len(ids)
        out = SampleTotals(
            queries=torch.zeros(n, dtype=torch.int64),
            gradients=torch.zeros(n, dtype=torch.int64),
            seconds=torch.zeros(n, dtype=torch.float64),
            money=torch.zeros(n, dtype=torch.float64),
            refused=torch.zeros(n, dtype=torch.int64),
            failed=torch.zeros(n, dtype=torch.int64),
            zero_gradients=torch.zeros(n, dtype=torch.int64),
            nonfinite_gradients=torch.zeros(n, dtype=torch.int64),
        )
        if not n:
            return out
        lookup = torch.full((int(ids.max()) + 1,), -1, dtype=torch.int64)
        lookup[ids[ids >= 0]] = torch.tensor(
            [position[int(i)] for i in ids[ids >= 0].tolist()], dtype=torch.int64
        )
        calls = self._calls[since:]
        if not calls:
            return out
        rows = _Rows.of(calls)
        where = torch.full_like(rows.ids, -1)
        inside = (rows.ids >= 0) & (rows.ids < len(lookup))
        where[inside] = lookup[rows.ids[inside]]
        mine = where >= 0
        if not bool(mine.any()):
            return out
        flags = torch.cat(
            [
                c.flags.to(torch.int64)
                if c.flags is not None
                else torch.zeros(c.rows, dtype=torch.int64)
                for c in calls
            ]
        )
        at = where[mine]
        charged = rows.charged[mine].long()
        out.queries.index_add_(0, at, charged)
        out.money.index_add_(0, at, charged.double() * rows.price[mine])
        grad_rows = rows.gradient[mine]
        out.gradients.index_add_(0, at, charged * grad_rows)
        flags = torch.where(grad_rows, flags[mine], 0)
        out.zero_gradients.index_add_(0, at, ((flags & ZERO_GRADIENT) > 0).long())
        out.nonfinite_gradients.index_add_(0, at, ((flags & NONFINITE_GRADIENT) > 0).long())
        out.refused.index_add_(0, at, rows.refused[mine].long())
        out.failed.index_add_(0, at, rows.failed[mine].long())
        out.seconds.index_add_(0, at, rows.seconds[mine])
        return out

    def reasons(self, since: int = 0) -> dict[Reason, int]:
        """How many rows were refused or blocked, by reason, from ``since`` on."""
        calls = self._calls[since:]
        if not calls:
            return {}
        codes = torch.cat([call.reason for call in calls])
        found, counts = torch.unique(codes[codes > 0], return_counts=True)
        return {Reason(code): n for code, n in zip(found.tolist(), counts.tolist(), strict=True)}


@dataclass(frozen=True)
class _Rows:
    """Every row of a run of calls side by side, one entry per row."""

    ids: Tensor  # int64
    charged: Tensor  # bool
    refused: Tensor  # bool
    failed: Tensor  # bool
    gradient: Tensor  # bool: a row of a gradient call
    price: Tensor  # float64: its call's price per query
    seconds: Tensor  # float64: its share of its call's time (none for a refused row)
    charged_per_call: Tensor  # int64, one entry per call

    @staticmethod
    def of(calls: list[Call]) -> _Rows:
        count = len(calls)
        lengths = torch.tensor([c.ids.shape[0] for c in calls], dtype=torch.int64)
        call_of = torch.repeat_interleave(torch.arange(count), lengths)
        outcome = torch.cat([c.outcome for c in calls])
        charged = outcome <= int(Outcome.BLOCKED)
        refused = outcome == int(Outcome.REFUSED)
        # a call's time is shared by the rows it did not refuse
        waited = (~refused).double()
        waited_of_call = torch.zeros(count, dtype=torch.float64).index_add(0, call_of, waited)
        seconds = torch.tensor([c.seconds for c in calls], dtype=torch.float64)
        share = (seconds / waited_of_call.clamp_min(1))[call_of] * waited
        return _Rows(
            ids=torch.cat([c.ids for c in calls]).to(torch.int64),
            charged=charged,
            refused=refused,
            failed=outcome == int(Outcome.FAILED),
            gradient=torch.tensor([c.kind is Kind.GRADIENT for c in calls])[call_of],
            price=torch.tensor([c.price for c in calls], dtype=torch.float64)[call_of],
            seconds=share,
            charged_per_call=torch.zeros(count, dtype=torch.int64).index_add(
                0, call_of, charged.long()
            ),
        )


@dataclass
class Totals:
    """What a stretch of the log added up to."""

    queries: int = 0
    gradients: int = 0
    seconds: float = 0.0
    money: float = 0.0
    refused: int = 0
    failed: int = 0
    blocked: int = 0
    abstained: int = 0


@dataclass(frozen=True)
class SampleTotals:
    """Per-sample sums over a stretch of the log (one entry per sample asked about)."""

    queries: Tensor
    gradients: Tensor
    seconds: Tensor
    money: Tensor
    refused: Tensor
    failed: Tensor
    zero_gradients: Tensor
    nonfinite_gradients: Tensor
