"""The OpenAPI 3.0 document of a running server (``GET /openapi.json``).

It is written from the same settings the routes answer with: the input's shape and bounds,
the batch limit, and the exposure (a label server's document has no score in it, not even in
a schema). Request schemas say what a valid request is as far as JSON Schema can (a V2
tensor's data must also hold ``prod(shape)`` numbers, which it cannot say); response schemas
say exactly what comes back, for every status a route can answer.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mallory.serve import native, v2
from mallory.serve.protocol import Model
from mallory.threat import Exposure

__all__ = ["document"]

_JSON = "application/json"
_ERROR = {"$ref": "#/components/schemas/Error"}
_REASONS = {
    400: "malformed: not JSON, too deeply nested, wrong shape, NaN, outside the bounds",
    404: "no such path, or no such model",
    408: "the body did not arrive in time",
    411: "a POST without Content-Length",
    413: "too many inputs, or a body over the size limit",
    429: "over the rate limit: retry after Retry-After seconds",
    431: "request head (request line and headers) too large",
    500: "the model failed",
    503: "too many requests waiting for the model: retry after Retry-After seconds",
}
_READ = (404, 429, 431)
_POST = (400, 404, 408, 411, 413, 429, 431, 500, 503)


def _error(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _REASONS[status],
        "content": {_JSON: {"schema": _ERROR}},
    }
    if status in (429, 503):
        response["headers"] = {
            "Retry-After": {
                "description": "seconds to wait",
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    return response


def _operation(
    summary: str, ok: dict[str, Any], errors: tuple[int, ...], **extra: Any
) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK", "content": {_JSON: {"schema": ok}}}}
    responses.update({str(status): _error(status) for status in errors})
    return {"summary": summary, "responses": responses, **extra}


def _array(items: dict[str, Any], length: int | None = None, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "array", "items": items, **extra}
    if length is not None:
        schema.update(minItems=length, maxItems=length)
    return schema


def _number_in(model: Model) -> dict[str, Any]:
    """A number inside the bounds (their envelope, for bounds per feature)."""
    schema: dict[str, Any] = {"type": "number"}
    lower = float(torch.as_tensor(model.system.bounds.lower).min())
    upper = float(torch.as_tensor(model.system.bounds.upper).max())
    if math.isfinite(lower):
        schema["minimum"] = lower
    if math.isfinite(upper):
        schema["maximum"] = upper
    return schema


def _middle(model: Model) -> float:
    """A number inside the bounds, for the examples."""
    schema = _number_in(model)
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        return float((low + high) / 2)
    return float(low if low is not None else high if high is not None else 0.0)


def _inputs(model: Model) -> dict[str, Any]:
    """A batch: inputs of ``features`` numbers, or all nested as ``input_shape``."""
    number = _number_in(model)
    limit = model.limits.max_batch
    flat = _array(_array(number, model.features), maxItems=limit)
    if len(model.input_shape) == 1:
        return flat
    nested = number
    for size in reversed(model.input_shape):
        nested = _array(nested, size)
    return {"anyOf": [flat, _array(nested, maxItems=limit)]}


def _predict_answer(model: Model) -> dict[str, Any]:
    classes, k = model.num_classes, model.top_k or 0
    label = {"type": "integer", "minimum": 0, "maximum": classes - 1}
    probability = {"type": "number", "minimum": 0, "maximum": 1}
    value: dict[str, Any] = {
        Exposure.LOGITS: _array(_array({"type": "number"}, classes)),
        Exposure.SCORES: _array(_array(probability, classes)),
        Exposure.LABEL: _array(label),
        Exposure.TOP_K: {
            "type": "object",
            "required": ["indices", "scores"],
            "properties": {
                "indices": _array(_array(label, k)),
                "scores": _array(_array(probability, k)),
            },
        },
    }[model.exposure]
    key = native.ANSWER_KEYS[model.exposure]
    return {"type": "object", "required": [key], "properties": {key: value}}


def _info_schema(model: Model) -> dict[str, Any]:
    count = {"type": "integer", "minimum": 0}
    bound: dict[str, Any] = {"anyOf": [{"type": "number"}, {"type": "array"}]}
    return {
        "type": "object",
        "required": ["input_shape", "num_classes", "bounds", "exposure", "top_k"],
        "properties": {
            "input_shape": _array(count),
            "num_classes": count,
            "bounds": _array(bound, 2),
            "exposure": {"type": "string", "enum": [model.exposure.value]},
            "top_k": {"type": "integer", "minimum": 1, "nullable": True},
            "class_names": _array({"type": "string"}),
            "max_batch": count,
            "deterministic": {"type": "boolean"},
            "name": {"type": "string"},
        },
    }


def _v2_schemas(model: Model) -> dict[str, Any]:
    names = [out for out, _, _ in v2.outputs(model)]
    number = {"type": "number"}
    shape = _array({"type": "integer", "minimum": -1})
    tensor_meta = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {"name": {"type": "string"}, "datatype": {"type": "string"}, "shape": shape},
    }
    integers = model.exposure is Exposure.LABEL
    return {
        "ModelMetadata": {
            "type": "object",
            "required": ["name", "platform", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string"},
                "versions": _array({"type": "string"}),
                "platform": {"type": "string"},
                "inputs": _array(tensor_meta),
                "outputs": _array(tensor_meta),
            },
        },
        "InferRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": {"type": "object"},
                "inputs": _array(
                    {
                        "type": "object",
                        "required": ["name", "shape", "datatype", "data"],
                        "properties": {
                            "name": {"type": "string", "enum": [v2.INPUT_NAME]},
                            "shape": _array({"type": "integer", "minimum": 0}, minItems=2),
                            "datatype": {"type": "string", "enum": list(v2.DATATYPES)},
                            "parameters": {"type": "object"},
                            "data": _array(
                                {"anyOf": [_number_in(model), {"type": "array"}]},
                                description="prod(shape) numbers, flat (row-major) or nested",
                            ),
                        },
                    },
                    1,
                ),
                "outputs": _array(
                    {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string", "enum": names},
                            "parameters": {"type": "object"},
                        },
                    }
                ),
            },
        },
        "InferResponse": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "id": {"type": "string"},
                "outputs": _array(
                    {
                        "type": "object",
                        "required": ["name", "shape", "datatype", "data"],
                        "properties": {
                            "name": {"type": "string", "enum": names},
                            "shape": _array({"type": "integer", "minimum": 0}),
                            "datatype": {"type": "string", "enum": ["FP32", "INT64"]},
                            "data": _array({"type": "integer"} if integers else number),
                        },
                    }
                ),
            },
        },
    }


def document(model: Model) -> dict[str, Any]:
    """The OpenAPI document of a server of ``model``."""
    name = v2.model_name(model.system.name)
    limit = model.limits.max_batch
    model_path = {
        "name": "name",
        "in": "path",
        "required": True,
        "description": f"the model's name: {name}",
        "schema": {"type": "string", "enum": [name]},
    }
    row = [_middle(model)] * model.features
    body = {
        "required": True,
        "content": {
            _JSON: {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {"inputs": _inputs(model)},
                },
                "example": {"inputs": [row]},
            }
        },
    }
    tensor = {"name": v2.INPUT_NAME, "shape": [1, model.features], "datatype": "FP32", "data": row}
    infer_body = {
        "required": True,
        "content": {
            _JSON: {
                "schema": {"$ref": "#/components/schemas/InferRequest"},
                "example": {"inputs": [tensor]},
            }
        },
    }
    flag = {"type": "object", "properties": {}}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": f"mallory serve: {model.system.name}",
            "version": "1",
            "description": (
                f"A model served as a black box, exposure {model.exposure.value}: mallory's "
                "protocol (GET /info, POST /predict) and the Open Inference Protocol V2 "
                f"(/v2). At most {limit} inputs and {model.limits.max_body_bytes} bytes per "
                'request. Every error is {"error": "..."}.'
            ),
        },
        "paths": {
            native.INFO_PATH: {
                "get": _operation("What the model takes and shows", _info_schema(model), _READ)
            },
            native.PREDICT_PATH: {
                "post": _operation(
                    "Answers to a batch of inputs",
                    _predict_answer(model),
                    tuple(s for s in _POST if s != 404),
                    requestBody=body,
                )
            },
            "/v2/health/live": {
                "get": _operation("The server is live", _flag(flag, "live"), _READ)
            },
            "/v2/health/ready": {
                "get": _operation("The server is ready", _flag(flag, "ready"), _READ)
            },
            "/v2/models/{name}": {
                "get": _operation(
                    "The model's metadata",
                    {"$ref": "#/components/schemas/ModelMetadata"},
                    _READ,
                    parameters=[model_path],
                )
            },
            "/v2/models/{name}/ready": {
                "get": _operation(
                    "The model is ready",
                    _flag({"type": "object", "properties": {"name": {"type": "string"}}}, "ready"),
                    _READ,
                    parameters=[model_path],
                )
            },
            "/v2/models/{name}/infer": {
                "post": _operation(
                    "Inference on typed tensors",
                    {"$ref": "#/components/schemas/InferResponse"},
                    _POST,
                    parameters=[model_path],
                    requestBody=infer_body,
                )
            },
            "/openapi.json": {"get": _operation("This document", {"type": "object"}, _READ)},
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
                **_v2_schemas(model),
            }
        },
    }


def _flag(schema: dict[str, Any], key: str) -> dict[str, Any]:
    properties = {**schema["properties"], key: {"type": "boolean"}}
    return {"type": "object", "required": [key], "properties": properties}
