"""Metrics: from a run in the store to its Report.

Everything here reads the store only, so ``mallory report RUN`` renders a run without the
system or the data. Definitions (per threat model):

* a sample is *broken* when some attack of the sequence found an input inside the perturbation
  set that the judge finds wrong (untargeted) or on target (targeted), by a majority over
  draws for a randomized system; clean mistakes count as broken at zero cost (and are not
  attacked);
* a sample broken under a *weaker* threat model of the same run (same norm, goal and samples;
  no more eps, knowledge, exposure or budget, see :func:`dominates`) counts as broken under a
  stronger one too: its attacker can do everything the weaker one did. The report lists such
  samples as inherited, so a stronger threat model never shows a higher robust accuracy;
* under an unbounded threat model (eps = inf) every attack ran on every sample; the breaking
  input of a sample is then the closest one found (distances, confidence and gallery use it),
  and its effort is still what was spent up to its first mistake;
* robust accuracy = samples correct and never broken / all samples (untargeted only);
* marginal gain of an attack = samples it broke that no earlier attack broke / all samples;
* effort to the first mistake = what the attacker spent on a sample as the event log counted it
  (queries, seconds the system spent answering it, money), summed over the attacks up to and
  including the one that broke it; a survival curve gives the share of attacked samples still
  standing against that spend per sample;
* confidence on mistakes = the system's top probability on the breaking input (NaN when the
  system shows labels only); the review share is the share of those inside the run's review
  band;
* the attacker's ledger and the evaluator's (the judge's own queries) are kept apart;
* queries until flagged = the attacker's charged queries (in the order it made them) before a
  query-stream detector first refused one of its rows; an attack is *flagged* when a detector
  refused any of its rows, and evades detection when it ran and none was (the report knows a
  detector only by its refusals).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mallory.access.events import Call, Outcome, Reason
from mallory.access.judge import DEFAULT_DRAWS
from mallory.evaluation.economics import Economics, risk
from mallory.flags import RANDOMIZED, Flag
from mallory.report.model import (
    AttackSummary,
    Curve,
    Edits,
    Example,
    Grid,
    GridCell,
    Histogram,
    Ledger,
    Report,
    Risk,
    ThreatSummary,
)
from mallory.store import Outcomes, Samples, Store, Unit
from mallory.threat.features import FeatureConstraints

EXAMPLES = 8  # gallery rows per threat model
MEASURES = ("queries", "seconds", "money")
SYSTEM_REASONS = {Reason.RATE, Reason.BAN, Reason.DETECTOR, Reason.SYSTEM}
DETECTOR = {Reason.DETECTOR}
_KNOWLEDGE = {"zero": 0, "limited": 1, "perfect": 2}
_EXPOSURE = {"label": 0, "top-k": 1, "scores": 2, "logits": 3}

Breaking = dict[int, tuple[str, Outcomes, int]]  # id -> (attack, its outcomes, row)


def build_report(store: Store, run: str) -> Report:
    """The Report of ``run`` as the store holds it now (``partial`` until it finished)."""
    info = store.run(run)
    config = info["config"]
    shape = tuple(config["input_shape"])
    samples = store.samples(run, shape)
    dataset_rows = samples.source < 0
    n = int(dataset_rows.sum())
    correct = (samples.predictions == samples.labels)[dataset_rows]
    units = store.units(run)
    last = max(((u.threat, u.attack) for u in units if u.attack >= 0), default=(-1, -1))
    complete = info["status"] == "complete"
    # an attack is reached when it committed a unit, or when the run went past it
    done = {
        (t, a)
        for t, plan in enumerate(config["plans"])
        for a in range(len(plan["attacks"]))
        if complete or (t, a) <= last
    }
    collected = [
        _collect(store, run, t, plan, config, samples, done, [u for u in units if u.threat == t])
        for t, plan in enumerate(config["plans"])
    ]
    _inherit(config["plans"], collected)
    threats = [
        _summary(c, config, samples, store.events(run, threat=c.t, account="attacker"))
        for c in collected
    ]
    total = Ledger(
        queries=sum(s.ledger.queries for s in threats),
        gradients=sum(s.ledger.gradients for s in threats),
        seconds=sum(s.ledger.seconds for s in threats),
        money=sum(s.ledger.money for s in threats),
    )
    return Report(
        run=run,
        created=info["created"],
        status="complete" if info["status"] == "complete" else "partial",
        system=config["system"],
        dataset=config["dataset"],
        samples=n,
        seed=config["seed"],
        clean_accuracy=float(correct.double().mean()) if n else math.nan,
        input_shape=list(shape),
        bounds=list(config["bounds"]),
        class_names=list(config["class_names"]),
        feature_names=config["feature_names"],
        review_band=list(config["review_band"]),
        threats=threats,
        ledger=total,
        draws=_draws(config, info["flags"]),
        evaluator=_ledger_of(store.events(run, account="evaluator")),
        flags=[Flag.from_dict(f) for f in info["flags"]],
    )


def dominates(strong: dict[str, Any], weak: dict[str, Any]) -> bool:
    """Whether an attacker under threat model ``strong`` can do everything one under ``weak``
    can (both as ``ThreatModel.to_dict()`` writes them): the same norm, goal, targets,
    features and feedback; at least the eps, the knowledge of every stage, the exposure, the
    adaptivity and the budgets."""
    if strong is weak or strong == weak:
        return False
    same = ("norm", "goal", "targets", "features", "feedback")
    if any(strong.get(k) != weak.get(k) for k in same):
        return False
    if _eps(strong) < _eps(weak):
        return False
    if _KNOWLEDGE[strong["knowledge"]] < _KNOWLEDGE[weak["knowledge"]]:
        return False
    stages = set(strong.get("stage_knowledge", {})) | set(weak.get("stage_knowledge", {}))
    for stage in stages:
        mine = strong.get("stage_knowledge", {}).get(stage, strong["knowledge"])
        theirs = weak.get("stage_knowledge", {}).get(stage, weak["knowledge"])
        if _KNOWLEDGE[mine] < _KNOWLEDGE[theirs]:
            return False
    if _EXPOSURE[strong["exposure"]] < _EXPOSURE[weak["exposure"]]:
        return False
    both_top_k = strong["exposure"] == weak["exposure"] == "top-k"
    if both_top_k and (strong.get("top_k") or 0) < (weak.get("top_k") or 0):
        return False
    if weak.get("adaptive") and not strong.get("adaptive"):
        return False
    for budget in ("queries_per_sample", "queries_total"):
        mine, theirs = strong.get(budget), weak.get(budget)
        if mine is not None and (theirs is None or mine < theirs):
            return False
    return True


def _eps(threat: dict[str, Any]) -> float:
    return _as_float(threat["eps"]) if threat["eps"] != "inf" else math.inf


@dataclass
class _Collected:
    """What one threat model's units hold, before inheritance and summaries."""

    t: int
    plan: dict[str, Any]
    ids: Tensor
    correct: Tensor
    breaking: Breaking
    spent: dict[str, Tensor]
    effort: dict[str, Tensor]
    attacks: list[AttackSummary]
    units: list[Unit]
    inherited: list[dict[str, Any]]
    levels: dict[int, str | None] = field(default_factory=dict)  # expertise of the first break


def _collect(
    store: Store,
    run: str,
    t: int,
    plan: dict[str, Any],
    config: dict[str, Any],
    samples: Samples,
    done: set[tuple[int, int]],
    units: list[Unit],
) -> _Collected:
    threat = plan["threat"]
    shape = tuple(config["input_shape"])
    rows = samples.source >= 0 if plan["grid"] else samples.source < 0
    ids = samples.ids[rows]
    n = len(ids)
    correct = (samples.predictions == samples.labels)[rows]
    attacked = int(correct.sum())
    norm = threat["norm"]
    unbounded = math.isinf(_eps(threat))
    spent = {m: torch.zeros(n, dtype=torch.float64) for m in MEASURES}
    position = {int(i): k for k, i in enumerate(ids)}
    breaking: Breaking = {}
    levels: dict[int, str | None] = {}
    effort = {m: torch.full((n,), math.nan, dtype=torch.float64) for m in MEASURES}
    summaries = []
    standing = attacked
    preface = [u for u in units if u.attack < 0]
    if preface:
        calls = store.events(run, threat=t, attack=-1, account="attacker")
        ledger = _ledger_of(calls)
        until = _queries_before(calls, DETECTOR)
        summaries.append(
            AttackSummary(
                attack=preface[0].name,
                family="extraction",
                params=preface[0].params,
                attempted=0,
                broken=0,
                success_rate=math.nan,
                marginal_gain=0.0,
                standing_after=standing / n if n else math.nan,
                ledger=ledger,
                refused=sum(int((c.outcome == int(Outcome.REFUSED)).sum()) for c in calls),
                flagged=not math.isnan(until),
                queries_until_flagged=until,
            )
        )
    for a, entry in enumerate(plan["attacks"]):
        if (t, a) not in done:
            continue  # not reached yet (a partial run)
        mine = [u for u in units if u.attack == a]
        first = mine[0] if mine else None
        flags = list(dict.fromkeys(Flag.from_dict(f) for u in mine for f in u.flags))
        refused = sum(sum(u.refusals.values()) for u in mine)
        detected = sum(int(u.refusals.get(Reason.DETECTOR.text, 0)) for u in mine)
        if first is not None and first.status == "not-run":
            summaries.append(
                AttackSummary(
                    attack=entry["name"],
                    family=entry["family"],
                    params=entry["params"],
                    attempted=0,
                    broken=0,
                    success_rate=math.nan,
                    marginal_gain=0.0,
                    standing_after=standing / n if n else math.nan,
                    ledger=Ledger(),
                    status="not run",
                    reason=first.reason,
                    budget=first.budget,
                    planned=first.planned,
                )
            )
            continue
        out = store.outcomes(run, t, a, shape)
        where = torch.tensor([position[int(i)] for i in out.ids], dtype=torch.int64)
        for m in MEASURES:
            spent[m].index_add_(0, where, getattr(out, m).double())
        newly = 0
        for r in torch.nonzero(out.success).flatten().tolist():
            sid = int(out.ids[r])
            if sid in breaking:
                # unbounded threat models run every attack on every sample: keep the closest
                _, held, k = breaking[sid]
                if unbounded and float(getattr(out, norm)[r]) < float(getattr(held, norm)[k]):
                    breaking[sid] = (entry["name"], out, r)
                continue
            breaking[sid] = (entry["name"], out, r)
            levels[sid] = entry.get("expertise")
            newly += 1
            for m in MEASURES:
                effort[m][position[sid]] = spent[m][position[sid]]
        standing -= newly
        summaries.append(
            AttackSummary(
                attack=entry["name"],
                family=entry["family"],
                params=entry["params"],
                attempted=len(out.ids),
                broken=newly,
                success_rate=newly / len(out.ids) if len(out.ids) else math.nan,
                marginal_gain=newly / n if n else math.nan,
                standing_after=standing / n if n else math.nan,
                ledger=Ledger(
                    queries=int(out.queries.sum()),
                    gradients=int(out.gradients.sum()),
                    seconds=float(out.seconds.sum()),
                    money=float(out.money.sum()),
                ),
                interrupted=int(out.interrupted.sum()),
                budget=first.budget if first is not None else None,
                planned=first.planned if first is not None else None,
                refused=refused,
                flags=flags,
                flagged=detected > 0,
                queries_until_flagged=(
                    _queries_before(
                        store.events(run, threat=t, attack=a, account="attacker"), DETECTOR
                    )
                    if detected
                    else math.nan
                ),
            )
        )
    return _Collected(t, plan, ids, correct, breaking, spent, effort, summaries, units, [], levels)


def _inherit(plans: list[dict[str, Any]], collected: list[_Collected]) -> None:
    """Samples broken under a weaker threat model count under every stronger one (in place):
    a row of the attack sequence says how many each weaker one gave."""
    for strong in collected:
        for weak in collected:
            if weak is strong or strong.plan["grid"] != weak.plan["grid"]:
                continue
            if not dominates(strong.plan["threat"], weak.plan["threat"]):
                continue
            if not torch.equal(strong.ids, weak.ids):
                continue
            position = {int(i): k for k, i in enumerate(strong.ids)}
            gained = [sid for sid in weak.breaking if sid not in strong.breaking]
            for sid in gained:
                strong.breaking[sid] = weak.breaking[sid]
                strong.levels[sid] = weak.levels.get(sid)
                k = position[sid]
                for m in MEASURES:
                    strong.effort[m][k] = weak.effort[m][k]
            if gained:
                strong.inherited.append(
                    {"from": weak.plan["threat"]["name"], "broken": len(gained)}
                )


def _summary(
    collected: _Collected, config: dict[str, Any], samples: Samples, events: list[Call]
) -> ThreatSummary:
    plan = collected.plan
    threat = plan["threat"]
    ids, correct, breaking = collected.ids, collected.correct, collected.breaking
    n = len(ids)
    attacked = int(correct.sum())
    untargeted = threat["goal"] == "untargeted"
    norm = threat["norm"]
    summaries = list(collected.attacks)
    standing = attacked - len(breaking)
    for item in collected.inherited:
        summaries.append(
            AttackSummary(
                attack=f"inherited from {item['from']}",
                family="inherited",
                params={},
                attempted=0,
                broken=int(item["broken"]),
                success_rate=math.nan,
                marginal_gain=int(item["broken"]) / n if n else math.nan,
                standing_after=standing / n if n else math.nan,
                ledger=Ledger(),
            )
        )
    broken = len(breaking)
    distances = {
        d: _median([float(getattr(o, d)[r]) for _, o, r in breaking.values()])
        for d in ("l0", "l2", "linf")
    }
    confidence = [float(o.confidence[r]) for _, o, r in breaking.values()]
    low, high = config["review_band"]
    finite = [c for c in confidence if not math.isnan(c)]
    inside = [c for c in finite if low <= c <= high]
    eps = _eps(threat)
    spent, effort = collected.spent, collected.effort
    refusals = _refusals(collected.units)
    stopped, until = _stopped(refusals, events)
    threat_flags = list(
        dict.fromkeys(f for a in summaries for f in a.flags if f.code == "stopped-by-system")
    )
    edits = _edits(breaking, threat, config, samples)
    return ThreatSummary(
        name=threat["name"],
        threat=threat,
        goal=threat["goal"],
        norm=norm,
        eps=eps,
        samples=n,
        attacked=attacked,
        broken=broken,
        robust_accuracy=(attacked - broken) / n if untargeted and n else math.nan,
        success_rate=broken / attacked if attacked else math.nan,
        attacks=summaries,
        median_distance=distances,
        effort={m: _survival(effort[m][correct], spent[m][correct], m) for m in MEASURES},
        effort_median={m: _median(effort[m][~effort[m].isnan()].tolist()) for m in MEASURES},
        epsilon_curve=_epsilon_curve(
            [float(getattr(o, norm)[r]) for _, o, r in breaking.values()],
            attacked,
            n,
            eps,
            norm,
            untargeted,
        ),
        confidence=confidence,
        confidence_histogram=_histogram(finite),
        review_share=len(inside) / len(finite) if finite else math.nan,
        ledger=Ledger(
            queries=int(spent["queries"].sum())
            + sum(a.ledger.queries for a in summaries if a.family == "extraction"),
            gradients=sum(s.ledger.gradients for s in summaries),
            seconds=float(spent["seconds"].sum())
            + sum(a.ledger.seconds for a in summaries if a.family == "extraction"),
            money=float(spent["money"].sum())
            + sum(a.ledger.money for a in summaries if a.family == "extraction"),
        ),
        examples=_examples(breaking, samples),
        grid=_grid(plan, breaking, samples) if plan["grid"] else None,
        inherited=list(collected.inherited),
        refusals=refusals,
        stopped=stopped,
        queries_until_stopped=until,
        evaluator=_unit_evaluator(collected.units),
        flags=threat_flags,
        queries_until_flagged=_queries_before(events, DETECTOR),
        risk=_risk(collected, config, events, edits),
        edits=edits,
    )


def _constraints(threat: dict[str, Any], config: dict[str, Any]) -> FeatureConstraints | None:
    """The threat model's priced feature constraints (None when it has none, or no prices)."""
    data = threat.get("features")
    if not data or not (data.get("prices") or data.get("unit_prices") or data.get("groups")):
        return None
    plain_data = {k: v for k, v in data.items() if k != "extractor"}  # prices need no code
    plain_data.setdefault("names", config.get("feature_names") or ())
    constraints = FeatureConstraints.from_dict(plain_data)
    return constraints if constraints.priced else None


def _edits(
    breaking: Breaking, threat: dict[str, Any], config: dict[str, Any], samples: Samples
) -> Edits | None:
    """What each breaking input changed and its price, under priced feature constraints."""
    constraints = _constraints(threat, config)
    if constraints is None:
        return None
    index = {int(i): k for k, i in enumerate(samples.ids)}
    ids = [sid for sid in sorted(breaking) if sid in breaking[sid][1].x_adv]
    if not ids:
        return Edits([], [], [], {}, math.nan, math.nan)
    x = samples.x[[index[sid] for sid in ids]]
    x_adv = torch.stack([breaking[sid][1].x_adv[sid] for sid in ids]).to(x)
    prices = constraints.cost(x_adv, x).tolist()
    words = constraints.edits(x_adv, x)
    usage: dict[str, int] = {}
    for row in words:
        for word in row:
            feature = word.split(":")[0] if ":" in word else word
            usage[feature] = usage.get(feature, 0) + 1
    ranked = dict(sorted(usage.items(), key=lambda item: (-item[1], item[0])))
    return Edits(
        samples=ids,
        prices=prices,
        changes=[list(row) for row in words],
        usage=ranked,
        cheapest=min(prices),
        median=_median(prices),
    )


def _risk(
    collected: _Collected, config: dict[str, Any], events: list[Call], edits: Edits | None
) -> Risk | None:
    """The economics row of a threat model (None when the campaign declares no economics).

    The attacker's money per sample: queries at the threat model's price, the seconds its
    attacks took at the price of a second, when the system banned the attacker after Q
    queries a new account every Q queries, and under priced features the breaking edit's
    price."""
    if not config.get("economics"):
        return None
    threat = collected.plan["threat"]
    correct = collected.correct
    banned = _queries_before(events, {Reason.BAN})
    per_query = 0.0
    if not math.isnan(banned):
        per_query = threat.get("price_per_account", 0.0) / max(banned, 1.0)

    def money(measure: dict[str, Tensor]) -> Tensor:
        return (
            measure["money"]
            + measure["seconds"] * threat.get("price_per_second", 0.0)
            + measure["queries"] * per_query
        )[correct]

    ids = collected.ids[correct].tolist()
    first = money(collected.effort)
    if edits is not None:
        price = dict(zip(edits.samples, edits.prices, strict=True))
        extra = torch.tensor([price.get(int(i), 0.0) for i in ids], dtype=torch.float64)
        first = first + extra
    return risk(
        threat["name"],
        first,
        money(collected.spent),
        [collected.levels.get(int(i)) for i in ids],
        Economics.from_dict(config["economics"]),
    )


def _refusals(units: list[Unit]) -> dict[str, int]:
    out: dict[str, int] = {}
    for unit in units:
        for reason, count in unit.refusals.items():
            out[reason] = out.get(reason, 0) + int(count)
    return out


def _stopped(refusals: dict[str, int], events: list[Call]) -> tuple[str | None, float]:
    """Whether the system itself refused the attacker (a rate limit, a ban, a detector, a
    blocking stage), and the attacker's queries before it first did."""
    texts = {reason.text for reason in SYSTEM_REASONS}
    by_system = {text: count for text, count in refusals.items() if text in texts}
    if not by_system:
        return None, math.nan
    text = ", ".join(f"{count:,} rows {reason}" for reason, count in by_system.items())
    return f"stopped by the system: {text}", _queries_before(events, SYSTEM_REASONS)


def _queries_before(events: list[Call], reasons: set[Reason]) -> float:
    """The charged queries of ``events``, in order, before the first row refused or blocked
    for one of ``reasons`` (NaN when none was)."""
    codes = torch.tensor([int(r) for r in reasons], dtype=torch.int8)
    before = 0
    for call in events:
        hit = torch.isin(call.reason, codes)
        if bool(hit.any()):
            first = int(hit.nonzero()[0])
            return float(before + int(call.charged[:first].sum()))
        before += int(call.charged.sum())
    return math.nan


def _unit_evaluator(units: list[Unit]) -> Ledger:
    return Ledger(
        queries=sum(int(u.evaluator.get("queries", 0)) for u in units),
        seconds=sum(float(u.evaluator.get("seconds", 0.0)) for u in units),
        money=sum(float(u.evaluator.get("money", 0.0)) for u in units),
    )


def _ledger_of(calls: list[Call]) -> Ledger:
    queries = gradients = 0
    seconds = money = 0.0
    for call in calls:
        charged = int(call.charged.sum())
        queries += charged
        money += charged * call.price
        seconds += call.seconds
        if call.kind.value == "gradient":
            gradients += charged
    return Ledger(queries=queries, gradients=gradients, seconds=seconds, money=money)


def _draws(config: dict[str, Any], flags: list[dict[str, Any]]) -> int:
    if not any(f.get("code") == RANDOMIZED for f in flags):
        return 1
    return int(config.get("draws") or DEFAULT_DRAWS)


def _survival(broken_at: Tensor, spent: Tensor, measure: str) -> Curve:
    """Share of attacked samples still standing against the spend per sample: a step down at
    each broken sample's effort; samples never broken stay standing (up to what was spent)."""
    total = len(broken_at)
    label = {
        "queries": "queries per sample",
        "seconds": "seconds per sample",
        "money": "money per sample",
    }[measure]
    if total == 0:
        return Curve([], [], label, "share standing")
    hits = torch.sort(broken_at[~broken_at.isnan()]).values.tolist()
    xs, ys = [0.0], [1.0 - sum(1 for h in hits if h <= 0.0) / total]
    fallen = total - round(ys[0] * total)
    for h in hits:
        if h <= 0.0:
            continue
        fallen += 1
        if xs[-1] == h:
            ys[-1] = 1.0 - fallen / total
        else:
            xs.append(h)
            ys.append(1.0 - fallen / total)
    end = float(spent.max()) if len(spent) else 0.0
    if end > xs[-1]:
        xs.append(end)
        ys.append(ys[-1])
    return Curve(xs, ys, label, "share standing")


def _epsilon_curve(
    found: list[float], attacked: int, n: int, eps: float, norm: str, untargeted: bool
) -> Curve:
    """Accuracy (untargeted) or share not pushed to its target (targeted) against the
    perturbation size: a sample counts as broken at eps' when its breaking input lies within
    eps' (an upper bound on the true robust accuracy)."""
    base = n if untargeted else attacked
    y_label = "accuracy" if untargeted else "share not at target"
    if base == 0:
        return Curve([], [], f"{norm} perturbation", y_label)
    hits = sorted(d for d in found if not math.isnan(d))
    xs, ys = [0.0], [attacked / base]
    for fallen, d in enumerate(hits, start=1):
        if xs[-1] == d:
            ys[-1] = (attacked - fallen) / base
        else:
            xs.append(d)
            ys.append((attacked - fallen) / base)
    if math.isfinite(eps) and eps > xs[-1]:
        xs.append(eps)
        ys.append(ys[-1])
    return Curve(xs, ys, f"{norm} perturbation", y_label)


def _histogram(values: list[float], bins: int = 10) -> Histogram:
    edges = [k / bins for k in range(bins + 1)]
    counts = [0] * bins
    for v in values:
        counts[min(int(v * bins), bins - 1)] += 1
    return Histogram(edges, counts)


def _examples(breaking: dict[int, tuple[str, Outcomes, int]], samples: Samples) -> list[Example]:
    """Up to EXAMPLES broken samples, taking from each breaking attack in turn."""
    by_attack: dict[str, list[int]] = {}
    for sid in sorted(breaking):
        name, out, _ = breaking[sid]
        if sid in out.x_adv:
            by_attack.setdefault(name, []).append(sid)
    chosen: list[int] = []
    while len(chosen) < EXAMPLES and any(by_attack.values()):
        for queue in by_attack.values():
            if queue and len(chosen) < EXAMPLES:
                chosen.append(queue.pop(0))
    index = {int(i): k for k, i in enumerate(samples.ids)}
    examples = []
    for sid in chosen:
        name, out, r = breaking[sid]
        k = index[sid]
        target = int(out.targets[r])
        examples.append(
            Example(
                sample=sid,
                attack=name,
                label=int(samples.labels[k]),
                prediction=int(out.predictions[r]),
                target=None if target < 0 else target,
                clean_confidence=float(samples.confidence[k]),
                confidence=float(out.confidence[r]),
                l0=float(out.l0[r]),
                l2=float(out.l2[r]),
                linf=float(out.linf[r]),
                queries=int(out.queries[r]),
                original=_flat(samples.x[k]),
                adversarial=_flat(out.x_adv[sid]),
            )
        )
    return examples


def _grid(
    plan: dict[str, Any], breaking: dict[int, tuple[str, Outcomes, int]], samples: Samples
) -> Grid:
    rows = torch.nonzero(samples.source >= 0).flatten().tolist()
    sources = list(dict.fromkeys(int(samples.source[k]) for k in rows))  # in class order
    index = {int(i): k for k, i in enumerate(samples.ids)}
    classes = [int(samples.labels[index[s]]) for s in sources]
    cells = []
    for k in rows:
        sid = int(samples.ids[k])
        hit = breaking.get(sid)
        cells.append(
            GridCell(
                source=int(samples.labels[k]),
                target=int(samples.target[k]),
                success=hit is not None,
                confidence=float(hit[1].confidence[hit[2]]) if hit else math.nan,
                l0=float(hit[1].l0[hit[2]]) if hit else math.nan,
                l2=float(hit[1].l2[hit[2]]) if hit else math.nan,
                adversarial=_flat(hit[1].x_adv[sid]) if hit and sid in hit[1].x_adv else [],
            )
        )
    return Grid(
        attack=" then ".join(a["name"] for a in plan["attacks"]),
        classes=classes,
        originals=[_flat(samples.x[index[s]]) for s in sources],
        cells=cells,
    )


def _flat(x: Tensor) -> list[float]:
    return [round(v, 4) for v in x.flatten().tolist()]


def _median(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(torch.tensor(finite).median()) if finite else math.nan


def _as_float(value: Any) -> float:
    return float(value) if value is not None else math.nan
