"""HttpModel: a classifier behind a prediction API, as a one-stage System."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mallory.errors import InputError, bad_param
from mallory.params import (
    Constraint,
    Interval,
    ListOf,
    Options,
    OrNone,
    PairsOf,
    Text,
    check_values,
)
from mallory.systems.base import (
    EXPOSES,
    INPUT_SHAPE,
    NAME,
    NUM_CLASSES,
    TOP_K,
    Bounds,
    Output,
    Stage,
    System,
    Verdict,
)
from mallory.systems.http.answers import Inputs, as_rows
from mallory.systems.http.client import Client, Refused, Transport, base_url
from mallory.systems.http.mapping import HEADERS_TEXT, HttpMapping
from mallory.systems.http.protocols import (
    Codec,
    Described,
    HttpProtocol,
    MalloryCodec,
    MappingCodec,
    MlflowCodec,
    TfServingCodec,
    V2Codec,
)
from mallory.threat import Exposure

DEFAULT_BATCH = 256
"""Inputs per request when neither the API nor the caller names a batch size."""
DEFAULT_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_RETRIES = 3
DEFAULT_RETRY_BUDGET = 100
DEFAULT_BACKOFF = 0.5

_OPTIONS = {  # the options that only some protocols take
    "model_name": (HttpProtocol.TF_SERVING, HttpProtocol.V2),
    "input_name": (HttpProtocol.V2,),
    "output_name": (HttpProtocol.V2,),
    "columns": (HttpProtocol.MLFLOW,),
    "mapping": (HttpProtocol.MAPPING,),
}


class HttpModel(System):
    """A classifier behind a prediction API (the protocols are in the docstring of
    :mod:`mallory.systems.http`), attacked as a black box.

    The system has one stage, ``"model"``, that is not differentiable and has no surrogate: it
    is attacked with score-based, label-only or transfer threat models, and never with more
    than the API exposes. Each answer becomes ``num_classes`` scores per input; ``exposes``
    says how much of that the API really shows (a label-only answer becomes one-hot scores and
    ``exposes="label"``), so the Oracle refuses any threat model that grants more.

    Args:
        url: the API's base URL, e.g. ``"http://127.0.0.1:8000"``.
        protocol: an :class:`HttpProtocol` or its name (``"mallory"``, ``"tf-serving"``,
            ``"v2"``, ``"mlflow"``, ``"mapping"``).
        model_name: the model's name in the URL (tf-serving, v2; ``"NAME/versions/3"`` picks a
            version).
        mapping: how to call the API (protocol ``"mapping"``): an :class:`HttpMapping` or its
            dict.
        exposes: what the answers show: ``"logits"``, ``"scores"``, ``"top-k"`` or ``"label"``;
            by default what the protocol says (mallory: ``/info``; v2 with ``top_k``: top-k;
            a mapping: from its paths) or ``"scores"``. Declaring less than the API shows
            hides the rest (``"label"`` turns scores into one-hot rows); declaring more is an
            error.
        top_k: classes per answer under top-k (v2: asked with Triton's classification
            extension).
        input_shape, num_classes, bounds, class_names: the model's, where the API does not say
            them (mallory's ``/info`` does; v2's metadata gives the input shape and the number
            of classes); given, they override what the API says (``input_shape`` with the same
            number of features).
        name: the system's name (default: the API's, the model's, or the URL).
        input_name, output_name: the V2 tensors' names (default: from the metadata).
        columns: MLflow: send ``dataframe_split`` with these feature names instead of
            ``inputs``.
        batch_size: inputs per request (default: the mapping's, the API's ``max_batch``, or
            :data:`DEFAULT_BATCH`).
        timeout: seconds to wait for each read; ``connect_timeout`` for a connection.
        retries: tries again per request (timeouts, connection errors, 429, 5xx and malformed
            answers: an HTML page with status 200, JSON of the wrong shape).
        retry_budget: retries over the model's life at most (None: no limit); spent, the next
            failure is a SystemFailure.
        backoff: seconds before the first retry when the API names no ``Retry-After``;
            doubled for each one after.
        rate_limit: requests per second this client sends at most (None: as fast as it can),
            by the token bucket that ``mallory serve`` uses.
        headers: extra headers on every request; ``token_env``: an environment variable whose
            value is sent as ``Authorization: Bearer ...``.
        transport: what sends the requests (an ``httpx`` transport, or a plain function from
            ``httpx.Request`` to ``httpx.Response``); the network by default.

    ``requests_sent`` counts every request (description and retries included),
    ``retries_made`` the retries among them.
    """

    def __init__(
        self,
        url: str,
        *,
        protocol: HttpProtocol | str = HttpProtocol.MALLORY,
        model_name: str | None = None,
        mapping: HttpMapping | Mapping[str, Any] | None = None,
        exposes: Exposure | str | None = None,
        top_k: int | None = None,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
        bounds: Bounds | tuple[Any, Any] | Sequence[Any] | None = None,
        class_names: Sequence[str] | None = None,
        name: str | None = None,
        input_name: str | None = None,
        output_name: str | None = None,
        columns: Sequence[str] | None = None,
        batch_size: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        retry_budget: int | None = DEFAULT_RETRY_BUDGET,
        backoff: float = DEFAULT_BACKOFF,
        rate_limit: float | None = None,
        headers: Mapping[str, str] | None = None,
        token_env: str | None = None,
        transport: Transport | None = None,
    ) -> None:
        owner = "HttpModel"
        self._config: dict[str, Any] = {
            "url": url,
            "protocol": protocol,
            "model_name": model_name,
            "mapping": mapping,
            "exposes": exposes,
            "top_k": top_k,
            "input_shape": input_shape,
            "num_classes": num_classes,
            "bounds": bounds,
            "class_names": class_names,
            "name": name,
            "input_name": input_name,
            "output_name": output_name,
            "columns": columns,
            "batch_size": batch_size,
            "timeout": timeout,
            "connect_timeout": connect_timeout,
            "retries": retries,
            "retry_budget": retry_budget,
            "backoff": backoff,
            "rate_limit": rate_limit,
            "headers": headers,
            "token_env": token_env,
        }
        self.url = base_url(url)
        self.protocol = HTTP_PARAMS["protocol"].check(owner, "protocol", protocol)
        for option, protocols in _OPTIONS.items():
            if self._config[option] is not None and self.protocol not in protocols:
                takes = " and ".join(p.value for p in protocols)
                raise InputError(
                    f"The {option!r} parameter of HttpModel is for protocol {takes}; the "
                    f"protocol is {self.protocol.value!r}. Drop {option}, or pick that protocol."
                )
        given = check_values(
            owner,
            HTTP_PARAMS,
            {key: self._config[key] for key in HTTP_PARAMS if key != "protocol"},
        )
        declared: Exposure | None = given["exposes"]
        input_shape, batch_size, headers = (
            given["input_shape"],
            given["batch_size"],
            given["headers"],
        )
        if isinstance(mapping, Mapping):
            mapping = HttpMapping.from_dict(mapping)
            self._config["mapping"] = mapping
        if self.protocol is HttpProtocol.MAPPING and not isinstance(mapping, HttpMapping):
            raise bad_param(
                owner, "mapping", "an HttpMapping (or its dict) for protocol 'mapping'", mapping
            )
        codec = self._codec(model_name, mapping, input_name, output_name, columns, top_k)

        request_headers = dict(headers or {})
        if token_env is not None:
            request_headers["Authorization"] = "Bearer " + _token(token_env)
        if mapping is not None:
            request_headers.update(mapping.headers)
            if mapping.token_env is not None:
                request_headers[mapping.token_header] = mapping.token_prefix + _token(
                    mapping.token_env
                )
        self._client = Client(
            self.url,
            timeout=float(timeout),
            connect_timeout=float(connect_timeout),
            retries=retries,
            retry_budget=retry_budget,
            backoff=float(backoff),
            rate_limit=rate_limit,
            headers=request_headers,
            transport=transport,
        )
        self._wire = codec
        self._answered = False  # a prediction came back: later refusals are the system's
        try:  # the connections close when the setup fails
            described = self._describe(codec, declared, top_k)
            system = self._system(described, input_shape, num_classes, bounds, batch_size)
        except BaseException:
            self._client.close()
            raise
        stage = Stage(
            name="model",
            fn=self._predict,
            differentiable=False,
            deterministic=described.deterministic,
            surrogate=None,
        )
        exposure, shown_k = system.pop("exposure"), system.pop("top_k")
        super().__init__(
            [stage],
            **system,
            output=Output.LOGITS if exposure is Exposure.LOGITS else Output.PROBABILITIES,
            class_names=class_names if class_names is not None else described.class_names,
            name=name or described.name or model_name or self.url,
            exposes=exposure,
            top_k=shown_k,
        )

    # ---------------------------------------------------------------- setup
    def _describe(self, codec: Codec, declared: Exposure | None, top_k: int | None) -> Described:
        """What the API says about its model (mallory: ``/info``; v2: its metadata)."""
        if not isinstance(codec, MalloryCodec):  # known before asking; mallory's needs /info
            self._exposure(codec, declared, top_k)
        described = codec.describe(self._client)
        if isinstance(codec, V2Codec):
            codec.check(self.url)
        described.exposure, described.top_k = self._exposure(codec, declared, top_k)
        return described

    def _system(
        self,
        described: Described,
        input_shape: Sequence[int] | None,
        num_classes: int | None,
        bounds: Any,
        batch_size: int | None,
    ) -> dict[str, Any]:
        """The System's shape, bounds, classes and exposure, from the arguments and the API;
        sets the batch size."""
        shape = self._shape(input_shape, described.input_shape)
        classes = num_classes if num_classes is not None else described.num_classes
        box = bounds if bounds is not None else described.bounds
        missing = [k for k, v in (("num_classes", classes), ("bounds", box)) if v is None]
        if shape is None:
            missing.insert(0, "input_shape")
        if missing:
            raise InputError(
                f"HttpModel: the {self.protocol.value} API at {self.url} does not say its "
                f"model's {', '.join(missing)}; give them, e.g. input_shape=(1, 28, 28), "
                "num_classes=10, bounds=(0.0, 1.0)."
            )
        assert shape is not None and classes is not None and box is not None
        if described.top_k is not None and described.top_k > classes:
            raise InputError(f"HttpModel: top_k={described.top_k} exceeds num_classes={classes}.")
        most = described.max_batch
        if batch_size is not None and most is not None and batch_size > most:
            raise InputError(
                f"batch_size {batch_size} exceeds the max_batch of {most} of the API at "
                f"{self.url}; give batch_size <= {most} or leave it out."
            )
        mapping = self._wire.mapping if isinstance(self._wire, MappingCodec) else None
        self.batch_size: int = (
            batch_size
            or (mapping.batch_size if mapping is not None else None)
            or most
            or DEFAULT_BATCH
        )
        self._features = math.prod(shape)
        named = self._wire.columns if isinstance(self._wire, MlflowCodec) else None
        if named is not None and len(named) != self._features:
            raise InputError(
                f"HttpModel: columns names {len(named)} features, but inputs of shape {shape} "
                f"have {self._features}."
            )
        return {
            "input_shape": shape,
            "bounds": box if isinstance(box, Bounds) else tuple(box),
            "num_classes": classes,
            "exposure": described.exposure,
            "top_k": described.top_k,
        }

    def _codec(
        self,
        model_name: str | None,
        mapping: HttpMapping | None,
        input_name: str | None,
        output_name: str | None,
        columns: Sequence[str] | None,
        top_k: int | None,
    ) -> Codec:
        protocol = self.protocol
        if protocol in (HttpProtocol.TF_SERVING, HttpProtocol.V2) and not (
            isinstance(model_name, str) and model_name.strip("/")
        ):
            raise bad_param(
                "HttpModel",
                "model_name",
                f"the model's name for protocol {protocol.value!r}",
                model_name,
            )
        if protocol is HttpProtocol.TF_SERVING:
            assert model_name is not None
            return TfServingCodec(model_name.strip("/"))
        if protocol is HttpProtocol.V2:
            assert model_name is not None
            return V2Codec(model_name.strip("/"), input_name, output_name, top_k)
        if protocol is HttpProtocol.MLFLOW:
            return MlflowCodec(None if columns is None else list(columns))
        if protocol is HttpProtocol.MAPPING:
            assert mapping is not None
            return MappingCodec(mapping, top_k)
        return MalloryCodec()

    def _exposure(
        self, codec: Codec, declared: Exposure | None, top_k: int | None
    ) -> tuple[Exposure, int | None]:
        """What the answers will show: the protocol's, or less when declared; and the k of a
        top-k exposure."""
        exposure = declared or codec.default
        if exposure.richness > codec.richest.richness:
            raise InputError(
                f"HttpModel: exposes={exposure.value!r}, but the {self.protocol.value} API at "
                f"{self.url} shows {codec.richest.value} at most. Declare "
                f"exposes={codec.richest.value!r} or less."
            )
        if exposure is not Exposure.TOP_K:
            return exposure, None
        shown_k = top_k if top_k is not None else codec.top_k
        if shown_k is None:
            raise InputError(
                f"HttpModel: exposes='top-k' needs top_k, the classes each answer of {self.url} "
                "shows."
            )
        if codec.top_k is not None and shown_k > codec.top_k:
            raise InputError(
                f"HttpModel: top_k={shown_k}, but the API at {self.url} shows its top "
                f"{codec.top_k} only. Give top_k <= {codec.top_k}."
            )
        return exposure, shown_k

    def _shape(
        self, given: Sequence[int] | None, said: tuple[int, ...] | None
    ) -> tuple[int, ...] | None:
        if given is None:
            return said
        shape = tuple(given)
        if said is not None and math.prod(shape) != math.prod(said):
            raise InputError(
                f"input_shape {shape} has {math.prod(shape)} features, but the API at "
                f"{self.url} takes inputs of shape {said} ({math.prod(said)} features). Leave "
                "input_shape out, or give a shape with the same number of features."
            )
        return shape

    # ---------------------------------------------------------------- plain data
    def to_dict(self) -> dict[str, Any]:
        """The keyword arguments this model was built with, as plain data (the keys of
        :meth:`from_dict`; the transport is not data, and a token only by its variable's name)."""
        out: dict[str, Any] = {}
        for key, value in self._config.items():
            if value is None:
                continue
            if isinstance(value, HttpMapping):
                value = value.to_dict()
            elif key == "bounds":
                box = value if isinstance(value, Bounds) else Bounds(*map(_tensor, value))
                value = [box.to_dict()["lower"], box.to_dict()["upper"]]
            elif isinstance(value, HttpProtocol | Exposure):
                value = value.value
            elif isinstance(value, Mapping):
                value = dict(value)
            elif isinstance(value, tuple | list):
                value = list(value)
            out[key] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, transport: Transport | None = None) -> HttpModel:
        """A model from plain data (a campaign file's table; see the module for the keys);
        unknown keys are an error. It connects, as the constructor does."""
        if not isinstance(data, Mapping):
            raise InputError(f"An HttpModel is described by a table of keys; got {data!r}.")
        known = list(KEYS)
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InputError(
                f"HttpModel has no key {', '.join(map(repr, unknown))}; its keys: "
                f"{', '.join(known)}."
            )
        if "url" not in data:
            raise InputError("HttpModel needs 'url': the API's base URL.")
        options = dict(data)
        url = options.pop("url")
        return cls(url, transport=transport, **options)

    # ---------------------------------------------------------------- the wire
    @property
    def requests_sent(self) -> int:
        return self._client.requests_sent

    @property
    def retries_made(self) -> int:
        return self._client.retries_made

    def close(self) -> None:
        """Close the connections this model holds open."""
        self._client.close()

    def __enter__(self) -> HttpModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _predict(self, x: Tensor) -> Tensor | Verdict:
        """The API's answers on ``x``, batch by batch. Once the API has answered, a batch it
        refuses (403, or 429 past the retries: a ban, a detector, a rate limit) becomes refused
        rows of a Verdict, so an attack sees the system stop it rather than crash; a refusal
        before any answer is a SystemFailure (credentials, a wrong URL)."""
        n = len(x)
        flat = x.detach().reshape(n, -1).cpu()
        if flat.shape[1] != self._features:
            raise InputError(
                f"HttpModel {self.name!r} ({self.url}) got inputs of {flat.shape[1]} features; "
                f"the API takes {self._features}."
            )
        if not bool(torch.isfinite(flat).all()):
            raise InputError(
                f"HttpModel {self.name!r} ({self.url}) cannot send NaN or infinite inputs: JSON "
                "has no such numbers."
            )
        codec = self._wire
        parts = []
        refused = torch.zeros(n, dtype=torch.bool)
        reasons: list[str] = []
        for start in range(0, n, self.batch_size):
            inputs = Inputs(flat[start : start + self.batch_size], self.input_shape)
            method, path, body = codec.request(inputs)
            size = inputs.n

            def decode(data: bytes, size: int = size) -> np.ndarray[Any, Any]:
                return as_rows(
                    codec.answer(data, size),
                    size,
                    exposes=self.exposes,
                    num_classes=self.num_classes,
                    top_k=self.top_k,
                    class_names=self.class_names,
                )

            try:
                parts.append(self._client.call(method, path, body, decode))
                self._answered = True
            except Refused as refusal:
                if not self._answered:
                    raise
                parts.append(np.zeros((size, self.num_classes)))
                refused[start : start + size] = True
                reasons.append(refusal.reason)
        out = np.concatenate(parts) if parts else np.zeros((0, self.num_classes))
        values = torch.from_numpy(out).to(device=x.device, dtype=x.dtype)
        if not reasons:
            return values
        return Verdict(values, refused=refused, reason="; ".join(dict.fromkeys(reasons)))


KEYS = (
    "url",
    "protocol",
    "model_name",
    "mapping",
    "exposes",
    "top_k",
    "input_shape",
    "num_classes",
    "bounds",
    "class_names",
    "name",
    "input_name",
    "output_name",
    "columns",
    "batch_size",
    "timeout",
    "connect_timeout",
    "retries",
    "retry_budget",
    "backoff",
    "rate_limit",
    "headers",
    "token_env",
)
"""The keys of :meth:`HttpModel.from_dict` (its keyword arguments but the transport)."""


HTTP_PARAMS: dict[str, Constraint] = {
    "protocol": Options(HttpProtocol),
    "exposes": OrNone(EXPOSES),
    "top_k": TOP_K,
    "input_shape": OrNone(INPUT_SHAPE),
    "num_classes": OrNone(NUM_CLASSES),
    "name": OrNone(NAME),
    "input_name": OrNone(Text(), "for the metadata's (a tensor's name)"),
    "output_name": OrNone(Text(), "for the metadata's (a tensor's name)"),
    "columns": OrNone(ListOf(Text(), text="a list of feature names")),
    "batch_size": OrNone(Interval(low=1, integral=True)),
    "timeout": Interval(low=0, low_open=True, note="seconds"),
    "connect_timeout": Interval(low=0, low_open=True, note="seconds"),
    "retries": Interval(low=0, integral=True),
    "retry_budget": OrNone(Interval(low=0, integral=True), "for no limit"),
    "backoff": Interval(low=0, note="seconds"),
    "rate_limit": OrNone(Interval(low=0, low_open=True, note="requests per second")),
    "headers": OrNone(PairsOf(Text(blank=True), Text(blank=True), HEADERS_TEXT, as_dict=True)),
    "token_env": OrNone(Text(), "(the name of an environment variable holding a token)"),
}
"""The constraint of each plain option of :class:`HttpModel` (the system's shared ones among
them); which options a protocol takes, and the mapping, are checked in code."""


def _token(variable: str) -> str:
    token = os.environ.get(variable, "")
    if not token:
        raise InputError(
            f"The environment variable {variable!r} (token_env) is not set or empty; set it to "
            "the API's token, or drop token_env."
        )
    return token


def _tensor(value: Any) -> Tensor:
    return torch.as_tensor(value, dtype=torch.float64)
