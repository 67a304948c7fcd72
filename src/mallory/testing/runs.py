"""What the runs of every attack kind share: the attack under test, built once (from the
instance given, its class's ``test_params`` or its defaults), and its bench, made on first use."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Generic, TypeVar

from mallory.attacks.base import Attack
from mallory.testing.bench import Bench
from mallory.testing.checks import Findings, describe_error
from mallory.testing.classes import label

A = TypeVar("A", bound=Attack)


class AttackRuns(Generic[A]):
    """The attack of class ``cls`` (or the instance ``given``) and its bench; ``quick`` builds
    it with the class's quick test parameters."""

    def __init__(
        self, cls: type[A], given: A | None, bench: Callable[[], Bench], quick: bool
    ) -> None:
        self.cls = cls
        self.given = given
        self._bench = bench
        self.quick = quick
        self.who = label(cls)

    @functools.cached_property
    def bench(self) -> Bench:
        return self._bench()

    @functools.cached_property
    def _attack(self) -> A | str:
        if self.given is not None:
            return self.given
        try:
            if self.quick:
                b = self.bench
                return self.cls(**self.cls.test_params(b.system, b.x.clone(), b.y.clone()))
            return self.cls()
        except Exception as error:
            how = "test_params(system, x, y)" if self.quick else "its defaults"
            return f"building {self.who} with {how} {describe_error(error)}"

    @property
    def attack(self) -> A:
        """The attack; a check that needs it stops with why it could not be built."""
        built = self._attack
        if isinstance(built, str):
            raise Findings().stop(built)
        return built
