"""Fixture Reports built by hand from real zoo data, with numbers that agree with each other.

The MNIST-like run attacks 20 real test digits under four threat models, cheapest first:
cheap tricks (no price), a label-only query attacker (paid queries, efforts spanning decades),
a white-box gradient attacker, and a targeted one with a 10 x 10 grid (some cells failed).
It carries NaN and infinite values and an attack that failed, as real runs do. A second,
stronger system gives the comparison; the phishing run is tabular.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any

import numpy as np
import pytest
import torch

from mallory.evaluation.economics import Economics, risk
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
    ThreatSummary,
)
from mallory.zoo import load_dataset

REVIEW_BAND = [0.5, 0.8]
NORMS = ("l0", "l2", "linf")


def distances(change: np.ndarray) -> dict[str, float]:
    return {
        "l0": float(np.count_nonzero(change)),
        "l2": float(np.linalg.norm(change)),
        "linf": float(np.abs(change).max(initial=0.0)),
    }


def survival(spend: list[float], attacked: int, label: str) -> Curve:
    """Share of the attacked samples still standing after spending x per sample."""
    steps = sorted(set(spend))
    x = [0.0, *[s for s in steps if s > 0]]
    y = [sum(s > at for s in spend) / attacked + (attacked - len(spend)) / attacked for at in x]
    return Curve(x, y, label, "share of attacked samples standing")


def perturb(x: np.ndarray, norm: str, eps: float, rng: np.random.Generator) -> np.ndarray:
    """A visible perturbation of one input, inside the data bounds [0, 1]."""
    if norm == "linf":
        size = 0.15 if math.isinf(eps) else eps
        change = size * np.sign(rng.standard_normal(x.shape))
    elif norm == "l2":
        change = rng.standard_normal(x.shape)
        change *= min(eps, 2.5) / np.linalg.norm(change)
    else:  # l0: a few features set to another allowed value
        change = np.zeros_like(x)
        picked = rng.choice(x.size, size=int(min(eps, 3)), replace=False)
        change[picked] = np.where(x[picked] > 0.5, -0.5, 0.5)
    return np.clip(x + change, 0.0, 1.0)


def threat(
    name: str,
    inputs: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    goal: str = "untargeted",
    norm: str = "linf",
    eps: float = math.inf,
    price: float = 0.0,
    attacks: list[tuple[str, str, int, int, int]],
    grid: Grid | None = None,
    classes: int = 10,
) -> ThreatSummary:
    """A consistent ThreatSummary. ``attacks`` holds (name, family, broken, most queries per
    sample, gradients per sample); sample 0 is a clean mistake, broken at zero cost."""
    samples, attacked = len(inputs), len(inputs) - 1
    standing = list(range(1, samples))
    summaries, spent, found = [], [], []  # found: (sample, attack, adversarial, spend)
    before = 0
    for attack, family, broken, most, grads in attacks:
        fallen, standing = standing[:broken], standing[broken:]
        for i in fallen:
            queries = before + int(rng.integers(1, most + 1))
            adversarial = perturb(inputs[i], norm, eps, rng)
            found.append((i, attack, adversarial, queries))
            spent.append(queries)
        ledger = Ledger(
            queries=most * (len(standing) + broken),
            gradients=grads * (len(standing) + broken),
            seconds=0.004 * most * (len(standing) + broken),
            money=price * most * (len(standing) + broken),
        )
        summaries.append(
            AttackSummary(
                attack=attack,
                family=family,
                params={"eps": eps if math.isfinite(eps) else "inf", "steps": 10},
                attempted=len(standing) + broken,
                broken=broken,
                success_rate=broken / (len(standing) + broken),
                marginal_gain=broken / samples,
                standing_after=len(standing) / samples,
                ledger=ledger,
            )
        )
        before += most
    broken = 1 + len(found)
    dist = [distances(adv - inputs[i]) for i, _, adv, _ in found]
    median = {n: float(np.median([d[n] for d in dist])) if dist else math.nan for n in NORMS}
    by_norm = sorted(d[norm] for d in dist)
    accuracy = [(attacked - sum(d <= at for d in by_norm)) / samples for at in [0.0, *by_norm]]
    confidence = [float(c) for c in rng.uniform(0.35, 1.0, size=len(found))]
    counts, edges = np.histogram(confidence, bins=10, range=(0.0, 1.0))
    in_band = [REVIEW_BAND[0] <= c <= REVIEW_BAND[1] for c in confidence]
    seconds = [0.004 * q for q in spent]
    examples = [
        Example(
            sample=i,
            attack=attack,
            label=int(labels[i]),
            prediction=int((labels[i] + 1) % classes),
            target=None if goal == "untargeted" else int((labels[i] + 1) % classes),
            clean_confidence=0.99,
            confidence=confidence[k],
            l0=dist[k]["l0"],
            l2=dist[k]["l2"],
            linf=dist[k]["linf"],
            queries=queries,
            original=[float(v) for v in inputs[i]],
            adversarial=[float(v) for v in adv],
        )
        for k, (i, attack, adv, queries) in enumerate(found[:4])
    ]
    total = Ledger(
        queries=sum(a.ledger.queries for a in summaries),
        gradients=sum(a.ledger.gradients for a in summaries),
        seconds=sum(a.ledger.seconds for a in summaries),
        money=sum(a.ledger.money for a in summaries),
    )
    return ThreatSummary(
        name=name,
        threat={"name": name, "norm": norm, "eps": eps if math.isfinite(eps) else "inf"},
        goal=goal,
        norm=norm,
        eps=eps,
        samples=samples,
        attacked=attacked,
        broken=broken,
        robust_accuracy=(samples - broken) / samples if goal == "untargeted" else math.nan,
        success_rate=len(found) / attacked,
        attacks=summaries,
        median_distance=median,
        effort={
            "queries": survival([float(s) for s in spent], attacked, "queries per sample"),
            "seconds": survival(seconds, attacked, "seconds per sample"),
            "money": survival([price * s for s in spent], attacked, "money per sample"),
        },
        effort_median={
            "queries": float(np.median(spent)) if spent else math.nan,
            "seconds": float(np.median(seconds)) if spent else math.nan,
            "money": price * float(np.median(spent)) if spent else math.nan,
        },
        epsilon_curve=Curve([0.0, *by_norm], accuracy, f"{norm} distance", "accuracy"),
        confidence=confidence,
        confidence_histogram=Histogram([float(e) for e in edges], [int(c) for c in counts]),
        review_share=sum(in_band) / len(in_band) if in_band else math.nan,
        ledger=total,
        examples=examples,
        grid=grid,
    )


def make_grid(digits: np.ndarray, rng: np.random.Generator) -> Grid:
    """Digit k pushed toward every other class; cells where (3s + t) % 11 == 0 failed."""
    cells = []
    for s in range(10):
        for t in range(10):
            if s == t:
                continue
            failed = (3 * s + t) % 11 == 0
            adversarial = perturb(digits[s], "l2", 2.0, rng)
            change = distances(adversarial - digits[s])
            cells.append(
                GridCell(
                    source=s,
                    target=t,
                    success=not failed,
                    confidence=math.nan if failed else float(rng.uniform(0.4, 0.95)),
                    l0=math.nan if failed else change["l0"],
                    l2=math.nan if failed else change["l2"],
                    adversarial=[] if failed else [float(v) for v in adversarial],
                )
            )
    return Grid("cw-l2", list(range(10)), [[float(v) for v in d] for d in digits], cells)


def load_mnist_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """20 test digits (flattened) with labels, and the first digit of each class."""
    data = load_dataset("mnist", "test")
    head = data.head(20)
    x = head.x.reshape(20, -1).numpy().astype(np.float64)
    y = head.y.numpy()
    pool = data.head(300)
    firsts = [int((pool.y == k).nonzero()[0, 0]) for k in range(10)]
    digits = pool.x[firsts].reshape(10, -1).numpy().astype(np.float64)
    return x, y, digits


@pytest.fixture(scope="session")
def mnist_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return load_mnist_data()


def mnist_report(data: Any, *, system: str, weaker: int = 0, seed: int = 0) -> Report:
    """An MNIST run; ``weaker`` breaks that many more samples per attack."""
    x, y, digits = data
    rng = np.random.default_rng(seed)
    w = weaker
    tricks = threat(
        "tricks", x, y, rng, attacks=[("noise", "trick", 1 + w, 3, 0), ("blur", "trick", 1, 5, 0)]
    )
    tricks = dataclasses.replace(
        tricks,
        epsilon_curve=Curve(
            [*tricks.epsilon_curve.x, math.inf],
            [*tricks.epsilon_curve.y, math.nan],
            "linf distance",
            "accuracy",
        ),
    )
    label_only = threat(
        "label-only",
        x,
        y,
        rng,
        norm="l2",
        eps=3.0,
        price=0.001,
        attacks=[
            ("hopskipjump", "decision", 3 + w, 5000, 0),
            ("boundary", "decision", 1, 20000, 0),
        ],
    )
    failing = dataclasses.replace(
        label_only.attacks[1], interrupted=2, error="SystemFailure: the endpoint timed out"
    )
    label_only = dataclasses.replace(label_only, attacks=[label_only.attacks[0], failing])
    white_box = threat(
        "white-box",
        x,
        y,
        rng,
        norm="linf",
        eps=0.1,
        attacks=[("fgsm", "gradient", 2 + w, 1, 1), ("pgd", "gradient", 4 + w, 40, 40)],
    )
    targeted = threat(
        "targeted",
        x,
        y,
        rng,
        goal="targeted",
        norm="l2",
        attacks=[("cw-l2", "gradient", 10 + w, 1000, 1000)],
        grid=make_grid(digits, rng),
    )
    targeted = dataclasses.replace(
        targeted,
        median_distance={**targeted.median_distance, "l0": math.nan},
        epsilon_curve=Curve([1.5], [0.4], "l2 distance", "accuracy"),
        effort={**targeted.effort, "money": Curve([], [], "money per sample", "share")},
        effort_median={**targeted.effort_median, "money": math.nan},
    )
    threats = [tricks, label_only, white_box, targeted]
    return Report(
        run=f"run-{system}",
        created="2026-11-21T15:00:00+00:00",
        status="complete",
        system=system,
        dataset="mnist",
        samples=20,
        seed=seed,
        clean_accuracy=0.95,
        input_shape=[1, 28, 28],
        bounds=[0.0, 1.0],
        class_names=[str(d) for d in range(10)],
        feature_names=None,
        review_band=REVIEW_BAND,
        threats=threats,
        ledger=Ledger(
            queries=sum(t.ledger.queries for t in threats),
            gradients=sum(t.ledger.gradients for t in threats),
            seconds=sum(t.ledger.seconds for t in threats),
            money=sum(t.ledger.money for t in threats),
        ),
    )


@pytest.fixture(scope="session")
def mnist(mnist_data: Any) -> Report:
    return mnist_report(mnist_data, system="mnist-cnn-adv")


@pytest.fixture(scope="session")
def mnist_weak(mnist_data: Any) -> Report:
    """The same campaign against a weaker system: more samples fall to every attack."""
    return mnist_report(mnist_data, system="mnist-cnn", weaker=1, seed=1)


@pytest.fixture(scope="session")
def mnist_partial(mnist: Report) -> Report:
    return dataclasses.replace(mnist, status="partial", threats=mnist.threats[:2])


@pytest.fixture(scope="session")
def phishing() -> Report:
    return phishing_report()


def phishing_report() -> Report:
    """A tabular run: 30 phishing rows, feature edits then a white-box L0 attack."""
    data = load_dataset("phishing", "test").head(30)
    x = data.x.numpy().astype(np.float64)
    y = data.y.numpy()
    rng = np.random.default_rng(2)
    edits = threat(
        "feature-edits",
        x,
        y,
        rng,
        norm="l0",
        eps=2.0,
        attacks=[("feature-edits", "trick", 5, 30, 0)],
        classes=2,
    )
    white_box = threat(
        "white-box",
        x,
        y,
        rng,
        norm="l0",
        eps=3.0,
        attacks=[("jsma", "gradient", 6, 9, 9)],
        classes=2,
    )
    fell = edits.broken - 1  # sample 0 is a clean mistake
    costs = [0.05 * float(q) for q in rng.integers(1, 30, size=fell)]
    economics = Economics(damage=1.0, volume=10_000, countermeasure=2_000.0)
    names = list(data.feature_names or ())
    changed = [[f"{names[k % 9]}: 0 -> 1"] for k in range(fell)]
    edits = dataclasses.replace(
        edits,
        edits=Edits(
            samples=list(range(1, fell + 1)),
            prices=costs,
            changes=changed,
            usage=dict(collections.Counter(c[0].split(":")[0] for c in changed).most_common()),
            cheapest=min(costs),
            median=float(np.median(costs)),
        ),
        risk=risk(
            "feature-edits",
            torch.tensor(costs + [math.nan] * (edits.attacked - fell)),
            torch.tensor(costs + [1.5] * (edits.attacked - fell)),
            ["none"] * fell + [None] * (edits.attacked - fell),
            economics,
        ),
    )
    threats = [edits, white_box]
    return Report(
        run="run-phishing",
        created="2026-11-21T15:00:00+00:00",
        status="complete",
        system="phishing-gb",
        dataset="phishing",
        samples=30,
        seed=0,
        clean_accuracy=29 / 30,
        input_shape=[9],
        bounds=[0.0, 1.0],
        class_names=list(data.class_names),
        feature_names=list(data.feature_names or ()),
        review_band=REVIEW_BAND,
        threats=threats,
        ledger=Ledger(queries=sum(t.ledger.queries for t in threats)),
    )
