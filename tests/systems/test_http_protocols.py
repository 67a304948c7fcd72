"""HttpModel against the protocols deployed models speak: TensorFlow Serving, Open Inference
V2 (with and without Triton's classification extension), MLflow, and a custom label-only API
through an HttpMapping. Each is a small threaded server on loopback, backed by a tiny torch
model, that can inject faults: 500s, 429s with Retry-After, HTML pages with status 200,
answers of the wrong shape, slow answers (a read timeout, then success on the retry), and a
kill (the server stops answering mid-attack).

Every attack test checks the ledger against the server: the rows the server answered with a
valid 200 are exactly the queries mallory charged to the attacker plus those of the evaluator
(the judge's own ledger, ``oracle.judge.log``); a retried request is sent again, but counted
once, on the answer that came back.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import mallory
from mallory.cli import app
from mallory.errors import AccessError, InputError, SystemFailure
from mallory.systems import HttpModel, TorchModel
from mallory.systems.http import HttpMapping, HttpProtocol
from mallory.systems.http.answers import Malformed
from mallory.systems.http.mapping import follow, parse_path
from mallory.threat import Exposure

SHAPE = (1, 4, 4)
CLASSES = 5
FAST = {"backoff": 0.01, "timeout": 0.3, "connect_timeout": 0.5}
LABEL_API = HttpMapping(
    path="/v1/classify", request={"instances": "$inputs"}, labels="predictions[*].label"
)


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, CLASSES))


@pytest.fixture(scope="module")
def local(net: nn.Module) -> TorchModel:
    return TorchModel(net, input_shape=SHAPE, bounds=(0.0, 1.0), name="tiny")


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------ the servers
class Api(ThreadingHTTPServer):
    """One protocol on loopback for ``net``. ``faults`` maps the number of a prediction
    request (0, 1, ... counting every try) to a fault; ``kill_after`` predictions answered, it
    stops answering. ``rows_ok`` counts the rows answered with a valid 200."""

    daemon_threads = True

    def __init__(
        self,
        protocol: str,
        net: nn.Module,
        *,
        labels: bool = False,
        metadata: bool = True,
        faults: dict[int, str] | None = None,
        kill_after: int | None = None,
        shape: tuple[int, ...] = SHAPE,
    ) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.protocol = protocol
        self.shape = shape
        self.net = net
        self.labels = labels
        self.metadata = metadata
        self.faults = faults or {}
        self.kill_after = kill_after
        self.lock = threading.Lock()
        self.predictions = 0  # prediction requests received
        self.answered = 0  # of them answered with a valid 200
        self.rows_ok = 0
        self.connections: set[Any] = set()
        self.bodies: list[Any] = []
        self.dead = False
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.thread = threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def kill(self) -> None:
        """Stop answering: open connections get no answer, new ones are refused."""
        self.dead = True
        threading.Thread(target=self.close, daemon=True).start()

    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net(inputs.reshape(len(inputs), -1)).softmax(1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the client can reuse its connection
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server: Api

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        api = self.server
        if api.protocol == "v2" and api.metadata and self.path == "/v2/models/tiny":
            self._json(200, v2_metadata(api.shape, api.net))
        else:
            self._json(404, {"error": f"no such path {self.path}"})

    def do_POST(self) -> None:
        api = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != PATHS[api.protocol]:
            self._json(404, {"error": f"no such path {self.path}"})
            return
        with api.lock:
            api.connections.add(self.client_address)
            api.bodies.append(body)
            number = api.predictions
            api.predictions += 1
            if api.kill_after is not None and api.answered >= api.kill_after and not api.dead:
                api.kill()
            fault = api.faults.get(number)
        if api.dead:
            self.close_connection = True  # no answer at all
            return
        inputs, extra = read_inputs(api.protocol, body)
        probs = api.predict(inputs)
        answer = write_answer(api.protocol, probs, api.labels, extra)
        if fault == "500":
            self._json(500, {"error": "internal error"})
        elif fault == "429":
            self._json(429, {"error": "too many requests"}, {"Retry-After": "0.05"})
        elif fault == "html":
            self._send(200, b"<html><body><h1>504 Gateway Time-out</h1></body></html>", "text/html")
        elif fault == "shape":
            self._json(200, {"predictions": [], "outputs": []})
        elif fault == "slow":
            time.sleep(0.6)  # past the client's read timeout: it has given up and retried
            self._json(200, answer)
        else:
            self._json(200, answer)
            with api.lock:
                api.answered += 1
                api.rows_ok += len(inputs)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", headers)

    def _send(
        self, status: int, body: bytes, kind: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        with contextlib.suppress(ConnectionError):  # the client gave up waiting
            self.wfile.write(body)


PATHS = {
    "tf": "/v1/models/tiny:predict",
    "v2": "/v2/models/tiny/infer",
    "mlflow": "/invocations",
    "custom": "/v1/classify",
}


def v2_metadata(shape: tuple[int, ...], net: nn.Module) -> dict[str, Any]:
    classes = [m for m in net.modules() if isinstance(m, nn.Linear)][-1].out_features
    return {
        "name": "tiny",
        "versions": ["1"],
        "platform": "pytorch_libtorch",
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, *shape]}],
        "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, classes]}],
    }


def read_inputs(protocol: str, body: Any) -> tuple[torch.Tensor, Any]:
    if protocol in ("tf", "custom"):
        return torch.tensor(body["instances"]), None
    if protocol == "mlflow":
        if "dataframe_split" in body:
            return torch.tensor(body["dataframe_split"]["data"]), None
        return torch.tensor(body["inputs"]), None
    tensor = body["inputs"][0]
    assert tensor["name"] == "pixels" and tensor["datatype"] == "FP32"
    outputs = body.get("outputs") or [{}]
    k = outputs[0].get("parameters", {}).get("classification")
    return torch.tensor(tensor["data"]).reshape(tensor["shape"]), k


def write_answer(protocol: str, probs: torch.Tensor, labels: bool, k: Any) -> Any:
    top = probs.argmax(1).tolist()
    if protocol == "custom":  # the API knows the scores, and shows only the label
        return {
            "predictions": [
                {"label": c, "score": max(p)} for c, p in zip(top, probs.tolist(), strict=True)
            ]
        }
    if protocol in ("tf", "mlflow"):
        return {"predictions": top if labels else probs.tolist()}
    n = len(probs)
    if k is not None:
        best = probs.topk(k, dim=1)
        data = [
            f"{p}:{i}"
            for ps, idx in zip(best.values.tolist(), best.indices.tolist(), strict=True)
            for p, i in zip(ps, idx, strict=True)
        ]
        output = {"name": "probs", "shape": [n, k], "datatype": "BYTES", "data": data}
    else:
        flat = probs.reshape(-1).tolist()
        output = {"name": "probs", "shape": list(probs.shape), "datatype": "FP32", "data": flat}
    return {"model_name": "tiny", "outputs": [output]}


@contextlib.contextmanager
def api(protocol: str, net: nn.Module, **options: Any) -> Iterator[Api]:
    server = Api(protocol, net, **options)
    try:
        yield server
    finally:
        if not server.dead:
            server.close()


def evaluator_rows(oracle: mallory.Oracle) -> int:
    """The rows the evaluator (the judge, outside the threat model) sent, from its own ledger."""
    return int(oracle.judge.log.totals().queries)


def check_ledger(
    server: Api, oracle: mallory.Oracle, result: mallory.AttackResult, judged: bool = True
) -> None:
    """The server's valid answers are the attacker's charged queries plus the evaluator's."""
    assert int(result.queries.sum()) == oracle.total_queries > 0
    assert (evaluator_rows(oracle) > 0) == judged
    assert server.rows_ok == oracle.total_queries + evaluator_rows(oracle)


# ------------------------------------------------------------------------ TF Serving
def test_tf_serving_scores_under_every_fault(
    net: nn.Module, local: TorchModel, x: torch.Tensor
) -> None:
    """Square through TF Serving with a 500, a 429, an HTML page with status 200, JSON of the
    wrong shape and a read timeout on the way: it completes, bit for bit as at home."""
    faults = {2: "500", 4: "429", 6: "html", 8: "shape", 10: "slow"}
    attack = mallory.create("square", n_queries=20)
    threat = mallory.score_based("linf", 0.3, queries=30)
    y = local.forward(x).argmax(1)
    at_home = attack(mallory.Oracle(local, threat), x, y, rng=0)
    with api("tf", net, faults=faults) as server:
        remote = HttpModel(
            server.url,
            protocol="tf-serving",
            model_name="tiny",
            input_shape=SHAPE,
            num_classes=CLASSES,
            bounds=(0.0, 1.0),
            **FAST,
        )
        assert remote.exposes is Exposure.SCORES and remote.name == "tiny"
        oracle = mallory.Oracle(remote, threat)
        result = attack(oracle, x, y, rng=0)
    assert result.error is None
    assert remote.retries_made == len(faults)
    assert torch.equal(result.x_adv, at_home.x_adv) and torch.equal(result.success, at_home.success)
    check_ledger(server, oracle, result)
    assert len(server.connections) < server.predictions  # the connection is reused
    assert torch.tensor(server.bodies[0]["instances"]).shape[1:] == SHAPE


def test_tf_serving_needs_what_it_does_not_say(net: nn.Module) -> None:
    with api("tf", net) as server:
        with pytest.raises(InputError, match="input_shape, num_classes, bounds") as caught:
            HttpModel(server.url, protocol="tf-serving", model_name="tiny")
        assert server.url in str(caught.value)
        with pytest.raises(InputError, match="model_name"):
            HttpModel(server.url, protocol="tf-serving")
        remote = HttpModel(
            server.url,
            protocol="tf-serving",
            model_name="wrong",
            input_shape=SHAPE,
            num_classes=CLASSES,
            bounds=(0.0, 1.0),
        )
        with pytest.raises(SystemFailure) as failure:
            remote.forward(torch.zeros(1, *SHAPE))
        message = str(failure.value)
        assert f"POST {server.url}/v1/models/wrong:predict was refused: HTTP 404" in message
        assert "no such path" in message


# ------------------------------------------------------------------------ V2
def test_v2_reads_the_metadata_and_answers_scores(
    net: nn.Module, local: TorchModel, x: torch.Tensor
) -> None:
    with api("v2", net) as server:
        remote = HttpModel(server.url, protocol="v2", model_name="tiny", bounds=(0.0, 1.0))
        assert remote.input_shape == SHAPE and remote.num_classes == CLASSES
        assert remote.exposes is Exposure.SCORES
        assert torch.equal(remote.forward(x), local.forward(x).softmax(1))
        sent = server.bodies[-1]
        assert sent["inputs"][0]["shape"] == [len(x), *SHAPE]
        assert sent["outputs"] == [{"name": "probs"}]


def test_v2_without_metadata_takes_what_it_is_given(
    net: nn.Module, local: TorchModel, x: torch.Tensor
) -> None:
    with api("v2", net, metadata=False) as server:
        given = {"input_shape": SHAPE, "num_classes": CLASSES, "bounds": (0.0, 1.0)}
        with pytest.raises(InputError, match="input_name") as caught:
            HttpModel(server.url, protocol="v2", model_name="tiny", **given)
        assert server.url in str(caught.value)
        remote = HttpModel(
            server.url, protocol="v2", model_name="tiny", input_name="pixels", **given
        )
        assert torch.equal(remote.forward(x), local.forward(x).softmax(1))
        assert "outputs" not in server.bodies[-1]  # no name to ask for: the only output


def test_v2_classification_extension_is_a_top_k_exposure(
    net: nn.Module, local: TorchModel, x: torch.Tensor
) -> None:
    faults = {1: "html", 3: "500"}
    with api("v2", net, faults=faults) as server:
        remote = HttpModel(
            server.url, protocol="v2", model_name="tiny", top_k=2, bounds=(0.0, 1.0), **FAST
        )
        assert remote.exposes is Exposure.TOP_K and remote.top_k == 2
        with pytest.raises(AccessError, match="top-k"):
            mallory.Oracle(remote, mallory.score_based())
        out = remote.forward(x)
        probs = local.forward(x).softmax(1)
        top = probs.topk(2, dim=1)
        assert torch.allclose(out.gather(1, top.indices), top.values)
        assert torch.equal(out.argmax(1), probs.argmax(1))
        sent = server.bodies[-1]["outputs"]
        assert sent == [{"name": "probs", "parameters": {"classification": 2}}]
        server.rows_ok = 0

        threat = mallory.score_based("linf", 0.3, queries=30, exposure="top-k", top_k=2)
        oracle = mallory.Oracle(remote, threat)
        result = mallory.create("square", n_queries=20)(oracle, x, probs.argmax(1), rng=0)
    assert result.error is None and remote.retries_made == len(faults)
    check_ledger(server, oracle, result)
    with pytest.raises(InputError, match="shows top-k at most"):
        HttpModel("http://127.0.0.1:9", protocol="v2", model_name="tiny", top_k=2, exposes="scores")


# ------------------------------------------------------------------------ MLflow
def test_mlflow_labels_under_a_decision_attack(
    net: nn.Module, local: TorchModel, x: torch.Tensor
) -> None:
    faults = {0: "429", 3: "slow", 5: "500"}
    with api("mlflow", net, labels=True) as server:
        options = {"input_shape": SHAPE, "num_classes": CLASSES, "bounds": (0.0, 1.0), **FAST}
        remote = HttpModel(server.url, protocol="mlflow", **options)
        with pytest.raises(SystemFailure, match="exposes='label'") as caught:
            remote.forward(x)  # it answers labels: the scores it was told to expect are not there
        assert f"POST {server.url}/invocations" in str(caught.value)
        remote = HttpModel(server.url, protocol="mlflow", exposes="label", **options)
        with pytest.raises(AccessError, match="label"):
            mallory.Oracle(remote, mallory.score_based())
        server.faults = {server.predictions + k: fault for k, fault in faults.items()}
        server.rows_ok = 0
        oracle = mallory.Oracle(remote, mallory.label_only("l2", math.inf, queries=60))
        y = local.forward(x).argmax(1)
        result = mallory.create("hopskipjump", max_queries=60, init_evals=10)(oracle, x, y, rng=0)
    assert result.error is None and remote.retries_made == len(faults)
    assert bool(result.success.any())
    check_ledger(server, oracle, result)


def test_mlflow_dataframe_split(net: nn.Module, local: TorchModel, x: torch.Tensor) -> None:
    columns = [f"f{i}" for i in range(16)]
    with api("mlflow", net) as server:
        remote = HttpModel(
            server.url,
            protocol="mlflow",
            columns=columns,
            input_shape=SHAPE,
            num_classes=CLASSES,
            bounds=(0.0, 1.0),
        )
        assert torch.equal(remote.forward(x), local.forward(x).softmax(1))
        assert server.bodies[-1]["dataframe_split"]["columns"] == columns
    with pytest.raises(InputError, match="columns names 3 features"):
        HttpModel(
            server.url,
            protocol="mlflow",
            columns=["a", "b", "c"],
            input_shape=SHAPE,
            num_classes=CLASSES,
            bounds=(0.0, 1.0),
        )


# ------------------------------------------------------------------------ a custom label API
def test_the_label_api_of_the_issue_under_attack(
    net: nn.Module, local: TorchModel, x: torch.Tensor
) -> None:
    """``POST /v1/classify {"instances"} -> {"predictions": [{"label": k}]}``, with the trap
    that once stopped the attack: an HTML upstream-timeout page with status 200."""
    faults = {1: "html", 2: "500", 4: "429", 6: "slow", 9: "html"}
    with api("custom", net, faults=faults) as server:
        remote = HttpModel(
            server.url,
            protocol="mapping",
            mapping=LABEL_API,
            input_shape=SHAPE,
            num_classes=CLASSES,
            bounds=(0.0, 1.0),
            **FAST,
        )
        assert remote.exposes is Exposure.LABEL
        oracle = mallory.Oracle(remote, mallory.label_only("l2", math.inf, queries=80))
        y = local.forward(x).argmax(1)
        result = mallory.create("hopskipjump", max_queries=80, init_evals=10)(oracle, x, y, rng=0)
    assert result.error is None and remote.retries_made == len(faults)
    assert bool(result.success.any())
    check_ledger(server, oracle, result)
    # the successes fool the model itself, not only what the API said
    assert torch.equal(local.forward(result.x_adv).argmax(1) != y, result.success)


def test_a_label_mapping_leaks_no_scores(net: nn.Module, x: torch.Tensor) -> None:
    options = {"input_shape": SHAPE, "num_classes": CLASSES, "bounds": (0.0, 1.0)}
    with api("tf", net) as server:  # an API that shows all the scores
        scores_api = HttpMapping(
            path="/v1/models/tiny:predict",
            request={"instances": "$inputs"},
            scores="predictions",
        )
        for remote in (
            HttpModel(
                server.url, protocol="mapping", mapping=scores_api, exposes="label", **options
            ),
            HttpModel(
                server.url,
                protocol="tf-serving",
                model_name="tiny",
                exposes="label",
                **options,
            ),
        ):
            out = remote.forward(x)
            assert remote.exposes is Exposure.LABEL
            assert set(out.unique().tolist()) == {0.0, 1.0} and torch.equal(
                out.sum(1), torch.ones(4)
            )
            with pytest.raises(AccessError):
                mallory.Oracle(remote, mallory.score_based())
    with api("custom", net) as server:  # it holds a score beside each label
        remote = HttpModel(server.url, protocol="mapping", mapping=LABEL_API, **options)
        out = remote.forward(x)
        assert set(out.unique().tolist()) == {0.0, 1.0}
        with pytest.raises(InputError, match="shows label at most"):
            HttpModel(server.url, protocol="mapping", mapping=LABEL_API, exposes="top-k", **options)


def test_a_server_killed_mid_attack(net: nn.Module, local: TorchModel, x: torch.Tensor) -> None:
    """The server stops answering after a few predictions: the attack stops, keeps what it
    found, and says what happened and where."""
    with api("custom", net, kill_after=6) as server:
        remote = HttpModel(
            server.url,
            protocol="mapping",
            mapping=LABEL_API,
            input_shape=SHAPE,
            num_classes=CLASSES,
            bounds=(0.0, 1.0),
            retries=1,
            **FAST,
        )
        oracle = mallory.Oracle(remote, mallory.label_only("l2", math.inf, queries=80))
        y = local.forward(x).argmax(1)
        result = mallory.create("hopskipjump", max_queries=80, init_evals=10)(oracle, x, y, rng=0)
    assert result.error is not None and f"POST {server.url}/v1/classify" in result.error
    assert "connection failed" in result.error
    assert len(result) == len(x) and bool(result.interrupted_mask.any())
    assert result.x_adv.shape == x.shape
    check_ledger(server, oracle, result, judged=False)  # what failed is charged to no one


# ------------------------------------------------------------------------ mapping parts
def test_answer_paths() -> None:
    answer = {"predictions": [{"label": 2}, {"label": 0}], "outputs": [{"data": [1, 2]}]}
    assert follow(answer, parse_path("predictions[*].label"), "p") == [2, 0]
    assert follow(answer, parse_path("outputs.0.data"), "p") == [1, 2]
    assert follow(answer, parse_path("outputs[0].data[1]"), "p") == 2
    assert follow([[0.1, 0.9]], parse_path("[*]"), "p") == [[0.1, 0.9]]
    assert follow({"a": {"0": "x"}}, parse_path("a.0"), "p") == "x"  # a key that is a number
    with pytest.raises(Malformed, match="no key 'labels'"):
        follow(answer, parse_path("predictions[*].labels"), "predictions[*].labels")
    with pytest.raises(Malformed, match="not a list"):
        follow({"predictions": {}}, parse_path("predictions[*]"), "p")
    for bad in ("", "a..b", "a[x]", "a]"):
        with pytest.raises(InputError, match="path"):
            parse_path(bad)


def test_mapping_is_plain_data_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    data = LABEL_API.to_dict()
    assert HttpMapping.from_dict(json.loads(json.dumps(data))) == LABEL_API
    with pytest.raises(InputError, match="no key 'label'"):
        HttpMapping.from_dict({**data, "label": "x"})
    with pytest.raises(InputError, match="placeholder"):
        HttpMapping(path="/p", request={"x": "$input"}, labels="l")
    with pytest.raises(InputError, match="request"):
        HttpMapping(path="/p", request={"x": 1}, labels="l")
    with pytest.raises(InputError, match="scores= or labels="):
        HttpMapping(path="/p")
    with pytest.raises(InputError, match="method"):
        HttpMapping(path="/p", method="DELETE", labels="l")
    with pytest.raises(InputError, match="path"):
        HttpMapping(path="p", labels="l")

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        n = len(json.loads(request.content)["batch"]["rows"])
        return httpx.Response(200, json={"result": {"classes": ["cat", "dog"][:1] * n}})

    mapping = {
        "path": "/score",
        "method": "put",
        "request": {"batch": {"rows": "$rows", "shape": "$shape", "n": "$n"}, "tag": "$$1"},
        "labels": "result.classes",
        "headers": {"X-Client": "mallory"},
        "token_env": "MALLORY_TEST_KEY",
        "token_header": "X-Api-Key",
        "token_prefix": "",
    }
    monkeypatch.setenv("MALLORY_TEST_KEY", "k3y")
    spec = {
        "url": "http://api.invalid/base",
        "protocol": "mapping",
        "mapping": mapping,
        "input_shape": [2, 2],
        "num_classes": 2,
        "bounds": [0.0, 1.0],
        "class_names": ["cat", "dog"],
    }
    remote = HttpModel.from_dict(spec, transport=handler)
    out = remote.forward(torch.rand(3, 2, 2))
    assert torch.equal(out, torch.tensor([[1.0, 0.0]] * 3))  # class names become one-hot rows
    request = seen[-1]
    assert (request.method, str(request.url)) == ("PUT", "http://api.invalid/base/score")
    assert request.headers["x-api-key"] == "k3y" and request.headers["x-client"] == "mallory"
    body = json.loads(request.content)
    assert body["batch"]["shape"] == [3, 2, 2] and body["batch"]["n"] == 3
    assert body["tag"] == "$1" and len(body["batch"]["rows"][0]) == 4
    saved = remote.to_dict()
    assert saved["mapping"]["token_env"] == "MALLORY_TEST_KEY" and "k3y" not in json.dumps(saved)
    assert HttpModel.from_dict(saved, transport=handler).to_dict() == saved
    with pytest.raises(InputError, match="'mapping' parameter of HttpModel"):
        HttpModel("http://api.invalid", protocol="mapping", transport=handler)


def test_other_answer_shapes() -> None:
    """A binary model's single column, a top-k mapping, a labels-as-lists answer."""

    def answers(body: Any) -> Any:
        def handler(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json=body)

        return handler

    common = {"input_shape": [3], "bounds": [0.0, 1.0]}
    binary = HttpModel(
        "http://api.invalid",
        protocol=HttpProtocol.TF_SERVING,
        model_name="m",
        num_classes=2,
        transport=answers({"predictions": [[0.25], [0.75]]}),
        **common,
    )
    assert torch.equal(
        binary.forward(torch.zeros(2, 3)), torch.tensor([[0.75, 0.25], [0.25, 0.75]])
    )
    logit = HttpModel(
        "http://api.invalid",
        protocol="mlflow",
        num_classes=2,
        exposes="logits",
        transport=answers([[2.0]]),  # MLflow before 2.0: the bare list
        **common,
    )
    assert torch.allclose(
        logit.forward(torch.zeros(1, 3)).softmax(1)[0, 1], torch.tensor(2.0).sigmoid()
    )
    listed = HttpModel(
        "http://api.invalid",
        protocol="tf-serving",
        model_name="m",
        num_classes=3,
        exposes="label",
        transport=answers({"predictions": [[2], [0]]}),
        **common,
    )
    assert torch.equal(listed.forward(torch.zeros(2, 3)).argmax(1), torch.tensor([2, 0]))
    top = HttpMapping(path="/p", request={"x": "$data"}, labels="k.i", scores="k.s")
    with pytest.raises(InputError, match="top_k"):
        HttpModel("http://api.invalid", protocol="mapping", mapping=top, num_classes=3, **common)
    topk = HttpModel(
        "http://api.invalid",
        protocol="mapping",
        mapping=top,
        num_classes=3,
        top_k=1,
        transport=answers({"k": {"i": [[2]], "s": [[0.6]]}}),
        **common,
    )
    assert topk.exposes is Exposure.TOP_K
    assert torch.allclose(topk.forward(torch.zeros(1, 3)), torch.tensor([[0.2, 0.2, 0.6]]))


# ------------------------------------------------------------------------ mallory attack --url
runner = CliRunner()
DIGITS = (1, 8, 8)


@pytest.fixture(scope="module")
def digits_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def test_cli_attacks_a_label_api(digits_net: nn.Module, tmp_path: Path) -> None:
    with api("tf", digits_net, labels=True, shape=DIGITS) as server:
        args = ["attack", "--url", server.url, "--protocol", "tf-serving", "--model-name", "tiny"]
        args += ["--exposure", "label", "--data", "digits", "--attack", "hopskipjump", "-n", "3"]
        args += ["--param", "max_queries=30", "--param", "init_evals=5"]
        done = runner.invoke(app, [*args, "--json", str(tmp_path / "out.json")])
    assert done.exit_code == 0, done.output
    assert f"hopskipjump on {server.url}" in done.output and "label-only" in done.output
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["summary"]["model"] == server.url
    assert saved["summary"]["queries_total"] > 0


def test_cli_infers_the_data_and_caps_the_threat_model(digits_net: nn.Module) -> None:
    with api("v2", digits_net, shape=DIGITS) as server:
        args = ["attack", "--url", server.url, "--protocol", "v2", "--model-name", "tiny"]
        args += ["--top-k", "3", "--bounds", "0,1", "--attack", "square", "--eps", "0.3"]
        done = runner.invoke(app, [*args, "-n", "2", "--param", "n_queries=5"])
    assert done.exit_code == 0, done.output
    assert "data: digits" in done.output  # its inputs fit the API's (1, 8, 8)
    assert "score-based" in done.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "digits-mlp", "--url", "http://127.0.0.1:9"], "not both"),
        ([], "--model NAME"),
        (["--model", "digits-mlp", "--protocol", "v2"], "--protocol describes a remote target"),
        (["--url", "http://127.0.0.1:9", "--protocol", "v2"], "needs --model-name"),
        (
            ["--url", "http://127.0.0.1:9", "--protocol", "mlflow"],
            "give --input-shape, --num-classes, --bounds",
        ),
        (["--url", "http://127.0.0.1:9", "--protocol", "mapping"], "needs --mapping FILE"),
        (["--url", "http://127.0.0.1:9", "--bounds", "1,0"], "LOWER < UPPER"),
        (["--url", "http://127.0.0.1:9", "--input-shape", "1,-2"], "positive sizes"),
        (
            ["--url", "http://127.0.0.1:9", "--mapping", "/nonexistent.json"],
            "cannot read /nonexistent.json",
        ),
    ],
)
def test_cli_bad_remote_options_are_clear_errors(args: list[str], message: str) -> None:
    done = runner.invoke(app, ["attack", "--attack", "hopskipjump", *args])
    assert done.exit_code == 2
    assert message in " ".join(done.output.split()), done.output


def test_cli_refuses_a_score_attack_on_a_label_api(net: nn.Module) -> None:
    with api("custom", net) as server, tempfile.TemporaryDirectory() as folder:
        mapping = Path(folder) / "api.json"
        mapping.write_text(json.dumps(LABEL_API.to_dict()))
        args = ["attack", "--url", server.url, "--protocol", "mapping", "--mapping", str(mapping)]
        args += ["--input-shape", "1,4,4", "--num-classes", "5", "--bounds", "0,1"]
        done = runner.invoke(app, [*args, "--attack", "hopskipjump", "--data", "digits"])
        assert done.exit_code == 2
        assert (
            "the digits data has inputs of shape (1, 8, 8)" in " ".join(done.output.split()).lower()
        )
        done = runner.invoke(app, [*args, "--attack", "square", "--eps", "0.3"])
    assert done.exit_code == 2
    assert f"square needs scores, but {server.url} shows only labels" in " ".join(
        done.output.split()
    )
    assert server.predictions == 0  # refused before a single query


# ------------------------------------------------------------------------ a URL in a campaign file
def test_a_campaign_file_attacks_an_api_through_its_mapping(tmp_path: Path) -> None:
    """The label API of the issue, as a ``[system]`` table with ``url`` and ``[system.mapping]``;
    its 500 and HTML-with-200 faults are retried, and every row the server answered is in a
    ledger (the attacker's or the judge's)."""
    from mallory.evaluation.config import parse_campaign
    from mallory.zoo import load_model

    digits_net = load_model("digits-mlp", progress=False).module  # type: ignore[attr-defined]
    system = {
        "url": "",
        "protocol": "mapping",
        "mapping": {
            "path": "/v1/classify",
            "request": {"instances": "$inputs"},
            "labels": "predictions[*].label",
        },
        "input_shape": list(DIGITS),
        "num_classes": 10,
        "bounds": [0.0, 1.0],
        "backoff": 0.01,
    }
    attack = {"name": "hopskipjump", "max_queries": 40, "init_evals": 5}
    data = {
        "system": system,
        "data": {"dataset": "digits", "samples": 6},
        "threat": [{"preset": "label-only", "queries_per_sample": 40, "attacks": [attack]}],
    }
    with api("custom", digits_net, shape=DIGITS, faults={2: "500", 5: "html"}) as server:
        system["url"] = server.url
        loaded = parse_campaign(data, base=tmp_path, where="api.toml", progress=False)
        remote = loaded.campaign.system
        assert isinstance(remote, HttpModel) and remote.exposes is Exposure.LABEL
        report = loaded.campaign.run(tmp_path / "api.db", progress=False)
        served = server.rows_ok
    row = report.threats[0]
    assert report.status == "complete" and row.attacks[0].attempted > 0
    assert row.ledger.queries + report.evaluator.queries == served
    assert remote.retries_made == 2
    # an exposure richer than the API's, and an API that is down, are errors naming the file
    with api("custom", digits_net, shape=DIGITS) as server:
        system["url"], system["exposes"] = server.url, "scores"
        with pytest.raises(InputError, match=r"api\.toml: system: .*label"):
            parse_campaign(data, base=tmp_path, where="api.toml", progress=False)
    # mallory's protocol asks the API for its model (/info) when the file is read
    data["system"] = {"url": "http://127.0.0.1:9", "retries": 0, "connect_timeout": 0.5}
    with pytest.raises(InputError, match=r"api\.toml: system: .*127\.0\.0\.1:9"):
        parse_campaign(data, base=tmp_path, where="api.toml", progress=False)
