"""DeepFool: exact on linear models, strong and cheap on the MNIST CNN, honest accounting."""

from __future__ import annotations

import math

import pytest
import torch

import mallory
import mallory.attacks.evasion.deepfool  # registers "deepfool"
from mallory import InputError, Oracle, TorchModel, create, white_box

CLASSES, FEATURES, N = 5, 20, 64


def linear_problem(classes: int = CLASSES, seed: int = 0) -> tuple[TorchModel, torch.Tensor]:
    """A float64 linear classifier with bounds far away, and points to attack."""
    gen = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(FEATURES, classes).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(classes, FEATURES, generator=gen, dtype=torch.float64))
        layer.bias.copy_(torch.randn(classes, generator=gen, dtype=torch.float64))
    model = TorchModel(layer, input_shape=(FEATURES,), bounds=(-100, 100))
    x = torch.randn(N, FEATURES, generator=gen, dtype=torch.float64)
    return model, x


def nearest_boundary(
    model: TorchModel, x: torch.Tensor, q: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Predicted labels, the analytic minimal distance min_k |f_k| / ||w_k||_q, and that
    distance with the step's 1e-4 margin, ``(|f_l| + 1e-4) / ||w_l||_q``.

    For an untargeted attack on a linear model this is the exact minimum: every point of the
    half-space ``z_k > z_y`` is misclassified (whichever class then wins), so the nearest
    misclassified point is the projection onto the nearest pairwise hyperplane.
    """
    layer = model.module
    assert isinstance(layer, torch.nn.Linear)
    weight, bias = layer.weight.detach(), layer.bias.detach()
    z = x @ weight.T + bias
    y = z.argmax(1)
    gaps = z.gather(1, y[:, None]) - z
    lengths = (weight[None] - weight[y][:, None]).norm(p=q, dim=2)
    distance = (gaps / lengths).scatter(1, y[:, None], math.inf)
    nearest = distance.argmin(1, keepdim=True)
    with_margin = (gaps.gather(1, nearest) + 1e-4) / lengths.gather(1, nearest)
    return y, distance.min(1).values, with_margin.squeeze(1)


# ---------------------------------------------------------------- known outcomes
@pytest.mark.parametrize("box_aware", [False, True])
@pytest.mark.parametrize(("norm", "q"), [("l2", 2.0), ("linf", 1.0)])
def test_exact_minimum_on_a_linear_model(norm: str, q: float, box_aware: bool) -> None:
    model, x = linear_problem()
    y, analytic, with_margin = nearest_boundary(model, x, q)
    attack = create("deepfool", overshoot=0.0, box_aware=box_aware)
    result = attack(Oracle(model, white_box(norm)), x, y)
    assert bool(result.success.all())
    assert bool((result.predictions != y).all())  # a real misclassification, not a tie
    found = result.distance(norm)
    torch.testing.assert_close(found, with_margin, rtol=1e-6, atol=0.0)
    assert bool((found >= analytic).all())


@pytest.mark.parametrize(("norm", "q"), [("l2", 2.0), ("linf", 1.0)])
def test_overshoot_scales_the_step(norm: str, q: float) -> None:
    model, x = linear_problem()
    y, analytic, with_margin = nearest_boundary(model, x, q)
    result = create("deepfool", overshoot=0.02)(Oracle(model, white_box(norm)), x, y)
    assert bool(result.success.all())
    found = result.distance(norm)
    torch.testing.assert_close(found, 1.02 * with_margin, rtol=1e-6, atol=0.0)
    # 2 % above the minimum, plus the 1e-4 margin (relatively large only very near a boundary)
    assert bool((found >= 1.02 * analytic).all())
    assert float((found / analytic).median()) < 1.021


def test_binary_linear_model_linf() -> None:
    model, x = linear_problem(classes=2, seed=3)
    y, analytic, with_margin = nearest_boundary(model, x, 1.0)
    result = create("deepfool", overshoot=0.0)(Oracle(model, white_box("linf")), x, y)
    assert bool(result.success.all())
    torch.testing.assert_close(result.linf, with_margin, rtol=1e-6, atol=0.0)
    assert bool((result.linf >= analytic).all())


def test_finite_eps_clips_and_candidates_beyond_the_classes_are_clipped() -> None:
    model, x = linear_problem()
    y, analytic, _ = nearest_boundary(model, x, 2.0)
    eps = float(analytic.median())
    result = create("deepfool", candidates=100)(Oracle(model, white_box("l2", eps)), x, y)
    assert bool((result.l2 <= eps + 1e-9).all())
    # inside the ball exactly the samples whose boundary is near enough succeed
    near = analytic * 1.02 + 1e-3 < eps
    assert bool(result.success[near].all())
    assert bool((~result.success[analytic > eps]).all())


# ---------------------------------------------------------------- accounting
def test_gradients_per_sample_on_a_linear_model() -> None:
    model, x = linear_problem()
    y, _, _ = nearest_boundary(model, x, 2.0)
    # one step breaks every sample: (classes - 1) gradients for the step, one that sees it
    result = create("deepfool")(Oracle(model, white_box("l2")), x, y)
    assert result.gradients.tolist() == [CLASSES] * N
    assert result.queries.tolist() == [CLASSES] * N
    # fewer candidates: two gradients per step, plus the one that sees the change
    result = create("deepfool", candidates=3)(Oracle(model, white_box("l2")), x, y)
    assert result.gradients.tolist() == [3] * N
    # with one step allowed, no query is spent to observe the outcome
    result = create("deepfool", steps=1)(Oracle(model, white_box("l2")), x, y)
    assert bool(result.success.all())
    assert result.gradients.tolist() == [CLASSES - 1] * N


def test_misclassified_samples_cost_one_gradient_and_stay_put() -> None:
    model, x = linear_problem()
    y, _, _ = nearest_boundary(model, x, 2.0)
    wrong = (y + 1) % CLASSES
    wrong[::2] = y[::2]
    result = create("deepfool")(Oracle(model, white_box("l2")), x, wrong)
    assert bool(result.success.all())
    stays = y != wrong
    assert bool((result.l2[stays] == 0).all())
    assert bool((result.gradients[stays] == 1).all())
    assert bool((result.gradients[~stays] == CLASSES).all())


def test_batching_does_not_change_the_result() -> None:
    model, x = linear_problem()
    y, _, _ = nearest_boundary(model, x, 2.0)
    whole = create("deepfool")(Oracle(model, white_box("l2")), x, y)
    parts = create("deepfool", batch_size=7)(Oracle(model, white_box("l2")), x, y)
    torch.testing.assert_close(whole.x_adv, parts.x_adv, rtol=1e-12, atol=1e-12)
    assert torch.equal(whole.gradients, parts.gradients)


def test_spent_budget_stops_without_crashing() -> None:
    model, x = linear_problem()
    y, _, _ = nearest_boundary(model, x, 2.0)
    threat = white_box("l2", queries_per_sample=2)
    result = create("deepfool")(Oracle(model, threat), x, y)
    assert bool((result.queries <= 2).all())
    assert bool(torch.isfinite(result.x_adv).all())


# ---------------------------------------------------------------- refusals
def test_parameters_are_validated() -> None:
    with pytest.raises(InputError, match="overshoot"):
        create("deepfool", overshoot=-0.1)
    with pytest.raises(InputError, match="candidates"):
        create("deepfool", candidates=1)
    with pytest.raises(InputError, match="steps"):
        create("deepfool", steps=0)


def test_targeted_and_l0_threat_models_are_refused() -> None:
    model, x = linear_problem()
    y, _, _ = nearest_boundary(model, x, 2.0)
    attack = create("deepfool")
    with pytest.raises(InputError, match="untargeted"):
        attack(Oracle(model, white_box("l2", goal="targeted")), x, y)
    with pytest.raises(InputError, match="l0"):
        attack(Oracle(model, white_box("l0", 10)), x, y)
    with pytest.raises(mallory.AccessError):
        attack(Oracle(model, mallory.score_based("l2")), x, y)


# ---------------------------------------------------------------- MNIST CNN
@pytest.fixture(scope="module")
def mnist() -> tuple[mallory.System, torch.Tensor, torch.Tensor]:
    from mallory.zoo import load_dataset, load_model

    model = load_model("mnist-cnn")
    data = load_dataset("mnist", split="test")
    # 50 digits: each claim below held with its margin on four blocks of 50 test digits
    x, y = data.x[:60], data.y[:60]
    with torch.no_grad():
        right = model.forward(x).argmax(1) == y
    return model, x[right][:50], y[right][:50]


@pytest.mark.slow
def test_mnist_l2_is_small_and_cheaper_than_fgsm(
    mnist: tuple[mallory.System, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = mnist
    candidates = 10
    result = create("deepfool", candidates=candidates)(Oracle(model, white_box("l2")), x, y)
    median = float(result.l2[result.success].median())
    print(f"DeepFool L2: success {result.success_rate:.2f}, median L2 {median:.3f}")
    assert result.success_rate >= 0.95
    assert median < 2.5
    assert bool((result.x_adv >= 0).all()) and bool((result.x_adv <= 1).all())

    # accounting: (candidates - 1) gradients per step, plus one that sees the change
    broken = result.success & (result.gradients < (candidates - 1) * 50)
    steps = (result.gradients[broken] - 1) / (candidates - 1)
    assert bool((steps == steps.round()).all()) and bool((steps >= 1).all())
    assert float(steps.max()) > 1  # a CNN is not linear: some samples need several steps

    # the smallest FGSM-L2 radius (on a grid) that fools each sample is larger; measured:
    # DeepFool median 1.57 against 2.0 (1.52-1.73 against 2.0-2.25 on four blocks of 50)
    radii = [0.25 * i for i in range(1, 25)]
    smallest = torch.full((len(x),), math.inf, dtype=torch.float64)
    for eps in radii:  # upwards, each radius tried only on the samples not fooled yet
        left = torch.isinf(smallest).nonzero().squeeze(1)
        if not len(left):
            break
        fgsm = create("fgsm")(Oracle(model, white_box("l2", eps)), x[left], y[left])
        smallest[left[fgsm.success]] = eps
    fooled = torch.isfinite(smallest)
    fgsm_median = float(smallest.median())
    print(
        f"FGSM L2: fooled within {radii[-1]}: {float(fooled.double().mean()):.2f}, "
        f"median smallest radius {fgsm_median:.3f}"
    )
    assert median < fgsm_median

    # box-aware steps: far fewer gradients, slightly larger perturbations
    boxed = create("deepfool", box_aware=True)(Oracle(model, white_box("l2")), x, y)
    boxed_median = float(boxed.l2[boxed.success].median())
    print(
        f"box-aware DeepFool L2: success {boxed.success_rate:.2f}, median L2 {boxed_median:.3f}, "
        f"gradients {int(boxed.gradients.sum())} against {int(result.gradients.sum())}"
    )
    assert boxed.success_rate >= 0.95
    assert boxed_median < 1.1 * median
    assert int(boxed.gradients.sum()) < int(result.gradients.sum()) / 2


@pytest.mark.slow
def test_mnist_linf(mnist: tuple[mallory.System, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = mnist
    result = create("deepfool")(Oracle(model, white_box("linf")), x, y)
    median = float(result.linf[result.success].median())
    print(f"DeepFool Linf: success {result.success_rate:.2f}, median Linf {median:.3f}")
    assert result.success_rate >= 0.95
    assert median < 0.3
