"""The Report: what a campaign found, as plain data (it serializes to JSON and back).

Rendering (terminal, HTML) reads only these values; the store and the metrics build them. The
JSON form is documented in ``docs/report-schema.md``; ``SCHEMA`` names its version. Numbers a
campaign could not measure are ``None`` in JSON (NaN in Python). Inputs (gallery and grid
images, tabular rows) are flat lists of floats in the dataset's own units, with the run's
``input_shape``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from mallory.flags import Flag
from mallory.jsonable import number, plain

SCHEMA = "mallory.report/2"

T = TypeVar("T")


@dataclass(frozen=True)
class Curve:
    """A step function: ``y[i]`` holds from ``x[i]`` up to ``x[i + 1]``."""

    x: list[float]
    y: list[float]
    x_label: str
    y_label: str


@dataclass(frozen=True)
class Histogram:
    """``counts[i]`` values fell in ``[edges[i], edges[i + 1])`` (the last bin is closed)."""

    edges: list[float]
    counts: list[int]


@dataclass(frozen=True)
class Ledger:
    """What was spent: queries, gradient evaluations, seconds the system spent answering,
    money (queries times the price per query). The attacker's ledger and the evaluator's (the
    judge's own queries, never charged to the attacker) are kept apart."""

    queries: int = 0
    gradients: int = 0
    seconds: float = 0.0
    money: float = 0.0


@dataclass(frozen=True)
class AttackSummary:
    """One attack of a threat model's sequence, run on the samples still standing.

    ``broken`` samples fell to this attack and to none before it (its marginal gain);
    ``success_rate`` is ``broken / attempted``; ``marginal_gain`` is ``broken / samples`` of the
    threat model; ``standing_after`` is the share of the threat model's samples still
    standing after it (for untargeted threat models, the robust accuracy after this attack).
    ``status`` is ``"ran"`` or ``"not run"`` (``reason`` says why: no budget left, no sample
    left standing); ``budget`` is its share of the per-sample query budget (None: unlimited)
    and ``planned`` the queries per sample it planned to spend; ``refused`` counts the rows
    the system or the budget refused it; ``flags`` are findings about its numbers.
    ``flagged`` says whether a query-stream detector refused any of its rows (an attack that
    ran unflagged evaded detection), with ``queries_until_flagged`` its queries before the
    first (0 when the attacker was flagged before it began; NaN when never).
    """

    attack: str
    family: str
    params: dict[str, Any]
    attempted: int
    broken: int
    success_rate: float
    marginal_gain: float
    standing_after: float
    ledger: Ledger
    interrupted: int = 0
    error: str | None = None
    status: str = "ran"
    reason: str | None = None
    budget: int | None = None
    planned: int | None = None
    refused: int = 0
    flags: list[Flag] = field(default_factory=list)
    flagged: bool = False
    queries_until_flagged: float = math.nan


@dataclass(frozen=True)
class Example:
    """One broken sample for the gallery: the clean input, the adversarial input, what the
    system said on each, and what it cost to find."""

    sample: int
    attack: str
    label: int
    prediction: int
    target: int | None
    clean_confidence: float
    confidence: float
    l0: float
    l2: float
    linf: float
    queries: int
    original: list[float]
    adversarial: list[float]


@dataclass(frozen=True)
class GridCell:
    """Targeted grid cell: the source class's sample pushed toward ``target``."""

    source: int
    target: int
    success: bool
    confidence: float
    l0: float
    l2: float
    adversarial: list[float]


@dataclass(frozen=True)
class Grid:
    """The source x target grid of a targeted threat model: one sample per source class
    (``originals[k]`` of class ``classes[k]``), attacked toward every other class."""

    attack: str
    classes: list[int]
    originals: list[list[float]]
    cells: list[GridCell]


@dataclass(frozen=True)
class Risk:
    """The economics of one threat model, for the campaign's declared figures.

    ``costs`` holds, per attacked sample (those the system gets right), what the attacker spent
    until its first mistake (queries at the threat model's price, seconds of computing at
    its price, new accounts after a ban), NaN where it stood; ``levels`` the expertise of the
    attack that broke it. The attacker chooses the ``expertise`` level that pays best (its
    one-off price is ``fixed``); at that level ``paying`` samples break at a cost below the
    ``damage``, so the ``likelihood`` (``paying / attacked``, named by ``band``) times
    ``volume`` inputs times the damage is the defender's ``expected_loss``;
    ``attacker_cost`` is what the attacker spends over those inputs (stopping at the damage
    on an input that resists) and ``attacker_profit`` the difference.
    ``worth_countermeasure`` says whether the expected loss exceeds the countermeasure's
    cost.
    """

    threat: str
    attacked: int
    broken: int
    costs: list[float]
    levels: list[str | None]
    cheapest: float
    median: float
    expertise: str | None
    fixed: float
    paying: int
    likelihood: float
    band: str
    damage: float
    volume: int
    expected_loss: float
    attacker_cost: float
    attacker_profit: float
    countermeasure: float
    worth_countermeasure: bool


@dataclass(frozen=True)
class Edits:
    """What the breaking inputs changed, under a threat model whose features are priced
    (attacks in problem space): per broken sample (``samples``, in id order) what its edit
    costs at the constraints' prices and the edits in words (``"https: 0 -> 1"``);
    ``usage`` counts the breaking inputs that change each feature, most used first."""

    samples: list[int]
    prices: list[float]
    changes: list[list[str]]
    usage: dict[str, int]
    cheapest: float
    median: float


@dataclass(frozen=True)
class ThreatSummary:
    """What one threat model found.

    ``samples`` counts the samples it covers; ``attacked`` those the system got right before
    any attack (the others count as broken at zero cost). ``robust_accuracy`` (untargeted
    goal only, else NaN) is the share of ``samples`` correct and never broken; for a targeted
    goal ``success_rate`` is the share of ``attacked`` samples pushed to their target.
    ``median_distance`` maps l0/l2/linf to the median distance of the breaking inputs.
    ``effort`` maps queries/seconds/money to survival curves: the share of ``attacked``
    samples still standing against the attacker's spend per sample; ``effort_median`` is the
    median spend to the first mistake over the broken samples. ``epsilon_curve`` is accuracy
    against the perturbation size in the threat model's norm (from the distances found: an
    upper bound on the true robust accuracy). ``confidence`` is the system's confidence on each
    mistake; ``review_share`` the share of mistakes inside the run's review band.

    ``inherited`` lists the samples counted broken because a weaker threat model of the run
    broke them (its attacker can do everything the weaker one can): ``{"from": name,
    "broken": count}``. ``refusals`` counts the attacker's rows refused, by reason;
    ``stopped`` says when the system itself stopped the attacker (a rate limit, a ban, a
    detector), with ``queries_until_stopped`` the attacker's queries before it first did.
    ``evaluator`` is the judge's own ledger for this threat model; ``flags`` are findings
    about its numbers. ``queries_until_flagged`` is the attacker's queries before a
    query-stream detector first refused it (NaN when none did), beside ``effort_median``, its
    queries until the first mistake. ``risk`` weighs the attacker's costs against the damage
    the campaign declares (None without ``economics``); ``edits`` what the breaking inputs
    changed and what that costs, when the threat model's features are priced.
    """

    name: str
    threat: dict[str, Any]
    goal: str
    norm: str
    eps: float
    samples: int
    attacked: int
    broken: int
    robust_accuracy: float
    success_rate: float
    attacks: list[AttackSummary]
    median_distance: dict[str, float]
    effort: dict[str, Curve]
    effort_median: dict[str, float]
    epsilon_curve: Curve
    confidence: list[float]
    confidence_histogram: Histogram
    review_share: float
    ledger: Ledger
    examples: list[Example] = field(default_factory=list)
    grid: Grid | None = None
    inherited: list[dict[str, Any]] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)
    stopped: str | None = None
    queries_until_stopped: float = math.nan
    evaluator: Ledger = field(default_factory=Ledger)
    flags: list[Flag] = field(default_factory=list)
    queries_until_flagged: float = math.nan
    risk: Risk | None = None
    edits: Edits | None = None


@dataclass(frozen=True)
class Report:
    """A whole campaign run: the system, the data, clean accuracy, one summary per threat
    model (in the campaign's order, cheapest first) and the total ledger.

    ``status`` is ``complete``, or ``partial`` when the run stopped before its last attack
    (the numbers then cover only what ran). ``review_band`` is the ``[low, high]`` range of
    confidence that a human would review. ``draws`` is how many answers each verdict took (1
    for a deterministic system; a majority over more for a randomized one); ``evaluator`` is
    the judge's own ledger over the run (never charged to the attacker); ``flags`` are
    findings about the system that make numbers doubtful (randomness, saturated outputs).
    """

    run: str
    created: str
    status: str
    system: str
    dataset: str
    samples: int
    seed: int
    clean_accuracy: float
    input_shape: list[int]
    bounds: list[float]
    class_names: list[str]
    feature_names: list[str] | None
    review_band: list[float]
    threats: list[ThreatSummary]
    ledger: Ledger
    draws: int = 1
    evaluator: Ledger = field(default_factory=Ledger)
    flags: list[Flag] = field(default_factory=list)
    schema: str = SCHEMA

    def all_flags(self) -> list[tuple[str, Flag]]:
        """Every flag of the report with where it was raised: ``("run", flag)``, ``(threat,
        flag)`` and ``("threat: attack", flag)``, each (place, code, message) once."""
        out: list[tuple[str, Flag]] = [("run", f) for f in self.flags]
        for threat in self.threats:
            out += [(threat.name, f) for f in threat.flags]
            for attack in threat.attacks:
                out += [(f"{threat.name}: {attack.attack}", f) for f in attack.flags]
        return list(dict.fromkeys(out))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes None, infinities become "inf"/"-inf"."""
        return plain(asdict(self))  # type: ignore[no-any-return]

    def to_json(self, *, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """The inverse of :meth:`to_dict` (a ``ValueError`` names what does not fit)."""
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} report (schema={data.get('schema')!r})")
        return _build(cls, data, "report")

    def threat(self, name: str) -> ThreatSummary:
        for summary in self.threats:
            if summary.name == name:
                return summary
        known = ", ".join(t.name for t in self.threats)
        raise KeyError(f"no threat model {name!r} in run {self.run!r}; it has: {known}")


def _build(kind: Any, data: Any, where: str) -> Any:
    """Rebuild a value of type ``kind`` from its JSON form (dataclasses, lists, dicts)."""
    origin = get_origin(kind)
    if is_dataclass(kind) and isinstance(kind, type):
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
        hints = get_type_hints(kind)
        values = {}
        for f in fields(kind):
            if f.name in data:
                values[f.name] = _build(hints[f.name], data[f.name], f"{where}.{f.name}")
        try:
            return kind(**values)
        except TypeError as error:
            raise ValueError(f"{where}: {error}") from None
    if origin is list:
        (item,) = get_args(kind)
        if not isinstance(data, list):
            raise ValueError(f"{where}: expected a list, got {type(data).__name__}")
        return [_build(item, v, f"{where}[{i}]") for i, v in enumerate(data)]
    if origin is dict:
        _, item = get_args(kind)
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
        return {k: _build(item, v, f"{where}.{k}") for k, v in data.items()}
    args = [a for a in get_args(kind) if a is not type(None)]
    if args and data is None:
        return None
    if len(args) == 1 and args[0] is not Any:
        return _build(args[0], data, where)
    if kind is float:
        return float(number(data))
    return data
