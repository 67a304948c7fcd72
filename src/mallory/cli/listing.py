"""``mallory list``: attacks, zoo models, threat-model presets."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from mallory.attacks import attack_class, list_attacks
from mallory.cli.app import app, console
from mallory.threat import PRESETS


class Listing(StrEnum):
    attacks = "attacks"
    models = "models"
    threats = "threats"


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
