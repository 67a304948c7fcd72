"""The report: data first (:mod:`mallory.report.model`), then its renderings: the terminal
(:func:`render_terminal`, :func:`summary_lines`) and one self-contained HTML page
(:func:`render_html`). The JSON form is documented in ``docs/report-schema.md``."""

from mallory.report.html import render_html
from mallory.report.model import SCHEMA, Report
from mallory.report.terminal import render_terminal, summary_lines

__all__ = ["SCHEMA", "Report", "render_html", "render_terminal", "summary_lines"]
