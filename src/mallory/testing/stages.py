"""The conformance checks of a single Stage, and the helpers the system checks share.

A stage must keep the batch (its shape, unless told otherwise, and the bounds), leave its
input alone, and be deterministic and differentiable as declared: a stage declared
differentiable must pass a gradient that is not zero everywhere; one that is not
differentiable must offer a surrogate that passes one, or none at all. An output stage that
declares an exposure must show no more than it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mallory.errors import InputError
from mallory.systems.base import Bounds, Stage, Verdict
from mallory.testing.checks import Check, Findings
from mallory.threat import Exposure

SUM_TOLERANCE = 1e-4  # how far from 1 a row of probabilities may sum
CLOSE = 1e-5  # tolerance on outputs across batch sizes and gradient paths
BOUND_SLACK = 1e-6
CHUNK = 7  # the batch size of the batch-size check


# ---------------------------------------------------------------- shared helpers
def values_of(out: Tensor | Verdict) -> Tensor:
    return out.values if isinstance(out, Verdict) else out


def same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and bool(torch.isclose(a, b, rtol=0, atol=0, equal_nan=True).all())


def close(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and bool(
        torch.isclose(a, b, rtol=CLOSE * 10, atol=CLOSE, equal_nan=True).all()
    )


def _projection(shape: torch.Size) -> Tensor:
    """Fixed weights to reduce an output to one number (seeded, so runs repeat)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def gradient_of(fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor | None, Tensor]:
    """The gradient of a fixed projection of ``fn(x)`` with respect to ``x`` (None when the
    output carries no gradient), and the output."""
    inputs = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = fn(inputs)
        if not isinstance(out, Tensor) or not out.requires_grad:
            return None, out
        weights = _projection(out.shape).to(device=out.device, dtype=out.dtype)
        value = (out.nan_to_num(0.0) * weights).sum()
        (grad,) = torch.autograd.grad(value, inputs, allow_unused=True)
    if grad is None:
        return torch.zeros_like(x), out.detach()
    return grad.detach(), out.detach()


def exposure_problem(values: Tensor, exposes: Exposure, top_k: int | None) -> str | None:
    """Why ``values`` (decided rows) carry more than ``exposes`` shows (None: they do not)."""
    if exposes in (Exposure.LOGITS, Exposure.SCORES) or not len(values):
        return None
    k = 1 if exposes is Exposure.LABEL else (top_k or values.shape[1])
    if k >= values.shape[1]:
        return None
    ranked = values.sort(dim=1, descending=True).values
    hidden = ranked[:, k:]
    # the hidden classes must all look alike: one value per row (0, or the mass spread evenly)
    spread = (hidden.max(1).values - hidden.min(1).values).abs()
    leaking = spread > CLOSE
    if not bool(leaking.any()):
        return None
    what = "the label" if exposes is Exposure.LABEL else f"the top {k} scores"
    return (
        f"{int(leaking.sum())} of {len(values)} answers carry more than {what} (the classes "
        f"below the top {k} take different values), though it declares exposes="
        f"{exposes.value!r}: answer one-hot rows (or the top k, the rest spread evenly), or "
        "declare a richer exposure"
    )


# ---------------------------------------------------------------- stages
def check_inputs(x: object, who: str) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise InputError(f"{who} needs x as a float torch.Tensor; got {type(x).__name__}.")
    if x.dim() < 2 or len(x) < 2:
        raise InputError(f"{who} needs a batch of at least 2 inputs; got shape {tuple(x.shape)}.")
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{who} needs finite inputs; x holds NaN or infinite values.")
    return x


def decided_rows(out: Tensor | Verdict, n: int) -> Tensor:
    if not isinstance(out, Verdict):
        return torch.ones(n, dtype=torch.bool)
    return ~(out.mask("refused") | out.mask("abstained"))


def stage_differentiability(stage: Stage, x: Tensor, f: Findings, *, where: str = "") -> None:
    """Notes where ``stage`` is not differentiable as it declares, on the inputs ``x``."""
    at = f" {where}" if where else ""
    if stage.differentiable:
        grad, _ = gradient_of(lambda t: values_of(stage.fn(t)), x)
        if not f.expect(
            grad is not None,
            f"the stage {stage.name!r} is declared differentiable, but its output{at} carries "
            "no gradient to its input (computed outside autograd, or detached): declare it "
            "differentiable=False with a surrogate (BPDA), or compute it with torch",
        ):
            return
        assert grad is not None  # for the type checker: tested above
        f.expect(
            bool(torch.isfinite(grad).all()),
            f"the gradient through the stage {stage.name!r}{at} holds NaN or infinite values",
        )
        f.expect(
            bool((grad != 0).any()),
            f"the stage {stage.name!r} is declared differentiable, but its gradient{at} is zero "
            "for every input: a gradient attack sees nothing (masked gradients). Declare it "
            "differentiable=False with a surrogate (BPDA, e.g. the identity)",
        )
        return
    if stage.surrogate is None:
        return  # no gradient offered: gradient attacks are refused, as they should be
    surrogate = stage.surrogate
    with torch.no_grad():
        exact = values_of(stage.fn(x.clone()))
    grad, stand_in = gradient_of(lambda t: values_of(surrogate(t)), x)
    f.expect(
        isinstance(stand_in, Tensor) and stand_in.shape == exact.shape,
        lambda: (
            f"the surrogate of the stage {stage.name!r}{at} returns shape "
            f"{tuple(stand_in.shape) if isinstance(stand_in, Tensor) else type(stand_in).__name__}"
            f"; the stage returns {tuple(exact.shape)}: the straight-through estimator needs both "
            "the same shape"
        ),
    )
    f.expect(
        grad is not None and bool(torch.isfinite(grad).all()),
        f"the surrogate of the stage {stage.name!r}{at} passes no finite gradient: give it a "
        "differentiable function of its input (the identity, or a smooth approximation)",
    )


class _StageBench:
    def __init__(self, stage: Stage, x: Tensor) -> None:
        self.stage, self.x = stage, x

    @functools.cached_property
    def out(self) -> Tensor | Verdict:
        with torch.no_grad():
            return self.stage.fn(self.x.clone())


def stage_checks(
    stage: Stage,
    x: Tensor,
    *,
    bounds: Bounds | tuple[Any, Any] | None = (0.0, 1.0),
    keeps_shape: bool = True,
) -> list[Check]:
    """The checks :func:`check_stage` runs, one :class:`Check` each."""
    if not isinstance(stage, Stage):
        raise InputError(f"check_stage needs a mallory Stage; got {type(stage).__name__}.")
    x = check_inputs(x, "check_stage")
    box = None if bounds is None else Bounds.of(bounds)
    if box is not None and bool(box.outside(x).any()):
        raise InputError(
            f"check_stage: x lies outside the bounds {box.to_dict()}; pass the stage's bounds "
            "with bounds=(lower, upper), or bounds=None for a stage without any."
        )
    bench = _StageBench(stage, x)
    who = f"stage {stage.name!r}"

    def make(name: str, explains: str, body: Callable[[Findings], None]) -> Check:
        return Check(name, who, explains, body)

    checks = [
        make(
            "declared",
            "a non-empty name, callables, and bool declarations",
            lambda f: _stage_declared(stage, f),
        ),
        make(
            "output-shape",
            "a tensor (or a Verdict) with one row per input, of the input's shape unless told "
            "otherwise",
            lambda f: _stage_shape(bench, keeps_shape, f),
        ),
    ]
    if box is not None:
        checks.append(
            make(
                "bounds-kept",
                "finite outputs inside the bounds",
                lambda f: _stage_bounds(bench, box, f),
            )
        )
    checks += [
        make(
            "inputs-untouched",
            "the stage does not modify its input",
            lambda f: _stage_untouched(stage, x, f),
        ),
        make(
            "deterministic-as-declared",
            "a stage declared deterministic answers the same input the same way twice, and "
            "whatever the batch size",
            lambda f: _stage_deterministic(bench, f),
        ),
        make(
            "differentiable-as-declared",
            "a gradient that is finite and not zero everywhere when declared differentiable; "
            "else a surrogate that passes one, or none",
            lambda f: stage_differentiability(stage, x, f),
        ),
    ]
    exposes = getattr(stage, "exposes", None)
    if isinstance(exposes, Exposure):
        checks.append(
            make(
                "exposure-as-declared",
                "an output stage shows no more than the exposure it declares",
                lambda f: _stage_exposure(bench, exposes, f),
            )
        )
    return checks


def _stage_declared(stage: Stage, f: Findings) -> None:
    f.expect(
        isinstance(stage.name, str) and bool(stage.name),
        "a stage needs a non-empty name",
    )
    f.expect(callable(stage.fn), "the stage's fn is not callable")
    for flag in ("differentiable", "deterministic", "defense"):
        value = getattr(stage, flag)
        f.expect(isinstance(value, bool), f"{flag} must be True or False; got {value!r}", key=flag)
    f.expect(
        stage.surrogate is None or callable(stage.surrogate),
        "the stage's surrogate must be a function or None",
    )


def _stage_shape(bench: _StageBench, keeps_shape: bool, f: Findings) -> None:
    out, x = bench.out, bench.x
    values = values_of(out)
    if not f.expect(
        isinstance(values, Tensor),
        f"the stage returned {type(values).__name__}, not a tensor or a Verdict",
    ):
        return
    if not f.expect(
        values.dim() >= 1 and len(values) == len(x),
        f"the stage returned {tuple(values.shape)} for {len(x)} inputs: one row per input",
    ):
        return
    if keeps_shape:
        f.expect(
            values.shape == x.shape,
            f"the stage changed the shape of its input from {tuple(x.shape)} to "
            f"{tuple(values.shape)} (pass keeps_shape=False for a stage that should)",
        )
    f.expect(values.is_floating_point(), f"the stage returned {values.dtype} values, not floats")
    if isinstance(out, Verdict):
        for which in ("refused", "abstained"):
            mask = getattr(out, which)
            f.expect(
                mask is None or (isinstance(mask, Tensor) and mask.shape == (len(x),)),
                f"the Verdict's {which} mask should be None or one bool per input",
            )


def _stage_bounds(bench: _StageBench, box: Bounds, f: Findings) -> None:
    values = values_of(bench.out)
    if not isinstance(values, Tensor) or values.shape != bench.x.shape:
        return  # reported by output-shape; the bounds are those of the inputs
    decided = decided_rows(bench.out, len(values)).to(values.device)
    rows = values[decided].detach().cpu()
    finite = torch.isfinite(rows.flatten(1)).all(1)
    f.expect(
        bool(finite.all()),
        lambda: f"the stage returned NaN or infinite values on {int((~finite).sum())} inputs",
    )
    outside = box.outside(rows, tol=BOUND_SLACK)
    f.expect(
        not bool(outside.any()),
        lambda: (
            f"the stage's outputs leave the bounds {box.to_dict()} on {int(outside.sum())} "
            f"of {len(rows)} inputs: clamp them (Bounds.clamp)"
        ),
    )


def _stage_untouched(stage: Stage, x: Tensor, f: Findings) -> None:
    given = x.clone()
    with torch.no_grad():
        stage.fn(given)
    if stage.surrogate is not None and not stage.differentiable:
        stage.surrogate(given)
    f.expect(
        torch.equal(given, x),
        "the stage modified its input in place: compute on a copy, a later stage or the "
        "attacker's record still needs the input",
    )


def _stage_deterministic(bench: _StageBench, f: Findings) -> None:
    stage, x = bench.stage, bench.x
    if not stage.deterministic:
        return  # declared randomized: answering differently is allowed
    first = values_of(bench.out)
    with torch.no_grad():
        again = values_of(stage.fn(x.clone()))
    if not isinstance(first, Tensor) or not isinstance(again, Tensor):
        return  # reported by output-shape
    f.expect(
        same(first.cpu(), again.cpu()),
        "the stage is declared deterministic but answered the same inputs differently twice: "
        "declare deterministic=False (the judge then votes over draws)",
    )
    with torch.no_grad():
        parts = [values_of(stage.fn(x[i : i + CHUNK].clone())) for i in range(0, len(x), CHUNK)]
    if all(isinstance(p, Tensor) for p in parts):
        chunked = torch.cat([p.cpu() for p in parts])
        f.expect(
            close(chunked, first.cpu()),
            f"the stage answers differently in batches of {CHUNK} than in one batch: a "
            "deterministic stage must treat each input on its own",
        )


def _stage_exposure(bench: _StageBench, exposes: Exposure, f: Findings) -> None:
    values = values_of(bench.out)
    if not isinstance(values, Tensor) or values.dim() != 2:
        return
    decided = decided_rows(bench.out, len(values)).to(values.device)
    problem = exposure_problem(values[decided].detach().cpu(), exposes, None)
    f.expect(problem is None, lambda: f"the stage: {problem}")
