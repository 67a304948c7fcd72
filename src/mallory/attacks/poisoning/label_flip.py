"""Label flipping: the cheapest poisoning, wrong labels on a share of the training set."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mallory.attacks.base import register
from mallory.attacks.params import integer, real
from mallory.attacks.poisoning.base import PoisoningAttack
from mallory.errors import bad_param
from mallory.zoo.datasets import Dataset


@register("label-flip")
@dataclass(frozen=True, kw_only=True)
class LabelFlip(PoisoningAttack):
    """Give a share of the training samples a wrong label, drawn at random (or one class).

    Biggio, Nelson and Laskov, "Support Vector Machines Under Adversarial Label Noise", ACML
    2011 (random label flips as the baseline of label poisoning).

    Threat model: write access to a share ``rate`` of the training set, no knowledge of the
    model. Each chosen sample gets a uniformly drawn wrong class, or ``target`` when given
    (samples already of that class are not chosen). Seeded.

    Args:
        rate: the share of the training set relabelled (default 0.1).
        target: the class every flipped sample gets (default None: a random wrong class).

    Example::

        poisoned = create("label-flip", rate=0.2)(train_data, rng=0).data
        model = recipe.train(poisoned)
    """

    paper = "Biggio et al., Support Vector Machines Under Adversarial Label Noise, ACML 2011"

    rate: float = real(0.1, low=0.0, high=1.0, help="share of the training set relabelled")
    target: int | None = integer(
        None, low=0, optional=True, help="the class flipped samples get (None: random wrong one)"
    )

    def _poison(
        self, x: Tensor, y: Tensor, data: Dataset, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        classes = len(data.class_names)
        if self.target is not None and self.target >= classes:
            raise bad_param(
                "LabelFlip", "target", f"a class 0..{classes - 1}, or None", self.target
            )
        pool = torch.arange(len(y)) if self.target is None else (y != self.target).nonzero()[:, 0]
        count = min(round(self.rate * len(y)), len(pool))
        chosen = pool[torch.randperm(len(pool), generator=generator)[:count]].sort().values
        if self.target is not None:
            y[chosen] = self.target
        else:
            shift = 1 + torch.randint(classes - 1, (count,), generator=generator)
            y[chosen] = (y[chosen] + shift) % classes
        return x, y, chosen
