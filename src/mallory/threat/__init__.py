"""The threat model and the perturbation set it defines.

* :mod:`mallory.threat.model`: :class:`ThreatModel`, its enums and the named presets;
* :mod:`mallory.threat.features`: feature constraints (which features the attacker may change);
* :mod:`mallory.threat.perturbation`: distances and projections onto the perturbation set.
"""

from mallory.threat.features import FeatureConstraints
from mallory.threat.model import (
    PRESETS,
    Exposure,
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

__all__ = [
    "PRESETS",
    "Exposure",
    "FeatureConstraints",
    "Feedback",
    "Goal",
    "Knowledge",
    "Norm",
    "Targets",
    "ThreatModel",
    "label_only",
    "no_knowledge",
    "score_based",
    "transfer",
    "white_box",
]
