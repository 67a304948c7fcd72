"""mallory's APGD-CE and APGD-T against AutoAttack's own implementation, on one model and batch.

AutoAttack (``pyautoattack==0.2.0``, the ``bench`` extra; install it with ``pip install
pyautoattack==0.2.0 --no-deps``: it needs only torch and numpy) runs its standard version's
APGD-CE and APGD-T: 100 iterations, one restart, the 9 most likely wrong classes as targets
for APGD-T, each attack on the points still robust, seed fixed. mallory runs the same pair:
``create("apgd")`` (APGD-CE, 100 gradient evaluations, one restart), then ``create("apgd",
loss="dlr-targeted")`` (9 target classes) on the samples APGD-CE left standing, under
``white_box("linf", eps)``.

The model is an adversarially trained MNIST CNN: ``mallory.defenses.PGDTraining`` with the
recipe's CI-sized training (Linf eps 0.1, 3 PGD steps per batch, 5 epochs, lr 3e-3) but the
zoo CNN's width (32; ``--width 8`` is the recipe's CI-sized network, where the passes cost so
little that per-call overhead shows), trained on the zoo's MNIST training split and cached
after the first run (about 2 minutes on 2 cores); ``--model zoo`` (or a checkout without
``mallory.defenses``) uses the zoo's undefended ``mnist-cnn`` instead. Samples: the
first ``--samples`` MNIST test digits. Both libraries get the same module object (parameters
frozen) and the same tensors, on the CPU, in one process.

After a warm-up of each, ``--rounds`` rounds run both libraries, in an order that alternates.
Reported per library: robust accuracy after APGD-CE and after APGD-T (judged by the module
itself on the returned inputs, every input checked to lie in the eps-ball and in [0, 1]); the
median wall time of the whole evaluation (fastest and slowest beside it); its CPU time (the
process's, all threads); the rows the module forwarded per sample (a forward pre-hook;
mallory's count includes the base's verdict, AutoAttack's its clean-accuracy pass and its
checks); and the paired ratios, mallory's time over AutoAttack's in the same round, whose
medians are the figures to read on a machine whose speed drifts. AutoAttack's runs evaluate
the final point of each run too: 101 gradients per run against mallory's 100.

Run::

    .venv/bin/python benchmarks/apgd_vs_autoattack.py --samples 100 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import mallory
from mallory import Oracle, TorchModel, create, white_box

LIBRARIES = ("mallory", "autoattack")


@dataclass
class Outcome:
    """What one library produced, and what each of its runs took."""

    robust_after_ce: list[float] = field(default_factory=list)
    robust: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # the process's CPU seconds, all threads
    rows: list[float] = field(default_factory=list)  # module rows forwarded per sample


class RowCounter:
    """Counts the rows a module forwards."""

    def __init__(self, module: nn.Module) -> None:
        self.rows = 0
        module.register_forward_pre_hook(self._count)

    def _count(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        self.rows += len(inputs[0])


def load_model(kind: str, args: argparse.Namespace) -> tuple[TorchModel, str]:
    """The system under attack, and a line saying what it is."""
    from mallory.zoo import load_dataset
    from mallory.zoo import load_model as zoo_model

    if kind == "pgd-trained":
        try:
            from mallory.defenses import PGDTraining
        except ImportError:
            print("mallory.defenses has no PGDTraining here: using the zoo's mnist-cnn")
        else:
            recipe = PGDTraining(
                eps=args.train_eps,
                steps=args.train_steps,
                width=args.width,
                epochs=args.epochs,
                lr=args.lr,
            )
            started = time.perf_counter()
            system = recipe.train(load_dataset("mnist", "train"))
            took = time.perf_counter() - started
            return system, f"{recipe!r} (trained or loaded in {took:.1f} s)"
    system = zoo_model("mnist-cnn")
    assert isinstance(system, TorchModel)
    return system, "zoo mnist-cnn (undefended)"


def run_mallory(
    system: TorchModel, x: Tensor, y: Tensor, eps: float, seed: int
) -> tuple[Tensor, float]:
    """APGD-CE, then APGD-T on the samples still standing: the adversarial inputs, and the
    robust accuracy after APGD-CE."""
    oracle = Oracle(system, white_box("linf", eps))
    ids = torch.arange(len(x))
    ce = create("apgd")(oracle, x, y, rng=seed, ids=ids)
    x_adv = ce.x_adv.clone()
    standing = ~ce.success
    if bool(standing.any()):
        t = create("apgd", loss="dlr-targeted")(
            oracle, x[standing], y[standing], rng=seed, ids=ids[standing]
        )
        x_adv[standing] = t.x_adv
    return x_adv, ce.robust_accuracy


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_autoattack(
    module: nn.Module, x: Tensor, y: Tensor, eps: float, seed: int
) -> tuple[Tensor, float]:
    """AutoAttack's standard APGD-CE and APGD-T: the adversarial inputs, and the robust
    accuracy after APGD-CE (from AutoAttack's own log)."""
    from pyautoattack import AutoAttack

    adversary = AutoAttack(
        module, attacks=["apgd-ce", "apgd-t"], version="custom", eps=eps, norm="Linf", seed=seed
    )
    # the standard version's settings for these two attacks
    adversary.apgd.n_restarts = 1
    adversary.apgd_targeted.n_target_classes = 9
    adversary.apgd_targeted.n_restarts = 1
    logger = logging.getLogger("auto-attack")
    messages = _Messages()
    logger.addHandler(messages)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=len(x))
    finally:
        logger.removeHandler(messages)
    after_ce = [m for m in messages.lines if m.startswith("robust accuracy after APGD-CE")]
    found = re.search(r"([\d.]+)%", after_ce[0]) if after_ce else None
    return x_adv, float(found.group(1)) / 100 if found else float("nan")


def robust_accuracy(module: nn.Module, x_adv: Tensor, x: Tensor, y: Tensor, eps: float) -> float:
    """The share of samples the module still classifies correctly (inputs checked first)."""
    size = (x_adv - x).flatten(1).abs().amax(1)
    if float(size.max()) > eps + 1e-6 or float(x_adv.min()) < 0 or float(x_adv.max()) > 1:
        raise RuntimeError("an adversarial input left the eps-ball or [0, 1]")
    with torch.no_grad():
        return float((module(x_adv).argmax(1) == y).double().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", choices=["pgd-trained", "zoo"], default="pgd-trained")
    parser.add_argument("--train-eps", type=float, default=0.1)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    system, description = load_model(args.model, args)
    module = system.module
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    data = mallory.zoo.load_dataset("mnist", "test")
    x, y = data.x[: args.samples].clone(), data.y[: args.samples].clone()
    with torch.no_grad():
        clean = float((module(x).argmax(1) == y).double().mean())
    counter = RowCounter(module)
    print(f"model: {description}")
    print(f"samples: {len(x)}, clean accuracy {clean:.3f}, Linf eps {args.eps}, seed {args.seed}")

    runners = {
        "mallory": lambda: run_mallory(system, x, y, args.eps, args.seed),
        "autoattack": lambda: run_autoattack(module, x, y, args.eps, args.seed),
    }
    outcomes = {name: Outcome() for name in LIBRARIES}
    for name in LIBRARIES:  # warm-up
        runners[name]()
    for r in range(args.rounds):
        order = LIBRARIES if r % 2 == 0 else LIBRARIES[::-1]
        for name in order:
            counter.rows = 0
            started, cpu_started = time.perf_counter(), time.process_time()
            x_adv, after_ce = runners[name]()
            wall = time.perf_counter() - started
            out = outcomes[name]
            out.wall.append(wall)
            out.cpu.append(time.process_time() - cpu_started)
            out.rows.append(counter.rows / len(x))
            out.robust.append(robust_accuracy(module, x_adv, x, y, args.eps))
            out.robust_after_ce.append(after_ce)
            print(
                f"round {r} {name:10s} robust {out.robust[-1]:.3f} "
                f"(after APGD-CE {out.robust_after_ce[-1]:.3f}) {wall:6.2f} s "
                f"(CPU {out.cpu[-1]:6.2f} s) {out.rows[-1]:6.1f} rows/sample",
                flush=True,
            )

    print()
    print(
        "| library | robust acc after APGD-CE | robust acc after APGD-T | wall s, median "
        "(min-max) | CPU s, median | model rows/sample |"
    )
    print("| --- | ---: | ---: | --- | ---: | ---: |")
    for name in LIBRARIES:
        out = outcomes[name]
        print(
            f"| {name} | {statistics.median(out.robust_after_ce):.3f} | "
            f"{statistics.median(out.robust):.3f} | {statistics.median(out.wall):.2f} "
            f"({min(out.wall):.2f}-{max(out.wall):.2f}) | {statistics.median(out.cpu):.2f} | "
            f"{statistics.median(out.rows):.0f} |"
        )
    print()
    for what in ("wall", "cpu"):
        times = zip(
            getattr(outcomes["mallory"], what), getattr(outcomes["autoattack"], what), strict=True
        )
        ratios = [m / a for m, a in times]
        print(
            f"paired ratio of {what} times, mallory's over AutoAttack's in each round: "
            + ", ".join(f"{r:.3f}" for r in ratios)
            + f"; median {statistics.median(ratios):.3f}"
        )
    if args.json is not None:
        figures = {
            "model": description,
            "clean": clean,
            "args": {k: str(v) for k, v in vars(args).items()},
            "outcomes": {name: asdict(out) for name, out in outcomes.items()},
        }
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
