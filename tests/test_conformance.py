"""The conformance suite: every registered attack, run through :mod:`mallory.testing`.

Parametrized over the registry, so an attack registered in ``mallory.attacks`` is tested here
without anyone writing a test for it: one test per attack and check of the public kit
(``mallory.testing.attack_checks``), the same checks a plug-in author runs with
``check_attack(MyAttack)``. The checks of one attack share its runs. The bench is the kit's
own: a small MLP trained on scikit-learn's 8x8 digits (about a second).

What every evasion attack must do (the kit's check names in brackets):

(a) results inside the perturbation set and the input bounds [inside-perturbation-set];
(b) leave the caller's tensors untouched [inputs-untouched];
(c) give the same result for the same seed [same-seed-same-result];
(d) report the system's own verdict as its success mask [success-is-the-systems-verdict];
(e) never exceed a query budget, and report what the oracle's event log counted
    [per-sample-query-budget, total-query-budget, counts-match-event-log, planned-queries-kept];
(f) give the same outcome whatever its batch size [batch-size-independent];
(g) return one row per sample in every field, with the documented dtypes [result-fields];
(h) be refused, before any query, when it needs more access than the threat model grants
    [refused-without-access, refused-on-opaque-system], or outside its norms, goals and eps
    [refused-outside-its-norms-goals-eps];
(i) name its paper and document every parameter [documented]; be a frozen keyword-only
    dataclass whose parameters round-trip [frozen-keyword-only-dataclass], with valid
    defaults [defaults-valid] and errors that name a bad parameter [bad-values-named];

and respect feature constraints [feature-constraints-respected]. Extraction, poisoning and
inference attacks get the checks that apply to their kind.

An attack runs with its defaults and the parameters its class gives for a quick run on a small
model (``Attack.test_params(system, x, y)``: its ``fast`` parameters, and what it needs built
for the system, such as a transfer attack's surrogate).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import Tensor

import mallory
import mallory.attacks  # registers the built-in attacks
from mallory import Access, Attack, AttackResult, InputError, Oracle
from mallory.access.view import OracleView
from mallory.attacks import REGISTRY, EvasionAttack
from mallory.attacks.noise import Noise
from mallory.attacks.params import Rule
from mallory.testing import Bench, Check, attack_checks, digits_bench
from mallory.threat.features import FeatureConstraints

ATTACKS = mallory.list_attacks()
CHECKS: dict[str, list[Check]] = {name: attack_checks(name) for name in ATTACKS}

# what the suite promised before it called the kit: every evasion attack gets these checks
EVASION_CHECKS = {
    "documented",
    "frozen-keyword-only-dataclass",
    "defaults-valid",
    "bad-values-named",
    "inside-perturbation-set",
    "inputs-untouched",
    "same-seed-same-result",
    "success-is-the-systems-verdict",
    "per-sample-query-budget",
    "total-query-budget",
    "counts-match-event-log",
    "batch-size-independent",
    "result-fields",
    "refused-outside-its-norms-goals-eps",
    "feature-constraints-respected",
}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """A tiny model gains nothing from intra-op threads and, on a busy machine, loses a lot
    to their synchronization; the thread count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bench(one_thread: None) -> Bench:
    return digits_bench()


# ---------------------------------------------------------------- the kit, over the registry
@pytest.mark.parametrize(
    ("name", "index"),
    [
        pytest.param(name, i, id=f"{name}-{check.name}")
        for name in ATTACKS
        for i, check in enumerate(CHECKS[name])
    ],
)
def test_attack_conforms(name: str, index: int) -> None:
    CHECKS[name][index]()


@pytest.mark.parametrize("name", ATTACKS)
def test_every_attack_gets_the_checks_of_its_kind(name: str) -> None:
    cls = mallory.attack_class(name)
    names = {check.name for check in CHECKS[name]}
    assert len(names) == len(CHECKS[name]), "check names are unique"
    if issubclass(cls, EvasionAttack):
        assert names >= EVASION_CHECKS, EVASION_CHECKS - names
        assert ("refused-without-access" in names) == (cls.access > Access.LABELS)
        assert ("refused-on-opaque-system" in names) == (cls.access is Access.GRADIENTS)
    else:
        assert names >= {"documented", "frozen-keyword-only-dataclass", "result-fields"}
        assert {"same-seed-same-result", "inputs-untouched"} <= names


# ---------------------------------------------------------------- parameters
def _strict_choice(value: object) -> str:
    if value not in ("a", "b"):
        raise InputError(f"There is no letter {value!r} here; pick 'a' or 'b'.")
    return str(value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Picky(Attack):
    """A test attack (not registered) whose parameter converts with its own error message."""

    target: str = dataclasses.field(
        default="a",
        metadata={
            "rule": Rule("'a' or 'b'", lambda v: v in ("a", "b"), convert=_strict_choice),
            "help": "a letter",
        },
    )


def test_conversion_errors_name_the_parameter() -> None:
    with pytest.raises(InputError) as info:
        Picky(target="z")
    message = str(info.value)
    assert "no letter 'z'" in message  # the conversion's own words are kept
    assert "'target'" in message and "Picky" in message


# ---------------------------------------------------------------- the registry and create()
def test_unknown_attack_name() -> None:
    with pytest.raises(InputError, match="No attack named 'no-such-attack'") as info:
        mallory.create("no-such-attack")
    for name in ATTACKS:
        assert name in str(info.value)
    with pytest.raises(InputError):
        mallory.attack_class("no-such-attack")


def test_list_attacks() -> None:
    names = mallory.list_attacks()
    assert names == sorted(names) == sorted(REGISTRY)
    assert "fgsm" in names


def test_duplicate_registration_raises() -> None:
    existing = ATTACKS[0]
    before = dict(REGISTRY)

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Impostor(Attack):
        paper = "Nobody, Nothing, 2024"

    try:
        with pytest.raises(ValueError, match=f"'{existing}' is already registered"):
            mallory.register(existing)(Impostor)
        assert before == REGISTRY
        assert REGISTRY[existing] is not Impostor
    finally:
        REGISTRY.clear()
        REGISTRY.update(before)


def test_registration_needs_a_frozen_dataclass() -> None:
    before = dict(REGISTRY)

    class Loose(Attack):
        pass

    try:
        with pytest.raises(TypeError, match="frozen dataclass"):
            mallory.register("loose-test-attack")(Loose)
        assert "loose-test-attack" not in REGISTRY
    finally:
        REGISTRY.clear()
        REGISTRY.update(before)


# ---------------------------------------------------------------- what the base does
@dataclasses.dataclass(frozen=True, kw_only=True)
class Peek(EvasionAttack):
    """A test attack (not registered): queries the inverted image, then returns x unchanged."""

    access = Access.LABELS

    def _run(
        self, oracle: OracleView, x: Tensor, y: Tensor, targets: Tensor | None, noise: Noise
    ) -> Tensor:
        oracle.labels(oracle.bounds.clamp(1 - x))
        return x


def check_verdict(result: AttackResult, bench: Bench) -> None:
    with torch.no_grad():
        logits = bench.system.forward(result.x_adv)
    predictions = logits.argmax(1)
    assert torch.equal(result.predictions, predictions)
    assert torch.equal(result.success, predictions != bench.y)
    confidence = logits.softmax(1).amax(1).double()
    torch.testing.assert_close(result.confidence, confidence, atol=1e-5, rtol=1e-5)


def test_base_keeps_what_the_attacker_saw(bench: Bench) -> None:
    threat = mallory.label_only("linf", 1.0)
    result = Peek()(Oracle(bench.system, threat), bench.x, bench.y)
    with torch.no_grad():
        inverted_wrong = bench.system.forward(1 - bench.x).argmax(1) != bench.y
        clean_wrong = bench.system.forward(bench.x).argmax(1) != bench.y
    assert bool(inverted_wrong.any())
    assert torch.equal(result.success, inverted_wrong | clean_wrong)
    check_verdict(result, bench)


def test_base_never_returns_a_seen_query_outside_the_feature_constraints(bench: Bench) -> None:
    threat = mallory.label_only("linf", 1.0, features=FeatureConstraints((0,)))
    result = Peek()(Oracle(bench.system, threat), bench.x, bench.y)
    changed = (result.x_adv != bench.x).flatten(1)
    assert not bool(changed[:, 1:].any())


def test_numpy_inputs_match_tensor_inputs(bench: Bench) -> None:
    threat = mallory.white_box("linf", 0.1)
    from_numpy = mallory.create("fgsm")(
        Oracle(bench.system, threat), bench.x.numpy(), bench.y.numpy().astype(np.int64)
    )
    from_tensor = mallory.create("fgsm")(Oracle(bench.system, threat), bench.x, bench.y)
    assert torch.equal(from_numpy.x_adv, from_tensor.x_adv)
