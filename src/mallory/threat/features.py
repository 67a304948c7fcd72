"""Feature constraints: which input features the attacker may change, and to which values.

Part of the perturbation set for tabular data (a phishing page can rename its URL but not its
domain's age). The attack base enforces them on every result, so no attack can return an edit
the attacker could not make: immutable features are restored, and a feature with a list of
allowed values is snapped to the nearest one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mallory.errors import InputError


@dataclass(frozen=True)
class FeatureConstraints:
    """``mutable``: indices (into the flattened input) of the features the attacker may change.
    ``values``: for each mutable feature, the values it may take (an empty tuple: any value
    inside the input bounds)."""

    mutable: tuple[int, ...]
    values: tuple[tuple[float, ...], ...] = ()

    def __post_init__(self) -> None:
        mutable = tuple(self.mutable)
        if not mutable or any(isinstance(i, bool) or not isinstance(i, int) for i in mutable):
            raise InputError(
                f"FeatureConstraints.mutable must be a non-empty list of feature indices; got "
                f"{self.mutable!r}."
            )
        if len(set(mutable)) != len(mutable) or min(mutable) < 0:
            raise InputError(
                f"FeatureConstraints.mutable must be distinct indices >= 0; got {mutable}."
            )
        values = tuple(tuple(float(v) for v in vs) for vs in self.values)
        if values and len(values) != len(mutable):
            raise InputError(
                f"FeatureConstraints.values needs one entry per mutable feature ({len(mutable)}); "
                f"got {len(values)}."
            )
        object.__setattr__(self, "mutable", mutable)
        object.__setattr__(self, "values", values)

    @staticmethod
    def by_name(
        names: Sequence[str],
        mutable: Sequence[str],
        values: Mapping[str, Sequence[float]] | None = None,
    ) -> FeatureConstraints:
        """Constraints from feature names (e.g. a tabular dataset's ``feature_names``)."""
        index = {name: i for i, name in enumerate(names)}
        unknown = [m for m in mutable if m not in index]
        if unknown:
            raise InputError(
                f"Unknown feature names {unknown}; the features are: {', '.join(names)}."
            )
        values = values or {}
        extra = sorted(set(values) - set(mutable))
        if extra:
            raise InputError(f"Allowed values given for features not mutable: {extra}.")
        allowed = tuple(tuple(values.get(m, ())) for m in mutable)
        return FeatureConstraints(tuple(index[m] for m in mutable), allowed if any(allowed) else ())

    def check(self, features: int) -> None:
        """Raise if an index does not exist in inputs of ``features`` features."""
        if max(self.mutable) >= features:
            raise InputError(
                f"FeatureConstraints names feature {max(self.mutable)}, but inputs have "
                f"{features} features."
            )

    def apply(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """``x_adv`` with immutable features restored and allowed values snapped to."""
        flat_adv, flat_x = x_adv.flatten(1), x.flatten(1)
        self.check(flat_x.shape[1])
        out = flat_x.clone()
        idx = torch.tensor(self.mutable, device=x.device)
        out[:, idx] = flat_adv[:, idx]
        for j, allowed in zip(self.mutable, self.values, strict=False):
            if allowed:
                choices = torch.tensor(allowed, dtype=x.dtype, device=x.device)
                nearest = (out[:, j : j + 1] - choices).abs().argmin(1)
                out[:, j] = choices[nearest]
        return out.reshape(x.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"mutable": list(self.mutable), "values": [list(v) for v in self.values]}
