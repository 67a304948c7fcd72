"""The terminal rendering shows the fixture's numbers (rich Console(record=True))."""

from __future__ import annotations

import dataclasses

import pytest
from rich.console import Console

from mallory.errors import InputError
from mallory.report import Report, render_terminal, summary_lines


def rendered(reports: list[Report]) -> str:
    console = Console(record=True, width=220, color_system=None)
    render_terminal(reports, console)
    return console.export_text()


def test_one_run_shows_the_matrix_and_attack_sequences(mnist: Report) -> None:
    text = rendered([mnist])
    assert "clean accuracy 95.0%" in text
    # robust accuracy per untargeted threat model, success rate for the targeted one
    for name, share in [("tricks", "85.0%"), ("label-only", "75.0%"), ("white-box", "65.0%")]:
        row = next(line for line in text.splitlines() if line.startswith(f"│ {name} "))
        assert f"{share} robust" in row
    targeted = next(line for line in text.splitlines() if line.startswith("│ targeted "))
    assert "52.6% success rate" in targeted and "—" in targeted  # median L0 not measured
    assert "targeted · L2 ≤ ∞" in targeted
    # attack sequence with marginal gains and standing after each attack
    pgd = next(line for line in text.splitlines() if "│ pgd " in line)
    assert "4 / 17" in pgd and "20.0%" in pgd and "65.0%" in pgd
    assert "SystemFailure: the endpoint timed out" in text and "2 interrupted" in text
    assert "partial run" not in text


def test_partial_run_warns(mnist_partial: Report) -> None:
    text = rendered([mnist_partial])
    assert "warning: partial run" in text
    assert "white-box" not in text  # the partial run stopped before it


def test_two_runs_side_by_side_with_differences(mnist: Report, mnist_weak: Report) -> None:
    text = rendered([mnist_weak, mnist])
    assert "mnist-cnn on mnist" in text and "mnist-cnn-adv on mnist" in text
    lines = text.splitlines()
    white_box = next(line for line in lines if line.startswith("│ white-box "))
    assert "55.0%" in white_box and "65.0%" in white_box and "+10.0 pp" in white_box
    pgd = next(line for line in lines if line.startswith("│ pgd "))
    assert pgd.split("│")[1:4] == [" pgd    ", "         25.0% ", "         20.0% "]
    assert "−5.0 pp" in pgd


def test_report_strings_are_not_markup(mnist: Report) -> None:
    odd = dataclasses.replace(mnist, system="[bold red]sys[/]")
    assert "[bold red]sys[/] on mnist" in rendered([odd])


def test_summary_lines(mnist: Report) -> None:
    lines = summary_lines(mnist)
    assert lines[1] == "clean accuracy 95.0%"
    assert (
        "white-box (untargeted · L∞ ≤ 0.1): robust accuracy 65.0%, median L∞ 0.1, "
        "median queries to first mistake 5, review share 50.0%"
    ) in lines
    assert any(line.startswith("  2. pgd (gradient): broke 4/17 (23.5%)") for line in lines)
    assert lines[-1].startswith("attacker's total spend: 434,846 queries")


def test_wrong_arguments(mnist: Report) -> None:
    with pytest.raises(InputError, match="render_terminal"):
        render_terminal([], Console(record=True))
