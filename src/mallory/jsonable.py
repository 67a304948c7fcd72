"""The one JSON converter, and the one atomic file writer.

:func:`plain` turns what mallory holds (enums, tensors, NumPy values, tuples, dates, floats that
are not finite) into values ``json.dumps`` writes with ``allow_nan=False``; :func:`write_atomically`
writes a file so that a crash never leaves half of it.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from datetime import date, datetime, time
from enum import Enum
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch


def plain(value: Any) -> Any:
    """JSON-ready data: NaN becomes None, infinities ``"inf"``/``"-inf"``, enums their value,
    tensors and arrays lists, tuples lists, dates ISO text, dict keys text."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, Enum):
        return plain(value.value)
    if isinstance(value, float | np.floating):
        v = float(value)
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, torch.Tensor | np.ndarray):
        return plain(value.tolist())
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if hasattr(value, "to_dict"):
        return plain(value.to_dict())
    return str(value)


def number(value: Any) -> Any:
    """The inverse of :func:`plain` for one number: None is NaN, ``"inf"`` infinity."""
    if value is None:
        return math.nan
    if value in ("inf", "-inf"):
        return float(value)
    return value


def write_atomically(path: Path, write: Callable[[IO[bytes]], None] | bytes | str) -> None:
    """Write ``path`` through a temporary file in the same folder, then rename it into place:
    a reader sees the old file or the new one, never half of one. ``write`` is the content
    (bytes or text) or a function that writes to the open binary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(write, str):
                out.write(write.encode())
            elif isinstance(write, bytes):
                out.write(write)
            else:
                write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
