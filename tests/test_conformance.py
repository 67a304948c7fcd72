"""The conformance suite: every registered attack, run through the same checks.

Parametrized over the registry, so an attack registered in ``mallory.attacks`` is tested here
without anyone writing a test for it. The threat model each attack runs under is derived from
its class metadata (``access``, ``norms``, ``goals``, ``minimizes``); the system is a small MLP
trained on scikit-learn's 8x8 digits at the start of the session (about a second).

What every attack must do:

(a) results inside the perturbation set (the threat model's ball) and the input bounds;
(b) leave the caller's tensors untouched;
(c) give the same result for the same seed;
(d) report the system's own verdict as its success mask;
(e) never exceed a query budget, and report what the oracle's ledger counted;
(f) give the same outcome whatever its batch size;
(g) return one row per sample in every field, with the documented dtypes;
(h) be refused, before any query, when it needs more access than the threat model grants;
(i) name its paper and document every parameter.

An attack runs with its defaults and the parameters its class gives for a quick run on a small
model (``Attack.test_params(system, x, y)``: its ``fast`` parameters, and what it needs built
for the system, such as a transfer attack's surrogate).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn

import mallory
import mallory.attacks  # registers the built-in attacks
from mallory import (
    Access,
    AccessError,
    Attack,
    AttackResult,
    CallableModel,
    Goal,
    InputError,
    Norm,
    Oracle,
    ThreatModel,
    TorchModel,
)
from mallory.access.view import OracleView
from mallory.attacks import REGISTRY, EvasionAttack
from mallory.attacks.noise import Noise
from mallory.attacks.params import Rule
from mallory.threat.features import FeatureConstraints
from mallory.threat.perturbation import distances, norm_of

ATTACKS = mallory.list_attacks("evasion")

SHAPE = (1, 8, 8)
SAMPLES = 40
SEED = 7
IDS = 1000 + 3 * torch.arange(SAMPLES)  # not 0..n-1: the ledger is keyed by these
EPS = {Norm.LINF: 0.2, Norm.L2: 1.5, Norm.L0: 10.0}
PRESETS = {
    Access.GRADIENTS: mallory.white_box,
    Access.SCORES: functools.partial(mallory.score_based, queries=200),
    Access.LABELS: functools.partial(mallory.label_only, queries=200),
}
BUDGET = 7
PRICE = 0.25  # money per query, in the budget run
BOUND_SLACK = 1e-6  # the oracle's own tolerance on the input bounds


# ---------------------------------------------------------------- the system under test
@dataclass
class Bench:
    system: TorchModel
    x: Tensor
    y: Tensor


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
    return train_bench()


def train_bench() -> Bench:
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[:1400], order[1400:]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        optimizer = torch.optim.Adam(module.parameters(), lr=0.02)
        for _ in range(80):
            optimizer.zero_grad()
            nn.functional.cross_entropy(module(x[train]), y[train]).backward()
            optimizer.step()
    system = TorchModel(module, input_shape=SHAPE, bounds=(0.0, 1.0), name="digits-mlp")
    with torch.no_grad():
        accuracy = (module(x[test]).argmax(1) == y[test]).double().mean()
    assert accuracy > 0.9, f"the test model should be accurate; got {accuracy:.3f}"
    return Bench(system, x[test][:SAMPLES].clone(), y[test][:SAMPLES].clone())


def threat_for(cls: type[Attack]) -> ThreatModel:
    """A threat model the attack accepts: the preset for its access, its first norm, a finite
    eps, untargeted if it can (else targeted with random targets)."""
    norm = next(n for n in Norm if n in cls.norms)
    goal = Goal.UNTARGETED if Goal.UNTARGETED in cls.goals else Goal.TARGETED
    return PRESETS[cls.access](norm, EPS[norm], goal=goal)


def make(name: str, bench: Bench | None = None, **params: Any) -> Attack:
    """``create(name)`` with the parameters its class gives for a quick run on the bench
    (``test_params``: iteration counts, and what it needs built, such as a surrogate)."""
    cls = mallory.attack_class(name)
    quick = cls.test_params(bench.system, bench.x, bench.y) if bench is not None else dict(cls.fast)
    return mallory.create(name, **{**quick, **params})


@dataclass
class Run:
    result: AttackResult
    oracle: Oracle
    threat: ThreatModel
    untouched: bool  # x, y and ids were not modified by the call
    x_address: int  # where the x passed to the call lives
    spent_before: Tensor  # ledger per sample before the call


_RUNS: dict[tuple[str, str], Run] = {}


def run(bench: Bench, name: str, variant: str = "base") -> Run:
    """One attack run of a kind (cached: runs are deterministic and some are reused)."""
    key = (name, variant)
    if key in _RUNS:
        return _RUNS[key]
    cls = mallory.attack_class(name)
    threat = threat_for(cls)
    params: dict[str, Any] = {}
    if variant == "batch":
        params["batch_size"] = 7
    elif variant == "budget":
        threat = threat.with_(queries_per_sample=BUDGET, price_per_query=PRICE)
    elif variant == "total":
        threat = threat.with_(queries_per_sample=None, queries_total=60)
    elif variant == "targeted":
        threat = threat.with_(goal=Goal.TARGETED)
    elif variant == "unbounded":
        threat = threat.with_(eps=math.inf)
    oracle = Oracle(bench.system, threat)
    if variant == "budget":
        # the first five samples already spent two queries on an earlier attack
        for _ in range(2):
            oracle.labels(bench.x[:5], IDS[:5])
    x, y, ids = bench.x.clone(), bench.y.clone(), IDS.clone()
    spent_before = oracle.queries_of(IDS)
    result = make(name, bench, **params)(oracle, x, y, rng=SEED, ids=ids)
    untouched = torch.equal(x, bench.x) and torch.equal(y, bench.y) and torch.equal(ids, IDS)
    _RUNS[key] = Run(result, oracle, threat, untouched, x.data_ptr(), spent_before)
    return _RUNS[key]


def variants(name: str) -> list[str]:
    """The runs whose results every check applies to."""
    cls = mallory.attack_class(name)
    out = ["base", "budget"]
    if Goal.TARGETED in cls.goals and threat_for(cls).goal is Goal.UNTARGETED:
        out.append("targeted")
    if cls.minimizes:
        out.append("unbounded")
    return out


def check_inside(result: AttackResult, x: Tensor, threat: ThreatModel) -> None:
    x_adv = result.x_adv
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert bool(torch.isfinite(x_adv).all())
    assert bool((x_adv >= -BOUND_SLACK).all()) and bool((x_adv <= 1 + BOUND_SLACK).all())
    size = norm_of(x_adv - x, threat.norm).double()
    if math.isfinite(threat.eps):
        slack = 0.0 if threat.norm is Norm.L0 else 1e-5 * (1 + threat.eps)
        assert bool((size <= threat.eps + slack).all()), (size.max().item(), threat.eps)
    # the reported distances are those of the returned inputs
    d = distances(x_adv, x)
    torch.testing.assert_close(result.l0, d[Norm.L0])
    torch.testing.assert_close(result.l2, d[Norm.L2])
    torch.testing.assert_close(result.linf, d[Norm.LINF])


def check_verdict(result: AttackResult, bench: Bench) -> None:
    with torch.no_grad():
        logits = bench.system.forward(result.x_adv)
    predictions = logits.argmax(1)
    assert torch.equal(result.predictions, predictions)
    if result.targets is None:
        assert torch.equal(result.success, predictions != bench.y)
    else:
        assert torch.equal(result.success, predictions == result.targets)
    confidence = logits.softmax(1).amax(1).double()
    torch.testing.assert_close(result.confidence, confidence, atol=1e-5, rtol=1e-5)


def _strict_choice(value: object) -> str:
    if value not in ("a", "b"):
        raise InputError(f"There is no letter {value!r} here; pick 'a' or 'b'.")
    return str(value)


def params_of(name: str) -> list[str]:
    return list(mallory.attack_class(name).describe()["params"])


# ---------------------------------------------------------------- (a) the perturbation set
@pytest.mark.parametrize("name", ATTACKS)
def test_results_inside_perturbation_set_and_bounds(bench: Bench, name: str) -> None:
    for variant in variants(name):
        outcome = run(bench, name, variant)
        check_inside(outcome.result, bench.x, outcome.threat)


# ---------------------------------------------------------------- (b) inputs untouched
@pytest.mark.parametrize("name", ATTACKS)
def test_inputs_not_modified(bench: Bench, name: str) -> None:
    for variant in variants(name):
        assert run(bench, name, variant).untouched, f"{name} modified x, y or ids ({variant})"
    # the returned x_adv does not alias the caller's x
    outcome = run(bench, name)
    assert outcome.result.x_adv.data_ptr() != outcome.x_address


# ---------------------------------------------------------------- (c) determinism
@pytest.mark.parametrize("name", ATTACKS)
def test_same_seed_same_result(bench: Bench, name: str) -> None:
    first = run(bench, name).result
    threat = threat_for(mallory.attack_class(name))
    again = make(name, bench)(
        Oracle(bench.system, threat), bench.x.clone(), bench.y.clone(), rng=SEED, ids=IDS
    )
    assert torch.equal(again.x_adv, first.x_adv)
    assert torch.equal(again.success, first.success)
    assert torch.equal(again.queries, first.queries)
    assert torch.equal(again.gradients, first.gradients)
    if first.targets is not None:
        assert again.targets is not None and torch.equal(again.targets, first.targets)


# ---------------------------------------------------------------- (d) the system's verdict
@pytest.mark.parametrize("name", ATTACKS)
def test_success_is_the_systems_own_verdict(bench: Bench, name: str) -> None:
    for variant in variants(name):
        check_verdict(run(bench, name, variant).result, bench)


@pytest.mark.parametrize("name", ATTACKS)
def test_targets_are_wrong_classes(bench: Bench, name: str) -> None:
    for variant in variants(name):
        result = run(bench, name, variant).result
        if result.threat.goal is Goal.UNTARGETED:
            assert result.targets is None
        else:
            assert result.targets is not None
            assert result.targets.dtype == torch.int64 and result.targets.shape == (SAMPLES,)
            assert bool((result.targets != bench.y).all())
            assert bool((result.targets >= 0).all()) and bool((result.targets < 10).all())


# ---------------------------------------------------------------- (e) budgets
@pytest.mark.parametrize("name", ATTACKS)
def test_per_sample_query_budget(bench: Bench, name: str) -> None:
    outcome = run(bench, name, "budget")
    result, oracle = outcome.result, outcome.oracle
    assert bool((result.queries >= 0).all())
    assert bool((result.queries <= BUDGET).all())
    spent = oracle.queries_of(IDS)
    assert bool((spent <= BUDGET).all()), "the ledger passed the budget"
    assert torch.equal(spent, outcome.spent_before + result.queries)
    assert bool((result.queries[:5] <= BUDGET - 2).all()), "budget did not carry over"
    assert bool((result.gradients <= result.queries).all())
    assert torch.equal(oracle.gradients_of(IDS), result.gradients)
    torch.testing.assert_close(result.cost, result.queries.double() * PRICE)
    assert oracle.money == pytest.approx(PRICE * oracle.total_queries)


@pytest.mark.parametrize("name", ATTACKS)
def test_total_query_budget(bench: Bench, name: str) -> None:
    outcome = run(bench, name, "total")
    assert outcome.oracle.total_queries <= 60
    assert int(outcome.result.queries.sum()) == outcome.oracle.total_queries
    check_inside(outcome.result, bench.x, outcome.threat)
    check_verdict(outcome.result, bench)


# ---------------------------------------------------------------- (f) batch size
@pytest.mark.parametrize("name", ATTACKS)
def test_batch_size_does_not_change_outcome(bench: Bench, name: str) -> None:
    whole, chunked = run(bench, name).result, run(bench, name, "batch").result
    assert chunked.params["batch_size"] == 7
    assert torch.equal(chunked.success, whole.success)
    torch.testing.assert_close(chunked.x_adv, whole.x_adv, atol=1e-5, rtol=0)
    if whole.targets is not None:
        assert chunked.targets is not None and torch.equal(chunked.targets, whole.targets)


# ---------------------------------------------------------------- (g) the result
@pytest.mark.parametrize("name", ATTACKS)
def test_result_fields(bench: Bench, name: str) -> None:
    outcome = run(bench, name)
    result, attack = outcome.result, make(name, bench)
    assert isinstance(result, AttackResult)
    assert result.attack == name
    assert result.params == attack.params()
    assert result.threat == outcome.threat
    assert len(result) == SAMPLES
    assert torch.equal(result.ids, IDS)
    assert torch.equal(result.labels, bench.y)
    assert result.x_adv.shape == bench.x.shape and result.x_adv.dtype == bench.x.dtype
    dtypes = {
        "ids": torch.int64,
        "labels": torch.int64,
        "success": torch.bool,
        "predictions": torch.int64,
        "confidence": torch.float64,
        "l0": torch.float64,
        "l2": torch.float64,
        "linf": torch.float64,
        "queries": torch.int64,
        "gradients": torch.int64,
    }
    for field, dtype in dtypes.items():
        value = getattr(result, field)
        assert isinstance(value, Tensor), field
        assert value.shape == (SAMPLES,), (field, tuple(value.shape))
        assert value.dtype == dtype, (field, value.dtype)
    assert result.interrupted_mask.shape == (SAMPLES,)
    assert not bool(result.interrupted_mask.any()) and result.error is None
    assert isinstance(result.seconds, float) and result.seconds > 0
    assert bool((result.confidence > 0).all()) and bool((result.confidence <= 1).all())
    assert 0.0 <= result.success_rate <= 1.0
    if mallory.attack_class(name).access is not Access.GRADIENTS:
        assert not bool(result.gradients.any())
    json.dumps(result.to_dict(inputs=True), allow_nan=True)
    json.dumps(result.summary(), allow_nan=True)


@pytest.mark.parametrize("name", ATTACKS)
def test_reported_counts_are_the_ledger_delta(bench: Bench, name: str) -> None:
    for variant in ("base", "budget"):
        outcome = run(bench, name, variant)
        result, oracle = outcome.result, outcome.oracle
        assert torch.equal(oracle.queries_of(IDS), outcome.spent_before + result.queries)
        assert torch.equal(oracle.gradients_of(IDS), result.gradients)
        assert oracle.total_queries == int(outcome.spent_before.sum() + result.queries.sum())
        assert oracle.total_gradients == int(result.gradients.sum())
    base = run(bench, name)
    # samples outside the batch were never charged
    assert int(base.oracle.queries_of(torch.arange(int(IDS.min()))).sum()) == 0
    assert bool((base.result.queries > 0).all()), "every sample needs at least one query"


# ---------------------------------------------------------------- (h) access
def weaker_threats(cls: type[Attack]) -> list[ThreatModel]:
    norm = next(n for n in Norm if n in cls.norms)
    goal = threat_for(cls).goal
    out = [mallory.label_only(norm, EPS[norm], goal=goal)]
    if cls.access is Access.GRADIENTS:
        out.append(mallory.score_based(norm, EPS[norm], goal=goal))
        out.append(mallory.transfer(norm, EPS[norm], goal=goal))
    return out


NEEDS_MORE_THAN_LABELS = [n for n in ATTACKS if mallory.attack_class(n).access > Access.LABELS]


@pytest.mark.parametrize("name", NEEDS_MORE_THAN_LABELS)
def test_refused_without_access(bench: Bench, name: str) -> None:
    cls = mallory.attack_class(name)
    for threat in weaker_threats(cls):
        oracle = Oracle(bench.system, threat)
        with pytest.raises(AccessError) as info:
            make(name)(oracle, bench.x, bench.y, ids=IDS)
        assert name in str(info.value)
        assert oracle.total_queries == 0 and oracle.total_gradients == 0
        assert int(oracle.queries_of(IDS).sum()) == 0


GRADIENT_ATTACKS = [n for n in ATTACKS if mallory.attack_class(n).access is Access.GRADIENTS]


@pytest.mark.parametrize("name", GRADIENT_ATTACKS)
def test_gradient_attack_refused_on_opaque_system(bench: Bench, name: str) -> None:
    module = bench.system.module
    opaque = CallableModel(
        lambda inputs: module(inputs),
        input_shape=SHAPE,
        num_classes=10,
        bounds=(0, 1),
        output="logits",
        name="opaque-api",
    )
    oracle = Oracle(opaque, threat_for(mallory.attack_class(name)))
    with pytest.raises(AccessError, match="opaque-api"):
        make(name)(oracle, bench.x, bench.y)
    assert oracle.total_queries == 0


@pytest.mark.parametrize("name", ATTACKS)
def test_refused_outside_its_norms_goals_and_eps(bench: Bench, name: str) -> None:
    cls = mallory.attack_class(name)
    base = threat_for(cls)
    refused: list[ThreatModel] = []
    for norm in Norm:
        if norm not in cls.norms:
            refused.append(base.with_(norm=norm, eps=EPS[norm]))
    for goal in Goal:
        if goal not in cls.goals:
            refused.append(base.with_(goal=goal))
    if not cls.minimizes:
        refused.append(base.with_(eps=math.inf))
    for threat in refused:
        oracle = Oracle(bench.system, threat)
        with pytest.raises(InputError, match=name):
            make(name)(oracle, bench.x, bench.y)
        assert oracle.total_queries == 0


# ---------------------------------------------------------------- defaults
@pytest.mark.parametrize("name", ATTACKS)
def test_defaults_are_valid(name: str) -> None:
    attack = mallory.create(name)
    described = type(attack).describe()["params"]
    defaults = {param: info["default"] for param, info in described.items()}
    params = attack.params()
    assert list(params) == list(defaults)
    for param, value in params.items():
        if value is None or isinstance(value, bool | int | float | str):
            assert value == defaults[param], (param, value, defaults[param])
    # the quick attack the suite runs differs only in what its class says makes it quick
    quick = make(name).params()
    cls = mallory.attack_class(name)
    assert {k for k in quick if quick[k] != params[k]} <= set(cls.fast)


# ---------------------------------------------------------------- feature constraints
@pytest.mark.parametrize("name", ATTACKS)
def test_feature_constraints_respected(bench: Bench, name: str) -> None:
    cls = mallory.attack_class(name)
    mutable = tuple(range(16, 48))  # the middle rows of the 8x8 image
    threat = threat_for(cls).with_(features=FeatureConstraints(mutable))
    if cls.access is not Access.GRADIENTS:
        threat = threat.with_(queries_per_sample=50)
    x = bench.x.clone()
    attack = make(name, bench)
    result = attack(Oracle(bench.system, threat), x, bench.y.clone(), rng=SEED, ids=IDS)
    changed = (result.x_adv != bench.x).flatten(1)
    frozen = torch.ones(64, dtype=torch.bool)
    frozen[list(mutable)] = False
    assert not bool(changed[:, frozen].any()), f"{int(changed[:, frozen].any(1).sum())} rows"
    check_verdict(result, bench)


# ---------------------------------------------------------------- (i) documentation
@pytest.mark.parametrize("name", ATTACKS)
def test_documented(name: str) -> None:
    cls = mallory.attack_class(name)
    assert cls.name == name
    assert cls.paper.strip(), f"{name} must name its paper"
    doc = cls.__doc__ or ""
    assert doc.strip(), f"{name} needs a docstring"
    first_author = cls.paper.replace(",", " ").split()[0]
    assert first_author in doc, f"the docstring of {name} should name {first_author!r}"
    described = cls.describe()
    assert described["name"] == name
    assert described["paper"] == cls.paper
    assert described["summary"]
    assert described["access"] == cls.access.name.lower()
    assert set(described["norms"]) == {n.value for n in cls.norms} and described["norms"]
    assert set(described["goals"]) == {g.value for g in cls.goals} and described["goals"]
    assert described["minimizes"] == cls.minimizes
    fields = [f.name for f in dataclasses.fields(cls)]
    assert list(described["params"]) == fields
    for param, info in described["params"].items():
        assert info["help"].strip(), f"{name}.{param} has no help text"
        assert info["expected"].strip(), f"{name}.{param} has no validation rule"
    json.dumps(described)


# ---------------------------------------------------------------- the registry and create()
@pytest.mark.parametrize("name", ATTACKS)
def test_registered_class_is_a_frozen_keyword_only_dataclass(name: str) -> None:
    cls = mallory.attack_class(name)
    assert REGISTRY[name] is cls
    assert issubclass(cls, Attack)
    attack = mallory.create(name)
    assert type(attack) is cls
    first = params_of(name)[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(attack, first, getattr(attack, first))
    with pytest.raises(TypeError):
        cls(1)  # type: ignore[call-arg]
    # parameters round-trip: what params() gives, create() takes back
    assert mallory.create(name, **attack.params()) == attack
    json.dumps(attack.params())
    assert cls.__name__ in repr(attack)


@pytest.mark.parametrize("name", ATTACKS)
def test_bad_parameter_values_name_the_parameter(name: str) -> None:
    cls = mallory.attack_class(name)
    for param in params_of(name):
        for bad in (object(), "not-a-value", math.nan):  # no rule accepts these
            with pytest.raises(InputError) as info:
                mallory.create(name, **{param: bad})
            message = str(info.value)
            assert repr(param) in message and cls.__name__ in message, message
            assert "must be" in message and "got" in message, message
    with pytest.raises(InputError, match="no parameter 'definitely_not_a_parameter'") as info:
        mallory.create(name, definitely_not_a_parameter=1)
    assert "batch_size" in str(info.value)  # lists the real ones


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
