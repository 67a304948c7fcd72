"""A whole scikit-learn pipeline attacked in problem space, in Python and exported to ONNX.

The system is a ``Pipeline``: a ``ColumnTransformer`` that one-hot encodes two categorical
columns and scales the others, then gradient-boosted trees. The attacker edits the raw row (a
phishing page's nine attributes as codes 0, 1, 2: phishy, suspicious, legitimate-looking),
the pipeline computes the features from it, and the ``cheapest`` search finds the least costly
edit that flips the decision. Its price must be the brute-force minimum (every edit of the
mutable attributes enumerated here), for the pipeline wrapped by ``SklearnModel`` and for the
same pipeline exported with skl2onnx and run by onnxruntime (``OnnxModel``).

skl2onnx converts a ``OneHotEncoder`` only for integer or string categories: the codes are
given as integer categories, while the input stays a float tensor. Its classifier has two
outputs (the label, then the probabilities); ``OnnxModel`` reads the first, so the label output
is dropped from the graph before it is saved.
"""

from __future__ import annotations

import functools
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from mallory import Oracle, System, create, no_knowledge
from mallory.systems import SklearnModel
from mallory.threat.features import FeatureConstraints
from mallory.zoo import load_dataset

CATEGORICAL = ("https", "age_of_domain")
MUTABLE = (
    "empty_server_form_handler",
    "https",
    "request_from_other_domain",
    "long_url",
    "age_of_domain",
)
PRICES = {
    "empty_server_form_handler": 5.0,
    "request_from_other_domain": 3.0,
    "https": 2.0,
    "long_url": 4.0,
    "age_of_domain": 150.0,
}
UNIT_PRICES = {"https": 30.0, "long_url": 4.0, "request_from_other_domain": 10.0}  # per code step
BOUNDS = (0.0, 2.0)
SAMPLES = 30


@functools.cache
def _pipeline() -> tuple[object, Tensor, Tensor, tuple[str, ...]]:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    train, test = load_dataset("phishing", "train"), load_dataset("phishing", "test")
    names = train.feature_names
    assert names is not None
    categorical = [names.index(n) for n in CATEGORICAL]
    numeric = [i for i in range(len(names)) if i not in categorical]
    categories = [[0, 1, 2], [0, 2]]  # https takes three codes, age_of_domain two
    pipeline = Pipeline(
        [
            (
                "features",
                ColumnTransformer(
                    [
                        ("onehot", OneHotEncoder(categories=categories), categorical),
                        ("scale", StandardScaler(), numeric),
                    ]
                ),
            ),
            ("trees", GradientBoostingClassifier(n_estimators=40, random_state=0)),
        ]
    )
    pipeline.fit(2 * train.x.numpy(), train.y.numpy())
    return pipeline, 2 * test.x[:SAMPLES], test.y[:SAMPLES], names


def constraints(names: tuple[str, ...]) -> FeatureConstraints:
    codes = {n: [0.0, 2.0] if n == "age_of_domain" else [0.0, 1.0, 2.0] for n in MUTABLE}
    return FeatureConstraints.by_name(
        names,
        MUTABLE,
        codes,
        directions=dict.fromkeys(MUTABLE, "up"),
        prices=PRICES,
        unit_prices=UNIT_PRICES,
    )


def predict(system: System, x: Tensor) -> Tensor:
    with torch.no_grad():
        return system.forward(x).argmax(1)


def brute_force(system: System, x: Tensor, y: Tensor, features: FeatureConstraints) -> Tensor:
    """The cheapest evasion of each row over every edit of the mutable attributes."""
    cols = list(features.mutable)
    grid = torch.tensor(list(itertools.product(*features.values)), dtype=x.dtype)
    edits = x.repeat_interleave(len(grid), 0)
    edits[:, cols] = grid.repeat(len(x), 1)
    original = x.repeat_interleave(len(grid), 0)
    ok = features.feasible(edits, original)
    ok &= predict(system, edits) != y.repeat_interleave(len(grid))
    cost = features.cost(edits, original).masked_fill(~ok, math.inf)
    return cost.reshape(len(x), len(grid)).amin(1)


def attack(system: System, x: Tensor, y: Tensor, features: FeatureConstraints) -> Tensor:
    result = create("cheapest", search="exact")(
        Oracle(system, no_knowledge(features=features, queries=None)), x, y
    )
    won = result.success
    assert bool(won.any())
    assert bool(features.feasible(result.x_adv[won], x[won]).all())
    assert torch.equal(predict(system, result.x_adv) != y, won)
    return result.edit_cost


@pytest.fixture(scope="module")
def sklearn_case() -> tuple[SklearnModel, Tensor, Tensor, FeatureConstraints]:
    pipeline, x, y, names = _pipeline()
    system = SklearnModel(pipeline, input_shape=(9,), bounds=BOUNDS, name="phishing-pipeline")
    right = predict(system, x) == y
    return system, x[right], y[right], constraints(names)


def test_a_pipeline_is_attacked_end_to_end_in_problem_space(
    sklearn_case: tuple[SklearnModel, Tensor, Tensor, FeatureConstraints],
) -> None:
    system, x, y, features = sklearn_case
    cost = attack(system, x, y, features)
    best = brute_force(system, x, y, features)
    assert torch.equal(torch.isfinite(cost), torch.isfinite(best))
    torch.testing.assert_close(cost, best, rtol=0, atol=1e-9)


def test_the_pipeline_exported_to_onnx_gives_the_same_cheapest_evasions(
    sklearn_case: tuple[SklearnModel, Tensor, Tensor, FeatureConstraints], tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    skl2onnx = pytest.importorskip("skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType

    from mallory.systems.onnx import OnnxModel

    system, x, y, features = sklearn_case
    pipeline = system.estimator
    model = skl2onnx.to_onnx(
        pipeline,
        initial_types=[("x", FloatTensorType([None, 9]))],
        options={id(pipeline): {"zipmap": False}},
    )
    assert len(model.graph.output) == 2  # the label, then the probabilities
    del model.graph.output[0]  # OnnxModel reads the first output: keep the probabilities
    path = tmp_path / "pipeline.onnx"
    path.write_bytes(model.SerializeToString())
    exported = OnnxModel(path, bounds=BOUNDS, output="probabilities", name="pipeline-onnx")
    assert exported.input_shape == (9,)
    # the same decisions on every edit the search can make
    grid = torch.tensor(list(itertools.product(*features.values)), dtype=x.dtype)
    rows = x.repeat_interleave(len(grid), 0)
    rows[:, list(features.mutable)] = grid.repeat(len(x), 1)
    assert torch.equal(predict(exported, rows), predict(system, rows))
    probabilities = exported.forward(x).double()
    expected = torch.from_numpy(np.asarray(pipeline.predict_proba(x.double().numpy())))
    torch.testing.assert_close(probabilities, expected, atol=1e-5, rtol=0)
    assert torch.equal(attack(exported, x, y, features), attack(system, x, y, features))
