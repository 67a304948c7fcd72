"""Transfer: attack a surrogate the attacker owns, white-box, and submit the result once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mallory.access.oracle import Access, Oracle
from mallory.access.view import OracleView
from mallory.attacks.base import Need, create, register
from mallory.attacks.evasion.base import EvasionAttack, Family
from mallory.attacks.evasion.wrappers import as_inner_attack
from mallory.attacks.noise import Noise
from mallory.attacks.params import flag
from mallory.attacks.surrogate import Surrogate, fits, surrogate_oracle, train_surrogate
from mallory.errors import InputError
from mallory.params import Converted, Instance, OrNone, param
from mallory.threat import Goal, Norm

NO_SURROGATE = (
    "transfer needs a surrogate: a model the attacker owns. Build one from your own labelled "
    "data with mallory.attacks.surrogate.train_surrogate(x, y, ...), or buy the target's labels "
    "with "
    "mallory.attacks.surrogate.extract_surrogate(oracle, seed_x, ...), and pass surrogate=..."
)


def _inner_attack(value: Any) -> Any:
    """None (PGD), a registered name, ``{"name": ..., "params": {...}}`` or an Attack."""
    if value is None or isinstance(value, str | dict):
        import mallory.attacks.evasion.pgd  # noqa: F401  (registers pgd, a common inner attack)

    value = create("pgd") if value is None else as_inner_attack(value)
    if isinstance(value, Transfer):
        raise TypeError("a transfer attack cannot run on a surrogate")  # refused in one form
    return value


def _surrogate_field() -> Any:
    rule = OrNone(Instance(Surrogate, "a mallory.attacks.surrogate.Surrogate"))
    help = "the attacker's own model (train_surrogate / extract_surrogate); required to run"
    return param(rule, None, help=help)


def _attack_field() -> Any:
    rule = Converted(
        Instance(EvasionAttack, "an evasion attack"),
        _inner_attack,
        "an Attack, a registered attack name, or {'name': ..., 'params': {...}} (None: pgd)",
    )
    help = "the white-box attack run on the surrogate (default: pgd)"
    return param(rule, None, help=help)


@register("transfer")
@dataclass(frozen=True, kw_only=True)
class Transfer(EvasionAttack):
    """Attack a surrogate white-box, then submit the adversarial inputs to the target once.

    Papernot, McDaniel, Goodfellow, Jha, Celik and Swami, "Practical Black-Box Attacks against
    Machine Learning", AsiaCCS 2017 (transfer from a substitute trained on labels bought from
    the target); Szegedy et al. 2014 and Goodfellow et al. 2015 observed the transfer itself.

    Threat model: labels only (the ``transfer`` preset: limited knowledge, label exposure, one
    query per sample). The surrogate comes from
    :func:`~mallory.attacks.surrogate.train_surrogate` (the attacker's own data) or
    :func:`~mallory.attacks.surrogate.extract_surrogate` (model extraction, whose queries are
    counted in the target oracle's ledger and reported in ``params["surrogate"]``). The inner attack
    runs on a private white-box oracle on the surrogate, with the target threat model's norm,
    eps, goal and feature constraints (targeted: the same targets); its result is submitted to
    the target as one label query per sample. The success the base class judges on the target
    is the transfer success rate. A sample whose submission the target refuses (budget spent)
    gets its clean input back: nothing reached the target. Norms, goals and an unbounded eps
    are those the inner attack accepts. Shapes: ``x`` is ``(n, *input_shape)``, and the
    surrogate must take that shape and have the target's number of classes.

    Args:
        surrogate: the attacker's model (default None: calling then raises an InputError that
            says how to build one).
        attack: the white-box attack run on the surrogate (default ``create("pgd")``); an
            Attack, a registered name, or ``{"name": ..., "params": {...}}``. Bounded attacks
            hand over their final iterate, deep in the surrogate's wrong class, which transfers
            best: on MNIST (own-data CNN surrogate, 1,000 digits), pgd reached 68% on the zoo
            CNN and fgsm 63%, against 12% for random sign noise of the same eps. A
            minimal-perturbation attack (deepfool, say) hands over inputs that barely cross the
            surrogate's boundary, and those rarely transfer.
        submit: query the target's label of each result (default True, one query per
            sample); False leaves the target untouched and only the evaluator judges.

    Example::

        surrogate = train_surrogate(own.x, own.y, architecture="cnn", epochs=3)
        attack = create("transfer", surrogate=surrogate, attack=create("fgsm"))
        result = attack(Oracle(model, transfer("linf", 0.3)), x, y)
        result.success_rate, result.params["surrogate"]["extraction_queries"]
    """

    default = True  # run by a campaign that names no attacks
    rank = 0

    access = Access.LABELS
    family = Family.TRANSFER
    needs = frozenset({Need.SURROGATE})
    norms = frozenset(Norm)  # narrowed by the inner attack in check_applicable
    goals = frozenset(Goal)
    paper = "Papernot et al., Practical Black-Box Attacks against Machine Learning, AsiaCCS 2017"

    surrogate: Surrogate | None = _surrogate_field()
    attack: EvasionAttack = _attack_field()
    submit: bool = flag(True, help="query the target's label of each result (one per sample)")

    def check_applicable(self, oracle: Oracle) -> None:
        """The base checks, then the inner attack's own (norm, goal, finite eps) on the
        surrogate, and that the surrogate fits the target; all before any query."""
        if not isinstance(oracle, Oracle):
            super().check_applicable(oracle)
        oracle.require(self.access, self.name)
        if self.surrogate is None:
            raise InputError(NO_SURROGATE)
        misfit = fits(self.surrogate, oracle.input_shape, oracle.num_classes)
        if misfit is not None:
            raise InputError(f"{self.name}: {misfit}. Build the surrogate for this task.")
        try:
            self.attack.check_applicable(surrogate_oracle(self.surrogate, oracle.threat))
        except InputError as error:
            raise InputError(f"{self.name} with inner attack {error}") from None

    @classmethod
    def test_params(cls, system: Any, x: Tensor, y: Tensor) -> dict[str, Any]:
        """A surrogate (an MLP) trained on the samples: what transfer needs to run."""
        surrogate = train_surrogate(
            x,
            y,
            architecture="mlp",
            epochs=20,
            num_classes=system.num_classes,
            bounds=system.bounds,
        )
        return {"surrogate": surrogate}

    def planned_queries(self, oracle: Oracle | OracleView) -> int | None:
        return 1 if self.submit else 0

    def _run(
        self, oracle: OracleView, x: Tensor, y: Tensor, targets: Tensor | None, noise: Noise
    ) -> Tensor:
        if self.surrogate is None:  # check_applicable refuses this first
            raise InputError(NO_SURROGATE)
        private = surrogate_oracle(self.surrogate, oracle.threat)
        # the sample ids key the inner attack's random streams, so batching changes nothing
        inner = self.attack(private, x, y, rng=noise.seed, targets=targets, ids=noise.ids)
        x_adv = oracle.bounds.clamp(inner.x_adv.to(x))
        if not self.submit:
            return x_adv
        labels = oracle.labels(x_adv)
        refused = (labels < 0).to(x.device)
        if bool(refused.any()):
            x_adv = torch.where(refused.view(-1, *[1] * (x.dim() - 1)), x, x_adv)
        return x_adv

    def params(self) -> dict[str, Any]:
        """The surrogate as a small dict (source, architecture, extraction queries) and the
        inner attack as its name and parameters."""
        out = super().params()
        out["surrogate"] = None if self.surrogate is None else self.surrogate.to_dict()
        out["attack"] = {"name": self.attack.name, "params": self.attack.params()}
        return out
