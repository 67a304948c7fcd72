"""The conformance checks of a System.

A system must answer ``(n, num_classes)`` outputs, finite where it decided, probabilities that
sum to 1 where it says it returns probabilities, without touching its inputs, the same way
twice when it says it is deterministic and whatever the batch size; its gradient path must
follow its stages' ``differentiable``/``surrogate``/``defense`` declarations (and each stage,
on the inputs it really gets, be differentiable as it says); its answers must carry no more
than the exposure it declares; and it must answer through
:class:`~mallory.access.oracle.Oracle` under every threat model that exposure allows.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from mallory.access.oracle import Access, Oracle
from mallory.errors import AccessError, InputError
from mallory.systems.base import ABSTAINED, REFUSED, Output, Stage, System, Verdict
from mallory.testing.checks import Check, Findings
from mallory.testing.stages import (
    CHUNK,
    SUM_TOLERANCE,
    check_inputs,
    close,
    exposure_problem,
    gradient_of,
    same,
    stage_differentiability,
    values_of,
)
from mallory.threat import Exposure, Norm, ThreatModel, label_only, score_based, white_box


# ---------------------------------------------------------------- systems
class _SystemBench:
    def __init__(self, system: System, x: Tensor, y: Tensor | None) -> None:
        self.system, self.x, self.y = system, x, y

    @functools.cached_property
    def verdict(self) -> Verdict:
        answer = self.system.answer(self.x.clone())
        if not isinstance(answer, Verdict):
            raise Findings().stop(
                f"answer() returned {type(answer).__name__}, not a mallory Verdict"
            )
        return answer

    @functools.cached_property
    def values(self) -> Tensor:
        values = self.verdict.values
        if not isinstance(values, Tensor) or values.shape != (
            len(self.x),
            self.system.num_classes,
        ):
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise Findings().stop(
                f"answer() returned outputs of shape {got} for {len(self.x)} inputs; expected "
                f"({len(self.x)}, {self.system.num_classes}), one score per class"
            )
        return values.detach().cpu()

    @functools.cached_property
    def decided(self) -> Tensor:
        return ~(self.verdict.mask("refused") | self.verdict.mask("abstained"))

    @functools.cached_property
    def predictions(self) -> Tensor:
        predictions = self.values.nan_to_num(-math.inf).argmax(1)
        predictions[self.verdict.mask("abstained")] = ABSTAINED
        predictions[self.verdict.mask("refused")] = REFUSED
        return predictions


def system_checks(
    system: System,
    x: Tensor,
    *,
    y: Tensor | None = None,
    sum_tolerance: float = SUM_TOLERANCE,
) -> list[Check]:
    """The checks :func:`check_system` runs, one :class:`Check` each."""
    if not isinstance(system, System):
        raise InputError(f"check_system needs a mallory System; got {type(system).__name__}.")
    x = check_inputs(x, "check_system")
    if tuple(x.shape[1:]) != system.input_shape:
        raise InputError(
            f"check_system: x has shape {tuple(x.shape)}; the system {system.name!r} takes "
            f"(n, {', '.join(map(str, system.input_shape))})."
        )
    if bool(system.bounds.outside(x).any()):
        raise InputError(
            f"check_system: x lies outside the system's bounds {system.bounds.to_dict()}."
        )
    if y is not None and (
        not isinstance(y, Tensor)
        or y.shape != (len(x),)
        or y.is_floating_point()
        or bool(((y < 0) | (y >= system.num_classes)).any())
    ):
        raise InputError(
            f"check_system: y must be {len(x)} class indices in 0..{system.num_classes - 1}."
        )
    bench = _SystemBench(system, x, y)
    who = f"system {system.name!r}"

    def make(name: str, explains: str, body: Callable[[Findings], None]) -> Check:
        return Check(name, who, explains, body)

    checks = [
        make(
            "output-shape",
            "answer() returns a Verdict of (n, num_classes) outputs with per-row masks; "
            "forward() returns its values",
            lambda f: _shape(bench, f),
        ),
        make(
            "finite-outputs",
            "outputs are finite on every row the system decided",
            lambda f: _finite(bench, f),
        ),
    ]
    if system.output is Output.PROBABILITIES:
        checks.append(
            make(
                "probabilities-sum-to-one",
                "declared probabilities lie in [0, 1] and sum to 1 on every decided row",
                lambda f: _probabilities(bench, sum_tolerance, f),
            )
        )
    checks += [
        make(
            "inputs-untouched",
            "answering (with or without gradients) does not modify the inputs",
            lambda f: _untouched(bench, f),
        ),
        make(
            "deterministic-as-declared",
            "a system declared deterministic answers the same inputs the same way twice",
            lambda f: _deterministic(bench, f),
        ),
        make(
            "batch-size-independent",
            f"a deterministic system answers the same in batches of {CHUNK} and one at a time",
            lambda f: _batch(bench, f),
        ),
        make(
            "gradients-as-declared",
            "gradient_path and forward_differentiable follow the stages' differentiable, "
            "surrogate and defense declarations",
            lambda f: _gradients(bench, f),
        ),
        make(
            "exposure-as-declared",
            "answers carry no more than the declared exposure (one-hot for label, top k)",
            lambda f: _exposure(bench, f),
        ),
        make(
            "works-through-oracle",
            "answers labels, scores, logits and gradients through mallory.Oracle under every "
            "threat model its exposure allows",
            lambda f: _oracle(bench, f),
        ),
    ]
    return checks


def _shape(bench: _SystemBench, f: Findings) -> None:
    verdict, n = bench.verdict, len(bench.x)
    _ = bench.values  # stops with the shape problem
    for which in ("refused", "abstained"):
        mask = getattr(verdict, which)
        f.expect(
            mask is None
            or (isinstance(mask, Tensor) and mask.shape == (n,) and mask.dtype == torch.bool),
            f"the Verdict's {which} mask should be None or {n} bools",
        )
    with torch.no_grad():
        forward = bench.system.forward(bench.x.clone())
    f.expect(
        isinstance(forward, Tensor) and forward.shape == (n, bench.system.num_classes),
        lambda: (
            f"forward() returned {getattr(forward, 'shape', type(forward).__name__)}; "
            f"expected ({n}, {bench.system.num_classes})"
        ),
    )


def _finite(bench: _SystemBench, f: Findings) -> None:
    rows = bench.values[bench.decided]
    finite = torch.isfinite(rows).all(1)
    f.expect(
        bool(finite.all()),
        lambda: (
            f"the system answered NaN or infinite outputs on {int((~finite).sum())} of "
            f"{len(rows)} rows it decided (refuse or abstain on them instead, with a Verdict)"
        ),
    )


def _probabilities(bench: _SystemBench, tolerance: float, f: Findings) -> None:
    rows = bench.values[bench.decided].double()
    rows = rows[torch.isfinite(rows).all(1)]
    outside = ((rows < -tolerance) | (rows > 1 + tolerance)).any(1)
    f.expect(
        not bool(outside.any()),
        lambda: (
            f"the system declares output='probabilities', but {int(outside.sum())} rows "
            "hold values outside [0, 1]: declare output='logits' if they are logits"
        ),
    )
    sums = rows.sum(1)
    off = (sums - 1).abs() > tolerance
    f.expect(
        not bool(off.any()),
        lambda: (
            f"the system declares output='probabilities', but {int(off.sum())} of "
            f"{len(rows)} rows do not sum to 1 (sums from {float(sums.min()):.4g} to "
            f"{float(sums.max()):.4g}): normalize them, or declare output='logits'"
        ),
    )


def _untouched(bench: _SystemBench, f: Findings) -> None:
    system, x = bench.system, bench.x
    given = x.clone()
    with torch.no_grad():
        system.answer(given)
        system.forward(given)
    f.expect(torch.equal(given, x), "answer() or forward() modified its inputs in place")
    for adaptive in (True, False):
        try:
            system.gradient_path(adaptive=adaptive)
        except AccessError:
            continue
        given = x.clone().requires_grad_(True)
        with torch.enable_grad():
            system.forward_differentiable(given, adaptive=adaptive)
        f.expect(
            torch.equal(given.detach(), x),
            "forward_differentiable() modified its inputs in place",
            key="differentiable",
        )


def _deterministic(bench: _SystemBench, f: Findings) -> None:
    system = bench.system
    if not system.deterministic:
        return  # declared randomized: the judge votes over draws
    again = system.answer(bench.x.clone())
    answered_alike = same(again.values.detach().cpu(), bench.values) and torch.equal(
        again.mask("refused") | again.mask("abstained"), ~bench.decided
    )
    f.expect(
        answered_alike,
        "the system is declared deterministic (every stage deterministic=True), but it "
        "answered the same inputs differently twice: declare the random stage "
        "deterministic=False (or system.randomized()), so that the judge votes over draws "
        "instead of taking one noisy answer as the verdict",
    )


def _batch(bench: _SystemBench, f: Findings) -> None:
    system, x = bench.system, bench.x
    if not system.deterministic:
        return
    parts = [system.answer(x[i : i + CHUNK].clone()) for i in range(0, len(x), CHUNK)]
    values = torch.cat([p.values.detach().cpu() for p in parts])
    masks = torch.cat([p.mask("refused") | p.mask("abstained") for p in parts])
    single = system.answer(x[:1].clone()).values.detach().cpu()
    f.expect(
        close(values, bench.values) and torch.equal(masks, ~bench.decided),
        f"the system answers differently in batches of {CHUNK} than in one batch: its answer "
        "to an input must not depend on the other inputs of the batch",
        key="batch",
    )
    f.expect(
        close(single, bench.values[:1]),
        "the system answers an input alone differently than in a batch",
        key="batch",
    )


def _expected_path(system: System, adaptive: bool) -> tuple[list[Stage], Stage | None]:
    path = [s for s in system.stages if adaptive or not s.defense]
    blocked = next((s for s in path if not s.differentiable and s.surrogate is None), None)
    return path, blocked


def _gradients(bench: _SystemBench, f: Findings) -> None:
    system, x = bench.system, bench.x
    # each stage, on the inputs it really gets, behaves as it declares
    h = x.clone()
    for stage in system.stages:
        stage_differentiability(stage, h, f, where="(inside the system)")
        with torch.no_grad():
            h = values_of(stage.fn(h)).detach()
    for adaptive in (True, False):
        who = "an adaptive" if adaptive else "a non-adaptive"
        path, blocked = _expected_path(system, adaptive)
        try:
            given = system.gradient_path(adaptive=adaptive)
        except AccessError as error:
            f.expect(
                blocked is not None,
                f"gradient_path refuses {who} attacker ({error}), but every stage on its path "
                "is differentiable or has a surrogate",
            )
            continue
        if not f.expect(
            blocked is None,
            f"gradient_path gives {who} attacker a path through the stage "
            f"{getattr(blocked, 'name', '?')!r}, which is not differentiable and has no "
            "surrogate: it must raise AccessError",
        ):
            continue
        f.expect(
            [s.name for s in given] == [s.name for s in path],
            f"gradient_path for {who} attacker is {[s.name for s in given]}; the stages declare "
            f"{[s.name for s in path]} (defense stages drop out for a non-adaptive attacker)",
        )

        def through(inputs: Tensor, adaptive: bool = adaptive) -> Tensor:
            return system.forward_differentiable(inputs, adaptive=adaptive)

        grad, out = gradient_of(through, x)
        shape = (len(x), system.num_classes)
        if not f.expect(
            isinstance(out, Tensor) and out.shape == shape,
            f"forward_differentiable returned {getattr(out, 'shape', '?')}; expected {shape}",
        ):
            continue
        if not f.expect(
            grad is not None,
            f"forward_differentiable for {who} attacker returns outputs without a gradient to "
            "the inputs, though gradient_path offers one",
        ):
            continue
        assert grad is not None  # for the type checker: tested above
        f.expect(
            bool(torch.isfinite(grad).all()),
            f"the gradient through the system for {who} attacker holds NaN or infinite values",
        )
        f.expect(
            bool((grad != 0).any()),
            f"the gradient through the system for {who} attacker is zero for every input: a "
            "stage masks it (declare it differentiable=False with a surrogate)",
            key="zero",
        )
        if adaptive and system.deterministic:
            f.expect(
                close(out.cpu(), bench.values) or not bool(bench.decided.any()),
                "forward_differentiable computes other outputs than answer(): the gradient "
                "path must run the same stages forward",
            )


def _exposure(bench: _SystemBench, f: Findings) -> None:
    system = bench.system
    rows = bench.values[bench.decided]
    rows = rows[torch.isfinite(rows).all(1)]
    problem = exposure_problem(rows, system.exposes, system.top_k)
    f.expect(problem is None, lambda: f"the system: {problem}")


def _threats(system: System) -> list[ThreatModel]:
    """The presets the system's exposure allows, without budgets."""
    out = [label_only(Norm.LINF, 0.1, queries=None)]
    if system.exposes is Exposure.TOP_K:
        k = system.top_k or system.num_classes
        out.append(score_based(Norm.LINF, 0.1, queries=None, exposure=Exposure.TOP_K, top_k=k))
    elif system.exposes.richness >= Exposure.SCORES.richness:
        out.append(score_based(Norm.LINF, 0.1, queries=None))
    if system.exposes is Exposure.LOGITS:
        out.append(white_box(Norm.LINF, 0.1))
    return out


def _oracle(bench: _SystemBench, f: Findings) -> None:
    system, x, n = bench.system, bench.x, len(bench.x)
    ids = torch.arange(n)
    for threat in _threats(system):
        where = f"under the {threat.name!r} threat model"
        try:
            oracle = Oracle(system, threat)
        except Exception as error:
            f.expect(False, f"mallory.Oracle refused the system {where}: {error}")
            continue
        try:
            labels = oracle.labels(x.clone(), ids).cpu()
        except Exception as error:
            f.expect(False, f"labels() failed {where}: {type(error).__name__}: {error}")
            continue
        if not f.expect(
            labels.shape == (n,) and labels.dtype == torch.int64,
            f"labels() {where} returned {tuple(labels.shape)} {labels.dtype}",
        ):
            continue
        if system.deterministic:
            answered = labels >= 0
            f.expect(
                torch.equal(labels[answered], bench.predictions[answered]),
                f"the labels the oracle shows {where} are not the system's predictions",
                key="labels",
            )
        if threat.sees_scores:
            try:
                scores = oracle.scores(x.clone(), ids)
                f.expect(
                    scores.shape == (n, system.num_classes),
                    f"scores() {where} returned {tuple(scores.shape)}",
                )
            except Exception as error:
                f.expect(False, f"scores() failed {where}: {type(error).__name__}: {error}")
        if threat.exposure is Exposure.LOGITS:
            try:
                logits = oracle.logits(x.clone(), ids)
                f.expect(
                    logits.shape == (n, system.num_classes),
                    f"logits() {where} returned {tuple(logits.shape)}",
                )
            except Exception as error:
                f.expect(False, f"logits() failed {where}: {type(error).__name__}: {error}")
        if oracle.access is Access.GRADIENTS:
            target = bench.y if bench.y is not None else bench.predictions.clamp_min(0)

            def loss(logits: Tensor, target: Tensor = target) -> Tensor:
                return torch.nn.functional.cross_entropy(
                    logits, target.to(logits.device), reduction="none"
                )

            try:
                answer = oracle.gradient(x.clone(), ids, loss)
                f.expect(
                    answer.grad.shape == x.shape and bool(torch.isfinite(answer.grad).all()),
                    f"gradient() {where} returned a gradient of shape "
                    f"{tuple(answer.grad.shape)} or with non-finite values",
                )
            except Exception as error:
                f.expect(False, f"gradient() failed {where}: {type(error).__name__}: {error}")
