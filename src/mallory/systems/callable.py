"""A plain function returning scores as a system."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from mallory.systems.base import Bounds, Output, Stage, System, check_system_params
from mallory.threat import Exposure


class CallableModel(System):
    """Any function from a batch ``(n, *input_shape)`` to scores ``(n, num_classes)``.

    ``output`` says whether the scores are logits or probabilities. The function is treated
    as a black box (no gradients) unless ``differentiable=True`` says that torch autograd can
    pass through it. ``exposes`` caps what any threat model may grant (``"label"`` for a
    function whose scores are one-hot labels).
    """

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        *,
        input_shape: Sequence[int],
        num_classes: int,
        bounds: Bounds | tuple[Any, Any],
        output: Output | str = Output.PROBABILITIES,
        differentiable: bool = False,
        deterministic: bool = True,
        class_names: Sequence[str] | None = None,
        name: str = "callable",
        exposes: Exposure | str = Exposure.LOGITS,
    ) -> None:
        given = check_system_params(
            type(self).__name__, differentiable=differentiable, deterministic=deterministic
        )
        stage = Stage(
            name="model",
            fn=fn,
            differentiable=given["differentiable"],
            deterministic=given["deterministic"],
            surrogate=None,
        )
        super().__init__(
            [stage],
            input_shape=input_shape,
            bounds=bounds,
            num_classes=num_classes,
            output=output,
            class_names=class_names,
            name=name,
            exposes=exposes,
        )
