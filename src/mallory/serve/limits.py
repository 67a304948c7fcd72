"""What a request may cost the server: sizes, nesting, time, rate.

Every limit is checked before the work it protects: the head's size before routing, the
body's declared length before reading it, its nesting depth before parsing it (a byte scan:
``json.loads`` recurses once per level, and 1,000 levels end in a ``RecursionError``), and
the time a client may take to send a head or a body (a slow or short body must not hold a
worker). The rate limit is :class:`mallory.access.policies.RateLimit`, one account per
client address: the same policy code the Oracle and the HTTP client use.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from mallory.access.events import EventLog
from mallory.access.policies import RateLimit, Request

__all__ = ["ClientRateLimit", "Limits", "deeper_than", "nesting_depth"]

DEFAULT_MAX_BATCH = 256
DEFAULT_READ_TIMEOUT = 5.0
"""Seconds a client may take to send a request's head, and again its body."""
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
DEFAULT_MAX_PENDING = 64
"""Requests that may wait for the model at once; more are answered 503 (memory stays bounded)."""
_BYTES_PER_NUMBER = 32  # a float in JSON, generously: "0.123456789012345678, "
_BODY_SLACK = 64 * 1024
_DEPTH_SLACK = 8  # {"inputs": [{"data": [...]}]} and the like, beyond the input's own dims
_MAX_CLIENTS = 10_000  # clients with a rate-limit bucket before the policy starts afresh


@dataclass(frozen=True)
class Limits:
    """The server's limits; ``max_body_bytes`` and ``max_depth`` derive from the input's shape
    when not given (:meth:`for_input`)."""

    max_batch: int
    max_body_bytes: int
    max_depth: int
    read_timeout: float = DEFAULT_READ_TIMEOUT
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_pending: int = DEFAULT_MAX_PENDING

    @staticmethod
    def for_input(
        input_shape: tuple[int, ...],
        *,
        max_batch: int,
        max_body_bytes: int | None,
        read_timeout: float,
    ) -> Limits:
        """Room for ``max_batch`` inputs of ``input_shape`` at 32 bytes a number, plus 64 KiB;
        nesting for the input's dims written out in full, plus a few levels."""
        features = math.prod(input_shape)
        if max_body_bytes is None:
            max_body_bytes = _BODY_SLACK + max_batch * features * _BYTES_PER_NUMBER
        return Limits(
            max_batch=max_batch,
            max_body_bytes=max_body_bytes,
            max_depth=len(input_shape) + _DEPTH_SLACK,
            read_timeout=read_timeout,
        )


_STEP = np.zeros(256, dtype=np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_QUOTE = ord('"')


def _structure(body: bytes) -> bytes:
    """The quotes and brackets of a UTF-8 JSON text that are not escaped, in order.

    Escapes go first: pairs of backslashes, then escaped quotes (a run of backslashes escapes
    the next byte when it is odd). In UTF-8 no other character holds these bytes.
    """
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    return body.translate(None, _NOT_STRUCTURE)


def _depth(marks: bytes) -> int:
    if not marks:
        return 0
    codes = np.frombuffer(marks, dtype=np.uint8)
    outside = (np.cumsum(codes == _QUOTE, dtype=np.int32) & 1) == 0
    step = np.where(outside, _STEP[codes], np.int8(0))
    return int(max(0, np.cumsum(step, dtype=np.int32).max()))


def nesting_depth(body: bytes) -> int:
    """How deep the arrays and objects of a UTF-8 JSON text nest, brackets inside strings
    not counted; found without parsing, in time linear in the body, at C speed.

    The unescaped quotes open and close strings, and the brackets outside strings give the
    depth. For a text that is not JSON the figure is still at least the depth a parser
    reaches before it fails (up to the first backslash outside a string, the text is read
    the same).
    """
    return _depth(_structure(body))


def deeper_than(body: bytes, limit: int) -> int | None:
    """The body's nesting depth if it is over ``limit``, else None (without the count when
    the body has no more opening brackets than ``limit``)."""
    marks = _structure(body)
    if marks.count(b"[") + marks.count(b"{") <= limit:
        return None
    depth = _depth(marks)
    return depth if depth > limit else None


class ClientRateLimit:
    """``rate`` requests per second per client address, in bursts of ``max(1, rate)``:
    a :class:`~mallory.access.policies.RateLimit` with the wall clock, one account per client.

    ``admit`` runs on the server's event loop only, so the bucket needs no lock. When more than
    10,000 clients hold a bucket, the policy starts afresh: a client that many addresses
    can spread its requests over them anyway.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate)
        self.policy = RateLimit(rate, burst=self.burst)
        self._log = EventLog()  # the rate limit reads no history; the query log is the record
        self._none = torch.full((1,), -1, dtype=torch.int64)
        self._clients: set[str] = set()

    def admit(self, client: str) -> float | None:
        """None if the request may go on, else the seconds until it may."""
        if client not in self._clients:
            if len(self._clients) >= _MAX_CLIENTS:
                self.policy = RateLimit(self.rate, burst=self.burst)
                self._clients.clear()
            self._clients.add(client)
        answer = self.policy.admit(
            Request(self._none, account=client, time=time.monotonic()), self._log
        )
        return None if answer.all else max(answer.wait, 1e-3)
