"""What mallory's PGD costs over a plain PyTorch loop on the same model and batch.

PGD-40 in Linf, eps 0.3, step 0.01, no random start, on the first ``--samples`` MNIST test
digits against the zoo ``mnist-cnn`` (float32, parameters frozen: ``requires_grad=False``).
Three variants run in one process on the same module object and the same tensors:

* ``plain``: the loop written directly against the module: per step a forward pass, the summed
  cross-entropy, ``torch.autograd.grad`` with respect to the input only, a sign step and a
  clamp to the eps-box and [0, 1]; then one forward pass on the final iterates, to know which
  digits still stand (mallory's call answers that too). ``plain-loop`` is the same run
  without that last forward pass: the bare physical limit, shown for reference;
* ``fixed``: ``create("pgd", steps=40, step_size=0.01, random_start=False)`` called through
  ``Oracle(system, white_box("linf", 0.3))``: the whole call, with its input checks, the
  oracle's per-sample accounting and record, and the base class's verdict (a forward pass on
  the clean inputs and one on the candidates);
* ``early``: the same with ``stop_early=True``.

``--model linear`` swaps the CNN for a seeded, untrained linear layer whose passes cost almost
nothing, so that ``fixed - plain, per step`` is the time mallory adds to each step.

After one warm-up round of each, ``--repeats`` rounds run the three variants in an order that
rotates every round. Each variant's wall time and the process's user and system CPU time are
taken; the report gives their medians, the ratios of the medians to ``plain``, the median over
rounds of each round's own ratio (``paired``, which cancels load that drifts slower than a
round), and the fastest run of each (the one least disturbed). Two things make wall times noisy
on a shared machine: other processes, and the kernel's page faults on the large activation
buffers that the allocator maps afresh every step (system time, from under 1 s to 5 s per run
here, for either variant alike). User CPU time, the computation itself, is the steadiest figure.

Run::

    .venv/bin/python benchmarks/pgd_overhead.py --samples 500 --repeats 9 --threads 2
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VARIANTS = ("plain", "fixed", "early")


def plain_pgd(
    module: nn.Module, x: Tensor, y: Tensor, eps: float, step: float, steps: int
) -> Tensor:
    """The reference: Linf PGD without a random start, written directly against the module."""
    lower, upper = (x - eps).clamp_min(0.0), (x + eps).clamp_max(1.0)
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(module(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.clamp(x_adv.detach() + step * grad.sign(), lower, upper)
    return x_adv


@dataclass
class Outcome:
    """What one variant produced, and what each of its runs took."""

    robust: float = float("nan")
    gradients: float = float("nan")
    x_adv: Tensor | None = None
    wall: list[float] = field(default_factory=list)
    user: list[float] = field(default_factory=list)
    system: list[float] = field(default_factory=list)
    loop_wall: list[float] = field(default_factory=list)  # plain only: without the last forward


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--samples", type=int, default=500, help="MNIST test digits attacked")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (at least 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--step-size", type=float, default=0.01)
    parser.add_argument(
        "--model",
        choices=("mnist-cnn", "linear"),
        default="mnist-cnn",
        help="linear: a seeded, untrained 784-10 layer that costs almost nothing, so the time "
        "mallory adds per step stands out",
    )
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be at least 3 for a median")

    os.environ.setdefault("MALLORY_CACHE", str(Path(__file__).resolve().parent.parent / ".cache"))
    torch.set_num_threads(args.threads)

    import mallory
    from mallory.systems.base import System
    from mallory.systems.torch import TorchModel
    from mallory.zoo import load_dataset, load_model

    system: System
    if args.model == "linear":
        torch.manual_seed(0)
        linear = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
        system = TorchModel(linear, input_shape=(1, 28, 28), name="linear")
    else:
        system = load_model("mnist-cnn", progress=False)
    if not isinstance(system, TorchModel):
        raise SystemExit(f"{args.model} loaded as {type(system).__name__}, not a TorchModel")
    module = system.module  # the same object mallory's oracle calls
    module.requires_grad_(False)
    data = load_dataset("mnist", split="test").head(args.samples)
    x, y = data.x, data.y
    threat = mallory.white_box("linf", args.eps)
    common = {"steps": args.steps, "step_size": args.step_size, "random_start": False}
    attacks = {
        "fixed": mallory.create("pgd", **common),
        "early": mallory.create("pgd", stop_early=True, **common),
    }
    outcomes = {name: Outcome() for name in VARIANTS}

    def run_plain() -> None:
        out = outcomes["plain"]
        started = time.perf_counter()
        x_adv = plain_pgd(module, x, y, args.eps, args.step_size, args.steps)
        out.loop_wall.append(time.perf_counter() - started)
        with torch.no_grad():
            out.robust = float((module(x_adv).argmax(1) == y).double().mean())
        out.gradients, out.x_adv = float(args.steps), x_adv

    def run_mallory(name: str) -> Callable[[], None]:
        def run() -> None:
            result = attacks[name](mallory.Oracle(system, threat), x, y, rng=0)
            out = outcomes[name]
            out.robust, out.x_adv = result.robust_accuracy, result.x_adv
            out.gradients = float(result.gradients.double().mean())

        return run

    runs = {"plain": run_plain, "fixed": run_mallory("fixed"), "early": run_mallory("early")}

    def timed(name: str) -> None:
        before, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        runs[name]()
        seconds = time.perf_counter() - wall
        after, out = resource.getrusage(resource.RUSAGE_SELF), outcomes[name]
        out.wall.append(seconds)
        out.user.append(after.ru_utime - before.ru_utime)
        out.system.append(after.ru_stime - before.ru_stime)

    load_before = os.getloadavg()[0]
    for name in VARIANTS:  # warm-up: allocator, kernels, lazy imports
        runs[name]()
    outcomes["plain"].loop_wall.clear()
    for repeat in range(args.repeats):
        order = VARIANTS[repeat % 3 :] + VARIANTS[: repeat % 3]
        for name in order:
            timed(name)
    load_after = os.getloadavg()[0]
    report(args, outcomes, (load_before, load_after), x)


def report(
    args: argparse.Namespace, outcomes: dict[str, Outcome], load: tuple[float, float], x: Tensor
) -> None:
    plain = outcomes["plain"]

    def ratios(values: list[float], base: list[float]) -> tuple[float, float]:
        of_medians = statistics.median(values) / statistics.median(base)
        paired = statistics.median(v / b for v, b in zip(values, base, strict=True))
        return of_medians, paired

    print(
        f"PGD-{args.steps} Linf eps {args.eps} step {args.step_size}, no random start; "
        f"{len(x)} MNIST test digits; {args.model} float32; torch {torch.__version__}, "
        f"{args.threads} threads, {os.cpu_count()} CPUs; {args.repeats} interleaved rounds "
        f"after a warm-up; load average {load[0]:.2f} before, {load[1]:.2f} after"
    )
    print()
    print(
        "| variant | wall median s | ratio | paired | fastest s | ratio | user CPU median s "
        "| ratio | paired | system CPU median s | robust acc | grads/sample |"
    )
    print("| --- |" + " ---: |" * 11)
    for name in VARIANTS:
        out = outcomes[name]
        wall, wall_paired = ratios(out.wall, plain.wall)
        user, user_paired = ratios(out.user, plain.user)
        print(
            f"| {name} | {statistics.median(out.wall):.3f} | {wall:.3f} | {wall_paired:.3f} "
            f"| {min(out.wall):.3f} | {min(out.wall) / min(plain.wall):.3f} "
            f"| {statistics.median(out.user):.3f} | {user:.3f} | {user_paired:.3f} "
            f"| {statistics.median(out.system):.3f} | {out.robust:.3f} | {out.gradients:.2f} |"
        )
    loop, loop_paired = ratios(plain.loop_wall, plain.wall)
    print(
        f"| plain-loop | {statistics.median(plain.loop_wall):.3f} | {loop:.3f} | "
        f"{loop_paired:.3f} | {min(plain.loop_wall):.3f} | "
        f"{min(plain.loop_wall) / min(plain.wall):.3f} | | | | | | {float(args.steps):.2f} |"
    )
    print()
    added = statistics.median(outcomes["fixed"].wall) - statistics.median(plain.wall)
    print(f"fixed - plain, per step (wall medians): {1e3 * added / args.steps:.2f} ms")
    reference, fixed = plain.x_adv, outcomes["fixed"].x_adv
    if reference is not None and fixed is not None:
        # mallory returns a digit the model already gets wrong unchanged (a success at distance
        # 0); compare the others
        moved = (fixed != x).flatten(1).any(1)
        gap = (fixed[moved] - reference[moved]).abs().amax() if bool(moved.any()) else 0.0
        print(
            f"fixed vs plain: {int((~moved).sum())} digits returned clean (misclassified as "
            f"they are); max |difference| over the other {int(moved.sum())}: {float(gap):.3g}"
        )
    for name in VARIANTS:
        out = outcomes[name]
        print(f"{name} wall s: " + ", ".join(f"{t:.3f}" for t in out.wall))
        print(f"{name} user s: " + ", ".join(f"{t:.3f}" for t in out.user))
        print(f"{name} sys s:  " + ", ".join(f"{t:.3f}" for t in out.system))


if __name__ == "__main__":
    main()
