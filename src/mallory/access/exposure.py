"""What a system's raw outputs become under an exposure: logits, probabilities, the top k.

One place for the conversions, used by the oracle (what an attacker sees), the judge (what the
evaluator sees) and anything else that shapes an answer.
"""

from __future__ import annotations

import math

from torch import Tensor

from mallory.systems.base import Output
from mallory.threat import Exposure


def as_logits(out: Tensor, kind: Output) -> Tensor:
    """Logits, or log-probabilities for a system that returns probabilities."""
    return out if kind is Output.LOGITS else out.clamp_min(1e-30).log()


def as_probabilities(out: Tensor, kind: Output) -> Tensor:
    """Class probabilities (a softmax of logits)."""
    return out.softmax(1) if kind is Output.LOGITS else out


def hide_scores(probs: Tensor, exposure: Exposure, top_k: int | None) -> Tensor:
    """Probabilities as ``exposure`` shows them: with top-k, all but the k largest are NaN."""
    if exposure is Exposure.TOP_K and top_k is not None and top_k < probs.shape[1]:
        kth = probs.nan_to_num(-1.0).topk(top_k, dim=1).values[:, -1:]
        return probs.masked_fill(probs < kth, math.nan)
    return probs
