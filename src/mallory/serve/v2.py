"""The Open Inference Protocol (V2, as KServe and Triton speak it), over REST.

=========================================  ================================================
``GET /v2/health/live``                    ``{"live": true}``
``GET /v2/health/ready``                   ``{"ready": true}``
``GET /v2/models/{name}``                  the model's metadata: its input and output tensors
``GET /v2/models/{name}/ready``            ``{"name": name, "ready": true}``
``POST /v2/models/{name}/infer``           typed tensors in, typed tensors out
=========================================  ================================================

An inference request carries one input tensor, ``{"inputs": [{"name": "input", "shape":
[n, *input_shape], "datatype": "FP32", "data": [...]}]}``: the batch comes first in the
shape (``[n, features]`` is taken too), and ``data`` holds the ``prod(shape)`` numbers
flat in row-major order, or nested as the shape says. Every numeric datatype is taken
(``FP16/32/64``, ``INT8..64``, ``UINT8..64``; integer types need integers in their range);
``BOOL`` and ``BYTES`` are not. ``id`` comes back in the answer; ``parameters`` are ignored.

The answer's tensors are only what the exposure shows:

========  ====================================================================
exposure  output tensors
========  ====================================================================
logits    ``logits`` FP32 ``[n, C]``
scores    ``scores`` FP32 ``[n, C]`` (probabilities)
top-k     ``topk_indices`` INT64 ``[n, k]`` and ``topk_scores`` FP32 ``[n, k]``
label     ``label`` INT64 ``[n]``
========  ====================================================================

A request's ``outputs`` may choose some of them (by name; any other name is an error). Errors
are ``{"error": "what was wrong"}``, as the protocol has them.

The model's name in the paths is the system's name with every character other than letters,
digits, ``_``, ``.`` and ``-`` replaced by ``-`` (:func:`model_name`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mallory.serve.protocol import Model, Parsed, Refusal, Shown, numbers
from mallory.threat import Exposure

__all__ = ["INPUT_NAME", "InferRequest", "answer", "infer_request", "metadata", "model_name"]

INPUT_NAME = "input"
FLOAT_TYPES = ("FP16", "FP32", "FP64")
INT_TYPES = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
DATATYPES = FLOAT_TYPES + INT_TYPES


def model_name(name: str) -> str:
    """The name under ``/v2/models/``: one path segment, safe in a URL."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", name).strip(".")
    return safe or "model"


def outputs(model: Model) -> list[tuple[str, str, list[int]]]:
    """The output tensors the exposure shows: name, datatype, shape (``-1``: the batch)."""
    classes, k = model.num_classes, model.top_k or 0
    return {
        Exposure.LOGITS: [("logits", "FP32", [-1, classes])],
        Exposure.SCORES: [("scores", "FP32", [-1, classes])],
        Exposure.TOP_K: [("topk_indices", "INT64", [-1, k]), ("topk_scores", "FP32", [-1, k])],
        Exposure.LABEL: [("label", "INT64", [-1])],
    }[model.exposure]


def metadata(model: Model, name: str) -> dict[str, Any]:
    """``GET /v2/models/{name}``."""
    return {
        "name": name,
        "versions": [],
        "platform": "mallory",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *model.input_shape]}],
        "outputs": [
            {"name": out, "datatype": kind, "shape": shape} for out, kind, shape in outputs(model)
        ],
    }


@dataclass(frozen=True)
class InferRequest:
    """A checked inference request: the batch, the outputs asked for (None: all), its id."""

    x: Tensor
    outputs: list[str] | None
    id: str | None


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def infer_request(body: Parsed, model: Model) -> InferRequest:
    """The checked request of a ``POST /v2/models/{name}/infer`` body."""
    payload = body.value
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise Refusal(400, 'expected a JSON object {"inputs": [{"name", "shape", ...}]}')
    request_id = payload.get("id")
    if "id" in payload and not isinstance(request_id, str):
        raise Refusal(400, "id must be a string")
    if not isinstance(payload.get("parameters", {}), dict):
        raise Refusal(400, "parameters must be an object")
    chosen = _chosen_outputs(payload["outputs"], model) if "outputs" in payload else None
    tensors = payload["inputs"]
    if len(tensors) != 1 or not isinstance(tensors[0], dict):
        raise Refusal(
            400, f"this model takes one input tensor ({INPUT_NAME!r}); got {len(tensors)}"
        )
    tensor = tensors[0]
    for key, kind in (("name", str), ("datatype", str), ("shape", list), ("data", list)):
        if not isinstance(tensor.get(key), kind):
            raise Refusal(
                400, f"the input tensor needs {key!r}, a {kind.__name__.replace('str', 'string')}"
            )
    if not isinstance(tensor.get("parameters", {}), dict):
        raise Refusal(400, "the input tensor's parameters must be an object")
    if tensor["name"] != INPUT_NAME:
        raise Refusal(
            400, f"no input tensor {tensor['name'][:64]!r}; this model's is {INPUT_NAME!r}"
        )
    datatype, shape, data = tensor["datatype"], tensor["shape"], tensor["data"]
    if datatype not in DATATYPES:
        raise Refusal(400, f"datatype {datatype[:32]!r} is not one of {', '.join(DATATYPES)}")
    expected = [[-1, *model.input_shape], [-1, model.features]]
    if len(shape) < 2 or not all(_count(d) for d in shape):
        raise Refusal(400, f"shape must be [batch, ...] of counts, one of {expected}")
    n = shape[0]
    if n > model.limits.max_batch:
        raise Refusal(
            413,
            f"{n} inputs in one request; this server takes at most {model.limits.max_batch}: "
            "split the batch",
            inputs=n,
        )
    if tuple(shape[1:]) not in (model.input_shape, (model.features,)):
        raise Refusal(400, f"shape {shape} is not one of {expected}", inputs=n)
    array = numbers(data, booleans=body.booleans)
    size = math.prod(shape)
    if array is None or array.size != size:
        got = "not a list of numbers" if array is None else f"{array.size} numbers"
        raise Refusal(
            400,
            f"data must hold prod(shape) = {size} numbers, flat or nested; got {got}",
            inputs=n,
        )
    if datatype in INT_TYPES:
        info = np.iinfo(datatype.lower())
        if array.dtype.kind not in "iu" or (
            array.size and (array.min() < info.min or array.max() > info.max)
        ):
            raise Refusal(
                400, f"datatype {datatype} needs integers in [{info.min}, {info.max}]", inputs=n
            )
    x = model.checked(array, n)
    return InferRequest(x, chosen, request_id)


def _chosen_outputs(value: Any, model: Model) -> list[str]:
    names = [out for out, _, _ in outputs(model)]
    if not isinstance(value, list) or not all(
        isinstance(o, dict)
        and isinstance(o.get("name"), str)
        and isinstance(o.get("parameters", {}), dict)
        for o in value
    ):
        raise Refusal(400, 'outputs must be a list of {"name": ..., "parameters": {...}}')
    chosen = [o["name"] for o in value]
    unknown = [c for c in chosen if c not in names]
    if unknown:
        raise Refusal(400, f"no output {unknown[0][:64]!r}; this model has {', '.join(names)}")
    return chosen


def answer(shown: Shown, request: InferRequest, name: str, model: Model) -> dict[str, Any]:
    """A ``200`` answer: the output tensors the exposure shows (those asked for)."""
    n = len(shown)
    if shown.indices is not None:
        tensors = {"topk_indices": shown.indices, "topk_scores": shown.values}
    else:
        tensors = {outputs(model)[0][0]: shown.values}
    body: dict[str, Any] = {"model_name": name}
    if request.id is not None:
        body["id"] = request.id
    chosen = request.outputs if request.outputs is not None else list(tensors)
    declared = {out: kind for out, kind, _ in outputs(model)}
    body["outputs"] = [
        {
            "name": out,
            "datatype": declared[out],
            "shape": [n, *tensors[out].shape[1:]],
            "data": _flat(tensors[out], declared[out]),
        }
        for out in chosen
    ]
    return body


def _flat(values: Tensor, datatype: str) -> list[Any]:
    dtype = torch.float32 if datatype == "FP32" else torch.int64
    flat: list[Any] = values.to(dtype).reshape(-1).tolist()
    return flat
