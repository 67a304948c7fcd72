"""The lecture's table, measured: seven defenses, each walked through the pipeline of defense
failures against the same undefended model, and the stage where each stops.

The lecture lists dropout, weight decay, cropping/foveation, adversarial training with a weak
attack, defensive distillation, adversarial training with a strong attack and certified
defenses, each failing at some stage. :func:`lecture_table` trains them all (cached by their
configuration) on one dataset, audits each, and :func:`table_markdown` writes the table.
``benchmarks/lecture_table.py`` runs it on MNIST; the test suite runs a reduced version on the
8x8 digits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mallory import defenses
from mallory.evaluation.audit.runner import Audit
from mallory.report.audit_model import FAILED, STAGES, AuditReport
from mallory.report.fmt import pct
from mallory.systems.base import System
from mallory.zoo.datasets import Dataset


@dataclass(frozen=True, kw_only=True)
class Scale:
    """How big the models and their training are: the network (``"mlp"`` or ``"cnn"``), its
    width and epochs, the adversarial-training eps and PGD steps, the smoothing noise and the
    votes per smoothed prediction."""

    architecture: str = "mlp"
    width: int = 32
    epochs: int = 30
    train_eps: float = 0.1
    train_steps: int = 5
    sigma: float = 0.25
    votes: int = 100
    lr: float = 1e-3


def lecture_defenses(train: Dataset, scale: Scale, *, progress: bool = False) -> dict[str, System]:
    """The undefended model (``"none"``) and the seven defenses, trained on ``train``."""
    common: dict[str, Any] = {
        "architecture": scale.architecture,
        "width": scale.width,
        "epochs": scale.epochs,
    }

    def fit(recipe: Any) -> System:
        trained: System = recipe.train(train, progress=progress)
        return trained

    plain = fit(defenses.PlainTraining(**common, lr=scale.lr))
    images = len(train.input_shape) == 3
    built: dict[str, Callable[[], System]] = {
        "dropout": lambda: fit(defenses.DropoutTraining(**common, lr=scale.lr, p=0.5)),
        "weight decay": lambda: fit(
            defenses.WeightDecayTraining(**common, lr=scale.lr, weight_decay=1e-3)
        ),
        "adversarial training, weak (FGSM)": lambda: fit(
            defenses.FGSMTraining(**common, lr=scale.lr, eps=scale.train_eps)
        ),
        "defensive distillation": lambda: fit(defenses.DistillationTraining(**common)),
        "adversarial training, strong (PGD)": lambda: fit(
            defenses.PGDTraining(
                **common, lr=scale.lr, eps=scale.train_eps, steps=scale.train_steps
            )
        ),
        "randomized smoothing": lambda: defenses.SmoothedClassifier(
            fit(defenses.GaussianNoiseTraining(**common, lr=scale.lr, sigma=scale.sigma)),
            sigma=scale.sigma,
            n=scale.votes,
            batch=max(scale.votes, 100),
        ),
    }
    out: dict[str, System] = {"none": plain}
    out["dropout"] = built["dropout"]()
    out["weight decay"] = built["weight decay"]()
    if images:
        out["cropping / foveation"] = defenses.defend(plain, defenses.center_crop(0.8))
    for name in (
        "adversarial training, weak (FGSM)",
        "defensive distillation",
        "adversarial training, strong (PGD)",
        "randomized smoothing",
    ):
        out[name] = built[name]()
    return out


def lecture_table(
    train: Dataset,
    test: Dataset,
    *,
    eps: float,
    scale: Scale = Scale(),
    settings: dict[str, Any] | None = None,
    progress: bool = False,
    only: tuple[str, ...] = (),
    checkpoints: Path | None = None,
    done: Callable[[str, AuditReport], None] | None = None,
) -> list[tuple[str, AuditReport]]:
    """Every defense's audit against the undefended model (``only``: a subset by name).

    ``checkpoints``: a folder where each audit keeps its finished stages, so that a run
    stopped half way resumes; ``done`` is called with each defense's report as it ends."""
    systems = lecture_defenses(train, scale, progress=progress)
    plain = systems.pop("none")
    rows = []
    for name, system in systems.items():
        if only and name not in only:
            continue
        checkpoint = None if checkpoints is None else checkpoints / f"{file_stem(name)}.ckpt"
        report = Audit(
            defended=system,
            baseline=plain,
            data=test,
            eps=eps,
            defended_name=name,
            baseline_name="undefended",
            **(settings or {}),
        ).run(progress=progress, checkpoint=checkpoint)
        rows.append((name, report))
        if progress:
            print(f"{name}: {report.verdict}", flush=True)
        if done is not None:
            done(name, report)
    return rows


def file_stem(name: str) -> str:
    """A defense's name as a file name: ``"adversarial-training-weak-FGSM"``."""
    return "-".join("".join(c if c.isalnum() else " " for c in name).split())


def table_markdown(rows: list[tuple[str, AuditReport]]) -> str:
    """The measured table: per defense its clean accuracy, each stage's outcome (✓ passed, ✗
    failed, · not run) and where it stops."""
    head = (
        "| defense | clean acc. | "
        + " | ".join(f"{n}. {name}" for n, name, _ in STAGES)
        + " | stops at |\n"
    )
    head += "| --- | ---: |" + " :---: |" * len(STAGES) + " --- |\n"
    lines = []
    for name, report in rows:
        marks = []
        for number, _, _ in STAGES:
            try:
                stage = report.stage(number)
            except KeyError:
                marks.append("·")
                continue
            marks.append(
                "✗" if stage.status == FAILED else "✓" if stage.status == "passed" else "?"
            )
        stop = (
            f"{report.failed_stage}. {STAGES[report.failed_stage - 1][1]}"
            if report.failed_stage is not None
            else "holds"
        )
        lines.append(
            f"| {name} | {pct(report.clean_defended)} | " + " | ".join(marks) + f" | {stop} |"
        )
    return head + "\n".join(lines) + "\n"
