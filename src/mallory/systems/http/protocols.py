"""The protocols HttpModel speaks: how a batch is written, where it goes, what comes back.

Each protocol is a codec: :meth:`Codec.describe` reads what the API says about its model (if
anything), :meth:`Codec.request` writes a batch, :meth:`Codec.answer` reads the answer into a
:class:`~mallory.systems.http.answers.Answer`. The wire formats are in the docstring of
:mod:`mallory.systems.http`.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeGuard

import numpy as np

from mallory.errors import InputError
from mallory.systems.base import Bounds
from mallory.systems.http.answers import (
    Answer,
    Inputs,
    Labels,
    Malformed,
    Slot,
    Table,
    TopK,
    loads,
    render,
    rows_answer,
)
from mallory.systems.http.client import Client
from mallory.systems.http.mapping import HttpMapping, compile_template, follow
from mallory.threat import Exposure

INFO_PATH = "/info"
PREDICT_PATH = "/predict"
ANSWER_KEYS = {
    Exposure.LOGITS: "logits",
    Exposure.SCORES: "scores",
    Exposure.TOP_K: "topk",
    Exposure.LABEL: "labels",
}
"""The key of mallory's ``/predict`` answer, per exposure."""
V2_FLOATS = ("FP16", "FP32", "FP64", "BF16")


class HttpProtocol(StrEnum):
    """The wire protocol of a prediction API."""

    MALLORY = "mallory"  # mallory serve: GET /info, POST /predict
    TF_SERVING = "tf-serving"  # TensorFlow Serving REST: POST /v1/models/NAME:predict
    V2 = "v2"  # Open Inference Protocol V2 (KServe, Triton, Seldon MLServer)
    MLFLOW = "mlflow"  # MLflow scoring server: POST /invocations
    MAPPING = "mapping"  # any JSON API, described by an HttpMapping


@dataclass
class Described:
    """What an API says about its model (None where it says nothing), and what its answers
    will show."""

    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    bounds: Bounds | None = None
    class_names: list[str] | None = None
    max_batch: int | None = None
    deterministic: bool = True
    name: str | None = None
    exposure: Exposure = Exposure.SCORES  # what the answers will show
    top_k: int | None = None


class Codec:
    """One protocol. ``richest``: the most its answers can show; ``default``: the exposure
    assumed when none is declared; ``top_k``: how many classes a top-k answer holds."""

    richest: Exposure = Exposure.LOGITS
    default: Exposure = Exposure.SCORES
    top_k: int | None = None

    def describe(self, client: Client) -> Described:
        return Described()

    def request(self, inputs: Inputs) -> tuple[str, str, bytes]:
        raise NotImplementedError

    def answer(self, data: bytes, n: int) -> Answer:
        raise NotImplementedError


def _quoted(name: str) -> str:
    return urllib.parse.quote(name, safe="/")


# ---------------------------------------------------------------------------- mallory
class MalloryCodec(Codec):
    """mallory's own protocol; the model is described by ``GET /info``."""

    def describe(self, client: Client) -> Described:
        described, exposure, top_k = client.call("GET", INFO_PATH, None, _mallory_info)
        self.richest = self.default = exposure
        self.top_k = top_k
        return described

    def request(self, inputs: Inputs) -> tuple[str, str, bytes]:
        return "POST", PREDICT_PATH, render({"inputs": Slot("rows")}, {"rows": inputs.rows()})

    def answer(self, data: bytes, n: int) -> Answer:
        answer = loads(data)
        key = ANSWER_KEYS[self.richest]
        if not isinstance(answer, dict) or key not in answer:
            keys = sorted(answer) if isinstance(answer, dict) else _kind(answer)
            raise Malformed(f"no {key!r} in the answer (got {keys})")
        value = answer[key]
        if self.richest is Exposure.LABEL:
            return Labels(value)
        if self.richest is Exposure.TOP_K:
            if not isinstance(value, dict) or "indices" not in value or "scores" not in value:
                raise Malformed("'topk' must hold 'indices' and 'scores'")
            return TopK(value["indices"], value["scores"])
        return Table(value)


def _mallory_info(body: bytes) -> tuple[Described, Exposure, int | None]:
    """The model described by ``/info``; Malformed when it is not as the protocol says."""
    data = loads(body)
    if not isinstance(data, dict):
        raise Malformed(f"the model description is a {_kind(data)}, not an object")
    missing = [k for k in ("input_shape", "num_classes", "bounds", "exposure") if k not in data]
    if missing:
        raise Malformed(f"the model description lacks {', '.join(missing)}")
    shape = data["input_shape"]
    if not isinstance(shape, list) or not shape or not all(_count(d, 1) for d in shape):
        raise Malformed(f"input_shape {shape!r} is not a list of positive ints")
    classes = data["num_classes"]
    if not _count(classes, 2):
        raise Malformed(f"num_classes {classes!r} is not an int >= 2")
    bounds = data["bounds"]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise Malformed(f"bounds {bounds!r} is not [lower, upper]")
    try:
        box = Bounds.of(tuple(bounds), shape)
    except (InputError, TypeError, ValueError, RuntimeError) as error:
        raise Malformed(f"bounds: {error}") from None
    if data["exposure"] not in {e.value for e in Exposure}:
        raise Malformed(f"exposure {data['exposure']!r} is none of {[e.value for e in Exposure]}")
    exposure = Exposure(data["exposure"])
    top_k = data.get("top_k")
    if exposure is Exposure.TOP_K:
        if not _count(top_k, 1):
            raise Malformed(f"exposure 'top-k' needs top_k, an int >= 1; got {top_k!r}")
        if top_k > classes:
            raise Malformed(f"top_k {top_k} exceeds num_classes {classes}")
    else:
        top_k = None
    names = data.get("class_names")
    if names is not None and not (isinstance(names, list) and len(names) == classes):
        raise Malformed(f"class_names is not a list of {classes} names")
    max_batch = data.get("max_batch")
    if max_batch is not None and not _count(max_batch, 1):
        raise Malformed(f"max_batch {max_batch!r} is not an int >= 1")
    deterministic = data.get("deterministic", True)
    if not isinstance(deterministic, bool):
        raise Malformed("deterministic is not true or false")
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise Malformed("name is not a string")
    described = Described(
        input_shape=tuple(shape),
        num_classes=classes,
        bounds=box,
        class_names=None if names is None else [str(c) for c in names],
        max_batch=max_batch,
        deterministic=deterministic,
        name=name,
    )
    return described, exposure, top_k


# ---------------------------------------------------------------------------- TF Serving
class TfServingCodec(Codec):
    """TensorFlow Serving's REST API, row format: ``{"instances": [...]}`` to
    ``POST /v1/models/NAME:predict``, answered ``{"predictions": [...]}``."""

    def __init__(self, model_name: str) -> None:
        self.path = f"/v1/models/{_quoted(model_name)}:predict"

    def request(self, inputs: Inputs) -> tuple[str, str, bytes]:
        body = render({"instances": Slot("x")}, {"x": inputs.nested()})
        return "POST", self.path, body

    def answer(self, data: bytes, n: int) -> Answer:
        return _predictions(loads(data), n)


def _predictions(answer: Any, n: int) -> Answer:
    if isinstance(answer, list):  # MLflow before 2.0 answers the bare list
        return rows_answer(answer, n, "the answer")
    if not isinstance(answer, dict) or "predictions" not in answer:
        keys = sorted(answer) if isinstance(answer, dict) else _kind(answer)
        raise Malformed(f"no 'predictions' in the answer (got {keys})")
    return rows_answer(answer["predictions"], n, "'predictions'")


# ---------------------------------------------------------------------------- MLflow
class MlflowCodec(Codec):
    """The MLflow scoring server: ``POST /invocations`` with ``{"inputs": [...]}`` (tensor
    input), or ``{"dataframe_split": {"columns": [...], "data": [...]}}`` when ``columns``
    names the features; answered ``{"predictions": [...]}``."""

    def __init__(self, columns: list[str] | None) -> None:
        self.columns = columns

    def request(self, inputs: Inputs) -> tuple[str, str, bytes]:
        if self.columns is None:
            body = render({"inputs": Slot("x")}, {"x": inputs.nested()})
        else:
            template = {"dataframe_split": {"columns": self.columns, "data": Slot("x")}}
            body = render(template, {"x": inputs.rows()})
        return "POST", "/invocations", body

    def answer(self, data: bytes, n: int) -> Answer:
        return _predictions(loads(data), n)


# ---------------------------------------------------------------------------- V2
class V2Codec(Codec):
    """The Open Inference Protocol V2: typed tensors to ``POST /v2/models/NAME/infer``; the
    model's metadata from ``GET /v2/models/NAME`` where the server has it. With ``top_k``,
    Triton's classification extension asks for the top k classes (``"score:index"``)."""

    def __init__(
        self,
        model_name: str,
        input_name: str | None,
        output_name: str | None,
        top_k: int | None,
    ) -> None:
        self.base = f"/v2/models/{_quoted(model_name)}"
        self.input_name = input_name
        self.output_name = output_name
        self.datatype = "FP32"
        self.top_k = top_k
        if top_k is not None:
            self.richest = self.default = Exposure.TOP_K

    def describe(self, client: Client) -> Described:
        meta = client.call("GET", self.base, None, _v2_metadata, missing=_no_metadata)
        described = Described()
        described.name = meta.get("name") if isinstance(meta.get("name"), str) else None
        tensor = _first_tensor(meta.get("inputs"), self.input_name)
        if tensor is not None:
            self.input_name = self.input_name or tensor.get("name")
            if tensor.get("datatype") in V2_FLOATS:
                self.datatype = str(tensor["datatype"])
            shape = tensor.get("shape")
            if _batched(shape) and all(_count(d, 1) for d in shape[1:]):
                described.input_shape = tuple(shape[1:])
        tensor = _first_tensor(meta.get("outputs"), self.output_name)
        if tensor is not None:
            self.output_name = self.output_name or tensor.get("name")
            shape = tensor.get("shape")
            if _batched(shape) and len(shape) == 2 and _count(shape[1], 2):
                described.num_classes = shape[1]
        return described

    def check(self, url: str) -> None:
        if self.input_name is None:
            raise InputError(
                f"The V2 API at {url}{self.base} gives no metadata naming the model's input; "
                "give input_name (the name of its input tensor)."
            )
        if self.top_k is not None and self.output_name is None:
            raise InputError(
                f"Triton's classification extension needs the output's name, and the V2 API at "
                f"{url}{self.base} gives no metadata naming it; give output_name."
            )

    def request(self, inputs: Inputs) -> tuple[str, str, bytes]:
        tensor = {
            "name": self.input_name,
            "shape": [inputs.n, *inputs.shape],
            "datatype": self.datatype,
            "data": Slot("x"),
        }
        template: dict[str, Any] = {"inputs": [tensor]}
        if self.output_name is not None:
            output: dict[str, Any] = {"name": self.output_name}
            if self.top_k is not None:
                output["parameters"] = {"classification": self.top_k}
            template["outputs"] = [output]
        return "POST", f"{self.base}/infer", render(template, {"x": inputs.data()})

    def answer(self, data: bytes, n: int) -> Answer:
        answer = loads(data)
        if not isinstance(answer, dict) or not isinstance(answer.get("outputs"), list):
            keys = sorted(answer) if isinstance(answer, dict) else _kind(answer)
            raise Malformed(f"no 'outputs' list in the answer (got {keys})")
        outputs = [o for o in answer["outputs"] if isinstance(o, dict)]
        if self.output_name is not None:
            outputs = [o for o in outputs if o.get("name") == self.output_name]
            if not outputs:
                names = [o.get("name") for o in answer["outputs"] if isinstance(o, dict)]
                raise Malformed(f"no output named {self.output_name!r} (outputs: {names})")
        elif len(outputs) != 1:
            names = [o.get("name") for o in outputs]
            raise Malformed(f"{len(outputs)} outputs ({names}); give output_name to pick one")
        output = outputs[0]
        if "data" not in output:
            raise Malformed(f"the output {output.get('name')!r} has no 'data'")
        values = np.asarray(output["data"], dtype=object).reshape(-1)
        if output.get("datatype") == "BYTES" or (values.size and isinstance(values[0], str)):
            return self._classification(values, n)
        if output.get("datatype", "FP32") not in V2_FLOATS and values.size == n:
            return Labels([_as_int(v) for v in values])
        try:
            numbers = values.astype(np.float64)
        except (TypeError, ValueError):
            raise Malformed(f"the output {output.get('name')!r} holds non-numbers") from None
        if numbers.size % max(n, 1):
            raise Malformed(f"the output holds {numbers.size} numbers for {n} inputs")
        return Table(numbers.reshape(n, -1) if n else numbers.reshape(0, 0))

    def _classification(self, values: Any, n: int) -> Answer:
        """Triton's ``"score:index"`` (or ``"score:index:label"``) strings, k per input."""
        k = self.top_k or 1
        if values.size != n * k:
            raise Malformed(f"the classification output holds {values.size} entries for {n} x {k}")
        scores, indices = [], []
        for text in values:
            parts = str(text).split(":")
            try:
                scores.append(float(parts[0]))
                indices.append(int(parts[1]))
            except (ValueError, IndexError):
                raise Malformed(f"a classification entry {text!r} is not 'score:index'") from None
        return TopK(np.reshape(indices, (n, k)), np.reshape(scores, (n, k)))


def _v2_metadata(body: bytes) -> dict[str, Any]:
    data = loads(body)
    return data if isinstance(data, dict) else {}


def _no_metadata() -> dict[str, Any]:
    return {}


def _first_tensor(tensors: Any, name: str | None) -> dict[str, Any] | None:
    if not isinstance(tensors, list):
        return None
    tensors = [t for t in tensors if isinstance(t, dict)]
    if name is not None:
        tensors = [t for t in tensors if t.get("name") == name]
    return tensors[0] if tensors else None


def _batched(shape: Any) -> TypeGuard[list[Any]]:
    return isinstance(shape, list) and len(shape) >= 2 and shape[0] in (-1, None)


def _as_int(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# ---------------------------------------------------------------------------- mapping
class MappingCodec(Codec):
    """Any JSON API, as an :class:`~mallory.systems.http.mapping.HttpMapping` describes it."""

    def __init__(self, mapping: HttpMapping, top_k: int | None) -> None:
        self.mapping = mapping
        self.template = compile_template(mapping.request)
        self.steps = mapping.steps
        if "scores" in self.steps and "labels" in self.steps:
            self.richest = self.default = Exposure.TOP_K
            self.top_k = top_k
        elif "labels" in self.steps:
            self.richest = self.default = Exposure.LABEL

    def request(self, inputs: Inputs) -> tuple[str, str, bytes]:
        fragments = {
            "$inputs": inputs.nested(),
            "$rows": inputs.rows(),
            "$data": inputs.data(),
            "$shape": "[" + ",".join(map(str, (inputs.n, *inputs.shape))) + "]",
            "$n": str(inputs.n),
        }
        return self.mapping.method, self.mapping.path, render(self.template, fragments)

    def answer(self, data: bytes, n: int) -> Answer:
        answer = loads(data)
        found = {
            name: follow(answer, steps, getattr(self.mapping, name))
            for name, steps in self.steps.items()
        }
        if "scores" in found and "labels" in found:
            return TopK(found["labels"], found["scores"])
        if "labels" in found:
            labels = found["labels"]
            if not isinstance(labels, list) or len(labels) != n:
                count = len(labels) if isinstance(labels, list) else _kind(labels)
                raise Malformed(f"{self.mapping.labels} gives {count} labels for {n} inputs")
            return Labels(labels)
        return Table(found["scores"])


# ---------------------------------------------------------------------------- helpers
def _count(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "a string" if isinstance(value, str) else f"a {type(value).__name__}"


def positive(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )
