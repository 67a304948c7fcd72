"""``mallory attack``: one attack on a zoo model, with its numbers."""

from __future__ import annotations

import ast
import json
import math
import os
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mallory.access.oracle import Access, Oracle
from mallory.attacks import AttackResult, attack_class, create
from mallory.cli.app import app, console, errors
from mallory.errors import MalloryError
from mallory.threat import PRESETS, Goal, Norm, ThreatModel


class Preset(StrEnum):
    white_box = "white-box"
    score_based = "score-based"
    label_only = "label-only"
    transfer = "transfer"
    no_knowledge = "no-knowledge"


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


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2)
    os.replace(tmp, path)


def _fmt(value: float, digits: int = 3) -> str:
    return (
        "—"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:.{digits}f}")
    )


@app.command()
def attack(
    model: Annotated[str, typer.Option(help="zoo model to attack (see `mallory list models`)")],
    attack_name: Annotated[
        str, typer.Option("--attack", help="attack to run (see `mallory list attacks`)")
    ],
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
            help="threat-model preset (default: the weakest that grants what the attack needs)"
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
    """Attack a zoo model on its test data and print clean and robust accuracy, distances,
    queries and time."""
    from mallory.zoo import list_models, load_dataset, load_model

    try:
        cls = attack_class(attack_name)
        params = _parse_params(param or [])
        instance = create(attack_name, **params)
        recipes = {r.name: r for r in list_models()}
        if model not in recipes:
            raise MalloryError(
                f"No zoo model named {model!r}. Known models: {', '.join(sorted(recipes))}."
            )
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
        system = load_model(model)
        data = load_dataset(recipes[model].dataset, split="test").head(n)
        oracle = Oracle(system, threat_model)
        instance.check_applicable(oracle)
        clean = system.forward(data.x).argmax(1).cpu() == data.y
        parts: list[AttackResult] = []
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} samples"),
            TimeElapsedColumn(),
            console=errors,
            transient=True,
        ) as progress:
            task = progress.add_task(f"{attack_name} on {model}", total=len(data))
            for start in range(0, len(data), chunk):
                rows = slice(start, start + chunk)
                ids = torch.arange(len(data))[rows]
                parts.append(instance(oracle, data.x[rows], data.y[rows], rng=seed, ids=ids))
                progress.advance(task, len(ids))
        result = AttackResult.concat(parts)
    except MalloryError as error:
        errors.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None

    summary = result.summary()
    summary["clean_accuracy"] = float(clean.double().mean())
    summary["model"] = model
    table = Table(
        title=f"{attack_name} on {model} — {threat_model.name}, "
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
        data_out["summary"]["model"] = model
        _write_json(json_path, data_out)
        console.print(f"wrote {json_path}")
