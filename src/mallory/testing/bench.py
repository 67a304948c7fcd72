"""The kit's own bench: a small MLP trained on scikit-learn's 8x8 digits (about a second).

The same bench on every machine and every call: a seeded split (1,400 training images, the
rest for testing), a seeded initialization and 80 full-batch Adam steps, under a forked torch
random state so the caller's is left alone. It is built once per process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mallory.systems.base import System
from mallory.systems.torch import TorchModel

SHAPE = (1, 8, 8)
SAMPLES = 40  # the samples attacked in a check
TRAIN = 1400  # the images the model was trained on (members, for membership inference)
_MIN_ACCURACY = 0.9


@dataclass(frozen=True, eq=False)
class Bench:
    """A system and samples to check attacks on: ``x`` and ``y`` are the samples attacked
    (``(n, *input_shape)`` inside the system's bounds, and their labels); ``members_x`` and
    ``members_y`` are samples the system was trained on (None when unknown), for membership
    inference and poisoning."""

    system: System
    x: Tensor
    y: Tensor
    members_x: Tensor | None = None
    members_y: Tensor | None = None


@functools.cache
def _trained() -> tuple[TorchModel, Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[:TRAIN], order[TRAIN:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        optimizer = torch.optim.Adam(module.parameters(), lr=0.02)
        for _ in range(80):
            optimizer.zero_grad()
            nn.functional.cross_entropy(module(x[train]), y[train]).backward()
            optimizer.step()
    system = TorchModel(module, input_shape=SHAPE, bounds=(0.0, 1.0), name="digits-mlp")
    with torch.no_grad():
        accuracy = float((module(x[test]).argmax(1) == y[test]).double().mean())
    if accuracy <= _MIN_ACCURACY:
        raise RuntimeError(
            f"The kit's digits model reached {accuracy:.3f} test accuracy; it should exceed "
            f"{_MIN_ACCURACY}. Something changed in torch or scikit-learn's digits."
        )
    return system, x[test], y[test], x[train], y[train]


def digits_bench(samples: int = SAMPLES) -> Bench:
    """The digits bench with the first ``samples`` test images (fresh tensors on every call;
    the model is trained once per process)."""
    system, x, y, members_x, members_y = _trained()
    return Bench(
        system,
        x[:samples].clone(),
        y[:samples].clone(),
        members_x[:samples].clone(),
        members_y[:samples].clone(),
    )
