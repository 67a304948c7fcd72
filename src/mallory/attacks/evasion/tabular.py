"""Feature edits: the cheap trick of real attackers on tabular data.

A phishing page can drop its pop-up window or switch to HTTPS; a fraudster can change the
amount but not the account's age. The attacker edits one feature the system reads, then two,
..., and submits each edit until one passes, seeing only the decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mallory.access.oracle import Oracle
from mallory.access.view import OracleView
from mallory.attacks.base import register
from mallory.attacks.evasion.natural import APRUZZESE, Setting, Trick
from mallory.attacks.noise import Noise
from mallory.attacks.params import integer
from mallory.threat import Norm


@register("feature-edit")
@dataclass(frozen=True, kw_only=True)
class FeatureEdit(Trick):
    """Random edits of the features the attacker may change: one feature, then two, ...

    Apruzzese, Anderson, Dambra, Freeman, Pierazzi and Roundy, "Real Attackers Don't Compute
    Gradients": Bridging the Gap Between Adversarial ML Research and Practice, SaTML 2023.

    Threat model: labels only; any norm; untargeted or targeted; eps may be ``inf`` (the usual
    case: the perturbation set is the feature constraints). The features that may change are
    those of the threat model's :class:`~mallory.threat.features.FeatureConstraints` (every feature
    when it has none). Each candidate edits ``k`` distinct such features, drawn at random, to a
    new value: a different one of the feature's allowed values when the constraints list them,
    else a value uniform between the feature's input bounds. The ladder tries ``tries`` random
    edits of ``k = 1`` feature, then of 2, ..., up to ``max_features`` (at most eps with a
    finite L0 eps). With a finite eps in another norm the edit is projected into the ball, which
    may move a feature off its allowed values: give tabular threat models an L0 eps, or none.
    Shapes: ``x`` is ``(n, features)``; other shapes are edited as their flattened features.

    Cost: at most ``tries * max_features`` queries per sample; a sample stops at its first
    success.

    Args:
        tries: random edits per number of features edited (20).
        max_features: the most features edited at once (3).

    Example::

        names = load_dataset("phishing").feature_names
        threat = no_knowledge(queries=20, features=FeatureConstraints.by_name(names, ["https"]))
        result = create("feature-edit")(Oracle(model, threat), x, y)
    """

    default = True  # run by a campaign that names no attacks
    rank = 9

    paper = APRUZZESE
    images_only = False

    tries: int = integer(20, low=1, help="random edits per number of features edited")
    max_features: int = integer(3, low=1, help="the most features edited at once")

    def ladder(self, oracle: Oracle | OracleView) -> list[Setting]:
        top = min(self.max_features, len(_mutable(oracle)))
        if oracle.norm is Norm.L0 and math.isfinite(oracle.eps):
            top = min(top, int(oracle.eps))
        return [(float(k), float(t)) for k in range(1, top + 1) for t in range(self.tries)]

    def candidate(
        self, oracle: OracleView, x: Tensor, rows: Tensor, noise: Noise, setting: Setting, step: int
    ) -> Tensor:
        k = int(setting[0])
        flat = x.flatten(1)
        mutable = _mutable(oracle).to(x.device)
        m = len(mutable)
        draw = noise.fold(self.name, step)
        pick = draw.fold("features").uniform((m,), rows, device=x.device).argsort(1)[:, :k]
        u = draw.fold("values").uniform((m,), rows, dtype=torch.float64, device=x.device)
        new = _new_values(oracle, flat[:, mutable], mutable, u).to(x.dtype)
        out = flat.clone()
        out.scatter_(1, mutable[pick], new.gather(1, pick))
        return out.reshape(x.shape)


def _mutable(oracle: Oracle | OracleView) -> Tensor:
    """Indices of the features the attacker may change (into the flattened input)."""
    features = oracle.threat.features
    if features is None:
        return torch.arange(math.prod(oracle.input_shape))
    return torch.tensor(features.mutable, dtype=torch.int64)


def _new_values(oracle: OracleView, current: Tensor, mutable: Tensor, u: Tensor) -> Tensor:
    """A new value for every mutable feature of every row, from the uniform draws ``u``
    (rows x mutable features): another allowed value where the constraints list some, else
    uniform between the feature's bounds."""
    shape = oracle.input_shape
    lower, upper = (b.expand(shape).flatten()[mutable] for b in oracle.bounds.on(u))
    out = lower + u * (upper - lower)
    features = oracle.threat.features
    allowed = features.values if features is not None else ()
    listed = [j for j, values in enumerate(allowed) if values]
    if not listed:
        return out
    # a table of the listed features' allowed values, padded with NaN
    width = max(len(allowed[j]) for j in listed)
    table = torch.full((len(listed), width), math.nan, dtype=u.dtype, device=u.device)
    for i, j in enumerate(listed):
        table[i, : len(allowed[j])] = torch.tensor(allowed[j], dtype=u.dtype)
    count = (~table.isnan()).sum(1)
    cols = torch.tensor(listed, device=u.device)
    now = current.to(u.dtype)[:, cols]
    # the current value's place among the allowed ones (the nearest), then any other place
    nearest = (now[:, :, None] - table[None]).abs().nan_to_num(math.inf).argmin(2)
    others = (count - 1).clamp_min(0)
    hop = 1 + (u[:, cols] * others).long().clamp_max(others - 1).clamp_min(0)
    place = torch.where(count > 1, (nearest + hop) % count, torch.zeros_like(nearest))
    out[:, cols] = table.expand(len(u), -1, -1).gather(2, place[:, :, None]).squeeze(2)
    return out
