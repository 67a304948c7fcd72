"""The command-line tool. One module per command group:

* :mod:`mallory.cli.attack`: ``mallory attack``;
* :mod:`mallory.cli.listing`: ``mallory list``;
* :mod:`mallory.cli.serving`: ``mallory serve``;
* :mod:`mallory.cli.runs`: ``evaluate``, ``report``, ``compare``, ``demo``;
* :mod:`mallory.cli.audit`: ``mallory audit``.
"""

from mallory.cli import attack, audit, check, listing, runs, serving  # noqa: F401  (registers)
from mallory.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
