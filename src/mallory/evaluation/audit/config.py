"""Audit files: a defended system, its baseline, the data and the audit's settings, in TOML.

::

    name = "bit-depth"                     # optional: names the report
    [system]                               # the defended system: as in a campaign file, and
    model = "mnist-cnn"                    #   recipe = {name = "pgd-training", eps = 0.1, ...}
    defenses = [{name = "bit-depth", bits = 3}]   # stages put in front of it
    [baseline]                             # optional: the [system] without its defenses
    model = "mnist-cnn"
    [data]                                 # as in a campaign file
    samples = 200
    [audit]
    eps = 0.3                              # required; every other key has a default
    norm = "linf"
    stages = [1, 2, 3, 4, 5, 6]

A ``recipe`` trains the model on the train split of the zoo dataset the data comes from (cached
by its configuration); ``defenses`` are the stages of :mod:`mallory.defenses.stages`, by name,
with their parameters. The keys of ``[audit]`` are the fields of
:class:`~mallory.evaluation.audit.runner.Audit`. Every error names the file and the key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mallory import defenses
from mallory.errors import InputError
from mallory.evaluation.audit.runner import Audit
from mallory.evaluation.config_data import SystemChoice, read_data, read_system
from mallory.evaluation.config_table import Table, closest
from mallory.systems.base import System
from mallory.threat import Norm
from mallory.zoo import load_dataset

TOP_KEYS = ("name", "system", "baseline", "data", "audit")
AUDIT_KEYS = (
    "eps",
    "norm",
    "margin",
    "tolerance",
    "steps",
    "queries",
    "draws",
    "straight_through",
    "other_norm",
    "other_eps",
    "stages",
    "seed",
)
STAGES: dict[str, Callable[..., Any]] = {
    "bit-depth": defenses.bit_depth,
    "jpeg": defenses.jpeg_compression,
    "median": defenses.median_smoothing,
    "crop": defenses.center_crop,
    "resize-pad": defenses.random_resize_pad,
    "label-only": defenses.label_only,
    "rounded-scores": defenses.rounded_scores,
}
RECIPES = {recipe.name: recipe for recipe in defenses.RECIPES}


def load_audit(path: str | Path, *, progress: bool = True) -> tuple[str, Audit]:
    """The audit file at ``path``: its name and its :class:`Audit`, ready to run."""
    file = Path(path)
    if not file.is_file():
        what = "is a folder" if file.is_dir() else "does not exist"
        raise InputError(f"No audit file at {file.resolve()}: it {what}.")
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise InputError(f"{file}: not UTF-8 text ({error}); an audit file is TOML.") from None
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"{file}: not valid TOML: {error}.") from None
    return parse_audit(data, base=file.resolve().parent, where=str(file), progress=progress)


def parse_audit(
    data: dict[str, Any], *, base: Path, where: str, progress: bool = True
) -> tuple[str, Audit]:
    top = Table(data, "", where, TOP_KEYS)
    name = top.text("name", Path(where).stem or "audit")
    defended = _read_system(top.get("system"), "system", base, where, progress)
    baseline_values = top.get("baseline", None)
    if baseline_values is None:
        # the same system without its defenses; a recipe's baseline is plain training with
        # the recipe's network and schedule
        plain = {k: v for k, v in top.get("system").items() if k != "defenses"}
        recipe = plain.get("recipe")
        if isinstance(recipe, dict):
            shared = ("architecture", "width", "epochs", "batch_size", "seed")
            plain["recipe"] = {"name": "plain", **{k: recipe[k] for k in shared if k in recipe}}
        baseline = _read_system(plain, "system", base, where, progress, bare=True)
    else:
        baseline = _read_system(baseline_values, "baseline", base, where, progress)
    chosen = read_data(top.get("data", None), defended, base=base, where=where)
    settings = Table(top.get("audit"), "audit", where, AUDIT_KEYS)
    fields: dict[str, Any] = {"eps": settings.number("eps")}
    for key in ("margin", "tolerance", "other_eps"):
        if settings.has(key):
            fields[key] = settings.number(key)
    for key in ("steps", "queries", "draws", "seed"):
        if settings.has(key):
            fields[key] = settings.integer(key, low=0 if key == "seed" else 1)
    for key in ("norm", "other_norm"):
        if settings.has(key):
            fields[key] = settings.text(key, choices=[n.value for n in Norm])
    if settings.has("stages"):
        fields["stages"] = tuple(_list(settings, "stages", int))
    if settings.has("straight_through"):
        fields["straight_through"] = tuple(_list(settings, "straight_through", str))
    try:
        audit = Audit(
            defended=defended.system,
            baseline=baseline.system,
            data=chosen.evaluated,
            defended_name=defended.name,
            baseline_name=baseline.name
            if baseline_values is not None
            else f"{baseline.name} (undefended)",
            **fields,
        )
    except InputError as error:
        raise InputError(f"{where}: audit: {error}") from None
    return name, audit


def _list(table: Table, key: str, kind: type) -> list[Any]:
    value = table.get(key)
    if not isinstance(value, list) or not all(
        isinstance(v, kind) and not isinstance(v, bool) for v in value
    ):
        raise table.fail(key, f"must be an array of {kind.__name__} values; got {value!r}.")
    return value


def _read_system(
    values: Any, at: str, base: Path, where: str, progress: bool, *, bare: bool = False
) -> SystemChoice:
    """A ``[system]``-like table, with ``recipe`` (a model trained here) and ``defenses``
    (stages in front of it) besides what a campaign file takes."""
    if not isinstance(values, dict):
        raise InputError(f"{where}: {at}: must be a table; got {values!r}.")
    values = dict(values)
    recipe = values.pop("recipe", None)
    stages = [] if bare else values.pop("defenses", [])
    if recipe is not None:
        choice = _trained(recipe, values, at, where, progress)
    else:
        try:
            choice = read_system(values, base=base, where=where, progress=progress)
        except InputError as error:
            raise InputError(str(error).replace(": system.", f": {at}.")) from None
    if stages:
        choice = SystemChoice(
            defenses.defend(choice.system, *_stages(stages, at, where)),
            values.get("name", f"{choice.name} + " + "+".join(_names(stages))),
            choice.dataset,
        )
    return choice


def _names(stages: list[Any]) -> list[str]:
    return [s if isinstance(s, str) else str(s.get("name")) for s in stages]


def _stages(stages: Any, at: str, where: str) -> list[Any]:
    if not isinstance(stages, list):
        raise InputError(f"{where}: {at}.defenses: must be an array of stage tables.")
    built = []
    for i, item in enumerate(stages):
        spec = {"name": item} if isinstance(item, str) else item
        key = f"{at}.defenses[{i}]"
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InputError(
                f'{where}: {key}: must be a stage name or a table {{name = "...", ...}}.'
            )
        name = spec["name"]
        if name not in STAGES:
            raise InputError(
                f"{where}: {key}.name: unknown defense {name!r}"
                f"{closest(name, list(STAGES))}; known: {', '.join(STAGES)}."
            )
        params = {k: v for k, v in spec.items() if k != "name"}
        try:
            built.append(STAGES[name](**params))
        except TypeError as error:
            raise InputError(f"{where}: {key}: {error}") from None
        except InputError as error:
            raise InputError(f"{where}: {key}: {error}") from None
    return built


def _trained(
    recipe: Any, values: dict[str, Any], at: str, where: str, progress: bool
) -> SystemChoice:
    if not isinstance(recipe, dict) or not isinstance(recipe.get("name"), str):
        raise InputError(f'{where}: {at}.recipe: must be a table {{name = "...", ...}}.')
    name = recipe["name"]
    if name not in RECIPES:
        raise InputError(
            f"{where}: {at}.recipe.name: unknown recipe {name!r}"
            f"{closest(name, list(RECIPES))}; known: {', '.join(RECIPES)}."
        )
    dataset = values.pop("dataset", "mnist")
    label = values.pop("name", None)
    if values:
        raise InputError(
            f"{where}: {at}: with a recipe only 'dataset' and 'name' are read; remove "
            f"{', '.join(sorted(values))}."
        )
    params = {k: v for k, v in recipe.items() if k != "name"}
    try:
        trained: System = RECIPES[name](**params).train(
            load_dataset(dataset, "train"), progress=progress
        )
    except (TypeError, InputError) as error:
        raise InputError(f"{where}: {at}.recipe: {error}") from None
    return SystemChoice(trained, label or f"{dataset}-{name}", dataset)
