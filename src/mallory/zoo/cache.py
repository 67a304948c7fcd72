"""Where the zoo keeps trained models, and how it writes them safely."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import platformdirs

CACHE_ENV = "MALLORY_CACHE"


def cache_dir() -> Path:
    """The folder for mallory's caches: ``$MALLORY_CACHE`` when set, else the user cache folder.

    The folder is not created here; writers create what they need.
    """
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_cache_dir("mallory"))


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through ``write`` into a temporary file beside ``path``, then rename it.

    The rename is atomic, so a reader sees the old file or the whole new one, never a part,
    even when the writer crashes or two processes write the same path.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
