"""How numbers are written in every rendering: NaN (not measured) as "—", infinity as "∞"."""

from __future__ import annotations

import math

from mallory.report.model import Ledger

MISSING = "—"
MINUS = "−"


def _special(value: float) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return MISSING
    if math.isnan(value):
        return MISSING
    if math.isinf(value):
        return "∞" if value > 0 else f"{MINUS}∞"
    return None


def num(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits; whole numbers of any size written in full."""
    special = _special(value)
    if special is not None:
        return special
    if abs(value) < 1e15 and (float(value).is_integer() or abs(value) >= 10**digits):
        return f"{value:,.0f}".replace("-", MINUS)
    text = f"{value:.{digits}g}"
    return text.replace("-", MINUS) if text.startswith("-") else text


def pct(share: float) -> str:
    """A share in [0, 1] as a percentage with one decimal."""
    special = _special(share)
    return special if special is not None else f"{100 * share:.1f}%"


def count(value: float) -> str:
    """A count with thousands separators."""
    special = _special(value)
    return special if special is not None else f"{round(value):,}"


def delta(a: float, b: float, *, share: bool = False) -> str:
    """``b - a`` with a sign; in percentage points when ``share``. "—" when either is missing
    or both are infinite."""
    if _special(a) == MISSING or _special(b) == MISSING:
        return MISSING
    if math.isinf(a) or math.isinf(b):
        return MISSING if a == b else num(b - a)
    diff = b - a
    if diff == 0:
        return "±0 pp" if share else "±0"
    sign = "+" if diff > 0 else MINUS
    if share:
        return f"{sign}{abs(100 * diff):.1f} pp"
    return f"{sign}{num(abs(diff))}"


def eps(value: float) -> str:
    """An epsilon bound: "∞" when unbounded."""
    return num(value, 4)


def tick(value: float) -> str:
    """A short axis label: 1k, 2.5M, 0.001."""
    special = _special(value)
    if special is not None:
        return special
    size = abs(value)
    for bound, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if size >= bound:
            return f"{value / bound:.3g}{suffix}".replace("-", MINUS)
    return f"{value:.3g}".replace("-", MINUS)


def ledger_text(ledger: Ledger) -> str:
    """The four costs of a ledger on one line."""
    return (
        f"{count(ledger.queries)} queries · {count(ledger.gradients)} gradients · "
        f"{num(ledger.seconds)} s · money {num(ledger.money)}"
    )
