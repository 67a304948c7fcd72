"""The threat model: what the attacker knows and may do, as one immutable value.

It answers the questions of the lecture on adversarial examples:

========================================================  ===============================
question                                                  field
========================================================  ===============================
Can the attacker adapt to the defense?                    ``adaptive``
Does it know the task (input space, output space)?        ``norm``/``eps``, ``goal``
Does it know the algorithm, architecture, parameters?     ``knowledge`` per stage
Can it send probes, and how many, at what price?          ``queries_per_sample``,
                                                          ``queries_total``, ``price_per_query``
Does it see the class only, or the probabilities?         ``exposure`` (and ``top_k``)
========================================================  ===============================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, cast

from mallory.errors import InputError, bad_param
from mallory.params import (
    Boolean,
    Instance,
    Interval,
    Options,
    OrNone,
    PairsOf,
    Text,
    check_fields,
    param,
)
from mallory.threat.features import FeatureConstraints

_BUDGET = OrNone(Interval(low=0, integral=True), "for no budget", toml_none=math.inf)
"""A query budget: a count, or None (a campaign file: inf) for none."""


class Knowledge(StrEnum):
    """How much the attacker knows about one stage of the system."""

    PERFECT = "perfect"  # architecture and parameters: it can compute gradients
    LIMITED = "limited"  # the task and the kind of model, not the parameters
    ZERO = "zero"  # nothing but what it observes


class Exposure(StrEnum):
    """What the system's interface returns to a query."""

    LOGITS = "logits"  # raw scores before the softmax
    SCORES = "scores"  # class probabilities
    TOP_K = "top-k"  # the k largest probabilities; the others are hidden (NaN)
    LABEL = "label"  # the predicted class only

    @property
    def richness(self) -> int:
        """Order of information: label < top-k < scores < logits."""
        return _RICHNESS[self]


_RICHNESS = {Exposure.LABEL: 0, Exposure.TOP_K: 1, Exposure.SCORES: 2, Exposure.LOGITS: 3}


class Norm(StrEnum):
    """The norm of an Lp perturbation ball."""

    LINF = "linf"
    L2 = "l2"
    L0 = "l0"  # number of input features changed


class Goal(StrEnum):
    """What counts as a success for the attacker."""

    UNTARGETED = "untargeted"  # any wrong class
    TARGETED = "targeted"  # a chosen class (given with the data, or drawn at random)


class Feedback(StrEnum):
    """What the attacker learns when the system refuses a query (a rate limit, a ban, a
    detector, a stage that blocks): the defender's response as the attacker sees it."""

    BLOCKED = "blocked"  # the answer says "blocked" (label -1, no scores)
    LABEL = "label"  # the answer is an ordinary-looking label: the system's refusal label
    DELAY = "delay"  # a rate limit answers late instead of refusing; other refusals: nothing
    NONE = "none"  # no answer comes back (label -1, no scores), as if the call timed out


class Targets(StrEnum):
    """Where the target classes of a targeted attack come from."""

    RANDOM = "random"  # drawn uniformly among the wrong classes, from the attack's seed
    GIVEN = "given"  # passed with the data (``targets=``)


@dataclass(frozen=True, kw_only=True)
class ThreatModel:
    """What the attacker knows and may do.

    ``eps`` bounds the perturbation in ``norm`` (for L0: the number of features changed);
    ``math.inf`` leaves it unbounded, as minimal-perturbation attacks (Carlini-Wagner, DeepFool)
    report the smallest perturbation they find. Every input also stays inside the system's
    input bounds. ``knowledge`` applies to every stage unless ``stage_knowledge`` names the stage.
    Budgets of ``None`` are unlimited; a query counts when the system processed it. The prices
    (per query, per second of computing, per new account after a ban) make the attacker's cost
    model: what the report's economics weigh against the damage. ``features``
    limits which input features the attacker may change and to which values (tabular data).
    ``feedback`` is what the attacker sees when the system refuses a query (its rate limit,
    ban, detector or a blocking stage); the attacker's own budget is always seen as blocked.
    """

    name: str = param(Text(), "custom", help="names the threat model in reports")
    norm: Norm = param(Options(Norm), Norm.LINF, help="the norm of the perturbation ball")
    eps: float = param(
        Interval(low=0.0, finite=False, note="inf: unbounded"),
        math.inf,
        help="the radius of the ball in norm (L0: features changed)",
    )
    knowledge: Knowledge = param(
        Options(Knowledge), Knowledge.PERFECT, help="the attacker's knowledge of every stage"
    )
    stage_knowledge: tuple[tuple[str, Knowledge], ...] = param(
        PairsOf(
            Text(),
            Options(Knowledge),
            f"a mapping of stage names to {Options(Knowledge).expected}",
        ),
        (),
        help="knowledge of the named stages, where it differs",
    )
    exposure: Exposure = param(
        Options(Exposure), Exposure.LOGITS, help="what the answer to a query shows"
    )
    top_k: int | None = param(
        OrNone(Interval(low=1, integral=True), "unless exposure is 'top-k'"),
        None,
        help="how many scores a top-k answer shows",
    )
    goal: Goal = param(Options(Goal), Goal.UNTARGETED, help="what counts as a success")
    targets: Targets = param(
        Options(Targets), Targets.RANDOM, help="where a targeted attack's classes come from"
    )
    queries_per_sample: int | None = param(
        _BUDGET, None, help="queries per sample the system processes (None: unlimited)"
    )
    queries_total: int | None = param(
        _BUDGET, None, help="queries in all the system processes (None: unlimited)"
    )
    price_per_query: float = param(
        Interval(low=0.0), 0.0, help="what a query costs the attacker (money)"
    )
    price_per_second: float = param(
        Interval(low=0.0), 0.0, help="what a second of the attack's computing costs (money)"
    )
    price_per_account: float = param(
        Interval(low=0.0), 0.0, help="what a new account costs the attacker after a ban (money)"
    )
    adaptive: bool = param(Boolean(), True, help="whether the attacker knows the defense")
    features: FeatureConstraints | None = param(
        OrNone(Instance(FeatureConstraints, "a FeatureConstraints")),
        None,
        help="which input features the attacker may change, and to what",
    )
    feedback: Feedback = param(
        Options(Feedback), Feedback.BLOCKED, help="what the attacker sees of a refusal"
    )
    description: str = param(Text(blank=True), "", help="what the threat model is", compare=False)

    def __post_init__(self) -> None:
        owner = "ThreatModel"
        check_fields(self)
        if self.norm is Norm.L0 and math.isfinite(self.eps) and self.eps != int(self.eps):
            raise bad_param(owner, "eps", "a whole number of features for the L0 norm", self.eps)
        if self.exposure is Exposure.TOP_K:
            if self.top_k is None:
                raise bad_param(owner, "top_k", "an int >= 1 when exposure is top-k", self.top_k)
        elif self.top_k is not None:
            raise InputError(
                f"The 'top_k' parameter of ThreatModel is only meaningful with exposure='top-k'; "
                f"got top_k={self.top_k!r} with exposure={self.exposure.value!r}. "
                "Drop top_k or set exposure='top-k'."
            )
        if self.goal is Goal.UNTARGETED and self.targets is Targets.GIVEN:
            raise InputError(
                "ThreatModel: targets='given' needs goal='targeted'; an untargeted attacker has no "
                "target class. Set goal='targeted' or leave targets at its default."
            )

    def knowledge_of(self, stage: str) -> Knowledge:
        """The attacker's knowledge of the named stage."""
        for name, knowledge in self.stage_knowledge:
            if name == stage:
                return knowledge
        return self.knowledge

    @property
    def sees_scores(self) -> bool:
        """Whether queries return scores (all, or the top k), not only a label."""
        return self.exposure is not Exposure.LABEL

    def with_(self, **changes: Any) -> ThreatModel:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description."""
        return {
            "name": self.name,
            "norm": self.norm.value,
            "eps": self.eps if math.isfinite(self.eps) else "inf",
            "knowledge": self.knowledge.value,
            "stage_knowledge": {s: k.value for s, k in self.stage_knowledge},
            "exposure": self.exposure.value,
            "top_k": self.top_k,
            "goal": self.goal.value,
            "targets": self.targets.value,
            "queries_per_sample": self.queries_per_sample,
            "queries_total": self.queries_total,
            "price_per_query": self.price_per_query,
            "price_per_second": self.price_per_second,
            "price_per_account": self.price_per_account,
            "adaptive": self.adaptive,
            "feedback": self.feedback.value,
            "features": None if self.features is None else self.features.to_dict(),
        }


def white_box(norm: Norm | str = Norm.LINF, eps: float = math.inf, **changes: Any) -> ThreatModel:
    """The attacker knows everything (architecture, parameters, the defense) and sees logits."""
    return ThreatModel(
        name="white-box",
        norm=cast(Norm, norm),  # ThreatModel validates strings
        eps=eps,
        knowledge=Knowledge.PERFECT,
        exposure=Exposure.LOGITS,
        adaptive=True,
        description="knows architecture, parameters and defense; gradients; logits; no budget",
    ).with_(**changes)


def score_based(
    norm: Norm | str = Norm.LINF,
    eps: float = math.inf,
    queries: int | None = 1000,
    **changes: Any,
) -> ThreatModel:
    """The attacker knows nothing of the model, probes it and sees class probabilities."""
    return ThreatModel(
        name="score-based",
        norm=cast(Norm, norm),  # ThreatModel validates strings
        eps=eps,
        knowledge=Knowledge.ZERO,
        exposure=Exposure.SCORES,
        queries_per_sample=queries,
        adaptive=False,
        description="no knowledge; probes the API and sees all class probabilities",
    ).with_(**changes)


def label_only(
    norm: Norm | str = Norm.L2,
    eps: float = math.inf,
    queries: int | None = 1000,
    **changes: Any,
) -> ThreatModel:
    """The attacker knows nothing of the model, probes it and sees only the predicted label."""
    return ThreatModel(
        name="label-only",
        norm=cast(Norm, norm),  # ThreatModel validates strings
        eps=eps,
        knowledge=Knowledge.ZERO,
        exposure=Exposure.LABEL,
        queries_per_sample=queries,
        adaptive=False,
        description="no knowledge; probes the API and sees only the predicted label",
    ).with_(**changes)


def transfer(norm: Norm | str = Norm.LINF, eps: float = math.inf, **changes: Any) -> ThreatModel:
    """The attacker knows the task and has data of its own, not the model; it submits once."""
    return ThreatModel(
        name="transfer",
        norm=cast(Norm, norm),  # ThreatModel validates strings
        eps=eps,
        knowledge=Knowledge.LIMITED,
        exposure=Exposure.LABEL,
        queries_per_sample=1,
        adaptive=False,
        description="knows the task and has its own data; attacks a surrogate, submits once",
    ).with_(**changes)


def no_knowledge(
    norm: Norm | str = Norm.LINF,
    eps: float = math.inf,
    queries: int | None = 100,
    **changes: Any,
) -> ThreatModel:
    """The attacker knows nothing and sees a label: the cheap tricks of real attackers."""
    return ThreatModel(
        name="no-knowledge",
        norm=cast(Norm, norm),  # ThreatModel validates strings
        eps=eps,
        knowledge=Knowledge.ZERO,
        exposure=Exposure.LABEL,
        queries_per_sample=queries,
        adaptive=False,
        description="knows nothing; a handful of label-only probes",
    ).with_(**changes)


PRESETS = {
    "white-box": white_box,
    "score-based": score_based,
    "label-only": label_only,
    "transfer": transfer,
    "no-knowledge": no_knowledge,
}

PRESET = Options(tuple(PRESETS))
"""The name of a preset: the choices of ``mallory attack --threat`` and of a campaign file's
``preset`` key."""
