"""The demo: the zoo's MNIST CNN and phishing detector across the threat-model spectrum.

Two campaigns, cheapest attacker first. MNIST: zero knowledge (noise, blur, shifts, ...),
label-only (HopSkipJump), score-based (Square), transfer from the attacker's own surrogate,
white-box (FGSM, PGD), minimal L2 perturbations (DeepFool), and the targeted
source × target grids of JSMA (L0) and Carlini-Wagner (L2). Phishing (gradient-boosted trees,
no gradients): feature edits of what a page's owner controls, label-only and score-based query
attacks, and transfer from a surrogate trained on the attacker's own pages. Budgets are sized
so that both run in a few minutes on two CPU cores.
"""

from __future__ import annotations

import math

from mallory.attacks.base import create
from mallory.attacks.surrogate import train_surrogate
from mallory.evaluation.campaign import Campaign, ThreatPlan
from mallory.threat import label_only, no_knowledge, score_based, transfer, white_box
from mallory.threat.features import FeatureConstraints
from mallory.zoo import load_dataset, load_model

IMAGE_TRICKS = ("gaussian-noise", "uniform-noise", "contrast", "blur", "shift", "rotate", "occlude")
PRICE = 0.001  # dollars per query of the victim's API, for the cost curves

# What the owner of a phishing page controls: its content, not the domain's age or popularity.
PHISHING_CONTROLLED = ("popup_window", "https", "long_url", "request_from_other_domain")
PHISHING_LEVELS = (0.0, 0.5, 1.0)


def mnist_campaign(
    samples: int = 100,
    *,
    seed: int = 0,
    progress: bool = True,
    split: str = "test",
    query_budget: int = 300,
) -> Campaign:
    """The zoo CNN on the first ``samples`` MNIST digits of ``split``, Linf 0.3 unless said
    otherwise; the label-only and score-based attacks get ``query_budget`` queries per digit.
    (The test split holds 1,000 digits; "all" holds 5,000, the CNN's training digits among
    them.)"""
    system = load_model("mnist-cnn", progress=progress)
    data = load_dataset("mnist", split).head(samples)
    own = load_dataset("mnist", "train").head(1000)
    surrogate = train_surrogate(
        own.x, own.y, architecture="mlp", epochs=8, seed=seed, num_classes=10, bounds=data.bounds
    )
    tricks = tuple(create(name) for name in IMAGE_TRICKS)
    eps = 0.3
    plans = (
        ThreatPlan(threat=no_knowledge("linf", eps, price_per_query=PRICE), attacks=tricks),
        ThreatPlan(
            threat=label_only("linf", eps, queries_per_sample=500, price_per_query=PRICE),
            attacks=(*tricks, create("hopskipjump", max_queries=query_budget)),
        ),
        ThreatPlan(
            threat=score_based("linf", eps, queries_per_sample=500, price_per_query=PRICE),
            attacks=(*tricks, create("square", n_queries=query_budget)),
        ),
        # one submission per sample: the transfer attacker has no queries to spare for tricks
        ThreatPlan(
            threat=transfer("linf", eps, price_per_query=PRICE),
            attacks=(create("transfer", surrogate=surrogate, attack=create("pgd")),),
        ),
        ThreatPlan(
            threat=white_box("linf", eps, price_per_query=PRICE),
            attacks=(create("fgsm"), create("pgd", steps=40, stop_early=True)),
        ),
        ThreatPlan(
            threat=white_box("l2", math.inf, price_per_query=PRICE).with_(name="white-box L2"),
            attacks=(create("deepfool"),),
        ),
        ThreatPlan(
            # at most 10% of the pixels, as in the JSMA paper's evaluation
            threat=white_box("l0", 78, goal="targeted").with_(name="targeted L0 (JSMA)"),
            attacks=(create("jsma"),),
            grid=True,
        ),
        ThreatPlan(
            threat=white_box("l2", math.inf, goal="targeted").with_(name="targeted L2 (CW)"),
            attacks=(create("cw", binary_steps=3, steps=100, c_init=1.0, learning_rate=0.05),),
            grid=True,
        ),
    )
    return Campaign(
        name="demo-mnist-cnn",
        system=system,
        data=data,
        plans=plans,
        seed=seed,
        system_name="mnist-cnn (zoo)",
        source={"demo": "mnist", "samples": samples},
    )


def phishing_campaign(samples: int = 250, *, seed: int = 0, progress: bool = True) -> Campaign:
    """The zoo's gradient-boosted phishing detector on its test pages."""
    system = load_model("phishing-gb", progress=progress)
    data = load_dataset("phishing", "test").head(samples)
    own = load_dataset("phishing", "train")
    names = data.feature_names or ()
    controlled = FeatureConstraints.by_name(
        names, PHISHING_CONTROLLED, {name: PHISHING_LEVELS for name in PHISHING_CONTROLLED}
    )
    surrogate = train_surrogate(
        own.x, own.y, architecture="mlp", epochs=30, seed=seed, num_classes=2, bounds=data.bounds
    )
    edits = (create("feature-edit"),)
    plans = (
        ThreatPlan(
            threat=no_knowledge(features=controlled, price_per_query=PRICE).with_(
                name="no knowledge (page owner's edits)"
            ),
            attacks=edits,
        ),
        ThreatPlan(
            threat=label_only(
                "l2", 1.0, queries_per_sample=500, features=controlled, price_per_query=PRICE
            ),
            attacks=(*edits, create("hopskipjump", max_queries=400)),
        ),
        ThreatPlan(
            threat=score_based(
                "l2", 1.0, queries_per_sample=500, features=controlled, price_per_query=PRICE
            ),
            attacks=(*edits, create("square", n_queries=400)),
        ),
        ThreatPlan(
            threat=transfer("l2", 1.0, features=controlled, price_per_query=PRICE),
            attacks=(create("transfer", surrogate=surrogate, attack=create("pgd")),),
        ),
    )
    return Campaign(
        name="demo-phishing-gb",
        system=system,
        data=data,
        plans=plans,
        seed=seed,
        system_name="phishing-gb (zoo)",
        source={"demo": "phishing", "samples": samples},
    )
