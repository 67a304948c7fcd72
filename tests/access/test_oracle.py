"""The Oracle: exposure, per-sample accounting, budgets, cost, BPDA, and failures of the system."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import Tensor, nn

import mallory
from mallory import (
    Access,
    AccessError,
    CallableModel,
    InputError,
    Oracle,
    Pipeline,
    SklearnModel,
    Stage,
    SystemFailure,
    TorchModel,
)

FEATURES, CLASSES = 6, 4


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, CLASSES))


@pytest.fixture(scope="module")
def module() -> nn.Module:
    return mlp()


@pytest.fixture
def model(module: nn.Module) -> TorchModel:
    return TorchModel(module, input_shape=(FEATURES,), bounds=(0.0, 1.0), name="tiny-mlp")


@pytest.fixture
def x() -> Tensor:
    return torch.rand(5, FEATURES, generator=torch.Generator().manual_seed(1))


def ids(*values: int) -> Tensor:
    return torch.tensor(values, dtype=torch.int64)


def grad_of(module: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """d cross-entropy / d x computed directly with PyTorch."""
    x = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(module(x), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    return g


def ce(y: Tensor):  # type: ignore[no-untyped-def]
    return lambda logits: nn.functional.cross_entropy(logits, y, reduction="none")


def quantize(x: Tensor) -> Tensor:
    return torch.round(x * 8) / 8


# ---------------------------------------------------------------- construction and access
def test_oracle_rejects_non_system_and_non_threat(model: TorchModel) -> None:
    with pytest.raises(InputError, match="System"):
        Oracle(nn.Linear(2, 2), mallory.white_box())  # type: ignore[arg-type]
    with pytest.raises(InputError, match="ThreatModel"):
        Oracle(model, {"norm": "linf"})  # type: ignore[arg-type]


def test_access_levels(model: TorchModel) -> None:
    assert Oracle(model, mallory.white_box()).access is Access.GRADIENTS
    assert Oracle(model, mallory.score_based()).access is Access.SCORES
    assert Oracle(model, mallory.label_only()).access is Access.LABELS
    assert Oracle(model, mallory.transfer()).access is Access.LABELS
    assert Access.LABELS < Access.SCORES < Access.GRADIENTS


def test_require_refuses_with_hint(model: TorchModel) -> None:
    oracle = Oracle(model, mallory.label_only())
    oracle.require(Access.LABELS, "probe")
    with pytest.raises(AccessError, match="probe needs scores") as info:
        oracle.require(Access.SCORES, "probe")
    assert "label" in str(info.value) and "score_based" in str(info.value)
    with pytest.raises(AccessError, match="needs gradients") as info:
        oracle.require(Access.GRADIENTS, "probe")
    assert "white_box" in str(info.value)


# ---------------------------------------------------------------- exposure
def test_logits_only_under_logits_exposure(model: TorchModel, module: nn.Module, x: Tensor) -> None:
    oracle = Oracle(model, mallory.white_box())
    with torch.no_grad():
        expected = module(x)
    torch.testing.assert_close(oracle.logits(x, torch.arange(5)), expected)
    for threat in (
        mallory.score_based(),
        mallory.label_only(),
        mallory.score_based(exposure="top-k", top_k=2),
        mallory.white_box(exposure="scores"),
    ):
        with pytest.raises(AccessError, match="Logits are not exposed") as info:
            Oracle(model, threat).logits(x, torch.arange(5))
        assert threat.exposure.value in str(info.value)


def test_scores_are_probabilities(model: TorchModel, module: nn.Module, x: Tensor) -> None:
    for threat in (mallory.score_based(), mallory.white_box()):
        probs = Oracle(model, threat).scores(x, torch.arange(5))
        assert probs.shape == (5, CLASSES)
        assert bool((probs >= 0).all()) and bool((probs <= 1).all())
        torch.testing.assert_close(probs.sum(1), torch.ones(5))
        with torch.no_grad():
            torch.testing.assert_close(probs, module(x).softmax(1))


def test_top_k_hides_all_but_k(model: TorchModel, x: Tensor) -> None:
    full = Oracle(model, mallory.score_based()).scores(x, torch.arange(5))
    for k in (1, 2, 3):
        shown = Oracle(model, mallory.score_based(exposure="top-k", top_k=k)).scores(
            x, torch.arange(5)
        )
        visible = torch.isfinite(shown)
        assert torch.equal(visible.sum(1), torch.full((5,), k))
        top = full.topk(k, dim=1).indices
        assert bool(visible.gather(1, top).all())
        assert torch.equal(shown[visible], full[visible])
    everything = Oracle(model, mallory.score_based(exposure="top-k", top_k=CLASSES + 3))
    torch.testing.assert_close(everything.scores(x, torch.arange(5)), full)


def test_label_exposure_refuses_scores(model: TorchModel, module: nn.Module, x: Tensor) -> None:
    oracle = Oracle(model, mallory.label_only())
    with pytest.raises(AccessError, match="scores"):
        oracle.scores(x, torch.arange(5))
    assert oracle.total_queries == 0
    labels = oracle.labels(x, torch.arange(5))
    with torch.no_grad():
        assert torch.equal(labels, module(x).argmax(1))
    assert labels.dtype == torch.int64


def test_label_exposure_refuses_scores_even_with_perfect_knowledge(
    model: TorchModel, x: Tensor
) -> None:
    oracle = Oracle(model, mallory.white_box(exposure="label"))
    with pytest.raises(AccessError):
        oracle.scores(x, torch.arange(5))


def test_probability_output_systems(x: Tensor) -> None:
    def probabilities(inputs: Tensor) -> Tensor:
        return torch.softmax(inputs[:, :3] * 4, dim=1)

    system = CallableModel(probabilities, input_shape=(FEATURES,), num_classes=3, bounds=(0, 1))
    oracle = Oracle(system, mallory.ThreatModel(knowledge="zero", exposure="logits"))
    torch.testing.assert_close(oracle.scores(x, torch.arange(5)), probabilities(x))
    torch.testing.assert_close(oracle.logits(x, torch.arange(5)).softmax(1), probabilities(x))


# ---------------------------------------------------------------- counting
def test_counts_queries_per_sample_with_duplicates(model: TorchModel, x: Tensor) -> None:
    oracle = Oracle(model, mallory.white_box())
    oracle.labels(x[:4], ids(0, 1, 1, 2))
    assert oracle.queries_of(ids(0, 1, 2, 3)).tolist() == [1, 2, 1, 0]
    assert oracle.total_queries == 4
    oracle.scores(x[:2], ids(2, 2))
    oracle.logits(x[:1], ids(7))
    assert oracle.queries_of(ids(0, 1, 2, 7)).tolist() == [1, 2, 3, 1]
    assert oracle.gradients_of(ids(0, 1, 2, 7)).tolist() == [0, 0, 0, 0]
    y = torch.zeros(3, dtype=torch.int64)
    oracle.gradient(x[:3], ids(0, 0, 5), ce(y))
    assert oracle.queries_of(ids(0, 5)).tolist() == [3, 1]
    assert oracle.gradients_of(ids(0, 1, 5)).tolist() == [2, 0, 1]
    assert oracle.total_queries == 10
    assert oracle.total_gradients == 3
    # the ledger grows for unseen ids and reads zero there
    assert oracle.queries_of(ids(1000)).tolist() == [0]


def test_ledger_reads_are_copies(model: TorchModel, x: Tensor) -> None:
    oracle = Oracle(model, mallory.white_box())
    oracle.labels(x[:1], ids(0))
    seen = oracle.queries_of(ids(0))
    seen += 100
    assert oracle.queries_of(ids(0)).tolist() == [1]


def test_money_and_seconds(model: TorchModel, x: Tensor) -> None:
    oracle = Oracle(model, mallory.score_based(price_per_query=0.25))
    oracle.scores(x, torch.arange(5))
    oracle.labels(x[:2], ids(0, 1))
    assert oracle.total_queries == 7
    assert oracle.money == pytest.approx(7 * 0.25)
    assert oracle.seconds > 0
    per_sample = oracle.seconds_of(torch.arange(5))
    assert bool((per_sample > 0).all())
    assert float(per_sample.sum()) == pytest.approx(oracle.seconds)
    assert Oracle(model, mallory.white_box()).money == 0.0


# ---------------------------------------------------------------- budgets
def test_per_sample_budget(model: TorchModel, module: nn.Module, x: Tensor) -> None:
    oracle = Oracle(model, mallory.score_based(queries=2))
    oracle.labels(x[:2], ids(0, 1))
    oracle.labels(x[:2], ids(0, 1))
    assert oracle.remaining_of(ids(0, 1, 2)).tolist() == [0.0, 0.0, 2.0]
    labels = oracle.labels(x[:3], ids(0, 1, 2))
    with torch.no_grad():
        truth = module(x[:3]).argmax(1)
    assert labels.tolist() == [-1, -1, int(truth[2])]
    scores = oracle.scores(x[:3], ids(0, 1, 2))
    assert bool(torch.isnan(scores[:2]).all())
    with torch.no_grad():
        torch.testing.assert_close(scores[2], module(x[2:3]).softmax(1)[0])
    # refused rows are not charged: the ledger never passes the budget
    assert oracle.queries_of(ids(0, 1, 2)).tolist() == [2, 2, 2]
    assert oracle.total_queries == 6


def test_per_sample_budget_with_duplicate_ids_in_one_call(model: TorchModel, x: Tensor) -> None:
    oracle = Oracle(model, mallory.score_based(queries=2))
    labels = oracle.labels(x[:4], ids(3, 3, 3, 4))
    assert labels[:2].ge(0).all() and labels[3] >= 0
    assert labels[2] == -1
    assert oracle.queries_of(ids(3, 4)).tolist() == [2, 1]


def test_zero_budget_refuses_everything(model: TorchModel, x: Tensor) -> None:
    oracle = Oracle(model, mallory.score_based(queries=0))
    assert oracle.labels(x, torch.arange(5)).tolist() == [-1] * 5
    assert oracle.total_queries == 0


def test_gradient_under_per_sample_budget(model: TorchModel, module: nn.Module, x: Tensor) -> None:
    oracle = Oracle(model, mallory.white_box(queries_per_sample=1))
    y = torch.tensor([0, 1, 2], dtype=torch.int64)
    oracle.labels(x[:1], ids(0))  # sample 0 has spent its only query
    answer = oracle.gradient(x[:3], ids(0, 1, 2), ce(y))
    assert bool(torch.isnan(answer.logits[0]).all()) and bool(torch.isnan(answer.loss[0]))
    assert torch.equal(answer.grad[0], torch.zeros(FEATURES))
    torch.testing.assert_close(answer.grad[1:], grad_of(module, x[1:3], y[1:]))
    with torch.no_grad():
        torch.testing.assert_close(answer.logits[1:], module(x[1:3]))
    assert oracle.gradients_of(ids(0, 1, 2)).tolist() == [0, 1, 1]
    assert oracle.queries_of(ids(0, 1, 2)).tolist() == [1, 1, 1]
    # everyone spent: NaN and zero everywhere, nothing charged
    again = oracle.gradient(x[:3], ids(0, 1, 2), ce(y))
    assert bool(torch.isnan(again.logits).all()) and bool(torch.isnan(again.loss).all())
    assert torch.equal(again.grad, torch.zeros(3, FEATURES))
    assert oracle.total_gradients == 2 and oracle.total_queries == 3


def test_total_budget(model: TorchModel, x: Tensor) -> None:
    oracle = Oracle(model, mallory.score_based(queries=None, queries_total=5))
    assert oracle.remaining_of(ids(0)).tolist() == [5.0]
    first = oracle.labels(x[:3], ids(0, 1, 2))
    assert bool((first >= 0).all())
    second = oracle.labels(x[:3], ids(3, 4, 0))
    assert second[:2].ge(0).all() and second[2] == -1
    assert oracle.total_queries == 5
    assert oracle.remaining_of(ids(0, 9)).tolist() == [0.0, 0.0]
    assert oracle.labels(x[:1], ids(9)).tolist() == [-1]


def test_unlimited_budget_reports_inf(model: TorchModel) -> None:
    oracle = Oracle(model, mallory.white_box())
    assert bool(torch.isinf(oracle.remaining_of(ids(0, 1))).all())


# ---------------------------------------------------------------- gradients
def test_gradient_matches_pytorch(model: TorchModel, module: nn.Module, x: Tensor) -> None:
    oracle = Oracle(model, mallory.white_box())
    y = torch.tensor([0, 1, 2, 3, 0])
    answer = oracle.gradient(x, torch.arange(5), ce(y))
    torch.testing.assert_close(answer.grad, grad_of(module, x, y))
    with torch.no_grad():
        torch.testing.assert_close(answer.logits, module(x))
        torch.testing.assert_close(
            answer.loss, nn.functional.cross_entropy(module(x), y, reduction="none")
        )
    assert not answer.logits.requires_grad and not answer.grad.requires_grad
    assert all(p.grad is None for p in module.parameters()), "parameter gradients computed"


def test_zero_and_non_finite_gradients_are_flagged_per_row(model: TorchModel, x: Tensor) -> None:
    oracle = Oracle(model, mallory.white_box())
    y = torch.tensor([0, 1, 2, 3, 0])
    ok = oracle.gradient(x, torch.arange(5), ce(y))
    assert bool((ok.grad.abs().amax(1) > 0).all())

    def spoilt(logits: Tensor) -> Tensor:  # row 1 flat, row 3 NaN, the others as usual
        loss = ce(y)(logits)
        scale = torch.tensor([1.0, 0.0, 1.0, math.nan, 1.0])
        return loss * scale

    answer = oracle.gradient(x, torch.arange(5), spoilt)
    assert bool(torch.isfinite(answer.grad).all()), "a non-finite gradient is answered as zero"
    assert answer.grad[[1, 3]].abs().sum() == 0
    torch.testing.assert_close(answer.grad[[0, 2, 4]], ok.grad[[0, 2, 4]])
    totals = oracle.log.per_sample(torch.arange(5))
    assert totals.zero_gradients.tolist() == [0, 1, 0, 0, 0]
    assert totals.nonfinite_gradients.tolist() == [0, 0, 0, 1, 0]
    assert totals.gradients.tolist() == [2] * 5


def test_gradient_loss_must_be_per_sample(model: TorchModel, x: Tensor) -> None:
    oracle = Oracle(model, mallory.white_box())
    with pytest.raises(InputError, match="one value per input"):
        oracle.gradient(x, torch.arange(5), lambda logits: logits.sum())


@pytest.mark.parametrize(
    ("threat", "reason"),
    [
        (mallory.score_based(), "zero knowledge of stage 'model'"),
        (mallory.label_only(), "zero knowledge of stage 'model'"),
        (mallory.transfer(), "limited knowledge of stage 'model'"),
        (
            mallory.white_box(stage_knowledge={"model": "limited"}),
            "limited knowledge of stage 'model'",
        ),
    ],
)
def test_gradients_refused_without_perfect_knowledge(
    model: TorchModel, x: Tensor, threat: mallory.ThreatModel, reason: str
) -> None:
    oracle = Oracle(model, threat)
    with pytest.raises(AccessError, match="gradient") as info:
        oracle.gradient(x, torch.arange(5), ce(torch.zeros(5, dtype=torch.int64)))
    assert reason in str(info.value)
    assert oracle.total_queries == 0 and oracle.total_gradients == 0


def test_gradients_refused_for_sklearn_even_white_box(x: Tensor) -> None:
    rng = np.random.default_rng(0)
    features = rng.random((60, FEATURES))
    labels = (features[:, 0] > 0.5).astype(int)
    system = SklearnModel(
        LogisticRegression().fit(features, labels),
        input_shape=(FEATURES,),
        bounds=(0, 1),
        name="logreg",
    )
    oracle = Oracle(system, mallory.white_box())
    assert oracle.access is Access.SCORES
    with pytest.raises(AccessError) as info:
        oracle.gradient(x, torch.arange(5), ce(torch.zeros(5, dtype=torch.int64)))
    message = str(info.value)
    assert "logreg" in message and "not differentiable" in message and "surrogate" in message
    assert oracle.total_queries == 0
    # what it does grant still works
    assert oracle.scores(x, torch.arange(5)).shape == (5, 2)


def test_callable_model_gradients_only_when_differentiable(module: nn.Module, x: Tensor) -> None:
    def fn(inputs: Tensor) -> Tensor:
        return module(inputs)

    opaque = CallableModel(fn, input_shape=(FEATURES,), num_classes=CLASSES, bounds=(0, 1))
    with pytest.raises(AccessError, match="not differentiable"):
        Oracle(opaque, mallory.white_box()).gradient(x, torch.arange(5), ce(torch.zeros(5).long()))
    open_box = CallableModel(
        fn,
        input_shape=(FEATURES,),
        num_classes=CLASSES,
        bounds=(0, 1),
        output="logits",
        differentiable=True,
    )
    y = torch.arange(5) % CLASSES
    answer = Oracle(open_box, mallory.white_box()).gradient(x, torch.arange(5), ce(y))
    torch.testing.assert_close(answer.grad, grad_of(module, x, y))


# ---------------------------------------------------------------- BPDA and defenses
def test_bpda_straight_through_identity(model: TorchModel, module: nn.Module, x: Tensor) -> None:
    system = Pipeline(
        [Stage(name="quantize", fn=quantize, differentiable=False), model], name="quantized"
    )
    oracle = Oracle(system, mallory.white_box())
    y = torch.tensor([0, 1, 2, 3, 0])
    answer = oracle.gradient(x, torch.arange(5), ce(y))
    torch.testing.assert_close(answer.grad, grad_of(module, quantize(x), y))
    with torch.no_grad():
        torch.testing.assert_close(answer.logits, module(quantize(x)))
        assert torch.equal(oracle.labels(x, torch.arange(5)), module(quantize(x)).argmax(1))
    # the gradient is not the one at the raw input (the stage really ran)
    assert not torch.allclose(answer.grad, grad_of(module, x, y))


def test_bpda_custom_surrogate(model: TorchModel, module: nn.Module, x: Tensor) -> None:
    def double(inputs: Tensor) -> Tensor:
        return 2 * inputs

    system = Pipeline(
        [Stage(name="quantize", fn=quantize, differentiable=False, surrogate=double), model]
    )
    y = torch.tensor([0, 1, 2, 3, 0])
    answer = Oracle(system, mallory.white_box()).gradient(x, torch.arange(5), ce(y))
    torch.testing.assert_close(answer.grad, 2 * grad_of(module, quantize(x), y))


def test_stage_without_surrogate_refuses_gradients(model: TorchModel, x: Tensor) -> None:
    system = Pipeline(
        [Stage(name="jpeg", fn=quantize, differentiable=False, surrogate=None), model],
        name="guarded",
    )
    oracle = Oracle(system, mallory.white_box())
    assert oracle.access is Access.SCORES
    with pytest.raises(AccessError) as info:
        oracle.gradient(x, torch.arange(5), ce(torch.zeros(5, dtype=torch.int64)))
    assert "'jpeg'" in str(info.value) and "guarded" in str(info.value)
    assert oracle.total_queries == 0


def test_stage_knowledge_of_a_pipeline_stage(model: TorchModel, x: Tensor) -> None:
    system = Pipeline([Stage(name="quantize", fn=quantize, differentiable=False), model])
    threat = mallory.white_box(stage_knowledge={"quantize": "zero"})
    with pytest.raises(AccessError, match="zero knowledge of stage 'quantize'"):
        Oracle(system, threat).gradient(x, torch.arange(5), ce(torch.zeros(5).long()))


def test_non_adaptive_gradients_skip_defense_stages(
    model: TorchModel, module: nn.Module, x: Tensor
) -> None:
    defense = Stage(
        name="quantize", fn=quantize, differentiable=False, surrogate=None, defense=True
    )
    system = Pipeline([defense, model])
    y = torch.tensor([0, 1, 2, 3, 0])
    naive = Oracle(system, mallory.white_box(adaptive=False))
    assert naive.access is Access.GRADIENTS
    answer = naive.gradient(x, torch.arange(5), ce(y))
    torch.testing.assert_close(answer.grad, grad_of(module, x, y))
    # its queries still pass through the defense
    with torch.no_grad():
        assert torch.equal(naive.labels(x, torch.arange(5)), module(quantize(x)).argmax(1))
    # an adaptive attacker must get through it, and there is no surrogate
    with pytest.raises(AccessError, match="'quantize'"):
        Oracle(system, mallory.white_box(adaptive=True)).gradient(x, torch.arange(5), ce(y))
    # with a surrogate, the adaptive attacker's gradient goes through the defense (BPDA)
    bridged = Pipeline([Stage(name="q", fn=quantize, differentiable=False, defense=True), model])
    adaptive = Oracle(bridged, mallory.white_box(adaptive=True)).gradient(x, torch.arange(5), ce(y))
    torch.testing.assert_close(adaptive.grad, grad_of(module, quantize(x), y))


# ---------------------------------------------------------------- failures of the system
def broken_system(kind: str) -> CallableModel:
    def fn(inputs: Tensor) -> Tensor:
        if kind == "raise":
            raise RuntimeError("CUDA is on fire")
        if kind == "nan":
            out = torch.zeros(len(inputs), 3)
            out[0, 0] = math.nan
            return out
        if kind == "inf":
            return torch.full((len(inputs), 3), math.inf)
        if kind == "shape":
            return torch.zeros(len(inputs), 5)
        if kind == "rows":
            return torch.zeros(len(inputs) + 1, 3)
        return np.zeros((len(inputs), 3))  # type: ignore[return-value]

    return CallableModel(
        fn, input_shape=(FEATURES,), num_classes=3, bounds=(0, 1), name=f"broken-{kind}"
    )


def test_system_that_raises(x: Tensor) -> None:
    oracle = Oracle(broken_system("raise"), mallory.score_based())
    with pytest.raises(SystemFailure) as info:
        oracle.scores(x, torch.arange(5))
    message = str(info.value)
    assert "'broken-raise'" in message and "RuntimeError" in message and "on fire" in message
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("nan", ["NaN or infinite", "1 of 5"]),
        ("inf", ["NaN or infinite", "5 of 5"]),
        ("shape", ["(5, 5)", "(5, 3)"]),
        ("rows", ["(6, 3)", "(5, 3)"]),
        ("numpy", ["ndarray"]),
    ],
)
def test_system_that_answers_nonsense(x: Tensor, kind: str, words: list[str]) -> None:
    oracle = Oracle(broken_system(kind), mallory.score_based())
    with pytest.raises(SystemFailure) as info:
        oracle.labels(x, torch.arange(5))
    message = str(info.value)
    assert f"'broken-{kind}'" in message
    for word in words:
        assert word in message, (word, message)


def test_torch_model_that_raises_in_gradient(x: Tensor) -> None:
    class Bomb(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(FEATURES, 3)

        def forward(self, inputs: Tensor) -> Tensor:
            raise ValueError("bad weights")

    system = TorchModel(Bomb(), input_shape=(FEATURES,), num_classes=3, name="bomb")
    with pytest.raises(SystemFailure, match="'bomb' raised ValueError"):
        Oracle(system, mallory.white_box()).gradient(x, torch.arange(5), ce(torch.zeros(5).long()))


# ---------------------------------------------------------------- bad queries
@pytest.mark.parametrize(
    ("change", "words"),
    [
        ("above", ["bounds"]),
        ("below", ["bounds"]),
        ("nan", ["NaN"]),
        ("shape", ["shape", f"(n, {FEATURES})"]),
        ("flat", ["shape"]),
        ("ids", ["3 sample ids"]),
    ],
)
def test_bad_queries_raise_input_error(
    model: TorchModel, x: Tensor, change: str, words: list[str]
) -> None:
    oracle = Oracle(model, mallory.white_box())
    query, sample_ids = x.clone(), torch.arange(5)
    if change == "above":
        query[1, 2] = 1.01
    elif change == "below":
        query[4, 0] = -0.5
    elif change == "nan":
        query[0, 0] = math.nan
    elif change == "shape":
        query = torch.rand(5, FEATURES + 1)
    elif change == "flat":
        query = query.flatten()
    else:
        sample_ids = ids(0, 1, 2)
    for ask in (oracle.labels, oracle.scores, oracle.logits):
        with pytest.raises(InputError) as info:
            ask(query, sample_ids)
        for word in words:
            assert word in str(info.value)
    with pytest.raises(InputError):
        oracle.gradient(query, sample_ids, ce(torch.zeros(len(query), dtype=torch.int64)))
    assert oracle.total_queries == 0 and oracle.total_gradients == 0


def test_queries_on_the_bounds_are_accepted(model: TorchModel) -> None:
    oracle = Oracle(model, mallory.white_box())
    edge = torch.tensor([[0.0] * FEATURES, [1.0] * FEATURES])
    assert oracle.labels(edge, ids(0, 1)).shape == (2,)


# ---------------------------------------------------------------- the attacker's view
def test_view_maps_rows_to_sample_ids(model: TorchModel, x: Tensor) -> None:
    oracle = Oracle(model, mallory.score_based(queries=3))
    view = oracle.bind(ids(5, 9, 2))
    assert len(view) == 3
    assert view.num_classes == CLASSES and view.input_shape == (FEATURES,)
    assert view.access is Access.SCORES
    assert view.norm is oracle.threat.norm and view.eps == oracle.threat.eps
    view.labels(x[:3])
    view.scores(x[1:3], rows=torch.tensor([1, 2]))
    assert oracle.queries_of(ids(5, 9, 2)).tolist() == [1, 2, 2]
    assert view.queries().tolist() == [1, 2, 2]
    assert view.queries(torch.tensor([2])).tolist() == [2]
    assert view.remaining().tolist() == [2.0, 1.0, 1.0]
    with pytest.raises(InputError, match="rows="):
        view.labels(x[:2])


def test_view_gradient_rows(model: TorchModel, module: nn.Module, x: Tensor) -> None:
    oracle = Oracle(model, mallory.white_box())
    view = oracle.bind(ids(10, 11, 12))
    y = torch.tensor([1, 2])
    answer = view.gradient(x[:2], ce(y), rows=torch.tensor([2, 0]))
    torch.testing.assert_close(answer.grad, grad_of(module, x[:2], y))
    assert oracle.gradients_of(ids(10, 11, 12)).tolist() == [1, 0, 1]


# ---------------------------------------------------------------- what the system exposes
def test_threat_model_may_not_grant_more_than_the_system_exposes(module: nn.Module) -> None:
    def one_hot(inputs: Tensor) -> Tensor:
        return nn.functional.one_hot(module(inputs).argmax(1), CLASSES).float()

    api = CallableModel(
        one_hot,
        input_shape=(FEATURES,),
        num_classes=CLASSES,
        bounds=(0, 1),
        exposes="label",
        name="label-api",
    )
    for threat in (
        mallory.score_based(),
        mallory.white_box(),
        mallory.score_based(exposure="top-k", top_k=1),
    ):
        with pytest.raises(AccessError) as info:
            Oracle(api, threat)
        message = str(info.value)
        assert "'label-api'" in message and repr(threat.exposure.value) in message
    oracle = Oracle(api, mallory.label_only())
    x = torch.rand(3, FEATURES, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(oracle.labels(x, torch.arange(3)), module(x).argmax(1))


def test_top_k_system_caps_the_threat_models_k(module: nn.Module) -> None:
    def top2(inputs: Tensor) -> Tensor:
        probs = module(inputs).softmax(1)
        kth = probs.topk(2, dim=1).values[:, -1:]
        return probs.masked_fill(probs < kth, 0.0)

    api = mallory.System(
        [Stage(name="model", fn=top2)],
        input_shape=(FEATURES,),
        bounds=(0, 1),
        num_classes=CLASSES,
        output="probabilities",
        exposes="top-k",
        top_k=2,
        name="top2-api",
    )
    with pytest.raises(AccessError, match=r"top 3 scores.*'top2-api' shows only its top 2"):
        Oracle(api, mallory.score_based(exposure="top-k", top_k=3))
    with pytest.raises(AccessError, match="'top2-api'"):
        Oracle(api, mallory.score_based())
    x = torch.rand(4, FEATURES, generator=torch.Generator().manual_seed(2))
    shown = Oracle(api, mallory.score_based(exposure="top-k", top_k=2)).scores(x, torch.arange(4))
    assert torch.equal(torch.isfinite(shown).sum(1), torch.full((4,), 2))
    assert Oracle(api, mallory.label_only()).labels(x, torch.arange(4)).shape == (4,)
