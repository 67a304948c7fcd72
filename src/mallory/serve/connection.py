"""uvicorn's HTTP/1.1 connection (h11), with a deadline for the request head and JSON errors.

uvicorn answers a request it cannot parse with a plain-text 400 (an oversized head included),
and waits for a request's head for as long as the client cares to take. Here the head must
arrive within ``read_timeout`` seconds of the connection opening or of the previous answer
(a connection that sent part of a head gets a 408; one that sent nothing is closed, as
uvicorn closes idle keep-alive connections), a head over ``max_header_bytes`` is answered 431,
and every such answer is ``{"error": ...}``. The body's deadline is the application's
(:mod:`mallory.serve.app`), since the head alone says when a body is expected.
"""

from __future__ import annotations

import asyncio
import http
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from mallory.serve.app import error_body
from mallory.serve.limits import Limits

__all__ = ["protocol_for"]


class _Connection(h11.Connection):
    """h11's connection, remembering the protocol error that ended it."""

    error: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as error:
            self.error = error
            raise


def _raw_error(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 error answer that closes the connection."""
    body = error_body(message)
    reason = http.HTTPStatus(status).phrase
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class HardenedH11(H11Protocol):
    """One HTTP/1.1 connection under :class:`~mallory.serve.limits.Limits` (set per server by
    :func:`protocol_for`)."""

    limits: Limits

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.conn = self._connection = _Connection(h11.SERVER, self.limits.max_header_bytes)
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._answering():
            self._cancel_deadline()  # a head is in: the body's deadline is the app's

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self._answering():
            self._await_head()  # the next head, or the rest of a body nobody reads

    def send_400_response(self, msg: str) -> None:
        """Answer a head h11 could not parse: 431 when it is too large, else 400."""
        self._cancel_deadline()
        error = self._connection.error
        status = error.error_status_hint if error is not None else 400
        if status == 431:
            message = f"the request line and headers exceed {self.limits.max_header_bytes} bytes"
        else:
            reason = str(error)[:200] if error is not None else ""
            message = f"malformed HTTP request: {reason}" if reason else "malformed HTTP request"
        self.transport.write(_raw_error(status, message))
        self.transport.close()

    def _await_head(self) -> None:
        self._cancel_deadline()
        self._head_deadline = self.loop.call_later(self.limits.read_timeout, self._head_late)

    def _cancel_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _answering(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _head_late(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing() or self._answering():
            return
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            timeout = self.limits.read_timeout  # part of a head came: say why it is dropped
            message = f"the request line and headers did not arrive within {timeout:g} s"
            self.transport.write(_raw_error(408, message))
        self.transport.close()


def protocol_for(limits: Limits) -> type[HardenedH11]:
    """The connection class of a server with these limits."""
    return type("ServeConnection", (HardenedH11,), {"limits": limits})
