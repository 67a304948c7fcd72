"""Randomized smoothing: PREDICT abstains on split votes, CERTIFY's radius follows Cohen et
al.'s formula, and no PGD perturbation inside a certified radius changes the prediction."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import pytest
import torch
from scipy.stats import binomtest
from torch import Tensor

import mallory
from mallory.defenses import (
    Architecture,
    GaussianNoiseTraining,
    SmoothedClassifier,
    certified_radius,
    certify,
    clopper_pearson_lower,
    predict,
)
from mallory.defenses.smoothing import binomial_p_value, sample_counts
from mallory.errors import InputError
from mallory.systems import CallableModel, Output, Stage, System
from mallory.systems.base import ABSTAINED, Verdict
from mallory.zoo import Dataset


def threshold(offset: float = 0.0) -> CallableModel:
    """Class 1 when the first feature exceeds ``offset``, else class 0 (one-hot scores)."""

    def decide(x: Tensor) -> Tensor:
        return torch.nn.functional.one_hot((x[:, 0] > offset).long(), 2).float()

    return CallableModel(decide, input_shape=(3,), num_classes=2, bounds=(-5, 5), name="step")


def constant(label: int = 3) -> CallableModel:
    return CallableModel(
        lambda x: torch.nn.functional.one_hot(torch.full((len(x),), label), 5).float(),
        input_shape=(3,),
        num_classes=5,
        bounds=(-5, 5),
    )


def test_smoothed_classifier_abstains_where_the_vote_is_split() -> None:
    smoothed = SmoothedClassifier(threshold(), sigma=0.5, n=500)
    assert not smoothed.deterministic
    assert smoothed.output is Output.PROBABILITIES
    x = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [-3.0, 0.0, 0.0]])
    answer = smoothed.answer(x)
    assert answer.abstained is not None
    assert answer.abstained.tolist() == [True, False, False]
    assert answer.values.argmax(1)[1:].tolist() == [1, 0]
    torch.testing.assert_close(answer.values.sum(1), torch.ones(3, dtype=answer.values.dtype))
    seeded = predict(threshold(), x, sigma=0.5, n=500, rng=3)
    assert seeded.abstained is not None and seeded.abstained.tolist() == [True, False, False]
    again = predict(threshold(), x, sigma=0.5, n=500, rng=3)
    assert torch.equal(seeded.values, again.values)  # the same seed, the same votes


def test_binomial_p_value_is_scipys_two_sided_test() -> None:
    pairs = [(10, 0), (7, 3), (5, 5), (60, 40), (52, 48), (1, 0), (0, 0), (900, 80)]
    top = torch.tensor([a for a, _ in pairs])
    second = torch.tensor([b for _, b in pairs])
    ours = binomial_p_value(top, second)
    expected = [binomtest(a, a + b, 0.5).pvalue if a + b else 1.0 for a, b in pairs]
    torch.testing.assert_close(ours, torch.tensor(expected, dtype=torch.float64))


def test_certified_radius_matches_the_formula_by_hand() -> None:
    # every vote for class 3: nA = n, so the Clopper-Pearson bound is alpha ** (1 / n)
    n, alpha, sigma = 100, 0.001, 0.5
    result = certify(constant(3), torch.zeros(2, 3), sigma=sigma, n0=10, n=n, alpha=alpha)
    p_lower = alpha ** (1 / n)  # 0.93325...
    radius = sigma * NormalDist().inv_cdf(p_lower)  # 0.7504...
    assert result.predictions.tolist() == [3, 3]
    torch.testing.assert_close(result.radius, torch.full((2,), radius, dtype=torch.float64))
    predictions, radii = result  # unpacks as a pair
    assert radii is result.radius and predictions is result.predictions
    # the pieces, on a case with failures: 90 of 100
    bound = clopper_pearson_lower(torch.tensor([90, 0, 100]), 100, 0.05)
    assert float(bound[1]) == 0.0 and math.isclose(float(bound[2]), 0.05 ** (1 / 100))
    assert 0.83 < float(bound[0]) < 0.84  # the exact one-sided 95% bound is 0.8363
    p = torch.tensor([0.5, 0.3, 0.975], dtype=torch.float64)
    torch.testing.assert_close(
        certified_radius(p, 2.0),
        torch.tensor([0.0, 0.0, 2.0 * NormalDist().inv_cdf(0.975)], dtype=torch.float64),
    )


def test_certify_abstains_on_split_votes_and_is_sound_on_a_linear_boundary() -> None:
    x = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [-0.6, 1.0, -1.0]])
    result = certify(threshold(), x, sigma=0.5, n=20_000, alpha=0.001, rng=0)
    assert result.predictions.tolist() == [ABSTAINED, 1, 0]
    assert float(result.radius[0]) == 0.0
    # the true L2 distance to the boundary x0 = 0 is 0.3 and 0.6: the radius is below it, and
    # close to it with 20,000 draws (for a linear classifier it is exact as n grows)
    distance = torch.tensor([0.3, 0.6], dtype=torch.float64)
    assert bool((result.radius[1:] <= distance).all())
    assert bool((result.radius[1:] > distance - 0.06).all())
    same = certify(threshold(), x, sigma=0.5, n=20_000, alpha=0.001, rng=0)
    assert torch.equal(same.radius, result.radius)


def test_votes_count_every_copy_in_any_batch_except_refused_ones() -> None:
    x = torch.tensor([[2.0, 0.0, 0.0], [-2.0, 0.0, 0.0]])
    for batch in (7, 200, 1000):
        counts = sample_counts(threshold(), x, sigma=0.1, n=100, batch=batch)
        assert counts.tolist() == [[0, 100], [100, 0]]

    def refuse_positive(z: Tensor) -> Verdict:
        scores = torch.nn.functional.one_hot((z[:, 1] > 0).long(), 2).float()
        return Verdict(scores, refused=z[:, 0] > 0)

    gate = System(
        [Stage(name="gate", fn=refuse_positive)], input_shape=(3,), bounds=(-5, 5), num_classes=2
    )
    counts = sample_counts(gate, x, sigma=1.0, n=400, batch=64)
    assert int(counts[0].sum()) < 20 and int(counts[1].sum()) > 380  # refused rows do not vote
    assert abs(int(counts[1, 0]) - int(counts[1, 1])) < 80


def test_smoothed_classifier_is_a_system_with_a_surrogate_gradient() -> None:
    torch.manual_seed(0)
    base = mallory.TorchModel(torch.nn.Linear(3, 2), input_shape=(3,), bounds=(-5, 5))
    smoothed = SmoothedClassifier(base, sigma=0.25, n=200)
    x = torch.zeros(4, 3)
    oracle = mallory.Oracle(smoothed, mallory.white_box("l2", 1.0))
    answer = oracle.gradient(x, torch.arange(4), lambda logits: logits[:, 0])
    assert float(answer.grad.abs().sum()) > 0
    assert oracle.labels(x, torch.arange(4)).shape == (4,)
    # a base without gradients gives a smoothed classifier without them
    assert SmoothedClassifier(threshold(), sigma=0.5).stages[0].surrogate is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: SmoothedClassifier(threshold(), sigma=0),
            "The 'sigma' parameter of SmoothedClassifier must be a finite number > 0; got 0",
        ),
        (
            lambda: SmoothedClassifier(threshold(), sigma=0.5, alpha=1.0),
            "The 'alpha' parameter of SmoothedClassifier must be a finite number > 0 and < 1",
        ),
        (
            lambda: SmoothedClassifier(torch.nn.Linear(2, 2), sigma=0.5),  # type: ignore[arg-type]
            "The 'base' parameter of SmoothedClassifier must be a mallory System",
        ),
        (
            lambda: certify(threshold(), torch.zeros(1, 3)),
            "The 'sigma' parameter of certify must be a finite number > 0 for a base",
        ),
        (
            lambda: certify(SmoothedClassifier(threshold(), sigma=0.5), torch.zeros(1, 3), sigma=1),
            "The 'sigma' parameter of certify must match the smoothed classifier's sigma=0.5",
        ),
        (
            lambda: certify(threshold(), torch.zeros(1, 3), sigma=0.5, n0=0),
            "The 'n0' parameter of certify must be an int >= 1; got 0",
        ),
        (
            lambda: certify(threshold(), torch.zeros(1, 4), sigma=0.5),
            "certify needs float inputs of shape (n, 3)",
        ),
        (
            lambda: predict(threshold(), torch.zeros(1, 3), sigma=0.5, n=10.5),  # type: ignore[arg-type]
            "The 'n' parameter of predict must be an int >= 1; got 10.5",
        ),
    ],
)
def test_bad_parameters_say_what_was_expected(call: Any, message: str) -> None:
    with pytest.raises(InputError) as error:
        call()
    assert str(error.value).startswith(message)


@pytest.mark.slow
def test_no_pgd_perturbation_inside_the_certified_radius_changes_the_prediction(
    digits_train: Dataset, digits_test: Dataset
) -> None:
    sigma = 0.25
    recipe = GaussianNoiseTraining(
        sigma=sigma, architecture=Architecture.MLP, width=64, epochs=30, lr=3e-3
    )
    base = recipe.train(digits_train, progress=False)
    x = digits_test.x[:10]
    certificate = certify(base, x, sigma=sigma, n0=100, n=10_000, rng=0)
    certified = certificate.predictions != ABSTAINED
    assert int(certified.sum()) >= 8  # measured: all 10, radii 0.23 to 0.72
    changed = {}
    for scale in (1.0, 2.0):
        changed[scale] = 0
        for i in certified.nonzero().squeeze(1).tolist():
            eps = scale * float(certificate.radius[i])
            attack = mallory.create("pgd", steps=40)
            oracle = mallory.Oracle(base, mallory.white_box("l2", eps))
            label = certificate.predictions[i : i + 1]
            result = attack(oracle, x[i : i + 1], label, rng=0)
            assert float(result.l2[0]) <= eps + 1e-4
            vote = predict(base, result.x_adv, sigma=sigma, n=10_000, rng=1)
            assert vote.abstained is not None
            if not bool(vote.abstained[0]) and int(vote.values.argmax(1)[0]) != int(label[0]):
                changed[scale] += 1
    assert changed[1.0] == 0
    # the attack has teeth: at twice the radius it changes the prediction (measured: 10 of 10)
    assert changed[2.0] >= 5
