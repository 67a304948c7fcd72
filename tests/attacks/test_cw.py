"""Carlini-Wagner L2: near-minimal on a linear model, strong on the MNIST CNN, honest limits."""

from __future__ import annotations

import math

import pytest
import torch

import mallory.attacks.evasion.cw  # registers "cw"
import mallory.attacks.evasion.pgd  # noqa: F401  (registers "pgd", compared with below)
from mallory import InputError, Oracle, TorchModel, create, white_box
from mallory.attacks.evasion.cw import CarliniWagnerL2
from mallory.attacks.evasion.losses import margin
from mallory.attacks.evasion.result import AttackResult
from mallory.threat import Norm

CLASSES, FEATURES, N = 10, 64, 40


def linear_problem(seed: int = 0) -> tuple[TorchModel, torch.Tensor, torch.Tensor]:
    """A float64 linear classifier on inputs in [0, 1], points in the middle, own labels."""
    gen = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(FEATURES, CLASSES).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(CLASSES, FEATURES, generator=gen, dtype=torch.float64))
        layer.bias.zero_()
    model = TorchModel(layer, input_shape=(FEATURES,))
    x = (0.5 + 0.1 * torch.randn(N, FEATURES, generator=gen, dtype=torch.float64)).clamp(0.2, 0.8)
    return model, x, model.forward(x).argmax(1)


def nearest_boundary(model: TorchModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The exact minimal L2 distance to a misclassification, ignoring the box, and a check
    that the box does not bind: the projection onto the nearest pairwise hyperplane
    ``z_k = z_y`` (every point beyond it is misclassified) lies inside [0, 1]."""
    layer = model.module
    assert isinstance(layer, torch.nn.Linear)
    weight = layer.weight.detach()
    z = model.forward(x)
    gaps = z.gather(1, y[:, None]) - z
    normals = weight[y][:, None] - weight[None]  # (n, classes, features): w_y - w_k
    distance = (gaps / normals.norm(dim=2)).scatter(1, y[:, None], math.inf)
    d, k = distance.min(1)
    normal = normals[torch.arange(len(x)), k]
    foot = x - d[:, None] * normal / normal.norm(dim=1, keepdim=True)
    assert float(foot.min()) > 0 and float(foot.max()) < 1  # the box does not bind
    return d


def assert_real(model: TorchModel, result: AttackResult, x: torch.Tensor) -> None:
    """Successes are the model's own mistakes (or hits), and every input stays in [0, 1]."""
    predicted = model.forward(result.x_adv).argmax(1)
    goal = predicted != result.labels if result.targets is None else predicted == result.targets
    assert bool((goal == result.success).all())
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    assert result.x_adv.shape == x.shape


def true_margin(model: TorchModel, result: AttackResult) -> torch.Tensor:
    """The logit margin of the goal on the returned inputs (> 0 means the goal is met)."""
    return margin(model.forward(result.x_adv), result.labels, result.targets)


# ---------------------------------------------------------------- known outcomes
def test_near_the_exact_minimum_on_a_linear_model() -> None:
    model, x, y = linear_problem()
    exact = nearest_boundary(model, x, y)
    result = create("cw", steps=200, binary_steps=9)(Oracle(model, white_box("l2")), x, y)
    assert bool(result.success.all())
    assert_real(model, result, x)
    # no misclassified point is closer than the boundary; CW lands just beyond it
    assert bool((result.l2 >= exact * (1 - 1e-6)).all())
    assert float((result.l2 / exact).max()) < 1.05
    assert float((result.l2 / exact).median()) < 1.005


def test_misclassified_inputs_stay_put() -> None:
    model, x, y = linear_problem()
    wrong = (y + 1) % CLASSES  # tell the attack the labels are all wrong: nothing to do
    result = create("cw", steps=20, binary_steps=2)(Oracle(model, white_box("l2")), x, wrong)
    assert bool(result.success.all())
    assert float(result.l2.max()) == 0.0


def test_confidence_gives_the_margin_asked_for() -> None:
    """With kappa > 0 every input the attack call returns beats the goal by a logit margin of
    kappa: the base does not swap in a closer query that only just crossed the boundary."""
    model, x, y = linear_problem()
    kappa = 2.0
    attack = create("cw", steps=200, binary_steps=6, confidence=kappa)
    assert not attack.keeps_closest()
    result = attack(Oracle(model, white_box("l2")), x, y, rng=0)
    assert bool(result.success.all())  # every sample was broken with that margin
    assert_real(model, result, x)
    assert float(true_margin(model, result)[result.success].min()) >= kappa - 1e-6
    plain_attack = create("cw", steps=200, binary_steps=6)
    assert plain_attack.keeps_closest()
    plain = plain_attack(Oracle(model, white_box("l2")), x, y, rng=0)
    # without a margin the closest query wins, just past the boundary; a margin costs distance
    assert float(true_margin(model, plain).max()) < 0.1 * kappa
    assert bool((result.l2 > plain.l2).all())


def test_finite_eps_keeps_every_input_inside_and_stops_early() -> None:
    model, x, y = linear_problem()
    exact = nearest_boundary(model, x, y)
    eps = float(exact.median())
    attack = create("cw", steps=200, binary_steps=9)
    bounded = attack(Oracle(model, white_box("l2", eps)), x, y)
    unbounded = attack(Oracle(model, white_box("l2")), x, y)
    assert float(bounded.l2.max()) <= eps * (1 + 1e-6)
    assert_real(model, bounded, x)
    # exactly the samples whose boundary lies inside the ball (but for a hair) are broken
    clear = (exact - eps).abs() > 0.03 * eps
    assert bool((bounded.success[clear] == (exact[clear] < eps)).all())
    # a success inside the ball ends the search for that sample
    assert int(bounded.gradients.sum()) < int(unbounded.gradients.sum())


def test_spent_budget_stops_without_crashing() -> None:
    model, x, y = linear_problem()
    result = create("cw", steps=100, binary_steps=3)(
        Oracle(model, white_box("l2", queries_per_sample=25)), x, y
    )
    assert int(result.queries.max()) <= 25
    assert int(result.gradients.max()) <= 25
    assert_real(model, result, x)


def test_abort_early_saves_gradients_not_distance() -> None:
    model, x, y = linear_problem()
    threat = white_box("l2")
    full = create("cw", steps=100, binary_steps=4, abort_early=False)(Oracle(model, threat), x, y)
    early = create("cw", steps=100, binary_steps=4)(Oracle(model, threat), x, y)
    assert int(full.gradients.min()) == 400  # 4 binary steps of 100 iterations
    assert float(early.gradients.double().mean()) < 0.7 * 400
    assert bool(early.success.all()) and bool(full.success.all())
    assert float(early.l2.median()) <= 1.02 * float(full.l2.median())


def test_abort_early_waits_for_inputs_on_the_bounds() -> None:
    """Features on a bound start where tanh is flat, so the loss first falls very slowly; that
    plateau is not convergence. (Stopping there, as the bare rule does, broke 2 of 16 samples.)"""
    gen = torch.Generator().manual_seed(1)
    layer = torch.nn.Linear(FEATURES, CLASSES).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(CLASSES, FEATURES, generator=gen, dtype=torch.float64))
        layer.bias.copy_(torch.randn(CLASSES, generator=gen, dtype=torch.float64))
    model = TorchModel(layer, input_shape=(FEATURES,))
    x = (torch.rand(16, FEATURES, generator=gen, dtype=torch.float64) < 0.5).double()
    y = model.forward(x).argmax(1)
    attack = create("cw", steps=100, binary_steps=5, c_init=1.0, learning_rate=0.05)
    result = attack(Oracle(model, white_box("l2")), x, y)
    assert bool(result.success.all())
    assert_real(model, result, x)


def test_batching_does_not_change_the_result() -> None:
    model, x, y = linear_problem()
    threat = white_box("l2")
    whole = create("cw", steps=100, binary_steps=4)(Oracle(model, threat), x, y)
    split = create("cw", steps=100, binary_steps=4, batch_size=7)(Oracle(model, threat), x, y)
    torch.testing.assert_close(whole.l2, split.l2, rtol=1e-6, atol=1e-9)
    assert bool((whole.gradients == split.gradients).all())


def test_minimises_below_fgsm_and_pgd() -> None:
    """Wherever FGSM or PGD (L2) break a sample within eps, CW breaks it closer."""
    from mallory.zoo import load_dataset, load_model

    model = load_model("digits-mlp", progress=False)
    assert isinstance(model, TorchModel)
    data = load_dataset("digits", split="test")
    x, y = data.x[:64], data.y[:64]
    cw = create("cw", steps=100, binary_steps=6, c_init=1.0, learning_rate=0.05)(
        Oracle(model, white_box("l2")), x, y
    )
    assert bool(cw.success.all())
    assert_real(model, cw, x)
    for name in ("fgsm", "pgd"):
        other = create(name)(Oracle(model, white_box("l2", 1.0)), x, y)
        broken = other.success
        assert int(broken.sum()) >= len(x) // 2
        assert bool((cw.l2[broken] <= other.l2[broken] + 1e-6).all()), name
        assert float(cw.l2[broken].median()) < 0.7 * float(other.l2[broken].median()), name


def test_parameters_are_validated() -> None:
    default = CarliniWagnerL2()
    assert (default.confidence, default.c_init, default.binary_steps) == (0.0, 1e-2, 9)
    assert (default.steps, default.learning_rate, default.abort_early) == (1000, 1e-2, True)
    with pytest.raises(InputError, match="'c_init' parameter of CarliniWagnerL2 must be"):
        CarliniWagnerL2(c_init=0.0)
    with pytest.raises(InputError, match="'confidence' parameter"):
        CarliniWagnerL2(confidence=-1.0)
    with pytest.raises(InputError, match="'binary_steps' parameter"):
        create("cw", binary_steps=0)
    with pytest.raises(InputError, match="'abort_early' parameter"):
        create("cw", abort_early="yes")


def test_l2_only() -> None:
    model, x, y = linear_problem()
    with pytest.raises(InputError, match="works in l2"):
        create("cw")(Oracle(model, white_box("linf")), x, y)


# ---------------------------------------------------------------- the MNIST CNN
# The paper runs 9 binary steps of 10,000 Adam iterations (lr 1e-2); the tests run a short
# schedule: c starts at 1, 3 binary steps of 100 iterations at lr 0.05 (about 290 gradients per
# digit; on the first 50 digits medians 1.26 untargeted, 2.25 targeted, every digit broken).
# Longer schedules barely move the medians: 5 binary steps find them within 0.05 on 200 digits,
# and the defaults (9 x 1000 at lr 1e-2, about 6,700 gradients per digit) found 1.33 and 2.32
# on the first 40. Medians on four blocks of 50 test digits: 1.26-1.61 untargeted, 2.24-2.52
# targeted (random targets on this CNN cost more than on the paper's MNIST model).
MNIST_SAMPLES = 50
MNIST_SCHEDULE = {"steps": 100, "binary_steps": 3, "c_init": 1.0, "learning_rate": 0.05}


@pytest.fixture(scope="module")
def mnist() -> tuple[TorchModel, torch.Tensor, torch.Tensor]:
    from mallory.zoo import load_dataset, load_model

    model = load_model("mnist-cnn", progress=False)
    assert isinstance(model, TorchModel)
    data = load_dataset("mnist", split="test")
    return model, data.x[:MNIST_SAMPLES], data.y[:MNIST_SAMPLES]


@pytest.mark.slow
def test_untargeted_mnist(mnist: tuple[TorchModel, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = mnist
    result = create("cw", **MNIST_SCHEDULE)(Oracle(model, white_box("l2")), x, y)
    assert result.success_rate >= 0.99
    assert result.median_distance(Norm.L2) < 2.0
    assert_real(model, result, x)


@pytest.mark.slow
def test_targeted_mnist(mnist: tuple[TorchModel, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = mnist
    threat = white_box("l2", math.inf, goal="targeted")
    result = create("cw", **MNIST_SCHEDULE)(Oracle(model, threat), x, y, rng=0)
    assert result.targets is not None and bool((result.targets != y).all())
    assert result.success_rate >= 0.99
    # Random targets on this CNN take more than on the paper's MNIST model (mean 1.76): the
    # median is about 2.3, not below 2.0, for any attack tried. On the first 40 digits targeted
    # PGD-L2 (margin loss, 200 steps, 2 restarts) reaches the target for only 30% at eps 2.0 and
    # 47.5% at eps 2.35.
    assert result.median_distance(Norm.L2) < 2.5
    assert_real(model, result, x)
