"""Surrogates: models the attacker builds and owns, to attack white-box and transfer from.

Two ways to get one:

* :func:`train_surrogate` trains on the attacker's own labelled data (no query to the target);
* :func:`extract_surrogate` buys labels from the target through an
  :class:`~mallory.access.oracle.Oracle` and grows the query set by Jacobian-based
  augmentation (Papernot, McDaniel, Goodfellow, Jha, Celik and Swami, "Practical Black-Box
  Attacks against Machine Learning", AsiaCCS 2017).

A :class:`Surrogate` becomes a white-box system with :func:`surrogate_system`, and a private
white-box oracle with :func:`surrogate_oracle` (what the ``transfer`` attack runs its inner
attack on). All training is seeded: the same seed gives the same surrogate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mallory.access.oracle import Oracle
from mallory.errors import InputError, bad_param
from mallory.params import Interval, Options, check_values, constraints
from mallory.systems import Bounds, TorchModel
from mallory.systems.base import NUM_CLASSES
from mallory.threat import Goal, Targets, ThreatModel, white_box

BATCH = 64
LEARNING_RATE = 1e-3


class Architecture(StrEnum):
    """The kind of network a surrogate is."""

    CNN = "cnn"  # two conv + max-pool blocks and two linear layers (images (c, h, w) only)
    MLP = "mlp"  # two hidden layers of 200 units (Papernot et al.'s MNIST substitute)


ARCHITECTURE = Options(Architecture)
EPOCHS = Interval(low=1, integral=True)
SEED = Interval(low=0, integral=True)
"""The constraints of :func:`train_surrogate`'s parameters (campaign files read them too)."""


@dataclass(frozen=True, eq=False)
class Surrogate:
    """A model the attacker owns (eval mode), and how it was obtained.

    ``source`` is ``"own-data"`` (trained on the attacker's labelled data) or ``"extraction"``
    (trained on labels bought from the target); ``extraction_queries`` counts the label queries
    spent on the target (0 for own data). ``fit_accuracy`` is the surrogate's accuracy on the
    labels it was trained on (for extraction: its agreement with the target on the query set);
    ``training_size`` is how many labelled inputs that was.
    """

    module: nn.Module
    input_shape: tuple[int, ...]
    bounds: Bounds
    num_classes: int
    architecture: Architecture
    source: str
    extraction_queries: int = 0
    fit_accuracy: float = math.nan
    training_size: int = 0

    def predict(self, x: Tensor) -> Tensor:
        """The surrogate's labels for ``x`` (no query to anyone)."""
        with torch.no_grad():
            return self.module(x.to(_dtype_of(self.module))).argmax(1)

    def to_dict(self) -> dict[str, Any]:
        """A small JSON-ready description (the module itself is left out)."""
        return {
            "source": self.source,
            "architecture": self.architecture.value,
            "extraction_queries": self.extraction_queries,
            "training_size": self.training_size,
            "fit_accuracy": self.fit_accuracy,
        }


# ------------------------------------------------------------------------ networks
def _network(architecture: Architecture, input_shape: tuple[int, ...], classes: int) -> nn.Module:
    if architecture is Architecture.MLP:
        width = math.prod(input_shape)
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(width, 200),
            nn.ReLU(),
            nn.Linear(200, 200),
            nn.ReLU(),
            nn.Linear(200, classes),
        )
    if len(input_shape) != 3:
        raise InputError(
            f"The 'cnn' surrogate needs image inputs of shape (channels, height, width); got "
            f"{input_shape}. Use architecture='mlp'."
        )
    channels, height, width = input_shape
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (height // 4) * (width // 4), 128),
        nn.ReLU(),
        nn.Linear(128, classes),
    )


def _dtype_of(module: nn.Module) -> torch.dtype:
    param = next(iter(module.parameters()), None)
    return param.dtype if param is not None else torch.float32


def fit_network(
    architecture: Architecture,
    x: Tensor,
    y: Tensor,
    classes: int,
    epochs: int,
    seed: int,
) -> tuple[nn.Module, float]:
    """A fresh network trained on (x, y) with Adam; seeded initialization and shuffling."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = _network(architecture, tuple(x.shape[1:]), classes)
    x = x.to(_dtype_of(module))
    order_gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(module.parameters(), lr=LEARNING_RATE)
    module.train()
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=order_gen)
            for start in range(0, len(x), BATCH):
                batch = order[start : start + BATCH]
                optimizer.zero_grad()
                F.cross_entropy(module(x[batch]), y[batch]).backward()
                optimizer.step()
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)  # an attack differentiates w.r.t. inputs only
    with torch.no_grad():
        accuracy = float((module(x).argmax(1) == y).double().mean()) if len(x) else math.nan
    return module, accuracy


# ------------------------------------------------------------------------ validation
def _as_inputs(owner: str, x: Any, bounds: Bounds | None) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2 or not len(x):
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InputError(
            f"{owner} needs a non-empty float tensor of inputs of shape (n, *input_shape); got "
            f"{got}."
        )
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{owner}: the inputs hold NaN or infinite values.")
    if bounds is not None and bool(bounds.outside(x).any()):
        raise InputError(
            f"{owner}: {int(bounds.outside(x).sum())} inputs lie outside the bounds "
            f"{bounds.to_dict()}; scale the data into the bounds first."
        )
    return x.detach()


# ------------------------------------------------------------------------ own data
def train_surrogate(
    x: Tensor,
    y: Tensor,
    *,
    architecture: Architecture | str = Architecture.CNN,
    epochs: int = 5,
    seed: int = 0,
    num_classes: int | None = None,
    bounds: Bounds | tuple[Any, Any] = (0.0, 1.0),
) -> Surrogate:
    """A surrogate trained on the attacker's own labelled data; no query to the target.

    ``x`` is ``(n, *input_shape)`` inside ``bounds``, ``y`` the ``(n,)`` class indices;
    ``num_classes`` defaults to ``y.max() + 1``. The threat model this fits is
    :func:`mallory.transfer`: the attacker knows the task and holds data from its distribution,
    not the target's parameters. Be honest about what the data is: a surrogate trained on the
    very split the target was trained on (the zoo's ``mnist-cnn`` learned from the MNIST train
    split) shares more with the target than an outsider's data would, and transfers better.

    Example::

        data = load_dataset("mnist", "train").head(2000)
        surrogate = train_surrogate(data.x, data.y, architecture="cnn", epochs=3, seed=1)
    """
    owner = "train_surrogate"
    arch: Architecture = ARCHITECTURE.check(owner, "architecture", architecture)
    EPOCHS.check(owner, "epochs", epochs)
    SEED.check(owner, "seed", seed)
    if not isinstance(x, Tensor):
        raise bad_param(owner, "x", "a float tensor of shape (n, *input_shape)", type(x).__name__)
    box = Bounds.of(bounds, tuple(x.shape[1:]), owner=owner)
    x = _as_inputs(owner, x, box)
    if not isinstance(y, Tensor) or y.shape != (len(x),) or y.is_floating_point():
        raise InputError(f"{owner} needs y: {len(x)} integer class indices, one per input.")
    y = y.long()
    classes = int(y.max()) + 1 if num_classes is None else num_classes
    NUM_CLASSES.check(owner, "num_classes", classes)
    if int(y.min()) < 0 or int(y.max()) >= classes:
        raise InputError(f"{owner}: y must hold classes 0..{classes - 1}.")
    module, accuracy = fit_network(arch, x, y, classes, epochs, seed)
    return Surrogate(
        module=module,
        input_shape=tuple(x.shape[1:]),
        bounds=box,
        num_classes=classes,
        architecture=arch,
        source="own-data",
        extraction_queries=0,
        fit_accuracy=accuracy,
        training_size=len(x),
    )


# ------------------------------------------------------------------------ extraction
def jacobian_augment(
    module: nn.Module, x: Tensor, labels: Tensor, *, lam: float, bounds: Bounds
) -> Tensor:
    """Papernot et al.'s Jacobian-based dataset augmentation: ``x`` followed by
    ``clamp(x + lam * sign(d F_label(x) / d x))``, where ``F_label`` is the surrogate's logit of
    each input's label. Twice as many rows as ``x``; deterministic; no query to the target
    (autograd on the attacker's own module only)."""
    x = x.detach()
    inputs = x.to(_dtype_of(module), copy=True).requires_grad_(True)
    with torch.enable_grad():
        logits = module(inputs)
        picked = logits.gather(1, labels.long().view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(picked, inputs)
    step = bounds.clamp(x + lam * grad.sign().to(x))
    return torch.cat([x, step]).detach()


def extract_surrogate(
    oracle: Oracle,
    seed_x: Tensor,
    *,
    rounds: int = 4,
    lam: float = 0.1,
    architecture: Architecture | str = Architecture.CNN,
    epochs: int = 10,
    seed: int = 0,
) -> Surrogate:
    """Model extraction by Jacobian-based dataset augmentation: the registered attack
    ``"jacobian-extraction"`` (:class:`~mallory.attacks.extraction.jacobian.JacobianExtraction`)
    run on ``oracle``, and its surrogate. Its queries are rows of no sample in the oracle's
    event log: they count against a total budget, never a per-sample one.

    Example::

        target = Oracle(load_model("mnist-cnn"), transfer("linf", 0.3, queries_total=1500))
        surrogate = extract_surrogate(target, load_dataset("mnist", "train").x[:150], rounds=3)
    """
    from mallory.attacks.base import attack_class, create

    given = {"rounds": rounds, "lam": lam, "architecture": architecture, "epochs": epochs}
    check_values("extract_surrogate", constraints(attack_class("jacobian-extraction")), given)
    SEED.check("extract_surrogate", "seed", seed)
    attack = create("jacobian-extraction", **given)
    surrogate: Surrogate = attack(oracle, seed_x, rng=seed).surrogate
    return surrogate


# ------------------------------------------------------------------------ attacking it
def surrogate_system(surrogate: Surrogate, *, name: str | None = None) -> TorchModel:
    """The surrogate as a white-box system (logits, gradients) to attack."""
    return TorchModel(
        surrogate.module,
        input_shape=surrogate.input_shape,
        bounds=surrogate.bounds,
        num_classes=surrogate.num_classes,
        name=name or f"surrogate ({surrogate.source}, {surrogate.architecture.value})",
    )


def surrogate_oracle(surrogate: Surrogate, threat: ThreatModel) -> Oracle:
    """A private white-box oracle on the surrogate, with ``threat``'s perturbation set and goal.

    The attacker owns the surrogate, so it knows everything about it and has no budget there.
    A targeted goal becomes ``targets='given'``: the targets drawn for the real target are the
    ones to pass on.
    """
    targets = Targets.GIVEN if threat.goal is Goal.TARGETED else Targets.RANDOM
    return Oracle(
        surrogate_system(surrogate),
        white_box(
            threat.norm,
            threat.eps,
            name="surrogate",
            goal=threat.goal,
            targets=targets,
            features=threat.features,
        ),
    )


def fits(surrogate: Surrogate, input_shape: Sequence[int], num_classes: int) -> str | None:
    """Why the surrogate cannot stand in for a system of that input shape and class count,
    or None when it can."""
    if tuple(surrogate.input_shape) != tuple(input_shape):
        return (
            f"the surrogate takes inputs of shape {surrogate.input_shape}, the target "
            f"{tuple(input_shape)}"
        )
    if surrogate.num_classes != num_classes:
        return f"the surrogate has {surrogate.num_classes} classes, the target {num_classes}"
    return None
