"""What an API answered, and the score rows mallory makes of it under an exposure.

Every protocol decodes its answer into one of three shapes: a :class:`Table` (one row of
numbers per input: probabilities or logits), :class:`Labels` (one class per input) or a
:class:`TopK` (the k best classes per input with their scores). :func:`as_rows` turns any of
them into ``num_classes`` scores per input under the exposure the model declares, never showing
more than that exposure: a table or a top-k answer under a label exposure becomes one-hot rows.

A 2xx answer that does not fit raises :class:`Malformed`; the client retries it (a proxy's HTML
page, a truncated body) and reports it when the retries are spent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from mallory.threat import Exposure

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]

SUM_TOLERANCE = 1e-3
"""How far a row of probabilities may sum from 1 (the API rounds its numbers)."""


class Malformed(Exception):
    """A 2xx answer that is not what the protocol promises (the message says how)."""


@dataclass(frozen=True)
class Table:
    """One row of numbers per input (probabilities or logits; one column for a binary model
    that gives the probability or logit of class 1)."""

    values: Any


@dataclass(frozen=True)
class Labels:
    """One class per input: an index, or a class name."""

    values: Any


@dataclass(frozen=True)
class TopK:
    """The k best classes per input (indices, or class names) and their scores."""

    indices: Any
    scores: Any


Answer = Table | Labels | TopK


def loads(data: bytes) -> Any:
    """The JSON value of an answer's body; Malformed when it is not JSON."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise Malformed("the body is not JSON") from None


def rows_answer(value: Any, n: int, where: str) -> Answer:
    """An answer given as one entry per input (TF Serving's and MLflow's ``predictions``):
    rows of numbers are a :class:`Table`, single classes (ints, names, or one-element lists of
    an int) are :class:`Labels`."""
    if not isinstance(value, list):
        raise Malformed(f"{where} is a {type(value).__name__}, not a list of one entry per input")
    if len(value) != n:
        raise Malformed(f"{where} has {len(value)} entries for {n} inputs")
    if all(_is_class(v) for v in value):
        return Labels(value)
    if all(isinstance(v, list) and len(v) == 1 and _is_int(v[0]) for v in value):
        return Labels([v[0] for v in value])
    if all(isinstance(v, list) for v in value):
        return Table(value)
    kinds = sorted({type(v).__name__ for v in value})
    raise Malformed(
        f"{where} holds {', '.join(kinds)} entries; expected one row of scores or one class "
        "per input (use an HttpMapping to say where the scores or labels are)"
    )


def as_rows(
    answer: Answer,
    n: int,
    *,
    exposes: Exposure,
    num_classes: int,
    top_k: int | None,
    class_names: Sequence[str],
) -> Floats:
    """``n`` rows of ``num_classes`` scores as ``exposes`` shows them (probabilities, or logits
    under the logits exposure); Malformed when the answer does not fit."""
    if isinstance(answer, Labels):
        if exposes is not Exposure.LABEL:
            raise Malformed(
                f"it holds labels where {exposes.value} were expected; an API that answers "
                "labels only is declared with exposes='label'"
            )
        labels = _classes(answer.values, (n,), num_classes, class_names, "labels")
        return _one_hot(labels, num_classes)
    if isinstance(answer, TopK):
        return _top_k_rows(answer, n, exposes, num_classes, top_k, class_names)
    table = _table(answer.values, n, num_classes, exposes)
    if exposes is Exposure.LOGITS:
        return table
    _check_probabilities(table, "scores", full=True)
    if exposes is Exposure.SCORES:
        return table
    if exposes is Exposure.LABEL:
        return _one_hot(table.argmax(1), num_classes)
    k = top_k or num_classes
    indices = np.argsort(-table, axis=1, kind="stable")[:, :k]
    return _spread(indices, np.take_along_axis(table, indices, axis=1), num_classes)


def _top_k_rows(
    answer: TopK,
    n: int,
    exposes: Exposure,
    num_classes: int,
    top_k: int | None,
    class_names: Sequence[str],
) -> Floats:
    if exposes in (Exposure.LOGITS, Exposure.SCORES):
        raise Malformed(f"it holds the top classes only, where all {exposes.value} were expected")
    k = top_k or num_classes
    indices = _classes(answer.indices, (n, k), num_classes, class_names, "top-k classes")
    shown = _numbers(answer.scores, (n, k), "top-k scores")
    _check_probabilities(shown, "top-k scores", full=k == num_classes)
    if k > 1 and (np.diff(np.sort(indices, axis=1), axis=1) == 0).any():
        raise Malformed("the top-k classes repeat a class in a row")
    if exposes is Exposure.LABEL:
        best = np.take_along_axis(indices, shown.argmax(1)[:, None], axis=1)[:, 0]
        return _one_hot(best, num_classes)
    return _spread(indices, shown, num_classes)


def _spread(indices: Ints, shown: Floats, num_classes: int) -> Floats:
    """Probabilities from the top k: the shown classes keep their scores, and the mass left,
    ``1 - sum(shown)``, is spread evenly over the hidden classes. No hidden class can then
    outrank a shown one (each hidden probability is at most the k-th shown one, and so is their
    mean), so the predicted label is the API's."""
    k = indices.shape[1]
    rest = np.clip(1.0 - shown.sum(1), 0.0, None) / max(num_classes - k, 1)
    probs = np.repeat(rest[:, None], num_classes, axis=1)
    np.put_along_axis(probs, indices, shown, axis=1)
    return probs


def _one_hot(labels: Ints, num_classes: int) -> Floats:
    return np.eye(num_classes, dtype=np.float64)[labels]


def _numbers(value: Any, shape: tuple[int, ...], what: str) -> Floats:
    try:
        table = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise Malformed(f"{what} are not all numbers") from None
    if table.shape != shape:
        raise Malformed(f"{what} have shape {table.shape}, expected {shape}")
    if not np.isfinite(table).all():
        raise Malformed(f"{what} hold NaN or infinity")
    return table


def _table(value: Any, n: int, num_classes: int, exposes: Exposure) -> Floats:
    """A table of ``num_classes`` columns; a binary model's single column becomes two
    (``[1 - p, p]``, or logits ``[0, z]``, whose softmax is ``[1 - sigmoid(z), sigmoid(z)]``)."""
    try:
        width = np.asarray(value, dtype=np.float64).shape[1:]
    except (TypeError, ValueError):
        width = ()
    if num_classes == 2 and width == (1,):
        column = _numbers(value, (n, 1), "scores")
        if exposes is Exposure.LOGITS:
            return np.concatenate([np.zeros_like(column), column], axis=1)
        _check_probabilities(column, "scores", full=False)
        return np.concatenate([1.0 - column, column], axis=1)
    return _numbers(
        value, (n, num_classes), "scores" if exposes is not Exposure.LOGITS else "logits"
    )


def _check_probabilities(table: Floats, what: str, *, full: bool) -> None:
    if (table < -1e-6).any() or (table > 1 + 1e-6).any():
        raise Malformed(
            f"{what} are not probabilities (outside [0, 1]); if the model answers logits, "
            "declare exposes='logits'"
        )
    sums = table.sum(1)
    bad = np.abs(sums - 1) > SUM_TOLERANCE if full else sums > 1 + SUM_TOLERANCE
    if bad.any():
        raise Malformed(
            f"{what} do not sum to {'1' if full else 'at most 1'} (row sums "
            f"{[round(s, 4) for s in sums[bad][:3].tolist()]}); if the model answers logits, "
            "declare exposes='logits'"
        )


def _classes(
    value: Any, shape: tuple[int, ...], num_classes: int, names: Sequence[str], what: str
) -> Ints:
    """Class indices from ints or class names."""
    array = np.asarray(value, dtype=object) if _has_strings(value) else np.asarray(value)
    if array.shape != shape:
        raise Malformed(f"{what} have shape {array.shape}, expected {shape}")
    if array.dtype == object:
        lookup = {name: i for i, name in enumerate(names)}
        try:
            array = np.vectorize(lambda v: lookup[v] if isinstance(v, str) else v, otypes=[object])(
                array
            )
        except KeyError as error:
            raise Malformed(
                f"{what} hold the class name {error.args[0]!r}, which is none of the model's "
                f"class names {list(names)[:10]}"
            ) from None
        if not all(_is_int(v) for v in array.flat):
            raise Malformed(f"{what} must be class indices or class names")
        array = array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise Malformed(f"{what} must be class indices (integers); got {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise Malformed(f"{what} hold classes outside 0..{num_classes - 1}")
    return array.astype(np.int64)


def _has_strings(value: Any) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, list) and any(_has_strings(v) for v in value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_class(value: Any) -> bool:
    return _is_int(value) or isinstance(value, str)


# ---------------------------------------------------------------------------- requests
@cache
def _input_format(shape: tuple[int, ...], number: str) -> str:
    """A %-format that writes one input, given as a flat tuple, as nested JSON lists."""
    text = number
    for size in reversed(shape):
        text = "[" + ",".join([text] * size) + "]"
    return text


class Inputs:
    """A batch to send, flattened in C order, written as JSON text fast.

    9 significant digits give back every float32 exactly (17 for float64), in half the bytes
    and a third of the time of ``json.dumps``.
    """

    def __init__(self, flat: Tensor, input_shape: tuple[int, ...]) -> None:
        self.n = len(flat)
        self.shape = input_shape
        self.double = flat.dtype == torch.float64
        self._number = "%.17g" if self.double else "%.9g"
        self._rows: list[tuple[float, ...]] = [tuple(r) for r in flat.tolist()]

    def rows(self) -> str:
        """``[[x1, ..., xF], ...]``: each input flattened."""
        row = _input_format((len(self._rows[0]),), self._number) if self._rows else ""
        return "[" + ",".join(row % r for r in self._rows) + "]"

    def nested(self) -> str:
        """``[input1, input2, ...]``: each input as nested lists of ``input_shape``."""
        one = _input_format(self.shape, self._number)
        return "[" + ",".join(one % r for r in self._rows) + "]"

    def data(self) -> str:
        """``[x11, ..., x1F, x21, ...]``: the whole batch as one flat list (row-major)."""
        if not self._rows:
            return "[]"
        one = ",".join([self._number] * len(self._rows[0]))
        return "[" + ",".join(one % r for r in self._rows) + "]"


@dataclass(frozen=True)
class Slot:
    """A place in a request template for JSON text written elsewhere (by :class:`Inputs`)."""

    name: str


def render(template: Any, fragments: dict[str, str]) -> bytes:
    """JSON text of ``template``, each :class:`Slot` replaced by its fragment."""
    marker = "\u0001mallory:"
    text = json.dumps(_mark(template, marker), separators=(",", ":"), allow_nan=False)
    for name, fragment in fragments.items():
        text = text.replace(json.dumps(marker + name), fragment)
    return text.encode()


def _mark(value: Any, marker: str) -> Any:
    if isinstance(value, Slot):
        return marker + value.name
    if isinstance(value, dict):
        return {k: _mark(v, marker) for k, v in value.items()}
    if isinstance(value, list):
        return [_mark(v, marker) for v in value]
    return value
