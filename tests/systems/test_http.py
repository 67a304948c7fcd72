"""HttpModel and mallory's own protocol: answers, retries and failures, against plug-in
transports (plain functions) and real servers on loopback."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import torch
from torch import nn

import mallory
from mallory.errors import AccessError, InputError, SystemFailure
from mallory.serve.server import serve
from mallory.systems import HttpModel, TorchModel
from mallory.systems.http import MAX_RETRY_AFTER, retry_after_seconds
from mallory.threat import Exposure

URL = "http://test.invalid"
INFO = {
    "input_shape": [4],
    "num_classes": 3,
    "bounds": [0.0, 1.0],
    "exposure": "scores",
    "top_k": None,
    "class_names": ["a", "b", "c"],
    "max_batch": 2,
}
SCORES = [[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]]
Answer = tuple[int, dict[str, str], bytes]


def ok(answer: dict[str, Any]) -> Answer:
    return 200, {"Content-Type": "application/json"}, json.dumps(answer).encode()


class Scripted:
    """A transport function that answers /info with ``info`` and /predict from a script of
    answers (a (status, headers, body) triple, or an exception to raise); the last one
    repeats."""

    def __init__(self, *script: Any, info: dict[str, Any] | None = None) -> None:
        self.script = list(script)
        self.info = info or INFO
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.headers.append(request.headers)
        if request.url.path == "/info":
            status, headers, data = ok(self.info)
            return httpx.Response(status, headers=headers, content=data)
        assert (request.method, request.url.path) == ("POST", "/predict")
        self.bodies.append(json.loads(request.content))
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(answer, BaseException):
            raise answer
        status, headers, data = answer
        return httpx.Response(status, headers=headers, content=data)


def model(transport: Scripted, **options: Any) -> HttpModel:
    """An HttpModel on ``transport`` that records its waits instead of sleeping."""
    options.setdefault("backoff", 0.01)
    remote = HttpModel(URL, transport=transport, **options)
    remote.waits = []  # type: ignore[attr-defined]
    remote._client.sleep = remote.waits.append  # type: ignore[attr-defined]
    return remote


X = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])


# ---------------------------------------------------------------- protocol, plug-in transport
def test_info_sets_up_the_system() -> None:
    remote = model(Scripted(ok({"scores": SCORES})))
    assert remote.input_shape == (4,)
    assert remote.num_classes == 3
    assert remote.class_names == ("a", "b", "c")
    assert remote.exposes is Exposure.SCORES
    assert remote.output is mallory.systems.Output.PROBABILITIES
    assert remote.batch_size == 2
    assert not remote.stages[0].differentiable and remote.stages[0].surrogate is None
    assert torch.equal(remote.forward(X), torch.tensor(SCORES))
    assert remote.requests_sent == 2 and remote.retries_made == 0


def test_overrides_of_info() -> None:
    remote = model(
        Scripted(ok({"scores": SCORES})), input_shape=(2, 2), bounds=(0.0, 0.5), name="api"
    )
    assert remote.input_shape == (2, 2) and remote.name == "api"
    assert float(remote.bounds.upper) == 0.5
    assert torch.equal(remote.forward(X.reshape(2, 2, 2)), torch.tensor(SCORES))
    with pytest.raises(InputError, match="features"):
        model(Scripted(ok({"scores": SCORES})), input_shape=(3,))
    with pytest.raises(InputError, match="max_batch"):
        model(Scripted(ok({"scores": SCORES})), batch_size=3)


def test_batches_are_split_to_the_batch_size() -> None:
    transport = Scripted(ok({"scores": [SCORES[0]]}), info={**INFO, "max_batch": 1})
    remote = model(transport)
    out = remote.forward(X)
    assert out.shape == (2, 3) and remote.requests_sent == 3
    assert [len(b["inputs"]) for b in transport.bodies] == [1, 1]
    sent = torch.tensor([row for b in transport.bodies for row in b["inputs"]])
    assert torch.equal(sent.float(), X)  # 9 significant digits give float32 back exactly


def test_label_answers_become_one_hot() -> None:
    remote = model(Scripted(ok({"labels": [2, 0]}), info={**INFO, "exposure": "label"}))
    assert remote.exposes is Exposure.LABEL
    assert torch.equal(remote.forward(X), torch.tensor([[0.0, 0, 1], [1, 0, 0]]))


def test_top_k_answers_spread_the_rest_over_hidden_classes() -> None:
    info = {**INFO, "exposure": "top-k", "top_k": 1}
    answer = {"topk": {"indices": [[1], [0]], "scores": [[0.5], [0.6]]}}
    remote = model(Scripted(ok(answer), info=info))
    assert remote.exposes is Exposure.TOP_K and remote.top_k == 1
    expected = torch.tensor([[0.25, 0.5, 0.25], [0.6, 0.2, 0.2]])
    out = remote.forward(X)
    assert torch.allclose(out, expected) and torch.equal(out.argmax(1), torch.tensor([1, 0]))


def test_logits_answers_pass_through() -> None:
    answer = ok({"logits": [[1, -2, 3], [0, 0, 5]]})
    remote = model(Scripted(answer, info={**INFO, "exposure": "logits"}))
    assert remote.output is mallory.systems.Output.LOGITS
    assert torch.equal(remote.forward(X), torch.tensor([[1.0, -2, 3], [0, 0, 5]]))


def test_declaring_less_than_the_api_shows_hides_the_rest() -> None:
    remote = model(Scripted(ok({"scores": SCORES})), exposes="label")
    assert remote.exposes is Exposure.LABEL
    assert torch.equal(remote.forward(X), torch.tensor([[0.0, 1, 0], [1, 0, 0]]))
    with pytest.raises(AccessError):
        mallory.Oracle(remote, mallory.score_based())
    remote = model(Scripted(ok({"scores": SCORES})), exposes="top-k", top_k=1)
    assert torch.allclose(remote.forward(X), torch.tensor([[0.25, 0.5, 0.25], [0.6, 0.2, 0.2]]))
    with pytest.raises(InputError, match="shows scores at most"):
        model(Scripted(ok({"scores": SCORES})), exposes="logits")


@pytest.mark.parametrize(
    ("answer", "info", "match"),
    [
        ((200, {}, b"<html>oops</html>"), {}, "not JSON"),
        (ok({"probs": SCORES}), {}, "no 'scores'"),
        (ok({"scores": SCORES[:1]}), {}, "shape"),
        ((200, {}, b'{"scores": [[NaN, 0.5, 0.5], [0.6, 0.3, 0.1]]}'), {}, "NaN"),
        (ok({"scores": [["x", 1, 0], [1, 0, 0]]}), {}, "not all numbers"),
        (ok({"scores": [[0.5, 0.5, 0.5], [0.6, 0.3, 0.1]]}), {}, "sum to 1"),
        (ok({"labels": [0, 3]}), {"exposure": "label"}, "outside 0..2"),
        (ok({"labels": [0.0, 1.0]}), {"exposure": "label"}, "integers"),
        (
            ok({"topk": {"indices": [[1, 1], [0, 2]], "scores": [[0.4, 0.4], [0.5, 0.2]]}}),
            {"exposure": "top-k", "top_k": 2},
            "repeat",
        ),
        (ok({"topk": [[1]]}), {"exposure": "top-k", "top_k": 1}, "'indices' and 'scores'"),
    ],
)
def test_malformed_answers_are_retried_then_fail_clearly(
    answer: Answer, info: dict[str, Any], match: str
) -> None:
    remote = model(Scripted(answer, info={**INFO, **info}), retries=2)
    with pytest.raises(SystemFailure, match="malformed answer") as caught:
        remote.forward(X)
    message = str(caught.value)
    assert match in message and f"POST {URL}/predict" in message and "HTTP 200" in message
    assert "3 attempts" in message and remote.retries_made == 2


def test_a_malformed_answer_then_a_good_one() -> None:
    remote = model(Scripted((200, {}, b"<html>upstream timeout</html>"), ok({"scores": SCORES})))
    assert torch.equal(remote.forward(X), torch.tensor(SCORES))
    assert remote.retries_made == 1


@pytest.mark.parametrize(
    ("info", "match"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"exposure": "everything"}, "exposure"),
        ({"exposure": "top-k"}, "top_k"),
        ({"bounds": [1.0, 0.0]}, "lower < upper"),
        ({"input_shape": [0]}, "input_shape"),
    ],
)
def test_malformed_info_fails_clearly(info: dict[str, Any], match: str) -> None:
    with pytest.raises(SystemFailure, match=f"GET {URL}/info") as caught:
        model(Scripted(ok({"scores": SCORES}), info={**INFO, **info}), retries=0)
    assert match in str(caught.value)


def test_bad_parameters_are_refused() -> None:
    transport = Scripted(ok({"scores": SCORES}))
    for bad in (
        {"timeout": 0},
        {"connect_timeout": -1},
        {"retries": -1},
        {"retry_budget": -1},
        {"backoff": -1.0},
        {"rate_limit": 0},
        {"protocol": "grpc"},
        {"exposes": "everything"},
        {"batch_size": 0},
    ):
        with pytest.raises(InputError, match=next(iter(bad))):
            model(transport, **bad)
    with pytest.raises(InputError, match="http"):
        HttpModel("ftp://example.org")
    with pytest.raises(InputError, match="'model_name' parameter of HttpModel is for protocol"):
        model(transport, model_name="mnist")


# ---------------------------------------------------------------- faults, plug-in transport
def test_a_500_is_retried_with_backoff() -> None:
    remote = model(Scripted((500, {}, b'{"error": "boom"}'), ok({"scores": SCORES})))
    assert torch.equal(remote.forward(X), torch.tensor(SCORES))
    assert remote.retries_made == 1 and remote.requests_sent == 3
    assert remote.waits == [0.01]  # type: ignore[attr-defined]


def test_persistent_500_fails_naming_request_status_and_attempts() -> None:
    remote = model(Scripted((503, {}, b'{"error": "overloaded"}')), retries=3)
    with pytest.raises(SystemFailure) as caught:
        remote.forward(X)
    assert f"POST {URL}/predict failed after 4 attempts: HTTP 503: 'overloaded'" in str(
        caught.value
    )
    assert remote.retries_made == 3
    assert remote.waits == [0.01, 0.02, 0.04]  # type: ignore[attr-defined]


def test_the_retry_budget_caps_retries_over_the_model_life() -> None:
    remote = model(
        Scripted((500, {}, b"<html>bad gateway</html>"), ok({"scores": SCORES})),
        retries=3,
        retry_budget=1,
    )
    remote.forward(X)  # one retry: the budget is spent
    remote._client.sleep = lambda s: None  # type: ignore[attr-defined]
    transport = Scripted((500, {}, b"<html>bad gateway</html>"))
    spent = model(transport, retries=3, retry_budget=0)
    with pytest.raises(SystemFailure, match="retry budget of 0 retries is spent") as caught:
        spent.forward(X)
    assert f"POST {URL}/predict" in str(caught.value) and "bad gateway" in str(caught.value)


def test_429_waits_as_long_as_retry_after_says() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    remote = model(
        Scripted(
            (429, {"Retry-After": "2"}, b""),
            (429, {"retry-after": later}, b""),
            ok({"scores": SCORES}),
        )
    )
    assert torch.equal(remote.forward(X), torch.tensor(SCORES))
    first, second = remote.waits  # type: ignore[attr-defined]
    assert first == 2.0 and 25 < second <= 30


def test_a_retry_after_too_long_is_not_waited_for() -> None:
    remote = model(Scripted((429, {"Retry-After": str(int(MAX_RETRY_AFTER) + 1)}, b"")))
    with pytest.raises(SystemFailure, match="asked to wait") as caught:
        remote.forward(X)
    assert f"POST {URL}/predict" in str(caught.value)
    assert remote.waits == []  # type: ignore[attr-defined]


def test_client_errors_are_not_retried() -> None:
    remote = model(Scripted((400, {}, b'{"error": "inputs leave the bounds"}')))
    with pytest.raises(SystemFailure, match=r"refused: HTTP 400: 'inputs leave the bounds'"):
        remote.forward(X)
    assert remote.retries_made == 0


def test_timeouts_and_connection_errors_are_retried_then_reported() -> None:
    remote = model(Scripted(httpx.ReadTimeout("timed out")), retries=1, timeout=0.5)
    with pytest.raises(SystemFailure, match=r"read timeout of 0\.5 s") as caught:
        remote.forward(X)
    assert "2 attempts" in str(caught.value) and f"POST {URL}/predict" in str(caught.value)
    remote = model(Scripted(httpx.ConnectError("Connection refused"), ok({"scores": SCORES})))
    assert torch.equal(remote.forward(X), torch.tensor(SCORES)) and remote.retries_made == 1
    remote = model(Scripted(httpx.RemoteProtocolError("reset")), retries=0)
    with pytest.raises(SystemFailure, match="connection failed"):
        remote.forward(X)


def test_rate_limit_spaces_requests_with_the_token_bucket() -> None:
    remote = model(Scripted(ok({"scores": [SCORES[0]]})), rate_limit=10.0, batch_size=1)
    remote.forward(torch.rand(4, 4))
    waits = remote.waits  # type: ignore[attr-defined]
    # the sleeps are recorded, not slept: each request reserves the next token, 0.1 s apart
    assert len(waits) == 4 and sum(waits) == pytest.approx(1.0, abs=0.05)


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("0.25") == 0.25
    assert retry_after_seconds("-4") == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


def test_plain_data_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLORY_TEST_TOKEN", "s3cret")
    transport = Scripted(ok({"scores": SCORES}))
    remote = model(
        transport,
        bounds=(0.0, 1.0),
        rate_limit=100.0,
        headers={"X-Team": "red"},
        token_env="MALLORY_TEST_TOKEN",
    )
    remote.forward(X)
    sent = transport.headers[-1]
    assert sent["authorization"] == "Bearer s3cret" and sent["x-team"] == "red"
    data = remote.to_dict()
    assert data == {
        "url": URL,
        "protocol": "mallory",
        "bounds": [0.0, 1.0],
        "timeout": 10.0,
        "connect_timeout": 5.0,
        "retries": 3,
        "retry_budget": 100,
        "backoff": 0.01,
        "rate_limit": 100.0,
        "headers": {"X-Team": "red"},
        "token_env": "MALLORY_TEST_TOKEN",
    }
    assert "s3cret" not in json.dumps(data)
    again = HttpModel.from_dict(json.loads(json.dumps(data)), transport=transport)
    assert again.to_dict() == data and again.input_shape == remote.input_shape
    with pytest.raises(InputError, match="no key 'retry'"):
        HttpModel.from_dict({**data, "retry": 1}, transport=transport)
    monkeypatch.delenv("MALLORY_TEST_TOKEN")
    with pytest.raises(InputError, match="MALLORY_TEST_TOKEN"):
        HttpModel.from_dict(data, transport=transport)


# ------------------------------------------------------------ a real server: mallory.serve
@pytest.fixture(scope="module")
def local() -> TorchModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 5))
    return TorchModel(net, input_shape=(1, 4, 4), bounds=(0.0, 1.0), name="tiny")


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    return torch.rand(37, 1, 4, 4, generator=torch.Generator().manual_seed(1))


def test_round_trip_scores_and_logits(local: TorchModel, inputs: torch.Tensor) -> None:
    with serve(local, max_batch=8) as server:
        remote = HttpModel(server.url)
        assert remote.input_shape == (1, 4, 4) and remote.name == "tiny"
        assert remote.batch_size == 8
        assert torch.equal(remote.forward(inputs), local.forward(inputs).softmax(1))
        assert remote.requests_sent == 1 + 5
    with serve(local, exposure="logits") as server:
        remote = HttpModel(server.url)
        assert torch.equal(remote.forward(inputs), local.forward(inputs))
        oracle = mallory.Oracle(remote, mallory.white_box("linf", 0.1, knowledge="zero"))
        assert torch.equal(oracle.logits(inputs, torch.arange(37)), local.forward(inputs))


def test_top_k_and_label_servers(local: TorchModel, inputs: torch.Tensor) -> None:
    probs = local.forward(inputs).softmax(1)
    with serve(local, exposure="top-k", top_k=2) as server:
        remote = HttpModel(server.url)
        assert remote.exposes is Exposure.TOP_K
        out = remote.forward(inputs)
        top = probs.topk(2, dim=1)
        assert torch.equal(out.gather(1, top.indices), top.values)
        assert torch.equal(out.argmax(1), probs.argmax(1))
        with pytest.raises(AccessError):
            mallory.Oracle(remote, mallory.score_based())
    with serve(local, exposure="label") as server:
        remote = HttpModel(server.url)
        assert remote.exposes is Exposure.LABEL
        with pytest.raises(AccessError, match="label"):
            mallory.Oracle(remote, mallory.score_based())
        oracle = mallory.Oracle(remote, mallory.label_only())
        labels = oracle.labels(inputs, torch.arange(len(inputs)))
        assert torch.equal(labels, probs.argmax(1))
        assert oracle.total_queries == len(inputs)


def test_server_killed_mid_use(local: TorchModel, inputs: torch.Tensor) -> None:
    server = serve(local)
    remote = HttpModel(server.url, retries=2, backoff=0.01)
    remote.forward(inputs)
    server.close()
    with pytest.raises(SystemFailure, match="connection failed") as caught:
        remote.forward(inputs)
    assert f"POST {server.url}/predict" in str(caught.value)
    assert "3 attempts" in str(caught.value)


def test_a_score_based_attack_over_http_matches_the_local_one(
    local: TorchModel, inputs: torch.Tensor
) -> None:
    """Square through HttpModel gives the local result bit for bit; when the server dies
    mid-attack, the failure reaches the result with its cause."""
    attack = mallory.create("square", n_queries=30)
    threat = mallory.score_based("linf", 0.3, queries=50)
    y = local.forward(inputs).argmax(1)
    at_home = attack(mallory.Oracle(local, threat), inputs, y, rng=0)
    with serve(local, max_batch=16) as server:
        over_http = attack(mallory.Oracle(HttpModel(server.url), threat), inputs, y, rng=0)
    assert at_home.success.any()
    assert torch.equal(over_http.success, at_home.success)
    assert torch.equal(over_http.x_adv, at_home.x_adv)
    assert torch.equal(over_http.queries, at_home.queries)

    server = serve(local, max_batch=16)
    remote = HttpModel(
        server.url, transport=DiesAfter(server.close, predictions=5), retries=1, backoff=0.01
    )
    result = attack(mallory.Oracle(remote, threat), inputs, y, rng=0)
    failure = result.error if result.error is not None else ""
    assert "connection failed" in failure and f"POST {server.url}/predict" in failure


class DiesAfter(httpx.BaseTransport):
    """The network, until ``kill`` is called before the prediction request after
    ``predictions`` of them."""

    def __init__(self, kill: Any, predictions: int) -> None:
        self.network = httpx.HTTPTransport()
        self.kill = kill
        self.left = predictions

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/predict":
            if self.left == 0:
                self.kill()
            self.left -= 1
        return self.network.handle_request(request)


# ---------------------------------------------------------------- a real misbehaving server
class Misbehaving(BaseHTTPRequestHandler):
    """Answers /info, and /predict by the next entry of the server's script."""

    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses its connection
    disable_nagle_algorithm = True  # headers and body go out in two writes

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._send(200, json.dumps({**INFO, "max_batch": 8}).encode())

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server: Any = self.server
        with server.lock:
            action = server.script.pop(0) if len(server.script) > 1 else server.script[0]
            server.connections.add(self.client_address)
        good = json.dumps({"scores": [SCORES[0]] * len(body["inputs"])}).encode()
        if action == "ok":
            self._send(200, good)
        elif action == "500":
            self._send(500, b'{"error": "internal"}')
        elif action.startswith("429"):
            self._send(429, b'{"error": "slow down"}', {"Retry-After": action.split(":")[1]})
        elif action == "garbage":
            self._send(200, b"<html><body>504 upstream timed out</body></html>")
        elif action.startswith("sleep"):
            time.sleep(float(action.split(":")[1]))
            self._send(200, good)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        with contextlib.suppress(ConnectionError):  # the client gave up waiting
            self.wfile.write(body)


@pytest.fixture
def misbehaving() -> Iterator[Any]:
    httpd: Any = ThreadingHTTPServer(("127.0.0.1", 0), Misbehaving)
    httpd.daemon_threads = True
    httpd.lock = threading.Lock()
    httpd.script = ["ok"]
    httpd.connections = set()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_real_500_then_success_on_one_connection(misbehaving: Any) -> None:
    misbehaving.script = ["500", "500", "ok"]
    remote = HttpModel(misbehaving.url, backoff=0.01)
    assert torch.equal(remote.forward(X), torch.tensor([SCORES[0]] * 2))
    assert remote.retries_made == 2 and remote.requests_sent == 4
    assert len(misbehaving.connections) == 1  # connection reuse: 3 predictions, 1 connection


def test_real_persistent_500(misbehaving: Any) -> None:
    misbehaving.script = ["500"]
    remote = HttpModel(misbehaving.url, retries=2, backoff=0.01)
    with pytest.raises(SystemFailure, match=r"after 3 attempts: HTTP 500: 'internal'"):
        remote.forward(X)


def test_real_429_waits_and_retries(misbehaving: Any) -> None:
    misbehaving.script = ["429:0.2", "ok"]
    remote = HttpModel(misbehaving.url, backoff=0.01)
    started = time.perf_counter()
    remote.forward(X)
    assert time.perf_counter() - started >= 0.2 and remote.retries_made == 1


def test_real_html_with_status_200_is_retried(misbehaving: Any) -> None:
    misbehaving.script = ["garbage", "ok"]
    remote = HttpModel(misbehaving.url, backoff=0.01)
    assert torch.equal(remote.forward(X), torch.tensor([SCORES[0]] * 2))
    misbehaving.script = ["garbage"]
    with pytest.raises(SystemFailure, match="HTTP 200 with a malformed answer") as caught:
        remote.forward(X)
    assert "504 upstream timed out" in str(caught.value)
    assert f"POST {misbehaving.url}/predict" in str(caught.value)


def test_real_timeout(misbehaving: Any) -> None:
    remote = HttpModel(misbehaving.url, timeout=0.2, retries=1, backoff=0.01)
    misbehaving.script = ["sleep:0.5"]
    with pytest.raises(SystemFailure, match=r"read timeout of 0\.2 s"):
        remote.forward(X)
    misbehaving.script = ["sleep:0.5", "ok"]
    assert torch.equal(remote.forward(X), torch.tensor([SCORES[0]] * 2))
