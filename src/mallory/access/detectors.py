"""Query-stream detectors: admission policies that watch what each account sends.

A query attack sends many inputs that are almost the same: HopSkipJump probes tiny random
steps around one boundary point, Square changes one small window of its best input at a time.
People using a model send different inputs. :class:`StatefulDetector` keeps, per account, a
compact memory of the inputs it sent, and flags the account as soon as a new input lies too
close to what it sent before:

    Chen, Carlini and Wagner, "Stateful Detection of Black-Box Adversarial Attacks", ACM
    SPAI 2020 (arXiv 2019): the mean distance from a query to its ``k`` nearest earlier
    queries of the same account, in an embedding, against a threshold set on benign data.

The embedding here is a fixed random projection of the flattened input to ``dim`` numbers
(Johnson-Lindenstrauss: distances kept within a few per cent for ``dim`` 64), not Chen et al.'s
trained encoder: it needs no training, and it keeps the memory compact. Blacklight (Li et al.,
USENIX Security 2022) matches hashes of quantized windows instead; both flag a query that is
too similar to an earlier one, and both are defeated the same way by an attacker that adds
enough noise to its queries (:mod:`mallory.attacks.evasion.oars`).

Its response is ``"flag"`` (Chen et al.'s: the query that gave the account away and every later
one is refused with :attr:`~mallory.access.events.Reason.DETECTOR`) or ``"reject"``
(Blacklight's: only the queries too close to earlier ones are refused, and the account may go
on with others). A :class:`~mallory.access.policies.Ban` placed before it in the chain reads
its refusals in the event log and turns them into a ban: ``system.with_policies(Ban(after=3),
StatefulDetector(...))`` bans an account at its third rejected query.

The memory is bounded: ``memory`` inputs per account (the oldest forgotten first), ``accounts``
accounts (the least recently active forgotten first, flagged or not), ``dim`` float32 numbers
per input: at most ``4 * dim * memory * accounts`` bytes per event log. It belongs to the
stream it watches: each :class:`~mallory.access.events.EventLog` (an Oracle's, a server's) has
its own, so the threat models of a campaign each meet a detector that starts afresh. A log
that already holds the detector's refusals (a resumed run) marks those accounts flagged again;
the inputs themselves are not in the log and are not remembered.
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

import torch
from torch import Tensor

from mallory.access.events import Call, EventLog, Reason
from mallory.access.policies import Admission, Policy, Request
from mallory.errors import InputError, bad_param
from mallory.params import Constraint, Interval, Options, OrNone, check_values

__all__ = [
    "DETECTOR_PARAMS",
    "Response",
    "StatefulDetector",
    "queries_until_flagged",
]

_BLOCK = 1024  # rows whose distances are computed at once: memory stays O(block x pool)


class Response(StrEnum):
    """What a detector does with a query that is too close to the account's earlier ones."""

    FLAG = "flag"  # refuse it and everything the account sends after it
    REJECT = "reject"  # refuse that query only


DETECTOR_PARAMS: dict[str, Constraint] = {
    "threshold": Interval(low=0.0, low_open=True, note="a distance in the embedding"),
    "k": Interval(low=1, integral=True),
    "memory": Interval(low=1, integral=True, note="inputs kept per account"),
    "accounts": Interval(low=1, integral=True, note="accounts remembered at once"),
    "dim": OrNone(Interval(low=1, integral=True), "for the raw features"),
    "response": Options(Response),
    "seed": Interval(low=0, integral=True),
    "fpr": Interval(low=0.0, high=1.0, low_open=True, high_open=True),
}
"""The constraints of the detector's parameters, by name."""


@dataclass
class _Account:
    """What the detector remembers of one account: a ring of its last inputs (grown as
    needed up to ``memory`` rows), how many it sent, and when it was flagged."""

    store: Tensor | None = None  # (capacity, dim) float32
    norms: Tensor | None = None  # (capacity,) their squared norms
    count: int = 0  # inputs written to the ring so far
    sent: int = 0  # inputs the detector saw from the account
    flagged_after: int | None = None  # inputs it had sent when it was flagged

    def remembered(self, memory: int, width: int) -> tuple[Tensor, Tensor]:
        """The remembered inputs and their squared norms."""
        if self.store is None or self.norms is None:
            return torch.zeros(0, width), torch.zeros(0)
        filled = min(self.count, memory)
        return self.store[:filled], self.norms[:filled]

    def remember(self, z: Tensor, z_sq: Tensor, memory: int) -> None:
        if len(z) > memory:
            self.count += len(z) - memory
            z, z_sq = z[-memory:], z_sq[-memory:]
        filled = min(self.count, memory)
        need = min(memory, filled + len(z))
        if self.store is None or self.norms is None or len(self.store) < need:
            room = 0 if self.store is None else len(self.store)
            size = min(memory, max(need, 2 * room, 16))
            store, norms = torch.empty(size, z.shape[1]), torch.empty(size)
            if self.store is not None and self.norms is not None:
                store[:filled], norms[:filled] = self.store[:filled], self.norms[:filled]
            self.store, self.norms = store, norms
        # in order until the ring is full, then over the oldest
        at = self.count % memory
        head = min(len(z), memory - at)
        self.store[at : at + head], self.norms[at : at + head] = z[:head], z_sq[:head]
        self.store[: len(z) - head], self.norms[: len(z) - head] = z[head:], z_sq[head:]
        self.count += len(z)


class _Stream:
    """The detector's state for one event log: its accounts, least recently active first."""

    def __init__(self, log: EventLog) -> None:
        self.accounts: OrderedDict[str, _Account] = OrderedDict()
        self.restored = {c.account for c in log.calls() if _flags(c)}  # a resumed run


def _flags(call: Call) -> bool:
    return bool((call.reason == int(Reason.DETECTOR)).any())


class StatefulDetector(Policy):
    """Flag an account whose new query is too close to its earlier ones (a system policy).

    Chen, Carlini and Wagner, "Stateful Detection of Black-Box Adversarial Attacks" (2019).

    Each query is embedded (flattened; projected to ``dim`` numbers by a fixed random Gaussian
    matrix drawn from ``seed`` when it has more features than that) and scored by its mean
    Euclidean distance to the ``k`` nearest inputs among the account's memory and the rows of
    the same call before it. A query whose score is below ``threshold`` gives the account away
    (an account that sent fewer than ``k`` inputs is never flagged). Every row is scored at
    once, for any batch.

    Use :meth:`calibrate` to set ``threshold`` from benign inputs at a chosen false-positive
    rate: distances depend on the data's scale and dimension.

    Args:
        threshold: flag below this mean distance to the ``k`` nearest earlier inputs.
        k: neighbours averaged (10).
        memory: inputs remembered per account, the oldest forgotten first (1,000).
        accounts: accounts remembered at once, the least recently active forgotten first
            (1,000).
        dim: numbers per remembered input (64); None keeps the raw features.
        response: ``"flag"`` (refuse the account from the query that gave it away on) or
            ``"reject"`` (refuse only the queries too close to earlier ones).
        seed: draws the projection.

    Example::

        detector = StatefulDetector.calibrate(load_dataset("mnist", "train").x, fpr=0.001)
        guarded = system.with_policies(detector)
    """

    reason = Reason.DETECTOR

    def __init__(
        self,
        threshold: float,
        *,
        k: int = 10,
        memory: int = 1000,
        accounts: int = 1000,
        dim: int | None = 64,
        response: Response | str = Response.FLAG,
        seed: int = 0,
    ) -> None:
        values = check_values(
            "StatefulDetector",
            DETECTOR_PARAMS,
            {
                "threshold": threshold,
                "k": k,
                "memory": memory,
                "accounts": accounts,
                "dim": dim,
                "response": response,
                "seed": seed,
            },
        )
        if memory < k:
            raise bad_param(
                "StatefulDetector",
                "memory",
                f"an int >= k ({k}): it must hold the k neighbours a query is compared with",
                memory,
            )
        self.threshold: float = values["threshold"]
        self.k = k
        self.memory = memory
        self.accounts = accounts
        self.dim = dim
        self.response: Response = values["response"]
        self.seed = seed
        self._features: int | None = None
        self._projection: dict[torch.device, Tensor] = {}
        self._streams: weakref.WeakKeyDictionary[EventLog, _Stream] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return (
            f"StatefulDetector(threshold={self.threshold:g}, k={self.k}, memory={self.memory}, "
            f"accounts={self.accounts}, dim={self.dim}, response={self.response.value!r})"
        )

    # ---------------------------------------------------------------- calibration
    @classmethod
    def calibrate(
        cls,
        x: Tensor,
        *,
        fpr: float = 0.001,
        k: int = 10,
        memory: int = 1000,
        accounts: int = 1000,
        dim: int | None = 64,
        response: Response | str = Response.FLAG,
        seed: int = 0,
    ) -> StatefulDetector:
        """A detector whose threshold would flag a share ``fpr`` of the benign inputs ``x``.

        Each input of ``x`` is scored against all the others (as if an account had sent them
        all), and the threshold is the ``fpr`` quantile of the scores. Give inputs that are not
        the ones the detector will be tested on, and about ``memory`` of them or more (a
        longer benign stream has closer neighbours, so more inputs give a safer threshold).
        """
        check_values("StatefulDetector.calibrate", DETECTOR_PARAMS, {"fpr": fpr, "k": k})
        if not isinstance(x, Tensor) or x.dim() < 1 or len(x) <= k:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InputError(
                f"StatefulDetector.calibrate needs a tensor of more than k={k} benign inputs "
                f"(n, *input_shape); got {got}."
            )
        probe = cls(1.0, k=k, memory=max(memory, k), dim=dim, seed=seed)
        z = probe.embed(x)
        z_sq = z.square().sum(1)
        parts = []
        for first in range(0, len(z), _BLOCK):
            rows = slice(first, first + _BLOCK)
            d = _squared(z[rows], z_sq[rows], z, z_sq)
            itself = torch.arange(first, first + len(d))
            d[torch.arange(len(d)), itself] = math.inf  # each against all the others
            parts.append(_mean_nearest(d, k))
        scores = torch.cat(parts)
        threshold = float(torch.quantile(scores.double(), fpr))
        if not threshold > 0:
            raise InputError(
                "StatefulDetector.calibrate: more than a share fpr of the benign inputs have "
                f"k={k} exact duplicates among them (threshold {threshold:g}); remove the "
                "duplicates, or lower k."
            )
        return cls(
            threshold,
            k=k,
            memory=memory,
            accounts=accounts,
            dim=dim,
            response=response,
            seed=seed,
        )

    # ---------------------------------------------------------------- scoring
    def embed(self, x: Tensor) -> Tensor:
        """The inputs as the detector remembers them: ``(n, dim)`` float32 on the CPU."""
        flat = x.detach().reshape(len(x), -1)
        features = flat.shape[1]
        if self._features is None:
            self._features = features
        elif features != self._features:
            raise InputError(
                f"StatefulDetector saw inputs of {self._features} features, now {features}: "
                "one detector watches one system's inputs; make one per system."
            )
        if self.dim is None or features <= self.dim:
            return flat.to(device="cpu", dtype=torch.float32)
        projection = self._projection.get(flat.device)
        if projection is None:
            generator = torch.Generator().manual_seed(self.seed)
            matrix = torch.randn(features, self.dim, generator=generator) / math.sqrt(self.dim)
            projection = matrix.to(flat.device)
            self._projection[flat.device] = projection
        return (flat.to(projection.dtype) @ projection).to("cpu")

    def scores(self, x: Tensor) -> Tensor:
        """The score of each of ``x`` as if one account had sent them in this order (fresh):
        its mean distance to the ``k`` nearest rows before it, ``inf`` with fewer than ``k``
        before it. A row is flagged when its score is below ``threshold``."""
        z = self.embed(x)
        return _score(z, z.square().sum(1), z[:0], z[:0, 0], self.k)

    # ---------------------------------------------------------------- the policy
    def admit(self, request: Request, log: EventLog) -> Admission:
        n = len(request)
        stream = self._streams.get(log)
        if stream is None:
            stream = self._streams[log] = _Stream(log)
        account = self._account(stream, request.account)
        flag = self.response is Response.FLAG
        if flag and account.flagged_after is not None:
            return Admission.refuse(torch.zeros(n, dtype=torch.bool), self.reason, system=True)
        if request.x is None or n == 0:
            return Admission.everything(n)  # nothing to look at (a request without inputs)
        z = self.embed(request.x)
        z_sq = z.square().sum(1)
        past, past_sq = account.remembered(self.memory, z.shape[1])
        suspicious = _score(z, z_sq, past, past_sq, self.k) < self.threshold
        sent = account.sent
        account.sent += n
        if not bool(suspicious.any()):
            account.remember(z, z_sq, self.memory)
            return Admission.everything(n)
        first = int(suspicious.nonzero()[0])
        if account.flagged_after is None:
            account.flagged_after = sent + first
        if flag:
            account.store = account.norms = None  # refused from now on: nothing to compare
            admitted = torch.arange(n) < first
        else:
            account.remember(z, z_sq, self.memory)
            admitted = ~suspicious
        return Admission.refuse(admitted, self.reason, system=True)

    def _account(self, stream: _Stream, name: str) -> _Account:
        account = stream.accounts.get(name)
        if account is not None:
            stream.accounts.move_to_end(name)
            return account
        account = _Account()
        if name in stream.restored:
            stream.restored.discard(name)
            account.flagged_after = 0
        stream.accounts[name] = account
        while len(stream.accounts) > self.accounts:
            stream.accounts.popitem(last=False)
        return account

    # ---------------------------------------------------------------- reading
    def flagged(self, log: EventLog | None = None) -> dict[str, int]:
        """The accounts flagged in ``log``'s stream (every stream's when None), among those
        remembered, with the inputs each had sent when it was flagged (0 for one restored
        from the log of a resumed run)."""
        streams = list(self._streams.values()) if log is None else [self._streams.get(log)]
        out: dict[str, int] = {}
        for stream in streams:
            if stream is None:
                continue
            out.update(dict.fromkeys(stream.restored, 0))
            for name, account in stream.accounts.items():
                if account.flagged_after is not None:
                    out[name] = account.flagged_after
        return out

    def describe(self) -> dict[str, object]:
        return {
            "policy": "detector",
            "threshold": self.threshold,
            "k": self.k,
            "memory": self.memory,
            "accounts": self.accounts,
            "dim": self.dim,
            "response": self.response.value,
        }


def _score(z: Tensor, z_sq: Tensor, past: Tensor, past_sq: Tensor, k: int) -> Tensor:
    """Per row of ``z``: the mean distance to its ``k`` nearest among ``past`` and the rows
    of ``z`` before it (``inf`` with fewer than ``k``); ``*_sq`` are squared norms."""
    n = len(z)
    parts = []
    for first in range(0, n, _BLOCK):
        rows, rows_sq = z[first : first + _BLOCK], z_sq[first : first + _BLOCK]
        d = _squared(rows, rows_sq, past, past_sq)
        end = first + len(rows)
        if end > 1:  # the rows of the call before each row
            before = _squared(rows, rows_sq, z[:end], z_sq[:end])
            later = torch.arange(end)[None, :] >= torch.arange(first, end)[:, None]
            d = torch.cat([d, before.masked_fill_(later, math.inf)], 1)
        parts.append(_mean_nearest(d, k))
    return torch.cat(parts) if parts else torch.zeros(0)


def _squared(a: Tensor, a_sq: Tensor, b: Tensor, b_sq: Tensor) -> Tensor:
    """Squared Euclidean distances ``(len(a), len(b))``, from the norms and one product."""
    return (a_sq[:, None] + b_sq[None, :] - 2 * (a @ b.T)).clamp_min_(0.0)


def _mean_nearest(squared: Tensor, k: int) -> Tensor:
    """Mean distance to the ``k`` nearest of each row (``inf`` with fewer than ``k``)."""
    if squared.shape[1] < k:
        return torch.full((len(squared),), math.inf)
    return squared.topk(k, dim=1, largest=False).values.sqrt().mean(1)


def queries_until_flagged(calls: Iterable[Call], account: str | None = None) -> float:
    """The charged queries an account (or all) made before its first row a detector refused,
    or NaN when no detector refused it."""
    before = 0
    for call in calls:
        if account is not None and call.account != account:
            continue
        hit = call.reason == int(Reason.DETECTOR)
        if bool(hit.any()):
            first = int(hit.nonzero()[0])
            return float(before + int(call.charged[:first].sum()))
        before += int(call.charged.sum())
    return math.nan
