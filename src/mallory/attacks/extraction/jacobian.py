"""Model extraction by Jacobian-based dataset augmentation (Papernot et al., AsiaCCS 2017)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from mallory.attacks.base import register
from mallory.attacks.extraction.base import ExtractionAttack, LabelBuyer
from mallory.attacks.params import choice, integer, real
from mallory.attacks.surrogate import Architecture, Surrogate, fit_network, jacobian_augment
from mallory.errors import InputError


@register("jacobian-extraction")
@dataclass(frozen=True, kw_only=True)
class JacobianExtraction(ExtractionAttack):
    """Buy the target's labels and train a surrogate on them, growing the query set by
    Jacobian-based augmentation.

    Papernot, McDaniel, Goodfellow, Jha, Celik and Swami, "Practical Black-Box Attacks against
    Machine Learning", AsiaCCS 2017.

    Threat model: labels (any exposure works); a total query budget (``queries_total``) is
    respected, a per-sample one does not apply (the points belong to no sample). The attack
    buys the labels of the seed inputs ``(n, *input_shape)``, trains a surrogate on them, then
    ``rounds`` times: adds, for every point, ``lam_r * sign(d F_label / d x)`` computed on the
    surrogate (``lam_r = lam * (-1)**r``: the sign alternates per round), clamped to the
    bounds; buys the labels of the new points; and trains a fresh surrogate on the whole set.
    The query set doubles each round: a full run spends ``n * 2**rounds`` queries. When the
    budget runs out mid-round, the last round takes only what was answered, and augmentation
    stops there. Seeded: the same seed gives the same surrogate.

    Args:
        rounds: augmentation rounds (default 4).
        lam: the augmentation step, in input units (default 0.1).
        architecture: the surrogate's network, ``"cnn"`` (images) or ``"mlp"`` (default cnn).
        epochs: training epochs per round (default 10).

    Example::

        target = Oracle(load_model("mnist-cnn"), transfer("linf", 0.3, queries_total=1500))
        result = create("jacobian-extraction", rounds=3)(target, own_inputs[:150])
        result.surrogate, result.queries, result.fidelity
    """

    paper = "Papernot et al., Practical Black-Box Attacks against Machine Learning, AsiaCCS 2017"
    fast: ClassVar[dict[str, Any]] = {"rounds": 1, "epochs": 3, "architecture": "mlp"}

    rounds: int = integer(4, low=0, help="augmentation rounds (the query set doubles each)")
    lam: float = real(0.1, low=0.0, low_open=True, help="augmentation step (input units)")
    architecture: Architecture = choice(Architecture.CNN, help="the surrogate's network")
    epochs: int = integer(10, low=1, help="training epochs per round")

    def _extract(self, buyer: LabelBuyer, seed_x: Tensor, rng: int) -> Surrogate:
        if self.architecture is Architecture.CNN and len(buyer.input_shape) != 3:
            raise InputError(
                f"{self.name}: architecture='cnn' needs image inputs (channels, height, width); "
                f"the target takes {buyer.input_shape}. Use architecture='mlp'."
            )
        data, labels = buyer.buy(seed_x)
        if not len(data):
            raise InputError(
                f"{self.name}: the target answered none of the {len(seed_x)} seed queries (its "
                "budget is spent, or it refused them). Give the threat model a larger "
                "queries_total."
            )
        classes = buyer.num_classes
        module, accuracy = fit_network(self.architecture, data, labels, classes, self.epochs, rng)
        for r in range(self.rounds):
            step = self.lam if r % 2 == 0 else -self.lam
            fresh = jacobian_augment(module, data, labels, lam=step, bounds=buyer.bounds)
            fresh = fresh[len(data) :]
            fresh_x, fresh_y = buyer.buy(fresh)
            if not len(fresh_x):
                break
            data, labels = torch.cat([data, fresh_x]), torch.cat([labels, fresh_y])
            module, accuracy = fit_network(
                self.architecture, data, labels, classes, self.epochs, rng
            )
            if len(fresh_x) < len(fresh):
                break  # the budget ran out in this round
        return Surrogate(
            module=module,
            input_shape=buyer.input_shape,
            bounds=buyer.bounds,
            num_classes=classes,
            architecture=self.architecture,
            source="extraction",
            extraction_queries=len(data),
            fit_accuracy=accuracy,
            training_size=len(data),
        )
