"""Feature edits break the gradient-boosted phishing detector with a handful of label queries.

The issue's requirement ("Real attackers don't compute gradients"): under the no_knowledge
threat model (no knowledge, a label, eps inf) and 20 queries per sample, random edits of the
features break a clear share of the phishing pages and legitimate pages the model gets right;
with feature constraints only the features the attacker controls change, and only to values
it may give them.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import mallory.attacks.evasion.battery  # noqa: F401  (registers "feature-edit" and "cheap")
from mallory import Oracle, System, create, label_only, no_knowledge
from mallory.threat.features import FeatureConstraints
from mallory.zoo import load_dataset, load_model

# What the owner of a phishing page controls: its content, not the domain's age or popularity.
CONTROLLED = ("popup_window", "https", "long_url", "request_from_other_domain")
LEVELS = (0.0, 0.5, 1.0)  # the values the phishing features take


@pytest.fixture(scope="module")
def phishing() -> tuple[System, Tensor, Tensor, tuple[str, ...]]:
    model = load_model("phishing-gb", progress=False)
    data = load_dataset("phishing", split="test")
    assert data.feature_names is not None
    right = predict(model, data.x) == data.y
    return model, data.x[right], data.y[right], data.feature_names


def predict(model: System, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model.forward(x).argmax(1)


def constraints(names: tuple[str, ...]) -> FeatureConstraints:
    return FeatureConstraints.by_name(names, CONTROLLED, {name: LEVELS for name in CONTROLLED})


# ---------------------------------------------------------------- the requirement
@pytest.mark.parametrize("name", ["feature-edit", "cheap"])
def test_a_handful_of_label_queries_breaks_the_phishing_detector(
    phishing: tuple[System, Tensor, Tensor, tuple[str, ...]], name: str
) -> None:
    model, x, y, _ = phishing
    oracle = Oracle(model, no_knowledge(queries=20))
    result = create(name)(oracle, x, y, rng=0)
    # measured on the 236 test samples the model gets right: 58% broken (59-63% over seeds
    # 0-4), median 7 queries, each by editing one feature
    assert result.success_rate >= 0.4, result.success_rate
    assert float(result.queries[result.success].double().median()) <= 10
    assert int(result.queries.max()) <= 20
    assert int(result.queries.sum()) == oracle.total_queries
    assert torch.equal(result.success, predict(model, result.x_adv) != y)
    # 20 tries of one-feature edits come first: every success edits a single feature
    assert bool((result.l0[result.success] == 1).all())
    assert torch.equal(result.x_adv[~result.success], x[~result.success])
    # legitimate pages become phishing and phishing pages legitimate
    assert set(y[result.success].tolist()) == {0, 1}


def test_only_controlled_features_change_and_only_to_allowed_values(
    phishing: tuple[System, Tensor, Tensor, tuple[str, ...]],
) -> None:
    model, x, y, names = phishing
    features = constraints(names)
    for threat in (
        no_knowledge(queries=20, features=features),
        label_only("l0", queries=20, features=features),
    ):
        oracle = Oracle(model, threat)
        result = create("feature-edit")(oracle, x, y, rng=0)
        # measured: 53% broken, median 4 queries
        assert result.success_rate >= 0.35, result.success_rate
        assert int(result.queries.max()) <= 20
        assert torch.equal(result.success, predict(model, result.x_adv) != y)
        changed = (result.x_adv != x).any(0)
        controlled = torch.tensor([n in CONTROLLED for n in names])
        assert not bool(changed[~controlled].any())
        assert bool(changed[controlled].any())
        levels = torch.tensor(LEVELS)
        on_levels = (result.x_adv[:, controlled, None] == levels).any(2)
        assert bool(on_levels.all())


def test_the_ladder_edits_one_feature_then_two_then_three(
    phishing: tuple[System, Tensor, Tensor, tuple[str, ...]],
) -> None:
    model, x, y, names = phishing
    oracle = Oracle(model, no_knowledge(queries=6, features=constraints(names)))
    result = create("feature-edit", tries=2, max_features=3)(oracle, x, y, rng=0)
    # measured: 63% broken; rungs 1-2 edit one feature, 3-4 two, 5-6 three
    assert result.success_rate >= 0.4
    rows = result.success
    assert torch.equal(result.l0[rows].long(), (result.queries[rows] - 1) // 2 + 1)
    assert bool((result.queries[~rows] == 6).all())


def test_a_finite_l0_budget_caps_the_number_of_edits(
    phishing: tuple[System, Tensor, Tensor, tuple[str, ...]],
) -> None:
    model, x, y, _ = phishing
    oracle = Oracle(model, label_only("l0", 1, queries=50))
    result = create("feature-edit", tries=5)(oracle, x, y, rng=0)
    # one feature at a time, 5 tries: the ladder stops there
    assert bool((result.queries <= 5).all()) and result.success.any()
    assert float(result.l0.max()) <= 1


def test_without_listed_values_edits_stay_in_the_bounds(
    phishing: tuple[System, Tensor, Tensor, tuple[str, ...]],
) -> None:
    model, x, y, _ = phishing
    result = create("feature-edit")(Oracle(model, no_knowledge(queries=20)), x, y, rng=3)
    assert bool((result.x_adv >= 0).all()) and bool((result.x_adv <= 1).all())
    # same seed, same edits; another seed, other edits
    again = create("feature-edit")(Oracle(model, no_knowledge(queries=20)), x, y, rng=3)
    other = create("feature-edit")(Oracle(model, no_knowledge(queries=20)), x, y, rng=4)
    assert torch.equal(again.x_adv, result.x_adv)
    assert not torch.equal(other.x_adv, result.x_adv)


def test_a_feature_with_a_single_allowed_value(
    phishing: tuple[System, Tensor, Tensor, tuple[str, ...]],
) -> None:
    model, x, y, names = phishing
    features = FeatureConstraints.by_name(names, ["https", "long_url"], {"https": [1.0]})
    oracle = Oracle(model, no_knowledge(queries=10, features=features))
    result = create("feature-edit")(oracle, x, y, rng=0)
    col = names.index("https")
    moved = result.x_adv[:, col] != x[:, col]
    assert bool((result.x_adv[moved, col] == 1.0).all())
    changed = (result.x_adv != x).any(0)
    assert set(changed.nonzero().squeeze(1).tolist()) <= {
        names.index("https"),
        names.index("long_url"),
    }
