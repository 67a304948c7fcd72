"""A pipeline of stages and systems: preprocessing, defenses, models, in order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mallory.errors import InputError, bad_param
from mallory.params import OrNone
from mallory.systems.base import EXPOSES, TOP_K, Bounds, Stage, System
from mallory.threat import Exposure


class Pipeline(System):
    """Stages and systems run one after another; the last part must be a System.

    Systems contribute their stages (renamed ``system.stage`` when names clash). The input
    shape and bounds are those of the first part unless given: a preprocessing stage in front
    of a model usually keeps the model's input space, so they default to the model's.

    The pipeline answers as its last system does: ``exposes`` (and ``top_k``) default to that
    system's, and so does its refusal label; the admission policies of every system in it
    (rate limits, bans, detectors) guard the whole pipeline. A pipeline may declare a poorer
    exposure (a wrapper that shows only labels), never a richer one.
    """

    def __init__(
        self,
        parts: Sequence[Stage | System],
        *,
        input_shape: Sequence[int] | None = None,
        bounds: Bounds | tuple[Any, Any] | None = None,
        name: str = "pipeline",
        exposes: Exposure | str | None = None,
        top_k: int | None = None,
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
        shown, shown_k = _exposure(model, exposes, top_k)
        self._systems = tuple(part for part in parts if isinstance(part, System))
        super().__init__(
            stages,
            input_shape=input_shape if input_shape is not None else first_system.input_shape,
            bounds=bounds if bounds is not None else first_system.bounds,
            num_classes=model.num_classes,
            output=model.output,
            class_names=model.class_names,
            name=name,
            exposes=shown,
            top_k=shown_k,
            refusal_label=model.refusal_label,
            policies=[p for part in parts if isinstance(part, System) for p in part.policies],
        )

    def parts(self) -> dict[str, Any]:
        """The parts of the systems in the pipeline (the first of a name wins)."""
        found: dict[str, Any] = {}
        for system in self._systems:
            for name, part in system.parts().items():
                found.setdefault(name, part)
        return found


def _exposure(
    model: System, exposes: Exposure | str | None, top_k: int | None
) -> tuple[Exposure, int | None]:
    """The exposure a pipeline declares: the last system's, or a poorer one given."""
    owner = "Pipeline"
    declared: Exposure | None = OrNone(EXPOSES).check(owner, "exposes", exposes)
    top_k = TOP_K.check(owner, "top_k", top_k)
    if declared is None:
        if top_k is not None:
            raise bad_param(owner, "top_k", "None unless exposes='top-k' is given", top_k)
        return model.exposes, model.top_k
    shown = declared
    if shown.richness > model.exposes.richness:
        raise bad_param(
            "Pipeline",
            "exposes",
            f"no richer than its last system {model.name!r} shows ({model.exposes.value!r})",
            shown.value,
        )
    if shown is not Exposure.TOP_K:
        if top_k is not None:
            raise bad_param("Pipeline", "top_k", "None unless exposes='top-k'", top_k)
        return shown, None
    if top_k is None:
        raise bad_param(owner, "top_k", "an int >= 1 with exposes='top-k'", top_k)
    if model.exposes is Exposure.TOP_K and model.top_k is not None and top_k > model.top_k:
        raise bad_param(
            "Pipeline", "top_k", f"at most the {model.top_k} scores its last system shows", top_k
        )
    return shown, top_k
