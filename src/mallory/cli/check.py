"""``mallory check``: the robustness gate for CI pipelines.

Runs (or resumes) a campaign file's campaign, and its audit when the file names one, then
checks the thresholds of its ``[check]`` table (:mod:`mallory.evaluation.gate`). Exit codes:
0 every threshold holds; 1 one or more failed; 2 the check could not be made (a bad file or
report, a run the system stopped); 130 interrupted (run it again to resume).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from mallory.cli.app import app, console, errors
from mallory.errors import MalloryError, SystemFailure
from mallory.jsonable import write_atomically

EXIT_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 1, 2, 130


@app.command()
def check(
    campaign_file: Annotated[
        Path,
        typer.Argument(
            help="the campaign file (TOML) with a \\[check] table; see docs/campaign.md",
            dir_okay=False,
        ),
    ],
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="check this saved JSON report (mallory evaluate --json) instead of running",
            dir_okay=False,
        ),
    ] = None,
    audit_report: Annotated[
        Path | None,
        typer.Option(
            "--audit-report",
            help="with --report: the saved audit report (mallory audit --json)",
            dir_okay=False,
        ),
    ] = None,
    junit: Annotated[
        Path | None,
        typer.Option("--junit", help="write JUnit XML here: a test case per threshold"),
    ] = None,
    store: Annotated[
        Path | None,
        typer.Option("--store", help="the results store (default: the file's own setting)"),
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json", help="write the run's report as JSON here (default: <run>.json by the store)"
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bars")] = False,
) -> None:
    """Run a campaign file (and its audit) and check the thresholds of its \\[check] table.

    Prints PASS or FAIL for every threshold with the measured value and the bound; exits
    with 1 when one fails, 2 when the file, a report or the run is at fault."""
    from mallory.evaluation import gate as gates

    properties = {"campaign": str(campaign_file)}
    try:
        gate = gates.load_gate(campaign_file)
        if audit_report is not None and report is None:
            raise MalloryError("--audit-report goes with --report (a saved run to check).")
        if report is not None:
            found = gates.read_report(report, gates.campaign_name(campaign_file))
            audited = None
            if gate.needs_audit:
                if audit_report is None:
                    raise MalloryError(
                        f"{campaign_file}: check.audit_stages_failed needs the audit's report: "
                        "pass --audit-report (mallory audit FILE --json PATH writes one)."
                    )
                audited = gates.read_audit_report(audit_report)
                properties["audit_report"] = str(audit_report)
            properties["report"] = str(report)
        else:
            checked = gates.run_campaign_file(campaign_file, gate, store=store, progress=not quiet)
            found, audited = checked.report, checked.audit
            written = json_out or checked.store.with_name(f"{found.run}.json")
            write_atomically(written, found.to_json(indent=1))
            properties.update(report=str(written), store=str(checked.store))
            if audited is not None:
                path = checked.store.with_name(f"{found.run}.audit.json")
                write_atomically(path, audited.to_json(indent=1))
                properties["audit_report"] = str(path)
        result = gate.evaluate(found, audited, properties)
    except SystemFailure as failure:
        errors.print(Text(f"stopped: {failure}", style="red"))
        raise typer.Exit(EXIT_ERROR) from None
    except KeyboardInterrupt:
        errors.print(
            Text(
                "interrupted: every finished unit is in the store; run the same command again "
                "to resume.",
                style="yellow",
            )
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except MalloryError as error:
        errors.print(Text(f"error: {error}", style="red"))
        raise typer.Exit(EXIT_ERROR) from None
    for line in gates.summary_lines(result, width=min(console.width, 80)):
        console.print(Text(line), soft_wrap=True)
    if junit is not None:
        write_atomically(junit, gates.junit_xml(result))
        console.print(Text(f"JUnit XML: {junit}"), soft_wrap=True)
    if not result.passed:
        raise typer.Exit(EXIT_FAILED)
