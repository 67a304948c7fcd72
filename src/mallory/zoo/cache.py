"""Where the zoo keeps trained models (written with :func:`mallory.jsonable.write_atomically`)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from mallory.jsonable import write_atomically

CACHE_ENV = "MALLORY_CACHE"


def cache_dir() -> Path:
    """The folder for mallory's caches: ``$MALLORY_CACHE`` when set, else the user cache folder.

    The folder is not created here; writers create what they need.
    """
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_cache_dir("mallory"))


__all__ = ["CACHE_ENV", "cache_dir", "write_atomically"]
