"""Shared test set-up: a repository-local model cache, so zoo models train once per checkout."""

from __future__ import annotations

import os
from pathlib import Path

import torch

os.environ.setdefault("MALLORY_CACHE", str(Path(__file__).resolve().parent.parent / ".cache"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
