"""Checks of what a caller hands an attack: inputs, labels, sample ids (one message form)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from mallory.errors import InputError


def as_inputs(x: Any, shape: tuple[int, ...], bounds: Any) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise InputError(f"x must be a torch.Tensor or numpy array; got {type(x).__name__}.")
    if not x.is_floating_point():
        raise InputError(f"x must hold floats; got dtype {x.dtype}. Scale it into the bounds.")
    if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        raise InputError(
            f"x must have shape (n, {', '.join(map(str, shape))}) for this system; got "
            f"{tuple(x.shape)}."
        )
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x.flatten(1))).any(1).sum())
        raise InputError(f"x holds NaN or infinite values in {bad} samples.")
    outside = bounds.outside(x)
    if bool(outside.any()):
        raise InputError(
            f"{int(outside.sum())} samples of x lie outside the system's input bounds "
            f"{bounds.to_dict()}; scale the data into the bounds first."
        )
    return x.detach()


def as_labels(what: str, y: Any, n: int, classes: int, device: torch.device) -> Tensor:
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(y)
    if not isinstance(y, Tensor):
        raise InputError(f"{what} must be a tensor of class indices; got {type(y).__name__}.")
    if y.shape != (n,):
        raise InputError(
            f"{what} must have shape ({n},), one class per sample; got {tuple(y.shape)}."
        )
    if y.is_floating_point() or y.dtype == torch.bool:
        raise InputError(f"{what} must hold integer class indices; got dtype {y.dtype}.")
    if n and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise InputError(
            f"{what} must hold classes 0..{classes - 1}; got values from {int(y.min())} to "
            f"{int(y.max())}."
        )
    return y.to(device=device, dtype=torch.int64)


def as_ids(ids: Any, n: int) -> Tensor:
    if ids is None:
        return torch.arange(n)
    if isinstance(ids, np.ndarray):
        ids = torch.from_numpy(ids)
    if not isinstance(ids, Tensor) or ids.shape != (n,) or ids.is_floating_point():
        raise InputError(f"ids must be {n} integer sample ids, one per sample.")
    ids = ids.to(device="cpu", dtype=torch.int64)
    if n and (int(ids.min()) < 0 or len(torch.unique(ids)) != n):
        raise InputError("ids must be distinct non-negative integers.")
    return ids
