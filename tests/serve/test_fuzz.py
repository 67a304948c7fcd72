"""Schemathesis against a served label-only model, as an attacker with the API's own document
would fuzz it: its examples, its coverage phase (boundary values, wrong types, missing and
extra fields, every undocumented method) and random generation, positive and negative.

The server runs in its own process (``fuzz_target.py``), so that its threads and memory can be
read before and after. Bounded: at most 25 generated requests per operation and phase (a
few hundred in all, about 20 s), and killed after 60 s. What must hold:

- no 5xx, every status and body as documented, invalid requests refused (schemathesis's
  checks; ``fuzz.toml`` lists the statuses a refusal may have);
- no hang: every answer within 5 s (``max_response_time``, and ``--request-timeout 5``);
- no score in any answer of a label server (``fuzz_hooks.py``);
- no growth: the server's threads and resident memory after the run are those before it,
  give or take what a few thousand requests may leave in allocator caches.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MAX_EXAMPLES = 25
MAX_SECONDS = 60
RSS_SLACK_MB = 64


def _status(pid: int) -> tuple[int, float]:
    """Threads and resident memory (MB) of a process, from /proc."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["Threads"]), int(fields["VmRSS"].split()[0]) / 1024


def _request(url: str, method: str, path: str, body: object = None) -> int:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        data = json.dumps(body).encode() if body is not None else None
        connection.request(method, path, body=data)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.fixture
def label_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    if not Path("/proc/self/status").exists():
        pytest.skip("reads the server's threads and memory from /proc")
    log = open(tmp_path / "server.err", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, str(HERE / "fuzz_target.py"), "label"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 120)
        url = process.stdout.readline().strip() if ready else ""
        assert url.startswith("http://127.0.0.1:"), (tmp_path / "server.err").read_text()
        yield process, url, tmp_path / "server.err"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_schemathesis_finds_nothing(label_server) -> None:  # type: ignore[no-untyped-def]
    process, url, errors = label_server
    row = [0.5] * 6
    tensor = {"name": "input", "shape": [1, 6], "datatype": "FP32", "data": row}
    for _ in range(20):  # warm up every route, the worker thread and the allocator
        assert _request(url, "GET", "/info") == 200
        assert _request(url, "POST", "/predict", {"inputs": [row] * 8}) == 200
        assert _request(url, "POST", "/v2/models/small/infer", {"inputs": [tensor]}) == 200
        assert _request(url, "POST", "/predict", {"inputs": [[2.0] * 6]}) == 400
        assert _request(url, "GET", "/openapi.json") == 200
    threads, rss = _status(process.pid)

    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": str(HERE / "fuzz_hooks.py"),
        "MALLORY_FUZZ_EXPOSURE": "label",
    }
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(HERE / "fuzz.toml"),
            "run",
            f"{url}/openapi.json",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--request-timeout",
            "5",
            "--generation-deterministic",
            "--no-color",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=MAX_SECONDS,
    )
    report = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    assert "Tested: 7" in run.stdout and "label_server_shows_no_score" not in run.stdout, report

    after_threads, after_rss = _status(process.pid)
    assert after_threads <= threads + 1, (threads, after_threads)
    assert after_rss < rss + RSS_SLACK_MB, (rss, after_rss)
    start = time.monotonic()
    assert _request(url, "GET", "/info") == 200
    assert time.monotonic() - start < 2
    assert "Traceback" not in errors.read_text()
