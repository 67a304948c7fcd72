"""Per-sample random streams, so that an attack's outcome never depends on batching.

Each value is a hash of (seed, sample id, key, position): the same sample draws the same
numbers whether it is attacked alone or in a batch of a thousand, and whichever other samples
are still standing. Attacks pass a ``key`` that names the draw (an iteration number, a restart)
so successive draws differ. The hash is a 32-bit integer mixer run on int64 tensors (products
stay below 2**63, so nothing overflows).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

_MASK = 0xFFFFFFFF
_M1 = 0x7FEB352D
_M2 = 0x68E31DA5
_GOLDEN = 0x61C88647


def _mix(h: Tensor) -> Tensor:
    h = h & _MASK
    h = h ^ (h >> 16)
    h = (h * _M1) & _MASK
    h = h ^ (h >> 15)
    h = (h * _M2) & _MASK
    return h ^ (h >> 16)


class Noise:
    """Random numbers keyed by seed, sample id and draw key."""

    def __init__(self, seed: int, ids: Tensor) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int; got {seed!r}")
        self.seed = seed
        self._ids = ids.to(device="cpu", dtype=torch.int64)

    @property
    def ids(self) -> Tensor:
        """The sample ids the streams are keyed by."""
        return self._ids

    def bind(self, ids: Tensor) -> Noise:
        return Noise(self.seed, ids)

    def subset(self, rows: Tensor) -> Noise:
        """The streams of rows ``rows`` of this batch, as a batch of their own."""
        return Noise(self.seed, self._ids[rows.to("cpu")])

    def _bits(
        self, rows: Tensor | None, key: int, shape: Sequence[int], device: torch.device
    ) -> Tensor:
        ids = self._ids if rows is None else self._ids[rows.to("cpu")]
        base = _mix(_mix(ids ^ _mix(torch.tensor(self.seed & _MASK))) ^ (key * _GOLDEN))
        count = math.prod(shape)
        position = torch.arange(count, dtype=torch.int64)
        bits = _mix(_mix(base[:, None] + position[None, :] * _GOLDEN) ^ base[:, None])
        return bits.reshape(len(ids), *shape).to(device)

    def uniform(
        self,
        key: int,
        shape: Sequence[int] = (),
        rows: Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Uniform numbers in [0, 1), shape ``(rows, *shape)``."""
        bits = self._bits(rows, key, shape, torch.device(device))
        u = ((bits >> 8).to(torch.float64) / float(1 << 24)).to(dtype)
        # a narrow dtype can round the largest draws up to 1.0
        below_one = torch.nextafter(torch.ones((), dtype=dtype), torch.zeros((), dtype=dtype))
        return torch.minimum(u, below_one.to(u.device))

    def normal(
        self,
        key: int,
        shape: Sequence[int] = (),
        rows: Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Standard normal numbers (Box-Muller), shape ``(rows, *shape)``."""
        u1 = self.uniform(2 * key + 1, shape, rows, dtype=torch.float64, device=device)
        u2 = self.uniform(2 * key + 2, shape, rows, dtype=torch.float64, device=device)
        z = torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2 * math.pi * u2)
        return z.to(dtype)

    def integers(
        self,
        key: int,
        high: int | Tensor,
        shape: Sequence[int] = (),
        rows: Tensor | None = None,
        *,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Integers in [0, high) (``high`` may be per row), shape ``(rows, *shape)``."""
        u = self.uniform(key, shape, rows, dtype=torch.float64, device=device)
        top = torch.as_tensor(high, dtype=torch.float64, device=u.device)
        if top.dim():
            top = top.reshape(-1, *[1] * len(shape))
        return torch.minimum((u * top).long(), top.long() - 1)

    def sign(
        self,
        key: int,
        shape: Sequence[int] = (),
        rows: Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Random signs, -1 or +1."""
        u = self.uniform(key, shape, rows, dtype=torch.float64, device=device)
        return torch.where(u < 0.5, -1.0, 1.0).to(dtype)
