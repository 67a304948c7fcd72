"""JSMA: targeted L0 examples on the MNIST CNN and the digits MLP, the exact saliency search,
the feature caps, and honest accounting (2 gradients per iteration for JSMA-Z, 1 for JSMA-F)."""

from __future__ import annotations

import math

import pytest
import torch

import mallory.attacks.evasion.jsma as jsma  # registers "jsma"
from mallory import AttackResult, InputError, Oracle, System, ThreatModel, create, white_box
from mallory.zoo import load_dataset, load_model

MNIST_PIXELS = 28 * 28
MNIST_CAP = 78  # floor(10% of 784): the issue asks for fewer than 10% of the pixels


# ---------------------------------------------------------------- helpers
def digits(n: int = 100) -> tuple[System, torch.Tensor, torch.Tensor]:
    model = load_model("digits-mlp", progress=False)
    data = load_dataset("digits", split="test")
    return model, torch.as_tensor(data.x[:n]), torch.as_tensor(data.y[:n])


def targeted(eps: float = math.inf, **changes: object) -> ThreatModel:
    return white_box("l0", eps, goal="targeted", **changes)


def changed(result: AttackResult, x: torch.Tensor) -> torch.Tensor:
    return (result.x_adv - x).flatten(1).abs() > 0


def check_really_targeted(result: AttackResult, model: System) -> None:
    """Successes are classified as their target by the model itself, with clean features
    untouched and every feature inside the bounds."""
    ok = result.success
    assert result.targets is not None
    with torch.no_grad():
        predicted = model.forward(result.x_adv[ok]).argmax(1)
    assert torch.equal(predicted, result.targets[ok])
    assert bool((result.x_adv >= 0).all() and (result.x_adv <= 1).all())


def brute_force_pairs(
    alpha: torch.Tensor, beta: torch.Tensor, domain: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's pair saliency map written out: best score per row and whether it is valid."""
    a = alpha[:, :, None] + alpha[:, None, :]
    b = beta[:, :, None] + beta[:, None, :]
    valid = (a > 0) & (b < 0) & domain[:, :, None] & domain[:, None, :]
    valid &= ~torch.eye(alpha.shape[1], dtype=torch.bool)
    score = torch.where(valid, a * b.abs(), torch.zeros(()))
    best = score.flatten(1).amax(1)
    return best, best > 0


# ---------------------------------------------------------------- the MNIST CNN (the issue)
@pytest.fixture(scope="module")
def mnist() -> tuple[System, torch.Tensor, torch.Tensor]:
    model = load_model("mnist-cnn", progress=False)
    data = load_dataset("mnist", split="test")
    return model, torch.as_tensor(data.x[:100]), torch.as_tensor(data.y[:100])


@pytest.mark.slow
def test_jsma_f_meets_the_issue_on_the_mnist_cnn(
    mnist: tuple[System, torch.Tensor, torch.Tensor],
) -> None:
    # Measured on 100 test digits with random targets: 84%, 92% and 96% success for seeds 0, 1
    # and 2 (which targets are drawn matters), median L0 24-26 pixels (3.1-3.3%); 89-96% and 26
    # on 300 digits. The paper reports 97% at about 4% on its LeNet.
    model, x, y = mnist
    result = create("jsma")(Oracle(model, targeted(MNIST_CAP)), x, y, rng=0)
    ok = result.success
    assert ok.float().mean() >= 0.82
    assert bool((result.l0[ok] < 0.1 * MNIST_PIXELS).all())
    assert float(result.l0[ok].median()) <= 40
    check_really_targeted(result, model)
    # one gradient query per iteration (2 pixels each), one more that sees the target win
    below_cap = ok & (result.l0 < MNIST_CAP)
    assert torch.equal(result.gradients[below_cap], result.l0[below_cap].long() // 2 + 1)
    assert torch.equal(result.queries, result.gradients)


@pytest.mark.slow
def test_jsma_z_the_papers_attack_on_the_mnist_cnn(
    mnist: tuple[System, torch.Tensor, torch.Tensor],
) -> None:
    # Measured: 67-79% success over seeds 0-2, median L0 32-40 pixels (4-5%), on 100 digits.
    # Every failure used all 78 pixels. This CNN resists the logit saliency more than the
    # paper's LeNet; the probability saliency (above) does better.
    model, x, y = mnist
    result = create("jsma", saliency="logits")(Oracle(model, targeted(MNIST_CAP)), x, y, rng=0)
    ok = result.success
    assert ok.float().mean() >= 0.62
    assert bool((result.l0 <= MNIST_CAP).all())
    assert float(result.l0[ok].median()) <= 50
    check_really_targeted(result, model)
    # two gradient queries per iteration (target logit, other logits) and one final check;
    # a sample that reaches the cap stops without the check
    below_cap = ok & (result.l0 < MNIST_CAP)
    assert torch.equal(result.gradients[below_cap], result.l0[below_cap].long() + 1)
    at_cap = result.l0 == MNIST_CAP
    assert torch.equal(result.gradients[at_cap], result.l0[at_cap].long())
    assert torch.equal(result.queries, result.gradients)


# ---------------------------------------------------------------- small model
@pytest.mark.parametrize("saliency", ["logits", "probabilities"])
def test_single_features_change_one_pixel_per_iteration(saliency: str) -> None:
    model, x, y = digits()
    result = create("jsma", pairs=False, gamma=0.25, saliency=saliency)(
        Oracle(model, targeted()), x, y
    )
    ok = result.success
    assert ok.float().mean() >= 0.85  # measured 0.92 (logits)
    assert bool((result.l0 <= 16).all())  # floor(0.25 * 64)
    check_really_targeted(result, model)
    per_iteration = 2 if saliency == "logits" else 1
    below_cap = ok & (result.l0 < 16)
    assert torch.equal(result.gradients[below_cap], per_iteration * result.l0[below_cap].long() + 1)
    # theta = +1: every changed pixel went to the upper bound
    assert bool((result.x_adv[changed(result, x).view_as(x)] == 1).all())


@pytest.mark.parametrize(("saliency", "rate"), [("logits", 0.2), ("probabilities", 0.9)])
def test_negative_theta_pushes_pixels_down(saliency: str, rate: float) -> None:
    # measured: 30% (logits) and 97% (probabilities); most digit pixels are already 0, so
    # the logit saliency finds few pixels to remove
    model, x, y = digits()
    result = create("jsma", theta=-1.0, gamma=0.25, saliency=saliency)(
        Oracle(model, targeted()), x, y
    )
    assert result.success.float().mean() >= rate
    check_really_targeted(result, model)
    moved = changed(result, x).view_as(x)
    assert bool((result.x_adv[moved] == 0).all())
    assert bool((result.x_adv <= x).all())


def test_fractional_theta_moves_by_theta_times_the_range() -> None:
    model, x, y = digits(40)
    result = create("jsma", theta=0.5, gamma=0.25)(Oracle(model, targeted()), x, y)
    assert bool(result.success.any())
    moved = changed(result, x).view_as(x)
    expected = (x + 0.5).clamp(max=1.0)
    assert torch.allclose(result.x_adv[moved], expected[moved])


def test_a_finite_eps_caps_the_changed_features() -> None:
    model, x, y = digits()
    # gamma = 1 allows all 64 pixels; eps = 3 allows 3: one pair, then one single pixel
    result = create("jsma", gamma=1.0, saliency="logits")(Oracle(model, targeted(3)), x, y)
    assert bool((result.l0 <= 3).all())
    assert bool(result.success.any())
    check_really_targeted(result, model)
    failed = ~result.success
    assert bool((result.l0[failed] == 3).all())
    assert bool((result.gradients[failed] == 4).all())  # two iterations, no final check
    unbounded = create("jsma", gamma=1.0, saliency="logits")(Oracle(model, targeted()), x, y)
    assert unbounded.success.float().mean() > result.success.float().mean()


def test_gamma_caps_the_changed_features() -> None:
    model, x, y = digits()
    result = create("jsma", gamma=0.1)(Oracle(model, targeted()), x, y)
    assert bool((result.l0 <= 6).all())  # floor(0.1 * 64)
    assert int(result.l0.max()) == 6


def test_the_outcome_does_not_depend_on_the_batch() -> None:
    model, x, y = digits(30)
    whole = create("jsma")(Oracle(model, targeted()), x, y)
    chunked = create("jsma", batch_size=7)(Oracle(model, targeted()), x, y)
    assert torch.equal(whole.x_adv, chunked.x_adv)
    assert torch.equal(whole.gradients, chunked.gradients)


def test_a_spent_budget_stops_the_attack() -> None:
    model, x, y = digits(30)
    threat = targeted(queries_per_sample=5)
    result = create("jsma", gamma=0.5, saliency="logits")(Oracle(model, threat), x, y)
    assert bool((result.queries <= 5).all())
    assert bool((result.gradients <= 5).all())
    # 5 queries: two full iterations (2 pairs); the third gets its first query only
    assert bool((result.l0 <= 4).all())
    # JSMA-F: one query per pair, so five pairs at most
    result = create("jsma", gamma=0.5)(Oracle(model, threat), x, y)
    assert bool((result.queries <= 5).all())
    assert bool((result.l0 <= 10).all())


# ---------------------------------------------------------------- the saliency search
@pytest.mark.parametrize("chunk_bytes", [jsma.PAIR_SEARCH_BYTES, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pair_search_finds_the_best_valid_pair(
    chunk_bytes: int, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jsma, "PAIR_SEARCH_BYTES", chunk_bytes)
    gen = torch.Generator().manual_seed(0)
    b, d = 23, 40
    alpha = torch.randn(b, d, generator=gen, dtype=dtype)
    beta = torch.randn(b, d, generator=gen, dtype=dtype)
    domain = torch.rand(b, d, generator=gen) < 0.6
    domain[0] = False  # no feature left
    domain[1] = False
    domain[1, 5] = True  # one feature left: no pair
    alpha[2] = -alpha[2].abs()  # no pair raises the target
    p, q, found = jsma._best_pairs(alpha, beta, domain)
    best, valid = brute_force_pairs(alpha, beta, domain)
    assert torch.equal(found, valid)
    assert not bool(found[:3].any())
    rows = found.nonzero().squeeze(1)
    assert bool((p[rows] != q[rows]).all())
    assert bool(domain[rows, p[rows]].all() and domain[rows, q[rows]].all())
    score = (alpha[rows, p[rows]] + alpha[rows, q[rows]]) * (
        beta[rows, p[rows]] + beta[rows, q[rows]]
    ).abs()
    torch.testing.assert_close(score, best[rows])


def test_top_features_are_the_pair_search_with_beta_equal_to_minus_alpha() -> None:
    gen = torch.Generator().manual_seed(1)
    alpha = torch.randn(50, 30, generator=gen)
    domain = torch.rand(50, 30, generator=gen) < 0.5
    pair = torch.rand(50, generator=gen) < 0.5
    p, q, found = jsma._top_features(alpha, domain, pair)
    best, valid = brute_force_pairs(alpha, -alpha, domain)
    assert torch.equal(found[pair], valid[pair])
    rows = (found & pair).nonzero().squeeze(1)
    torch.testing.assert_close((alpha[rows, p[rows]] + alpha[rows, q[rows]]) ** 2, best[rows])
    singles = ~pair
    assert bool((q[singles] == -1).all())
    masked = alpha.masked_fill(~domain, -math.inf)
    assert torch.equal(found[singles], masked[singles].amax(1) > 0)


# ---------------------------------------------------------------- what it refuses
@pytest.mark.parametrize(
    "params",
    [{"theta": 0.0}, {"theta": 1.5}, {"gamma": 0.0}, {"gamma": 1.2}, {"saliency": "softmax"}],
)
def test_bad_parameters_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(InputError, match="parameter of JSMA"):
        create("jsma", **params)


def test_it_refuses_other_goals_and_norms() -> None:
    model, x, y = digits(4)
    with pytest.raises(InputError, match="targeted"):
        create("jsma")(Oracle(model, white_box("l0", 5)), x, y)
    with pytest.raises(InputError, match="l0"):
        create("jsma")(Oracle(model, white_box("linf", 0.3, goal="targeted")), x, y)
