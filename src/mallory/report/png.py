"""PNG images for the HTML report, encoded here with zlib and struct (no imaging library).

Inputs arrive as flat lists of floats in the dataset's units with the run's ``input_shape``:
``(1, h, w)`` or ``(h, w)`` is grayscale, ``(3, h, w)`` is RGB (channels first, as PyTorch
stores them; ``(h, w, 3)`` and ``(h, w, 1)`` are read channels last). Small images are enlarged
by nearest neighbour so that a 28 x 28 digit stays visible and sharp.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Pixels = npt.NDArray[np.uint8]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(pixels: Pixels) -> bytes:
    """PNG bytes of 8-bit ``pixels``: shape ``(h, w)`` (grayscale) or ``(h, w, 3)`` (RGB)."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or 0 in pixels.shape:
        raise ValueError(f"encode_png needs uint8 (h, w) or (h, w, 3) pixels; got {pixels.shape}")
    if pixels.ndim == 3 and pixels.shape[2] != 3:
        raise ValueError(f"encode_png needs 3 channels for colour; got {pixels.shape[2]}")
    height, width = pixels.shape[:2]
    colour_type = 0 if pixels.ndim == 2 else 2
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    rows = pixels.reshape(height, -1)
    # every scanline starts with filter type 0 (none)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    return (
        _SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 9))
        + _chunk(b"IEND", b"")
    )


def data_uri(pixels: Pixels) -> str:
    """``pixels`` as a ``data:image/png;base64,`` URI."""
    return "data:image/png;base64," + base64.b64encode(encode_png(pixels)).decode("ascii")


def image_layout(shape: Sequence[int]) -> tuple[int, int, int, bool] | None:
    """``(height, width, channels, channels_first)`` of an image shape, or None when the
    shape is not a grayscale or RGB image (tabular rows, sequences)."""
    dims = [int(d) for d in shape]
    if len(dims) == 2:
        return dims[0], dims[1], 1, True
    if len(dims) == 3:
        if dims[0] in (1, 3):
            return dims[1], dims[2], dims[0], True
        if dims[2] in (1, 3):
            return dims[0], dims[1], dims[2], False
    return None


def to_unit(values: Sequence[float], shape: Sequence[int]) -> npt.NDArray[np.float64] | None:
    """``values`` as an ``(h, w)`` or ``(h, w, 3)`` array, or None when they are not an image
    of ``shape``."""
    layout = image_layout(shape)
    if layout is None:
        return None
    height, width, channels, first = layout
    array = np.asarray(values, dtype=np.float64)
    if array.size != height * width * channels:
        return None
    if channels == 1:
        return array.reshape(height, width)
    if first:
        return array.reshape(channels, height, width).transpose(1, 2, 0)
    return array.reshape(height, width, channels)


def _to_pixels(unit: npt.NDArray[np.float64], min_size: int) -> Pixels:
    """Values in [0, 1] (NaN as 0) as 8-bit pixels, enlarged to at least ``min_size``."""
    clean = np.nan_to_num(unit, nan=0.0, posinf=1.0, neginf=0.0)
    pixels = np.round(np.clip(clean, 0.0, 1.0) * 255).astype(np.uint8)
    factor = max(1, math.ceil(min_size / max(pixels.shape[:2])))
    return pixels.repeat(factor, axis=0).repeat(factor, axis=1)


def image_uri(
    values: Sequence[float], shape: Sequence[int], bounds: Sequence[float], *, min_size: int = 112
) -> str | None:
    """An input as a PNG data URI, its ``bounds`` ``[low, high]`` mapped to black and white.
    None when ``values`` are not an image of ``shape``."""
    array = to_unit(values, shape)
    if array is None:
        return None
    low, high = (float(bounds[0]), float(bounds[1])) if len(bounds) == 2 else (0.0, 1.0)
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        high = high if high > low else low + 1.0
    return data_uri(_to_pixels((array - low) / (high - low), min_size))


def perturbation_uri(
    original: Sequence[float],
    adversarial: Sequence[float],
    shape: Sequence[int],
    *,
    min_size: int = 112,
) -> str | None:
    """``adversarial - original`` made visible: ``[-m, m]`` mapped to ``[0, 1]`` with ``m`` the
    largest absolute change, so no change is mid-gray. None when the inputs are not images of
    ``shape`` or nothing changed (a uniform gray image would show nothing)."""
    before, after = to_unit(original, shape), to_unit(adversarial, shape)
    if before is None or after is None:
        return None
    change = np.nan_to_num(after - before, nan=0.0, posinf=0.0, neginf=0.0)
    largest = float(np.abs(change).max())
    if largest == 0.0:
        return None
    return data_uri(_to_pixels(change / (2 * largest) + 0.5, min_size))


def display_size(shape: Sequence[int], *, min_size: int = 112) -> tuple[int, int] | None:
    """``(width, height)`` in pixels of the images :func:`image_uri` makes for ``shape``."""
    layout = image_layout(shape)
    if layout is None:
        return None
    height, width = layout[:2]
    factor = max(1, math.ceil(min_size / max(height, width, 1)))
    return width * factor, height * factor
