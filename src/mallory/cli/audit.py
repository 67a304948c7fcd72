"""``mallory audit``: a defended system through the pipeline of defense failures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from mallory.cli.app import app, console, errors
from mallory.errors import MalloryError
from mallory.jsonable import write_atomically


@app.command()
def audit(
    file: Annotated[
        Path,
        typer.Argument(
            help="the audit file (TOML: [system] defended, [baseline], [data], [audit]; see "
            "docs/audit.md)",
            dir_okay=False,
        ),
    ],
    html: Annotated[
        Path | None, typer.Option("--html", help="write the audit as an HTML page here")
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="write the audit report as JSON here")
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="keep finished stages in this file; run again to resume"),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="exit with 1 when the defense fails a stage")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
) -> None:
    """Walk a defended system through the pipeline of defense failures against its baseline:
    (1) no effect, (2) clean accuracy, (3) adaptive attacker, (4) attack algorithms, (5)
    illusion checks, (6) threat models. Prints each stage's finding and the verdict (the
    first stage the defense fails)."""
    from mallory.evaluation.audit.config import load_audit
    from mallory.report.audit_render import audit_lines, render_audit_html

    try:
        _, job = load_audit(file, progress=not quiet)
        report = job.run(progress=not quiet, checkpoint=checkpoint)
    except MalloryError as error:
        errors.print(Text(f"error: {error}", style="red"))
        raise typer.Exit(2) from None
    for line in audit_lines(report, width=min(console.width, 100)):
        console.print(Text(line))
    if html is not None:
        write_atomically(html, render_audit_html(report))
        console.print(Text(f"wrote {html}"))
    if json_path is not None:
        write_atomically(json_path, report.to_json(indent=2))
        console.print(Text(f"wrote {json_path}"))
    if strict and report.failed_stage is not None:
        raise typer.Exit(1)
