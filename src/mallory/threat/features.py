"""Feature constraints: which input features the attacker may change, to which values, and at
what price.

Part of the perturbation set for tabular data and for attacks in problem space: a phishing page
can switch to HTTPS for the price of a certificate, but cannot make its domain older. For each
feature the attacker may change (``mutable``: indices into the flattened input) they say

- which values it may take: a finite set (``values``) or a range (``ranges``; none: any value
  inside the input bounds);
- in which direction it may move (``directions``): either way, only up or only down;
- what a change costs (``prices``: per edit; ``unit_prices``: per unit of change).

Features that follow from others cannot be set on their own: a one-hot group (:class:`OneHot`,
one edit moves the hot feature) and derived features (:class:`Derived`: a ratio, a sum, a
product, or what a :data:`FeatureExtractor` computes from the edited object).

The original value of a feature is always allowed: not editing it is free. The cost of a
candidate relative to the original is, over the mutable features it changes,
``price + unit_price * |change|``, plus the price of each one-hot group it moves; constraints
that name no price at all price a change by its size (unit price 1: the L1 distance over the
mutable features). Derived features cost nothing of their own.

The attack base enforces the constraints on every result (:meth:`FeatureConstraints.apply`), so
no attack can return an edit the attacker could not make: features the attacker cannot change
are restored, mutable ones are held to their range, direction and allowed values (the nearest,
or the original), groups stay one-hot and derived features are computed again. Search attacks
ask :meth:`FeatureConstraints.feasible` before they query a candidate and
:meth:`FeatureConstraints.cost` what it costs. A constraint object round-trips through a plain
dict (:meth:`FeatureConstraints.to_dict`, :meth:`FeatureConstraints.from_dict`) for campaign
files and reports.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from enum import StrEnum
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from mallory.errors import InputError, bad_param
from mallory.params import (
    Instance,
    Interval,
    ListOf,
    Options,
    OrNone,
    Text,
    check_fields,
    param,
)

FeatureExtractor = Callable[[Tensor], Tensor]
"""Raw object to features: a batch of inputs ``(n, *input_shape)`` whose editable attributes
were set by the attacker, to the same batch with the features that depend on them computed again
(the columns named by :class:`Derived` entries of formula ``"extractor"``). It must not change
its input in place."""

TOLERANCE = 1e-7
# the keys of the constraints' plain form (to_dict, from_dict, a campaign file's table)
CONSTRAINT_KEYS = (
    "mutable",
    "values",
    "ranges",
    "directions",
    "prices",
    "unit_prices",
    "groups",
    "derived",
    "extractor",
)
"""Changes smaller than this are no change (as in the L0 distance)."""

_INDEX = Interval(low=0, integral=True)
_PRICE = Interval(low=0.0)


class Direction(StrEnum):
    """Where a mutable feature may move from its original value."""

    ANY = "any"
    UP = "up"  # only to larger values
    DOWN = "down"  # only to smaller values


class Formula(StrEnum):
    """How a derived feature follows from others."""

    RATIO = "ratio"  # of[0] / of[1] (0 where of[1] is 0)
    SUM = "sum"  # the sum of the features in of
    PRODUCT = "product"  # their product
    EXTRACTOR = "extractor"  # what the constraints' feature extractor computes


@dataclass(frozen=True, kw_only=True)
class OneHot:
    """A one-hot group: exactly one of ``features`` is ``hot``, the others ``cold`` (a category
    encoded one feature per value). One edit moves the hot feature and costs ``price``."""

    features: tuple[int, ...] = param(
        ListOf(_INDEX, text="a sequence of at least two distinct feature indices"),
        help="the indices of the group's features",
    )
    price: float = param(_PRICE, 1.0, help="the price of moving the hot feature")
    hot: float = param(Interval(), 1.0, help="the value of the hot feature")
    cold: float = param(Interval(), 0.0, help="the value of the others")

    def __post_init__(self) -> None:
        check_fields(self)
        if len(self.features) < 2 or len(set(self.features)) != len(self.features):
            raise bad_param("OneHot", "features", "at least two distinct indices", self.features)
        if self.hot == self.cold:
            raise bad_param("OneHot", "hot", f"a value other than cold ({self.cold:g})", self.hot)

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "price": self.price,
            "hot": self.hot,
            "cold": self.cold,
        }


@dataclass(frozen=True, kw_only=True)
class Derived:
    """A feature computed from others: ``formula`` of the features ``of`` (a ratio needs two,
    a sum or product at least one), or by the constraints' extractor (``of`` empty)."""

    feature: int = param(_INDEX, help="the index of the derived feature")
    formula: Formula = param(Options(Formula), help="how it follows from the others")
    of: tuple[int, ...] = param(ListOf(_INDEX), (), help="the features it is computed from")

    def __post_init__(self) -> None:
        check_fields(self)
        need = {Formula.RATIO: "exactly two indices", Formula.EXTRACTOR: "no index"}.get(
            self.formula, "at least one index"
        )
        count = len(self.of)
        wrong = {
            Formula.RATIO: count != 2,
            Formula.EXTRACTOR: count != 0,
        }.get(self.formula, count < 1)
        if wrong:
            raise bad_param("Derived", "of", f"{need} for formula {self.formula.value!r}", self.of)
        if self.feature in self.of:
            raise bad_param("Derived", "of", f"indices other than feature {self.feature}", self.of)

    def compute(self, flat: Tensor) -> Tensor:
        """The feature's value for rows of flattened inputs (not for the extractor)."""
        cols = flat[:, list(self.of)]
        if self.formula is Formula.RATIO:
            num, den = cols[:, 0], cols[:, 1]
            return torch.where(den != 0, num / torch.where(den != 0, den, 1), 0)
        if self.formula is Formula.SUM:
            return cols.sum(1)
        return cols.prod(1)

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "formula": self.formula.value, "of": list(self.of)}


_SIGN = {Direction.ANY: 0.0, Direction.UP: 1.0, Direction.DOWN: -1.0}


@dataclass(frozen=True, eq=False)
class FeatureTable:
    """The mutable features' constraints as arrays, one row per mutable feature: its column
    in the flattened input, its allowed values (NaN-padded; all NaN: a range), its range
    (``-inf``/``inf``: none), its direction (1 up, -1 down, 0 either) and its prices."""

    columns: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    low: npt.NDArray[np.float64]
    high: npt.NDArray[np.float64]
    direction: npt.NDArray[np.float64]
    price: npt.NDArray[np.float64]
    unit_price: npt.NDArray[np.float64]


def _aligned(name: str, given: tuple[Any, ...], count: int) -> None:
    if given and len(given) != count:
        raise bad_param(
            "FeatureConstraints",
            name,
            f"one entry per mutable feature ({count}), or none",
            given,
        )


@dataclass(frozen=True)
class FeatureConstraints:
    """What the attacker may change: see the module docstring.

    ``mutable`` lists the indices (into the flattened input) of the features the attacker may
    set; ``values``, ``ranges``, ``directions``, ``prices`` and ``unit_prices`` have one entry
    per mutable feature, or none (then: any value in the bounds, either way, and the default
    prices). ``groups`` and ``derived`` name features that are not in ``mutable``; ``names``
    names every input feature, for reports."""

    mutable: tuple[int, ...] = param(
        ListOf(_INDEX, text="a sequence of feature indices (ints >= 0)"),
        help="the indices of the features the attacker may set",
    )
    values: tuple[tuple[float, ...], ...] = param(
        ListOf(ListOf(Interval())),
        (),
        help="per mutable feature, the values it may take (empty: a range)",
    )
    _: KW_ONLY
    ranges: tuple[tuple[float, float] | None, ...] = param(
        ListOf(OrNone(ListOf(Interval(), length=2, order="<="))),
        (),
        help="per mutable feature, [low, high] (None: the input bounds)",
    )
    directions: tuple[Direction, ...] = param(
        ListOf(Options(Direction)), (), help="per mutable feature, where it may move"
    )
    prices: tuple[float, ...] = param(
        ListOf(_PRICE), (), help="per mutable feature, the price of an edit"
    )
    unit_prices: tuple[float, ...] = param(
        ListOf(_PRICE), (), help="per mutable feature, the price per unit of change"
    )
    groups: tuple[OneHot, ...] = param(
        ListOf(Instance(OneHot, "a OneHot")), (), help="one-hot groups (one edit moves the hot one)"
    )
    derived: tuple[Derived, ...] = param(
        ListOf(Instance(Derived, "a Derived")), (), help="features computed from others"
    )
    extractor: FeatureExtractor | None = param(
        OrNone(Instance(Callable, "a callable (a FeatureExtractor)")),  # type: ignore[arg-type]
        None,
        help="computes the 'extractor' derived features from an edited input",
    )
    names: tuple[str, ...] = param(
        ListOf(Text()), (), help="the names of all input features (reports)", compare=False
    )

    def __post_init__(self) -> None:
        check_fields(self)
        n = len(self.mutable)
        for name in ("values", "ranges", "directions", "prices", "unit_prices"):
            _aligned(name, getattr(self, name), n)
        members = [i for g in self.groups for i in g.features]
        outputs = [d.feature for d in self.derived]
        every = [*self.mutable, *members, *outputs]
        if not every:
            raise bad_param(
                "FeatureConstraints",
                "mutable",
                "a non-empty sequence of feature indices (or one-hot groups or derived features)",
                self.mutable,
            )
        if len(set(every)) != len(every):
            twice = sorted({i for i in every if every.count(i) > 1})
            raise InputError(
                f"FeatureConstraints names features {twice} more than once among mutable, group "
                "and derived features; a feature is set by the attacker, by its group, or "
                "computed, not two of these."
            )
        extracted = any(d.formula is Formula.EXTRACTOR for d in self.derived)
        if extracted and self.extractor is None:
            raise InputError(
                "FeatureConstraints has derived features of formula 'extractor' but no "
                "extractor: give extractor=<a FeatureExtractor>."
            )
        if self.extractor is not None and not extracted:
            raise InputError(
                "FeatureConstraints has an extractor but no derived feature of formula "
                "'extractor' for it to compute: name them in derived."
            )

    # ------------------------------------------------------------------ builders
    @staticmethod
    def by_name(
        names: Sequence[str],
        mutable: Sequence[str],
        values: Mapping[str, Sequence[float]] | None = None,
        *,
        ranges: Mapping[str, tuple[float, float]] | None = None,
        directions: Mapping[str, Direction | str] | None = None,
        prices: Mapping[str, float] | None = None,
        unit_prices: Mapping[str, float] | None = None,
        groups: Sequence[OneHot] = (),
        derived: Sequence[Derived] = (),
        extractor: FeatureExtractor | None = None,
    ) -> FeatureConstraints:
        """Constraints from feature names (e.g. a tabular dataset's ``feature_names``); the
        mappings are keyed by the names of mutable features (features left out: no range,
        either way, price 0; with no price at all, unit price 1)."""
        index = {name: i for i, name in enumerate(names)}
        unknown = [m for m in mutable if m not in index]
        if unknown:
            raise InputError(
                f"Unknown feature names {unknown}; the features are: {', '.join(names)}."
            )
        values, ranges = values or {}, ranges or {}
        directions, prices, unit_prices = directions or {}, prices or {}, unit_prices or {}
        for what, table in (
            ("Allowed values", values),
            ("Ranges", ranges),
            ("Directions", directions),
            ("Prices", prices),
            ("Unit prices", unit_prices),
        ):
            extra = sorted(set(table) - set(mutable))
            if extra:
                raise InputError(f"{what} given for features not mutable: {extra}.")
        allowed = tuple(tuple(values.get(m, ())) for m in mutable)
        return FeatureConstraints(
            tuple(index[m] for m in mutable),
            allowed if any(allowed) else (),
            ranges=tuple(ranges.get(m) for m in mutable) if ranges else (),
            directions=tuple(cast(Direction, directions.get(m, Direction.ANY)) for m in mutable)
            if directions
            else (),
            prices=tuple(prices.get(m, 0.0) for m in mutable) if prices else (),
            unit_prices=tuple(unit_prices.get(m, 0.0) for m in mutable) if unit_prices else (),
            groups=tuple(groups),
            derived=tuple(derived),
            extractor=extractor,
            names=tuple(names),
        )

    # ------------------------------------------------------------------ per feature
    @property
    def changeable(self) -> tuple[int, ...]:
        """Every feature that may differ from the original: mutable, in a group, or derived."""
        return tuple(
            sorted(
                {
                    *self.mutable,
                    *(i for g in self.groups for i in g.features),
                    *(d.feature for d in self.derived),
                }
            )
        )

    @property
    def priced(self) -> bool:
        """Whether any price was given (else a change costs its size)."""
        return bool(self.prices or self.unit_prices)

    def allowed(self, j: int) -> tuple[float, ...]:
        """The values mutable feature ``j`` (a position in ``mutable``) may take (empty: a
        range)."""
        return self.values[j] if self.values else ()

    def range_of(self, j: int) -> tuple[float, float] | None:
        return self.ranges[j] if self.ranges else None

    def direction(self, j: int) -> Direction:
        return self.directions[j] if self.directions else Direction.ANY

    def price(self, j: int) -> float:
        return self.prices[j] if self.prices else 0.0

    def unit_price(self, j: int) -> float:
        if self.unit_prices:
            return self.unit_prices[j]
        return 0.0 if self.priced else 1.0

    def name_of(self, index: int) -> str:
        return self.names[index] if index < len(self.names) else f"feature {index}"

    @functools.cached_property
    def table(self) -> FeatureTable:
        """The mutable features' constraints as arrays (one row per mutable feature)."""
        m = len(self.mutable)
        width = max((len(v) for v in self.values), default=0)
        values = np.full((m, max(width, 1)), np.nan)
        for j, allowed in enumerate(self.values):
            values[j, : len(allowed)] = allowed
        spans = [self.range_of(j) for j in range(m)]
        return FeatureTable(
            columns=np.array(self.mutable, dtype=np.int64),
            values=values,
            low=np.array([-np.inf if r is None else r[0] for r in spans]),
            high=np.array([np.inf if r is None else r[1] for r in spans]),
            direction=np.array([_SIGN[self.direction(j)] for j in range(m)]),
            price=np.array([self.price(j) for j in range(m)], dtype=np.float64),
            unit_price=np.array([self.unit_price(j) for j in range(m)], dtype=np.float64),
        )

    def check(self, features: int) -> None:
        """Raise if an index does not exist in inputs of ``features`` features."""
        derived_inputs = [i for d in self.derived for i in d.of]
        indices = [*self.changeable, *derived_inputs]
        if indices and max(indices) >= features:
            raise InputError(
                f"FeatureConstraints names feature {max(indices)}, but inputs have "
                f"{features} features."
            )

    # ------------------------------------------------------------------ what a candidate is
    def complete(self, x: Tensor) -> Tensor:
        """``x`` (a batch of inputs) with the derived features computed again (a new tensor)."""
        if not self.derived:
            return x.clone()
        flat = x.flatten(1).clone()
        extracted = [d.feature for d in self.derived if d.formula is Formula.EXTRACTOR]
        if extracted and self.extractor is not None:
            computed = self.extractor(flat.reshape(x.shape).clone()).reshape(len(x), -1)
            flat[:, extracted] = computed[:, extracted].to(flat)
        for d in self.derived:
            if d.formula is not Formula.EXTRACTOR:
                flat[:, d.feature] = d.compute(flat).to(flat)
        return flat.reshape(x.shape)

    def feasible(self, candidate: Tensor, original: Tensor) -> Tensor:
        """Per row, whether ``candidate`` is an edit of ``original`` the attacker may make:
        only changeable features differ; each changed mutable feature is on an allowed value
        (or inside its range) and moved in its direction; each group is unchanged or one-hot;
        derived features are what their formula or the extractor computes. (The input bounds
        and the threat model's ball are the caller's to check.)"""
        c, x = candidate.flatten(1).double(), original.flatten(1).double()
        self.check(c.shape[1])
        delta = c - x
        ok = torch.ones(len(c), dtype=torch.bool, device=c.device)
        fixed = torch.ones(c.shape[1], dtype=torch.bool, device=c.device)
        fixed[list(self.changeable)] = False
        ok &= (delta[:, fixed].abs() <= TOLERANCE).all(1)
        if self.mutable:
            table = self.table
            at = torch.as_tensor(table.columns, device=c.device)
            now, step = c[:, at], delta[:, at]
            moved = step.abs() > TOLERANCE
            low, high, way, listed = (
                torch.as_tensor(a, device=c.device)
                for a in (table.low, table.high, table.direction, table.values)
            )
            good = (now >= low - TOLERANCE) & (now <= high + TOLERANCE) & (way * step >= 0)
            on_value = ((now[:, :, None] - listed).abs() <= TOLERANCE).any(2)
            good &= on_value | listed.isnan().all(1)
            ok &= (~moved | good).all(1)
        for g in self.groups:
            cols = list(g.features)
            moved = (delta[:, cols].abs() > TOLERANCE).any(1)
            hot = (c[:, cols] - g.hot).abs() <= TOLERANCE
            cold = (c[:, cols] - g.cold).abs() <= TOLERANCE
            one_hot = (hot | cold).all(1) & (hot.sum(1) == 1)
            ok &= ~moved | one_hot
        if self.derived:
            again = self.complete(candidate).flatten(1).double()
            cols = [d.feature for d in self.derived]
            slack = 1e-5 * (1 + again[:, cols].abs())
            ok &= ((c[:, cols] - again[:, cols]).abs() <= slack).all(1)
        return ok

    def cost(self, candidate: Tensor, original: Tensor) -> Tensor:
        """Per row, what the edit from ``original`` to ``candidate`` costs the attacker
        (float64): over the changed mutable features, price plus unit price times the size
        of the change, plus the price of each moved group."""
        c, x = candidate.flatten(1).double(), original.flatten(1).double()
        self.check(c.shape[1])
        total = torch.zeros(len(c), dtype=torch.float64, device=c.device)
        if self.mutable:
            table = self.table
            at = torch.as_tensor(table.columns, device=c.device)
            size = (c[:, at] - x[:, at]).abs()
            price = torch.as_tensor(table.price, device=c.device)
            unit = torch.as_tensor(table.unit_price, device=c.device)
            total += ((size > TOLERANCE) * (price + unit * size)).sum(1)
        for g in self.groups:
            cols = list(g.features)
            moved = ((c[:, cols] - x[:, cols]).abs() > TOLERANCE).any(1)
            total += moved.double() * g.price
        return total

    def edits(self, candidate: Tensor, original: Tensor) -> list[tuple[str, ...]]:
        """Per row, the edits from ``original`` to ``candidate`` in words (``"https: 0 -> 1"``,
        ``"colour: red -> blue"`` for a group named by its features), derived features left
        out."""
        c, x = candidate.flatten(1).double().cpu(), original.flatten(1).double().cpu()
        words: list[list[str]] = [[] for _ in range(len(c))]
        if self.mutable:
            cols = list(self.mutable)
            moved = (c[:, cols] - x[:, cols]).abs() > TOLERANCE
            for row, j in moved.nonzero().tolist():
                k = cols[j]
                old, new = float(x[row, k]), float(c[row, k])
                words[row].append(f"{self.name_of(k)}: {old:g} -> {new:g}")
        for g in self.groups:
            cols = list(g.features)
            moved = ((c[:, cols] - x[:, cols]).abs() > TOLERANCE).any(1)
            before = (x[:, cols] - g.hot).abs().argmin(1)
            after = (c[:, cols] - g.hot).abs().argmin(1)
            for row in moved.nonzero().squeeze(1).tolist():
                was, now = cols[int(before[row])], cols[int(after[row])]
                words[row].append(f"{self.name_of(was)} -> {self.name_of(now)}")
        return [tuple(w) for w in words]

    def apply(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """``x_adv`` held to the constraints: features the attacker cannot change restored;
        mutable ones held to their range and direction and snapped to the nearest allowed value
        (the original value is always allowed); groups that moved made one-hot at their largest
        feature; derived features computed again. A feasible ``x_adv`` is returned unchanged."""
        flat_adv, flat_x = x_adv.flatten(1), x.flatten(1)
        self.check(flat_x.shape[1])
        out = flat_x.clone()
        cols = list(self.changeable)
        out[:, cols] = flat_adv[:, cols]
        for j, k in enumerate(self.mutable):
            out[:, k] = self._hold(j, out[:, k], flat_x[:, k])
        for g in self.groups:
            members = list(g.features)
            moved = ((out[:, members] - flat_x[:, members]).abs() > TOLERANCE).any(1)
            if bool(moved.any()):
                pick = out[:, members].argmax(1) if g.hot > g.cold else out[:, members].argmin(1)
                hot = torch.full_like(out[:, members], g.cold)
                hot.scatter_(1, pick[:, None], g.hot)
                out[:, members] = torch.where(moved[:, None], hot, flat_x[:, members])
        return self.complete(out.reshape(x.shape))

    def _hold(self, j: int, value: Tensor, original: Tensor) -> Tensor:
        """Mutable feature ``j``'s values held to its range, direction and allowed values."""
        direction, span, allowed = self.direction(j), self.range_of(j), self.allowed(j)
        if direction is Direction.ANY and span is None and not allowed:
            return value
        low = torch.full_like(value, -math.inf if span is None else span[0])
        high = torch.full_like(value, math.inf if span is None else span[1])
        if direction is Direction.UP:
            low = torch.maximum(low, original)
        elif direction is Direction.DOWN:
            high = torch.minimum(high, original)
        if not allowed:
            held = torch.maximum(torch.minimum(value, high), low)
            return torch.where(low <= high, held, original)
        choices = torch.tensor(allowed, dtype=value.dtype, device=value.device).expand(
            len(value), -1
        )
        usable = (choices >= low[:, None]) & (choices <= high[:, None])
        table = torch.cat([choices, original[:, None]], 1)
        usable = torch.cat([usable, torch.ones_like(original, dtype=torch.bool)[:, None]], 1)
        gap = (value[:, None] - table).abs().masked_fill(~usable, math.inf)
        # ties go to the allowed value listed first, then to the original
        return table.gather(1, gap.argmin(1, keepdim=True)).squeeze(1)

    # ------------------------------------------------------------------ plain dicts
    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready dict (:meth:`from_dict` reads it back): ``mutable`` and
        ``values`` always, the other keys when they are given (``names`` never: from_dict
        takes them, but they are not part of what the constraints allow)."""
        out: dict[str, Any] = {
            "mutable": list(self.mutable),
            "values": [list(v) for v in self.values],
        }
        if self.ranges:
            out["ranges"] = [None if r is None else list(r) for r in self.ranges]
        if self.directions:
            out["directions"] = [d.value for d in self.directions]
        if self.prices:
            out["prices"] = list(self.prices)
        if self.unit_prices:
            out["unit_prices"] = list(self.unit_prices)
        if self.groups:
            out["groups"] = [g.to_dict() for g in self.groups]
        if self.derived:
            out["derived"] = [d.to_dict() for d in self.derived]
        if self.extractor is not None:
            out["extractor"] = reference(self.extractor)
        return out  # names are not part of the constraints' identity (nor compared)

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> FeatureConstraints:
        """Constraints from :meth:`to_dict`'s form; ``extractor`` is a ``"module:function"``
        reference, imported (so only from a trusted source)."""
        if not isinstance(data, Mapping):
            raise bad_param("FeatureConstraints.from_dict", "data", "a mapping", data)
        known = (*CONSTRAINT_KEYS, "names")
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InputError(
                f"FeatureConstraints.from_dict: unknown keys {unknown}; the keys are "
                f"{', '.join(known)}."
            )

        def table(item: Any, cls: type[OneHot] | type[Derived]) -> Any:
            if not isinstance(item, Mapping):
                raise bad_param("FeatureConstraints.from_dict", cls.__name__, "a mapping", item)
            return cls(**item)

        extractor = data.get("extractor")
        return FeatureConstraints(
            data.get("mutable", ()),
            data.get("values", ()),
            ranges=data.get("ranges", ()),
            directions=data.get("directions", ()),
            prices=data.get("prices", ()),
            unit_prices=data.get("unit_prices", ()),
            groups=tuple(table(g, OneHot) for g in data.get("groups", ())),
            derived=tuple(table(d, Derived) for d in data.get("derived", ())),
            extractor=None if extractor is None else resolve(extractor),
            names=data.get("names", ()),
        )


def reference(function: Callable[..., Any]) -> str:
    """``"module:qualified.name"`` of a function (what :func:`resolve` imports)."""
    module = getattr(function, "__module__", None) or "?"
    name = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{module}:{name}"


def resolve(text: Any) -> FeatureExtractor:
    """The callable a ``"module:name"`` reference names (the module is imported)."""
    expected = "a 'module:function' reference to an importable feature extractor"
    if not isinstance(text, str) or text.count(":") != 1:
        raise bad_param("FeatureConstraints", "extractor", expected, text)
    module_name, _, name = text.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in name.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError) as error:
        raise bad_param(
            "FeatureConstraints", "extractor", expected, text, reason=str(error)
        ) from None
    if not callable(target):
        raise bad_param("FeatureConstraints", "extractor", expected, text)
    function: FeatureExtractor = target
    return function
