"""The served system's own admission policies, one account per client address.

A system behind policies (``system.with_policies(RateLimit(...), StatefulDetector(...),
Ban())``, see :mod:`mallory.access.policies` and :mod:`mallory.access.detectors`) keeps them
when it is served: every ``POST`` batch, once parsed and checked, goes through the same
:class:`~mallory.access.policies.Chain` the Oracle applies, with the client's address as the
account and the wall clock's time. A request with any row refused is refused whole (the
protocols have no per-row refusal): ``429`` with ``Retry-After`` when only a rate limit
refused it, else ``403`` with the reason (``{"error": "refused: flagged by a detector"}``).

The policies run on the model's worker thread, one request at a time, so they need no lock.
The event log that a :class:`~mallory.access.policies.Ban` counts strikes in holds the refused
requests only, and only when there is a Ban to read it (a banned client's own refusals add
nothing), so it grows with the clients a Ban has to judge, not with the traffic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
from torch import Tensor

from mallory.access.events import EventLog, Kind, Outcome, Reason
from mallory.access.policies import Ban, Chain, Policy, Request
from mallory.serve.protocol import Refusal

__all__ = ["ClientPolicies"]


class ClientPolicies:
    """The system's admission policies applied to each client address's requests."""

    def __init__(self, policies: Sequence[Policy]) -> None:
        self.chain = Chain(policies)
        self.log = EventLog()
        self._record = any(isinstance(p, Ban) for p in policies)

    def __len__(self) -> int:
        return len(self.chain)

    def check(self, client: str, x: Tensor) -> None:
        """Raise the Refusal a request of ``x`` from ``client`` meets, if any."""
        n = len(x)
        ids = torch.full((n,), -1, dtype=torch.int64)
        now = time.monotonic()
        answer = self.chain.admit(Request(ids, client, now, Kind.QUERY, x), self.log)
        if answer.all:
            return
        reasons = answer.reason[~answer.admitted]
        if self._record and not bool((reasons == int(Reason.BAN)).all()):
            outcome = torch.where(answer.admitted, int(Outcome.ANSWERED), int(Outcome.REFUSED))
            self.log.record(
                account=client,
                kind=Kind.QUERY,
                ids=ids,
                outcome=outcome,
                reason=answer.reason,
                time=now,
            )
        codes = [Reason(int(code)) for code in torch.unique(reasons).tolist()]
        if codes == [Reason.RATE]:
            seconds = max(1, math.ceil(answer.wait))
            raise Refusal(
                429,
                f"refused: {Reason.RATE.text}; retry after {seconds} s",
                {"Retry-After": str(seconds)},
                inputs=n,
            )
        text = ", ".join(code.text for code in codes if code is not Reason.NONE)
        raise Refusal(403, f"refused: {text}", inputs=n)
