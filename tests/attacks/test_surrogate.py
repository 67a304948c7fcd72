"""Surrogates: seeded training, Jacobian augmentation, and extraction that counts its queries."""

from __future__ import annotations

import pytest
import torch

import mallory
from mallory import InputError, Oracle
from mallory.attacks.surrogate import (
    Architecture,
    Surrogate,
    extract_surrogate,
    jacobian_augment,
    surrogate_oracle,
    surrogate_system,
    train_surrogate,
)
from mallory.systems import Bounds
from mallory.threat import Goal, Targets
from mallory.zoo import load_dataset, load_model


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The attacker's own labelled 8x8 digits (train split) and held-out ones (test split)."""
    torch.set_num_threads(1)
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    return train.x[:600], train.y[:600], test.x, test.y


@pytest.fixture(scope="module")
def surrogate(digits: tuple[torch.Tensor, ...]) -> Surrogate:
    x, y, _, _ = digits
    return train_surrogate(x, y, architecture="mlp", epochs=20, seed=0)


def test_own_data_surrogate_learns_the_task(
    digits: tuple[torch.Tensor, ...], surrogate: Surrogate
) -> None:
    _, _, x_test, y_test = digits
    assert surrogate.source == "own-data" and surrogate.extraction_queries == 0
    assert surrogate.architecture is Architecture.MLP and surrogate.num_classes == 10
    assert surrogate.training_size == 600 and surrogate.fit_accuracy > 0.9
    assert not surrogate.module.training
    accuracy = float((surrogate.predict(x_test) == y_test).double().mean())
    assert accuracy > 0.85, accuracy


def test_training_is_deterministic_for_a_seed(digits: tuple[torch.Tensor, ...]) -> None:
    x, y = digits[0][:200], digits[1][:200]
    one = train_surrogate(x, y, architecture="cnn", epochs=2, seed=3)
    two = train_surrogate(x, y, architecture="cnn", epochs=2, seed=3)
    other = train_surrogate(x, y, architecture="cnn", epochs=2, seed=4)
    for a, b in zip(one.module.parameters(), two.module.parameters(), strict=True):
        assert torch.equal(a, b)
    first = next(iter(one.module.parameters()))
    assert not torch.equal(first, next(iter(other.module.parameters())))


def test_jacobian_augmentation_doubles_stays_in_bounds_and_is_deterministic(
    digits: tuple[torch.Tensor, ...], surrogate: Surrogate
) -> None:
    x, y = digits[0][:100], digits[1][:100]
    bounds = Bounds.of((0.0, 1.0))
    grown = jacobian_augment(surrogate.module, x, y, lam=0.1, bounds=bounds)
    assert grown.shape == (200, *x.shape[1:])
    assert torch.equal(grown[:100], x)
    assert float(grown.min()) >= 0.0 and float(grown.max()) <= 1.0
    step = (grown[100:] - x).abs()
    assert float(step.max()) <= 0.1 + 1e-6
    assert float((step > 0.099).double().mean()) > 0.3  # a real sign step, not a no-op
    again = jacobian_augment(surrogate.module, x, y, lam=0.1, bounds=bounds)
    assert torch.equal(grown, again)
    back = jacobian_augment(surrogate.module, x, y, lam=-0.1, bounds=bounds)
    assert not torch.equal(back, grown)  # the sign of lam matters
    assert not grown.requires_grad


def test_extraction_spends_seeds_times_two_to_the_rounds(
    digits: tuple[torch.Tensor, ...],
) -> None:
    target = load_model("digits-mlp", progress=False)
    oracle = Oracle(target, mallory.transfer("linf", 0.2))  # label, 1 query per sample id
    seeds = digits[0][:40]
    stolen = extract_surrogate(oracle, seeds, rounds=3, architecture="mlp", epochs=10, seed=0)
    assert stolen.source == "extraction"
    assert stolen.extraction_queries == 40 * 2**3 == oracle.total_queries == stolen.training_size
    # the points belong to no sample: every row of the log is tied to id -1, so no sample's
    # budget is touched, and the per-sample budget of 1 did not stop the extraction
    rows = torch.cat([call.ids for call in oracle.log.calls()])
    assert len(rows) == 320 and bool((rows == -1).all())
    assert int(oracle.queries_of(torch.arange(1000)).sum()) == 0
    again = extract_surrogate(
        Oracle(target, mallory.transfer("linf", 0.2)),
        seeds,
        rounds=3,
        architecture="mlp",
        epochs=10,
        seed=0,
    )
    for a, b in zip(stolen.module.parameters(), again.module.parameters(), strict=True):
        assert torch.equal(a, b)


def test_extraction_respects_the_total_budget(digits: tuple[torch.Tensor, ...]) -> None:
    target = load_model("digits-mlp", progress=False)
    oracle = Oracle(target, mallory.label_only("linf", 0.2, queries_total=100))
    stolen = extract_surrogate(oracle, digits[0][:30], rounds=4, architecture="mlp", epochs=2)
    # 30 + 60 fit; the third round gets the 10 queries left and augmentation stops there
    assert stolen.extraction_queries == 100 == oracle.total_queries
    assert stolen.training_size == 100
    with pytest.raises(InputError, match="budget is spent"):
        extract_surrogate(oracle, digits[0][:30], rounds=1, architecture="mlp", epochs=1)


def test_bad_arguments_are_refused(digits: tuple[torch.Tensor, ...]) -> None:
    x, y = digits[0][:20], digits[1][:20]
    with pytest.raises(InputError, match="'architecture' parameter of train_surrogate"):
        train_surrogate(x, y, architecture="transformer")
    with pytest.raises(InputError, match="'epochs' parameter of train_surrogate"):
        train_surrogate(x, y, epochs=0)
    with pytest.raises(InputError, match="outside the bounds"):
        train_surrogate(x * 3, y)
    with pytest.raises(InputError, match="architecture='mlp'"):
        train_surrogate(x.flatten(1), y, architecture="cnn")
    target = load_model("digits-mlp", progress=False)
    oracle = Oracle(target, mallory.label_only("linf", 0.2))
    with pytest.raises(InputError, match="'lam' parameter of extract_surrogate"):
        extract_surrogate(oracle, x, lam=0)
    with pytest.raises(InputError, match="Oracle"):
        extract_surrogate(target, x)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="shape"):
        extract_surrogate(oracle, x.flatten(1))
    assert oracle.total_queries == 0


def test_surrogate_as_a_white_box_system(surrogate: Surrogate) -> None:
    system = surrogate_system(surrogate)
    assert system.input_shape == (1, 8, 8) and system.num_classes == 10
    targeted = mallory.transfer("l2", 1.0, goal="targeted")
    oracle = surrogate_oracle(surrogate, targeted)
    assert oracle.access is mallory.Access.GRADIENTS
    assert oracle.threat.goal is Goal.TARGETED and oracle.threat.targets is Targets.GIVEN
    assert oracle.threat.eps == 1.0 and oracle.threat.queries_per_sample is None
    assert surrogate.to_dict()["source"] == "own-data"
