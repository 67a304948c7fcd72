"""What a stateful query-stream detector costs ``mallory serve``: requests/s with and without
it at batch 1 and 100, the server's CPU per request, and the policy's own time per query.

The served system is the one of ``benchmarks/serve_throughput.py``: a seeded, untrained
MNIST-sized MLP (``1x28x28 -> 128 -> 10``, float32, scores exposure, torch with one thread),
served in this process. The detector is :class:`mallory.access.detectors.StatefulDetector`
with its defaults (k 10, a memory of 1,000 inputs per client, a projection to 64 numbers),
calibrated on MNIST's training digits at 0.1% false positives. The load comes from a separate
process (this file, ``client`` sub-command, no torch): ``--threads`` keep-alive connections,
one client address (one account), sending random-pixel batches in a closed loop, each thread
from its own pool of 200 distinct rows (random pixels are far apart: the detector scores every
row and flags none; a refused request would count as an error). Before the timed
``--seconds``, the client sends 1,100 distinct rows, so the detector's memory is full and each
row is compared with 1,000.

Then, in process, the policy alone: ``admit`` of a batch of 1 and of 100 random MNIST-sized
inputs for an account whose memory is full (the median of many calls), per row.

    .venv/bin/python benchmarks/detector_cost.py
    .venv/bin/python benchmarks/detector_cost.py rates   # what it flags, on MNIST

``rates`` measures what the detector is for, on MNIST and the zoo's ``mnist-cnn``: the share of
HopSkipJump runs (L2, minimizing) flagged within their first 50 queries and of Square runs
(Linf, eps 0.1) within their first 100, one account and one held-out digit the model gets
right per run, 40 runs each; and the share of 100 benign accounts flagged, each sending 100
distinct held-out digits (20 per request), with the detector calibrated on the training
digits (``tests/access/test_detectors.py`` asserts the same on scikit-learn's 8x8 digits).

Each run measures every (detector, batch) pair once, in an order that rotates from run to
run; the report gives the median over ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import resource
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

WARMUP_ROWS = 1100  # more than the detector's memory of 1,000 inputs
POOL_ROWS = 200  # distinct rows per load thread (a body is sent again once they are used)


# ---------------------------------------------------------------- the load generator
def _bodies(count: int, batch: int, features: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    row = "[" + ",".join(["%.9g"] * features) + "]"
    out = []
    for _ in range(count):
        rows = [row % tuple(rng.random() for _ in range(features)) for _ in range(batch)]
        out.append(('{"inputs": [' + ",".join(rows) + "]}").encode())
    return out


def _client(
    host: str, port: int, batch: int, features: int, seconds: float, threads: int
) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    warm = http.client.HTTPConnection(host, port, timeout=30)
    warmup = _bodies(-(-WARMUP_ROWS // batch), batch, features, seed=-batch)
    for body in warmup:  # distinct rows: the memory fills with nothing flagged
        warm.request("POST", "/predict", body=body, headers=headers)
        if warm.getresponse().read()[:2] != b'{"':
            raise SystemExit("the warm-up was refused")
    warm.close()
    pool = max(2, POOL_ROWS // batch)
    every = [_bodies(pool, batch, features, 100 * batch + t) for t in range(threads)]

    def work(bodies: list[bytes]) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=30)
        done = errors = sent_all = 0
        mine: list[float] = []
        k = 0
        while True:
            sent = time.perf_counter()
            if sent >= stop:
                break
            try:
                connection.request("POST", "/predict", body=bodies[k % pool], headers=headers)
                response = connection.getresponse()
                data = response.read()
                ok = response.status == 200 and data.startswith(b'{"')
            except (OSError, http.client.HTTPException):
                connection.close()
                ok = False
            k += 1
            end = time.perf_counter()
            sent_all += 1
            if end <= stop:
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

    lock = threading.Lock()
    totals = {"requests": 0, "errors": 0, "sent": 0}
    latencies: list[float] = []
    start = time.perf_counter()
    stop = start + seconds
    workers = [threading.Thread(target=work, args=(bodies,)) for bodies in every]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    latencies.sort()
    return {
        "batch": batch,
        "requests": totals["requests"],
        "errors": totals["errors"],
        "sent": totals["sent"] + len(warmup),
        "requests_per_s": totals["requests"] / seconds,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
    }


# ---------------------------------------------------------------- the served side
def _system() -> Any:
    import torch
    from torch import nn

    from mallory.systems import TorchModel

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    return TorchModel(net.eval(), input_shape=(1, 28, 28), bounds=(0.0, 1.0), name="mlp")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _served(system: Any, batch: int, seconds: float, threads: int) -> dict[str, Any]:
    from mallory.serve import serve

    with serve(system, max_batch=max(batch, 1)) as server:
        command = [
            sys.executable,
            __file__,
            "client",
            server.url,
            "--batch",
            str(batch),
            "--seconds",
            str(seconds),
            "--threads",
            str(threads),
        ]
        cpu = _cpu_seconds()
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        cpu = _cpu_seconds() - cpu
    result: dict[str, Any] = json.loads(done.stdout)
    result["server_cpu_ms"] = 1000 * cpu / max(1, result["sent"])
    return result


def _policy_us(detector: Any, batch: int, calls: int) -> float:
    """Median microseconds per row of ``detector.admit`` on a batch, memory full."""
    import torch

    from mallory.access.events import EventLog
    from mallory.access.policies import Request

    log = EventLog()
    generator = torch.Generator().manual_seed(batch)
    ids = torch.full((1000,), -1)
    detector.admit(Request(ids, "bench", x=torch.rand(1000, 1, 28, 28, generator=generator)), log)
    xs = torch.rand(calls, batch, 1, 28, 28, generator=generator)  # all distinct
    ids = torch.full((batch,), -1)
    times = []
    for x in xs:
        start = time.perf_counter()
        answer = detector.admit(Request(ids, "bench", x=x), log)
        times.append(time.perf_counter() - start)
        if not answer.all:
            raise SystemExit("the benchmark's random inputs were flagged: its figures are void")
    return 1e6 * statistics.median(times) / batch


def _rates() -> None:
    import torch

    import mallory
    from mallory import Oracle, create
    from mallory.access.detectors import StatefulDetector, queries_until_flagged
    from mallory.zoo import load_dataset, load_model

    torch.set_num_threads(1)
    model = load_model("mnist-cnn", progress=False)
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    calibration = StatefulDetector.calibrate(train.x, fpr=0.001)
    print(f"detector: {calibration!r}")
    right = model.forward(test.x).argmax(1) == test.y
    x, y = test.x[right][:40], test.y[right][:40]
    runs = {
        "hopskipjump": (create("hopskipjump", max_queries=50), mallory.label_only("l2"), 50),
        "square": (create("square", n_queries=100), mallory.score_based("linf", 0.1), 100),
    }
    for name, (attack, threat, window) in runs.items():
        after = []
        for i in range(len(x)):
            system = model.with_policies(StatefulDetector(calibration.threshold))
            oracle = Oracle(system, threat.with_(queries_per_sample=window))
            result = attack(oracle, x[i : i + 1], y[i : i + 1], ids=torch.tensor([i]))
            after.append((queries_until_flagged(oracle.log.calls()), bool(result.success[0])))
        caught = [q for q, _ in after if q < window]
        missed = [(q, won) for q, won in after if not q < window]
        print(
            f"{name}: {len(caught)}/{len(after)} runs flagged within {window} queries, after "
            f"{statistics.median(caught):.0f} (median; at most {max(caught):.0f}); "
            f"not flagged: {sum(1 for _, won in missed if won)} won before, "
            f"{sum(1 for _, won in missed if not won)} not"
        )
    detector = StatefulDetector(calibration.threshold)
    oracle = Oracle(model.with_policies(detector), mallory.label_only("l2", queries=None))
    generator = torch.Generator().manual_seed(0)
    for account in range(100):
        oracle.account = f"user-{account}"
        order = torch.randperm(len(test), generator=generator)[:100]
        for part in order.split(20):
            oracle.labels(test.x[part], torch.full((len(part),), -1))
    print(f"benign: {len(detector.flagged(oracle.log))}/100 accounts flagged")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    client = sub.add_parser("client")
    client.add_argument("url")
    client.add_argument("--batch", type=int, required=True)
    client.add_argument("--seconds", type=float, required=True)
    client.add_argument("--threads", type=int, default=4)
    sub.add_parser("rates")
    parser.add_argument("--batches", default="1,100")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.command == "client":
        host, port = args.url.removeprefix("http://").rsplit(":", 1)
        out = _client(host, int(port), args.batch, 784, args.seconds, args.threads)
        print(json.dumps(out))
        return
    if args.command == "rates":
        _rates()
        return

    import torch

    from mallory.access.detectors import StatefulDetector
    from mallory.zoo import load_dataset

    torch.set_num_threads(1)
    system = _system()
    calibration = StatefulDetector.calibrate(load_dataset("mnist", "train").x, fpr=0.001)
    print(f"detector: {calibration!r}")
    batches = [int(b) for b in args.batches.split(",")]
    pairs = [(watched, batch) for batch in batches for watched in (False, True)]
    results: dict[tuple[bool, int], list[dict[str, Any]]] = {p: [] for p in pairs}
    for run in range(args.runs):
        order = pairs[run % len(pairs) :] + pairs[: run % len(pairs)]
        for watched, batch in order:
            detector = StatefulDetector(calibration.threshold)
            served = system.with_policies(detector) if watched else system
            result = _served(served, batch, args.seconds, args.threads)
            result["flagged"] = len(detector.flagged()) if watched else 0
            results[(watched, batch)].append(result)
            print(json.dumps({"run": run, "detector": watched, **result}), flush=True)
    print()
    print("| detector | batch | requests/s (range) | rows/s | p50 ms | server CPU ms/request |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for watched, batch in pairs:
        got = results[(watched, batch)]
        rps = [r["requests_per_s"] for r in got]
        errors = sum(r["errors"] for r in got) + sum(r["flagged"] for r in got)
        print(
            f"| {'on' if watched else 'off'} | {batch} | {statistics.median(rps):,.0f} "
            f"({min(rps):,.0f}-{max(rps):,.0f}) | {statistics.median(rps) * batch:,.0f} | "
            f"{statistics.median(r['p50_ms'] for r in got):.1f} | "
            f"{statistics.median(r['server_cpu_ms'] for r in got):.2f} |"
            + (f" ERRORS: {errors}" if errors else "")
        )
    print()
    print("| the policy alone (memory full) | µs per row |")
    print("| --- | ---: |")
    for batch, calls in ((1, 2000), (100, 200)):
        detector = StatefulDetector(calibration.threshold)
        us = statistics.median(_policy_us(detector, batch, calls) for _ in range(args.runs))
        print(f"| batch {batch} | {us:,.1f} |")


if __name__ == "__main__":
    main()
