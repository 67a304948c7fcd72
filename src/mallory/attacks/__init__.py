"""Attacks: the common base and the one registry, one base per kind, one module per attack.

* :mod:`mallory.attacks.base`: :class:`Attack`, :class:`Kind`, :class:`Need`, the registry;
* :mod:`mallory.attacks.evasion`: evasion attacks (adversarial inputs at test time);
* :mod:`mallory.attacks.extraction`: model extraction (a copy bought with queries);
* :mod:`mallory.attacks.poisoning` and :mod:`mallory.attacks.inference`: the bases and result
  types of poisoning and membership inference.
"""

from mallory.attacks.base import (
    REGISTRY,
    Attack,
    Kind,
    Need,
    attack_class,
    create,
    list_attacks,
    register,
)
from mallory.attacks.evasion import (  # noqa: F401  (registers)
    apgd,
    battery,
    boundary,
    cheapest,
    cw,
    deepfool,
    estimate,
    fgsm,
    hopskipjump,
    jsma,
    natural,
    oars,
    pgd,
    simba,
    square,
    tabular,
    transfer,
    wrappers,
)
from mallory.attacks.evasion.base import EvasionAttack, Family
from mallory.attacks.evasion.result import AttackResult
from mallory.attacks.extraction import jacobian  # noqa: F401  (registers)
from mallory.attacks.extraction.base import ExtractionAttack, ExtractionResult
from mallory.attacks.inference import confidence  # noqa: F401  (registers)
from mallory.attacks.inference.base import InferenceAttack, InferenceResult
from mallory.attacks.poisoning import label_flip  # noqa: F401  (registers)
from mallory.attacks.poisoning.base import PoisoningAttack, PoisoningResult

__all__ = [
    "REGISTRY",
    "Attack",
    "AttackResult",
    "EvasionAttack",
    "ExtractionAttack",
    "ExtractionResult",
    "Family",
    "InferenceAttack",
    "InferenceResult",
    "Kind",
    "Need",
    "PoisoningAttack",
    "PoisoningResult",
    "attack_class",
    "create",
    "list_attacks",
    "register",
]
