"""The lecture's table, measured on MNIST: seven defenses through the pipeline of defense
failures, each against the same undefended CNN.

    python benchmarks/lecture_table.py --samples 200 --out lecture/

Trains each defense once (the recipes cache their models by configuration), audits each on the
first ``--samples`` test digits at ``--eps`` (the adversarial-training eps by default), prints
the table in Markdown and writes every audit as JSON and HTML into ``--out`` as it ends. Each
audit keeps its finished stages in ``--out`` too: run the same command again to resume.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from mallory.evaluation.audit.lecture import Scale, file_stem, lecture_table, table_markdown
from mallory.jsonable import write_atomically
from mallory.report.audit_model import AuditReport
from mallory.report.audit_render import render_audit_html
from mallory.zoo import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "digits"])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--eps", type=float, default=None, help="default: --train-eps")
    parser.add_argument("--train-eps", type=float, default=0.1)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("lecture"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = load_dataset(args.dataset, "train")
    test = load_dataset(args.dataset, "test").head(args.samples)
    scale = Scale(
        architecture="cnn" if args.dataset == "mnist" else "mlp",
        width=args.width,
        epochs=args.epochs,
        train_eps=args.train_eps,
        train_steps=args.train_steps,
        lr=3e-3 if args.dataset == "mnist" else 1e-3,
    )
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)

    def write(name: str, report: AuditReport) -> None:
        stem = file_stem(name)
        write_atomically(args.out / f"{stem}.json", report.to_json(indent=2))
        write_atomically(args.out / f"{stem}.html", render_audit_html(report))

    rows = lecture_table(
        train,
        test,
        eps=args.eps if args.eps is not None else args.train_eps,
        scale=scale,
        settings={"steps": args.steps, "queries": args.queries, "draws": 10},
        progress=True,
        checkpoints=args.out,
        done=write,
    )
    print(table_markdown(rows))
    for name, report in rows:
        print(f"- {name}: {report.verdict}")
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
