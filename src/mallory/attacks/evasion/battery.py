"""The cheap battery: every trick of real attackers that applies, cheapest first.

It runs the tricks of :mod:`~mallory.attacks.evasion.natural` (images) or
:mod:`~mallory.attacks.evasion.tabular` (everything else) one after the other, each only on
the samples no earlier trick broke, and keeps for each sample the first trick's first success:
the cheapest evidence that the system breaks without any knowledge of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mallory.access.oracle import Access, Oracle
from mallory.access.view import OracleView
from mallory.attacks.base import register
from mallory.attacks.evasion.base import EvasionAttack, Family
from mallory.attacks.evasion.natural import (
    APRUZZESE,
    Blur,
    Contrast,
    GaussianNoise,
    Jpeg,
    Occlude,
    Rotate,
    Scale,
    Shift,
    Trick,
    UniformNoise,
)
from mallory.attacks.evasion.tabular import FeatureEdit
from mallory.attacks.noise import Noise
from mallory.params import Names, param

# In cost order with the default settings (queries per sample at most), cheapest first.
IMAGE_TRICKS: tuple[type[Trick], ...] = (
    Jpeg,
    Blur,
    Rotate,
    Contrast,
    GaussianNoise,
    UniformNoise,
    Shift,
    Scale,
    Occlude,
)
TABULAR_TRICKS: tuple[type[Trick], ...] = (FeatureEdit,)
TRICKS = {cls.name: cls for cls in IMAGE_TRICKS + TABULAR_TRICKS}


TRICK_NAMES = Names(tuple(TRICKS), what="tricks")


def parse_tricks(text: object) -> tuple[str, ...] | None:
    """The trick names in a ``tricks`` parameter (empty for ``"all"``); None when invalid."""
    return TRICK_NAMES.parse(text)


@register("cheap")
@dataclass(frozen=True, kw_only=True)
class CheapBattery(EvasionAttack):
    """The cheap tricks of real attackers, cheapest first, each on the samples still standing.

    Apruzzese, Anderson, Dambra, Freeman, Pierazzi and Roundy, "Real Attackers Don't Compute
    Gradients": Bridging the Gap Between Adversarial ML Research and Practice, SaTML 2023.

    Threat model: labels only (the ``no_knowledge`` preset: eps ``inf``, a label, 100 queries);
    any norm; untargeted or targeted; eps may be ``inf``. For images ``(channels, height,
    width)`` the tricks are JPEG recompression, blur, rotation, brightness and contrast,
    Gaussian and uniform noise (at the threat model's budget when eps is finite), shifts,
    stretching and occlusion; for any other input shape, feature edits (see
    :mod:`~mallory.attacks.evasion.natural` and :mod:`~mallory.attacks.evasion.tabular`). They run
    with their default settings in cost order (fewest candidates per sample first); each tries its
    candidates, weakest first, on the samples no earlier trick broke, so each sample's result
    is the first success of the first trick that found one. With a finite eps each candidate
    is projected into the ball before it is queried.

    Cost: each sample pays one query per candidate tried, until its first success or until its
    query budget is spent (the oracle refuses it then): at most 122 queries per image with the
    default settings, 60 per tabular row.

    Args:
        tricks: ``"all"`` (the tricks for the input shape), or a comma-separated list of trick
            names, e.g. ``"blur,jpeg"`` (run in cost order all the same).

    Example::

        result = create("cheap")(Oracle(model, no_knowledge(queries=20)), x, y)
        result.success_rate, result.queries[result.success].median()
    """

    access = Access.LABELS
    family = Family.TRICK
    minimizes = True
    paper = APRUZZESE

    tricks: str = param(
        TRICK_NAMES,
        "all",
        help="'all' or a comma-separated list of trick names (run in cost order)",
    )

    def chosen(self, input_shape: tuple[int, ...]) -> list[Trick]:
        """The tricks this battery runs on inputs of ``input_shape``, before ordering."""
        names = parse_tricks(self.tricks) or ()
        if names:
            return [TRICKS[name]() for name in names]
        return [cls() for cls in (IMAGE_TRICKS if len(input_shape) == 3 else TABULAR_TRICKS)]

    def check_applicable(self, oracle: Oracle) -> None:
        super().check_applicable(oracle)
        for trick in self.chosen(oracle.input_shape):
            trick.check_applicable(oracle)

    def planned_queries(self, oracle: Oracle | OracleView) -> int | None:
        total = 0
        for trick in self.chosen(oracle.input_shape):
            total += len(trick.ladder(oracle))
        return total

    def _run(
        self, oracle: OracleView, x: Tensor, y: Tensor, targets: Tensor | None, noise: Noise
    ) -> Tensor:
        tricks = sorted(self.chosen(oracle.input_shape), key=lambda t: len(t.ladder(oracle)))
        out = x.clone()
        standing = torch.arange(len(x), device=x.device)
        for trick in tricks:
            standing = standing[(oracle.remaining(standing) > 0).to(x.device)]
            if not len(standing):
                break
            part = None if targets is None else targets[standing]
            found_x, found = trick.search(
                oracle.subset(standing),
                x[standing],
                y[standing],
                part,
                noise.subset(standing),
            )
            out[standing[found]] = found_x[found]
            standing = standing[~found]
        return out
