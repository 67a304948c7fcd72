"""Progress bars on the terminal (rich), or nothing when disabled."""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress


class Progress:
    """One bar per threat model, advanced per attack; a no-op when ``enabled`` is False."""

    def __init__(self, *, enabled: bool = True) -> None:
        self._bars: RichProgress | None = None
        if enabled:
            self._bars = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                transient=False,
            )

    def __enter__(self) -> Progress:
        if self._bars is not None:
            self._bars.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bars is not None:
            self._bars.__exit__(*exc)

    def add(self, name: str, total: int) -> int:
        if self._bars is None:
            return 0
        return int(self._bars.add_task(name, total=total))

    def describe(self, bar: int, text: str) -> None:
        if self._bars is not None:
            self._bars.update(bar, description=text)  # type: ignore[arg-type]

    def advance(self, bar: int) -> None:
        if self._bars is not None:
            self._bars.advance(bar)  # type: ignore[arg-type]
