"""mallory serve against what an attacker sends: each failure of the stdlib server, fixed.

The stdlib server it replaced left a 1,000-deep JSON body unanswered (a RecursionError and a
traceback), held a thread for good per request whose body was shorter than its
Content-Length, answered unknown methods and oversized headers with HTML pages, and named
its Python version in the ``Server`` header. Each test here sends that request over a raw
socket and checks the JSON answer, the time it took, and that nothing else suffered.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mallory.access.policies import RateLimit
from mallory.serve import Server, serve
from mallory.serve.limits import ClientRateLimit, nesting_depth
from mallory.systems import CallableModel, TorchModel

ROW = [0.5] * 6
TIMEOUT = 1.0  # read_timeout of the servers here


@pytest.fixture(scope="module")
def local() -> TorchModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    return TorchModel(net, input_shape=(2, 3), bounds=(0.0, 1.0), name="small")


@pytest.fixture
def server(local: TorchModel) -> Iterator[Server]:
    with serve(local, exposure="label", read_timeout=TIMEOUT) as running:
        yield running


@pytest.fixture(autouse=True)
def no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Nothing an attacker sends may end in a logged error (a traceback)."""
    with caplog.at_level(logging.ERROR):
        yield
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def connect(server: Server, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=timeout)


def answer(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    """Read one HTTP answer from a socket: status, headers (lower-case), JSON body."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    data = response.read()
    headers = {k.lower(): v for k, v in response.getheaders()}
    return response.status, headers, json.loads(data) if data else None


def send(server: Server, data: bytes) -> tuple[int, dict[str, str], Any]:
    with connect(server) as sock:
        sock.sendall(data)
        return answer(sock)


def post(path: str, body: bytes, extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


# ------------------------------------------------------------------ nesting
def test_a_1000_deep_body_is_refused_before_parsing(server: Server) -> None:
    deep = b"[" * 1000 + b"]" * 1000
    for path, body in (
        ("/predict", b'{"inputs": ' + deep + b"}"),
        ("/predict", b"[" * 1000),
        ("/v2/models/small/infer", b'{"inputs": [{"data": ' + deep + b"}]}"),
    ):
        status, headers, error = send(server, post(path, body))
        assert status == 400 and headers["content-type"] == "application/json"
        assert re.search(r"nests 100\d levels deep.* at most \d+$", error["error"])
    nested = json.dumps({"inputs": [[ROW[:3], ROW[3:]]]}).encode()  # the full input shape
    assert send(server, post("/predict", nested))[0] == 200


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=20,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(json_values, st.booleans())
def test_nesting_depth_is_the_parsed_depth(value: Any, ascii_only: bool) -> None:
    """Brackets, quotes and backslashes inside strings do not count; UTF-8 does not matter."""
    text = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert nesting_depth(text) == depth(value)


def test_nesting_depth_of_tricky_strings() -> None:
    assert nesting_depth(rb'["\\", ["\"[[", "\\\"]"]]') == 2
    assert nesting_depth(b'{"a": "]]]]"}') == 1
    assert nesting_depth(b"") == 0
    assert nesting_depth(b"[[[]]]]]]][[") == 3  # not JSON: at least what a parser would reach


# ------------------------------------------------------------------ slow and short bodies
def test_short_bodies_time_out_and_hold_no_thread(server: Server) -> None:
    threads = threading.active_count()
    started = time.monotonic()
    short = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
    held = []
    for _ in range(30):
        sock = connect(server)
        sock.sendall(short)
        held.append(sock)
    try:
        quick = time.monotonic()
        body = json.dumps({"inputs": [ROW]}).encode()
        assert send(server, post("/predict", body))[0] == 200  # not blocked by the 30
        assert time.monotonic() - quick < TIMEOUT / 2
        assert threading.active_count() <= threads + 1  # the model's worker, at most
        for sock in held:
            status, headers, error = answer(sock)
            assert status == 408 and headers["connection"] == "close"
            assert "1 of 100 bytes" in error["error"]
            assert closed(sock)
        assert time.monotonic() - started < TIMEOUT + 3
    finally:
        for sock in held:
            sock.close()


def test_slow_heads_time_out(server: Server) -> None:
    started = time.monotonic()
    with connect(server) as partial, connect(server) as silent:
        partial.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        status, _, error = answer(partial)
        assert status == 408 and "did not arrive within 1 s" in error["error"]
        assert closed(silent)  # sent nothing: closed without a word
    assert time.monotonic() - started < TIMEOUT + 3


def test_after_an_answer_the_next_head_has_a_deadline_too(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer(sock)[0] == 200
        sock.sendall(b"GET /info HTTP/1.1\r\n")
        assert answer(sock)[0] == 408


# ------------------------------------------------------------------ methods, heads, lengths
def test_unknown_and_wrong_methods_answer_405_json(server: Server) -> None:
    for method, path, allowed in (
        ("FOO", "/predict", "POST"),
        ("DELETE", "/info", "GET, HEAD"),
        ("PUT", "/v2/models/small/infer", "POST"),
        ("POST", "/openapi.json", "GET, HEAD"),
    ):
        status, headers, error = send(
            server, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        assert (status, headers["allow"]) == (405, allowed)
        assert error == {"error": f"{path} takes {allowed}"}
    status, _, error = send(server, b"FOO /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 404 and "GET /openapi.json" in error["error"]


def test_oversized_heads_answer_431_json(server: Server) -> None:
    big = "X-Padding: " + "a" * 20_000 + "\r\n"
    status, headers, error = send(server, f"GET /info HTTP/1.1\r\nHost: x\r\n{big}\r\n".encode())
    assert status == 431 and "at most 16384" in error["error"]
    assert headers["connection"] == "close"
    status, _, error = send(server, f"GET /{'a' * 20_000} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 431
    with connect(server) as sock:  # dripped, never finished: h11's own limit
        sock.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n")
        for _ in range(20):
            sock.sendall(b"X-Padding: " + b"a" * 1000 + b"\r\n")
        status, _, error = answer(sock)
    assert status == 431 and error["error"].startswith("the request line and headers exceed")


def test_malformed_requests_answer_400_json(server: Server) -> None:
    for request in (
        b"NOT HTTP AT ALL\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /info HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    ):
        status, headers, error = send(server, request)
        assert status == 400 and headers["content-type"] == "application/json"
        assert error["error"].startswith("malformed HTTP request")


def test_a_body_needs_a_length(server: Server) -> None:
    status, _, error = send(server, b"POST /predict HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 411 and "Content-Length" in error["error"]
    chunked = b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert send(server, chunked)[0] == 411


def test_an_oversized_body_is_refused_unread(server: Server) -> None:
    started = time.monotonic()
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n"
    status, headers, error = send(server, head)
    assert status == 413 and "1000000000 bytes" in error["error"]
    assert headers["connection"] == "close" and time.monotonic() - started < TIMEOUT


def test_booleans_and_strings_are_not_numbers(server: Server) -> None:
    for rows in ([[False, *ROW[1:]]], [[True] * 6], [["0.5"] * 6]):
        body = json.dumps({"inputs": rows}).encode()
        status, _, error = send(server, post("/predict", body))
        assert status == 400 and "list of rows of 6 numbers" in error["error"]


def test_no_banner_names_the_software(server: Server) -> None:
    answers = [
        send(server, b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n"),
        send(server, b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"),
        send(server, b"BROKEN\r\n\r\n"),
        send(server, post("/predict", b"[" * 1000)),
        send(server, f"GET /info HTTP/1.1\r\nHost: x\r\nX: {'a' * 20_000}\r\n\r\n".encode()),
    ]
    for _, headers, body in answers:
        assert "server" not in headers and "x-powered-by" not in headers
        text = (json.dumps(headers) + json.dumps(body)).lower()
        for name in ("python", "uvicorn", "starlette", "h11"):
            assert name not in text


def test_head_answers_without_a_body(server: Server) -> None:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=5)
    connection.request("HEAD", "/info")
    response = connection.getresponse()
    assert response.status == 200 and response.read() == b""
    connection.close()


# ------------------------------------------------------------------ the model's side
def test_a_slow_model_does_not_stall_other_connections() -> None:
    def slow(x: torch.Tensor) -> torch.Tensor:
        time.sleep(1.0)
        return torch.zeros(len(x), 4)

    system = CallableModel(slow, input_shape=(6,), num_classes=4, bounds=(0, 1))
    with serve(system) as server:
        body = json.dumps({"inputs": [ROW]}).encode()
        results: list[int] = []
        worker = threading.Thread(
            target=lambda: results.append(send(server, post("/predict", body))[0])
        )
        worker.start()
        time.sleep(0.2)  # the model is thinking
        started = time.monotonic()
        assert send(server, b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200
        assert time.monotonic() - started < 0.5
        worker.join()
    assert results == [200]


def test_too_many_waiting_requests_answer_503() -> None:
    """At most 64 requests wait for the model (their bodies held in memory); more get 503."""
    release = threading.Event()

    def stuck(x: torch.Tensor) -> torch.Tensor:
        release.wait(10)
        return torch.zeros(len(x), 4)

    system = CallableModel(stuck, input_shape=(6,), num_classes=4, bounds=(0, 1))
    request = post("/predict", json.dumps({"inputs": [ROW]}).encode())
    with serve(system) as server:
        waiting = [connect(server) for _ in range(64)]
        for sock in waiting:
            sock.sendall(request)
        time.sleep(0.3)
        status, headers, error = send(server, request)
        assert status == 503 and headers["retry-after"] == "1" and "64 requests" in error["error"]
        release.set()
        assert [answer(sock)[0] for sock in waiting] == [200] * 64
        for sock in waiting:
            sock.close()


def test_a_label_server_withholds_what_the_model_said() -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("p = 0.8731 for class 3")

    system = CallableModel(broken, input_shape=(6,), num_classes=4, bounds=(0, 1))
    with serve(system, exposure="label") as server:
        status, _, error = send(server, post("/predict", json.dumps({"inputs": [ROW]}).encode()))
    assert status == 500 and "0.8731" not in error["error"] and "withheld" in error["error"]


# ------------------------------------------------------------------ the rate limit
def test_the_rate_limit_is_the_access_policy() -> None:
    limit = ClientRateLimit(2.0)
    assert isinstance(limit.policy, RateLimit) and limit.policy.bucket.burst == 2.0
    assert limit.admit("a") is None and limit.admit("a") is None
    wait = limit.admit("a")
    assert wait is not None and 0 < wait <= 0.5
    assert limit.admit("b") is None  # one account per client address


def test_forwarded_for_does_not_choose_the_account(local: TorchModel) -> None:
    with serve(local, rate_limit=1.0) as server:
        statuses = [
            send(
                server,
                f"GET /info HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.{i}\r\n\r\n".encode(),
            )
            for i in range(2)
        ]
    assert [s[0] for s in statuses] == [200, 429]
    assert statuses[1][1]["retry-after"] == "1"
