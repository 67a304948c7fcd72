"""``mallory list``: attacks, zoo models, threat-model presets.

Attacks are listed as blocks of wrapped lines (one block per attack), which read in an
80-column terminal and a CI log; the models and presets are tables, and fall back to lines on a
narrow terminal.
"""

from __future__ import annotations

import textwrap
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from mallory.attacks import Kind, attack_class, list_attacks
from mallory.cli.app import app, console
from mallory.threat import PRESETS

WIDE = 110  # columns a table of the presets needs


class Listing(StrEnum):
    attacks = "attacks"
    models = "models"
    threats = "threats"


def attack_lines(name: str, width: int) -> list[str]:
    """One attack as wrapped lines: what it is, what it needs, its parameters, its paper."""
    cls = attack_class(name)
    info: dict[str, Any] = cls.describe()

    def wrap(text: str, indent: str = "  ", rest: str | None = None) -> list[str]:
        return textwrap.wrap(
            text,
            width,
            initial_indent=indent,
            subsequent_indent=rest or indent + "  ",
            break_on_hyphens=False,
        ) or [indent]

    kind = info["kind"]
    what = [kind, f"needs {info['access']}"] + [f"needs {n}" for n in info["needs"]]
    if "family" in info:
        what.insert(1, f"family {info['family']}")
    if "expertise" in info:
        what.insert(2, f"expertise {info['expertise']}")
    if cls.default:
        what.append("a campaign default")
    lines = wrap(f"{name} ({', '.join(what)})", indent="", rest="    ")
    if info["summary"]:
        lines += wrap(info["summary"])
    if "norms" in info:
        scope = f"norms {', '.join(info['norms'])}; goals {', '.join(info['goals'])}"
        if info.get("minimizes"):
            scope += "; minimizes the perturbation (eps may be inf)"
        lines += wrap(scope)
    for param, rule in info["params"].items():
        lines += wrap(f"{param} = {rule['default']!r}: {rule['help']} ({rule['expected']})")
    if info["paper"]:
        lines += wrap(f"paper: {info['paper']}")
    return lines


@app.command("list")
def list_(
    what: Annotated[Listing, typer.Argument(help="what to list")],
    kind: Annotated[
        Kind | None,
        typer.Option("--kind", help="attacks of one kind only (evasion, extraction, ...)"),
    ] = None,
) -> None:
    """List the attacks (what each needs, its parameters and paper), the zoo models, or the
    threat-model presets."""
    width = min(console.width, 100)
    if what is Listing.attacks:
        for name in list_attacks(kind):
            for line in attack_lines(name, width):
                console.print(Text(line))
            console.print()
    elif what is Listing.models:
        from mallory.zoo import list_models

        table = Table(title="zoo models (trained on first use, then cached)")
        for column in ("name", "dataset", "kind", "description"):
            table.add_column(column, overflow="fold")
        for recipe in list_models():
            table.add_row(recipe.name, recipe.dataset, recipe.kind, recipe.description)
        console.print(table)
    else:
        rows = []
        for name, make in PRESETS.items():
            t = make()
            budget = "unlimited" if t.queries_per_sample is None else str(t.queries_per_sample)
            rows.append(
                (name, t.knowledge.value, t.exposure.value, budget, str(t.adaptive), t.description)
            )
        if console.width >= WIDE:
            table = Table(title="threat-model presets")
            for column in (
                "name",
                "knowledge",
                "exposure",
                "queries/sample",
                "adaptive",
                "meaning",
            ):
                table.add_column(column)
            for row in rows:
                table.add_row(*row)
            console.print(table)
            return
        for name, knowledge, exposure, budget, adaptive, meaning in rows:
            console.print(Text(f"{name}: {meaning}"))
            console.print(
                Text(
                    f"  knowledge {knowledge}, exposure {exposure}, {budget} queries per "
                    f"sample, adaptive {adaptive}"
                )
            )
