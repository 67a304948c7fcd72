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
from mallory.systems.http.answers import Malformed, Slot

PLACEHOLDERS = ("$inputs", "$rows", "$data", "$shape", "$n")
BATCH_PLACEHOLDERS = ("$inputs", "$rows", "$data")
METHODS = ("POST", "PUT")
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

    path: str
    request: Any = field(default_factory=lambda: {"inputs": "$inputs"})
    method: str = "POST"
    scores: str | None = None
    labels: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    token_env: str | None = None
    token_header: str = "Authorization"
    token_prefix: str = "Bearer "
    batch_size: int | None = None

    def __post_init__(self) -> None:
        owner = "HttpMapping"
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise bad_param(
                owner, "path", "a path that starts with '/', e.g. '/v1/classify'", self.path
            )
        method = self.method.upper() if isinstance(self.method, str) else self.method
        if method not in METHODS:
            raise bad_param(owner, "method", f"one of {', '.join(METHODS)}", self.method)
        object.__setattr__(self, "method", method)
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
        if not isinstance(self.headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.headers.items()
        ):
            raise bad_param(owner, "headers", "a mapping of header names to strings", self.headers)
        object.__setattr__(self, "headers", dict(self.headers))
        if self.token_env is not None and (
            not isinstance(self.token_env, str) or not self.token_env
        ):
            raise bad_param(
                owner, "token_env", "the name of an environment variable, or None", self.token_env
            )
        for name in ("token_header", "token_prefix"):
            if not isinstance(getattr(self, name), str):
                raise bad_param(owner, name, "a string", getattr(self, name))
        if not self.token_header:
            raise bad_param(owner, "token_header", "a header name", self.token_header)
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool)
            or not isinstance(self.batch_size, int)
            or self.batch_size < 1
        ):
            raise bad_param(owner, "batch_size", "an int >= 1, or None", self.batch_size)

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
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

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


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
