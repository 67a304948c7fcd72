"""mallory's Square and HopSkipJump against ART's, at equal queries, on the same model and digits.

The zoo ``mnist-cnn`` and the first ``--samples`` correctly classified MNIST test digits; both
libraries attack the same model (ART through ``PyTorchClassifier`` around the same module),
the same samples, in one process, one after the other.

* Square, Linf, eps 0.3, ``p_init`` 0.05, margin loss, untargeted. mallory:
  ``create("square", n_queries=Q)`` on ``score_based("linf", 0.3, queries=Q)``; its count is
  one query per candidate (the striped start included; the clean input is never queried).
  ART: ``SquareAttack(max_iter=Q - 1, nb_restarts=1)``: the striped start plus ``Q - 1``
  iterations is at most ``Q`` candidates per sample, the same budget. ART also evaluates the
  clean input, re-evaluates the current point of every sample still standing each iteration
  and checks all samples (succeeded ones included) each iteration; those rows are counted
  under "model rows" but not as queries, which here mean candidates an attacker had to send.
* HopSkipJump, L2, untargeted, labels only, eps inf (minimal perturbation), 100 initial
  directions. mallory: ``create("hopskipjump", max_queries=B)`` on
  ``label_only("l2", inf, queries=B)``, one run per budget; its oracle counts every label
  query (the clean input included). ART's ``HopSkipJump`` has a budget in iterations, not
  queries, so it runs once per sample (``generate`` on one digit: its clean prediction, the
  random start, bisections, estimates and step searches are all that sample's) with no
  iteration limit; every model row is counted, and at the start of each iteration the
  current point and the count so far are recorded. For budget ``B`` a sample's result is the
  last recorded point whose count is at most ``B`` (the point after the last whole iteration
  that fit in ``B``), and its time is the time until then. The run of a sample stops once it
  has used the largest budget. This gives each sample ART's own result under the same
  per-sample query budget as mallory, without guessing ``max_iter``.

Distances are measured on the returned inputs in float64; success is the model's own
prediction on them. "model rows" is every row the module evaluated during the attack (a
forward pre-hook on its first layer), mallory's final judgement pass included.

Run::

    .venv/bin/python benchmarks/black_box_vs_art.py --samples 50 --json out.json

Needs ``adversarial-robustness-toolbox`` (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import contextlib

import numpy as np
import torch
from torch import Tensor, nn


class _Stop(Exception):
    """Raised inside ART's loop once a sample has used the largest budget."""


class RowCounter:
    """Counts the rows the module evaluates (a forward pre-hook on its first layer)."""

    def __init__(self, module: nn.Sequential) -> None:
        self.rows = 0
        self.on = False
        module[0].register_forward_pre_hook(self._hook)

    def _hook(self, _layer: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        if self.on:
            self.rows += len(inputs[0])


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _row(
    attack: str,
    library: str,
    budget: int,
    n: int,
    queries: list[float],
    rows: float,
    success: list[bool],
    distance: list[float],
    seconds: float,
    **extra: Any,
) -> dict[str, Any]:
    won = [d for d, s in zip(distance, success, strict=True) if s]
    won_queries = [q for q, s in zip(queries, success, strict=True) if s]
    return {
        "attack": attack,
        "library": library,
        "budget": budget,
        "samples": n,
        "queries_mean": statistics.fmean(queries),
        "queries_max": max(queries),
        "model_rows_mean": rows / n,
        "success_rate": sum(success) / n,
        "median_distance": _median(won),
        "median_queries_of_successes": _median(won_queries),
        "seconds": seconds,
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50, help="correctly classified digits")
    parser.add_argument(
        "--large-samples",
        type=int,
        default=None,
        help="digits (the first of --samples) for HopSkipJump budgets above 1000 (default all)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hsj-budgets", default="1000,5000", help="comma-separated queries")
    parser.add_argument("--square-queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--art-batch", type=int, default=512, help="ART HSJ predict batch size")
    parser.add_argument("--json", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    budgets = sorted(int(b) for b in args.hsj_budgets.split(","))
    large = args.samples if args.large_samples is None else min(args.large_samples, args.samples)

    os.environ.setdefault("MALLORY_CACHE", str(Path(__file__).resolve().parent.parent / ".cache"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    from art.attacks.evasion import HopSkipJump, SquareAttack
    from art.estimators.classification import PyTorchClassifier

    import mallory
    from mallory.zoo import load_dataset, load_model

    system = load_model("mnist-cnn")
    module: nn.Sequential = system.module  # type: ignore[attr-defined]
    module.eval()
    data = load_dataset("mnist", split="test")
    with torch.no_grad():
        correct = (module(data.x).argmax(1) == data.y).nonzero().squeeze(1)
    keep = correct[: args.samples]
    x, y = data.x[keep].float(), data.y[keep].long()
    n = len(x)
    x_np, y_np = x.numpy().astype(np.float32), y.numpy()
    y_hot = np.eye(10, dtype=np.float32)[y_np]
    counter = RowCounter(module)

    def predict(z: Tensor | np.ndarray) -> Tensor:
        with torch.no_grad():
            return module(torch.as_tensor(np.asarray(z), dtype=torch.float32)).argmax(1)

    def measured(z: Tensor | np.ndarray, lp: float) -> tuple[list[bool], list[float]]:
        adv = torch.as_tensor(np.asarray(z), dtype=torch.float64)
        delta = (adv - x.double()).flatten(1)
        dist = delta.abs().amax(1) if math.isinf(lp) else delta.norm(dim=1)
        return (predict(adv) != y).tolist(), dist.tolist()

    class Counting(PyTorchClassifier):  # type: ignore[misc]
        """Records, at each of SquareAttack's own checks, which samples still stand."""

        checks: list[np.ndarray]
        in_loss = False

        def predict(self, x: np.ndarray, batch_size: int = 128, **kw: Any) -> np.ndarray:
            # ART's HopSkipJump hands float64 points to a float32 module: cast them
            out = super().predict(x.astype(np.float32), batch_size=batch_size, **kw)
            if not self.in_loss and len(x) == n:
                self.checks.append(out.argmax(1) == y_np)
            return out

    classifier = Counting(
        model=module,
        loss=nn.CrossEntropyLoss(),
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    classifier.checks = []
    table: list[dict[str, Any]] = []
    q = args.square_queries

    # -- Square, Linf 0.3 ------------------------------------------------------------------
    counter.rows, counter.on = 0, True
    started = time.perf_counter()
    oracle = mallory.Oracle(system, mallory.score_based("linf", 0.3, queries=q))
    result = mallory.create("square", n_queries=q)(oracle, x, y, rng=args.seed)
    seconds = time.perf_counter() - started
    counter.on = False
    success, dist = measured(result.x_adv, math.inf)
    table.append(
        _row(
            "square linf 0.3",
            "mallory",
            q,
            n,
            result.queries.double().tolist(),
            counter.rows,
            success,
            dist,
            seconds,
        )
    )

    square = SquareAttack(
        classifier,
        norm=np.inf,
        eps=0.3,
        max_iter=q - 1,
        nb_restarts=1,
        p_init=0.05,
        batch_size=n,
        verbose=False,
    )
    art_loss = square.loss

    def loss(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
        classifier.in_loss = True
        try:
            return art_loss(z, labels)
        finally:
            classifier.in_loss = False

    square.loss = loss
    classifier.checks = []
    counter.rows, counter.on = 0, True
    started = time.perf_counter()
    adv = square.generate(x_np.copy(), y_hot)
    seconds = time.perf_counter() - started
    counter.on = False
    # each check at which a sample still stands is followed by one new candidate for it
    candidates = np.sum(classifier.checks, axis=0).astype(float).tolist()
    success, dist = measured(adv, math.inf)
    table.append(
        _row("square linf 0.3", "ART", q, n, candidates, counter.rows, success, dist, seconds)
    )

    # -- HopSkipJump, L2, minimal ----------------------------------------------------------
    for budget in budgets:
        m = n if budget <= 1000 else large
        counter.rows, counter.on = 0, True
        started = time.perf_counter()
        oracle = mallory.Oracle(system, mallory.label_only("l2", math.inf, queries=budget))
        result = mallory.create("hopskipjump", max_queries=budget)(
            oracle, x[:m], y[:m], rng=args.seed
        )
        seconds = time.perf_counter() - started
        counter.on = False
        success, dist = measured(torch.cat([result.x_adv, x[m:]]), 2)  # unattacked rows stay clean
        success, dist = success[:m], dist[:m]
        table.append(
            _row(
                "hopskipjump l2",
                "mallory",
                budget,
                m,
                result.queries.double().tolist(),
                counter.rows,
                success,
                dist,
                seconds,
                **{f"share_l2_le_{t}": _share(success, dist, t) for t in (2.0, 3.0)},
            )
        )

    hsj = HopSkipJump(
        classifier,
        targeted=False,
        norm=2,
        max_iter=1_000_000,
        max_eval=10_000,
        init_eval=100,
        init_size=100,
        batch_size=args.art_batch,
        verbose=False,
    )
    art_delta = hsj._compute_delta
    trace: list[tuple[int, float, np.ndarray, int]] = []
    state: dict[str, Any] = {}

    def compute_delta(current_sample: np.ndarray, *rest: Any, **kw: Any) -> Any:
        trace.append(
            (counter.rows, time.perf_counter() - state["t0"], current_sample.copy(), hsj.curr_iter)
        )
        if counter.rows >= state["stop"]:
            raise _Stop
        return art_delta(current_sample, *rest, **kw)

    hsj._compute_delta = compute_delta
    picked: dict[int, list[tuple[int, float, np.ndarray | None, int]]] = {b: [] for b in budgets}
    total_rows: list[int] = []
    for i in range(n):
        mine = [b for b in budgets if b <= 1000 or i < large]
        trace.clear()
        state["stop"], state["t0"] = max(mine), time.perf_counter()
        counter.rows, counter.on = 0, True
        with contextlib.suppress(_Stop):
            hsj.generate(x_np[i : i + 1].copy(), y_hot[i : i + 1])
        counter.on = False
        total_rows.append(counter.rows)
        for b in mine:
            fit = [t for t in trace if t[0] <= b]
            # no recorded point within the budget (or no start found): the attack failed
            picked[b].append(fit[-1] if fit else (min(b, counter.rows), 0.0, None, 0))
    for budget in budgets:
        runs = picked[budget]
        m = len(runs)
        adv_np = np.stack([x_np[i] if r[2] is None else r[2] for i, r in enumerate(runs)])
        adv_np = np.concatenate([adv_np, x_np[m:]])
        success, dist = measured(adv_np, 2)
        success = [s and r[2] is not None for s, r in zip(success[:m], runs, strict=True)]
        dist = dist[:m]
        queries = [float(r[0]) for r in runs]
        table.append(
            _row(
                "hopskipjump l2",
                "ART",
                budget,
                m,
                queries,
                sum(queries),
                success,
                dist,
                sum(r[1] for r in runs),
                iterations_mean=statistics.fmean(r[3] for r in runs),
                **{f"share_l2_le_{t}": _share(success, dist, t) for t in (2.0, 3.0)},
            )
        )

    print(
        f"mnist-cnn, first {n} correctly classified MNIST test digits "
        f"(HopSkipJump above 1000 queries: first {large}); seed {args.seed}; "
        f"{args.threads} threads; CPU"
    )
    header = (
        f"{'attack':<16} {'library':<8} {'budget':>6} {'n':>3} {'queries/s':>9} "
        f"{'rows/s':>8} {'success':>7} {'med dist':>8} {'med q succ':>10} "
        f"{'L2<=2':>6} {'L2<=3':>6} {'time s':>8}"
    )
    print(header)
    for r in table:
        print(
            f"{r['attack']:<16} {r['library']:<8} {r['budget']:>6} {r['samples']:>3} "
            f"{r['queries_mean']:>9.1f} {r['model_rows_mean']:>8.1f} "
            f"{r['success_rate']:>7.2f} {r['median_distance']:>8.3f} "
            f"{r['median_queries_of_successes']:>10.1f} "
            f"{r.get('share_l2_le_2.0', math.nan):>6.2f} "
            f"{r.get('share_l2_le_3.0', math.nan):>6.2f} "
            f"{r['seconds']:>8.1f}"
        )
    print(
        "ART HSJ iterations (mean) per budget: "
        + ", ".join(
            f"{r['budget']}: {r['iterations_mean']:.1f}" for r in table if "iterations_mean" in r
        )
    )
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": table}, indent=2)
        )


def _share(success: list[bool], dist: list[float], threshold: float) -> float:
    return sum(s and d <= threshold for s, d in zip(success, dist, strict=True)) / len(success)


if __name__ == "__main__":
    main()
