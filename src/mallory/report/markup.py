"""Small HTML builders shared by the report's sections. Every text that comes from a report
goes through :func:`esc`; builders take cells that are already HTML."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape


def esc(value: object) -> str:
    """Any value as escaped HTML text."""
    return escape(str(value), quote=True)


def cell(html: str, *, cls: str = "", span: int = 1, rows: int = 1, head: bool = False) -> str:
    tag = "th" if head else "td"
    attrs = f' class="{cls}"' if cls else ""
    attrs += f' colspan="{span}"' if span > 1 else ""
    attrs += f' rowspan="{rows}"' if rows > 1 else ""
    return f"<{tag}{attrs}>{html}</{tag}>"


def table(head: Sequence[str], rows: Sequence[Sequence[str]], *, cls: str = "") -> str:
    """A table: ``head`` holds header cells as HTML text, ``rows`` hold rows of finished
    ``<td>``/``<th>`` cells (see :func:`cell`) or plain HTML texts wrapped in ``<td>``."""
    thead = "<tr>" + "".join(h if h.startswith("<th") else cell(h, head=True) for h in head)
    body = "".join(
        "<tr>" + "".join(c if c.startswith(("<td", "<th")) else cell(c) for c in row) + "</tr>"
        for row in rows
    )
    attrs = f' class="{cls}"' if cls else ""
    return f"<table{attrs}><thead>{thead}</tr></thead><tbody>{body}</tbody></table>"


def section(ident: str, title: str, body: str, *, intro: str = "") -> str:
    lead = f'<p class="intro">{intro}</p>' if intro else ""
    return f'<section id="{ident}"><h2>{esc(title)}</h2>{lead}{body}</section>'


def image(
    uri: str | None, alt: str, *, size: tuple[int, int], missing: str = "not an image"
) -> str:
    """An ``<img>`` of a PNG data URI shown at ``size`` (width, height) pixels, or a note when
    there is no image."""
    if uri is None:
        return f'<span class="noimage">{esc(missing)}</span>'
    width, height = size
    return f'<img src="{uri}" alt="{esc(alt)}" width="{width}" height="{height}">'
