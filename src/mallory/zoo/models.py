"""Small model recipes, trained on first use and then loaded from a cache.

Every recipe trains on its dataset's train split with a fixed seed, in seconds on a laptop CPU,
without touching the global random state. The trained model is written atomically to
``<cache>/models/`` (see :func:`mallory.zoo.cache_dir`): a torch state dict as
``<name>-v<version>.pt``, a fitted scikit-learn estimator as a pickle named after the
scikit-learn version that wrote it. A cache file that cannot be loaded is reported with a
warning, and the model is trained and saved again.

Cached pickles are trusted: whoever can write the cache folder can run code in the process
that loads them, as with any pickle.
"""

from __future__ import annotations

import pickle
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import sklearn
import torch
from rich.console import Console
from rich.progress import Progress
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from mallory.errors import InputError
from mallory.systems import SklearnModel, System, TorchModel
from mallory.zoo import cache
from mallory.zoo.datasets import BOUNDS, Dataset, dataset_spec, load_dataset

SEED = 0


@dataclass(frozen=True)
class ModelRecipe:
    """A named recipe: which dataset it trains on, and ``kind`` ``"torch"`` or ``"sklearn"``."""

    name: str
    dataset: str
    kind: str
    description: str


class _Training(Protocol):
    """How one kind of model is trained, stored and wrapped as a System."""

    @property
    def recipe(self) -> ModelRecipe: ...
    @property
    def file_name(self) -> str: ...
    def read(self, path: Path) -> Any: ...
    def train(self, data: Dataset, progress: Progress) -> Any: ...
    def write(self, model: Any, file: IO[bytes]) -> None: ...
    def system(self, model: Any) -> System: ...


@dataclass(frozen=True, kw_only=True)
class _TorchTraining:
    """Adam with cross-entropy, mini-batches shuffled by a seeded generator.

    The last ``cooldown`` epochs run at a tenth of ``lr``, which steadies the final weights.
    """

    recipe: ModelRecipe
    network: Callable[[], nn.Module]
    epochs: int
    lr: float
    cooldown: int = 0
    batch_size: int = 64
    version: int = 1

    @property
    def file_name(self) -> str:
        return f"{self.recipe.name}-v{self.version}.pt"

    def read(self, path: Path) -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # building draws initial weights
            module = self.network().float()
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return module.eval()

    def train(self, data: Dataset, progress: Progress) -> nn.Module:
        # Only the CPU generator is forked and seeded: forking CUDA's would start CUDA.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(SEED)
            return self._train(data, progress)

    def _train(self, data: Dataset, progress: Progress) -> nn.Module:
        module = self.network().float().train()
        optimizer = torch.optim.Adam(module.parameters(), lr=self.lr)
        order = torch.Generator().manual_seed(SEED)
        batches = -(-len(data) // self.batch_size)
        task = progress.add_task(self.recipe.name, total=self.epochs * batches)
        for epoch in range(self.epochs):
            progress.update(task, description=f"{self.recipe.name} epoch {epoch + 1}/{self.epochs}")
            if epoch == self.epochs - self.cooldown:
                for group in optimizer.param_groups:
                    group["lr"] = self.lr / 10
            for batch in torch.randperm(len(data), generator=order).split(self.batch_size):
                loss = nn.functional.cross_entropy(module(data.x[batch]), data.y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                progress.advance(task)
        return module.eval()

    def write(self, model: nn.Module, file: IO[bytes]) -> None:
        torch.save(model.state_dict(), file)

    def system(self, model: nn.Module) -> System:
        spec = dataset_spec(self.recipe.dataset)
        return TorchModel(
            model,
            input_shape=spec.input_shape,
            bounds=BOUNDS,
            class_names=spec.class_names,
            name=self.recipe.name,
        )


@dataclass(frozen=True, kw_only=True)
class _SklearnTraining:
    """A scikit-learn estimator fitted on the flattened features; it must seed itself."""

    recipe: ModelRecipe
    estimator: Any
    version: int = 1

    @property
    def file_name(self) -> str:
        return f"{self.recipe.name}-v{self.version}-sklearn{sklearn.__version__}.pkl"

    def read(self, path: Path) -> Any:
        with path.open("rb") as file:
            model = pickle.load(file)
        if type(model) is not type(self.estimator):
            raise TypeError(f"expected a {type(self.estimator).__name__}, found {model!r}")
        return model

    def train(self, data: Dataset, progress: Progress) -> Any:
        task = progress.add_task(f"{self.recipe.name} fit", total=1)
        features = data.x.reshape(len(data), -1).numpy().astype(np.float64)
        model = sklearn.clone(self.estimator).fit(features, data.y.numpy())
        progress.advance(task)
        return model

    def write(self, model: Any, file: IO[bytes]) -> None:
        pickle.dump(model, file, protocol=pickle.HIGHEST_PROTOCOL)

    def system(self, model: Any) -> System:
        spec = dataset_spec(self.recipe.dataset)
        return SklearnModel(
            model,
            input_shape=spec.input_shape,
            bounds=BOUNDS,
            class_names=spec.class_names,
            name=self.recipe.name,
        )


def _mnist_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 5 * 5, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def _digits_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


_TRAININGS: tuple[_Training, ...] = (
    _TorchTraining(
        recipe=ModelRecipe(
            "mnist-cnn", "mnist", "torch", "two conv layers and two linear layers, 98% on mnist"
        ),
        network=_mnist_cnn,
        epochs=12,
        lr=1e-3,
        cooldown=2,
    ),
    _TorchTraining(
        recipe=ModelRecipe("digits-mlp", "digits", "torch", "MLP 64-64-10, 96% on digits"),
        network=_digits_mlp,
        epochs=30,
        lr=3e-3,
    ),
    _SklearnTraining(
        recipe=ModelRecipe(
            "phishing-logreg",
            "phishing",
            "sklearn",
            "standardized logistic regression, 90% on phishing",
        ),
        estimator=make_pipeline(StandardScaler(), LogisticRegression()),
    ),
    _SklearnTraining(
        recipe=ModelRecipe(
            "phishing-gb", "phishing", "sklearn", "gradient-boosted trees, 94% on phishing"
        ),
        estimator=GradientBoostingClassifier(random_state=SEED),
    ),
)
_RECIPES = {training.recipe.name: training for training in _TRAININGS}
if len(_RECIPES) != len(_TRAININGS):
    raise RuntimeError("Two zoo model recipes share a name.")


def list_models() -> list[ModelRecipe]:
    """Every recipe :func:`load_model` accepts, sorted by name."""
    return sorted((t.recipe for t in _TRAININGS), key=lambda recipe: recipe.name)


def load_model(name: str, *, cache_dir: Path | None = None, progress: bool = True) -> System:
    """The model of a recipe as a System: from the cache, or trained and cached first.

    ``cache_dir`` overrides :func:`mallory.zoo.cache_dir` (models go in its ``models``
    folder). With ``progress``, training shows a progress bar and a summary line on stderr;
    loading from the cache prints nothing. Torch models come in float32 on the CPU, in eval mode.
    """
    training = _RECIPES.get(name)
    if training is None:
        raise InputError(
            f"Unknown zoo model {name!r}; expected one of {', '.join(sorted(_RECIPES))}. "
            "Pick one of those names (mallory.zoo.list_models() describes them)."
        )
    folder = (cache_dir if cache_dir is not None else cache.cache_dir()) / "models"
    path = folder / training.file_name
    if path.exists():
        try:
            return training.system(training.read(path))
        except Exception as error:  # any unreadable file, whatever the reader raised: retrain
            warnings.warn(
                f"The cached model {path} could not be loaded ({type(error).__name__}: {error}); "
                "training it again.",
                stacklevel=2,
            )
    return _train_and_save(training, path, progress)


def _train_and_save(training: _Training, path: Path, progress: bool) -> System:
    name = training.recipe.name
    data = load_dataset(training.recipe.dataset, "train")
    console = Console(stderr=True)
    start = time.perf_counter()
    with Progress(console=console, disable=not progress) as bar:
        model = training.train(data, bar)
    seconds = time.perf_counter() - start
    system = training.system(model)
    try:
        cache.write_atomically(path, lambda file: training.write(model, file))
        where = f"cached at {path}"
    except OSError as error:
        warnings.warn(f"Could not cache {name} at {path}: {error}", stacklevel=3)
        where = "not cached"
    if progress:
        accuracy = _accuracy(system, load_dataset(training.recipe.dataset, "test"))
        console.print(
            f"trained {name}: test accuracy {accuracy:.1%} in {seconds:.1f} s, {where}",
            markup=False,
            highlight=False,
            soft_wrap=True,  # keep the path on one line, whole, for copying
        )
    return system


def _accuracy(system: System, data: Dataset) -> float:
    predicted = system.forward(data.x).argmax(dim=1)
    return float((predicted == data.y).float().mean())
