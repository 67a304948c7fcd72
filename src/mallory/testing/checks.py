"""What a conformance check is, how its findings are collected, and the error that lists them.

A :class:`Check` is a named, documented, zero-argument callable. Running it collects every
problem it finds (not only the first) as plain sentences; :func:`run_checks` runs a list of
them and raises one :class:`ConformanceError` naming every check that failed and why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

# A check that raises something other than a finding reports it with at most this much text.
_MESSAGE_CHARS = 600


class Finding(AssertionError):
    """Raised inside a check to stop it with one problem (see :meth:`Findings.stop`)."""


@dataclass(frozen=True)
class Failure:
    """One failed check and the problems it found, in plain words."""

    check: str
    problems: tuple[str, ...]


class ConformanceError(AssertionError):
    """Raised by :func:`~mallory.testing.check_attack`, :func:`~mallory.testing.check_system`
    and :func:`~mallory.testing.check_stage` when checks fail: its message lists every failed
    check with every problem it found; ``failures`` holds them as data, ``checks`` is how many
    checks ran."""

    def __init__(self, subject: str, failures: Sequence[Failure], checks: int) -> None:
        self.subject = subject
        self.failures = tuple(failures)
        self.checks = checks
        super().__init__(self._message())

    def _message(self) -> str:
        lines = [f"{self.subject} failed {len(self.failures)} of {self.checks} conformance checks:"]
        # the same problem seen by several checks (a run that crashed) is told once
        merged: dict[str, list[str]] = {}
        for failure in self.failures:
            for problem in failure.problems:
                merged.setdefault(problem, []).append(failure.check)
        for problem, checks in merged.items():
            lines.append(f"  [{', '.join(dict.fromkeys(checks))}] {problem}")
        return "\n".join(lines)

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the failed checks."""
        return tuple(f.check for f in self.failures)


class Findings:
    """The problems one check has found so far."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self._keys: set[str] = set()

    def expect(self, ok: bool, problem: str | Callable[[], str], *, key: str | None = None) -> bool:
        """Note ``problem`` unless ``ok``; a ``key`` already noted is not noted twice (the same
        fault seen in several runs). ``problem`` may be a function, called only on failure.
        Returns ``ok``."""
        if ok:
            return True
        if key is not None:
            if key in self._keys:
                return False
            self._keys.add(key)
        self.problems.append(problem() if callable(problem) else problem)
        return False

    def fail(self, problem: str, *, key: str | None = None) -> None:
        """Note ``problem`` (once per ``key``)."""
        self.expect(False, problem, key=key)

    def stop(self, problem: str) -> Finding:
        """A problem that makes the rest of the check meaningless: ``raise findings.stop(...)``."""
        return Finding(problem)


@dataclass(frozen=True)
class Check:
    """One conformance check of one subject: ``name`` (kebab-case), ``explains`` (what it
    checks, one sentence). Calling it raises :class:`ConformanceError` when it fails."""

    name: str
    subject: str
    explains: str
    body: Callable[[Findings], None] = field(repr=False)

    def problems(self) -> tuple[str, ...]:
        """Run the check; the problems it found (empty: it passed)."""
        findings = Findings()
        try:
            self.body(findings)
        except Finding as stopped:
            findings.problems.append(str(stopped))
        except Exception as error:  # the subject crashed: that is a finding too
            findings.problems.append(describe_error(error))
        return tuple(findings.problems)

    def __call__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConformanceError(self.subject, [Failure(self.name, problems)], 1)


def describe_error(error: BaseException) -> str:
    """An exception as one sentence: its type and its message, cut to a readable length."""
    if isinstance(error, Finding):
        return str(error)
    text = str(error).strip().replace("\n", " ")
    if len(text) > _MESSAGE_CHARS:
        text = text[: _MESSAGE_CHARS - 3] + "..."
    return f"raised {type(error).__name__}: {text}" if text else f"raised {type(error).__name__}"


def run_checks(subject: str, checks: Iterable[Check]) -> None:
    """Run every check; raise one :class:`ConformanceError` listing all that failed."""
    failures: list[Failure] = []
    count = 0
    for check in checks:
        count += 1
        problems = check.problems()
        if problems:
            failures.append(Failure(check.name, problems))
    if failures:
        raise ConformanceError(subject, failures, count)
