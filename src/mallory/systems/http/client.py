"""The HTTP exchange under every protocol: one pooled ``httpx`` client, timeouts, retries
within a budget, ``Retry-After``, a client-side rate limit, and errors that name the request.

::

    request ──► rate limit (TokenBucket: reserve a token, then wait)
            ──► httpx (connection pool; connect and read timeouts)
            ──► 2xx: decode ── Malformed ──┐
                429, 5xx ──────────────────┤ retried after Retry-After or backoff,
                timeout, connection error ─┘ within retries per request and retry_budget
                403, or 429 past them: Refused (the system refusing this client)
                other status: SystemFailure at once
"""

from __future__ import annotations

import email.utils
import json
import math
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import httpx

from mallory.access.policies import TokenBucket
from mallory.errors import InputError, SystemFailure
from mallory.systems.http.answers import Malformed

T = TypeVar("T")

MAX_RETRY_AFTER = 60.0
"""The longest ``Retry-After`` (seconds) the client waits; a longer one is a failure."""
MAX_BACKOFF = 30.0
"""The longest pause (seconds) between two tries when the server names none."""
EXCERPT = 160
"""Characters of an answer's body quoted in an error."""
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
MISSING_STATUS = frozenset({404, 405, 501})  # an optional endpoint the server does not have
NO_DELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Handler(Protocol):
    """A plain function that answers a request: the transport seam for tests (wrapped in an
    ``httpx.MockTransport``). It may raise ``httpx.ReadTimeout``, ``httpx.ConnectError``..."""

    def __call__(self, request: httpx.Request) -> httpx.Response: ...


Transport = httpx.BaseTransport | Handler
"""What sends requests: any ``httpx`` transport, or a plain :class:`Handler` function."""


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date); None if absent
    or unreadable. Fractions of a second are accepted."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = datetime.now(UTC).timestamp() if now is None else now
        seconds = when.timestamp() - current
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def excerpt(data: bytes) -> str:
    """What a body says, briefly: an ``{"error": ...}`` message, or its start."""
    try:
        answer = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("error"), str | int | float):
        text = str(answer["error"])
    else:
        text = " ".join(data[: EXCERPT * 4].decode("utf-8", "replace").split())
    if not text:
        return "an empty body"
    return repr(text[:EXCERPT] + ("…" if len(text) > EXCERPT else ""))


def base_url(url: object) -> str:
    """``url`` without a trailing slash, checked to be http(s) with a host."""
    parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(
            f"HttpModel needs an http:// or https:// URL with a host; got {url!r}. "
            "Give the API's base URL, e.g. http://127.0.0.1:8000."
        )
    return str(url).rstrip("/")


class Refused(SystemFailure):
    """The API refused a request: 403, or 429 once the retries are spent. ``reason`` is what
    the API said (mallory serve: ``banned``, ``flagged by a detector``; ``rate limited`` for
    a 429). After the API has answered this client, it is the system refusing it (a ban, a
    detector, a rate limit), not a broken setup (:class:`~mallory.systems.http.HttpModel`
    then reports refused rows)."""

    def __init__(self, message: str, *, status: int, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def refusal_reason(status: int, data: bytes) -> str:
    """Why the API refused, from a JSON body like ``{"error": "refused: banned"}``."""
    try:
        said = json.loads(data).get("error", "")
    except (ValueError, AttributeError):
        said = ""
    if isinstance(said, str) and said.startswith("refused: "):
        return said.removeprefix("refused: ").split(";")[0].strip()
    return "rate limited" if status == 429 else f"refused by the API (HTTP {status})"


class Client:
    """Sends requests to ``base`` and decodes the answers, with retries (see the module).

    ``retries``: tries again per request at most; ``retry_budget``: retries over this
    client's life at most (None: no limit); ``backoff``: seconds before the first retry when
    the server names no ``Retry-After``, doubled for each one after. ``requests_sent`` counts
    every request (retries included), ``retries_made`` the retries among them.
    """

    def __init__(
        self,
        base: str,
        *,
        timeout: float,
        connect_timeout: float,
        retries: int,
        retry_budget: int | None,
        backoff: float,
        rate_limit: float | None,
        headers: Mapping[str, str],
        transport: Transport | None,
    ) -> None:
        self.base = base
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.retry_budget = retry_budget
        self.backoff = backoff
        self.requests_sent = 0
        self.retries_made = 0
        self.sleep: Callable[[float], None] = time.sleep
        self._bucket = None if rate_limit is None else TokenBucket(rate_limit)
        self._lock = threading.Lock()
        if transport is None:
            # small requests: httpcore writes the headers and the body apart, and Nagle's
            # algorithm would hold the body back until the server's delayed ACK (40 ms)
            transport = httpx.HTTPTransport(socket_options=[NO_DELAY])
        elif not isinstance(transport, httpx.BaseTransport):
            transport = httpx.MockTransport(transport)
        self._http = httpx.Client(
            transport=transport,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            headers={"Accept": "application/json", **headers},
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def _pace(self) -> None:
        """The client side of the rate limit: reserve a token, then wait until it is due."""
        if self._bucket is None:
            return
        with self._lock:
            wait = self._bucket.reserve("client", 1.0, time.monotonic())
        if wait > 0:
            self.sleep(wait)

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None,
        decode: Callable[[bytes], T],
        *,
        missing: Callable[[], T] | None = None,
    ) -> T:
        """The decoded answer to ``method path``, after retries; SystemFailure when there is
        none. With ``missing``, its value when the server does not have the endpoint (404,
        405, 501)."""
        url = self.base + path
        where = f"{method} {url}"
        headers = {"Content-Type": "application/json"} if body is not None else {}
        attempt = 0
        while True:
            self._pace()
            with self._lock:
                self.requests_sent += 1
            wait: float | None = None
            status, data = 0, b""
            try:
                response = self._http.request(method, url, content=body, headers=headers)
            except (httpx.TimeoutException, TimeoutError) as error:
                what = self._timeout_text(error)
            except (httpx.RequestError, OSError) as error:
                what = f"the connection failed ({type(error).__name__}: {error})"
            else:
                status, data = response.status_code, response.content
                if 200 <= status < 300:
                    try:
                        return decode(data)
                    except Malformed as bad:
                        what = f"HTTP {status} with a malformed answer: {bad}; the body: "
                        what += excerpt(data)
                elif missing is not None and status in MISSING_STATUS:
                    return missing()
                elif status in RETRY_STATUS:
                    what = f"HTTP {status}: {excerpt(data)}"
                    wait = retry_after_seconds(response.headers.get("retry-after"))
                    if wait is not None and wait > MAX_RETRY_AFTER:
                        raise (Refused if status == 429 else SystemFailure)(
                            f"{where} answered {what}, and asked to wait {wait:g} s before trying "
                            f"again: more than the {MAX_RETRY_AFTER:g} s this client waits. Lower "
                            "rate_limit, or try later.",
                            **_refusal(status, data),
                        )
                else:
                    raise (Refused if status == 403 else SystemFailure)(
                        f"{where} was refused: HTTP {status}: {excerpt(data)}."
                        f"{_hint(status, response)}",
                        **_refusal(status, data),
                    )
            if attempt >= self.retries:
                tries = f"{attempt + 1} attempt{'s' * (attempt > 0)}"
                message = (
                    f"{where} failed after {tries}: {what}. Check that the API is up and speaks "
                    "the protocol given, or raise timeout/retries."
                )
                if status == 429:
                    raise Refused(message, **_refusal(status, data))
                raise SystemFailure(message)
            with self._lock:
                spent = self.retry_budget is not None and self.retries_made >= self.retry_budget
                if not spent:
                    self.retries_made += 1
            if spent:
                raise SystemFailure(
                    f"{where} failed: {what}. The retry budget of {self.retry_budget} retries "
                    "is spent: the API failed too often. Check it, or raise retry_budget."
                )
            attempt += 1
            self.sleep(
                wait if wait is not None else min(self.backoff * 2 ** (attempt - 1), MAX_BACKOFF)
            )

    def _timeout_text(self, error: Exception) -> str:
        if isinstance(error, httpx.ConnectTimeout):
            return f"no connection within the connect timeout of {self.connect_timeout:g} s"
        if isinstance(error, httpx.ReadTimeout | TimeoutError):
            return f"no answer within the read timeout of {self.timeout:g} s"
        return f"timed out ({type(error).__name__}) after {self.timeout:g} s"


def _refusal(status: int, data: bytes) -> dict[str, Any]:
    """Refused's own arguments (none for a plain SystemFailure)."""
    if status in (403, 429):
        return {"status": status, "reason": refusal_reason(status, data)}
    return {}


def _hint(status: int, response: httpx.Response) -> str:
    if status == 413:
        return " Lower batch_size, or raise the server's limits."
    if status == 401:
        return " Check the credentials: token_env and headers."
    if status == 403:
        return (
            " Check the credentials (token_env and headers), or the API refuses this client "
            "(a ban, a detector)."
        )
    if status == 404:
        return " Check the URL, the protocol and model_name."
    if 300 <= status < 400:
        moved = response.headers.get("location")
        return f" The API moved{f' to {moved}' if moved else ''}: give that URL."
    if status == 400:
        return " The API rejected the request: check input_shape, the protocol and its options."
    return ""
