"""Systems: what is attacked, as an ordered list of stages from raw input to scores.

A bare model is a one-stage system. Each stage says whether it is differentiable and
deterministic; a non-differentiable stage may offer a surrogate for its backward pass
(BPDA, Athalye et al. 2018; the identity by default). Attacks never call a system: the
:class:`~mallory.access.oracle.Oracle` does, under a threat model.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mallory.errors import AccessError, InputError, bad_param
from mallory.params import (
    Boolean,
    Constraint,
    Converted,
    Instance,
    Interval,
    ListOf,
    Options,
    OrNone,
    Text,
    check_values,
)
from mallory.threat import Exposure

if TYPE_CHECKING:
    from mallory.access.policies import Policy

StageFn = Callable[[Tensor], "Tensor | Verdict"]

REFUSED = -1
"""The label of a row the system refused to answer (blocked, banned, sent to review)."""
ABSTAINED = -2
"""The label of a row the system declined to decide (a certified model that abstains)."""


def identity(x: Tensor) -> Tensor:
    """The default surrogate backward of a non-differentiable stage (BPDA identity)."""
    return x


class Output(StrEnum):
    """What the last stage of a system returns."""

    LOGITS = "logits"
    PROBABILITIES = "probabilities"


@dataclass(frozen=True)
class Verdict:
    """What a deciding stage returns instead of a bare tensor: its outputs, and the rows it
    refused (a detector that blocks, a response policy that bans or sends to review) or on
    which it abstained (a certified model that will not decide).

    ``values`` has one row per input; a later stage still receives every row (a refused row's
    values are whatever the stage passed on), and the system's answer marks the refused and
    abstained rows of every stage. ``reason`` says why rows were refused (for the report).
    """

    values: Tensor
    refused: Tensor | None = None
    abstained: Tensor | None = None
    reason: str = ""

    def mask(self, which: str) -> Tensor:
        """The ``refused`` or ``abstained`` mask, all False when the stage gave none."""
        value = getattr(self, which)
        if value is None:
            return torch.zeros(len(self.values), dtype=torch.bool)
        return value.to(device="cpu", dtype=torch.bool)


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One component of a system: preprocessing, feature extractor, model, detector.

    ``fn`` maps a batch to a batch, or to a :class:`Verdict` when the stage may refuse or
    abstain on some rows. A stage that is not ``differentiable`` is bridged, for
    attackers allowed gradients, by ``surrogate`` (a differentiable stand-in for its backward
    pass); ``surrogate=None`` means no gradient can pass through it. A ``defense`` stage is
    invisible to a non-adaptive attacker's gradients.
    """

    name: str
    fn: StageFn
    differentiable: bool = True
    deterministic: bool = True
    surrogate: StageFn | None = identity
    defense: bool = False


@dataclass(frozen=True)
class Bounds:
    """The input domain: a box, elementwise ``lower <= x <= upper`` (floats or tensors)."""

    lower: Tensor
    upper: Tensor

    @staticmethod
    def of(
        value: Bounds | tuple[Any, Any],
        shape: Sequence[int] = (),
        *,
        owner: str = "Bounds.of",
        name: str = "bounds",
    ) -> Bounds:
        """``value`` as Bounds that fit inputs of ``shape``; errors name the parameter
        ``name`` of ``owner``."""
        if isinstance(value, Bounds):
            return value
        box: Bounds = BOUNDS.check(owner, name, value)
        if not (_broadcasts(box.lower.shape, shape) and _broadcasts(box.upper.shape, shape)):
            raise bad_param(
                owner,
                name,
                f"bounds that fit inputs of shape {tuple(shape)}",
                value,
                reason=f"lower and upper of shapes {tuple(box.lower.shape)} and "
                f"{tuple(box.upper.shape)} do not fit",
            )
        return box

    def on(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Lower and upper bounds with the dtype and device of ``x``."""
        return self.lower.to(x), self.upper.to(x)

    def clamp(self, x: Tensor) -> Tensor:
        lo, hi = self.on(x)
        return torch.maximum(torch.minimum(x, hi), lo)

    def outside(self, x: Tensor, tol: float = 1e-6) -> Tensor:
        """Per-sample mask of inputs with a feature outside the box (beyond ``tol``)."""
        lo, hi = self.on(x)
        bad = (x < lo - tol) | (x > hi + tol)
        return bad.flatten(1).any(1)

    @property
    def width(self) -> Tensor:
        return self.upper - self.lower

    def to_dict(self) -> dict[str, Any]:
        def scalar(t: Tensor) -> Any:
            return float(t) if t.numel() == 1 else t.tolist()

        return {"lower": scalar(self.lower), "upper": scalar(self.upper)}


def _as_bounds(value: Any) -> Bounds:
    """Bounds from a pair (lower, upper) of numbers or tensors; ValueError when it is not one
    with lower < upper everywhere."""
    if isinstance(value, Bounds):
        return value
    if isinstance(value, str | bytes):
        raise ValueError("not a pair")
    lower, upper = value
    try:
        lo = torch.as_tensor(lower, dtype=torch.float64)
        hi = torch.as_tensor(upper, dtype=torch.float64)
        ordered = bool(torch.all(lo < hi))
    except RuntimeError:  # not numbers, or shapes that do not broadcast
        raise ValueError("not numbers") from None
    if not ordered:
        raise ValueError("lower >= upper")
    return Bounds(lo, hi)


# ------------------------------------------------------------------ constructor parameters
INPUT_SHAPE: Constraint = ListOf(Interval(low=1, integral=True), nonempty=True)
"""A system's ``input_shape``: the shape of one input, without the batch dimension."""
NUM_CLASSES: Constraint = Interval(low=2, integral=True)
BOUNDS: Constraint = Converted(
    Instance(Bounds, "a Bounds"),
    _as_bounds,
    "a pair (lower, upper) of numbers or tensors with lower < upper everywhere, or a Bounds",
)
OUTPUT: Constraint = Options(Output)
EXPOSES: Constraint = Options(Exposure)
TOP_K: Constraint = OrNone(Interval(low=1, integral=True))
REFUSAL_LABEL: Constraint = OrNone(Interval(low=0, integral=True))
DETERMINISTIC: Constraint = Boolean()
NAME: Constraint = Text()
SYSTEM_PARAMS: dict[str, Constraint] = {
    "input_shape": INPUT_SHAPE,
    "num_classes": NUM_CLASSES,
    "bounds": BOUNDS,
    "output": OUTPUT,
    "exposes": EXPOSES,
    "top_k": TOP_K,
    "refusal_label": REFUSAL_LABEL,
    "deterministic": DETERMINISTIC,
    "differentiable": Boolean(),
    "name": NAME,
}
"""The constraint of every constructor parameter that systems share, by name: each adapter
checks the ones it takes with :func:`check_system_params` (the generated tests read them)."""


def check_system_params(owner: str, **values: Any) -> dict[str, Any]:
    """``values`` (constructor arguments named as in :data:`SYSTEM_PARAMS`) as stored."""
    return check_values(owner, SYSTEM_PARAMS, values)


def _broadcasts(small: Sequence[int], shape: Sequence[int]) -> bool:
    """Whether a tensor of shape ``small`` broadcasts to ``shape`` without growing it."""
    if len(small) > len(shape):
        return False
    return all(a in (1, b) for a, b in zip(reversed(small), reversed(shape), strict=False))


class System:
    """Stages from raw input to class scores, with the input shape and bounds.

    ``input_shape`` excludes the batch dimension. ``output`` says whether the last stage
    returns logits or probabilities. ``exposes`` is the richest answer the system can give at
    all (a remote API that returns only labels exposes ``Exposure.LABEL``; its scores are then
    one-hot and no threat model may grant more); ``top_k`` is how many scores a top-k system
    shows. ``refusal_label`` is the class the system shows when it refuses a query, for threat
    models whose refusals look like labels (a phishing filter that blocks answers "phishing").
    ``policies`` are the system's admission policies (rate limits, bans, detectors: see
    :mod:`mallory.access.policies`), applied by every oracle on it.
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        input_shape: Sequence[int],
        bounds: Bounds | tuple[Any, Any],
        num_classes: int,
        output: Output | str = Output.LOGITS,
        class_names: Sequence[str] | None = None,
        name: str = "system",
        exposes: Exposure | str = Exposure.LOGITS,
        top_k: int | None = None,
        refusal_label: int | None = None,
        policies: Sequence[Policy] = (),
    ) -> None:
        owner = type(self).__name__
        if not stages:
            raise InputError("A System needs at least one stage.")
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise InputError(f"Stage names of a System must be unique; got {names}.")
        given = check_system_params(
            owner,
            input_shape=input_shape,
            num_classes=num_classes,
            output=output,
            name=name,
            exposes=exposes,
            top_k=top_k,
            refusal_label=refusal_label,
        )
        shape: tuple[int, ...] = given["input_shape"]
        self.stages: tuple[Stage, ...] = tuple(stages)
        self.input_shape = shape
        self.bounds = Bounds.of(bounds, shape, owner=owner)
        self.num_classes: int = given["num_classes"]
        self.output: Output = given["output"]
        self.class_names = (
            tuple(str(c) for c in class_names)
            if class_names is not None
            else tuple(str(i) for i in range(self.num_classes))
        )
        if len(self.class_names) != self.num_classes:
            raise InputError(
                f"class_names has {len(self.class_names)} names for {self.num_classes} classes."
            )
        self.name: str = given["name"]
        self.exposes: Exposure = given["exposes"]
        self.top_k: int | None = given["top_k"]  # how many scores a top-k system shows
        self.refusal_label: int | None = _refusal_label(owner, refusal_label, self.num_classes)
        self.policies: tuple[Policy, ...] = tuple(policies)

    def with_policies(self, *policies: Policy, refusal_label: int | None = None) -> System:
        """A copy of this system behind more admission policies (a rate limit, a ban, a
        detector), and with the label it shows when it refuses, if given."""
        clone = copy.copy(self)
        clone.policies = (*self.policies, *policies)
        if refusal_label is not None:
            clone.refusal_label = _refusal_label(
                f"{type(self).__name__}.with_policies", refusal_label, self.num_classes
            )
        return clone

    def randomized(self) -> System:
        """A copy of this system declared randomized (every stage not deterministic): the
        judge then decides its predictions by a majority over draws."""
        clone = copy.copy(self)
        clone.stages = tuple(dataclasses.replace(s, deterministic=False) for s in self.stages)
        return clone

    def __repr__(self) -> str:
        stages = " -> ".join(s.name for s in self.stages)
        return f"{type(self).__name__}({self.name!r}: {stages}; input {self.input_shape})"

    @property
    def deterministic(self) -> bool:
        return all(s.deterministic for s in self.stages)

    def forward(self, x: Tensor) -> Tensor:
        """The system's outputs on a batch, without gradients (refused and abstained rows hold
        whatever the last stage gave them; :meth:`answer` marks them)."""
        return self.answer(x).values

    def answer(self, x: Tensor) -> Verdict:
        """The system's outputs on a batch, without gradients, with the rows any stage refused
        or abstained on (a refusal wins over an abstention on the same row)."""
        refused = abstained = None
        reasons: list[str] = []
        with torch.no_grad():
            for stage in self.stages:
                out = stage.fn(x)
                if isinstance(out, Verdict):
                    if out.refused is not None:
                        mask = out.mask("refused")
                        refused = mask if refused is None else refused | mask
                        if out.reason and bool(mask.any()):
                            reasons.append(out.reason)
                    if out.abstained is not None:
                        mask = out.mask("abstained")
                        abstained = mask if abstained is None else abstained | mask
                    out = out.values
                x = out
        if refused is not None and abstained is not None:
            abstained = abstained & ~refused
        return Verdict(x, refused, abstained, "; ".join(dict.fromkeys(reasons)))

    def gradient_path(self, *, adaptive: bool) -> tuple[Stage, ...]:
        """The stages a gradient passes through (defenses drop out for a non-adaptive attacker).

        Raises AccessError when a stage on the path has neither a gradient nor a surrogate.
        """
        path = tuple(s for s in self.stages if adaptive or not s.defense)
        for stage in path:
            if not stage.differentiable and stage.surrogate is None:
                raise AccessError(
                    f"The system {self.name!r} offers no gradients: its stage {stage.name!r} is "
                    "not differentiable and has no surrogate backward. Give the stage a surrogate "
                    "(BPDA), or attack it with a score-based or label-only threat model."
                )
        return path

    def forward_differentiable(
        self,
        x: Tensor,
        *,
        adaptive: bool,
        straight_through: Sequence[str] = (),
        logits_before: str | None = None,
    ) -> Tensor:
        """Outputs through the gradient path, recording the autograd graph to ``x``.

        A non-differentiable stage runs forward as it is and backward through its surrogate
        (straight-through: ``s(x) + (f(x) - s(x)).detach()``). ``straight_through`` names more
        stages, or parts of stages (a torch model's submodules, see :meth:`parts`), whose
        backward pass becomes the identity (BPDA, Athalye et al. 2018), for stages whose
        gradient is zero or useless although autograd can differentiate them.
        ``logits_before`` names a part (``"softmax"``: the system's final softmax layer) whose
        input is returned instead of the system's output: the logits under a softmax, for an
        attacker who knows the architecture.
        """
        if not straight_through and logits_before is None:
            return self._through(x, self.gradient_path(adaptive=adaptive), set())
        names = set(straight_through)
        stage_names = {s.name for s in self.stages}
        captured: list[Tensor] = []
        with self.bypassed(names - stage_names), self._capture(logits_before, captured):
            x = self._through(x, self.gradient_path(adaptive=adaptive), names)
        if logits_before is not None:
            if not captured:
                raise InputError(
                    f"The part {logits_before!r} of the system {self.name!r} never ran on the "
                    "gradient path, so it has no logits to give."
                )
            return captured[-1]
        return x

    @staticmethod
    def _through(x: Tensor, path: tuple[Stage, ...], straight: set[str]) -> Tensor:
        """``x`` through the stages of a gradient path; those named in ``straight`` pass
        gradients as the identity, non-differentiable ones through their surrogate."""
        for stage in path:
            if stage.name in straight:
                with torch.no_grad():
                    exact = _values(stage.fn(x))
                if exact.shape != x.shape:
                    raise InputError(
                        f"The stage {stage.name!r} changes the shape ({tuple(x.shape)} to "
                        f"{tuple(exact.shape)}): an identity backward cannot stand in for it."
                    )
                x = x + (exact - x).detach()
            elif stage.differentiable:
                x = _values(stage.fn(x))
            else:
                assert stage.surrogate is not None  # checked by gradient_path
                with torch.no_grad():
                    exact = _values(stage.fn(x))
                stand_in = _values(stage.surrogate(x))
                x = stand_in + (exact - stand_in).detach()
        return x

    def parts(self) -> dict[str, Any]:
        """The named parts inside the stages that gradients can be routed around (a torch
        model's submodules, by their names in ``named_modules()``); none for a system that
        hides them."""
        return {}

    def softmax_part(self) -> str | None:
        """The name of the system's final softmax layer, when it has one as a part."""
        from torch import nn

        found = None
        for name, part in self.parts().items():
            if isinstance(part, nn.Softmax | nn.LogSoftmax):
                found = name
        return found

    def _part(self, name: str, why: str) -> Any:
        parts = self.parts()
        if name not in parts:
            known = sorted({s.name for s in self.stages} | set(parts))
            raise InputError(
                f"The system {self.name!r} has no stage or part named {name!r} {why}; it has: "
                f"{', '.join(known) or 'no named parts'}."
            )
        return parts[name]

    @contextmanager
    def bypassed(self, names: set[str]) -> Iterator[None]:
        """Within the block, the parts ``names`` pass gradients straight through: their forward
        is exact, their backward the identity (they must keep the shape of their input)."""
        modules = [
            (name, self._part(name, "to pass gradients straight through")) for name in sorted(names)
        ]
        handles = []

        def straight(module: Any, inputs: tuple[Any, ...], output: Any) -> Any:
            first = inputs[0]
            if not isinstance(output, Tensor) or output.shape != first.shape:
                raise InputError(
                    "A part passed straight through must keep the shape of its input; "
                    f"{type(module).__name__} maps {tuple(first.shape)} to "
                    f"{tuple(output.shape) if isinstance(output, Tensor) else type(output)}."
                )
            return first + (output - first).detach()

        try:
            for _, module in modules:
                handles.append(module.register_forward_hook(straight))
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def _capture(self, name: str | None, into: list[Tensor]) -> Iterator[None]:
        """Within the block, the input of part ``name`` is appended to ``into``."""
        if name is None:
            yield
            return
        if name == "softmax":
            found = self.softmax_part()
            if found is None:
                raise InputError(
                    f"The system {self.name!r} has no softmax layer among its parts to take the "
                    "logits from (a softmax called as a function cannot be found): give mallory "
                    "the network before its softmax, output='logits'."
                )
            name = found
        module = self._part(name, "to take logits from")

        def grab(module: Any, inputs: tuple[Any, ...]) -> None:
            into.append(inputs[0])

        handle = module.register_forward_pre_hook(grab)
        try:
            yield
        finally:
            handle.remove()


def _refusal_label(owner: str, label: object, num_classes: int) -> int | None:
    value: int | None = REFUSAL_LABEL.check(owner, "refusal_label", label)
    if value is not None and value >= num_classes:
        raise bad_param(
            owner, "refusal_label", f"a class index 0..{num_classes - 1}, or None", label
        )
    return value


def _values(out: Tensor | Verdict) -> Tensor:
    return out.values if isinstance(out, Verdict) else out
