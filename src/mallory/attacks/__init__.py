"""Attacks: the base class, the registry, and one module per attack or family."""

from mallory.attacks.base import (
    REGISTRY,
    Attack,
    Family,
    attack_class,
    create,
    list_attacks,
    register,
)
from mallory.attacks.evasion import (  # noqa: F401  (registers)
    apgd,
    battery,
    boundary,
    cw,
    deepfool,
    estimate,
    fgsm,
    hopskipjump,
    jsma,
    natural,
    pgd,
    simba,
    square,
    tabular,
    transfer,
)
from mallory.attacks.evasion.result import AttackResult

__all__ = [
    "REGISTRY",
    "Attack",
    "AttackResult",
    "Family",
    "attack_class",
    "create",
    "list_attacks",
    "register",
]
