"""The audit: a defended system against its baseline, through the pipeline of defense failures.

The lecture's lesson: a defense (1) has no effect on adversarial examples, or (2) costs too
much clean accuracy, or (3) does not stop an adaptive attacker, or (4) does not generalize over
attack algorithms, or (5) seems to generalize but it is an illusion, or (6) does not generalize
over threat models. The audit runs every stage (each attack on every sample, worst case per
sample), reports the evidence of each, and gives as its verdict the first stage the defense
fails, or that it held through all six. The checks of stage 5 are those of the evaluation
literature: Carlini et al. 2019's checklist, Athalye et al. 2018 (obfuscated gradients, BPDA,
EOT), Tramer et al. 2020 (adaptive attacks), AutoAttack's flags (Croce and Hein 2020) and the
indicators of attack failure of Pintor et al. 2022.

A run can keep its finished stages in a checkpoint file (JSON, written atomically after each
stage), so an audit stopped half way resumes from the first stage it had not finished.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mallory.errors import InputError
from mallory.evaluation.audit.bench import Bench
from mallory.evaluation.audit.stages import STAGE_FUNCTIONS
from mallory.jsonable import plain, write_atomically
from mallory.report.audit_model import FAILED, STAGES, AuditReport, AuditStage
from mallory.report.model import Ledger, _build
from mallory.systems.base import System
from mallory.threat import Norm
from mallory.zoo.datasets import Dataset


@dataclass(frozen=True, kw_only=True)
class Audit:
    """Audit ``defended`` against ``baseline`` (the same task without the defense) on ``data``.

    ``norm`` and ``eps`` are the threat model the defense claims; ``margin`` is the robust
    accuracy (a share) it must gain over the baseline to count as doing anything (default
    0.05); ``tolerance`` the clean accuracy it may lose (default 0.05). ``steps`` sizes the
    gradient attacks, ``queries`` the black-box ones (per sample), ``draws`` the votes and the
    EOT averages on a randomized system. ``straight_through`` names the parts an adaptive
    attacker passes gradients straight through (BPDA), beyond the stages the system declares
    non-differentiable. ``other_norm``/``other_eps`` is stage 6's other Lp ball (default: L2
    for a Linf claim, Linf for an L2 one, at a comparable size). ``stages`` picks which of the
    six to run (the verdict then covers those only).
    """

    defended: System
    baseline: System
    data: Dataset
    eps: float
    norm: Norm = Norm.LINF
    margin: float = 0.05
    tolerance: float = 0.05
    steps: int = 40
    queries: int = 1000
    draws: int = 10
    straight_through: tuple[str, ...] = ()
    other_norm: Norm | None = None
    other_eps: float | None = None
    stages: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    seed: int = 0
    defended_name: str = ""
    baseline_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("defended", "baseline"):
            if not isinstance(getattr(self, name), System):
                raise InputError(
                    f"The {name!r} parameter of Audit must be a mallory System; got "
                    f"{type(getattr(self, name)).__name__} instead."
                )
        if not isinstance(self.data, Dataset) or not len(self.data):
            raise InputError("The 'data' parameter of Audit must be a non-empty mallory Dataset.")
        object.__setattr__(self, "norm", Norm(self.norm))
        if self.other_norm is not None:
            object.__setattr__(self, "other_norm", Norm(self.other_norm))
        _number("eps", self.eps, low=0.0, open_low=True)
        _number("margin", self.margin, low=0.0, high=1.0)
        _number("tolerance", self.tolerance, low=0.0, high=1.0)
        for name in ("steps", "queries", "draws", "seed"):
            value = getattr(self, name)
            low = 0 if name == "seed" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(
                    f"The {name!r} parameter of Audit must be an int >= {low}; got {value!r} "
                    "instead."
                )
        stages = tuple(self.stages)
        if not stages or any(s not in STAGE_FUNCTIONS for s in stages):
            raise InputError(
                f"The 'stages' parameter of Audit must be numbers among 1..6; got {stages!r} "
                "instead."
            )
        object.__setattr__(self, "stages", tuple(sorted(set(stages))))
        object.__setattr__(self, "straight_through", tuple(self.straight_through))
        for system in (self.defended, self.baseline):
            if tuple(system.input_shape) != tuple(self.data.input_shape):
                raise InputError(
                    f"The system {system.name!r} takes inputs of shape {system.input_shape}; "
                    f"the data {self.data.name!r} has {tuple(self.data.input_shape)}."
                )

    def other_threat(self) -> tuple[Norm | None, float]:
        """Stage 6's other Lp ball: given, or L2 for a Linf claim (eps * sqrt(d) / 4, about
        2 for MNIST at 0.3) and Linf for an L2 one (eps * 4 / sqrt(d))."""
        d = math.prod(self.data.input_shape)
        if self.other_norm is not None:
            return self.other_norm, float(
                self.other_eps if self.other_eps is not None else self.eps
            )
        if self.norm is Norm.LINF:
            return Norm.L2, self.eps * math.sqrt(d) / 4
        if self.norm is Norm.L2:
            return Norm.LINF, min(1.0, self.eps * 4 / math.sqrt(d))
        return None, math.nan

    def describe(self) -> dict[str, Any]:
        """The audit's configuration (what a checkpoint must match to be resumed)."""
        return plain(
            {
                "defended": self.defended_name or self.defended.name,
                "baseline": self.baseline_name or self.baseline.name,
                "dataset": self.data.name,
                "samples": len(self.data),
                "eps": self.eps,
                "norm": self.norm,
                "margin": self.margin,
                "tolerance": self.tolerance,
                "steps": self.steps,
                "queries": self.queries,
                "draws": self.draws,
                "straight_through": list(self.straight_through),
                "other": list(self.other_threat()),
                "seed": self.seed,
            }
        )

    def run(self, *, progress: bool = True, checkpoint: str | Path | None = None) -> AuditReport:
        """Run the stages and return the report; ``checkpoint`` keeps finished stages."""
        from rich.progress import Progress

        done = _load_checkpoint(checkpoint, self.describe())
        memo: dict[str, Any] = {
            "defended": Bench(self.defended, self.data, draws=self.draws, seed=self.seed),
            "baseline": Bench(self.baseline, self.data, draws=self.draws, seed=self.seed),
        }
        results: list[AuditStage] = []
        with Progress(disable=not progress, transient=True) as bars:
            bar = bars.add_task("audit", total=len(self.stages))
            for number in self.stages:
                name = STAGES[number - 1][1]
                bars.update(bar, description=f"audit: stage {number}, {name}")
                started = time.perf_counter()
                if number not in done:
                    done[number] = STAGE_FUNCTIONS[number](self, memo)
                    _save_checkpoint(checkpoint, self.describe(), done)
                results.append(done[number])
                bars.advance(bar)
                if progress and not bars.console.is_terminal:
                    # a log (CI, a pipe) gets one line per stage instead of a live bar
                    seconds = time.perf_counter() - started
                    bars.console.print(
                        f"audit: stage {number}, {name}: {done[number].status} ({seconds:.0f} s)",
                        highlight=False,
                    )
        return self._report(results, memo)

    def _report(self, stages: list[AuditStage], memo: dict[str, Any]) -> AuditReport:
        defended, baseline = memo["defended"], memo["baseline"]
        failed = next((s for s in stages if s.status == FAILED), None)
        if failed is not None:
            verdict = f"fails at stage {failed.number}, {failed.name}: {failed.finding}"
        elif len(stages) == len(STAGES):
            verdict = "holds through all six stages of the pipeline"
        else:
            verdict = "holds through the stages run: " + ", ".join(str(s.number) for s in stages)
        spent = [defended.spent, baseline.spent]
        judged = [defended.evaluator(), baseline.evaluator()]
        return AuditReport(
            defended=self.defended_name or self.defended.name,
            baseline=self.baseline_name or self.baseline.name,
            dataset=self.data.name,
            samples=len(self.data),
            norm=self.norm.value,
            eps=self.eps,
            seed=self.seed,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            margin=self.margin,
            tolerance=self.tolerance,
            clean_defended=defended.clean_accuracy,
            clean_baseline=baseline.clean_accuracy,
            stages=stages,
            verdict=verdict,
            failed_stage=None if failed is None else failed.number,
            ledger=_sum(spent),
            evaluator=_sum(judged),
            flags=list(dict.fromkeys([*defended.judge.flags])),
        )


def audit(defended: System, baseline: System, data: Dataset, **settings: Any) -> AuditReport:
    """Run an :class:`Audit` (``settings`` are its fields) and return its report."""
    progress = settings.pop("progress", False)
    checkpoint = settings.pop("checkpoint", None)
    return Audit(defended=defended, baseline=baseline, data=data, **settings).run(
        progress=progress, checkpoint=checkpoint
    )


def _sum(ledgers: list[Ledger]) -> Ledger:
    return Ledger(
        queries=sum(x.queries for x in ledgers),
        gradients=sum(x.gradients for x in ledgers),
        seconds=sum(x.seconds for x in ledgers),
        money=sum(x.money for x in ledgers),
    )


def _number(
    name: str, value: Any, *, low: float, high: float = math.inf, open_low: bool = False
) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if open_low else value >= low) and value <= high
    if not ok:
        bound = f"> {low:g}" if open_low else f">= {low:g}"
        upper = "" if math.isinf(high) else f" and <= {high:g}"
        raise InputError(
            f"The {name!r} parameter of Audit must be a finite number {bound}{upper}; got "
            f"{value!r} instead."
        )


def _load_checkpoint(path: str | Path | None, config: dict[str, Any]) -> dict[int, AuditStage]:
    if path is None or not Path(path).exists():
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"The audit checkpoint {str(path)!r} cannot be read: {error}") from None
    if data.get("config") != config:
        raise InputError(
            f"The audit checkpoint {str(path)!r} belongs to another audit (another system, data "
            "or setting); give a new checkpoint file."
        )
    return {
        int(k): _build(AuditStage, v, f"checkpoint.stages.{k}") for k, v in data["stages"].items()
    }


def _save_checkpoint(
    path: str | Path | None, config: dict[str, Any], done: dict[int, AuditStage]
) -> None:
    if path is None:
        return
    text = json.dumps(
        {"config": config, "stages": {str(k): plain(asdict(v)) for k, v in done.items()}},
        allow_nan=False,
    )
    write_atomically(Path(path), text)
