"""Any JSON prediction API, described as data: :class:`HttpMapping`.

A mapping says where to send a batch (``method``, ``path``), how to write it (``request``, a
JSON template whose placeholders take the batch), where the answer keeps the scores or the
labels (a path such as ``predictions[*].label``), and which headers go with it (fixed
``headers``, and an auth token read from the environment variable ``token_env``).

Placeholders (a string value of the template equal to one of them is replaced; ``$$`` at the
start of a string writes one literal ``$``):

==============  ==================================================================
``$inputs``     the batch, each input nested as ``input_shape``: ``[[[...]]], ...]``
``$rows``       the batch, each input flattened: ``[[x1, ..., xF], ...]``
``$data``       the whole batch as one flat list, row-major
``$shape``      ``[n, *input_shape]``
``$n``          the number of inputs
==============  ==================================================================

Paths into the answer: keys and list positions separated by dots, ``[*]`` (or ``*``) for every
element of a list, ``[i]`` (or ``i``) for one: ``predictions[*].label``, ``outputs.0.data``,
``data[*].scores``, ``[*]`` (the answer itself is the list). Keys holding dots or brackets
cannot be named.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from mallory.errors import InputError, bad_param
from mallory.jsonable import plain
from mallory.params import (
    Converted,
    Interval,
    Options,
    OrNone,
    PairsOf,
    Text,
    check_fields,
    param,
)
from mallory.systems.http.answers import Malformed, Slot

PLACEHOLDERS = ("$inputs", "$rows", "$data", "$shape", "$n")
BATCH_PLACEHOLDERS = ("$inputs", "$rows", "$data")
METHODS = ("POST", "PUT")
HEADERS_TEXT = "a mapping of header names to strings"


def _upper(value: Any) -> Any:
    """A method name in capitals (others are left for the constraint to refuse)."""
    return value.upper() if isinstance(value, str) else value


_STAR = object()
_TOKEN = re.compile(r"\[(\*|\d+)\]|([^.\[\]]+)")


def parse_path(path: str, owner: str = "HttpMapping", name: str = "path") -> tuple[Any, ...]:
    """The steps of an answer path: a key (str), a position (int) or every element (star)."""
    if not isinstance(path, str) or not path.strip():
        raise bad_param(owner, name, "a path into the answer, e.g. 'predictions[*].label'", path)
    steps: list[Any] = []
    for part in path.strip().split("."):
        if not part:
            raise bad_param(owner, name, "a path without empty steps ('a.b', not 'a..b')", path)
        position = 0
        for match in _TOKEN.finditer(part):
            if match.start() != position:
                break
            bracket, word = match.groups()
            token = bracket if bracket is not None else word
            if token == "*":
                steps.append(_STAR)
            elif token.isdigit():
                steps.append(int(token))
            else:
                steps.append(token)
            position = match.end()
        if position != len(part):
            raise bad_param(
                owner,
                name,
                "keys, positions and [*] joined by dots, e.g. 'outputs.0.data' or "
                "'predictions[*].label'",
                path,
            )
    return tuple(steps)


def follow(value: Any, steps: tuple[Any, ...], path: str) -> Any:
    """The part of ``value`` that ``steps`` lead to; Malformed when it is not there."""

    def walk(node: Any, rest: tuple[Any, ...], here: str) -> Any:
        if not rest:
            return node
        step, rest = rest[0], rest[1:]
        if step is _STAR:
            if not isinstance(node, list):
                raise Malformed(f"{path}: {here or 'the answer'} is a {_kind(node)}, not a list")
            return [walk(item, rest, f"{here}[{i}]") for i, item in enumerate(node)]
        if isinstance(step, int):
            if isinstance(node, list):
                if step >= len(node):
                    raise Malformed(
                        f"{path}: {here or 'the answer'} has {len(node)} elements, no [{step}]"
                    )
                return walk(node[step], rest, f"{here}[{step}]")
            step = str(step)
        if not isinstance(node, dict):
            raise Malformed(f"{path}: {here or 'the answer'} is a {_kind(node)}, not an object")
        if step not in node:
            keys = ", ".join(map(repr, sorted(node)[:8])) or "none"
            raise Malformed(f"{path}: {here or 'the answer'} has no key {step!r} (keys: {keys})")
        return walk(node[step], rest, f"{here}.{step}" if here else step)

    return walk(value, steps, "")


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "list"
    return "string" if isinstance(value, str) else type(value).__name__


@dataclass(frozen=True, kw_only=True)
class HttpMapping:
    """How to call a JSON prediction API that speaks no known protocol (see the module).

    Args:
        path: where to send a batch, joined to the base URL, e.g. ``"/v1/classify"``.
        request: the JSON body, with placeholders for the batch (``{"inputs": "$inputs"}``).
        method: ``"POST"`` (default) or ``"PUT"``.
        scores: where the answer keeps one row of scores per input (probabilities, or logits
            with ``exposes="logits"``).
        labels: where the answer keeps one class per input (an index or a class name). With
            ``scores`` too, both hold the top k per input (``top_k`` given to the HttpModel).
        headers: extra request headers (not secret: they are saved with the campaign).
        token_env: the environment variable holding an API token, sent as
            ``token_header: token_prefix + token`` (the token itself is never saved).
        token_header: ``"Authorization"`` by default.
        token_prefix: ``"Bearer "`` by default.
        batch_size: inputs per request (the HttpModel's batch_size wins when given).

    What the API exposes follows from the paths: ``scores`` only: scores; ``labels`` only:
    the label; both: the top k.
    """

    path: str = param(Text(), help="where to send a batch, e.g. '/v1/classify'")
    request: Any = field(default_factory=lambda: {"inputs": "$inputs"})
    method: str = param(Converted(Options(METHODS), _upper), "POST", help="the HTTP method")
    scores: str | None = param(OrNone(Text()), None, help="where the answer keeps the scores")
    labels: str | None = param(OrNone(Text()), None, help="where the answer keeps the labels")
    headers: Mapping[str, str] = param(
        PairsOf(Text(blank=True), Text(blank=True), HEADERS_TEXT, as_dict=True),
        default_factory=dict,
        help="extra request headers",
    )
    token_env: str | None = param(
        OrNone(Text()), None, help="the environment variable holding an API token"
    )
    token_header: str = param(Text(), "Authorization", help="the header of the token")
    token_prefix: str = param(Text(blank=True), "Bearer ", help="what precedes the token")
    batch_size: int | None = param(
        OrNone(Interval(low=1, integral=True)), None, help="inputs per request"
    )

    def __post_init__(self) -> None:
        owner = "HttpMapping"
        check_fields(self)
        if not self.path.startswith("/"):
            raise bad_param(
                owner, "path", "a path that starts with '/', e.g. '/v1/classify'", self.path
            )
        found = _placeholders(self.request)
        if not found & set(BATCH_PLACEHOLDERS):
            raise bad_param(
                owner,
                "request",
                f"a JSON template holding the batch as one of {', '.join(BATCH_PLACEHOLDERS)}",
                self.request,
            )
        if self.scores is None and self.labels is None:
            raise InputError(
                "HttpMapping needs scores= or labels= (or both, for top-k answers): where the "
                "answer keeps them, e.g. labels='predictions[*].label'."
            )
        for name in ("scores", "labels"):
            value = getattr(self, name)
            if value is not None:
                parse_path(value, owner, name)

    @property
    def steps(self) -> dict[str, tuple[Any, ...]]:
        """The parsed ``scores`` and ``labels`` paths that are given."""
        return {
            name: parse_path(path)
            for name, path in (("scores", self.scores), ("labels", self.labels))
            if path is not None
        }

    def to_dict(self) -> dict[str, Any]:
        """The mapping as plain data (the keys of :meth:`from_dict`)."""
        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HttpMapping:
        """A mapping from plain data (a campaign file's table); unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise InputError(f"An HttpMapping is described by a table of keys; got {data!r}.")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InputError(
                f"HttpMapping has no key {', '.join(map(repr, unknown))}; its keys: "
                f"{', '.join(known)}."
            )
        if "path" not in data:
            raise InputError(
                "HttpMapping needs 'path': where to send a batch, e.g. '/v1/classify'."
            )
        return cls(**dict(data))


def compile_template(template: Any) -> Any:
    """The request template with its placeholders as :class:`Slot` s and ``$$`` escapes
    undone, ready for :func:`~mallory.systems.http.answers.render`."""
    if isinstance(template, str):
        if template.startswith("$$"):
            return template[1:]
        return Slot(template) if template in PLACEHOLDERS else template
    if isinstance(template, dict):
        return {k: compile_template(v) for k, v in template.items()}
    if isinstance(template, list):
        return [compile_template(v) for v in template]
    return template


def _placeholders(template: Any) -> set[str]:
    """The placeholders a template uses; InputError for a ``$word`` that is none of them."""
    if isinstance(template, str):
        if template.startswith("$") and not template.startswith("$$"):
            if template not in PLACEHOLDERS:
                raise InputError(
                    f"HttpMapping's request holds {template!r}, which is no placeholder; the "
                    f"placeholders are {', '.join(PLACEHOLDERS)} (write '$$' for a literal '$')."
                )
            return {template}
        return set()
    if isinstance(template, dict):
        return set().union(*(_placeholders(v) for v in template.values()))
    if isinstance(template, list):
        return set().union(*(_placeholders(v) for v in template))
    if template is None or isinstance(template, bool | int | float):
        return set()
    raise InputError(
        f"HttpMapping's request must be plain JSON (objects, lists, strings, numbers); it holds "
        f"a {type(template).__name__}."
    )
