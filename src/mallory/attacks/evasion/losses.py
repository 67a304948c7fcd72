"""Per-sample losses on logits that gradient attacks ascend.

Each takes logits ``(n, C)``, true labels ``y`` and optional targets, and returns ``(n,)``;
ascending the loss moves towards the attacker's goal (away from ``y``, or towards the target).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import Tensor


class Loss(StrEnum):
    """The loss a gradient attack ascends."""

    CE = "ce"  # cross-entropy (Goodfellow et al.; Madry et al.)
    MARGIN = "margin"  # logit margin (Carlini and Wagner's f6)


def cross_entropy(logits: Tensor, y: Tensor, targets: Tensor | None = None) -> Tensor:
    if targets is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, targets, reduction="none")


def margin(logits: Tensor, y: Tensor, targets: Tensor | None = None) -> Tensor:
    """Best other logit minus the true logit (untargeted); target logit minus best other."""
    goal = y if targets is None else targets
    goal_logit = logits.gather(1, goal[:, None]).squeeze(1)
    others = logits.scatter(1, goal[:, None], float("-inf")).amax(1)
    return others - goal_logit if targets is None else goal_logit - others


def dlr(logits: Tensor, y: Tensor, targets: Tensor | None = None) -> Tensor:
    """Difference of logits ratio (Croce and Hein, ICML 2020), with logits sorted so that
    ``z_pi1 >= z_pi2 >= ...``.

    Untargeted: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` (needs 3 classes);
    targeted: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)`` (needs 4 classes).
    Shifting the logits or scaling them by a positive constant leaves it unchanged, so a
    saturated softmax cannot flatten it the way it flattens cross-entropy.
    """
    # the sums of a few logits are products with small weight vectors: fewer autograd nodes
    # than slicing, which shows in an attack that takes thousands of small gradients
    if targets is None:
        top = logits.topk(3, dim=1).values
        true_logit = logits.gather(1, y[:, None]).squeeze(1)
        others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
        scale = top @ _weights((1.0, 0.0, -1.0), logits)
        return (others - true_logit) / (scale + 1e-12)
    top = logits.topk(4, dim=1).values
    pair = logits.gather(1, torch.stack((targets, y), 1))
    scale = top @ _weights((1.0, 0.0, -0.5, -0.5), logits)
    return (pair @ _weights((1.0, -1.0), logits)) / (scale + 1e-12)


def _weights(values: tuple[float, ...], like: Tensor) -> Tensor:
    return _weight_tensor(values, like.dtype, like.device)


@functools.lru_cache(maxsize=32)
def _weight_tensor(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def loss_fn(kind: Loss, y: Tensor, targets: Tensor | None) -> Callable[[Tensor], Tensor]:
    """A closure ``logits -> (n,)`` for the oracle's gradient query."""
    fn = cross_entropy if kind is Loss.CE else margin
    return lambda logits: fn(logits, y, targets)


def reached(logits: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
    """Whether each row's prediction already meets the goal (NaN rows count as not reached)."""
    ok = ~logits.isnan().any(1)  # the oracle answers finite logits, or a row of NaN
    predicted = logits.nan_to_num(float("-inf")).argmax(1)
    hit = predicted != y if targets is None else predicted == targets
    return hit & ok
