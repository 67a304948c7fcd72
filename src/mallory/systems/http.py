"""A model behind an HTTP prediction API, attacked as a black box.

The protocol
------------

:func:`mallory.serve.server.serve` speaks it; any server that speaks it can be attacked.

``GET /info`` answers ``200`` and a JSON object that describes the model::

    {"input_shape": [1, 28, 28], "num_classes": 10, "bounds": [0.0, 1.0],
     "exposure": "scores", "top_k": null, "class_names": ["0", "1", ...],
     "max_batch": 256, "deterministic": true, "name": "mnist-cnn"}

``bounds`` is ``[lower, upper]``, each a number or a nested list that broadcasts to
``input_shape``. ``exposure`` is ``"logits"``, ``"scores"``, ``"top-k"`` or ``"label"``;
``top_k`` is an int with ``"top-k"`` and ``null`` otherwise. ``class_names``, ``max_batch``
(the most inputs one request may carry), ``deterministic`` and ``name`` may be left out.

``POST /predict`` takes ``{"inputs": [[x1, x2, ...], ...]}``: one row per input, each input
flattened in C order to ``prod(input_shape)`` numbers. A ``200`` answer holds one entry per
input, and only what the exposure allows:

=========  ======================================================================
exposure   answer
=========  ======================================================================
logits     ``{"logits": [[z1, ..., zC], ...]}``
scores     ``{"scores": [[p1, ..., pC], ...]}`` (probabilities; each row sums to 1)
top-k      ``{"topk": {"indices": [[c1, ..., ck], ...], "scores": [[p1, ..., pk], ...]}}``
label      ``{"labels": [c, ...]}``
=========  ======================================================================

Any other status is an error, with ``{"error": "what was wrong"}`` as its body. ``429`` (too
many requests) and ``503`` may carry ``Retry-After`` (seconds, or an HTTP date).

What the client makes of the answers
------------------------------------

:class:`HttpModel` turns every answer into a row of ``num_classes`` scores, and its
``exposes`` says how much of that the server really showed, so that the
:class:`~mallory.access.oracle.Oracle` refuses threat models that grant more:

- ``logits`` and ``scores`` are passed on as they are (``output`` logits or probabilities);
- ``top-k`` becomes probabilities: the k shown classes keep their scores, and the mass left
  over, ``1 - sum(shown)``, is spread evenly over the hidden classes. No hidden class can
  then outrank a shown one (each hidden probability is at most the k-th shown one, and so is
  their mean), so the predicted label is the server's;
- ``label`` becomes one-hot scores.

Failures
--------

Connection errors, timeouts, ``429`` and ``5xx`` answers are retried ``retries`` times, after
``backoff * 2**attempt`` seconds, or after ``Retry-After`` when the server sends one (up to
:data:`MAX_RETRY_AFTER` seconds; a server that asks for longer is not waited for). Then, and
for any other status or a malformed answer (not JSON, missing keys, wrong shape, NaN,
labels out of range), a :class:`~mallory.errors.SystemFailure` says what happened.

The network is reached through a *transport*, a callable
``(method, path, body, timeout) -> (status, headers, body)``; tests plug in a plain function.
The default, :class:`HttpClientTransport`, uses the standard library only.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import math
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from mallory.errors import InputError, SystemFailure, bad_param
from mallory.systems.base import Bounds, Output, Stage, System
from mallory.threat import Exposure

INFO_PATH = "/info"
PREDICT_PATH = "/predict"
DEFAULT_BATCH = 256
"""Inputs per request when the server states no ``max_batch`` and none is given."""
MAX_RETRY_AFTER = 60.0
"""The longest ``Retry-After`` (seconds) the client waits; a longer one is a failure."""
ANSWER_KEYS = {
    Exposure.LOGITS: "logits",
    Exposure.SCORES: "scores",
    Exposure.TOP_K: "topk",
    Exposure.LABEL: "labels",
}
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_SUM_TOLERANCE = 1e-3

Headers = Mapping[str, str]


class Transport(Protocol):
    """Sends one request: ``(method, path, body or None, timeout in s) -> (status, headers,
    body)``. Raises ``OSError`` (``TimeoutError`` for a timeout) when no answer comes."""

    def __call__(
        self, method: str, path: str, body: bytes | None, timeout: float
    ) -> tuple[int, Headers, bytes]: ...


class HttpClientTransport:
    """The default transport: one ``http.client`` connection per request (http or https)."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(
                f"HttpModel needs an http:// or https:// URL with a host; got {url!r}. "
                "Give the server's base URL, e.g. http://127.0.0.1:8000."
            )
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port
        self.prefix = parts.path.rstrip("/")

    def __call__(
        self, method: str, path: str, body: bytes | None, timeout: float
    ) -> tuple[int, Headers, bytes]:
        kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        connection = kind(self.host, self.port, timeout=timeout)
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, self.prefix + path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            return response.status, dict(response.getheaders()), data
        finally:
            connection.close()


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


class HttpModel(System):
    """A classifier behind an HTTP prediction API (the protocol is in this module's docstring).

    The server's ``/info`` is read once, here: input shape, number of classes, bounds, class
    names and exposure come from it; ``input_shape`` (same number of features), ``bounds`` and
    ``class_names`` override it. The system has one stage, ``"model"``, that is not
    differentiable and has no surrogate: it is attacked with score-based, label-only or
    transfer threat models, and never with more than the server exposes.

    Args:
        url: the server's base URL, e.g. ``"http://127.0.0.1:8000"``.
        timeout: seconds to wait for a connection and for each read.
        retries: how many times a failed request is tried again (connection errors, timeouts,
            429 and 5xx answers) before a SystemFailure.
        backoff: seconds before the first retry; doubled for each one after.
        rate_limit: the most requests per second this client sends (None: as fast as it can).
        batch_size: inputs per request; the server's ``max_batch`` by default.
        transport: sends the requests (:class:`Transport`); HTTP over the network by default.

    ``requests_sent`` counts every HTTP request (``/info`` included, retries included) and
    ``retries_made`` the retries among them.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        rate_limit: float | None = None,
        batch_size: int | None = None,
        transport: Transport | None = None,
        input_shape: Sequence[int] | None = None,
        bounds: Bounds | tuple[Any, Any] | None = None,
        class_names: Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        owner = "HttpModel"
        if not isinstance(url, str) or not url:
            raise bad_param(owner, "url", "the server's base URL as a string", url)
        if not _positive(timeout):
            raise bad_param(owner, "timeout", "a number of seconds > 0", timeout)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise bad_param(owner, "retries", "an int >= 0", retries)
        if isinstance(backoff, bool) or not isinstance(backoff, int | float) or not backoff >= 0:
            raise bad_param(owner, "backoff", "a number of seconds >= 0", backoff)
        if rate_limit is not None and not _positive(rate_limit):
            raise bad_param(owner, "rate_limit", "requests per second > 0, or None", rate_limit)
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise bad_param(owner, "batch_size", "an int >= 1, or None", batch_size)
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self.rate_limit = rate_limit
        self.requests_sent = 0
        self.retries_made = 0
        self._transport: Transport = transport or HttpClientTransport(self.url)
        self._lock = threading.Lock()
        self._next_slot = 0.0
        self._sleep: Callable[[float], None] = time.sleep

        info = _Info.parse(self._request("GET", INFO_PATH, None), self.url)
        shape = tuple(info.input_shape)
        if input_shape is not None:
            shape = tuple(int(d) for d in input_shape)
            if math.prod(shape) != math.prod(info.input_shape):
                raise InputError(
                    f"input_shape {shape} has {math.prod(shape)} features, but the server at "
                    f"{self.url} takes inputs of shape {tuple(info.input_shape)} "
                    f"({math.prod(info.input_shape)} features). Leave input_shape out, or give "
                    "a shape with the same number of features."
                )
        if batch_size is not None and info.max_batch is not None and batch_size > info.max_batch:
            raise InputError(
                f"batch_size {batch_size} exceeds the server's max_batch of {info.max_batch}; "
                f"give batch_size <= {info.max_batch} or leave it out."
            )
        self.batch_size = batch_size or info.max_batch or DEFAULT_BATCH
        self._features = math.prod(shape)
        stage = Stage(
            name="model",
            fn=self._predict,
            differentiable=False,
            deterministic=info.deterministic,
            surrogate=None,
        )
        super().__init__(
            [stage],
            input_shape=shape,
            bounds=bounds if bounds is not None else info.bounds,
            num_classes=info.num_classes,
            output=Output.LOGITS if info.exposure is Exposure.LOGITS else Output.PROBABILITIES,
            class_names=class_names if class_names is not None else info.class_names,
            name=name or info.name or self.url,
            exposes=info.exposure,
            top_k=info.top_k,
        )

    # ---------------------------------------------------------------- requests
    def _wait_for_slot(self) -> None:
        if self.rate_limit is None:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_slot)
            self._next_slot = start + 1.0 / self.rate_limit
        if start > now:
            self._sleep(start - now)

    def _request(self, method: str, path: str, body: bytes | None) -> bytes:
        """The body of a 2xx answer, after retries; SystemFailure when there is none."""
        where = f"{method} {self.url}{path}"
        attempts = 0
        while True:
            self._wait_for_slot()
            attempts += 1
            with self._lock:
                self.requests_sent += 1
            wait: float | None = None
            try:
                status, raw_headers, data = self._transport(method, path, body, self.timeout)
            except TimeoutError:
                what = f"no answer within the timeout of {self.timeout:g} s"
            except (OSError, http.client.HTTPException) as error:
                what = f"connection failed ({type(error).__name__}: {error})"
            else:
                if 200 <= status < 300:
                    return data
                headers = {k.lower(): v for k, v in raw_headers.items()}
                what = f"HTTP {status}{_server_message(data)}"
                if status not in _RETRY_STATUS:
                    hint = (
                        " Lower batch_size, or raise the server's limits." if status == 413 else ""
                    )
                    raise SystemFailure(f"{where} was refused: {what}.{hint}")
                wait = retry_after_seconds(headers.get("retry-after"))
                if wait is not None and wait > MAX_RETRY_AFTER:
                    raise SystemFailure(
                        f"{where} answered {what} and asked to wait {wait:g} s before trying "
                        f"again; more than the {MAX_RETRY_AFTER:g} s this client waits. Lower "
                        "rate_limit, or try later."
                    )
            if attempts > self.retries:
                raise SystemFailure(
                    f"{where} failed after {attempts} attempt{'s' * (attempts > 1)}: {what}. "
                    "Check that the server is up and reachable, or raise timeout/retries."
                )
            with self._lock:
                self.retries_made += 1
            self._sleep(wait if wait is not None else self.backoff * 2 ** (attempts - 1))

    def _predict(self, x: Tensor) -> Tensor:
        n = len(x)
        flat = x.detach().reshape(n, -1).cpu()
        if flat.shape[1] != self._features:
            raise InputError(
                f"HttpModel {self.name!r} got inputs of {flat.shape[1]} features; the server "
                f"takes {self._features}."
            )
        if not bool(torch.isfinite(flat).all()):
            raise InputError(
                "HttpModel cannot send NaN or infinite inputs: JSON has no such numbers."
            )
        # 9 significant digits give back every float32 exactly, in half the bytes and a third of
        # the time of json.dumps' 17
        digits = "%.17g" if flat.dtype == torch.float64 else "%.9g"
        row = "[" + ",".join([digits] * flat.shape[1]) + "]"
        parts = []
        for start in range(0, n, self.batch_size):
            rows = flat[start : start + self.batch_size].tolist()
            body = ('{"inputs": [' + ",".join(row % tuple(r) for r in rows) + "]}").encode()
            data = self._request("POST", PREDICT_PATH, body)
            parts.append(self._decode(data, len(rows)))
        out = np.concatenate(parts) if parts else np.zeros((0, self.num_classes))
        return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)

    # ---------------------------------------------------------------- answers
    def _malformed(self, what: str) -> SystemFailure:
        return SystemFailure(
            f"The server at {self.url} sent a malformed answer to {PREDICT_PATH}: {what}. "
            f"Expected {_EXPECTED[self.exposes]} (exposure {self.exposes.value!r})."
        )

    def _table(self, value: Any, rows: int, cols: int, what: str) -> npt.NDArray[np.float64]:
        try:
            table = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise self._malformed(f"{what} is not a table of numbers") from None
        if table.shape != (rows, cols):
            raise self._malformed(f"{what} has shape {table.shape}, expected {(rows, cols)}")
        if not np.isfinite(table).all():
            raise self._malformed(f"{what} holds NaN or infinity")
        return table

    def _indices(self, value: Any, shape: tuple[int, ...], what: str) -> npt.NDArray[np.int64]:
        table = np.asarray(value)
        if table.dtype.kind not in "iu" or table.shape != shape:
            raise self._malformed(
                f"{what} must be integers of shape {shape}; got {table.dtype} of shape "
                f"{table.shape}"
            )
        if table.size and (table.min() < 0 or table.max() >= self.num_classes):
            raise self._malformed(f"{what} holds classes outside 0..{self.num_classes - 1}")
        return table.astype(np.int64)

    def _probabilities(self, table: npt.NDArray[np.float64], what: str, full: bool) -> None:
        if (table < -1e-6).any() or (table > 1 + 1e-6).any():
            raise self._malformed(f"{what} are not probabilities (outside [0, 1])")
        sums = table.sum(1)
        bad = np.abs(sums - 1) > _SUM_TOLERANCE if full else sums > 1 + _SUM_TOLERANCE
        if bad.any():
            raise self._malformed(
                f"{what} do not sum to {'1' if full else 'at most 1'} (row sums "
                f"{sums[bad][:3].tolist()})"
            )

    def _decode(self, data: bytes, n: int) -> npt.NDArray[np.float64]:
        try:
            answer = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise self._malformed(f"not JSON: {data[:80]!r}") from None
        key = ANSWER_KEYS[self.exposes]
        if not isinstance(answer, dict) or key not in answer:
            keys = sorted(answer) if isinstance(answer, dict) else type(answer).__name__
            raise self._malformed(f"no {key!r} in the answer (got {keys})")
        value, classes = answer[key], self.num_classes
        if self.exposes is Exposure.LOGITS:
            return self._table(value, n, classes, "logits")
        if self.exposes is Exposure.SCORES:
            scores = self._table(value, n, classes, "scores")
            self._probabilities(scores, "scores", full=True)
            return scores
        if self.exposes is Exposure.LABEL:
            labels = self._indices(value, (n,), "labels")
            return np.eye(classes, dtype=np.float64)[labels]
        k = self.top_k or classes
        if not isinstance(value, dict) or "indices" not in value or "scores" not in value:
            raise self._malformed("'topk' must hold 'indices' and 'scores'")
        indices = self._indices(value["indices"], (n, k), "topk indices")
        shown = self._table(value["scores"], n, k, "topk scores")
        self._probabilities(shown, "topk scores", full=k == classes)
        if k > 1 and (np.diff(np.sort(indices, axis=1), axis=1) == 0).any():
            raise self._malformed("topk indices repeat a class in a row")
        rest = np.clip(1.0 - shown.sum(1), 0.0, None) / max(classes - k, 1)
        probs = np.repeat(rest[:, None], classes, axis=1)
        np.put_along_axis(probs, indices, shown, axis=1)
        return probs


_EXPECTED = {
    Exposure.LOGITS: '{"logits": [[z1, ..., zC], ...]}',
    Exposure.SCORES: '{"scores": [[p1, ..., pC], ...]}',
    Exposure.TOP_K: '{"topk": {"indices": [[c1, ..., ck], ...], "scores": [[p1, ..., pk], ...]}}',
    Exposure.LABEL: '{"labels": [c, ...]}',
}


class _Info:
    """The server's ``/info`` answer, checked."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.input_shape: list[int] = data["input_shape"]
        self.num_classes: int = data["num_classes"]
        self.bounds = Bounds.of(tuple(data["bounds"]), data["input_shape"])
        self.exposure = Exposure(data["exposure"])
        self.top_k: int | None = data.get("top_k")
        self.class_names: list[str] | None = data.get("class_names")
        self.max_batch: int | None = data.get("max_batch")
        self.deterministic: bool = data.get("deterministic", True)
        self.name: str | None = data.get("name")

    @classmethod
    def parse(cls, body: bytes, url: str) -> _Info:
        def bad(what: str) -> SystemFailure:
            return SystemFailure(
                f"The server at {url} sent a malformed answer to {INFO_PATH}: {what}. It must "
                "describe the model as in the protocol of mallory.systems.http "
                '({"input_shape": [...], "num_classes": C, "bounds": [lo, hi], '
                '"exposure": "scores", ...}).'
            )

        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise bad(f"not JSON: {body[:80]!r}") from None
        if not isinstance(data, dict):
            raise bad(f"a {type(data).__name__}, not an object")
        missing = [k for k in ("input_shape", "num_classes", "bounds", "exposure") if k not in data]
        if missing:
            raise bad(f"it lacks {', '.join(missing)}")
        shape = data["input_shape"]
        if not isinstance(shape, list) or not shape or not all(_count(d, 1) for d in shape):
            raise bad(f"input_shape {shape!r} is not a list of positive ints")
        if not _count(data["num_classes"], 2):
            raise bad(f"num_classes {data['num_classes']!r} is not an int >= 2")
        bounds = data["bounds"]
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise bad(f"bounds {bounds!r} is not [lower, upper]")
        try:
            Bounds.of(tuple(bounds), shape)
        except (InputError, TypeError, ValueError, RuntimeError) as error:
            raise bad(str(error)) from None
        if data["exposure"] not in {e.value for e in Exposure}:
            raise bad(f"exposure {data['exposure']!r} is none of {[e.value for e in Exposure]}")
        top_k = data.get("top_k")
        if data["exposure"] == Exposure.TOP_K and not _count(top_k, 1):
            raise bad(f"exposure 'top-k' needs top_k, an int >= 1; got {top_k!r}")
        if data["exposure"] == Exposure.TOP_K and top_k > data["num_classes"]:
            raise bad(f"top_k {top_k} exceeds num_classes {data['num_classes']}")
        names = data.get("class_names")
        if names is not None and not (
            isinstance(names, list) and len(names) == data["num_classes"]
        ):
            raise bad(f"class_names is not a list of {data['num_classes']} names")
        max_batch = data.get("max_batch")
        if max_batch is not None and not _count(max_batch, 1):
            raise bad(f"max_batch {max_batch!r} is not an int >= 1")
        if not isinstance(data.get("deterministic", True), bool):
            raise bad("deterministic is not true or false")
        name = data.get("name")
        if name is not None and not isinstance(name, str):
            raise bad("name is not a string")
        info = cls(data)
        if info.exposure is not Exposure.TOP_K:
            info.top_k = None
        if names is not None:
            info.class_names = [str(c) for c in names]
        return info


def _count(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _positive(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _server_message(data: bytes) -> str:
    """The server's ``{"error": ...}`` message, or the start of its body."""
    try:
        answer = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        text = data[:200].decode("utf-8", "replace").strip()
        return f" ({text})" if text else ""
    if isinstance(answer, dict) and "error" in answer:
        return f" ({str(answer['error'])[:300]})"
    return ""
