"""Flags: findings that make a reported number doubtful, with what to do about them.

A flag is raised where the evidence is (the judge sees randomness and saturated outputs, the
attack base sees zero gradients and budgets too small) and travels with the result into the
store, the JSON and HTML reports and the terminal summary. ``code`` is stable (tests and tools
match on it); ``message`` is for people: what was seen, why it matters, what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# the codes
UNDECLARED_RANDOMNESS = "undeclared-randomness"
RANDOMIZED = "randomized"
PROBABILITIES_AS_LOGITS = "probabilities-as-logits"
SATURATED_SOFTMAX = "saturated-softmax"
ZERO_GRADIENTS = "zero-gradients"
NONFINITE_GRADIENTS = "nonfinite-gradients"
OVER_BUDGET = "over-budget"
NOT_RUN = "not-run"
STOPPED_BY_SYSTEM = "stopped-by-system"


@dataclass(frozen=True)
class Flag:
    """One finding: a stable ``code`` and a plain-language ``message``."""

    code: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Flag:
        return Flag(str(data["code"]), str(data["message"]))

    def __str__(self) -> str:
        return self.message


def unique(flags: list[Flag] | tuple[Flag, ...]) -> tuple[Flag, ...]:
    """The flags in order, each (code, message) once."""
    return tuple(dict.fromkeys(flags))
