"""The training recipe base: configuration in, a model out, cached on disk.

A recipe is a frozen keyword-only dataclass of its configuration. ``recipe.train(data)``
returns a :class:`~mallory.systems.TorchModel` trained on ``data`` (a
:class:`~mallory.zoo.Dataset`): the data is always an argument, never loaded inside, so
poisoned training data enters through the same call. The trained weights are cached in
``<cache>/defenses/`` (see :func:`mallory.zoo.cache_dir`) under a SHA-256 of the recipe's
class, its full configuration, :data:`RECIPE_VERSION`, and the data's content (inputs,
labels, shape, bounds and class names): the same recipe on the same data loads from the
cache, any change trains anew. A cache file that cannot be loaded is reported with a warning
and trained again; files are written atomically.

Training is the defender's side: it runs its own loops on the CPU, with Adam and
cross-entropy on mini-batches shuffled by a seeded generator. It draws every random number
(initial weights, dropout, shuffling, noise, random starts) from streams derived from
``seed`` by name, and never touches torch's global random state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from rich.console import Console
from rich.progress import Progress
from torch import Tensor, nn

from mallory.attacks.params import choice, integer, real
from mallory.defenses.networks import Architecture, build_network
from mallory.errors import InputError
from mallory.params import check_fields
from mallory.systems import Output, TorchModel
from mallory.zoo import cache
from mallory.zoo.datasets import Dataset

RECIPE_VERSION = 1
"""Part of every cache key: raise it when a change to the training code changes the model
that a configuration produces, so stale cache files are not loaded."""

LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


def stream(seed: int, name: str) -> torch.Generator:
    """A CPU generator for the random stream ``name`` of ``seed`` (independent by name)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@contextmanager
def seeded(seed: int, name: str) -> Iterator[None]:
    """Run with torch's default CPU generator seeded from the stream ``name`` of ``seed``, and
    restore its state after (layer initialisation and dropout draw from it)."""
    with torch.random.fork_rng(devices=[]):  # forking CUDA's generators would start CUDA
        torch.default_generator.manual_seed(stream(seed, name).initial_seed())
        yield


def fingerprint(data: Dataset) -> str:
    """A SHA-256 of a dataset's content: inputs, labels, shape, bounds and class names."""
    digest = hashlib.sha256()
    bounds = [torch.as_tensor(b).tolist() for b in data.bounds]
    header = [data.name, list(data.input_shape), bounds, list(data.class_names)]
    digest.update(json.dumps(header).encode())
    for tensor in (data.x.to(torch.float32), data.y.to(torch.int64)):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    """Base of the training recipes; see the module docstring.

    Subclasses set ``name`` and ``paper``, add their fields, and override :meth:`_loss` (the
    loss of one mini-batch), or :meth:`_fit` for a training that is not one loop.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    output: ClassVar[Output] = Output.LOGITS  # what the deployed module returns

    architecture: Architecture = choice(
        Architecture.CNN,
        help="the network: 'cnn' (the zoo's MNIST CNN shape, images of 10x10 or more) or 'mlp'",
    )
    width: int = integer(
        32, low=1, help="CNN: channels of the first conv layer (32: the zoo's); MLP: hidden units"
    )
    epochs: int = integer(10, low=1, help="passes over the training data")
    lr: float = real(1e-3, low=0.0, low_open=True, help="Adam's learning rate")
    batch_size: int = integer(64, low=1, help="samples per mini-batch")
    seed: int = integer(0, low=0, help="seeds every random draw of the training")

    def __post_init__(self) -> None:
        check_fields(self)

    # ---------------------------------------------------------------- identity
    def config(self) -> dict[str, Any]:
        """The full configuration as JSON values (enums as their values)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, Architecture) else value
        return out

    def key(self, data: Dataset) -> str:
        """The cache key of this recipe trained on ``data`` (hex SHA-256)."""
        _check_data(data, type(self).__name__)
        identity = {
            "recipe": f"{type(self).__module__}.{type(self).__qualname__}",
            "version": RECIPE_VERSION,
            "config": self.config(),
            "data": fingerprint(data),
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def cache_path(self, data: Dataset, cache_dir: Path | None = None) -> Path:
        """Where the model of this recipe trained on ``data`` is cached."""
        return self._path(data, self.key(data), cache_dir)

    def _path(self, data: Dataset, key: str, cache_dir: Path | None) -> Path:
        folder = (cache_dir if cache_dir is not None else cache.cache_dir()) / "defenses"
        return folder / f"{self._model_name(data)}-{key[:20]}.pt"

    # ---------------------------------------------------------------- the call
    def train(
        self, data: Dataset, *, progress: bool = True, cache_dir: Path | None = None
    ) -> TorchModel:
        """The model this recipe trains on ``data``: loaded from the cache, or trained and
        cached first.

        ``data.x`` has shape ``(n, *input_shape)`` inside ``data.bounds`` and ``data.y`` holds
        class indices. ``cache_dir`` overrides :func:`mallory.zoo.cache_dir` (files go in its
        ``defenses`` folder). With ``progress``, training shows a rich progress bar and a
        summary line on stderr; loading prints nothing. The model comes in float32 on the CPU,
        in eval mode, named ``<data>-<architecture>-<recipe>``.
        """
        key = self.key(data)  # checks the data first
        path = self._path(data, key, cache_dir)
        if path.exists():
            try:
                return self._system(self._read(path, data, key), data)
            except Exception as error:  # whatever the reader raised: train again
                warnings.warn(
                    f"The cached model {path} could not be loaded ({type(error).__name__}: "
                    f"{error}); training it again.",
                    stacklevel=2,
                )
        return self._train_and_save(data, key, path, progress)

    def _train_and_save(self, data: Dataset, key: str, path: Path, progress: bool) -> TorchModel:
        console = Console(stderr=True)
        started = time.perf_counter()
        with Progress(console=console, disable=not progress) as bar, seeded(self.seed, "torch"):
            module = self._fit(data, bar).eval()
        seconds = time.perf_counter() - started
        state = {"key": key, "state": module.state_dict(), "seconds": seconds}
        try:
            cache.write_atomically(path, lambda file: torch.save(state, file))
            where = f"cached at {path}"
        except OSError as error:
            warnings.warn(f"Could not cache the trained model at {path}: {error}", stacklevel=3)
            where = "not cached"
        if progress:
            console.print(
                f"trained {self._model_name(data)} ({type(self).__name__}) in {seconds:.1f} s, "
                f"{where}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        return self._system(module, data)

    def _read(self, path: Path, data: Dataset, key: str) -> nn.Module:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or saved.get("key") != key:
            raise ValueError("the file holds another recipe's model")
        with seeded(self.seed, "torch"):
            module = self._deployed(data)
        module.load_state_dict(saved["state"])
        return module.eval()

    def _system(self, module: nn.Module, data: Dataset) -> TorchModel:
        return TorchModel(
            module,
            input_shape=data.input_shape,
            bounds=data.bounds,
            num_classes=len(data.class_names),
            output=self.output,
            class_names=data.class_names,
            name=self._model_name(data),
        )

    def _model_name(self, data: Dataset) -> str:
        return f"{data.name}-{self.architecture.value}-{self.name}"

    # ---------------------------------------------------------------- training
    def _network(self, data: Dataset, *, dropout: float = 0.0) -> nn.Module:
        return build_network(
            self.architecture,
            width=self.width,
            input_shape=data.input_shape,
            num_classes=len(data.class_names),
            dropout=dropout,
        )

    def _deployed(self, data: Dataset) -> nn.Module:
        """An untrained module of the shape :meth:`_fit` returns (to load cached weights)."""
        return self._network(data)

    def _optimizer(self, module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(module.parameters(), lr=self.lr)

    def _fit(self, data: Dataset, bar: Progress) -> nn.Module:
        """Train and return the deployed module (runs with the default generator seeded)."""
        module = self._network(data)
        self._epochs(module, data, self._loss, bar, self.name)
        return module

    def _loss(self, module: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The loss of one mini-batch (the module is in train mode)."""
        return nn.functional.cross_entropy(module(x), y)

    def _epochs(
        self,
        module: nn.Module,
        data: Dataset,
        loss: Callable[[nn.Module, Tensor, Tensor], Tensor],
        bar: Progress,
        label: str,
        targets: Tensor | None = None,
    ) -> None:
        """``epochs`` passes of Adam over shuffled mini-batches of ``loss(module, x, t)``,
        with ``t`` the labels, or rows of ``targets`` when given (soft labels)."""
        optimizer = self._optimizer(module)
        order = stream(self.seed, f"{label}.shuffle")
        labels = data.y if targets is None else targets
        batches = -(-len(data) // self.batch_size)
        task = bar.add_task(label, total=self.epochs * batches)
        module.train()
        for epoch in range(self.epochs):
            bar.update(task, description=f"{label} epoch {epoch + 1}/{self.epochs}")
            for rows in torch.randperm(len(data), generator=order).split(self.batch_size):
                value = loss(module, data.x[rows], labels[rows])
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
                bar.advance(task)
        module.eval()


def _check_data(data: object, owner: str) -> None:
    if not isinstance(data, Dataset):
        raise InputError(
            f"{owner}.train needs a mallory.zoo.Dataset (inputs x, labels y, shape, bounds, "
            f"class names); got {type(data).__name__}. Load one with mallory.zoo.load_dataset "
            "or build one with mallory.zoo.Dataset(...)."
        )
    n = len(data.y)
    if n < 1 or data.x.dim() < 2 or len(data.x) != n:
        raise InputError(
            f"{owner}.train needs as many inputs as labels, at least one; got x of shape "
            f"{tuple(data.x.shape)} and y of shape {tuple(data.y.shape)}."
        )
    if tuple(data.x.shape[1:]) != tuple(data.input_shape):
        raise InputError(
            f"{owner}.train got inputs of shape {tuple(data.x.shape[1:])} for a dataset that "
            f"declares input_shape {tuple(data.input_shape)}."
        )
    if not data.x.is_floating_point() or data.y.dtype != torch.int64:
        raise InputError(
            f"{owner}.train needs float inputs and int64 labels; got {data.x.dtype} and "
            f"{data.y.dtype}."
        )
    classes = len(data.class_names)
    if bool((data.y < 0).any()) or bool((data.y >= classes).any()):
        raise InputError(f"{owner}.train needs labels in 0..{classes - 1} (its class names).")
