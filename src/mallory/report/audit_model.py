"""The audit's report: a defended system walked through the pipeline of defense failures, as
plain data (it serializes to JSON and back, as :class:`~mallory.report.model.Report` does).

Each of the six stages asks one question of the lecture's pipeline (does the defense change
anything; at what clean cost; does it stop an adaptive attacker; every attack algorithm; is
its robustness an illusion; other threat models) and answers with a status, a finding in
plain words, the measurements that support it (defended against baseline), the flags raised,
and the samples worth looking at. The verdict is the first stage that failed, or that the
defense held through all six.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from mallory.flags import Flag
from mallory.jsonable import plain
from mallory.report.model import Curve, Ledger, _build

AUDIT_SCHEMA = "mallory.audit/1"

STAGES = (
    (1, "no effect", "Does the defense change anything under the standard attacks?"),
    (2, "clean accuracy", "What does it cost on clean inputs, against the tolerance set?"),
    (3, "adaptive attacker", "Does it stop an attacker who knows it and attacks it end to end?"),
    (4, "attack algorithms", "Does it hold against every attack family, on every sample?"),
    (5, "illusion", "Is the robustness real, or do the checks of a flawed evaluation fire?"),
    (6, "threat models", "Does it hold under other norms, natural changes and label-only access?"),
)

PASSED, FAILED, NOT_MEASURED = "passed", "failed", "not measured"


@dataclass(frozen=True)
class AuditRow:
    """One measurement of a stage: what was run (``label``), the defended system's and the
    baseline's robust accuracy under it (NaN where not measured), and a detail."""

    label: str
    defended: float
    baseline: float = math.nan
    detail: str = ""


@dataclass(frozen=True)
class AuditStage:
    """One stage of the pipeline: its ``status`` (passed, failed, not measured), the
    ``finding`` in plain words, the ``rows`` that support it, ``curves`` (robust accuracy
    against eps, say), the ``flags`` raised and the ``samples`` worth looking at (ids)."""

    number: int
    name: str
    question: str
    status: str
    finding: str
    rows: list[AuditRow] = field(default_factory=list)
    curves: list[Curve] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class AuditReport:
    """A defended system against its baseline, stage by stage.

    ``verdict`` says where the defense fails (``failed_stage``: its number, None when it held
    through all six); ``margin`` is the robust accuracy (a share) a defense must gain over the
    baseline to count as doing something; ``tolerance`` the clean accuracy it may lose.
    ``ledger`` is what the audit's attackers spent, ``evaluator`` what judging cost.
    """

    defended: str
    baseline: str
    dataset: str
    samples: int
    norm: str
    eps: float
    seed: int
    created: str
    margin: float
    tolerance: float
    clean_defended: float
    clean_baseline: float
    stages: list[AuditStage]
    verdict: str
    failed_stage: int | None
    ledger: Ledger
    evaluator: Ledger
    flags: list[Flag] = field(default_factory=list)
    schema: str = AUDIT_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return plain(asdict(self))  # type: ignore[no-any-return]

    def to_json(self, *, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditReport:
        if data.get("schema") != AUDIT_SCHEMA:
            raise ValueError(f"not a {AUDIT_SCHEMA} report (schema={data.get('schema')!r})")
        return _build(cls, data, "audit")  # type: ignore[no-any-return]

    def stage(self, number: int) -> AuditStage:
        for stage in self.stages:
            if stage.number == number:
                return stage
        raise KeyError(f"no stage {number} in this audit")
