"""PGD and BIM: they break the MNIST CNN inside the ball, stop early for less, restart safely."""

from __future__ import annotations

import pytest
import torch

from mallory import InputError, Oracle, TorchModel, create, white_box
from mallory.attacks.evasion.pgd import BIM, PGD
from mallory.attacks.evasion.result import AttackResult

MNIST_SAMPLES = 200


def assert_inside(result: AttackResult, x: torch.Tensor, norm: str, eps: float) -> None:
    """Every adversarial input lies in the eps-ball around its clean input and in [0, 1]."""
    delta = (result.x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(p=2, dim=1)
    assert float(size.max()) <= eps + (1e-6 if norm == "linf" else 1e-5)
    assert float(result.x_adv.min()) >= 0.0
    assert float(result.x_adv.max()) <= 1.0


def assert_really_wrong(model: TorchModel, result: AttackResult) -> None:
    """The successes are real: the model itself misclassifies (or hits the target)."""
    predicted = model.forward(result.x_adv).argmax(1)
    goal = predicted != result.labels if result.targets is None else predicted == result.targets
    assert bool((goal == result.success).all())


# ---------------------------------------------------------------- a tiny hermetic model
def tiny_problem(n: int = 48) -> tuple[TorchModel, torch.Tensor, torch.Tensor]:
    """A fixed random linear classifier on 8x8 inputs in [0, 1], labelled by itself."""
    gen = torch.Generator().manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        layer[1].weight.copy_(torch.randn(10, 64, generator=gen))
        layer[1].bias.zero_()
    model = TorchModel(layer, input_shape=(1, 8, 8))
    x = torch.rand(n, 1, 8, 8, generator=gen)
    return model, x, model.forward(x).argmax(1)


def test_parameters_are_validated() -> None:
    assert PGD().steps == 40 and PGD().random_start and not BIM().random_start
    with pytest.raises(InputError, match="'steps' parameter of PGD must be an int >= 1"):
        PGD(steps=0)
    with pytest.raises(InputError, match="'step_size' parameter of PGD"):
        PGD(step_size=0.0)
    with pytest.raises(InputError, match="random_start=False"):
        PGD(restarts=2, random_start=False)
    assert create("pgd", loss="margin").loss.value == "margin"


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_default_step_and_batch_independence(norm: str) -> None:
    model, x, y = tiny_problem()
    eps = 0.05 if norm == "linf" else 0.3
    attack = PGD(steps=10, restarts=2, stop_early=True)
    whole = attack(Oracle(model, white_box(norm, eps)), x, y, rng=3)
    split = PGD(steps=10, restarts=2, stop_early=True, batch_size=20)(
        Oracle(model, white_box(norm, eps)), x, y, rng=3
    )
    assert 0 < int(whole.success.sum()) < len(x)  # a problem with survivors: restarts matter
    torch.testing.assert_close(whole.x_adv, split.x_adv, rtol=0, atol=1e-6)
    assert bool((whole.gradients == split.gradients).all())
    assert_inside(whole, x, norm, eps)
    assert_really_wrong(model, whole)


def test_bim_is_deterministic_and_starts_at_the_clean_input() -> None:
    model, x, y = tiny_problem()
    threat = white_box("linf", 0.05)
    one = create("bim", steps=5)(Oracle(model, threat), x, y, rng=0)
    two = create("bim", steps=5)(Oracle(model, threat), x, y, rng=99)
    assert torch.equal(one.x_adv, two.x_adv)  # no randomness without a random start
    # one step from the clean input moves each feature by at most the step size
    step = create("bim", steps=1, step_size=0.01)(Oracle(model, threat), x, y)
    assert float((step.x_adv - x).abs().amax()) <= 0.01 + 1e-6


def test_spent_budget_stops_the_attack_without_crashing() -> None:
    model, x, y = tiny_problem()
    threat = white_box("linf", 0.02, queries_per_sample=3)
    result = PGD(steps=40)(Oracle(model, threat), x, y)
    assert int(result.queries.max()) <= 3
    assert int(result.gradients.max()) <= 3
    assert_inside(result, x, "linf", 0.02)


# ---------------------------------------------------------------- the MNIST CNN
@pytest.fixture(scope="module")
def mnist() -> tuple[TorchModel, torch.Tensor, torch.Tensor]:
    from mallory.zoo import load_dataset, load_model

    model = load_model("mnist-cnn")
    assert isinstance(model, TorchModel)
    data = load_dataset("mnist", split="test")
    return model, data.x[:MNIST_SAMPLES], data.y[:MNIST_SAMPLES]


@pytest.fixture(scope="module")
def linf_fixed(mnist: tuple[TorchModel, torch.Tensor, torch.Tensor]) -> AttackResult:
    model, x, y = mnist
    return create("pgd")(Oracle(model, white_box("linf", 0.3)), x, y, rng=0)


@pytest.mark.slow
def test_linf_eps_03_breaks_the_mnist_cnn(
    mnist: tuple[TorchModel, torch.Tensor, torch.Tensor], linf_fixed: AttackResult
) -> None:
    model, x, _ = mnist
    assert linf_fixed.robust_accuracy < 0.05
    assert bool((linf_fixed.gradients == 40).all())  # a fixed budget: 40 steps per sample
    assert_inside(linf_fixed, x, "linf", 0.3)
    assert_really_wrong(model, linf_fixed)


@pytest.mark.slow
def test_stop_early_is_as_strong_for_fewer_gradients(
    mnist: tuple[TorchModel, torch.Tensor, torch.Tensor], linf_fixed: AttackResult
) -> None:
    model, x, y = mnist
    early = create("pgd", stop_early=True)(Oracle(model, white_box("linf", 0.3)), x, y, rng=0)
    assert early.robust_accuracy <= linf_fixed.robust_accuracy
    assert bool((early.gradients <= linf_fixed.gradients).all())
    assert float(early.gradients.double().mean()) < 0.5 * 40
    assert bool((early.queries == early.gradients).all())  # no extra query with one restart
    assert_inside(early, x, "linf", 0.3)
    assert_really_wrong(model, early)


@pytest.mark.slow
def test_l2_eps_2_breaks_the_mnist_cnn(
    mnist: tuple[TorchModel, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = mnist
    clean = float((model.forward(x).argmax(1) == y).double().mean())
    result = create("pgd", stop_early=True)(Oracle(model, white_box("l2", 2.0)), x, y, rng=0)
    assert clean > 0.95
    assert result.robust_accuracy < 0.5 * clean
    assert_inside(result, x, "l2", 2.0)
    assert_really_wrong(model, result)


@pytest.mark.slow
def test_targeted_pgd_reaches_random_targets(
    mnist: tuple[TorchModel, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = mnist
    threat = white_box("linf", 0.3, goal="targeted")
    result = create("pgd", stop_early=True)(Oracle(model, threat), x, y, rng=0)
    assert result.targets is not None and bool((result.targets != y).all())
    assert result.success_rate > 0.8
    assert bool((result.predictions[result.success] == result.targets[result.success]).all())
    assert_inside(result, x, "linf", 0.3)
    assert_really_wrong(model, result)


@pytest.mark.slow
def test_restarts_never_lose_a_success(
    mnist: tuple[TorchModel, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = mnist
    x, y = x[:100], y[:100]
    threat = white_box("linf", 0.15)
    once = PGD(steps=5, stop_early=True)(Oracle(model, threat), x, y, rng=1)
    again = PGD(steps=5, stop_early=True, restarts=4)(Oracle(model, threat), x, y, rng=1)
    assert 0 < int(once.success.sum()) < len(x)
    assert bool((again.success | ~once.success).all())  # every success of one run is kept
    assert int(again.success.sum()) > int(once.success.sum())  # and fresh starts add some
    # honest accounting: at most 4 x 5 gradients, plus one label query per later restart
    assert int(again.gradients.max()) <= 20
    extra = again.queries - again.gradients
    assert int(extra.min()) >= 0 and int(extra.max()) <= 3
    # samples broken in the first run were never attacked again; those that stopped before
    # the last step were seen broken for free, without the label query
    first = once.success
    assert bool((again.gradients[first] == once.gradients[first]).all())
    assert int(extra[first & (once.gradients < 5)].sum()) == 0
    assert_inside(again, x, "linf", 0.15)
    assert_really_wrong(model, again)
