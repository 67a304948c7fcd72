"""The architectures a training recipe can build, sized by one ``width``.

========  ==============================================================  ====================
name      layers                                                          zoo twin
========  ==============================================================  ====================
``cnn``   conv 3x3 (w) - ReLU - maxpool 2 - conv 3x3 (2w) - ReLU -        ``mnist-cnn`` at
          maxpool 2 - linear (4w) - ReLU - linear (classes)               ``width=32``
``mlp``   flatten - linear (w) - ReLU - linear (classes)                  ``digits-mlp`` at
                                                                          ``width=64``
========  ==============================================================  ====================

The CNN takes images ``(channels, height, width)`` of at least 10x10 pixels; the MLP takes any
input shape. With ``dropout`` > 0 a dropout layer follows each pooling layer and the hidden
linear layer (both architectures).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import StrEnum

import torch
from torch import nn

from mallory.errors import InputError


class Architecture(StrEnum):
    """The network a recipe trains."""

    CNN = "cnn"  # the zoo's MNIST CNN shape
    MLP = "mlp"  # one hidden layer


def build_network(
    architecture: Architecture,
    *,
    width: int,
    input_shape: Sequence[int],
    num_classes: int,
    dropout: float = 0.0,
) -> nn.Module:
    """A freshly initialized float32 network (it draws its weights from torch's default
    generator: callers that want a fixed network fork and seed it)."""
    shape = tuple(input_shape)

    def drop() -> list[nn.Module]:
        return [nn.Dropout(dropout)] if dropout > 0 else []

    if architecture is Architecture.MLP:
        layers: list[nn.Module] = [
            nn.Flatten(),
            nn.Linear(math.prod(shape), width),
            nn.ReLU(),
            *drop(),
            nn.Linear(width, num_classes),
        ]
        return nn.Sequential(*layers).float()
    if len(shape) != 3 or min(shape[1:]) < 10:
        raise InputError(
            f"The 'cnn' architecture needs images of shape (channels, height, width) of at "
            f"least 10x10 pixels; got inputs of shape {shape}. Use architecture='mlp' for "
            "smaller or non-image inputs."
        )
    features = nn.Sequential(
        nn.Conv2d(shape[0], width, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        *drop(),
        nn.Conv2d(width, 2 * width, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        *drop(),
        nn.Flatten(),
    )
    with torch.no_grad():
        flat = int(features(torch.zeros((1, *shape))).shape[1])
    return nn.Sequential(
        *features,
        nn.Linear(flat, 4 * width),
        nn.ReLU(),
        *drop(),
        nn.Linear(4 * width, num_classes),
    ).float()
