"""Serve any System as an HTTP prediction API: the black-box target of query attacks.

The server speaks the protocol of :mod:`mallory.systems.http` (``GET /info``,
``POST /predict``), so :class:`~mallory.systems.http.HttpModel` attacks it over the network
exactly as it would attack a deployed API, and the Open Inference Protocol V2 of KServe and
Triton (:mod:`mallory.serve.v2`); ``GET /openapi.json`` describes both. It shows only the
chosen ``exposure`` (logits, all scores, the top k, or the label) and never more: a label
server puts no score in any answer, header or error.

>>> from mallory.zoo import load_model
>>> with serve(load_model("digits-mlp"), exposure="label") as server:  # doctest: +SKIP
...     remote = HttpModel(server.url)

It runs on uvicorn and Starlette, hardened for attackers (:mod:`mallory.serve.limits`): a
request's head must arrive within ``read_timeout`` seconds and hold at most 16 KiB (431
beyond), and so must its body, whose size is checked against ``max_body_bytes`` before it is
read and whose nesting depth is checked before it is parsed (413 and 400); a batch over
``max_batch`` is 413; inputs of the wrong shape, NaN or outside the bounds 400; a client over
its ``rate_limit`` 429 with ``Retry-After``; an unknown path 404, a wrong method 405 with
``Allow``. Every error carries ``{"error": "what was wrong"}``, and no header names the
server's software. With ``query_log``, every request is appended to that file as one JSON
line (time, client, method, path, inputs, status, seconds): the query stream a defender
would watch.

The server listens on loopback only unless ``allow_remote=True``: a security tool must not
expose a model to the network by accident.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

import torch
import uvicorn

from mallory.errors import InputError, bad_param
from mallory.params import Boolean, Instance, Interval, Options, OrNone, Text, check_fields, param
from mallory.serve.app import ServeApp, build_app
from mallory.serve.connection import protocol_for
from mallory.serve.limits import DEFAULT_MAX_BATCH, DEFAULT_READ_TIMEOUT, Limits
from mallory.serve.protocol import Model
from mallory.systems.base import TOP_K, System
from mallory.threat import Exposure

__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_READ_TIMEOUT",
    "ServeSettings",
    "Server",
    "check_host",
    "serve",
    "serve_forever",
]

_START_SECONDS = 30.0  # how long serve() waits for the server thread to listen
_GRACE_SECONDS = 1  # how long close() lets requests in flight finish


def check_host(host: str, allow_remote: bool = False) -> None:
    """Refuse a host that is not a loopback address unless ``allow_remote``."""
    if allow_remote or host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise InputError(
            f"Refusing to serve on {host!r}: it is not a loopback address, so anyone who can "
            "reach this machine could query the model. Serve on 127.0.0.1 (the default), or "
            "pass allow_remote=True (--allow-remote) if exposing it is what you want."
        )


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, stopped at once by :meth:`stop` rather than at its next 0.1 s tick."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864_000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)

    def stop(self) -> None:
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed already
                loop.call_soon_threadsafe(wake.set)


class Server:
    """A running prediction server: ``url``, ``port``; ``close()`` stops it (or use ``with``)."""

    def __init__(self, app: ServeApp, listener: socket.socket, log: IO[str] | None) -> None:
        self._app = app
        self._listener = listener
        self._log = log
        self._thread: threading.Thread | None = None
        self._closed = False
        self.exposure = app.model.exposure
        self.top_k = app.model.top_k
        host, port = listener.getsockname()[:2]
        self.host = str(host)
        self.port = int(port)
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}"
        config = uvicorn.Config(
            app,
            http=protocol_for(app.limits),
            ws="none",
            lifespan="off",
            loop="asyncio",
            interface="asgi3",
            log_config=None,
            log_level="critical",  # the query log records requests; uvicorn stays quiet
            access_log=False,
            server_header=False,  # no banner naming the software and its version
            proxy_headers=False,  # X-Forwarded-For must not choose the rate limit's account
            timeout_keep_alive=5,
            timeout_graceful_shutdown=_GRACE_SECONDS,
            h11_max_incomplete_event_size=app.limits.max_header_bytes,
        )
        self._uvicorn = _Uvicorn(config)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"Server({self.url}, exposure={self.exposure.value!r}, {state})"

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=self._uvicorn.run,
            kwargs={"sockets": [self._listener]},
            name=f"mallory-serve:{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + _START_SECONDS
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise InputError(f"The server at {self.url} did not start.")
            time.sleep(0.002)

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (Ctrl-C or SIGTERM), then close."""
        try:
            self._uvicorn.run(sockets=[self._listener])
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Stop listening and release the port (and the query log). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._uvicorn.stop()
            self._thread.join()
        self._listener.close()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every answer waits for the client's delayed ACK (40 ms)
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(2048)
    except OSError as error:
        listener.close()
        raise InputError(
            f"Cannot listen on {host}:{port}: {error}. Pick another port (0 picks a free one)."
        ) from None
    return listener


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    """How :func:`serve` serves a system: where it listens, what an answer shows and the limits
    a request meets (the arguments of :func:`serve`, described there)."""

    host: str = param(Text(), "127.0.0.1", help="the address to listen on")
    port: int = param(
        Interval(0, 65535, integral=True, note="0: any free port"), 0, help="the port"
    )
    exposure: Exposure = param(
        Options(Exposure), Exposure.SCORES, help="what an answer shows: never more"
    )
    top_k: int | None = param(TOP_K, None, help="classes a top-k answer shows")
    rate_limit: float | None = param(
        OrNone(Interval(low=0.0, low_open=True, note="requests per second")),
        None,
        help="requests per second per client (None: no limit)",
    )
    max_batch: int = param(
        Interval(low=1, integral=True), DEFAULT_MAX_BATCH, help="inputs per request at most"
    )
    max_body_bytes: int | None = param(
        OrNone(Interval(low=1, integral=True), "for room for max_batch inputs"),
        None,
        help="the largest request body",
    )
    read_timeout: float = param(
        Interval(low=0.0, low_open=True, note="seconds"),
        DEFAULT_READ_TIMEOUT,
        help="seconds to send a request's head, and again its body",
    )
    query_log: str | Path | None = param(
        OrNone(Instance((str, Path), "a file path")), None, help="where every request is logged"
    )
    allow_remote: bool = param(Boolean(), False, help="listen on a non-loopback address")
    dtype: torch.dtype = param(
        Instance(torch.dtype, "a torch.dtype"), torch.float32, help="the inputs' dtype"
    )

    def __post_init__(self) -> None:
        check_fields(self, "serve")
        if self.exposure is not Exposure.TOP_K and self.top_k is not None:
            raise InputError(
                f"The 'top_k' parameter of serve is only meaningful with exposure='top-k'; got "
                f"top_k={self.top_k!r} with exposure={self.exposure.value!r}. Drop top_k or set "
                "exposure='top-k'."
            )


def _build(system: System, settings: ServeSettings) -> Server:
    owner = "serve"
    if not isinstance(system, System):
        raise InputError(
            f"serve needs a mallory System; got {type(system).__name__}. Wrap the model in one "
            "of mallory.systems (TorchModel, SklearnModel, ...)."
        )
    shown, top_k = settings.exposure, settings.top_k
    if shown.richness > system.exposes.richness:
        raise InputError(
            f"Cannot serve {system.name!r} with exposure {shown.value!r}: it answers with "
            f"{system.exposes.value!r} at most. Choose an exposure no richer than that."
        )
    classes = system.num_classes
    if shown is Exposure.TOP_K and (top_k is None or top_k > classes):
        raise bad_param(owner, "top_k", f"an int in 1..{classes} with exposure 'top-k'", top_k)
    host, port = settings.host, settings.port
    check_host(host, settings.allow_remote)
    max_batch, rate_limit, query_log = settings.max_batch, settings.rate_limit, settings.query_log
    limits = Limits.for_input(
        tuple(system.input_shape),
        max_batch=max_batch,
        max_body_bytes=settings.max_body_bytes,
        read_timeout=settings.read_timeout,
    )
    model = Model(system, exposure=shown, top_k=top_k, limits=limits, dtype=settings.dtype)
    listener = _listen(host, port)
    log: IO[str] | None = None
    if query_log is not None:
        try:
            Path(query_log).parent.mkdir(parents=True, exist_ok=True)
            log = open(query_log, "a", encoding="utf-8")  # noqa: SIM115 - closed by Server.close
        except OSError as error:
            listener.close()
            raise InputError(f"Cannot write the query log {query_log}: {error}") from None
    app = build_app(model, rate_limit=rate_limit, query_log=log)
    return Server(app, listener, log)


def serve(
    system: System,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    exposure: Exposure | str = Exposure.SCORES,
    top_k: int | None = None,
    rate_limit: float | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_body_bytes: int | None = None,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    query_log: str | Path | None = None,
    allow_remote: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Server:
    """Serve ``system`` over HTTP from a background (daemon) thread; returns the running Server.

    Args:
        system: what answers; its ``forward`` computes every answer, one batch at a time, on
            a worker thread.
        host: the address to listen on; loopback only unless ``allow_remote``.
        port: the port; 0 picks a free one (read it from ``Server.port`` or ``Server.url``).
        exposure: what an answer shows: ``"logits"``, ``"scores"`` (probabilities),
            ``"top-k"`` (the ``top_k`` largest probabilities and their classes) or
            ``"label"``; never richer than ``system.exposes``.
        top_k: how many classes a top-k answer shows (only with ``exposure="top-k"``).
        rate_limit: requests per second each client address may send (a token bucket holding
            ``max(1, rate_limit)`` requests); beyond it the answer is 429 with Retry-After.
        max_batch: the most inputs one request may carry (413 beyond).
        max_body_bytes: the largest request body (413 beyond); by default room for
            ``max_batch`` inputs of 32 bytes per number, plus 64 KiB.
        read_timeout: seconds a client may take to send a request's head, and again its body
            (then 408, and the connection is closed).
        query_log: a file to which every request is appended as one JSON line.
        allow_remote: listen on a non-loopback address (anyone reaching it may query).
        dtype: the dtype of the inputs handed to ``system.forward``.
    """
    settings = ServeSettings(
        host=host,
        port=port,
        exposure=cast(Exposure, exposure),  # ServeSettings converts a string
        top_k=top_k,
        rate_limit=rate_limit,
        max_batch=max_batch,
        max_body_bytes=max_body_bytes,
        read_timeout=read_timeout,
        query_log=query_log,
        allow_remote=allow_remote,
        dtype=dtype,
    )
    server = _build(system, settings)
    server._start()
    return server


def serve_forever(
    system: System,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    exposure: Exposure | str = Exposure.SCORES,
    top_k: int | None = None,
    rate_limit: float | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_body_bytes: int | None = None,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    query_log: str | Path | None = None,
    allow_remote: bool = False,
    dtype: torch.dtype = torch.float32,
    ready: Callable[[Server], None] | None = None,
) -> None:
    """Like :func:`serve`, but serves in this thread until Ctrl-C, then closes cleanly.

    ``ready`` is called with the Server once it listens (to print its URL, say).
    """
    settings = ServeSettings(
        host=host,
        port=port,
        exposure=cast(Exposure, exposure),  # ServeSettings converts a string
        top_k=top_k,
        rate_limit=rate_limit,
        max_batch=max_batch,
        max_body_bytes=max_body_bytes,
        read_timeout=read_timeout,
        query_log=query_log,
        allow_remote=allow_remote,
        dtype=dtype,
    )
    server = _build(system, settings)
    try:
        if ready is not None:
            ready(server)
    except BaseException:
        server.close()
        raise
    server.serve_forever()
