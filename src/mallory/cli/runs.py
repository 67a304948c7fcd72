"""The campaign commands of the CLI: ``evaluate``, ``report``, ``compare`` and ``demo``.

They are registered on :data:`mallory.cli.app.app` when :mod:`mallory.cli` is imported.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from mallory.cli.app import app, console, errors
from mallory.errors import MalloryError, SystemFailure
from mallory.evaluation.campaign import Campaign
from mallory.evaluation.metrics import build_report
from mallory.jsonable import write_atomically
from mallory.report import Report, render_html, render_terminal
from mallory.store import Store

DEFAULT_STORE = Path("mallory.db")

StoreOption = Annotated[
    Path, typer.Option("--store", help="the results store (a SQLite file)", dir_okay=False)
]
HtmlOption = Annotated[
    Path | None, typer.Option("--html", help="write the HTML report here", dir_okay=False)
]
JsonOption = Annotated[
    Path | None, typer.Option("--json", help="write the report as JSON here", dir_okay=False)
]


def _fail(error: Exception, code: int = 2) -> typer.Exit:
    errors.print(f"[red]error:[/red] {error}")
    return typer.Exit(code)


def _write(path: Path, text: str) -> None:
    """Write atomically, so a crash never leaves half a report."""
    write_atomically(path, text)


def _outputs(reports: list[Report], html: Path | None, json_path: Path | None) -> None:
    if html is not None:
        _write(html, render_html(reports))
        console.print(f"HTML report: {html}")
    if json_path is not None:
        data = [r.to_dict() for r in reports]
        _write(json_path, json.dumps(data[0] if len(data) == 1 else data, indent=1))
        console.print(f"JSON report: {json_path}")


def run_campaign(campaign: Campaign, store: Store, *, quiet: bool) -> Report:
    """Run or resume ``campaign`` in ``store``; a stop says how to resume."""
    try:
        return campaign.run(store, progress=not quiet)
    except SystemFailure as failure:
        errors.print(f"[red]stopped:[/red] {failure}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        errors.print(
            "[yellow]interrupted:[/yellow] every finished unit is in the store; run the same "
            "command again to resume."
        )
        raise typer.Exit(130) from None


@app.command()
def evaluate(
    campaign_file: Annotated[
        Path, typer.Argument(help="the campaign file (TOML); see docs/campaign.md", dir_okay=False)
    ],
    store: Annotated[
        Path | None,
        typer.Option("--store", help="the results store (default: the file's own setting)"),
    ] = None,
    html: HtmlOption = None,
    json_out: JsonOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bars")] = False,
) -> None:
    """Run a campaign file: every threat model with its attacks, cheapest first.

    Killed or stopped, the same command resumes where it stopped. The report is printed and
    written as HTML next to the store unless --html says where."""
    from mallory.evaluation.config import load_campaign

    try:
        loaded = load_campaign(campaign_file)
        path = store or loaded.store
        with Store(path) as db:
            report = run_campaign(loaded.campaign, db, quiet=quiet)
    except MalloryError as error:
        raise _fail(error) from None
    render_terminal([report], console)
    _outputs([report], html or path.with_name(f"{loaded.campaign.name}.html"), json_out)


@app.command()
def report(
    run: Annotated[str, typer.Argument(help="the run's name in the store")],
    store: StoreOption = DEFAULT_STORE,
    html: HtmlOption = None,
    json_out: JsonOption = None,
) -> None:
    """Render a run from the store: terminal summary, and HTML or JSON when asked."""
    try:
        with _open(store) as db:
            result = build_report(db, run)
    except MalloryError as error:
        raise _fail(error) from None
    render_terminal([result], console)
    _outputs([result], html, json_out)


@app.command()
def compare(
    run_a: Annotated[str, typer.Argument(help="the first run")],
    run_b: Annotated[str, typer.Argument(help="the second run")],
    store: StoreOption = DEFAULT_STORE,
    store_b: Annotated[
        Path | None,
        typer.Option("--store-b", help="the second run's store (default: the same)"),
    ] = None,
    html: HtmlOption = None,
    json_out: JsonOption = None,
) -> None:
    """Two systems side by side on the same campaign (threat models matched by name)."""
    try:
        with _open(store) as db:
            first = build_report(db, run_a)
        with _open(store_b or store) as db:
            second = build_report(db, run_b)
    except MalloryError as error:
        raise _fail(error) from None
    shared = {t.name for t in first.threats} & {t.name for t in second.threats}
    if not shared:
        raise _fail(
            ValueError(
                f"Runs {run_a!r} and {run_b!r} share no threat model; compare runs of the same "
                "campaign on two systems."
            )
        )
    render_terminal([first, second], console)
    _outputs([first, second], html, json_out)


@app.command()
def demo(
    out: Annotated[
        Path, typer.Option("--out", help="folder for the store and the report", file_okay=False)
    ] = Path("mallory-demo"),
    samples: Annotated[int, typer.Option("--samples", "-n", min=10, help="MNIST digits")] = 100,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bars")] = False,
) -> None:
    """Evaluate the zoo's MNIST CNN and phishing detector across the threat-model spectrum
    and write the HTML report (models are trained on first use)."""
    from mallory.evaluation.demo import mnist_campaign, phishing_campaign

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    reports = []
    try:
        with Store(out / "demo.db") as db:
            for campaign in (
                mnist_campaign(samples, progress=not quiet),
                phishing_campaign(progress=not quiet),
            ):
                console.rule(f"[bold]{campaign.system_name}[/bold] on {campaign.data.name}")
                reports.append(run_campaign(campaign, db, quiet=quiet))
    except MalloryError as error:
        raise _fail(error) from None
    for result in reports:
        render_terminal([result], console)
    html = out / "report.html"
    _write(html, render_html(reports[:1]))
    pages = [html]
    for result in reports[1:]:
        page = out / f"{result.run}.html"
        _write(page, render_html([result]))
        pages.append(page)
    _write(out / "report.json", json.dumps([r.to_dict() for r in reports], indent=1))
    console.print(
        f"demo finished in {time.perf_counter() - started:.0f} s; reports: "
        + ", ".join(str(p) for p in pages)
        + f"; store: {out / 'demo.db'} (mallory report RUN --store {out / 'demo.db'})"
    )


def _open(path: Path) -> Store:
    if not path.exists():
        raise MalloryError(
            f"No store at {str(path)!r}. Run a campaign first (mallory evaluate FILE, or "
            "mallory demo), or pass --store PATH."
        )
    return Store(path)
