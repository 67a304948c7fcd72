"""mallory: test an ML system the way its attackers will.

The public API: threat models and their presets, systems, the oracle and the judge, the
attack registry, campaigns and their reports, remote models and the model server. Everything
else is importable from its module but not promised.
"""

from typing import Any

from mallory import flags
from mallory.access import Access, Judge, Oracle, OracleView
from mallory.attacks import (
    Attack,
    AttackResult,
    EvasionAttack,
    Kind,
    attack_class,
    create,
    list_attacks,
    register,
)
from mallory.errors import AccessError, InputError, MalloryError, SystemFailure
from mallory.evaluation import Campaign, ThreatPlan, build_report, default_attacks
from mallory.evaluation.audit import Audit, audit
from mallory.flags import Flag
from mallory.report import Report
from mallory.store import Store
from mallory.systems import (
    Bounds,
    CallableModel,
    Pipeline,
    SklearnModel,
    Stage,
    System,
    TorchModel,
)
from mallory.threat import (
    Exposure,
    FeatureConstraints,
    Feedback,
    Goal,
    Knowledge,
    Norm,
    Targets,
    ThreatModel,
    label_only,
    no_knowledge,
    score_based,
    transfer,
    white_box,
)

__version__ = "0.2.0"


def __getattr__(name: str) -> Any:
    # the HTTP client and the server pull in their network stacks: loaded on first use
    if name == "HttpModel":
        from mallory.systems.http import HttpModel

        return HttpModel
    if name == "serve":
        from mallory.serve import serve

        return serve
    raise AttributeError(f"module 'mallory' has no attribute {name!r}")


__all__ = [
    "Access",
    "AccessError",
    "Attack",
    "AttackResult",
    "Audit",
    "Bounds",
    "CallableModel",
    "Campaign",
    "EvasionAttack",
    "Exposure",
    "FeatureConstraints",
    "Feedback",
    "Flag",
    "Goal",
    "HttpModel",
    "InputError",
    "Judge",
    "Kind",
    "Knowledge",
    "MalloryError",
    "Norm",
    "Oracle",
    "OracleView",
    "Pipeline",
    "Report",
    "SklearnModel",
    "Stage",
    "Store",
    "System",
    "SystemFailure",
    "Targets",
    "ThreatModel",
    "ThreatPlan",
    "TorchModel",
    "__version__",
    "attack_class",
    "audit",
    "build_report",
    "create",
    "default_attacks",
    "flags",
    "label_only",
    "list_attacks",
    "no_knowledge",
    "register",
    "score_based",
    "serve",
    "transfer",
    "white_box",
]
