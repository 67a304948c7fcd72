"""Bad input to an attack call is refused with an InputError that names what was wrong; a
failing system becomes a SystemFailure; the public API is exactly what ``__all__`` promises."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import mallory
from mallory import InputError, Oracle, TorchModel

SHAPE = (1, 8, 8)
N = 6


@pytest.fixture(scope="module")
def model() -> TorchModel:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    return TorchModel(module, input_shape=SHAPE, bounds=(0.0, 1.0), name="digits-net")


@pytest.fixture
def x() -> Tensor:
    return torch.rand(N, *SHAPE, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def y() -> Tensor:
    return torch.arange(N) % 10


def fgsm() -> mallory.Attack:
    return mallory.create("fgsm")


def white_box(**changes: Any) -> mallory.ThreatModel:
    return mallory.white_box("linf", 0.1, **changes)


# ---------------------------------------------------------------- x
@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda x: x.flatten(1), ["x must have shape (n, 1, 8, 8)", "(6, 64)"]),
        (lambda x: x[0], ["x must have shape (n, 1, 8, 8)", "(1, 8, 8)"]),
        (lambda x: x.reshape(N, 1, 4, 16), ["x must have shape", "(6, 1, 4, 16)"]),
        (lambda x: (x * 255).to(torch.uint8), ["x must hold floats", "torch.uint8"]),
        (lambda x: x.tolist(), ["x must be a torch.Tensor or numpy array", "list"]),
        (lambda x: x * 2, ["samples of x lie outside", "bounds", "'upper': 1.0"]),
        (lambda x: x - 1.5, ["samples of x lie outside", "'lower': 0.0"]),
        (
            lambda x: torch.where(torch.arange(N)[:, None, None, None] == 2, math.nan, x),
            ["x holds NaN", "1 samples"],
        ),
        (
            lambda x: x.index_fill(0, torch.tensor([0, 3]), math.inf),
            ["x holds NaN or infinite", "2"],
        ),
    ],
)
def test_bad_x(model: TorchModel, x: Tensor, y: Tensor, make: Any, words: list[str]) -> None:
    oracle = Oracle(model, white_box())
    with pytest.raises(InputError) as info:
        fgsm()(oracle, make(x), y)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert oracle.total_queries == 0


def test_numpy_and_float64_inputs_are_accepted(model: TorchModel, x: Tensor, y: Tensor) -> None:
    oracle = Oracle(model, white_box())
    from_numpy = fgsm()(oracle, x.numpy(), y.numpy())
    from_tensor = fgsm()(oracle, x, y, ids=torch.arange(N) + N)
    assert torch.equal(from_numpy.x_adv, from_tensor.x_adv)
    assert fgsm()(Oracle(model, white_box()), x.double(), y).x_adv.dtype == torch.float64


# ---------------------------------------------------------------- y
@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda y: y[:-1], ["y must have shape (6,)", "(5,)"]),
        (lambda y: y[:, None], ["y must have shape (6,)", "(6, 1)"]),
        (lambda y: y.float(), ["y must hold integer class indices", "torch.float32"]),
        (lambda y: y > 3, ["y must hold integer class indices", "torch.bool"]),
        (lambda y: y + 5, ["y must hold classes 0..9", "to 10"]),
        (lambda y: y - 1, ["y must hold classes 0..9", "from -1"]),
        (lambda y: y.tolist(), ["y must be a tensor of class indices", "list"]),
    ],
)
def test_bad_labels(model: TorchModel, x: Tensor, y: Tensor, make: Any, words: list[str]) -> None:
    oracle = Oracle(model, white_box())
    with pytest.raises(InputError) as info:
        fgsm()(oracle, x, make(y))
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert oracle.total_queries == 0


def test_int32_and_numpy_labels_are_accepted(model: TorchModel, x: Tensor, y: Tensor) -> None:
    result = fgsm()(Oracle(model, white_box()), x, y.int())
    assert result.labels.dtype == torch.int64
    assert fgsm()(Oracle(model, white_box()), x, y.numpy()).labels.tolist() == y.tolist()


# ---------------------------------------------------------------- targets
def test_targets_equal_to_labels(model: TorchModel, x: Tensor, y: Tensor) -> None:
    oracle = Oracle(model, white_box(goal="targeted", targets="given"))
    targets = (y + 1) % 10
    targets[2] = y[2]
    with pytest.raises(InputError, match="targets equal the true label for 1 samples"):
        fgsm()(oracle, x, y, targets=targets)
    assert oracle.total_queries == 0


def test_missing_targets_when_given(model: TorchModel, x: Tensor, y: Tensor) -> None:
    oracle = Oracle(model, white_box(goal="targeted", targets="given"))
    with pytest.raises(InputError, match="targets='given', but no targets= were passed"):
        fgsm()(oracle, x, y)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda y: ((y + 1) % 10)[:3], ["targets must have shape (6,)"]),
        (lambda y: ((y + 1) % 10).double(), ["targets must hold integer"]),
        (lambda y: y + 10, ["targets must hold classes 0..9"]),
    ],
)
def test_bad_targets(model: TorchModel, x: Tensor, y: Tensor, make: Any, words: list[str]) -> None:
    oracle = Oracle(model, white_box(goal="targeted", targets="given"))
    with pytest.raises(InputError) as info:
        fgsm()(oracle, x, y, targets=make(y))
    for word in words:
        assert word in str(info.value)


def test_targets_where_none_belong(model: TorchModel, x: Tensor, y: Tensor) -> None:
    targets = (y + 1) % 10
    with pytest.raises(InputError, match="untargeted"):
        fgsm()(Oracle(model, white_box()), x, y, targets=targets)
    with pytest.raises(InputError, match="targets='random'"):
        fgsm()(Oracle(model, white_box(goal="targeted")), x, y, targets=targets)


def test_given_targets_are_used(model: TorchModel, x: Tensor, y: Tensor) -> None:
    targets = (y + 3) % 10
    oracle = Oracle(model, white_box(goal="targeted", targets="given"))
    result = fgsm()(oracle, x, y, targets=targets.numpy())
    assert result.targets is not None and torch.equal(result.targets, targets)


def test_random_targets_are_wrong_classes_and_seeded(model: TorchModel, x: Tensor) -> None:
    y = torch.arange(40) % 10
    xs = torch.rand(40, *SHAPE, generator=torch.Generator().manual_seed(3))
    oracle = Oracle(model, white_box(goal="targeted"))
    first = fgsm()(oracle, xs, y, rng=4).targets
    again = fgsm()(oracle, xs, y, rng=4, ids=torch.arange(40) + 100).targets
    other = fgsm()(oracle, xs, y, rng=5).targets
    assert first is not None and again is not None and other is not None
    assert bool((first != y).all()) and bool((first >= 0).all()) and bool((first < 10).all())
    assert not torch.equal(first, again)  # other ids, other draws
    assert not torch.equal(first, other)
    assert torch.equal(fgsm()(oracle, xs, y, rng=4).targets, first)
    assert len(first.unique()) > 5


# ---------------------------------------------------------------- oracle, rng, ids
@pytest.mark.parametrize("oracle", [None, "white-box", mallory.white_box("linf", 0.1)])
def test_non_oracle(model: TorchModel, x: Tensor, y: Tensor, oracle: Any) -> None:
    with pytest.raises(InputError, match="must be called with a mallory Oracle") as info:
        fgsm()(oracle, x, y)
    assert "mallory.Oracle(system, threat_model)" in str(info.value)


def test_system_instead_of_oracle(model: TorchModel, x: Tensor, y: Tensor) -> None:
    with pytest.raises(InputError, match="got TorchModel"):
        fgsm()(model, x, y)  # type: ignore[arg-type]


@pytest.mark.parametrize("rng", [1.5, "1", None, True, np.float64(2.0)])
def test_non_int_rng(model: TorchModel, x: Tensor, y: Tensor, rng: Any) -> None:
    oracle = Oracle(model, white_box())
    with pytest.raises(InputError, match="rng must be an int seed") as info:
        fgsm()(oracle, x, y, rng=rng)
    assert repr(rng) in str(info.value)
    assert oracle.total_queries == 0


def test_numpy_integer_rng(model: TorchModel, x: Tensor, y: Tensor) -> None:
    # an int subclass from numpy is a fine seed, or a clear error; never a crash deep inside
    oracle = Oracle(model, white_box())
    try:
        fgsm()(oracle, x, y, rng=np.int64(3))  # type: ignore[arg-type]
    except InputError as error:
        assert "rng" in str(error)


@pytest.mark.parametrize(
    "ids",
    [
        torch.arange(N - 1),
        torch.tensor([0, 1, 2, 3, 4, 4]),
        torch.tensor([-1, 1, 2, 3, 4, 5]),
        torch.arange(N).double(),
        list(range(N)),
    ],
)
def test_bad_ids(model: TorchModel, x: Tensor, y: Tensor, ids: Any) -> None:
    oracle = Oracle(model, white_box())
    with pytest.raises(InputError, match="ids must be"):
        fgsm()(oracle, x, y, ids=ids)
    assert oracle.total_queries == 0


def test_ids_key_the_ledger(model: TorchModel, x: Tensor, y: Tensor) -> None:
    oracle = Oracle(model, white_box())
    chosen = torch.tensor([10, 3, 77, 5, 6, 1000])
    result = fgsm()(oracle, x, y, ids=chosen.numpy())
    assert torch.equal(result.ids, chosen)
    assert oracle.queries_of(chosen).tolist() == [1] * N
    assert oracle.queries_of(torch.arange(3)).tolist() == [0, 0, 0]


# ---------------------------------------------------------------- threat model vs attack
def test_unsupported_norm_and_infinite_eps(model: TorchModel, x: Tensor, y: Tensor) -> None:
    oracle = Oracle(model, mallory.white_box("l0", 5))
    with pytest.raises(InputError, match="fgsm works in l2, linf") as info:
        fgsm()(oracle, x, y)
    assert "l0" in str(info.value)
    unbounded = Oracle(model, mallory.white_box("linf"))
    with pytest.raises(InputError, match="fgsm needs a finite eps"):
        fgsm()(unbounded, x, y)
    assert oracle.total_queries == 0 and unbounded.total_queries == 0


def test_bad_attack_parameters_name_the_parameter() -> None:
    with pytest.raises(InputError, match="The 'loss' parameter of FGSM must be one of") as info:
        mallory.create("fgsm", loss="hinge")
    assert "'hinge'" in str(info.value) and "'ce'" in str(info.value)
    with pytest.raises(InputError, match="The 'batch_size' parameter of FGSM must be an int >= 1"):
        mallory.create("fgsm", batch_size=0)
    with pytest.raises(InputError, match="FGSM has no parameter 'epsilon'"):
        mallory.create("fgsm", epsilon=0.3)
    with pytest.raises(InputError, match="No attack named 'fgsn'"):
        mallory.create("fgsn")


# ---------------------------------------------------------------- failing systems
class Flaky(nn.Module):
    """Answers ``calls`` forward passes, then fails like a crashed inference server."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)
        self.calls = calls

    def forward(self, x: Tensor) -> Tensor:
        if self.calls <= 0:
            raise RuntimeError("out of memory on the inference server")
        self.calls -= 1
        return self.linear(x.flatten(1))


def test_system_raising_during_attack_is_reported(x: Tensor, y: Tensor) -> None:
    # one forward pass for TorchModel's probe; then the server is down for good
    system = TorchModel(Flaky(calls=1), input_shape=SHAPE, name="flaky-server")
    result = fgsm()(Oracle(system, white_box()), x, y)
    assert result.error is not None
    for word in ("'flaky-server'", "RuntimeError", "inference server"):
        assert word in result.error
    assert torch.equal(result.interrupted_mask, torch.ones(N, dtype=torch.bool))
    # nothing was seen: no success is claimed, the inputs are returned as they were
    assert not bool(result.success.any())
    assert torch.equal(result.x_adv, x)
    assert result.summary()["error"] == result.error
    assert result.summary()["interrupted"] == N


def test_system_failing_between_chunks(x: Tensor, y: Tensor) -> None:
    # probe, then the first chunk's gradient query; the second chunk and the verdict fail
    system = TorchModel(Flaky(calls=2), input_shape=SHAPE, name="flaky-server")
    oracle = Oracle(system, white_box())
    result = mallory.create("fgsm", batch_size=3)(oracle, x, y)
    assert result.error is not None and "'flaky-server'" in result.error
    assert result.interrupted_mask.tolist() == [False] * 3 + [True] * 3
    assert result.success.shape == (N,) and result.success.dtype == torch.bool
    assert torch.equal(result.queries, oracle.queries_of(torch.arange(N)))


def test_system_returning_nan_during_attack_is_reported(x: Tensor, y: Tensor) -> None:
    def fn(inputs: Tensor) -> Tensor:
        out = inputs.flatten(1)[:, :10]
        return out / (out - out)  # 0/0: NaN

    system = mallory.CallableModel(
        fn, input_shape=SHAPE, num_classes=10, bounds=(0, 1), differentiable=True, name="nan-net"
    )
    result = fgsm()(Oracle(system, white_box()), x, y)
    assert result.error is not None and "'nan-net' returned NaN" in result.error
    assert not bool(result.success.any())


def test_healthy_run_reports_no_error(model: TorchModel, x: Tensor, y: Tensor) -> None:
    result = fgsm()(Oracle(model, white_box()), x, y)
    assert result.error is None
    assert not bool(result.interrupted_mask.any())


# ---------------------------------------------------------------- public API
EXPECTED_API = {
    "Access",
    "AccessError",
    "Attack",
    "AttackResult",
    "Audit",
    "Bounds",
    "CallableModel",
    "Campaign",
    "EvasionAttack",
    "Exposure",
    "FeatureConstraints",
    "Feedback",
    "Flag",
    "Goal",
    "HttpModel",
    "InputError",
    "Judge",
    "Kind",
    "Knowledge",
    "MalloryError",
    "Norm",
    "Oracle",
    "OracleView",
    "Pipeline",
    "Report",
    "SklearnModel",
    "Stage",
    "Store",
    "System",
    "SystemFailure",
    "Targets",
    "ThreatModel",
    "ThreatPlan",
    "TorchModel",
    "__version__",
    "attack_class",
    "audit",
    "build_report",
    "create",
    "default_attacks",
    "flags",
    "label_only",
    "list_attacks",
    "no_knowledge",
    "register",
    "score_based",
    "serve",
    "transfer",
    "white_box",
}


def test_public_api_is_exactly_all() -> None:
    assert set(mallory.__all__) == EXPECTED_API
    assert len(mallory.__all__) == len(set(mallory.__all__)), "duplicates in __all__"
    for name in mallory.__all__:
        assert getattr(mallory, name) is not None, name
    namespace: dict[str, Any] = {}
    exec("from mallory import *", namespace)
    assert set(namespace) - {"__builtins__"} == EXPECTED_API
    assert isinstance(mallory.__version__, str)


def test_error_hierarchy() -> None:
    assert issubclass(mallory.InputError, mallory.MalloryError)
    assert issubclass(mallory.InputError, ValueError)
    assert issubclass(mallory.AccessError, mallory.MalloryError)
    assert issubclass(mallory.SystemFailure, mallory.MalloryError)
    assert not issubclass(mallory.AccessError, ValueError)
