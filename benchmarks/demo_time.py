"""Wall time and peak memory of ``mallory demo``, and how campaign time grows with samples.

Two measurements, each in fresh processes:

* ``demo``: ``mallory demo --quiet`` as a user runs it, ``--runs`` times. ``--cold`` gives each
  run an empty model cache (``MALLORY_CACHE`` in a new temporary folder), so the zoo models are
  trained inside the measured time, as on a fresh machine; without it the models come from the
  cache. Peak memory is the maximum resident set size of the demo process (``ru_maxrss`` of a
  wrapper's only child).
* ``scaling``: the demo's MNIST campaign (models cached) at each of ``--sizes`` digits of the
  "all" split (the test split has only 1,000), ``--budget`` queries per digit for the
  label-only and score-based attacks; each size in its own process, timing
  ``Campaign.run`` only (building the surrogate excluded), ``--runs`` times per size.

Medians (and min/max) are printed as a markdown table; ``--json`` keeps every run.

Run::

    .venv/bin/python benchmarks/demo_time.py demo --cold --runs 3
    .venv/bin/python benchmarks/demo_time.py scaling --sizes 100 500 2000 --runs 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MEASURE_CHILD = """
import resource, subprocess, sys, time
started = time.perf_counter()
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
seconds = time.perf_counter() - started
if done.returncode:
    sys.stderr.write(done.stderr.decode()[-3000:])
    sys.exit(done.returncode)
print(seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""

SCALING_CHILD = """
import sys, time
from mallory.evaluation.demo import mnist_campaign
size, budget = int(sys.argv[1]), int(sys.argv[2])
campaign = mnist_campaign(size, split="all", query_budget=budget, progress=False)
started = time.perf_counter()
report = campaign.run(None, progress=False)
print(time.perf_counter() - started, report.clean_accuracy)
"""


def mallory_command() -> str:
    return str(Path(sys.executable).with_name("mallory"))


def run_demo(cold: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        env = dict(os.environ)
        if cold:
            env["MALLORY_CACHE"] = str(Path(folder) / "cache")
        command = [mallory_command(), "demo", "--quiet", "--out", str(Path(folder) / "out")]
        done = subprocess.run(
            [sys.executable, "-c", MEASURE_CHILD, *command],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode:
        raise SystemExit(f"mallory demo failed: {done.stderr}")
    seconds, peak_kb = done.stdout.split()
    return {"seconds": float(seconds), "peak_mib": int(peak_kb) / 1024}


def run_scaling(size: int, budget: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", SCALING_CHILD, str(size), str(budget)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"scaling run at {size} failed: {done.stderr[-3000:]}")
    seconds, accuracy = done.stdout.split()[-2:]
    return {"seconds": float(seconds), "clean_accuracy": float(accuracy)}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["demo", "scaling"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="empty model cache per demo run")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--budget", type=int, default=300, help="queries per digit (scaling)")
    parser.add_argument("--json", type=Path, help="write every run here")
    args = parser.parse_args()
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    print(f"cores: {os.cpu_count()}, OMP_NUM_THREADS: {threads}, {time.strftime('%Y-%m-%d')}")
    results: dict[str, Any] = {"what": args.what, "runs": []}
    if args.what == "demo":
        runs = []
        for k in range(args.runs):
            runs.append(run_demo(args.cold))
            print(f"run {k + 1}: {runs[-1]['seconds']:.1f} s, {runs[-1]['peak_mib']:.0f} MiB")
        results["runs"] = runs
        kind = "cold (models trained)" if args.cold else "warm (models cached)"
        print("\n| demo | wall s median (min-max) | peak MiB median (min-max) |")
        print("| --- | --- | --- |")
        print(
            f"| {kind} | {spread([r['seconds'] for r in runs])} | "
            f"{spread([r['peak_mib'] for r in runs])} |"
        )
    else:
        table = []
        for size in args.sizes:
            runs = [run_scaling(size, args.budget) for _ in range(args.runs)]
            results["runs"].append({"size": size, "runs": runs})
            seconds = [r["seconds"] for r in runs]
            table.append((size, seconds))
            print(f"{size} digits: {spread(seconds)} s", flush=True)
        base_size, base = table[0][0], statistics.median(table[0][1])
        print("\n| digits | campaign s median (min-max) | per digit s | x time of the first |")
        print("| --- | --- | --- | --- |")
        for size, seconds in table:
            median = statistics.median(seconds)
            print(
                f"| {size} | {spread(seconds)} | {median / size:.3f} | "
                f"{median / base:.2f} (x{size / base_size:.0f} digits) |"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
