"""mallory: test an ML system the way its attackers will.

The public API: threat models and their presets, systems, the oracle, and the attack registry.
Everything else is importable from its module but not promised.
"""

from mallory.access.oracle import Access, Oracle
from mallory.attacks import Attack, AttackResult, attack_class, create, list_attacks, register
from mallory.errors import AccessError, InputError, MalloryError, SystemFailure
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

__version__ = "0.1.0"

__all__ = [
    "Access",
    "AccessError",
    "Attack",
    "AttackResult",
    "Bounds",
    "CallableModel",
    "Exposure",
    "Goal",
    "InputError",
    "Knowledge",
    "MalloryError",
    "Norm",
    "Oracle",
    "Pipeline",
    "SklearnModel",
    "Stage",
    "System",
    "SystemFailure",
    "Targets",
    "ThreatModel",
    "TorchModel",
    "__version__",
    "attack_class",
    "create",
    "label_only",
    "list_attacks",
    "no_knowledge",
    "register",
    "score_based",
    "transfer",
    "white_box",
]
