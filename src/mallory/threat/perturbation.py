"""Lp balls inside the input box: distances and projections.

A perturbation set is the Lp ball of radius ``eps`` around the clean input, intersected with
the system's input bounds. Projection clamps to the box first, then pulls the perturbation back
into the ball; both steps move the point towards the clean input along a convex path, so the
result lies in both sets, and points already inside stay put. For L0 the projection keeps the
``eps`` largest changes and restores the other features.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mallory.threat.model import Norm

if TYPE_CHECKING:
    from mallory.systems.base import Bounds

# Changes smaller than this count as zero in L0 (float noise from clamping is not a change).
L0_TOLERANCE = 1e-7


def distances(x_adv: Tensor, x: Tensor) -> dict[Norm, Tensor]:
    """Per-sample L0, L2 and Linf distances between two batches."""
    delta = (x_adv - x).flatten(1).double()
    return {
        Norm.L0: (delta.abs() > L0_TOLERANCE).sum(1).double(),
        Norm.L2: delta.norm(p=2, dim=1),
        Norm.LINF: delta.abs().amax(1) if delta.shape[1] else delta.sum(1),
    }


def norm_of(delta: Tensor, norm: Norm) -> Tensor:
    """Per-sample norm of a batch of perturbations."""
    flat = delta.flatten(1)
    if norm is Norm.LINF:
        return flat.abs().amax(1)
    if norm is Norm.L2:
        return flat.norm(p=2, dim=1)
    return (flat.abs() > L0_TOLERANCE).sum(1).to(delta.dtype)


def project_ball(delta: Tensor, norm: Norm, eps: float | Tensor) -> Tensor:
    """The perturbation pulled back into the Lp ball of radius ``eps`` (per sample if a tensor)."""
    if isinstance(eps, float) and math.isinf(eps):
        return delta
    view = (-1,) + (1,) * (delta.dim() - 1)
    radius = torch.as_tensor(eps, dtype=delta.dtype, device=delta.device)
    if norm is Norm.LINF:
        r = radius.reshape(view) if radius.dim() else radius
        return torch.maximum(torch.minimum(delta, r), -r)
    if norm is Norm.L2:
        length = delta.flatten(1).norm(p=2, dim=1)
        scale = (radius / length.clamp_min(1e-30)).clamp_max(1.0)
        # leave points already inside untouched, bit for bit
        scale = torch.where(length > radius, scale, torch.ones_like(scale))
        return delta * scale.reshape(view)
    flat = delta.flatten(1)
    k = radius.expand(len(flat)).long() if radius.dim() == 0 else radius.long()
    changed = flat.abs() > L0_TOLERANCE
    too_many = changed.sum(1) > k
    if not bool(too_many.any()):
        return delta
    order = flat.abs().argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    keep = (rank < k[:, None]) | ~too_many[:, None]
    return (flat * keep).reshape(delta.shape)


def project(x_adv: Tensor, x: Tensor, norm: Norm, eps: float | Tensor, bounds: Bounds) -> Tensor:
    """``x_adv`` moved into the ball around ``x`` and inside the bounds."""
    boxed = bounds.clamp(x_adv)
    if isinstance(eps, float) and math.isinf(eps):
        return boxed
    delta = boxed - x
    pulled = project_ball(delta, norm, eps)
    # x + (boxed - x) may differ from boxed by a rounding step: keep points inside exact, and
    # clamp pulled-back points again so rounding cannot leave the box
    return torch.where(pulled == delta, boxed, bounds.clamp(x + pulled))
