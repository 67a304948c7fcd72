"""Per-sample random streams, so that an attack's outcome never depends on batching.

Each value is a hash of (seed, sample id, stream, position): the same sample draws the same
numbers whether it is attacked alone or in a batch of a thousand, and whichever other samples
are still standing. A draw names its sub-stream with :meth:`Noise.fold`, as JAX's ``fold_in``
does: ``noise.fold("pgd.start", restart).uniform(shape)``. Names are hashed (CRC-32), so two
draws differ when their names or indices differ, and nobody has to pick integer keys that
must not collide. The same stream drawn twice gives the same numbers: fold a new name (or
index) for every draw that must be fresh. The hash is a 32-bit integer mixer run on int64
tensors (products stay below 2**63, so nothing overflows).
"""

from __future__ import annotations

import math
import zlib
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


def _mix_int(h: int) -> int:
    """:func:`_mix` on a Python int (no tensor: folding a stream costs nanoseconds)."""
    h &= _MASK
    h ^= h >> 16
    h = (h * _M1) & _MASK
    h ^= h >> 15
    h = (h * _M2) & _MASK
    return h ^ (h >> 16)


class Noise:
    """Random numbers keyed by seed, sample id and a named sub-stream."""

    def __init__(self, seed: int, ids: Tensor, stream: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int; got {seed!r}")
        self.seed = seed
        self._ids = ids.to(device="cpu", dtype=torch.int64)
        self._stream = stream & _MASK

    @property
    def ids(self) -> Tensor:
        """The sample ids the streams are keyed by."""
        return self._ids

    def fold(self, name: str, *index: int) -> Noise:
        """The sub-stream named ``name`` (and numbered ``index``: an iteration, a restart)."""
        stream = _mix_int(self._stream ^ zlib.crc32(name.encode()))
        for i in index:
            stream = _mix_int(stream + (int(i) & _MASK) * _GOLDEN + 1)
        return Noise(self.seed, self._ids, stream)

    def bind(self, ids: Tensor) -> Noise:
        """The same stream for other samples."""
        return Noise(self.seed, ids, self._stream)

    def subset(self, rows: Tensor) -> Noise:
        """The streams of rows ``rows`` of this batch, as a batch of their own."""
        return Noise(self.seed, self._ids[rows.to("cpu")], self._stream)

    def _bits(self, rows: Tensor | None, shape: Sequence[int], device: torch.device) -> Tensor:
        ids = self._ids if rows is None else self._ids[rows.to("cpu")]
        seed = _mix(torch.tensor(self.seed & _MASK))
        base = _mix(_mix(ids ^ seed) ^ (self._stream * _GOLDEN))
        count = math.prod(shape)
        position = torch.arange(count, dtype=torch.int64)
        bits = _mix(_mix(base[:, None] + position[None, :] * _GOLDEN) ^ base[:, None])
        return bits.reshape(len(ids), *shape).to(device)

    def uniform(
        self,
        shape: Sequence[int] = (),
        rows: Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Uniform numbers in [0, 1), shape ``(rows, *shape)``."""
        bits = self._bits(rows, shape, torch.device(device))
        u = ((bits >> 8).to(torch.float64) / float(1 << 24)).to(dtype)
        # a narrow dtype can round the largest draws up to 1.0
        below_one = torch.nextafter(torch.ones((), dtype=dtype), torch.zeros((), dtype=dtype))
        return torch.minimum(u, below_one.to(u.device))

    def normal(
        self,
        shape: Sequence[int] = (),
        rows: Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Standard normal numbers, shape ``(rows, *shape)`` (Box-Muller; both numbers of each
        pair are used). Like every draw, a longer one begins with the numbers of a shorter one
        of the same stream."""
        count = math.prod(shape)
        half = (count + 1) // 2
        kw = {"dtype": torch.float64, "device": device}
        u1 = self.fold("normal.radius").uniform((half,), rows, **kw)  # type: ignore[arg-type]
        u2 = self.fold("normal.angle").uniform((half,), rows, **kw)  # type: ignore[arg-type]
        radius = torch.sqrt(-2.0 * torch.log1p(-u1))
        angle = 2 * math.pi * u2
        # neighbours share a pair, so a longer draw starts with the numbers of a shorter one
        pairs = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], 2)
        z = pairs.flatten(1)[:, :count]
        return z.reshape(len(z), *shape).to(dtype)

    def integers(
        self,
        high: int | Tensor,
        shape: Sequence[int] = (),
        rows: Tensor | None = None,
        *,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Integers in [0, high) (``high`` may be per row), shape ``(rows, *shape)``."""
        u = self.uniform(shape, rows, dtype=torch.float64, device=device)
        top = torch.as_tensor(high, dtype=torch.float64, device=u.device)
        if top.dim():
            top = top.reshape(-1, *[1] * len(shape))
        return torch.minimum((u * top).long(), top.long() - 1)

    def sign(
        self,
        shape: Sequence[int] = (),
        rows: Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Random signs, -1 or +1."""
        u = self.uniform(shape, rows, dtype=torch.float64, device=device)
        return torch.where(u < 0.5, -1.0, 1.0).to(dtype)
