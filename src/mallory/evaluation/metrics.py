"""Metrics: from a run in the store to its Report.

Everything here reads the store only, so ``mallory report RUN`` renders a run without the
system or the data. Definitions (per threat model):

* a sample is *broken* when some attack of the sequence found an input inside the perturbation
  set that the system gets wrong (untargeted) or classifies as the target (targeted); clean
  mistakes count as broken at zero cost (and are not attacked);
* under an unbounded threat model (eps = inf) every attack ran on every sample; the breaking
  input of a sample is then the closest one found (distances, confidence and gallery use it),
  and its effort is still what was spent up to its first mistake;
* robust accuracy = samples correct and never broken / all samples (untargeted only);
* marginal gain of an attack = samples it broke that no earlier attack broke / all samples;
* effort to the first mistake = what the attacker spent on a sample as the Oracle counted it
  (queries, seconds the system spent answering it, money),
  summed over the attacks up to and including the one that broke it; a survival curve gives
  the share of attacked samples still standing against that spend per sample;
* confidence on mistakes = the system's top probability on the breaking input (NaN when the
  threat model shows labels only and the evaluator could not judge); the review share is the
  share of those inside the run's review band.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mallory.report.model import (
    AttackSummary,
    Curve,
    Example,
    Grid,
    GridCell,
    Histogram,
    Ledger,
    Report,
    ThreatSummary,
)
from mallory.store import Outcomes, Samples, Store

EXAMPLES = 8  # gallery rows per threat model
MEASURES = ("queries", "seconds", "money")


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
    last = max(((u.threat, u.attack) for u in units), default=(-1, -1))
    complete = info["status"] == "complete"
    # an attack is reached when it committed a unit, or when the run went past it (an attack
    # that found no sample standing commits nothing, and still ran)
    done = {
        (t, a)
        for t, plan in enumerate(config["plans"])
        for a in range(len(plan["attacks"]))
        if complete or (t, a) <= last
    }
    threats = []
    for t, plan in enumerate(config["plans"]):
        threats.append(_threat(store, run, t, plan, config, samples, done))
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
    )


def _threat(
    store: Store,
    run: str,
    t: int,
    plan: dict[str, Any],
    config: dict[str, Any],
    samples: Samples,
    done: set[tuple[int, int]],
) -> ThreatSummary:
    threat = plan["threat"]
    shape = tuple(config["input_shape"])
    rows = samples.source >= 0 if plan["grid"] else samples.source < 0
    ids = samples.ids[rows]
    n = len(ids)
    correct = (samples.predictions == samples.labels)[rows]
    attacked = int(correct.sum())
    untargeted = threat["goal"] == "untargeted"
    norm = threat["norm"]
    unbounded = math.isinf(_as_float(threat["eps"]))
    spent = {m: torch.zeros(n, dtype=torch.float64) for m in MEASURES}
    position = {int(i): k for k, i in enumerate(ids)}
    breaking: dict[int, tuple[str, Outcomes, int]] = {}  # id -> (attack, outcomes, row)
    effort = {m: torch.full((n,), math.nan, dtype=torch.float64) for m in MEASURES}
    summaries = []
    standing = attacked
    for a, entry in enumerate(plan["attacks"]):
        out = store.outcomes(run, t, a, shape)
        if (t, a) not in done:
            continue  # not reached yet (a partial run)
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
    eps = _as_float(threat["eps"])
    on_correct = correct.clone()
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
        effort={m: _survival(effort[m][on_correct], spent[m][on_correct], m) for m in MEASURES},
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
            queries=int(spent["queries"].sum()),
            gradients=sum(s.ledger.gradients for s in summaries),
            seconds=float(spent["seconds"].sum()),
            money=float(spent["money"].sum()),
        ),
        examples=_examples(breaking, samples),
        grid=_grid(plan, breaking, samples) if plan["grid"] else None,
    )


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
