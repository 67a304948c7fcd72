"""``mallory attack``: one attack on a zoo model or a prediction API, with its numbers."""

from __future__ import annotations

import ast
import json
import math
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import torch
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mallory.access.oracle import Access, Oracle
from mallory.attacks import AttackResult, create
from mallory.attacks.evasion.base import evasion_class
from mallory.cli.app import app, console, errors
from mallory.errors import MalloryError
from mallory.jsonable import plain, write_atomically
from mallory.systems.base import System
from mallory.systems.http import HttpModel, HttpProtocol
from mallory.threat import PRESETS, Exposure, Goal, Norm, ThreatModel
from mallory.threat.model import PRESET

if TYPE_CHECKING:
    from mallory.zoo.datasets import Dataset, DatasetSpec


if TYPE_CHECKING:
    Preset = StrEnum
else:
    Preset = PRESET.as_enum("Preset")  # the --threat choices: the presets' names


_PRESET_FOR_ACCESS = {
    Access.GRADIENTS: "white-box",
    Access.SCORES: "score-based",
    Access.LABELS: "label-only",
}


def _parse_value(text: str) -> Any:
    """A --param value: a Python literal (int, float, bool, None) or else the plain string."""
    for literal in (("true", True), ("false", False), ("none", None)):
        if text.lower() == literal[0]:
            return literal[1]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _parse_params(pairs: list[str]) -> dict[str, Any]:
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--param")
        params[name.strip().replace("-", "_")] = _parse_value(value.strip())
    return params


def _fmt(value: float, digits: int = 3) -> str:
    return (
        "—"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:.{digits}f}")
    )


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise typer.BadParameter(
            f"expected positive sizes separated by commas, e.g. 1,28,28; got {text!r}",
            param_hint="--input-shape",
        )
    return shape


def _parse_bounds(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lower, upper = (float(part) for part in text.split(","))
    except ValueError:
        lower = upper = math.nan
    if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
        raise typer.BadParameter(
            f"expected LOWER,UPPER with LOWER < UPPER, e.g. 0,1; got {text!r}",
            param_hint="--bounds",
        )
    return lower, upper


def _read_mapping(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        value = json.loads(path.read_text())
    except OSError as error:
        raise MalloryError(f"--mapping: cannot read {path}: {error.strerror}.") from None
    except ValueError as error:
        raise MalloryError(f"--mapping: {path} is not JSON ({error}).") from None
    if not isinstance(value, dict):
        raise MalloryError(
            f"--mapping: {path} must hold a JSON object with the keys of HttpMapping "
            '(path, request, labels or scores, ...); e.g. {"path": "/v1/classify", '
            '"request": {"instances": "$inputs"}, "labels": "predictions[*].label"}.'
        )
    return value


def _remote_target(
    url: str,
    *,
    protocol: HttpProtocol,
    model_name: str | None,
    exposure: Exposure | None,
    top_k: int | None,
    input_shape: tuple[int, ...] | None,
    num_classes: int | None,
    bounds: tuple[float, float] | None,
    mapping: dict[str, Any] | None,
    data: str | None,
) -> tuple[HttpModel, DatasetSpec | None]:
    """The API at ``url`` as a System, and the zoo dataset named by ``data`` or by the input
    shape (its shape, classes and bounds fill in what neither the options nor the API say)."""
    from mallory.zoo.datasets import BOUNDS, dataset_spec

    if protocol is HttpProtocol.MAPPING and mapping is None:
        raise MalloryError("--protocol mapping needs --mapping FILE: the API described in JSON.")
    if protocol is not HttpProtocol.MAPPING and mapping is not None:
        raise MalloryError("--mapping describes an API for --protocol mapping; give that too.")
    if protocol in (HttpProtocol.TF_SERVING, HttpProtocol.V2) and model_name is None:
        raise MalloryError(
            f"--protocol {protocol.value} needs --model-name: the model's name in the API's URLs."
        )
    spec = dataset_spec(data) if data is not None else _dataset_for(input_shape)
    describes = protocol in (HttpProtocol.MALLORY, HttpProtocol.V2)  # the API may say them
    if spec is not None and not describes:
        input_shape = input_shape or spec.input_shape
        num_classes = num_classes or len(spec.class_names)
    if spec is not None and protocol is not HttpProtocol.MALLORY:
        bounds = bounds or BOUNDS
    if not describes:
        missing = [
            flag
            for flag, value in (
                ("--input-shape", input_shape),
                ("--num-classes", num_classes),
                ("--bounds", bounds),
            )
            if value is None
        ]
        if missing:
            raise MalloryError(
                f"The {protocol.value} API does not describe its model: give "
                f"{', '.join(missing)}, or --data DATASET to take them from a zoo dataset."
            )
    if protocol is HttpProtocol.V2 and bounds is None:
        raise MalloryError(
            "The v2 API does not state its input bounds: give --bounds LOWER,UPPER, or --data "
            "DATASET to take them from a zoo dataset."
        )
    options: dict[str, Any] = {
        "protocol": protocol,
        "model_name": model_name,
        "exposes": exposure,
        "top_k": top_k,
        "input_shape": input_shape,
        "num_classes": num_classes,
        "bounds": bounds,
        "mapping": mapping,
    }
    system = HttpModel(url, **{k: v for k, v in options.items() if v is not None})
    return system, spec


def _remote_data(system: HttpModel, spec: DatasetSpec | None) -> Dataset:
    """The test data of ``spec``, or of the zoo dataset whose inputs fit the API's."""
    from mallory.zoo import load_dataset
    from mallory.zoo.datasets import list_datasets

    url = system.url
    if spec is None:
        spec = _dataset_for(system.input_shape, exact=False)
        if spec is None:
            raise MalloryError(
                f"No zoo dataset takes inputs of shape {system.input_shape} as the API at {url} "
                f"does; give --data, one of {', '.join(list_datasets())}."
            )
        errors.print(f"data: {spec.name} (its inputs fit the API's input shape)")
    dataset = load_dataset(spec.name, split="test")
    _check_fit(system, dataset, f"the API at {url}")
    if tuple(dataset.x.shape[1:]) != system.input_shape:
        dataset = replace(dataset, x=dataset.x.reshape(len(dataset), *system.input_shape))
    return dataset


def _dataset_for(shape: tuple[int, ...] | None, *, exact: bool = True) -> DatasetSpec | None:
    """The zoo dataset whose inputs have ``shape`` (or, not ``exact``, as many features)."""
    from mallory.zoo.datasets import dataset_spec, list_datasets

    if shape is None:
        return None
    specs = [dataset_spec(name) for name in list_datasets()]
    for spec in specs:
        if spec.input_shape == shape:
            return spec
    if exact:
        return None
    size = math.prod(shape)
    fitting = [spec for spec in specs if math.prod(spec.input_shape) == size]
    return fitting[0] if len(fitting) == 1 else None


def _check_fit(system: System, dataset: Dataset, what: str) -> None:
    features = math.prod(system.input_shape)
    if math.prod(dataset.input_shape) != features:
        raise MalloryError(
            f"The {dataset.name} data has inputs of shape {dataset.input_shape}, but {what} "
            f"takes {system.input_shape}; give --data of a dataset that fits."
        )
    if len(dataset.class_names) != system.num_classes:
        raise MalloryError(
            f"The {dataset.name} data has {len(dataset.class_names)} classes, but {what} "
            f"answers {system.num_classes}; give --data of a dataset that fits, or --num-classes."
        )


def _check_exposure(needs: Access, system: System, attack_name: str, target: str) -> None:
    """Refuse, with a hint, an attack that needs more than the target can show at all."""
    if needs is Access.SCORES and system.exposes is Exposure.LABEL:
        raise MalloryError(
            f"{attack_name} needs scores, but {target} shows only labels (exposure 'label'). "
            "Pick a label-only attack (see `mallory list attacks`)."
        )
    if needs is Access.GRADIENTS and isinstance(system, HttpModel):
        raise MalloryError(
            f"{attack_name} needs gradients, and a remote API gives none. Pick a score-based "
            "or label-only attack (see `mallory list attacks`), or a transfer attack."
        )


@app.command()
def attack(
    attack_name: Annotated[
        str, typer.Option("--attack", help="attack to run (see `mallory list attacks`)")
    ],
    model: Annotated[
        str | None,
        typer.Option(help="zoo model to attack (see `mallory list models`); or give --url"),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="base URL of a prediction API to attack instead of a zoo model, e.g. "
            "http://127.0.0.1:8501",
            rich_help_panel="Remote target",
        ),
    ] = None,
    protocol: Annotated[
        HttpProtocol,
        typer.Option(help="what the API at --url speaks", rich_help_panel="Remote target"),
    ] = HttpProtocol.MALLORY,
    model_name: Annotated[
        str | None,
        typer.Option(
            help="the model's name in the API's URLs (tf-serving, v2)",
            rich_help_panel="Remote target",
        ),
    ] = None,
    exposure: Annotated[
        Exposure | None,
        typer.Option(
            help="what the API's answers show (default: what the protocol says, else scores); "
            "the threat model never grants more",
            rich_help_panel="Remote target",
        ),
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option(
            help="classes a top-k answer shows (v2: asked for with Triton's classification "
            "extension)",
            min=1,
            rich_help_panel="Remote target",
        ),
    ] = None,
    input_shape: Annotated[
        str | None,
        typer.Option(
            help="input shape without the batch, e.g. 1,28,28 (default: the API's, or --data's)",
            rich_help_panel="Remote target",
        ),
    ] = None,
    num_classes: Annotated[
        int | None,
        typer.Option(
            help="number of classes (default: the API's, or --data's)",
            min=2,
            rich_help_panel="Remote target",
        ),
    ] = None,
    bounds: Annotated[
        str | None,
        typer.Option(
            help="input bounds LOWER,UPPER, e.g. 0,1 (default: the API's, or --data's)",
            rich_help_panel="Remote target",
        ),
    ] = None,
    mapping: Annotated[
        Path | None,
        typer.Option(
            help="JSON file describing the API (the keys of mallory.systems.http.HttpMapping); "
            "with --protocol mapping",
            rich_help_panel="Remote target",
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="zoo dataset whose test split is attacked (default: the zoo model's; for --url "
            "the one whose input shape the API takes)",
        ),
    ] = None,
    eps: Annotated[
        float | None,
        typer.Option(
            help="perturbation budget in --norm (L0: features); default inf if the "
            "attack minimizes the perturbation"
        ),
    ] = None,
    norm: Annotated[
        Norm | None,
        typer.Option(help="norm of the perturbation ball (default: the attack's first)"),
    ] = None,
    n: Annotated[int, typer.Option("-n", "--samples", help="test samples to attack", min=1)] = 100,
    threat: Annotated[
        Preset | None,
        typer.Option(
            help="threat-model preset (default: the weakest that grants what the attack needs); "
            "its exposure is capped to what the target shows"
        ),
    ] = None,
    targeted: Annotated[
        bool, typer.Option(help="targeted attack with random target classes")
    ] = False,
    queries: Annotated[
        int | None, typer.Option(help="query budget per sample (default: the preset's)", min=0)
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option(help="attack parameter NAME=VALUE (repeatable)")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of every random draw")] = 0,
    chunk: Annotated[int, typer.Option(help="samples per progress step", min=1)] = 100,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="also write the result as JSON here")
    ] = None,
) -> None:
    """Attack a zoo model (--model) or a prediction API (--url) on test data, and print clean
    and robust accuracy, distances, queries and time."""
    from mallory.zoo import list_models, load_dataset, load_model

    remote_options = {
        "--protocol": protocol is not HttpProtocol.MALLORY,
        "--model-name": model_name is not None,
        "--exposure": exposure is not None,
        "--top-k": top_k is not None,
        "--input-shape": input_shape is not None,
        "--num-classes": num_classes is not None,
        "--bounds": bounds is not None,
        "--mapping": mapping is not None,
    }
    try:
        cls = evasion_class(attack_name)
        params = _parse_params(param or [])
        instance = create(attack_name, **params)
        if (model is None) == (url is None):
            raise MalloryError(
                "Give the target: --model NAME (a zoo model, see `mallory list models`) or "
                "--url URL (a prediction API), not both."
            )
        system: System
        if url is not None:
            target = url
            system, spec = _remote_target(
                url,
                protocol=protocol,
                model_name=model_name,
                exposure=exposure,
                top_k=top_k,
                input_shape=_parse_shape(input_shape),
                num_classes=num_classes,
                bounds=_parse_bounds(bounds),
                mapping=_read_mapping(mapping),
                data=data,
            )
            _check_exposure(cls.access, system, attack_name, target)
            dataset = _remote_data(system, spec)
        else:
            assert model is not None
            target = model
            given = [name for name, used in remote_options.items() if used]
            if given:
                raise MalloryError(
                    f"{', '.join(given)} describe{'s' * (len(given) == 1)} a remote target: "
                    "give --url, or drop them to attack the zoo model."
                )
            recipes = {r.name: r for r in list_models()}
            if model not in recipes:
                raise MalloryError(
                    f"No zoo model named {model!r}. Known models: {', '.join(sorted(recipes))}."
                )
            system = load_model(model)
            dataset = load_dataset(data or recipes[model].dataset, split="test")
            _check_fit(system, dataset, f"the zoo model {model!r}")
        chosen_norm = norm or next(m for m in (Norm.LINF, Norm.L2, Norm.L0) if m in cls.norms)
        if eps is None and not cls.minimizes:
            raise MalloryError(
                f"{attack_name} needs --eps (the radius of the {chosen_norm.value} ball)."
            )
        preset = threat.value if threat else _PRESET_FOR_ACCESS[cls.access]
        changes: dict[str, Any] = {}
        if targeted or Goal.UNTARGETED not in cls.goals:
            changes["goal"] = Goal.TARGETED
        if queries is not None:
            changes["queries_per_sample"] = queries
        threat_model: ThreatModel = PRESETS[preset](
            chosen_norm, math.inf if eps is None else eps
        ).with_(**changes)
        if threat_model.exposure.richness > system.exposes.richness:
            # no richer than the target shows
            shown = system.exposes
            threat_model = threat_model.with_(
                exposure=shown, top_k=system.top_k if shown is Exposure.TOP_K else None
            )
        dataset = dataset.head(n)
        oracle = Oracle(system, threat_model)
        instance.check_applicable(oracle)
        clean = system.forward(dataset.x).argmax(1).cpu() == dataset.y
        parts: list[AttackResult] = []
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} samples"),
            TimeElapsedColumn(),
            console=errors,
            transient=True,
        ) as progress:
            task = progress.add_task(f"{attack_name} on {target}", total=len(dataset))
            for start in range(0, len(dataset), chunk):
                rows = slice(start, start + chunk)
                ids = torch.arange(len(dataset))[rows]
                parts.append(instance(oracle, dataset.x[rows], dataset.y[rows], rng=seed, ids=ids))
                progress.advance(task, len(ids))
        result = AttackResult.concat(parts)
    except MalloryError as error:
        errors.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None

    summary = result.summary()
    summary["clean_accuracy"] = float(clean.double().mean())
    summary["model"] = target
    table = Table(
        title=f"{attack_name} on {target} — {threat_model.name}, "
        f"{threat_model.norm.value} eps={threat_model.eps:g}, {len(result)} samples"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows_out = [
        ("clean accuracy", _fmt(summary["clean_accuracy"])),
        ("robust accuracy", _fmt(summary.get("robust_accuracy", math.nan))),
        ("attack success rate", _fmt(summary["success_rate"])),
        (
            "median L0 / L2 / Linf (successes)",
            " / ".join(_fmt(summary[k]) for k in ("median_l0", "median_l2", "median_linf")),
        ),
        (
            "queries (total, mean per sample)",
            f"{summary['queries_total']}, {_fmt(summary['queries_mean'], 1)}",
        ),
        ("gradient evaluations", str(summary["gradients_total"])),
        ("confidence on mistakes (mean)", _fmt(summary["mean_confidence_on_success"])),
        ("time (s)", _fmt(summary["seconds"], 2)),
    ]
    for name, value in rows_out:
        table.add_row(name, value)
    console.print(table)
    if result.error:
        errors.print(
            f"[red]the system failed during the attack[/red] ({int(result.interrupted_mask.sum())}"
            f" samples not fully attacked; robust accuracy counts only the others): {result.error}"
        )
    if json_path is not None:
        data_out = result.to_dict()
        data_out["summary"]["clean_accuracy"] = summary["clean_accuracy"]
        data_out["summary"]["model"] = target
        write_atomically(json_path, json.dumps(plain(data_out), indent=2))
        console.print(f"wrote {json_path}")
