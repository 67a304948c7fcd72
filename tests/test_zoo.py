"""The zoo: datasets shipped inside installed packages, model recipes and their cache."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import sklearn
import torch

from mallory.errors import InputError
from mallory.systems import SklearnModel, System, TorchModel
from mallory.zoo import (
    cache_dir,
    list_datasets,
    list_models,
    load_dataset,
    load_model,
)
from mallory.zoo import models as zoo_models
from mallory.zoo.cache import write_atomically

SIZES = {"mnist": (4000, 1000), "digits": (1438, 359), "phishing": (1000, 250)}
# Measured test accuracies: mnist-cnn 97.7-98.0% (by thread count), digits-mlp 96.1%,
# phishing-gb 94.4%, phishing-logreg 89.6%. Thresholds leave a few test samples of slack.
MIN_ACCURACY = {"mnist-cnn": 0.97, "digits-mlp": 0.95, "phishing-gb": 0.92, "phishing-logreg": 0.87}
FAST_MODELS = ["digits-mlp", "phishing-logreg"]


def accuracy(system: System, dataset: str) -> float:
    data = load_dataset(dataset, "test")
    return float((system.forward(data.x).argmax(1) == data.y).float().mean())


def dataset_of(model: str) -> str:
    return next(r.dataset for r in list_models() if r.name == model)


def rows(x: torch.Tensor, y: torch.Tensor) -> Counter[tuple[bytes, int]]:
    """The samples as a multiset, to compare splits whatever their order."""
    return Counter((row.numpy().tobytes(), int(label)) for row, label in zip(x, y, strict=True))


def test_list_datasets() -> None:
    assert list_datasets() == ["digits", "mnist", "phishing"]


@pytest.mark.parametrize("name", list_datasets())
@pytest.mark.parametrize("split", ["train", "test", "all"])
def test_dataset_shapes_dtypes_and_bounds(name: str, split: str) -> None:
    data = load_dataset(name, split)
    train, test = SIZES[name]
    assert len(data) == {"train": train, "test": test, "all": train + test}[split]
    assert data.x.shape == (len(data), *data.input_shape)
    assert data.x.dtype == torch.float32
    assert data.y.dtype == torch.int64
    assert data.y.shape == (len(data),)
    assert data.bounds == (0.0, 1.0)
    assert data.x.min() >= 0.0 and data.x.max() <= 1.0
    assert data.x.max() == 1.0  # scaled to fill the box, not squeezed into part of it
    assert set(data.y.tolist()) == set(range(len(data.class_names)))
    if data.feature_names is not None:
        assert len(data.feature_names) == data.input_shape[0]


def test_dataset_metadata() -> None:
    assert load_dataset("mnist").input_shape == (1, 28, 28)
    assert load_dataset("digits").input_shape == (1, 8, 8)
    assert load_dataset("digits").class_names == tuple("0123456789")
    phishing = load_dataset("phishing")
    assert phishing.input_shape == (9,)
    assert phishing.class_names == ("legitimate", "phishing")
    assert (
        phishing.feature_names is not None
        and phishing.feature_names[0] == "empty_server_form_handler"
    )
    assert load_dataset("mnist").feature_names is None


@pytest.mark.parametrize("name", list_datasets())
def test_splits_partition_the_data_in_proportion(name: str) -> None:
    train, test, everything = (load_dataset(name, s) for s in ("train", "test", "all"))
    assert rows(train.x, train.y) + rows(test.x, test.y) == rows(everything.x, everything.y)
    # stratified: each class is split 80/20, to within one sample
    for label in range(len(everything.class_names)):
        total = int((everything.y == label).sum())
        assert abs(int((test.y == label).sum()) - 0.2 * total) <= 1


@pytest.mark.parametrize("name", list_datasets())
def test_splits_are_deterministic_and_fresh(name: str) -> None:
    first = load_dataset(name, "train")
    first.x.fill_(0.5)  # a caller changing its tensors changes nothing for the next caller
    second, third = load_dataset(name, "train"), load_dataset(name, "train")
    assert torch.equal(second.x, third.x) and torch.equal(second.y, third.y)
    assert not torch.equal(second.x, first.x)


def test_test_split_mixes_classes() -> None:
    # mnist ships sorted by digit; a head of the test split must not be all zeros
    assert len(set(load_dataset("mnist", "test").head(20).y.tolist())) > 3


def test_head() -> None:
    data = load_dataset("digits")
    head = data.head(5)
    assert len(head) == 5
    assert torch.equal(head.x, data.x[:5]) and torch.equal(head.y, data.y[:5])
    assert head.class_names == data.class_names and head.input_shape == data.input_shape
    assert len(data.head(10**6)) == len(data)


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_head_rejects_bad_counts(n: Any) -> None:
    with pytest.raises(InputError, match=r"'n' parameter of Dataset\.head"):
        load_dataset("digits").head(n)


def test_unknown_dataset_and_split() -> None:
    with pytest.raises(InputError, match="digits, mnist, phishing"):
        load_dataset("cifar10")
    with pytest.raises(InputError, match="'train', 'test' or 'all'"):
        load_dataset("digits", "validation")


def test_list_models() -> None:
    recipes = list_models()
    assert [r.name for r in recipes] == sorted(MIN_ACCURACY)
    for recipe in recipes:
        assert recipe.dataset in list_datasets()
        assert recipe.kind in ("torch", "sklearn")
        assert recipe.description


def test_unknown_model() -> None:
    with pytest.raises(InputError, match="digits-mlp, mnist-cnn"):
        load_model("resnet50", progress=False)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(r.name, marks=pytest.mark.slow) if r.name == "mnist-cnn" else r.name
        for r in list_models()
    ],
)
def test_model_accuracy(name: str) -> None:
    recipe = next(r for r in list_models() if r.name == name)
    system = load_model(name, progress=False)
    data = load_dataset(recipe.dataset)
    assert isinstance(system, {"torch": TorchModel, "sklearn": SklearnModel}[recipe.kind])
    assert system.name == name
    assert system.input_shape == data.input_shape
    assert system.class_names == data.class_names
    assert accuracy(system, recipe.dataset) >= MIN_ACCURACY[name]
    if isinstance(system, TorchModel):
        assert not system.module.training
        assert all(p.dtype == torch.float32 for p in system.module.parameters())


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLORY_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    load_model("phishing-logreg", progress=False)
    assert [p.name for p in (tmp_path / "models").iterdir()] == [
        f"phishing-logreg-v1-sklearn{sklearn.__version__}.pkl"
    ]
    monkeypatch.delenv("MALLORY_CACHE")
    assert cache_dir().name.lower() == "mallory"


def refuse_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("trained although the model was cached")

    monkeypatch.setattr(zoo_models._TorchTraining, "train", refuse)
    monkeypatch.setattr(zoo_models._SklearnTraining, "train", refuse)


@pytest.mark.parametrize("name", FAST_MODELS)
def test_second_load_comes_from_the_cache(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first = load_model(name, cache_dir=tmp_path)
    err = capsys.readouterr().err
    assert f"trained {name}: test accuracy" in err and "cached at" in err
    assert len(list((tmp_path / "models").iterdir())) == 1

    refuse_training(monkeypatch)
    second = load_model(name, cache_dir=tmp_path)
    assert capsys.readouterr() == ("", "")
    x = load_dataset(dataset_of(name)).x
    assert torch.equal(first.forward(x), second.forward(x))


@pytest.mark.parametrize("name", FAST_MODELS)
def test_corrupt_cache_file_is_retrained(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained = load_model(name, cache_dir=tmp_path, progress=False)
    (path,) = (tmp_path / "models").iterdir()
    path.write_bytes(path.read_bytes()[:100])  # truncated, as by a crash without atomic writes
    with pytest.warns(UserWarning, match="could not be loaded"):
        retrained = load_model(name, cache_dir=tmp_path, progress=False)
    refuse_training(monkeypatch)
    reloaded = load_model(name, cache_dir=tmp_path, progress=False)  # saved again, loads clean
    x = load_dataset(dataset_of(name)).x
    assert torch.equal(trained.forward(x), retrained.forward(x))
    assert torch.equal(trained.forward(x), reloaded.forward(x))


def test_training_is_seeded_and_leaves_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    one = load_model("digits-mlp", cache_dir=tmp_path / "one", progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    load_model("digits-mlp", cache_dir=tmp_path / "one", progress=False)  # from the cache
    assert torch.equal(torch.get_rng_state(), state)
    two = load_model("digits-mlp", cache_dir=tmp_path / "two", progress=False)
    assert isinstance(one, TorchModel) and isinstance(two, TorchModel)
    for a, b in zip(
        one.module.state_dict().values(), two.module.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_no_output_without_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    load_model("phishing-logreg", cache_dir=tmp_path, progress=False)
    assert capsys.readouterr() == ("", "")


def test_unwritable_cache_warns_and_still_returns_the_model(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="Could not cache phishing-logreg"):
        system = load_model("phishing-logreg", cache_dir=blocked, progress=False)
    assert accuracy(system, "phishing") >= MIN_ACCURACY["phishing-logreg"]


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "models" / "model.pt"

    def old(file: BinaryIO) -> None:
        file.write(b"old")

    def crash(file: BinaryIO) -> None:
        file.write(b"half")
        raise RuntimeError("crash mid-write")

    write_atomically(path, old)
    with pytest.raises(RuntimeError, match="crash mid-write"):
        write_atomically(path, crash)
    assert path.read_bytes() == b"old"
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]
