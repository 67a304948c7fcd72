"""A pipeline of stages and systems: preprocessing, defenses, models, in order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mallory.errors import InputError
from mallory.systems.base import Bounds, Stage, System


class Pipeline(System):
    """Stages and systems run one after another; the last part must be a System.

    Systems contribute their stages (renamed ``system.stage`` when names clash). The input
    shape and bounds are those of the first part unless given: a preprocessing stage in front
    of a model usually keeps the model's input space, so they default to the model's.
    """

    def __init__(
        self,
        parts: Sequence[Stage | System],
        *,
        input_shape: Sequence[int] | None = None,
        bounds: Bounds | tuple[Any, Any] | None = None,
        name: str = "pipeline",
    ) -> None:
        if not parts or not isinstance(parts[-1], System):
            raise InputError("A Pipeline's last part must be a System (the model that scores).")
        model = parts[-1]
        first_system = next(p for p in parts if isinstance(p, System))
        stages: list[Stage] = []
        seen: set[str] = set()
        for part in parts:
            own = part.stages if isinstance(part, System) else (part,)
            if not isinstance(part, Stage | System):
                raise InputError(f"Pipeline parts must be Stage or System; got {part!r}.")
            for stage in own:
                if stage.name in seen:
                    prefix = part.name if isinstance(part, System) else "stage"
                    stage = Stage(
                        name=f"{prefix}.{stage.name}",
                        fn=stage.fn,
                        differentiable=stage.differentiable,
                        deterministic=stage.deterministic,
                        surrogate=stage.surrogate,
                        defense=stage.defense,
                    )
                if stage.name in seen:
                    raise InputError(f"Duplicate stage name {stage.name!r} in Pipeline.")
                seen.add(stage.name)
                stages.append(stage)
        super().__init__(
            stages,
            input_shape=input_shape if input_shape is not None else first_system.input_shape,
            bounds=bounds if bounds is not None else first_system.bounds,
            num_classes=model.num_classes,
            output=model.output,
            class_names=model.class_names,
            name=name,
        )
