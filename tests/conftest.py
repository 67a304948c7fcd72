"""Shared test set-up: a repository-local model cache, so zoo models train once per checkout."""

from __future__ import annotations

import os
from pathlib import Path

import torch

# idle torch worker threads must not spin: many small calls would crawl on a busy machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MALLORY_CACHE", str(Path(__file__).resolve().parent.parent / ".cache"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
