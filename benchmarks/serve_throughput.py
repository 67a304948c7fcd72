"""Requests/s and rows/s of ``mallory serve`` on loopback, and what a served model adds to an
attacker's wait.

The served system is a seeded, untrained MNIST-sized MLP (``1x28x28 -> 128 -> 10``, float32,
scores exposure, no rate limit). The server runs in this process (torch with ``--torch-threads``
threads); the load comes from a separate process (this file, ``client`` sub-command) that
imports no torch: ``--threads`` threads, each with its own keep-alive ``http.client``
connection (a connection pool of that size), each sending the same ``POST /predict`` body
(``batch`` rows of random pixels written as ``HttpModel`` writes them, ``%.9g``) in a closed
loop for ``--seconds`` after a short warm-up. Every answer is read whole and its status
checked; a request that fails counts as an error, not a request.

Then the latency check, the attacker's side of a local campaign: one thread, sequential
requests of ``batch`` rows, the median time from sending to the last byte of the answer,
next to the median time the model itself takes for that batch (``system.forward``, timed in
the server process). ``overhead`` is the difference: what the server adds to the model.

The server's CPU time per request (user and system, all its threads, from ``getrusage``) is
the steadiest figure on a shared machine: throughput and latency move with the load of other
processes, the CPU a request costs much less.

``--server-file PATH`` serves with the ``serve`` function of another file instead of
``mallory.serve`` (the stdlib server before the ASGI rewrite)::

    git show 6ba8fa0:src/mallory/serve.py > /tmp/before/serve_before.py
    .venv/bin/python benchmarks/serve_throughput.py --server-file /tmp/before/serve_before.py
    .venv/bin/python benchmarks/serve_throughput.py

Each run measures every batch size once, in an order that rotates from run to run; the
report gives the median over ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

WARMUP = 0.5


# ---------------------------------------------------------------- the load generator
def _body(batch: int, features: int, seed: int) -> bytes:
    rng = random.Random(seed)
    row = "[" + ",".join(["%.9g"] * features) + "]"
    rows = [row % tuple(rng.random() for _ in range(features)) for _ in range(batch)]
    return ('{"inputs": [' + ",".join(rows) + "]}").encode()


def _client(
    host: str, port: int, batch: int, features: int, seconds: float, threads: int
) -> dict[str, Any]:
    body = _body(batch, features, seed=batch)
    headers = {"Content-Type": "application/json"}
    start = time.perf_counter()
    measure_from = start + WARMUP
    stop = measure_from + seconds
    lock = threading.Lock()
    latencies: list[float] = []
    totals = {"requests": 0, "errors": 0, "sent": 0}

    def work() -> None:
        connection = http.client.HTTPConnection(host, port, timeout=30)
        mine: list[float] = []
        done = errors = sent_all = 0
        while True:
            sent = time.perf_counter()
            if sent >= stop:
                break
            try:
                connection.request("POST", "/predict", body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                ok = response.status == 200 and data.startswith(b'{"')
            except (OSError, http.client.HTTPException):
                connection.close()
                ok = False
            end = time.perf_counter()
            sent_all += 1
            if sent >= measure_from and end <= stop:
                if ok:
                    done += 1
                    mine.append(end - sent)
                else:
                    errors += 1
        connection.close()
        with lock:
            totals["requests"] += done
            totals["errors"] += errors
            totals["sent"] += sent_all
            latencies.extend(mine)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    latencies.sort()

    def quantile(q: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    return {
        "batch": batch,
        "threads": threads,
        "seconds": seconds,
        "requests": totals["requests"],
        "sent": totals["sent"],
        "errors": totals["errors"],
        "requests_per_s": totals["requests"] / seconds,
        "rows_per_s": totals["requests"] * batch / seconds,
        "p50_ms": quantile(0.5) if latencies else None,
        "p99_ms": quantile(0.99) if latencies else None,
    }


# ---------------------------------------------------------------- the served side
def _load_serve(server_file: str | None) -> Any:
    if server_file is None:
        from mallory.serve import serve

        return serve
    spec = importlib.util.spec_from_file_location("serve_under_test", server_file)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {server_file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_under_test"] = module
    spec.loader.exec_module(module)
    return module.serve


def _system(shape: tuple[int, ...]) -> Any:
    import torch
    from torch import nn

    from mallory.systems import TorchModel

    torch.manual_seed(0)
    features = math.prod(shape)
    net = nn.Sequential(nn.Flatten(), nn.Linear(features, 128), nn.ReLU(), nn.Linear(128, 10))
    return TorchModel(net.eval(), input_shape=shape, bounds=(0.0, 1.0), name="mlp")


def _model_ms(system: Any, batch: int) -> float:
    import torch

    generator = torch.Generator().manual_seed(batch)
    x = torch.rand(batch, *system.input_shape, generator=generator)
    times = []
    for _ in range(60):
        start = time.perf_counter()
        system.forward(x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[10:])


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_client(
    url: str, batch: int, features: int, seconds: float, threads: int
) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "client",
        url,
        "--batch",
        str(batch),
        "--features",
        str(features),
        "--seconds",
        str(seconds),
        "--threads",
        str(threads),
    ]
    cpu = _cpu_seconds()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    cpu = _cpu_seconds() - cpu
    result: dict[str, Any] = json.loads(done.stdout)
    # the server's CPU time (all its threads) per request it answered, warm-up included
    result["server_cpu_ms"] = 1000 * cpu / max(1, result["sent"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    client = sub.add_parser("client", help="the load generator (run by the benchmark)")
    client.add_argument("url")
    client.add_argument("--batch", type=int, default=1)
    client.add_argument("--features", type=int, default=784)
    client.add_argument("--seconds", type=float, default=5.0)
    client.add_argument("--threads", type=int, default=4)
    parser.add_argument("--server-file", help="serve with this file's serve() instead")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4, help="load-generator threads")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument(
        "--shape", default="1,28,28", help="the input shape of the served MLP (10 classes)"
    )
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()

    if args.command == "client":
        host, _, port = args.url.removeprefix("http://").rpartition(":")
        figures = _client(host, int(port), args.batch, args.features, args.seconds, args.threads)
        print(json.dumps(figures))
        return

    import torch

    torch.set_num_threads(args.torch_threads)
    serve = _load_serve(args.server_file)
    shape = tuple(int(d) for d in args.shape.split(","))
    features = math.prod(shape)
    system = _system(shape)
    label = args.server_file or "mallory.serve"
    print(f"server: {label}; load average {os.getloadavg()[0]:.2f}", flush=True)
    figures: dict[str, Any] = {"server": label, "throughput": {}, "latency": {}}
    with serve(system, max_batch=max(args.batches)) as server:
        runs: dict[int, list[dict[str, Any]]] = {b: [] for b in args.batches}
        for run in range(args.runs):
            order = (
                args.batches[run % len(args.batches) :] + args.batches[: run % len(args.batches)]
            )
            for batch in order:
                result = _run_client(server.url, batch, features, args.seconds, args.threads)
                runs[batch].append(result)
                print(
                    f"run {run + 1} batch {batch}: {result['requests_per_s']:.0f} req/s, "
                    f"{result['rows_per_s']:.0f} rows/s, p50 {result['p50_ms']:.2f} ms, "
                    f"server CPU {result['server_cpu_ms']:.2f} ms/request, "
                    f"errors {result['errors']}",
                    flush=True,
                )
        for batch in args.batches:
            figures["throughput"][batch] = {
                "requests_per_s": statistics.median(r["requests_per_s"] for r in runs[batch]),
                "rows_per_s": statistics.median(r["rows_per_s"] for r in runs[batch]),
                "p50_ms": statistics.median(r["p50_ms"] for r in runs[batch]),
                "server_cpu_ms": statistics.median(r["server_cpu_ms"] for r in runs[batch]),
                "errors": sum(r["errors"] for r in runs[batch]),
                "runs": runs[batch],
            }
    # the latency check: one client thread, the server's own time read from its query log
    with tempfile.TemporaryDirectory() as folder:
        for batch in args.batches:
            log = Path(folder) / f"queries-{batch}.jsonl"
            with serve(system, max_batch=max(args.batches), query_log=log) as server:
                latency = _run_client(server.url, batch, features, args.seconds, 1)
            lines = [json.loads(line) for line in log.read_text().splitlines()]
            served = [e["seconds"] for e in lines if e["status"] == 200 and e["path"] == "/predict"]
            model = _model_ms(system, batch)
            figures["latency"][batch] = {
                "model_ms": model,
                "server_ms": 1000 * statistics.median(served),
                "client_ms": latency["p50_ms"],
            }
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(
        f"| server | batch | requests/s | rows/s | p50 ms ({args.threads} threads) "
        "| server CPU ms/request |"
    )
    for batch, t in figures["throughput"].items():
        print(
            f"| {label} | {batch} | {t['requests_per_s']:.0f} | {t['rows_per_s']:.0f} "
            f"| {t['p50_ms']:.2f} | {t['server_cpu_ms']:.2f} |"
        )
    print("| server | batch | model ms | server ms (query log, p50) | client ms (1 thread, p50) |")
    for batch, lat in figures["latency"].items():
        print(
            f"| {label} | {batch} | {lat['model_ms']:.2f} | {lat['server_ms']:.2f} "
            f"| {lat['client_ms']:.2f} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
