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
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, cast

from mallory.errors import InputError, bad_param
from mallory.threat.features import FeatureConstraints


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
    Budgets of ``None`` are unlimited; a query counts when the system processed it. ``features``
    limits which input features the attacker may change and to which values (tabular data).
    ``feedback`` is what the attacker sees when the system refuses a query (its rate limit,
    ban, detector or a blocking stage); the attacker's own budget is always seen as blocked.
    """

    name: str = "custom"
    norm: Norm = Norm.LINF
    eps: float = math.inf
    knowledge: Knowledge = Knowledge.PERFECT
    stage_knowledge: tuple[tuple[str, Knowledge], ...] = ()
    exposure: Exposure = Exposure.LOGITS
    top_k: int | None = None
    goal: Goal = Goal.UNTARGETED
    targets: Targets = Targets.RANDOM
    queries_per_sample: int | None = None
    queries_total: int | None = None
    price_per_query: float = 0.0
    adaptive: bool = True
    features: FeatureConstraints | None = None
    feedback: Feedback = Feedback.BLOCKED
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        owner = "ThreatModel"
        for name, enum in (
            ("norm", Norm),
            ("knowledge", Knowledge),
            ("exposure", Exposure),
            ("goal", Goal),
            ("targets", Targets),
            ("feedback", Feedback),
        ):
            object.__setattr__(self, name, _as_enum(owner, name, enum, getattr(self, name)))
        stages: Any = self.stage_knowledge
        if isinstance(stages, Mapping):
            stages = tuple(stages.items())
        object.__setattr__(
            self,
            "stage_knowledge",
            tuple(
                (str(s), _as_enum(owner, f"stage_knowledge[{s!r}]", Knowledge, k))
                for s, k in stages
            ),
        )
        eps = self.eps
        if isinstance(eps, bool) or not isinstance(eps, int | float) or math.isnan(eps) or eps < 0:
            raise bad_param(owner, "eps", "a number >= 0 (math.inf for unbounded)", eps)
        object.__setattr__(self, "eps", float(eps))
        if self.norm is Norm.L0 and math.isfinite(self.eps) and self.eps != int(self.eps):
            raise bad_param(owner, "eps", "a whole number of features for the L0 norm", eps)
        if self.exposure is Exposure.TOP_K:
            if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 1:
                raise bad_param(owner, "top_k", "an int >= 1 when exposure is top-k", self.top_k)
        elif self.top_k is not None:
            raise InputError(
                f"The 'top_k' parameter of ThreatModel is only meaningful with exposure='top-k'; "
                f"got top_k={self.top_k!r} with exposure={self.exposure.value!r}. "
                "Drop top_k or set exposure='top-k'."
            )
        for name in ("queries_per_sample", "queries_total"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise bad_param(owner, name, "an int >= 0, or None for unlimited", value)
        price = self.price_per_query
        if isinstance(price, bool) or not isinstance(price, int | float) or not price >= 0:
            raise bad_param(owner, "price_per_query", "a finite number >= 0", price)
        if not math.isfinite(price):
            raise bad_param(owner, "price_per_query", "a finite number >= 0", price)
        if self.features is not None and not isinstance(self.features, FeatureConstraints):
            raise bad_param(owner, "features", "a FeatureConstraints or None", self.features)
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
            "adaptive": self.adaptive,
            "feedback": self.feedback.value,
            "features": None if self.features is None else self.features.to_dict(),
        }


def _as_enum(owner: str, name: str, enum: type[Any], value: object) -> Any:
    if isinstance(value, enum):
        return value
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in enum)
        raise bad_param(owner, name, f"one of {choices}", value) from None


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
