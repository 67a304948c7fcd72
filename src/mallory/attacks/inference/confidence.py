"""Membership inference from the confidence on the true label (Yeom et al., CSF 2018)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mallory.access.oracle import Access
from mallory.access.view import OracleView
from mallory.attacks.base import register
from mallory.attacks.inference.base import InferenceAttack


@register("confidence-membership")
@dataclass(frozen=True, kw_only=True)
class ConfidenceMembership(InferenceAttack):
    """Score each record by the system's probability of its true label: models are more
    confident on the records they were trained on.

    Yeom, Giacomelli, Fredrikson and Jha, "Privacy Risk in Machine Learning: Analyzing the
    Connection to Overfitting", IEEE CSF 2018 (the loss-threshold attack; the probability of
    the true label is a monotone function of the cross-entropy loss).

    Threat model: scores (all, or the top k: a true label outside the top k scores 0), one
    query per record; no shadow model. The score of a record is ``p(y | x)``; a threshold on it
    decides membership, and the result reports the AUC and the advantage over all thresholds.

    Example::

        result = create("confidence-membership")(Oracle(model, score_based()), x, y,
                                                 members=in_train)
        result.auc, result.advantage
    """

    access = Access.SCORES
    paper = (
        "Yeom et al., Privacy Risk in Machine Learning: Analyzing the Connection to "
        "Overfitting, IEEE CSF 2018"
    )

    def _score(self, oracle: OracleView, x: Tensor, y: Tensor, rng: int) -> Tensor:
        probs = oracle.scores(x)
        picked = probs.gather(1, y[:, None].to(probs.device)).squeeze(1)
        return torch.nan_to_num(picked, nan=0.0)
