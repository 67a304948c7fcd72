"""The Boundary attack: labels only, the perturbation shrinks from the starting point towards
the optimum, budgets kept."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import mallory.attacks.evasion.boundary  # noqa: F401  (registers "boundary")
from mallory import InputError, Oracle, TorchModel, create, label_only
from mallory.zoo import load_dataset, load_model

N_MNIST = 20


def linear_model(seed: int = 0, n: int = 16) -> tuple[TorchModel, Tensor, Tensor]:
    """A float64 linear classifier of 3 classes on 2x6x6 inputs, centred on the middle of the
    box [0, 1], and ``n`` inputs near that middle with the classes it gives them."""
    gen = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(72, 3)).double()
    with torch.no_grad():
        net[1].weight.copy_(torch.randn(3, 72, generator=gen, dtype=torch.float64))
        net[1].bias.copy_(-0.5 * net[1].weight.sum(1))
    model = TorchModel(net, input_shape=(2, 6, 6))
    x = 0.35 + 0.3 * torch.rand(n, 2, 6, 6, generator=gen, dtype=torch.float64)
    return model, x, model.forward(x).argmax(1)


def minimal_l2(model: TorchModel, x: Tensor, y: Tensor) -> Tensor:
    """The exact smallest L2 perturbation that changes the linear model's class (the optimum
    lies inside the box for these inputs; checked)."""
    w, flat = model.module[1].weight.detach(), x.flatten(1)
    logits = model.forward(x)
    best = torch.full((len(x),), math.inf, dtype=torch.float64)
    for j in range(w.shape[0]):
        normal = w[y] - w[j]
        margin = logits.gather(1, y[:, None]).squeeze(1) - logits[:, j]
        size = normal.norm(dim=1).clamp_min(1e-30)
        dist = torch.where(y == j, math.inf, margin / size)
        point = flat - (margin / size**2)[:, None] * normal
        assert bool(((point >= 0) & (point <= 1)).all(1)[dist < best].all())
        best = torch.minimum(best, dist)
    return best


def wrong(model: TorchModel, x_adv: Tensor, y: Tensor) -> Tensor:
    return model.forward(x_adv).argmax(1) != y


@pytest.fixture(scope="module")
def mnist() -> tuple[TorchModel, Tensor, Tensor]:
    model = load_model("mnist-cnn", progress=False)
    data = load_dataset("mnist", split="test")
    assert isinstance(model, TorchModel)
    return model, data.x[:N_MNIST], data.y[:N_MNIST]


# ---------------------------------------------------------------- MNIST
@pytest.mark.slow
@pytest.mark.parametrize("goal", ["untargeted", "targeted"])
def test_mnist_distance_shrinks_from_the_start(mnist: tuple[TorchModel, Tensor, Tensor], goal: str):
    model, x, y = mnist
    # 25 queries: the start and its bisection, hardly a step of the walk
    runs = {}
    for budget in (25, 1500):
        oracle = Oracle(model, label_only("l2", queries=budget, goal=goal))
        runs[budget] = create("boundary")(oracle, x, y, rng=0)
        assert int(runs[budget].queries.max()) <= budget
        assert int(runs[budget].queries.sum()) == oracle.total_queries
    start, walk = runs[25], runs[1500]
    # measured: every sample has a start untargeted, 19 of 20 targeted (one target class is
    # missing from the batch and uniform noise never lands in it)
    assert walk.success_rate >= 0.9
    assert torch.equal(walk.success, start.success)
    hit = walk.success
    if walk.targets is None:
        assert bool(wrong(model, walk.x_adv[hit], y[hit]).all())
    else:
        assert torch.equal(model.forward(walk.x_adv[hit]).argmax(1), walk.targets[hit])
    # the same start (same seed), then a walk that only ever accepts closer points
    assert bool((walk.l2[hit] <= start.l2[hit] + 1e-6).all())
    assert bool((walk.l2[hit] < start.l2[hit]).double().mean() >= 0.9)
    # measured: median L2 from 4.38 to 3.89 (untargeted), 5.14 to 4.57 (targeted); the
    # Boundary attack needs many more queries than HopSkipJump to get close
    assert float(walk.l2[hit].median()) < 0.95 * float(start.l2[hit].median())


# ---------------------------------------------------------------- known outcome, linear model
def test_linear_model_walks_to_the_optimum():
    model, x, y = linear_model()
    optimum = minimal_l2(model, x, y)
    result = create("boundary")(Oracle(model, label_only("l2", queries=3000)), x, y, rng=0)
    assert result.success_rate == 1.0
    assert bool(wrong(model, result.x_adv, y).all())
    ratio = result.l2 / optimum
    # measured: median ratio 1.03, none below the optimum
    assert bool((ratio >= 1 - 1e-6).all())
    assert float(ratio.median()) < 1.1


def test_targeted_reaches_the_targets():
    model, x, y = linear_model(n=24)
    targets = (y + 2) % 3
    threat = label_only("l2", queries=400, goal="targeted", targets="given")
    result = create("boundary")(Oracle(model, threat), x, y, targets=targets, rng=0)
    assert result.success_rate == 1.0
    assert torch.equal(model.forward(result.x_adv).argmax(1), targets)


def test_finite_eps_stops_a_sample_inside_the_ball():
    model, x, y = linear_model()
    free = create("boundary")(Oracle(model, label_only("l2", queries=600)), x, y, rng=0)
    eps = float(free.l2.median()) * 1.5
    bounded = create("boundary")(Oracle(model, label_only("l2", eps, queries=600)), x, y, rng=0)
    assert float(bounded.l2.max()) <= eps + 1e-9
    assert bool((wrong(model, bounded.x_adv, y) == bounded.success).all())
    assert bounded.success_rate >= float((free.l2 <= eps).double().mean())
    assert int(bounded.queries.sum()) < int(free.queries.sum())


# ---------------------------------------------------------------- budgets and access
def test_budget_of_fifty_queries():
    model, x, y = linear_model()
    oracle = Oracle(model, label_only("l2", queries=50))
    result = create("boundary")(oracle, x, y, rng=0)
    assert int(result.queries.max()) <= 50
    assert int(result.queries.sum()) == oracle.total_queries
    assert bool((wrong(model, result.x_adv, y) == result.success).all())
    assert bool((result.x_adv >= 0).all()) and bool((result.x_adv <= 1).all())
    assert result.success_rate == 1.0  # the start found by then is already adversarial


def test_shared_total_budget_runs_out_mid_attack():
    model, x, y = linear_model()
    oracle = Oracle(model, label_only("l2", queries=None, queries_total=400))
    result = create("boundary")(oracle, x, y, rng=0)
    assert oracle.total_queries <= 400
    assert bool((wrong(model, result.x_adv, y) == result.success).all())
    assert result.success_rate > 0


def test_step_sizes_adapt():
    model, x, y = linear_model()
    # far too large first steps: without adaptation almost no proposal would be accepted
    attack = create("boundary", spherical_step=0.5, source_step=0.5, window=5)
    result = attack(Oracle(model, label_only("l2", queries=1500)), x, y, rng=0)
    ratio = result.l2 / minimal_l2(model, x, y)
    # measured: median ratio 1.07 (4.2 with the same first steps and no adaptation)
    assert float(ratio.median()) < 1.3


def test_same_seed_same_result_and_batch_independence_without_batch_starts():
    model, x, y = linear_model(n=20)
    attack = create("boundary", max_queries=200)
    first = attack(Oracle(model, label_only("l2", queries=200)), x, y, rng=5)
    again = attack(Oracle(model, label_only("l2", queries=200)), x, y, rng=5)
    assert torch.equal(first.x_adv, again.x_adv) and torch.equal(first.queries, again.queries)
    alone = create("boundary", max_queries=200, batch_starts=False)
    chunked = create("boundary", max_queries=200, batch_starts=False, batch_size=3)
    whole = alone(Oracle(model, label_only("l2", queries=200)), x, y, rng=5)
    split = chunked(Oracle(model, label_only("l2", queries=200)), x, y, rng=5)
    assert torch.equal(whole.success, split.success)
    torch.testing.assert_close(whole.x_adv, split.x_adv, rtol=0, atol=1e-12)


def test_l2_only_and_parameters_checked():
    model, x, y = linear_model()
    oracle = Oracle(model, label_only("linf", 0.1))
    with pytest.raises(InputError, match="boundary works in l2"):
        create("boundary")(oracle, x, y)
    assert oracle.total_queries == 0
    with pytest.raises(InputError, match="source_step"):
        create("boundary", source_step=1.5)
    with pytest.raises(InputError, match="step_adaptation"):
        create("boundary", step_adaptation=1.0)
