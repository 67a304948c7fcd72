"""Transfer: a surrogate attacked white-box, its results submitted once to the target.

Fast tests on scikit-learn's 8x8 digits; the MNIST tests (marked slow) measure the transfer
success rate against the zoo CNN, with a surrogate trained on the attacker's own data and with
one extracted from the CNN's labels, and compare it with chance: uniform random sign noise of
the same eps on the same samples.
"""

from __future__ import annotations

import json

import pytest
import torch

import mallory
import mallory.attacks.evasion.pgd
import mallory.attacks.evasion.transfer  # registers "transfer"
from mallory import InputError, Oracle, System, create
from mallory.attacks.evasion.result import AttackResult
from mallory.attacks.evasion.transfer import Transfer
from mallory.attacks.surrogate import Surrogate, extract_surrogate, train_surrogate
from mallory.zoo import load_dataset, load_model

Problem = tuple[System, Surrogate, torch.Tensor, torch.Tensor]


def assert_inside_and_real(
    system: System, result: AttackResult, x: torch.Tensor, eps: float
) -> None:
    assert float((result.x_adv - x).abs().amax()) <= eps + 1e-6
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    predicted = system.forward(result.x_adv).argmax(1)
    wanted = predicted != result.labels if result.targets is None else predicted == result.targets
    assert torch.equal(wanted, result.success)


def chance(system: System, x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    """Success rate of uniform random +-eps signs (no surrogate, no gradient)."""
    gen = torch.Generator().manual_seed(0)
    signs = torch.where(torch.rand(x.shape, generator=gen) < 0.5, -1.0, 1.0)
    noisy = (x + eps * signs).clamp(0.0, 1.0)
    return float((system.forward(noisy).argmax(1) != y).double().mean())


# ---------------------------------------------------------------- digits (fast)
@pytest.fixture(scope="module")
def digits() -> Problem:
    torch.set_num_threads(1)
    target = load_model("digits-mlp", progress=False)
    own = load_dataset("digits", "train")
    surrogate = train_surrogate(own.x[:600], own.y[:600], architecture="mlp", epochs=20, seed=1)
    test = load_dataset("digits", "test")
    return target, surrogate, test.x[:60], test.y[:60]


def test_transfers_with_one_query_per_sample(digits: Problem) -> None:
    target, surrogate, x, y = digits
    oracle = Oracle(target, mallory.transfer("linf", 0.2))
    result = create("transfer", surrogate=surrogate)(oracle, x, y)
    assert bool((result.queries == 1).all()) and int(result.gradients.sum()) == 0
    assert_inside_and_real(target, result, x, 0.2)
    assert result.success_rate > chance(target, x, y, 0.2) + 0.2
    described = result.params
    assert described["surrogate"]["source"] == "own-data"
    assert described["surrogate"]["extraction_queries"] == 0
    assert described["attack"]["name"] == "pgd"
    json.dumps(result.summary())


def test_runs_on_labels_alone_under_every_preset(digits: Problem) -> None:
    target, surrogate, x, y = digits
    attack = Transfer(surrogate=surrogate)
    for threat in (
        mallory.label_only("linf", 0.2),
        mallory.no_knowledge("linf", 0.2),
        mallory.score_based("linf", 0.2),
        mallory.white_box("linf", 0.2),
    ):
        result = attack(Oracle(target, threat), x[:10], y[:10])
        assert bool((result.queries == 1).all()), threat.name


def test_without_a_surrogate_it_says_how_to_build_one(digits: Problem) -> None:
    target, _, x, y = digits
    oracle = Oracle(target, mallory.transfer("linf", 0.2))
    with pytest.raises(InputError, match=r"train_surrogate.*extract_surrogate"):
        create("transfer")(oracle, x, y)
    assert oracle.total_queries == 0


def test_refusals_come_before_any_query(digits: Problem) -> None:
    target, surrogate, x, y = digits
    oracle = Oracle(target, mallory.transfer("l0", 5))
    with pytest.raises(InputError, match="transfer with inner attack pgd"):
        Transfer(surrogate=surrogate)(oracle, x, y)  # pgd has no L0
    flat = train_surrogate(x.flatten(1), y, architecture="mlp", epochs=1)
    with pytest.raises(InputError, match="shape"):
        Transfer(surrogate=flat)(Oracle(target, mallory.transfer("linf", 0.2)), x, y)
    assert oracle.total_queries == 0
    with pytest.raises(InputError, match="'attack' parameter of Transfer must be"):
        Transfer(attack="no-such-attack")
    with pytest.raises(InputError, match="'surrogate' parameter of Transfer"):
        Transfer(surrogate="mine")  # type: ignore[arg-type]


def test_a_refused_submission_returns_the_clean_input(digits: Problem) -> None:
    target, surrogate, x, y = digits
    oracle = Oracle(target, mallory.transfer("linf", 0.2))
    oracle.labels(x[:5], torch.arange(5))  # the first five already spent their one query
    result = Transfer(surrogate=surrogate)(oracle, x, y)
    assert torch.equal(result.x_adv[:5], x[:5])
    assert int(result.queries[:5].sum()) == 0 and bool((result.queries[5:] == 1).all())
    quiet = Oracle(target, mallory.transfer("linf", 0.2))
    unsent = Transfer(surrogate=surrogate, submit=False)(quiet, x, y)
    assert quiet.total_queries == 0 and int(unsent.success.sum()) > 0


def test_targeted_passes_the_targets_on_and_batches_change_nothing(digits: Problem) -> None:
    target, surrogate, x, y = digits
    threat = mallory.transfer("linf", 0.3, goal="targeted")
    inner = create("pgd", steps=10)
    whole = Transfer(surrogate=surrogate, attack=inner)(Oracle(target, threat), x, y, rng=2)
    split = Transfer(surrogate=surrogate, attack=inner, batch_size=7)(
        Oracle(target, threat), x, y, rng=2
    )
    assert torch.equal(whole.x_adv, split.x_adv) and torch.equal(whole.targets, split.targets)
    assert_inside_and_real(target, whole, x, 0.3)
    assert whole.success_rate > 0.1  # random targets: chance is about 1 in 10 at best


def test_params_round_trip_and_describe(digits: Problem) -> None:
    _, surrogate, _, _ = digits
    plain = create("transfer")
    assert create("transfer", **plain.params()) == plain
    custom = create("transfer", attack={"name": "pgd", "params": {"steps": 7}})
    assert isinstance(custom.attack, mallory.attacks.evasion.pgd.PGD) and custom.attack.steps == 7
    assert create("transfer", **custom.params()) == custom
    loaded = Transfer(surrogate=surrogate).params()
    assert loaded["surrogate"]["architecture"] == "mlp"
    json.dumps(loaded)
    json.dumps(Transfer.describe())
    assert Transfer.access is mallory.Access.LABELS


def test_needs_an_oracle(digits: Problem) -> None:
    target, surrogate, x, y = digits
    with pytest.raises(InputError, match="Oracle"):
        Transfer(surrogate=surrogate)(target, x, y)  # type: ignore[arg-type]


# ---------------------------------------------------------------- MNIST (slow)
@pytest.fixture(scope="module")
def mnist() -> tuple[System, torch.Tensor, torch.Tensor]:
    torch.set_num_threads(1)
    test = load_dataset("mnist", "test")
    return load_model("mnist-cnn", progress=False), test.x, test.y


@pytest.mark.slow
def test_own_data_surrogate_transfers_to_the_mnist_cnn(
    mnist: tuple[System, torch.Tensor, torch.Tensor],
) -> None:
    # The attacker's own data is the MNIST train split, which the zoo CNN was trained on too:
    # the best case for an attacker with data from the target's distribution.
    target, x_test, y_test = mnist
    own = load_dataset("mnist", "train")
    surrogate = train_surrogate(own.x[:1000], own.y[:1000], architecture="cnn", epochs=3, seed=1)
    x, y = x_test[:100], y_test[:100]
    oracle = Oracle(target, mallory.transfer("linf", 0.3))
    result = create("transfer", surrogate=surrogate)(oracle, x, y)
    assert bool((result.queries == 1).all())
    assert_inside_and_real(target, result, x, 0.3)
    baseline = chance(target, x, y, 0.3)
    print(f"own-data transfer {result.success_rate:.2f}, random signs {baseline:.2f}")
    assert result.success_rate > baseline + 0.2


@pytest.mark.slow
def test_extracted_surrogate_transfers_to_the_mnist_cnn(
    mnist: tuple[System, torch.Tensor, torch.Tensor],
) -> None:
    target, x_test, y_test = mnist
    seeds = load_dataset("mnist", "train").x[:150]  # the attacker's unlabelled seed set
    oracle = Oracle(target, mallory.transfer("linf", 0.3, queries_total=1500))
    stolen = extract_surrogate(oracle, seeds, rounds=3, architecture="mlp", epochs=5, seed=0)
    assert stolen.extraction_queries == 150 * 2**3 == oracle.total_queries <= 1500
    held_out = x_test[100:]
    agreement = float(
        (stolen.predict(held_out) == target.forward(held_out).argmax(1)).double().mean()
    )
    x, y = x_test[:100], y_test[:100]
    result = create("transfer", surrogate=stolen)(oracle, x, y)
    assert result.params["surrogate"]["extraction_queries"] == 1200
    assert oracle.total_queries == 1300 and bool((result.queries == 1).all())
    assert_inside_and_real(target, result, x, 0.3)
    baseline = chance(target, x, y, 0.3)
    print(
        f"extraction: {stolen.extraction_queries} queries, agreement {agreement:.2f}, "
        f"transfer {result.success_rate:.2f}, random signs {baseline:.2f}"
    )
    assert agreement > 0.5
    assert result.success_rate > baseline + 0.1
