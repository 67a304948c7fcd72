"""The Open Inference Protocol V2 of mallory serve, and its OpenAPI document."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import schemathesis.checks
import torch
from torch import nn

from mallory.serve import Server, serve
from mallory.serve.v2 import model_name
from mallory.systems import TorchModel

ROW = [0.5] * 6


@pytest.fixture(scope="module")
def local() -> TorchModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    return TorchModel(net, input_shape=(2, 3), bounds=(0.0, 1.0), name="small")


@pytest.fixture(scope="module", params=["logits", "scores", "top-k", "label"])
def server(request: pytest.FixtureRequest, local: TorchModel) -> Iterator[Server]:
    exposure = request.param
    top_k = 2 if exposure == "top-k" else None
    with serve(local, exposure=exposure, top_k=top_k, max_batch=8) as running:
        yield running


def call(server: Server, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        data = json.dumps(body).encode() if body is not None else None
        connection.request(method, path, body=data)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def infer(server: Server, body: Any) -> tuple[int, Any]:
    return call(server, "POST", "/v2/models/small/infer", body)


def tensor(x: torch.Tensor, **changes: Any) -> dict[str, Any]:
    fields = {
        "name": "input",
        "shape": list(x.shape),
        "datatype": "FP32",
        "data": x.reshape(-1).tolist(),
    }
    return {**fields, **changes}


OUTPUTS = {
    "logits": [("logits", "FP32", [-1, 4])],
    "scores": [("scores", "FP32", [-1, 4])],
    "top-k": [("topk_indices", "INT64", [-1, 2]), ("topk_scores", "FP32", [-1, 2])],
    "label": [("label", "INT64", [-1])],
}


def test_health_and_metadata(server: Server) -> None:
    assert call(server, "GET", "/v2/health/live") == (200, {"live": True})
    assert call(server, "GET", "/v2/health/ready") == (200, {"ready": True})
    assert call(server, "GET", "/v2/models/small/ready") == (200, {"name": "small", "ready": True})
    status, meta = call(server, "GET", "/v2/models/small")
    assert status == 200 and meta["name"] == "small" and meta["platform"] == "mallory"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 2, 3]}]
    expected = OUTPUTS[server.exposure.value]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == expected
    status, error = call(server, "GET", "/v2/models/other")
    assert status == 404 and "'small'" in error["error"]


def test_infer_shows_only_the_exposure(server: Server, local: TorchModel) -> None:
    x = torch.rand(3, 2, 3, generator=torch.Generator().manual_seed(1))
    logits = local.forward(x)
    probs = logits.softmax(1)
    for data in (tensor(x), tensor(x.reshape(3, 6)), tensor(x, data=x.tolist())):
        status, answer = infer(server, {"id": "q1", "inputs": [data]})
        assert status == 200 and answer["model_name"] == "small" and answer["id"] == "q1"
        outputs = {o["name"]: o for o in answer["outputs"]}
        names = [name for name, _, _ in OUTPUTS[server.exposure.value]]
        assert list(outputs) == names
        if server.exposure.value == "label":
            assert outputs["label"] == {
                "name": "label",
                "datatype": "INT64",
                "shape": [3],
                "data": probs.argmax(1).tolist(),
            }
            continue
        if server.exposure.value == "top-k":
            top = probs.topk(2, dim=1)
            assert outputs["topk_indices"]["data"] == top.indices.reshape(-1).tolist()
            got = torch.tensor(outputs["topk_scores"]["data"]).reshape(3, 2)
            assert outputs["topk_scores"]["shape"] == [3, 2]
            assert torch.equal(got, top.values)
            continue
        expected = logits if server.exposure.value == "logits" else probs
        (output,) = outputs.values()
        assert output["shape"] == [3, 4] and output["datatype"] == "FP32"
        assert torch.equal(torch.tensor(output["data"]).reshape(3, 4), expected)


def test_integer_datatypes(server: Server) -> None:
    zeros = tensor(torch.zeros(1, 6))
    for datatype in ("INT8", "UINT8", "INT64", "FP16", "FP64"):
        body = {"inputs": [{**zeros, "datatype": datatype, "data": [0] * 6}]}
        assert infer(server, body)[0] == 200
    for datatype, data, match in (
        ("INT32", [0.5] * 6, "needs integers"),
        ("UINT8", [300] * 6, "needs integers in [0, 255]"),
        ("BOOL", [0] * 6, "is not one of"),
        ("BYTES", [0] * 6, "is not one of"),
    ):
        status, error = infer(server, {"inputs": [{**zeros, "datatype": datatype, "data": data}]})
        assert status == 400 and match in error["error"]


@pytest.mark.parametrize(
    ("body", "status", "match"),
    [
        ({"inputs": []}, 400, "one input tensor"),
        ({"inputs": [tensor(torch.zeros(1, 6))] * 2}, 400, "one input tensor"),
        ({"inputs": [tensor(torch.zeros(1, 6), name="pixels")]}, 400, "'input'"),
        ({"inputs": [tensor(torch.zeros(1, 6), shape=[1, 5])]}, 400, "shape [1, 5]"),
        ({"inputs": [tensor(torch.zeros(1, 6), shape=[6])]}, 400, "[batch, ...]"),
        ({"inputs": [tensor(torch.zeros(1, 6), shape=[2, 6])]}, 400, "prod(shape) = 12"),
        ({"inputs": [tensor(torch.zeros(1, 6), data=["a"] * 6)]}, 400, "not a list of numbers"),
        ({"inputs": [tensor(torch.full((1, 6), 2.0))]}, 400, "leave the bounds"),
        ({"inputs": [tensor(torch.zeros(9, 6))]}, 413, "at most 8"),
        ({"inputs": [tensor(torch.zeros(1, 6))], "id": 3}, 400, "id must be a string"),
        ({"inputs": [tensor(torch.zeros(1, 6))], "outputs": None}, 400, "outputs must be"),
        ({"inputs": [tensor(torch.zeros(1, 6))], "outputs": [{"name": "x"}]}, 400, "no output 'x'"),
        ({"inputs": [tensor(torch.zeros(1, 6))], "parameters": []}, 400, "parameters"),
    ],
)
def test_bad_infer_requests(local: TorchModel, body: Any, status: int, match: str) -> None:
    with serve(local, exposure="label", max_batch=8) as server:
        got, error = infer(server, body)
        assert call(server, "POST", "/v2/models/other/infer", body)[0] == 404
    assert got == status and match in error["error"]


def test_outputs_can_be_chosen(local: TorchModel) -> None:
    body = {"inputs": [tensor(torch.zeros(2, 6))], "outputs": [{"name": "topk_indices"}]}
    with serve(local, exposure="top-k", top_k=3) as server:
        status, answer = infer(server, body)
    assert status == 200 and [o["name"] for o in answer["outputs"]] == ["topk_indices"]
    with serve(local, exposure="label") as server:  # asking for scores shows none
        status, error = infer(server, {**body, "outputs": [{"name": "scores"}]})
    assert status == 400 and error == {"error": "no output 'scores'; this model has label"}


def test_model_names_are_one_path_segment() -> None:
    assert model_name("mnist-cnn") == "mnist-cnn"
    assert model_name("my model/v1.2") == "my-model-v1.2"
    assert model_name("..") == "model"


# ------------------------------------------------------------------ the OpenAPI document
def test_the_document_matches_the_routes(server: Server) -> None:
    status, doc = call(server, "GET", "/openapi.json")
    assert status == 200 and doc["openapi"] == "3.0.3"
    assert set(doc["paths"]) == {
        "/info",
        "/predict",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/infer",
        "/openapi.json",
    }
    for path, operations in doc["paths"].items():
        for method in operations:
            concrete = path.replace("{name}", "small")
            # every documented operation exists: a wrong method would be 405, a path 404
            wrong = "POST" if method == "get" else "GET"
            assert call(server, wrong, concrete)[0] == 405, (path, method)


def test_real_answers_match_the_document(server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    checks = [
        schemathesis.checks.not_a_server_error,
        schemathesis.checks.status_code_conformance,
        schemathesis.checks.content_type_conformance,
        schemathesis.checks.response_headers_conformance,
        schemathesis.checks.response_schema_conformance,
    ]
    row_tensor = tensor(torch.full((2, 6), 0.25))
    cases = [
        ("/info", "GET", {}),
        ("/predict", "POST", {"body": {"inputs": [ROW, ROW]}}),
        ("/predict", "POST", {"body": {"inputs": [[2.0] * 6]}}),
        ("/predict", "POST", {"body": {"inputs": [ROW] * 9}}),
        ("/v2/models/{name}", "GET", {"path_parameters": {"name": "small"}}),
        ("/v2/models/{name}", "GET", {"path_parameters": {"name": "nope"}}),
        (
            "/v2/models/{name}/infer",
            "POST",
            {"path_parameters": {"name": "small"}, "body": {"inputs": [row_tensor]}},
        ),
        (
            "/v2/models/{name}/infer",
            "POST",
            {"path_parameters": {"name": "small"}, "body": {"inputs": []}},
        ),
        ("/openapi.json", "GET", {}),
    ]
    for path, method, parts in cases:
        case = schema[path][method].Case(**parts)
        case.call_and_validate(base_url=server.url, checks=checks)


def test_a_label_document_names_no_score(local: TorchModel) -> None:
    with serve(local, exposure="label") as server:
        status, doc = call(server, "GET", "/openapi.json")
    assert status == 200
    text = json.dumps(doc).lower()
    for word in ("score", "logit", "topk", "probab"):
        assert word not in text
