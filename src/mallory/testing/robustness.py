"""Robustness in a model's own test suite: :func:`assert_robust`, and a pytest fixture.

:func:`assert_robust` runs a campaign (a campaign file, a :class:`~mallory.Campaign`) or
takes a finished :class:`~mallory.Report`, checks thresholds on it with
:mod:`mallory.evaluation.gate` (those given, or the file's own ``[check]`` table), and raises
one :class:`RobustnessError` (an ``AssertionError``, so pytest shows a failed assertion) that
lists **every** threshold that failed with its measured value and its bound::

    from mallory.testing.robustness import assert_robust

    assert_robust("robustness.toml")  # the file's [check] thresholds (and its audit)
    assert_robust(report, [{"threat": "label-only", "metric": "robust_accuracy", "at_least": 0.4}])

As a pytest plugin (``pytest_plugins = ["mallory.testing.robustness"]`` in a ``conftest.py``)
it gives the fixture ``robustness``: :func:`assert_robust` with relative paths read from the
test module's folder, and each campaign file run once per test session however many tests
check it. The plugin is opt-in, not registered through an entry point: loading mallory (and
torch) at the start of every pytest run of every project that has mallory installed would tax
the test suites that never use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mallory.errors import InputError
from mallory.evaluation.audit import Audit
from mallory.evaluation.campaign import Campaign
from mallory.evaluation.gate import (
    Checked,
    CheckResult,
    Gate,
    Threshold,
    load_gate,
    outcome_lines,
    read_report,
    run_campaign_file,
)
from mallory.report.audit_model import AuditReport
from mallory.report.model import Report

__all__ = ["Robustness", "RobustnessError", "assert_robust"]

Thresholds = Sequence[Threshold | Mapping[str, Any]]
Target = str | Path | Campaign | Report


class RobustnessError(AssertionError):
    """Thresholds that failed; ``result`` is the whole :class:`CheckResult` (every outcome)."""

    def __init__(self, result: CheckResult) -> None:
        failed, total = len(result.failures), len(result.outcomes)
        lines = [f"run {result.run!r} failed {failed} of {total} robustness thresholds:"]
        lines += ["  " + line for line in outcome_lines(result.outcomes, width=78)]
        super().__init__("\n".join(lines))
        self.result = result


Memo = dict[tuple[Path, bool, str], Checked]


def assert_robust(
    target: Target,
    thresholds: Thresholds | None = None,
    *,
    store: str | Path | None = None,
    audit: Audit | AuditReport | None = None,
    progress: bool = False,
) -> CheckResult:
    """Check ``thresholds`` on ``target``; return the :class:`CheckResult` when all hold,
    raise :class:`RobustnessError` listing every one that failed otherwise.

    ``target``: a campaign file (run, or resumed, in its own store or ``store``), a saved
    JSON report (``.json``), a :class:`~mallory.Campaign` (run in ``store``; None: in memory)
    or a :class:`~mallory.Report`. ``thresholds``: Thresholds
    (:class:`mallory.evaluation.gate.Threshold`) or dicts of their keys (``metric``,
    ``threat``, ``at_least``, ``at_most``, ``codes``); None: the campaign file's own
    ``[check]`` table, its audit included. ``audit``: for ``audit_stages_failed`` with
    thresholds given here, an :class:`~mallory.Audit` to run or its report. A bad threshold,
    or an unknown threat model or metric, is an :class:`~mallory.InputError`.
    """
    return _check(target, thresholds, store=store, audit=audit, progress=progress, memo=None)


def _check(
    target: Target,
    thresholds: Thresholds | None,
    *,
    store: str | Path | None,
    audit: Audit | AuditReport | None,
    progress: bool,
    memo: Memo | None,
) -> CheckResult:
    file = Path(target) if isinstance(target, str | Path) else None
    where = str(file) if file is not None else "assert_robust"
    if thresholds is not None:
        gate = Gate.of(thresholds, where)
    elif file is not None and file.suffix != ".json":
        gate = load_gate(file)
    else:
        raise InputError(
            "assert_robust: give thresholds; only a campaign file brings its own (its [check] "
            "table)."
        )
    properties: dict[str, str] = {}
    audited = audit.run(progress=progress) if isinstance(audit, Audit) else audit
    if file is not None and file.suffix == ".json":
        found, properties["report"] = read_report(file), str(file)
    elif file is not None:
        key = (file.resolve(), gate.needs_audit, str(store))
        checked = memo.get(key) if memo is not None else None
        if checked is None:
            checked = run_campaign_file(file, gate, store=store, progress=progress)
            if memo is not None:
                memo[key] = checked
        found, audited = checked.report, checked.audit or audited
        properties.update(campaign=str(file), store=str(checked.store))
    elif isinstance(target, Campaign):
        gate.check_threats({p.threat.name: p.threat.goal.value for p in target.plans})
        found = target.run(store, progress=progress)
    elif isinstance(target, Report):
        found = target
    else:
        raise InputError(
            "assert_robust needs a campaign file, a saved JSON report, a Campaign or a Report; "
            f"got {type(target).__name__}."
        )
    result = gate.evaluate(found, audited, properties)
    if not result.passed:
        raise RobustnessError(result)
    return result


class Robustness:
    """:func:`assert_robust` for one test module: relative paths are read from ``folder``,
    and campaign files already run this session (``memo``) are not run again."""

    def __init__(self, folder: Path, memo: Memo) -> None:
        self.folder, self.memo = folder, memo

    def __call__(
        self,
        target: Target,
        thresholds: Thresholds | None = None,
        *,
        store: str | Path | None = None,
        audit: Audit | AuditReport | None = None,
        progress: bool = False,
    ) -> CheckResult:
        if isinstance(target, str | Path) and not Path(target).is_absolute():
            target = self.folder / target
        return _check(
            target, thresholds, store=store, audit=audit, progress=progress, memo=self.memo
        )


try:
    import pytest
except ModuleNotFoundError:  # pragma: no cover - assert_robust works without pytest
    pass
else:

    @pytest.fixture(scope="session")
    def _mallory_robustness_runs() -> Memo:
        return {}

    @pytest.fixture
    def robustness(request: pytest.FixtureRequest, _mallory_robustness_runs: Memo) -> Robustness:
        """:func:`assert_robust`, with paths relative to the test module's folder; each
        campaign file runs once per session."""
        return Robustness(Path(request.path).parent, _mallory_robustness_runs)
