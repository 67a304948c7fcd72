"""The command-line tool: ``mallory attack``, ``mallory list``, ``mallory serve``; the campaign
commands (``evaluate``, ``report``, ``compare``, ``demo``) live in :mod:`mallory.cli_runs`."""

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
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mallory.attacks import AttackResult, attack_class, create, list_attacks
from mallory.errors import MalloryError
from mallory.oracle import Access, Oracle
from mallory.systems.base import Output
from mallory.threat import PRESETS, Exposure, Goal, Norm, ThreatModel

app = typer.Typer(
    help="mallory: test an ML system the way its attackers will.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)


class Listing(StrEnum):
    attacks = "attacks"
    models = "models"
    threats = "threats"


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


@app.command("list")
def list_(what: Annotated[Listing, typer.Argument(help="what to list")]) -> None:
    """List the attacks (with the access they need and their parameters), the zoo models,
    or the threat-model presets."""
    if what is Listing.attacks:
        table = Table(title="attacks")
        for column in ("name", "needs", "norms", "goals", "parameters (default)", "paper"):
            table.add_column(column)
        for name in list_attacks():
            info = attack_class(name).describe()
            params = "\n".join(
                f"{p}={v['default']!r}: {v['help']}" for p, v in info["params"].items()
            )
            table.add_row(
                name,
                info["access"],
                ", ".join(info["norms"]),
                ", ".join(info["goals"]),
                params,
                info["paper"],
            )
        console.print(table)
    elif what is Listing.models:
        from mallory.zoo import list_models

        table = Table(title="zoo models (trained on first use, then cached)")
        for column in ("name", "dataset", "kind", "description"):
            table.add_column(column)
        for recipe in list_models():
            table.add_row(recipe.name, recipe.dataset, recipe.kind, recipe.description)
        console.print(table)
    else:
        table = Table(title="threat-model presets")
        for column in ("name", "knowledge", "exposure", "queries/sample", "adaptive", "meaning"):
            table.add_column(column)
        for name, make in PRESETS.items():
            t = make()
            table.add_row(
                name,
                t.knowledge.value,
                t.exposure.value,
                "unlimited" if t.queries_per_sample is None else str(t.queries_per_sample),
                str(t.adaptive),
                t.description,
            )
        console.print(table)


def _numbers(text: str, option: str, kind: type[int] | type[float]) -> list[Any]:
    """A comma-separated list of numbers, as for --input-shape 1,28,28 or --bounds 0,1."""
    try:
        return [kind(part) for part in text.split(",")]
    except ValueError:
        raise typer.BadParameter(
            f"expected numbers separated by commas, got {text!r}", param_hint=option
        ) from None


@app.command()
def serve(
    model: Annotated[
        str,
        typer.Argument(
            help="zoo model name (see `mallory list models`), or a saved model file: .onnx, "
            ".pt (TorchScript), .pt2 (torch.export), .pkl/.joblib (scikit-learn; loading a "
            "pickle runs the code it names: serve only files you trust)"
        ),
    ],
    exposure: Annotated[
        Exposure, typer.Option(help="what an answer shows: never more than this")
    ] = Exposure.SCORES,
    top_k: Annotated[
        int | None, typer.Option("--top-k", help="classes shown with --exposure top-k", min=1)
    ] = None,
    host: Annotated[
        str, typer.Option(help="address to listen on (loopback unless --allow-remote)")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="port to listen on (0: any free one)", min=0, max=65535)
    ] = 8000,
    allow_remote: Annotated[
        bool, typer.Option(help="allow a non-loopback --host: anyone reaching it may query")
    ] = False,
    rate_limit: Annotated[
        float | None,
        typer.Option(help="requests per second per client; beyond it 429 (default: no limit)"),
    ] = None,
    max_batch: Annotated[int, typer.Option(help="most inputs per request", min=1)] = 256,
    query_log: Annotated[
        Path | None, typer.Option(help="append every request to this file as a JSON line")
    ] = None,
    input_shape: Annotated[
        str | None,
        typer.Option(help="shape of one input for a saved file, e.g. 1,28,28 (no batch dim)"),
    ] = None,
    bounds: Annotated[
        str | None, typer.Option(help="input bounds LOWER,UPPER for a saved file, e.g. 0,1")
    ] = None,
    output: Annotated[
        Output, typer.Option(help="what a saved torch or ONNX model returns")
    ] = Output.LOGITS,
) -> None:
    """Serve a model as an HTTP prediction API (GET /info, POST /predict) to attack as a black
    box, e.g. with mallory.HttpModel. Ctrl-C stops it."""
    from mallory.serve import Server, check_host, serve_forever
    from mallory.systems.saved import load_saved
    from mallory.zoo import load_model

    shape = _numbers(input_shape, "--input-shape", int) if input_shape is not None else None
    box = _numbers(bounds, "--bounds", float) if bounds is not None else None
    if box is not None and len(box) != 2:
        raise typer.BadParameter(f"expected LOWER,UPPER, got {bounds!r}", param_hint="--bounds")

    def ready(server: Server) -> None:
        shown = f"top-{server.top_k}" if server.top_k is not None else server.exposure.value
        console.print(
            f"serving {system.name} at {server.url} (exposure {shown}): GET /info, "
            "POST /predict; Ctrl-C stops",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    try:
        check_host(host, allow_remote)
        if Path(model).suffix or Path(model).exists():  # zoo names have no dot
            system = load_saved(
                model,
                input_shape=shape,
                bounds=(box[0], box[1]) if box is not None else None,
                output=output,
            )
        else:
            system = load_model(model)
        serve_forever(
            system,
            host=host,
            port=port,
            exposure=exposure,
            top_k=top_k,
            rate_limit=rate_limit,
            max_batch=max_batch,
            query_log=query_log,
            allow_remote=allow_remote,
            ready=ready,
        )
    except MalloryError as error:
        errors.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    console.print("stopped")


def main() -> None:
    app()


from mallory import cli_runs  # noqa: E402, F401  (registers evaluate, report, compare, demo)

if __name__ == "__main__":
    main()
