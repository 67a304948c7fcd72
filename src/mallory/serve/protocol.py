"""What the server accepts and what it shows, whatever the wire protocol.

A request body becomes a checked batch (:func:`read_json`, :meth:`Model.check`): JSON within
the nesting limit, numbers only, the input's shape, finite, inside the bounds. The model's
output becomes what the exposure allows and nothing more (:class:`Shown`): mallory's
protocol (:mod:`mallory.systems.http`) and the Open Inference Protocol
(:mod:`mallory.serve.v2`) both render that one value, so neither can show more than the other.
A request refused on the way is a :class:`Refusal`: a status and a message that says what
was wrong, and never anything the exposure hides.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import torch
from torch import Tensor

from mallory.access.exposure import as_logits, as_probabilities
from mallory.serve.limits import Limits, deeper_than
from mallory.systems.base import System
from mallory.threat import Exposure

__all__ = ["Model", "Parsed", "Refusal", "Shown", "numbers", "read_json"]

_BOUNDS_TOLERANCE = 1e-6  # as the Oracle's
_NUMBER_KINDS = frozenset("fiu")  # numpy kinds of float, signed and unsigned int arrays


class Refusal(Exception):
    """A request answered with an error status: ``{"error": message}``, with ``headers``;
    ``inputs``: how many inputs the request carried, when that is known (for the query log)."""

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
        self.inputs = inputs


@dataclass(frozen=True)
class Parsed:
    """A JSON body's value, and whether it may hold ``true`` or ``false`` (it has their
    bytes): numpy reads booleans among numbers as 0 and 1, so only then are they looked for."""

    value: Any
    booleans: bool


def read_json(body: bytes, max_depth: int) -> Parsed:
    """The JSON value of a body: UTF-8, nested at most ``max_depth`` deep (checked on the
    bytes, before parsing), else a 400 Refusal.

    orjson parses (six times faster than the standard library on a batch of numbers); what
    it refuses, the standard library parses again, for its clearer messages and for what it
    takes beyond JSON (``NaN``, integers over 64 bits), which the input checks then refuse
    by name.
    """
    depth = deeper_than(body, max_depth)
    if depth is not None:
        raise Refusal(
            400,
            f"the body is not JSON this server reads: it nests {depth} levels deep, and this "
            f"server reads at most {max_depth}",
        )
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise Refusal(
                400, f"the body is not JSON: not UTF-8 ({error.reason} at byte {error.start})"
            ) from None
        except ValueError as error:
            raise Refusal(400, f"the body is not JSON: {error}") from None
    return Parsed(value, b"true" in body or b"false" in body)


def numbers(value: Any, *, booleans: bool = True) -> npt.NDArray[Any] | None:
    """A nested list of numbers as an array (ints stay ints), or None if it is not one
    (ragged, strings, objects, booleans, numbers too large for 64 bits). ``booleans=False``
    says that the value cannot hold any (the walk that looks for them is skipped)."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if array.dtype.kind not in _NUMBER_KINDS or (booleans and _holds_bool(value)):
        return None
    return array


def _holds_bool(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            if any(isinstance(v, bool) for v in item):
                return True
            stack.extend(v for v in item if isinstance(v, list))
    return False


@dataclass(frozen=True)
class Shown:
    """A model's answer to a batch as the exposure shows it, and nothing else: ``values`` are
    the logits or the scores ``(n, C)``, the top-k scores ``(n, k)`` with their classes in
    ``indices``, or the labels ``(n,)``."""

    exposure: Exposure
    values: Tensor
    indices: Tensor | None = None

    def __len__(self) -> int:
        return len(self.values)


class Model:
    """The served system behind its checks: the input side (:meth:`check`) and the output
    side (:meth:`run`), one forward pass at a time."""

    def __init__(
        self,
        system: System,
        *,
        exposure: Exposure,
        top_k: int | None,
        limits: Limits,
        dtype: torch.dtype,
    ) -> None:
        self.system = system
        self.exposure = exposure
        self.top_k = top_k
        self.limits = limits
        self.dtype = dtype
        self.input_shape = tuple(system.input_shape)
        self.features = math.prod(self.input_shape)
        self.num_classes = system.num_classes
        self._lock = threading.Lock()  # the app runs one pass at a time; this says so here too
        # the checks run in numpy: on a small batch, a torch op costs ten times a numpy one
        lower = system.bounds.lower.detach().cpu().double().numpy()
        upper = system.bounds.upper.detach().cpu().double().numpy()
        self._lower, self._upper = lower - _BOUNDS_TOLERANCE, upper + _BOUNDS_TOLERANCE
        largest = torch.finfo(dtype).max if dtype.is_floating_point else 0.0
        self._may_overflow = not (-largest <= lower.min() and upper.max() <= largest)

    @property
    def bounds(self) -> tuple[Any, Any]:
        """Lower and upper bounds as numbers or nested lists (``/info``'s ``bounds``)."""
        bounds = self.system.bounds.to_dict()
        return bounds["lower"], bounds["upper"]

    def check(self, values: Any, n: int, *, booleans: bool = True) -> Tensor:
        """``n`` inputs from a nested list of numbers shaped ``(n, features)`` or
        ``(n, *input_shape)``, checked: finite and inside the bounds. The batch size has
        been checked already; ``booleans``: whether the body may hold true or false."""
        shape = list(self.input_shape)
        array = numbers(values, booleans=booleans)
        if array is None:
            raise Refusal(
                400,
                f"inputs must be a list of rows of {self.features} numbers (each input of "
                f"shape {shape}, flattened)",
                inputs=n,
            )
        if n == 0 and array.size == 0:
            return torch.zeros(0, *self.input_shape, dtype=self.dtype)
        if array.shape[1:] not in ((self.features,), self.input_shape):
            raise Refusal(
                400,
                f"each input must hold {self.features} numbers (shape {shape}, flattened); "
                f"got inputs of shape {list(array.shape[1:])}",
                inputs=n,
            )
        return self.checked(array, n)

    def checked(self, array: npt.NDArray[Any], n: int) -> Tensor:
        """``array`` (``n * features`` numbers in any shape) as the batch, if it is finite and
        inside the bounds, in the model's dtype."""
        x = np.asarray(array, dtype=np.float64).reshape(n, *self.input_shape)
        finite = np.isfinite(x.reshape(n, -1)).all(1)
        if not finite.all():
            raise Refusal(
                400, f"{int((~finite).sum())} of {n} inputs hold NaN or infinity", inputs=n
            )
        outside = ((x < self._lower) | (x > self._upper)).reshape(n, -1).any(1)
        if outside.any():
            lower, upper = self.bounds
            raise Refusal(
                400,
                f"{int(outside.sum())} of {n} inputs leave the bounds [{lower}, {upper}]",
                inputs=n,
            )
        batch = torch.from_numpy(x).to(self.dtype)
        if self._may_overflow and not bool(torch.isfinite(batch).all()):
            name = str(self.dtype).removeprefix("torch.")  # inside bounds too wide for the dtype
            raise Refusal(400, f"inputs hold numbers too large for {name}", inputs=n)
        return batch

    def run(self, x: Tensor) -> Shown:
        """The system's answer to a checked batch, as the exposure shows it. Raises
        RuntimeError when the system fails or answers something that is not scores."""
        system = self.system
        with self._lock:
            out = system.forward(x)
        if not isinstance(out, Tensor) or out.shape != (len(x), self.num_classes):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise RuntimeError(f"the model returned {got}, not scores of shape {len(x)} x C")
        if not bool(torch.isfinite(out).all()):
            raise RuntimeError("the model returned NaN or infinite scores")
        out = out.detach().cpu()
        if self.exposure is Exposure.LOGITS:
            return Shown(self.exposure, as_logits(out, system.output))
        probs = as_probabilities(out, system.output)
        if self.exposure is Exposure.SCORES:
            return Shown(self.exposure, probs)
        if self.exposure is Exposure.LABEL:
            return Shown(self.exposure, probs.argmax(1))
        top = probs.topk(self.top_k or 1, dim=1)  # serve() checks that top-k has a top_k
        return Shown(self.exposure, top.values, top.indices)

    def failure(self, error: BaseException) -> Refusal:
        """The 500 answer to a failed model. Its message may carry anything the system put
        in it, scores included, so only a server that shows every score tells it."""
        if self.exposure in (Exposure.LOGITS, Exposure.SCORES):
            return Refusal(500, f"the model failed: {type(error).__name__}: {error}")
        return Refusal(
            500, f"the model failed (details withheld: this server shows {self.exposure.value})"
        )
