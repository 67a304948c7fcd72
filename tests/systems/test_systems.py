"""Systems: scikit-learn and callable adapters, torch models, pipelines and their stage names."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from torch import Tensor, nn

import mallory
from mallory import (
    Access,
    Bounds,
    CallableModel,
    InputError,
    Oracle,
    Pipeline,
    SklearnModel,
    Stage,
    System,
    SystemFailure,
    TorchModel,
)
from mallory.systems import Output

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    data = load_digits()
    return (data.data / 16.0)[:600], data.target[:600]


@pytest.fixture(scope="module")
def logreg(digits: Any) -> LogisticRegression:
    features, labels = digits
    return LogisticRegression(max_iter=300).fit(features, labels)


def as_inputs(features: np.ndarray[Any, Any]) -> Tensor:
    return torch.from_numpy(features).float().reshape(-1, *SHAPE)


def predicted_index(estimator: Any, features: np.ndarray[Any, Any]) -> Tensor:
    """The estimator's own predictions as positions in ``classes_``."""
    predictions = estimator.predict(features)
    return torch.from_numpy(np.searchsorted(estimator.classes_, predictions))


# ---------------------------------------------------------------- scikit-learn
def test_sklearn_logistic_regression(digits: Any, logreg: LogisticRegression) -> None:
    features, _ = digits
    estimator = logreg
    system = SklearnModel(estimator, input_shape=SHAPE, bounds=(0, 1), name="logreg")
    assert isinstance(system, System)
    assert system.num_classes == 10
    assert system.output is Output.PROBABILITIES
    assert system.input_shape == SHAPE
    assert system.class_names == tuple(str(c) for c in range(10))
    assert [s.name for s in system.stages] == ["model"]
    assert not system.stages[0].differentiable
    x = as_inputs(features[:50])
    out = system.forward(x)
    assert out.shape == (50, 10) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), estimator.predict_proba(features[:50]), rtol=1e-5)
    oracle = Oracle(system, mallory.score_based())
    assert torch.equal(
        oracle.labels(x, torch.arange(50)), predicted_index(estimator, features[:50])
    )
    torch.testing.assert_close(oracle.scores(x, torch.arange(50)), out)
    assert Oracle(system, mallory.white_box()).access is Access.SCORES


def test_sklearn_pipeline_scaler_gradient_boosting(digits: Any) -> None:
    features, labels = digits
    estimator = make_pipeline(
        StandardScaler(), GradientBoostingClassifier(n_estimators=10, max_depth=2, random_state=0)
    ).fit(features, labels)
    system = SklearnModel(estimator, input_shape=SHAPE, bounds=(0, 1))
    assert system.output is Output.PROBABILITIES and system.num_classes == 10
    x = as_inputs(features[:40])
    probs = Oracle(system, mallory.score_based()).scores(x, torch.arange(40))
    np.testing.assert_allclose(probs.numpy(), estimator.predict_proba(features[:40]), rtol=1e-5)
    labels_seen = Oracle(system, mallory.label_only()).labels(x, torch.arange(40))
    assert torch.equal(labels_seen, predicted_index(estimator, features[:40]))


def test_sklearn_binary_svm_decision_function(digits: Any) -> None:
    features, labels = digits
    keep = labels < 2
    names = np.array(["zero", "one"])[labels[keep]]
    estimator = SVC(kernel="rbf", gamma=2.0).fit(features[keep], names)
    assert not hasattr(estimator, "predict_proba")
    system = SklearnModel(estimator, input_shape=SHAPE, bounds=(0, 1), name="svm")
    assert system.output is Output.LOGITS
    assert system.num_classes == 2
    assert system.class_names == ("one", "zero")  # the order of classes_
    x = as_inputs(features[keep][:30])
    logits = system.forward(x).double()
    decision = estimator.decision_function(features[keep][:30])
    np.testing.assert_allclose(logits[:, 1].numpy(), decision / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits[:, 0].numpy(), -decision / 2, rtol=1e-5, atol=1e-6)
    oracle = Oracle(system, mallory.score_based())
    labels_seen = oracle.labels(x, torch.arange(30))
    assert torch.equal(labels_seen, predicted_index(estimator, features[keep][:30]))
    scores = oracle.scores(x, torch.arange(30))
    torch.testing.assert_close(scores.sum(1), torch.ones(30))


def test_sklearn_multiclass_svm_decision_function(digits: Any) -> None:
    features, labels = digits
    estimator = LinearSVC(C=0.5).fit(features, labels)
    system = SklearnModel(estimator, input_shape=SHAPE, bounds=(0, 1))
    assert system.output is Output.LOGITS and system.num_classes == 10
    x = as_inputs(features[:50])
    np.testing.assert_allclose(
        system.forward(x).numpy(), estimator.decision_function(features[:50]), rtol=1e-4, atol=1e-5
    )
    oracle = Oracle(system, mallory.label_only())
    assert torch.equal(
        oracle.labels(x, torch.arange(50)), predicted_index(estimator, features[:50])
    )


def test_sklearn_explicit_method(digits: Any, logreg: LogisticRegression) -> None:
    features, _ = digits
    estimator = logreg
    system = SklearnModel(estimator, input_shape=SHAPE, bounds=(0, 1), method="decision_function")
    assert system.output is Output.LOGITS
    np.testing.assert_allclose(
        system.forward(as_inputs(features[:5])).numpy(),
        estimator.decision_function(features[:5]),
        rtol=1e-4,
        atol=1e-5,
    )


def test_sklearn_bad_configuration(digits: Any, logreg: LogisticRegression) -> None:
    features, labels = digits
    fitted = logreg
    with pytest.raises(InputError, match="'method' parameter of SklearnModel") as info:
        SklearnModel(fitted, input_shape=SHAPE, bounds=(0, 1), method="predict")
    assert "'predict'" in str(info.value)
    with pytest.raises(InputError, match="predict_proba"):
        SklearnModel(
            LinearSVC().fit(features, labels),
            input_shape=SHAPE,
            bounds=(0, 1),
            method="predict_proba",
        )
    with pytest.raises(InputError, match="not fitted"):
        SklearnModel(LogisticRegression(), input_shape=SHAPE, bounds=(0, 1))
    with pytest.raises(InputError, match="predict_proba or decision_function"):
        SklearnModel(StandardScaler().fit(features), input_shape=SHAPE, bounds=(0, 1))


def test_sklearn_estimator_answering_nonsense() -> None:
    class Liar:
        classes_ = np.array([0, 1, 2])

        def predict_proba(self, features: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
            return np.zeros((len(features), 2))

    system = SklearnModel(Liar(), input_shape=(4,), bounds=(0, 1))
    with pytest.raises(SystemFailure, match=r"Liar.predict_proba returned shape \(3, 2\)"):
        Oracle(system, mallory.score_based()).scores(torch.rand(3, 4), torch.arange(3))


# ---------------------------------------------------------------- callable
def test_callable_model() -> None:
    def fn(x: Tensor) -> Tensor:
        return torch.softmax(torch.stack([x.sum(1), -x.sum(1)], dim=1), dim=1)

    system = CallableModel(fn, input_shape=(3,), num_classes=2, bounds=(-1, 1), name="fn")
    assert system.output is Output.PROBABILITIES
    assert [s.name for s in system.stages] == ["model"]
    assert system.deterministic
    x = torch.tensor([[0.5, 0.5, 0.5], [-1.0, 0.0, 0.0]])
    oracle = Oracle(system, mallory.score_based())
    assert oracle.labels(x, torch.arange(2)).tolist() == [0, 1]
    torch.testing.assert_close(oracle.scores(x, torch.arange(2)), fn(x))
    assert oracle.access is Access.SCORES
    random = CallableModel(fn, input_shape=(3,), num_classes=2, bounds=(-1, 1), deterministic=False)
    assert not random.deterministic
    assert "fn" in repr(system) and "model" in repr(system)


def test_callable_model_class_names() -> None:
    system = CallableModel(
        lambda x: x[:, :2].softmax(1),
        input_shape=(2,),
        num_classes=2,
        bounds=(0, 1),
        class_names=["cat", "dog"],
    )
    assert system.class_names == ("cat", "dog")
    with pytest.raises(InputError, match="class_names has 3 names for 2 classes"):
        CallableModel(
            lambda x: x, input_shape=(2,), num_classes=2, bounds=(0, 1), class_names=["a", "b", "c"]
        )


# ---------------------------------------------------------------- torch
def test_torch_model_infers_classes_and_sets_eval() -> None:
    module = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 7))
    module.train()
    system = TorchModel(module, input_shape=SHAPE)
    assert system.num_classes == 7
    assert not module.training
    assert system.output is Output.LOGITS
    assert [s.name for s in system.stages] == ["model"]
    x = torch.rand(4, *SHAPE)
    assert torch.equal(system.forward(x), system.forward(x))  # dropout is off
    assert not system.forward(x).requires_grad
    torch.testing.assert_close(system.bounds.lower, torch.tensor(0.0, dtype=torch.float64))


def test_torch_model_preprocess_stage() -> None:
    module = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    system = TorchModel(module, input_shape=SHAPE, preprocess=lambda x: (x - 0.5) / 0.25)
    assert [s.name for s in system.stages] == ["preprocess", "model"]
    x = torch.rand(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(system.forward(x), module((x - 0.5) / 0.25))


def test_torch_model_bad_input() -> None:
    with pytest.raises(InputError, match=r"torch\.nn\.Module"):
        TorchModel(lambda x: x, input_shape=(2,))  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"\(batch, classes\)"):
        TorchModel(nn.Identity(), input_shape=SHAPE)


# ---------------------------------------------------------------- system and bounds validation
def test_system_validation() -> None:
    stage = Stage(name="model", fn=lambda x: x)
    with pytest.raises(InputError, match="at least one stage"):
        System([], input_shape=(2,), bounds=(0, 1), num_classes=2)
    with pytest.raises(InputError, match="unique"):
        System([stage, stage], input_shape=(2,), bounds=(0, 1), num_classes=2)
    with pytest.raises(InputError, match="input_shape"):
        System([stage], input_shape=(0,), bounds=(0, 1), num_classes=2)
    with pytest.raises(InputError, match="num_classes"):
        System([stage], input_shape=(2,), bounds=(0, 1), num_classes=1)


def test_bounds_validation_and_use() -> None:
    with pytest.raises(InputError, match="lower < upper"):
        Bounds.of((1, 0))
    with pytest.raises(InputError, match="pair"):
        Bounds.of(0.5)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="do not fit"):
        Bounds.of((torch.zeros(3), torch.ones(3)), (2,))
    per_feature = Bounds.of((torch.tensor([0.0, -1.0]), torch.tensor([1.0, 0.0])), (2,))
    x = torch.tensor([[2.0, 2.0], [0.5, -0.5]])
    assert torch.equal(per_feature.clamp(x), torch.tensor([[1.0, 0.0], [0.5, -0.5]]))
    assert per_feature.outside(x).tolist() == [True, False]
    assert per_feature.to_dict() == {"lower": [0.0, -1.0], "upper": [1.0, 0.0]}
    assert Bounds.of((0, 255)).to_dict() == {"lower": 0.0, "upper": 255.0}
    assert Bounds.of(per_feature) is per_feature
    torch.testing.assert_close(per_feature.width, torch.tensor([1.0, 1.0], dtype=torch.float64))


# ---------------------------------------------------------------- pipelines
def tiny_torch(name: str = "torch-model", features: int = 4, classes: int = 3) -> TorchModel:
    torch.manual_seed(0)
    return TorchModel(nn.Linear(features, classes), input_shape=(features,), name=name)


def test_pipeline_stage_names() -> None:
    quantize = Stage(name="quantize", fn=lambda x: torch.round(x * 4) / 4, differentiable=False)
    system = Pipeline([quantize, tiny_torch()])
    assert [s.name for s in system.stages] == ["quantize", "model"]
    clash = Pipeline([Stage(name="model", fn=lambda x: x), tiny_torch(name="net")])
    assert [s.name for s in clash.stages] == ["model", "net.model"]
    twice = Pipeline(
        [Stage(name="blur", fn=lambda x: x), Stage(name="blur", fn=lambda x: x), tiny_torch()]
    )
    assert [s.name for s in twice.stages] == ["blur", "stage.blur", "model"]
    # a renamed stage keeps its properties
    bpda = Stage(name="model", fn=lambda x: x, differentiable=False, surrogate=None, defense=True)
    renamed = Pipeline([bpda, tiny_torch(name="net")]).stages[0]
    assert renamed.name == "model" and renamed.defense and renamed.surrogate is None


def test_pipeline_renamed_stage_keeps_flags() -> None:
    defense = Stage(
        name="model",
        fn=lambda x: x,
        differentiable=False,
        deterministic=False,
        surrogate=None,
        defense=True,
    )
    head = CallableModel(
        lambda x: x[:, :3].softmax(1), input_shape=(4,), num_classes=3, bounds=(0, 1), name="head"
    )
    # the callable's own stage is called "model" too: it gets the system's prefix
    system = Pipeline([defense, head])
    first, second = system.stages
    assert (first.name, second.name) == ("model", "head.model")
    assert not first.differentiable and not first.deterministic and first.defense
    assert not system.deterministic


def test_pipeline_duplicate_after_renaming_raises() -> None:
    parts: list[Stage | System] = [
        Stage(name="stage.x", fn=lambda x: x),
        Stage(name="x", fn=lambda x: x),
        Stage(name="x", fn=lambda x: x),
        tiny_torch(),
    ]
    with pytest.raises(InputError, match=r"Duplicate stage name 'stage\.x'"):
        Pipeline(parts)


def test_pipeline_validation() -> None:
    with pytest.raises(InputError, match="last part must be a System"):
        Pipeline([])
    with pytest.raises(InputError, match="last part must be a System"):
        Pipeline([tiny_torch(), Stage(name="after", fn=lambda x: x)])
    with pytest.raises(InputError, match="Stage or System"):
        Pipeline([lambda x: x, tiny_torch()])  # type: ignore[list-item]


def test_pipeline_forward_shape_bounds_and_classes() -> None:
    model = tiny_torch(classes=5)
    double = Stage(name="double", fn=lambda x: 2 * x)
    system = Pipeline([double, model], name="doubled")
    assert system.input_shape == (4,)
    assert system.num_classes == 5
    assert system.name == "doubled"
    torch.testing.assert_close(system.bounds.upper, model.bounds.upper)
    x = torch.rand(3, 4)
    torch.testing.assert_close(system.forward(x), model.forward(2 * x))
    own = Pipeline([double, model], input_shape=(4,), bounds=(-1, 1))
    assert own.bounds.to_dict() == {"lower": -1.0, "upper": 1.0}
    assert Oracle(system, mallory.white_box()).labels(x, torch.arange(3)).shape == (3,)


def test_pipeline_of_systems_chains_them() -> None:
    def to_four(x: Tensor) -> Tensor:
        return x.repeat(1, 2)

    first = CallableModel(
        to_four, input_shape=(2,), num_classes=4, bounds=(0, 1), output="logits", name="features"
    )
    system = Pipeline([first, tiny_torch()])
    assert [s.name for s in system.stages] == ["model", "torch-model.model"]
    assert system.input_shape == (2,)
    x = torch.rand(3, 2)
    torch.testing.assert_close(system.forward(x), tiny_torch().forward(to_four(x)))
