"""mallory's own protocol: ``GET /info`` and ``POST /predict``, as
:class:`~mallory.systems.http.HttpModel` speaks it (the protocol is described there)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from mallory.serve.protocol import Model, Parsed, Refusal, Shown
from mallory.systems.http import ANSWER_KEYS, INFO_PATH, PREDICT_PATH

__all__ = ["ANSWER_KEYS", "INFO_PATH", "PREDICT_PATH", "answer", "info", "inputs"]


def info(model: Model) -> dict[str, Any]:
    """``GET /info``: what the model takes and what an answer shows."""
    lower, upper = model.bounds
    system = model.system
    return {
        "input_shape": list(model.input_shape),
        "num_classes": model.num_classes,
        "bounds": [lower, upper],
        "exposure": model.exposure.value,
        "top_k": model.top_k,
        "class_names": list(system.class_names),
        "max_batch": model.limits.max_batch,
        "deterministic": system.deterministic,
        "name": system.name,
    }


def inputs(body: Parsed, model: Model) -> Tensor:
    """The checked batch of a ``POST /predict`` body ``{"inputs": [[x1, x2, ...], ...]}``."""
    payload = body.value
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise Refusal(400, 'expected a JSON object {"inputs": [[x1, x2, ...], ...]}')
    rows = payload["inputs"]
    limit = model.limits.max_batch
    if len(rows) > limit:
        raise Refusal(
            413,
            f"{len(rows)} inputs in one request; this server takes at most {limit}: split "
            "the batch",
            inputs=len(rows),
        )
    return model.check(rows, len(rows), booleans=body.booleans)


def answer(shown: Shown) -> dict[str, Any]:
    """A ``200`` answer: one entry per input, under the exposure's key only."""
    key = ANSWER_KEYS[shown.exposure]
    if shown.indices is not None:
        return {key: {"indices": shown.indices.tolist(), "scores": shown.values.tolist()}}
    return {key: shown.values.tolist()}
