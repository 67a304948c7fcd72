"""The command line reads in an 80-column terminal: every command has help, no help line is
wider than the terminal, and the listings fit it."""

from __future__ import annotations

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from mallory.attacks.base import attack_class, list_attacks
from mallory.cli import app

COMMANDS = sorted(get_command(app).commands)  # type: ignore[attr-defined]


def run(*args: str) -> str:
    result = CliRunner().invoke(
        app, list(args), env={"COLUMNS": "80", "TERM": "dumb"}, prog_name="mallory"
    )
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_that_fits_80_columns(command: str) -> None:
    text = run(command, "--help")
    assert f"mallory {command}" in text
    wide = [line for line in text.splitlines() if len(line) > 80]
    assert not wide, wide
    summary = get_command(app).commands[command].help  # type: ignore[attr-defined]
    assert summary and len(summary.split()) >= 5, command


def test_the_overview_lists_every_command_in_whole_sentences() -> None:
    text = run("--help")
    for command in COMMANDS:
        assert f" {command} " in text, command
    assert not [line for line in text.splitlines() if len(line) > 80]
    # square brackets in a docstring are text, not markup that eats them
    assert "[check]" in text


def test_the_attack_listing_fits_80_columns_and_says_what_each_assumes() -> None:
    text = run("list", "attacks")
    lines = text.splitlines()
    assert not [line for line in lines if len(line) > 80]
    heads = [line for line in lines if line and not line.startswith(" ")]
    assert [h.split(" ")[0] for h in heads] == list(list_attacks())
    for head in heads:
        name = head.split(" ")[0]
        cls = attack_class(name)
        expertise = getattr(cls, "expertise", None)
        if expertise is not None:
            assert f"expertise {expertise()}" in head, head
    extraction = run("list", "attacks", "--kind", "extraction")
    names = [ln.split(" ")[0] for ln in extraction.splitlines() if ln and ln[0] != " "]
    assert names == list(list_attacks("extraction")) and "fgsm" not in names


def test_the_other_listings_fit_80_columns() -> None:
    for what in ("models", "threats"):
        text = run("list", what)
        assert text.strip()
        assert not [line for line in text.splitlines() if len(line) > 80], what
