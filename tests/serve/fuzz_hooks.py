"""Schemathesis checks of mallory's own, loaded by the fuzz test (``SCHEMATHESIS_HOOKS``).

``label_server_shows_no_score``: when ``MALLORY_FUZZ_EXPOSURE`` is ``label``, no answer (body
or header, errors included) holds a fraction or a word naming scores, unless the request sent
it (an echo) or it is one of the input bounds, 0.0 and 1.0. A probability leaked in any form
(an answer, a debug field, an error message) is a fraction. The OpenAPI document is checked
on its own (it holds example inputs).
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import unquote

import schemathesis

# a number with a fraction or an exponent, standing on its own (not inside "\U00045e13")
_FRACTION = re.compile(rb"(?<![\w.])(?:\d+\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+)(?![\w.])")
_WORDS = (b"score", b"logit", b"topk", b"probab")
_BOUNDS = {0.0, 1.0}


@schemathesis.check
def label_server_shows_no_score(ctx: Any, response: Any, case: Any) -> bool | None:
    if os.environ.get("MALLORY_FUZZ_EXPOSURE") != "label" or case.path == "/openapi.json":
        return None
    request = response.request
    body = request.body or b""
    sent = unquote(str(request.url)).encode() + (body.encode() if isinstance(body, str) else body)
    headers = b"\n".join(
        f"{name}: {value}".encode() for name, values in response.headers.items() for value in values
    )
    shown = response.content + b"\n" + headers
    for word in _WORDS:
        if word in shown.lower() and word not in sent.lower():
            raise AssertionError(
                f"a label server's answer names {word.decode()!r}: {shown[:300]!r}"
            )
    for token in _FRACTION.findall(shown):
        if float(token) not in _BOUNDS and token not in sent:
            raise AssertionError(f"a label server's answer holds {token.decode()}: {shown[:300]!r}")
    return True
