"""The ASGI application: routes of both protocols on Starlette, and the layer around them.

The outer layer sees every request first and last: it refuses a head over the size limit
(431) and a client over its rate limit (429 with ``Retry-After``), turns anything unexpected
into a JSON 500 without a traceback, and appends the request to the query log. Inside,
Starlette routes; its 404 and 405 (with ``Allow``) come back as JSON too. A system behind
admission policies (a detector, a ban: :mod:`mallory.serve.admission`) has them applied to
each parsed batch, the client's address as the account (403, or 429 for a rate limit).

A POST's body is read with a deadline and a size limit before anything else looks at it,
and the model's work (parsing, checks, the forward pass, the answer's JSON) runs on a
worker thread, one request at a time, so the event loop keeps serving other connections
while a slow model thinks. At most ``max_pending`` requests wait for it; more get 503.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from datetime import UTC, datetime
from typing import IO, Any

import anyio
import anyio.to_thread
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from mallory.serve import native, openapi, v2
from mallory.serve.admission import ClientPolicies
from mallory.serve.limits import ClientRateLimit
from mallory.serve.protocol import Model, Refusal, Shown, read_json

__all__ = ["build_app", "error_body"]

logger = logging.getLogger("mallory.serve")

_DRAIN_BYTES = 16 << 20  # an oversized body up to this much too large is read and dropped
_CLOSE = {"Connection": "close"}
_JSON = "application/json"


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def error_body(message: str) -> bytes:
    """The body of every error: ``{"error": message}``."""
    return _dumps({"error": message})


def _json(status: int, value: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(_dumps(value), status, headers, media_type=_JSON)


def _refused(refusal: Refusal) -> Response:
    return Response(error_body(str(refusal)), refusal.status, refusal.headers, media_type=_JSON)


class _Exchange:
    """What the outer layer learns about one request from the inside (for the query log)."""

    __slots__ = ("inputs",)

    def __init__(self) -> None:
        self.inputs: int | None = None


Handler = Callable[[Request], Awaitable[Response]]


class ServeApp:
    """The served model as an ASGI application."""

    def __init__(
        self, model: Model, *, rate_limit: float | None, query_log: IO[str] | None
    ) -> None:
        self.model = model
        self.limits = model.limits
        self.name = v2.model_name(model.system.name)
        self.limiter = ClientRateLimit(rate_limit) if rate_limit is not None else None
        policies = tuple(model.system.policies)
        self.policies = ClientPolicies(policies) if policies else None
        self.query_log = query_log
        self.pending = 0
        self._worker: anyio.CapacityLimiter | None = None
        self._document = _dumps(openapi.document(model))
        self._info = _dumps(native.info(model))
        self._metadata = _dumps(v2.metadata(model, self.name))
        get, post = ["GET"], ["POST"]
        self.router = Starlette(
            routes=[
                Route(native.INFO_PATH, self._static(self._info), methods=get),
                Route(native.PREDICT_PATH, self._predict, methods=post),
                Route("/v2/health/live", self._static(_dumps({"live": True})), methods=get),
                Route("/v2/health/ready", self._static(_dumps({"ready": True})), methods=get),
                Route("/v2/models/{name}", self._model_static(self._metadata), methods=get),
                Route(
                    "/v2/models/{name}/ready",
                    self._model_static(_dumps({"name": self.name, "ready": True})),
                    methods=get,
                ),
                Route("/v2/models/{name}/infer", self._infer, methods=post),
                Route("/openapi.json", self._static(self._document), methods=get),
            ],
            exception_handlers={HTTPException: self._http_error, Exception: self._crash},
        )

    # ------------------------------------------------------------ the outer layer
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no websockets, no lifespan
        started = time.perf_counter()
        exchange = _Exchange()
        scope["mallory"] = exchange
        status = 500
        response_started = False

        async def sending(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
            await send(message)

        try:
            refusal = self._admit(scope)
            if refusal is not None:
                await _refused(refusal)(scope, receive, sending)
            else:
                await self.router(scope, receive, sending)
        except Exception:
            logger.exception("mallory serve failed on %s %s", scope["method"], scope["path"])
            if not response_started:
                response = Response(error_body("internal error"), 500, _CLOSE, media_type=_JSON)
                await response(scope, receive, sending)
        finally:
            self._log(scope, status, exchange.inputs, time.perf_counter() - started)

    def _admit(self, scope: Scope) -> Refusal | None:
        head = len(scope["raw_path"]) + len(scope["query_string"])
        head += sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if head > self.limits.max_header_bytes:
            return Refusal(
                431,
                f"the request line and headers hold {head} bytes; this server takes at most "
                f"{self.limits.max_header_bytes}",
                _CLOSE,
            )
        if self.limiter is not None:
            client = scope["client"][0] if scope.get("client") else "unknown"
            wait = self.limiter.admit(client)
            if wait is not None:
                seconds = max(1, math.ceil(wait))
                return Refusal(
                    429,
                    f"more than {self.limiter.rate:g} requests per second; retry after {seconds} s",
                    {"Retry-After": str(seconds)},
                )
        return None

    def _log(self, scope: Scope, status: int, inputs: int | None, seconds: float) -> None:
        if self.query_log is None:
            return
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "client": scope["client"][0] if scope.get("client") else None,
            "method": scope["method"],
            "path": scope["path"],
            "inputs": inputs,
            "status": status,
            "seconds": round(seconds, 6),
        }
        self.query_log.write(json.dumps(entry) + "\n")
        self.query_log.flush()

    async def _http_error(self, request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        path = request.url.path
        if error.status_code == 404:
            message = (
                f"no {path[:200]}; this server answers GET {native.INFO_PATH}, POST "
                f"{native.PREDICT_PATH}, the Open Inference Protocol under /v2 (model "
                f"{self.name!r}), and GET /openapi.json"
            )
        elif error.status_code == 405:
            # Starlette lists the methods from a set: put them in a stable order
            methods = (error.headers or {}).get("Allow", "").split(", ")
            allowed = ", ".join(sorted(methods, key=lambda m: (m != "GET", m)))
            headers = {**(error.headers or {}), "Allow": allowed}
            return Response(error_body(f"{path} takes {allowed}"), 405, headers, media_type=_JSON)
        else:
            message = error.detail
        return Response(error_body(message), error.status_code, error.headers, media_type=_JSON)

    async def _crash(self, request: Request, error: Exception) -> Response:
        return Response(error_body("internal error"), 500, _CLOSE, media_type=_JSON)

    # ------------------------------------------------------------ routes
    @staticmethod
    def _static(body: bytes) -> Handler:
        async def answer(request: Request) -> Response:
            return Response(body, 200, media_type=_JSON)

        return answer

    def _model_static(self, body: bytes) -> Handler:
        async def answer(request: Request) -> Response:
            if request.path_params["name"] != self.name:
                return self._no_model(request.path_params["name"])
            return Response(body, 200, media_type=_JSON)

        return answer

    def _no_model(self, name: str) -> Response:
        return _json(404, {"error": f"no model {name[:64]!r}; this server has {self.name!r}"})

    async def _predict(self, request: Request) -> Response:
        model = self.model

        def work(body: bytes) -> bytes:
            x = native.inputs(read_json(body, self.limits.max_depth), model)
            request.scope["mallory"].inputs = len(x)
            self._police(request, x)
            return _dumps(native.answer(self._run(x)))

        return await self._compute(request, work)

    async def _infer(self, request: Request) -> Response:
        if request.path_params["name"] != self.name:
            return self._no_model(request.path_params["name"])
        model = self.model

        def work(body: bytes) -> bytes:
            infer = v2.infer_request(read_json(body, self.limits.max_depth), model)
            request.scope["mallory"].inputs = len(infer.x)
            self._police(request, infer.x)
            return _dumps(v2.answer(self._run(infer.x), infer, self.name, model))

        return await self._compute(request, work)

    def _police(self, request: Request, x: Any) -> None:
        """The system's own admission policies (on the worker thread: one request at a time)."""
        if self.policies is not None:
            client = request.client.host if request.client is not None else "unknown"
            self.policies.check(client, x)

    def _run(self, x: Any) -> Shown:
        try:
            return self.model.run(x)
        except Exception as error:
            # the operator sees what the model said; the client, what the exposure allows
            logger.warning(
                "the model failed on %d inputs: %s: %s", len(x), type(error).__name__, error
            )
            raise self.model.failure(error) from error

    async def _compute(self, request: Request, work: Callable[[bytes], bytes]) -> Response:
        """Read the body, then ``work`` on it on the worker thread; a Refusal is answered."""
        exchange: _Exchange = request.scope["mallory"]
        if self.pending >= self.limits.max_pending:
            return _refused(
                Refusal(
                    503,
                    f"{self.pending} requests are waiting for the model; retry after 1 s",
                    {"Retry-After": "1", **_CLOSE},
                )
            )
        self.pending += 1
        try:
            body = await self._body(request)
            if self._worker is None:
                self._worker = anyio.CapacityLimiter(1)
            answer = await anyio.to_thread.run_sync(work, body, limiter=self._worker)
            return Response(answer, 200, media_type=_JSON)
        except Refusal as refusal:
            if refusal.inputs is not None and exchange.inputs is None:
                exchange.inputs = refusal.inputs
            return _refused(refusal)
        except ClientDisconnect:
            return Response(b"", 400)  # nobody reads it; the query log shows the 400
        finally:
            self.pending -= 1

    async def _body(self, request: Request) -> bytes:
        """The body, if its declared length is within the limit and it all arrives in time."""
        limits = self.limits
        length_text = request.headers.get("content-length")
        if length_text is None or "transfer-encoding" in request.headers:
            raise Refusal(411, "a POST needs a Content-Length (and no Transfer-Encoding)", _CLOSE)
        if not length_text.isdigit():
            raise Refusal(400, f"Content-Length {length_text[:32]!r} is not a number", _CLOSE)
        length = int(length_text)
        if length > limits.max_body_bytes:
            if length - limits.max_body_bytes <= _DRAIN_BYTES:
                # read it, so that closing the socket does not reset the connection before the
                # client has read the answer
                with anyio.move_on_after(limits.read_timeout):
                    async with aclosing(request.stream()) as stream:
                        async for _ in stream:
                            pass
            raise Refusal(
                413,
                f"the body has {length} bytes; this server takes at most {limits.max_body_bytes}",
                _CLOSE,
            )
        chunks: list[bytes] = []
        got = 0
        try:
            with anyio.fail_after(limits.read_timeout):
                async with aclosing(request.stream()) as stream:
                    async for chunk in stream:
                        chunks.append(chunk)
                        got += len(chunk)
        except TimeoutError:
            raise Refusal(
                408,
                f"the body did not arrive within {limits.read_timeout:g} s: {got} of {length} "
                "bytes",
                _CLOSE,
            ) from None
        return b"".join(chunks)


def build_app(model: Model, *, rate_limit: float | None, query_log: IO[str] | None) -> ServeApp:
    """The ASGI application serving ``model``."""
    return ServeApp(model, rate_limit=rate_limit, query_log=query_log)
