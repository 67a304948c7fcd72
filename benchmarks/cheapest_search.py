"""The cheapest-evasion search against brute force, as the number of mutable features grows.

A synthetic tabular task: ``d`` features, each taking the values 0, 0.5 and 1 (3**d possible
edits of a sample), every one mutable in either direction at a seeded price per edit (1 to 10)
plus a price per unit of change (0 to 5). The system is a seeded linear model whose score is
a weighted sum of all the features (weights 0.5 to 1.5) against a threshold at half their
total: a sample far from it needs several edits, and the number of edits cheaper than its
optimum grows with ``d``. For each ``d``, on the same ``--samples`` random samples:

* ``brute force``: every edit of every sample, evaluated in batches of whole samples straight
  on the module (no oracle, no checks: its best case), priced by the constraints; the cheapest
  edit that flips the decision;
* ``exact``: ``create("cheapest", search="exact")`` through an Oracle with no budget (the
  uniform-cost enumeration, stopping at the first success), ``chunk`` candidates per sample in
  each query call;
* ``beam``: ``create("cheapest", search="beam", beam=8)`` (not exact: its price gap to the
  optimum is reported).

For each: the wall time, the rows the system evaluated per sample (the queries), the samples
evaded, and, for the searches, how many samples got the brute-force price and the mean extra
price. Above ``--brute-limit`` features brute force is not run (3**14 edits per sample is 4.8
million rows) and the beam is compared with the exact search's price, which is the optimum.
A sample that no edit flips would cost the exact search the whole space (it must look at every
edit to know), with Python's heap on top; here every sample can be flipped.

Run::

    .venv/bin/python benchmarks/cheapest_search.py --dims 4 6 8 10 12 --samples 20
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mallory import Oracle, create, no_knowledge
from mallory.systems import TorchModel
from mallory.threat.features import FeatureConstraints

LEVELS = (0.0, 0.5, 1.0)


def task(d: int, samples: int, seed: int) -> tuple[TorchModel, Tensor, Tensor, FeatureConstraints]:
    g = torch.Generator().manual_seed(seed * 1000 + d)
    module = nn.Linear(d, 2)
    weights = 0.5 + torch.rand(d, generator=g)
    with torch.no_grad():
        module.weight.copy_(torch.stack([torch.zeros(d), weights]))
        module.bias.copy_(torch.tensor([0.0, -0.5 * float(weights.sum())]))
    module.requires_grad_(False)
    x = torch.tensor(LEVELS)[torch.randint(0, 3, (samples, d), generator=g)]
    system = TorchModel(module, input_shape=(d,), bounds=(0.0, 1.0), name=f"mlp-{d}")
    features = FeatureConstraints(
        tuple(range(d)),
        (LEVELS,) * d,
        prices=tuple((1 + 9 * torch.rand(d, generator=g)).tolist()),
        unit_prices=tuple((5 * torch.rand(d, generator=g)).tolist()),
    )
    with torch.no_grad():
        y = module(x).argmax(1)
    return system, x, y, features


def brute_force(
    system: TorchModel, x: Tensor, y: Tensor, features: FeatureConstraints
) -> tuple[Tensor, float, int]:
    started = time.perf_counter()
    grid = torch.tensor(list(itertools.product(LEVELS, repeat=x.shape[1])))
    best = torch.full((len(x),), math.inf, dtype=torch.float64)
    rows = 0
    for i in range(len(x)):
        original = x[i].expand_as(grid)
        with torch.no_grad():
            flips = system.forward(grid).argmax(1) != y[i]
        rows += len(grid)
        cost = features.cost(grid, original).masked_fill(~flips, math.inf)
        best[i] = cost.min()
    return best, time.perf_counter() - started, rows


def search(
    system: TorchModel, x: Tensor, y: Tensor, features: FeatureConstraints, **params: Any
) -> tuple[Tensor, float, Tensor]:
    oracle = Oracle(system, no_knowledge(queries=None, features=features))
    attack = create("cheapest", exact_limit=10**9, max_queries=10**9, **params)
    started = time.perf_counter()
    result = attack(oracle, x, y)
    return result.edit_cost, time.perf_counter() - started, result.queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[4, 6, 8, 10, 12])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--brute-limit", type=int, default=12)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = []
    print(
        "| d | edits per sample | method | time s | rows per sample (mean) | evaded | "
        "optimal | mean extra price |"
    )
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for d in args.dims:
        system, x, y, features = task(d, args.samples, args.seed)
        best: Tensor | None = None
        if d <= args.brute_limit:
            best, seconds, rows = brute_force(system, x, y, features)
            found = int(torch.isfinite(best).sum())
            line = {"d": d, "space": 3**d, "method": "brute force", "seconds": seconds}
            out.append(line | {"rows": rows / len(x), "evaded": found, "optimal": found})
            out[-1]["extra"] = 0.0
        for method, params in (("exact", {"search": "exact"}), ("beam", {"search": "beam"})):
            cost, seconds, queries = search(system, x, y, features, **params)
            if best is None:
                best = cost  # the exact search's price is the optimum
            won = torch.isfinite(cost)
            same = won & torch.isfinite(best) & ((cost - best).abs() <= 1e-9)
            extra = float((cost - best)[won].mean()) if bool(won.any()) else math.nan
            out.append(
                {
                    "d": d,
                    "space": 3**d,
                    "method": method,
                    "seconds": seconds,
                    "rows": float(queries.double().mean()),
                    "evaded": int(won.sum()),
                    "optimal": int(same.sum()),
                    "extra": extra,
                }
            )
        for row in out[-3 if d <= args.brute_limit else -2 :]:
            print(
                f"| {row['d']} | {row['space']:,} | {row['method']} | {row['seconds']:.2f} | "
                f"{row['rows']:,.1f} | {row['evaded']}/{len(x)} | {row['optimal']} | "
                f"{row['extra']:.2f} |",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
