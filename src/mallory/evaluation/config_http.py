"""``[system] url = ...``: a prediction API as the system under test, in a campaign file.

::

    [system]
    url = "https://api.example.com"
    protocol = "mapping"                 # mallory, tf-serving, v2, mlflow or mapping
    exposes = "label"                    # what the API shows (default: what the protocol says)
    input_shape = [1, 28, 28]
    num_classes = 10
    bounds = [0.0, 1.0]
    token_env = "API_TOKEN"              # a token read from the environment, never the file
    rate_limit = 5.0                     # requests per second this client sends at most

    [system.mapping]                     # protocol = "mapping": any JSON API
    path = "/v1/classify"
    request = { instances = "$inputs" }
    labels = "predictions[*].label"

Every key of :class:`~mallory.systems.http.HttpModel` is read by its own constraint. An API
whose protocol describes its model (mallory's ``/info``, V2's metadata) is asked when the file
is read, so one that is down is an error naming the file; the others are first called by the
run. ``deterministic = false`` declares an API that answers the same input differently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mallory.errors import MalloryError
from mallory.evaluation.config_table import Table
from mallory.params import Constraint, ListOf, Text
from mallory.systems.base import DETERMINISTIC

if TYPE_CHECKING:
    from mallory.evaluation.config_data import SystemChoice


def url_keys() -> tuple[str, ...]:
    """The keys of a ``[system]`` table with ``url``."""
    from mallory.systems.http.model import KEYS

    return (*KEYS, "deterministic")


def read_url_system(values: Any, *, where: str, bounds: Constraint) -> SystemChoice:
    """The ``[system]`` table of a prediction API (``url`` and HttpModel's options)."""
    from mallory.evaluation.config_data import SystemChoice
    from mallory.systems.http.model import HTTP_PARAMS, KEYS, HttpModel

    table = Table(values, "system", where, url_keys())
    special: dict[str, Constraint] = {
        "url": Text(),
        "model_name": Text(),
        "bounds": bounds,
        "class_names": ListOf(Text(), text="a list of class names"),
    }
    params: dict[str, Any] = {}
    for key in KEYS:
        if not table.has(key):
            continue
        if key == "mapping":
            mapping = table.get("mapping")
            if not isinstance(mapping, dict):
                raise table.fail("mapping", "must be a table (see mallory.systems.http).")
            params[key] = mapping
            continue
        params[key] = table.read(key, HTTP_PARAMS.get(key) or special[key])
    deterministic = table.read("deterministic", DETERMINISTIC, True)
    try:
        system = HttpModel(**params)
    except MalloryError as error:
        raise table.fail("mapping" if "HttpMapping" in str(error) else None, str(error)) from None
    return SystemChoice(system if deterministic else system.randomized(), system.name, None)
