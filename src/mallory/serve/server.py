"""Serve any System as an HTTP prediction API: the black-box target of query attacks.

The server speaks the protocol of :mod:`mallory.systems.http` (``GET /info``,
``POST /predict``), so :class:`~mallory.systems.http.HttpModel` attacks it over the network
exactly as it would attack a deployed API. It shows only the chosen ``exposure`` (logits, all
scores, the top k, or the label) and never more.

>>> from mallory.zoo import load_model
>>> with serve(load_model("digits-mlp"), exposure="label") as server:  # doctest: +SKIP
...     remote = HttpModel(server.url)

Requests are checked before the model sees them: a body over ``max_body_bytes`` or a batch
over ``max_batch`` is answered ``413``; a body that is not JSON, inputs of the wrong shape, NaN
or outside the bounds ``400``; a client over its ``rate_limit`` ``429`` with ``Retry-After``.
Errors carry ``{"error": "what was wrong"}``. With ``query_log``, every request is appended
to that file as one JSON line (time, client, method, path, inputs, status, seconds): the
query stream a defender would watch.

The server listens on loopback only unless ``allow_remote=True``: a security tool must not
expose a model to the network by accident.
"""

from __future__ import annotations

import ipaddress
import json
import math
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, TypeGuard

import numpy as np
import torch
from torch import Tensor

from mallory.errors import InputError, bad_param
from mallory.systems.base import Output, System
from mallory.systems.http import ANSWER_KEYS, INFO_PATH, PREDICT_PATH
from mallory.threat import Exposure

__all__ = ["Server", "check_host", "serve", "serve_forever"]

DEFAULT_MAX_BATCH = 256
_BYTES_PER_NUMBER = 32  # a float in JSON, generously: "0.123456789012345678, "
_BODY_SLACK = 64 * 1024
_BOUNDS_TOLERANCE = 1e-6  # as the Oracle's
_POLL_SECONDS = 0.05  # how soon close() stops the serving thread
_DRAIN_BYTES = 16 << 20  # an oversized body up to this much too large is read and dropped


class _Refusal(Exception):
    """A request answered with an error status."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        inputs: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        self.inputs = inputs  # how many inputs the request carried, when that is known


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


class _RateLimiter:
    """A token bucket per client address: ``rate`` requests per second, bursts of ``rate``."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def admit(self, client: str) -> float | None:
        """None if the request may go on, else the seconds until it may."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                return None
            self._buckets[client] = (tokens, now)
            if len(self._buckets) > 10_000:  # forget clients whose bucket has refilled
                full = [c for c, (t, s) in self._buckets.items() if t + (now - s) * self.rate >= 1]
                for c in full:
                    del self._buckets[c]
            return (1.0 - tokens) / self.rate


class _App:
    """What the server answers, apart from the HTTP plumbing."""

    def __init__(
        self,
        system: System,
        *,
        exposure: Exposure,
        top_k: int | None,
        rate_limit: float | None,
        max_batch: int,
        max_body_bytes: int,
        query_log: IO[str] | None,
        dtype: torch.dtype,
    ) -> None:
        self.system = system
        self.exposure = exposure
        self.top_k = top_k
        self.limiter = _RateLimiter(rate_limit) if rate_limit is not None else None
        self.max_batch = max_batch
        self.max_body_bytes = max_body_bytes
        self.query_log = query_log
        self.dtype = dtype
        self.features = math.prod(system.input_shape)
        self._model_lock = threading.Lock()
        self._log_lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        bounds = self.system.bounds.to_dict()
        return {
            "input_shape": list(self.system.input_shape),
            "num_classes": self.system.num_classes,
            "bounds": [bounds["lower"], bounds["upper"]],
            "exposure": self.exposure.value,
            "top_k": self.top_k,
            "class_names": list(self.system.class_names),
            "max_batch": self.max_batch,
            "deterministic": self.system.deterministic,
            "name": self.system.name,
        }

    def inputs(self, body: bytes) -> Tensor:
        """The checked batch of a ``/predict`` body, shaped ``(n, *input_shape)``."""
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise _Refusal(400, f"the body is not JSON: {error}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
            raise _Refusal(400, 'expected a JSON object {"inputs": [[x1, x2, ...], ...]}')
        rows = payload["inputs"]
        if len(rows) > self.max_batch:
            raise _Refusal(
                413,
                f"{len(rows)} inputs in one request; this server takes at most "
                f"{self.max_batch}: split the batch",
                inputs=len(rows),
            )
        shape = self.system.input_shape
        try:
            x = torch.from_numpy(np.array(rows, dtype=np.float64))
        except (TypeError, ValueError, OverflowError):
            raise _Refusal(
                400,
                f"inputs must be a list of rows of {self.features} numbers (each input of shape "
                f"{list(shape)}, flattened)",
                inputs=len(rows),
            ) from None
        if len(rows) == 0:
            return x.reshape(0, *shape).to(self.dtype)
        if tuple(x.shape[1:]) not in ((self.features,), shape):
            raise _Refusal(
                400,
                f"each input must hold {self.features} numbers (shape {list(shape)}, flattened); "
                f"got inputs of shape {list(x.shape[1:])}",
                inputs=len(rows),
            )
        x = x.reshape(len(x), *shape)
        finite = torch.isfinite(x).flatten(1).all(1)
        if not bool(finite.all()):
            raise _Refusal(
                400,
                f"{int((~finite).sum())} of {len(x)} inputs hold NaN or infinity",
                inputs=len(x),
            )
        outside = self.system.bounds.outside(x, tol=_BOUNDS_TOLERANCE)
        if bool(outside.any()):
            bounds = self.system.bounds.to_dict()
            raise _Refusal(
                400,
                f"{int(outside.sum())} of {len(x)} inputs leave the bounds "
                f"[{bounds['lower']}, {bounds['upper']}]",
                inputs=len(x),
            )
        return x.to(self.dtype)

    def predict(self, x: Tensor) -> dict[str, Any]:
        """The answer to a checked batch, showing only what the exposure allows."""
        system = self.system
        with self._model_lock:
            out = system.forward(x)
        if not isinstance(out, Tensor) or out.shape != (len(x), system.num_classes):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise RuntimeError(f"the model returned {got}, not scores of shape {len(x)} x C")
        if not bool(torch.isfinite(out).all()):
            raise RuntimeError("the model returned NaN or infinite scores")
        out = out.detach().cpu()
        key = ANSWER_KEYS[self.exposure]
        if self.exposure is Exposure.LOGITS:
            logits = out if system.output is Output.LOGITS else out.clamp_min(1e-30).log()
            return {key: logits.tolist()}
        probs = out.softmax(1) if system.output is Output.LOGITS else out
        if self.exposure is Exposure.SCORES:
            return {key: probs.tolist()}
        if self.exposure is Exposure.LABEL:
            return {key: probs.argmax(1).tolist()}
        assert self.top_k is not None  # checked by serve()
        top = probs.topk(self.top_k, dim=1)
        return {key: {"indices": top.indices.tolist(), "scores": top.values.tolist()}}

    def log(self, entry: dict[str, Any]) -> None:
        if self.query_log is None:
            return
        line = json.dumps(entry) + "\n"
        with self._log_lock:
            self.query_log.write(line)
            self.query_log.flush()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: _App) -> None:
        self.app = app
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away is no error of the server's; anything else is printed."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server_version = "mallory-serve"

    @property
    def app(self) -> _App:
        server = self.server
        assert isinstance(server, _HTTPServer)
        return server.app

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the query log, not stderr, records requests."""

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        started = time.perf_counter()
        app = self.app
        client = str(self.client_address[0])
        path = self.path.split("?", 1)[0]
        inputs: int | None = None
        status = 500
        try:
            if app.limiter is not None:
                wait = app.limiter.admit(client)
                if wait is not None:
                    seconds = max(1, math.ceil(wait))
                    raise _Refusal(
                        429,
                        f"more than {app.limiter.rate:g} requests per second; retry after "
                        f"{seconds} s",
                        {"Retry-After": str(seconds)},
                    )
            routes = {("GET", INFO_PATH), ("POST", PREDICT_PATH)}
            if (method, path) not in routes:
                allowed = [m for m, p in routes if p == path]
                if allowed:
                    raise _Refusal(405, f"{path} takes {allowed[0]}", {"Allow": allowed[0]})
                raise _Refusal(404, f"no {path}; use GET {INFO_PATH} or POST {PREDICT_PATH}")
            if method == "GET":
                answer = app.info()
            else:
                x = app.inputs(self._body())
                inputs = len(x)
                try:
                    answer = app.predict(x)
                except Exception as error:
                    raise _Refusal(
                        500, f"the model failed: {type(error).__name__}: {error}"
                    ) from error
            status = 200
            self._send(200, answer)
        except _Refusal as refusal:
            status = refusal.status
            inputs = refusal.inputs if inputs is None else inputs
            self._send(refusal.status, {"error": str(refusal)}, refusal.headers)
        finally:
            app.log(
                {
                    "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "client": client,
                    "method": method,
                    "path": path,
                    "inputs": inputs,
                    "status": status,
                    "seconds": round(time.perf_counter() - started, 6),
                }
            )

    def _body(self) -> bytes:
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise _Refusal(411, "a POST needs a Content-Length")
        try:
            length = int(length_text)
        except ValueError:
            raise _Refusal(400, f"Content-Length {length_text!r} is not a number") from None
        if length < 0:
            raise _Refusal(400, f"Content-Length {length} is negative")
        limit = self.app.max_body_bytes
        if length > limit:
            if length - limit <= _DRAIN_BYTES:
                # read it, so that closing the socket does not reset the connection before the
                # client has read the answer
                left = length
                while left > 0:
                    chunk = self.rfile.read(min(left, 1 << 16))
                    if not chunk:
                        break
                    left -= len(chunk)
            self.close_connection = True
            raise _Refusal(413, f"the body has {length} bytes; this server takes at most {limit}")
        return self.rfile.read(length)

    def _send(self, status: int, answer: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(answer, allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


class Server:
    """A running prediction server: ``url``, ``port``; ``close()`` stops it (or use ``with``)."""

    def __init__(self, httpd: _HTTPServer, log: IO[str] | None) -> None:
        self._httpd = httpd
        self._log = log
        self._thread: threading.Thread | None = None
        self._closed = False
        app = httpd.app
        self.exposure = app.exposure
        self.top_k = app.top_k
        host, port = httpd.server_address[:2]
        self.host = str(host)
        self.port = int(port)
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}"

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"Server({self.url}, exposure={self.exposure.value!r}, {state})"

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": _POLL_SECONDS},
            name=f"mallory-serve:{self.port}",
            daemon=True,
        )
        self._thread.start()

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (Ctrl-C), then close."""
        try:
            self._httpd.serve_forever()
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
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _count(value: Any, least: int) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _build(
    system: System,
    *,
    host: str,
    port: int,
    exposure: Exposure | str,
    top_k: int | None,
    rate_limit: float | None,
    max_batch: int,
    max_body_bytes: int | None,
    query_log: str | Path | None,
    allow_remote: bool,
    dtype: torch.dtype,
) -> Server:
    owner = "serve"
    if not isinstance(system, System):
        raise InputError(
            f"serve needs a mallory System; got {type(system).__name__}. Wrap the model in one "
            "of mallory.systems (TorchModel, SklearnModel, ...)."
        )
    try:
        shown = Exposure(exposure)
    except ValueError:
        choices = ", ".join(repr(e.value) for e in Exposure)
        raise bad_param(owner, "exposure", f"one of {choices}", exposure) from None
    if shown.richness > system.exposes.richness:
        raise InputError(
            f"Cannot serve {system.name!r} with exposure {shown.value!r}: it answers with "
            f"{system.exposes.value!r} at most. Choose an exposure no richer than that."
        )
    classes = system.num_classes
    if shown is Exposure.TOP_K:
        if not _count(top_k, 1) or top_k > classes:
            raise bad_param(owner, "top_k", f"an int in 1..{classes} with exposure 'top-k'", top_k)
    elif top_k is not None:
        raise InputError(
            f"The 'top_k' parameter of serve is only meaningful with exposure='top-k'; got "
            f"top_k={top_k!r} with exposure={shown.value!r}. Drop top_k or set exposure='top-k'."
        )
    if rate_limit is not None and (
        isinstance(rate_limit, bool)
        or not isinstance(rate_limit, int | float)
        or not math.isfinite(rate_limit)
        or rate_limit <= 0
    ):
        raise bad_param(owner, "rate_limit", "requests per second > 0, or None", rate_limit)
    if not _count(max_batch, 1):
        raise bad_param(owner, "max_batch", "an int >= 1", max_batch)
    features = math.prod(system.input_shape)
    if max_body_bytes is None:
        max_body_bytes = _BODY_SLACK + max_batch * features * _BYTES_PER_NUMBER
    if not _count(max_body_bytes, 1):
        raise bad_param(owner, "max_body_bytes", "an int >= 1, or None", max_body_bytes)
    if not _count(port, 0) or port > 65535:
        raise bad_param(owner, "port", "an int in 0..65535 (0: any free port)", port)
    check_host(host, allow_remote)
    log: IO[str] | None = None
    if query_log is not None:
        try:
            Path(query_log).parent.mkdir(parents=True, exist_ok=True)
            log = open(query_log, "a", encoding="utf-8")  # noqa: SIM115 - closed by Server.close
        except OSError as error:
            raise InputError(f"Cannot write the query log {query_log}: {error}") from None
    app = _App(
        system,
        exposure=shown,
        top_k=top_k if shown is Exposure.TOP_K else None,
        rate_limit=float(rate_limit) if rate_limit is not None else None,
        max_batch=max_batch,
        max_body_bytes=max_body_bytes,
        query_log=log,
        dtype=dtype,
    )
    kind = _HTTPServer6 if ":" in host else _HTTPServer
    try:
        httpd = kind((host, port), app)
    except OSError as error:
        if log is not None:
            log.close()
        raise InputError(
            f"Cannot listen on {host}:{port}: {error}. Pick another port (0 picks a free one)."
        ) from None
    return Server(httpd, log)


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
    query_log: str | Path | None = None,
    allow_remote: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Server:
    """Serve ``system`` over HTTP from a background (daemon) thread; returns the running Server.

    Args:
        system: what answers; its ``forward`` computes every answer.
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
        query_log: a file to which every request is appended as one JSON line.
        allow_remote: listen on a non-loopback address (anyone reaching it may query).
        dtype: the dtype of the inputs handed to ``system.forward``.
    """
    server = _build(
        system,
        host=host,
        port=port,
        exposure=exposure,
        top_k=top_k,
        rate_limit=rate_limit,
        max_batch=max_batch,
        max_body_bytes=max_body_bytes,
        query_log=query_log,
        allow_remote=allow_remote,
        dtype=dtype,
    )
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
    query_log: str | Path | None = None,
    allow_remote: bool = False,
    dtype: torch.dtype = torch.float32,
    ready: Callable[[Server], None] | None = None,
) -> None:
    """Like :func:`serve`, but serves in this thread until Ctrl-C, then closes cleanly.

    ``ready`` is called with the Server once it listens (to print its URL, say).
    """
    server = _build(
        system,
        host=host,
        port=port,
        exposure=exposure,
        top_k=top_k,
        rate_limit=rate_limit,
        max_batch=max_batch,
        max_body_bytes=max_body_bytes,
        query_log=query_log,
        allow_remote=allow_remote,
        dtype=dtype,
    )
    try:
        if ready is not None:
            ready(server)
    except BaseException:
        server.close()
        raise
    server.serve_forever()
