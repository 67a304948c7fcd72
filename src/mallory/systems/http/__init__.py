"""A model behind an HTTP prediction API, attacked as a black box.

:class:`HttpModel` speaks the protocols that deployed models answer, chosen with
``protocol=`` (an :class:`HttpProtocol`):

=============  ==========================================================================
protocol       wire
=============  ==========================================================================
mallory        ``GET /info``, ``POST /predict`` (below; what ``mallory serve`` speaks)
tf-serving     TensorFlow Serving REST: ``POST {url}/v1/models/{model_name}:predict``
v2             Open Inference Protocol V2 (KServe, Triton, Seldon MLServer):
               ``POST {url}/v2/models/{model_name}/infer``; ``GET {url}/v2/models/{model_name}``
mlflow         the MLflow scoring server: ``POST {url}/invocations``
mapping        any JSON API, described by an :class:`HttpMapping`
=============  ==========================================================================

mallory's protocol
------------------

``GET /info`` answers ``200`` and a JSON object that describes the model::

    {"input_shape": [1, 28, 28], "num_classes": 10, "bounds": [0.0, 1.0],
     "exposure": "scores", "top_k": null, "class_names": ["0", "1", ...],
     "max_batch": 256, "deterministic": true, "name": "mnist-cnn"}

``bounds`` is ``[lower, upper]``, each a number or a nested list that broadcasts to
``input_shape``. ``exposure`` is ``"logits"``, ``"scores"``, ``"top-k"`` or ``"label"``;
``top_k`` is an int with ``"top-k"`` and ``null`` otherwise. ``class_names``, ``max_batch``
(the most inputs one request may carry), ``deterministic`` and ``name`` may be left out.

``POST /predict`` takes ``{"inputs": [[x1, x2, ...], ...]}``: one row per input, each input
flattened in C order to ``prod(input_shape)`` numbers. A ``200`` answer holds one entry per
input, and only what the exposure allows:

=========  ======================================================================
exposure   answer
=========  ======================================================================
logits     ``{"logits": [[z1, ..., zC], ...]}``
scores     ``{"scores": [[p1, ..., pC], ...]}`` (probabilities; each row sums to 1)
top-k      ``{"topk": {"indices": [[c1, ..., ck], ...], "scores": [[p1, ..., pk], ...]}}``
label      ``{"labels": [c, ...]}``
=========  ======================================================================

Any other status is an error, with ``{"error": "what was wrong"}`` as its body. ``429`` (too
many requests) and ``503`` may carry ``Retry-After`` (seconds, or an HTTP date).

The other protocols
-------------------

These APIs do not state the input bounds, and most do not state the input shape or the number
of classes: give ``input_shape``, ``num_classes`` and ``bounds``.

- **tf-serving** sends ``{"instances": [input, ...]}``, each input nested as ``input_shape``,
  and reads ``{"predictions": [...]}``: a row of ``num_classes`` scores per input, or one
  class per input (an int or a class name) from a model that returns labels (declare
  ``exposes="label"``).
- **v2** reads the metadata (``{"inputs": [{"name", "datatype", "shape": [-1, ...]}],
  "outputs": [...]}``) where the server has it: the input's name, datatype and shape, the
  output's name and number of classes. It sends ``{"inputs": [{"name", "shape": [n, ...],
  "datatype": "FP32", "data": [flat numbers]}], "outputs": [{"name"}]}`` and reads the output's
  ``data`` (flat or nested): ``n x num_classes`` numbers, or ``n`` integer classes. With
  ``top_k``, the requested output carries ``"parameters": {"classification": top_k}`` (Triton's
  classification extension), answered by ``"score:index"`` strings (``"score:index:label"``
  too): a top-k exposure.
- **mlflow** sends ``{"inputs": [input, ...]}``, or with ``columns``
  ``{"dataframe_split": {"columns": [...], "data": [[x1, ..., xF], ...]}}``, and reads
  ``{"predictions": [...]}`` (or the bare list of MLflow before 2.0) as tf-serving does.
- **mapping**: see :mod:`mallory.systems.http.mapping` for the request template and the
  answer paths.

A model with one output column and two classes (a probability, or a logit, of class 1) is read
as two classes.

What the client makes of the answers
------------------------------------

:class:`HttpModel` turns every answer into a row of ``num_classes`` scores, and its
``exposes`` says how much of that the API really showed, so that the
:class:`~mallory.access.oracle.Oracle` refuses threat models that grant more:

- ``logits`` and ``scores`` are passed on as they are (``output`` logits or probabilities);
- ``top-k`` becomes probabilities: the k shown classes keep their scores, and the mass left
  over, ``1 - sum(shown)``, is spread evenly over the hidden classes. No hidden class can
  then outrank a shown one, so the predicted label is the API's;
- ``label`` becomes one-hot scores.

Declaring ``exposes`` poorer than what the API shows hides the rest the same way (a scores
API declared ``exposes="label"`` gives one-hot rows); richer is an error.

Failures
--------

Connection errors, timeouts, ``429`` and ``5xx`` answers, and malformed ``2xx`` answers (not
JSON, such as a proxy's HTML page; JSON of the wrong shape; NaN; classes out of range) are
retried up to ``retries`` times per request, and ``retry_budget`` times over the model's life,
after ``backoff * 2**attempt`` seconds, or after ``Retry-After`` when the server sends one (up
to :data:`MAX_RETRY_AFTER` seconds; a server that asks for longer is not waited for). Then,
and at once for any other status, a :class:`~mallory.errors.SystemFailure` names the request
(method and full URL) and what came back (status and the start of the body). The client keeps
its connections open between requests (``httpx``), and with ``rate_limit`` spaces its requests
with the :class:`~mallory.access.policies.TokenBucket` that ``mallory serve`` limits with.

Requests go through a *transport*: any ``httpx`` transport, or a plain function from
``httpx.Request`` to ``httpx.Response`` (tests plug one in); the network by default.

Plain data
----------

``HttpModel.from_dict(data)`` builds a model from plain data (a campaign file's table) and
``to_dict()`` gives it back. The keys are the keyword arguments of :class:`HttpModel`:

==================  ====================================================================
key                 value
==================  ====================================================================
url                 the API's base URL (required)
protocol            ``"mallory"`` (default), ``"tf-serving"``, ``"v2"``, ``"mlflow"``,
                    ``"mapping"``
model_name          tf-serving, v2: the model's name (``"NAME/versions/3"`` for a version)
mapping             mapping: a table of :class:`HttpMapping`'s keys (below)
exposes             ``"logits"``, ``"scores"``, ``"top-k"`` or ``"label"`` (default: the
                    protocol's)
top_k               classes a top-k answer shows (v2: asks for them)
input_shape         list of ints, e.g. ``[1, 28, 28]``
num_classes         int
bounds              ``[lower, upper]``: numbers, or nested lists shaped like the input
class_names         list of strings
name                string
input_name          v2: the input tensor's name
output_name         v2: the output tensor's name
columns             mlflow: feature names (sends ``dataframe_split``)
batch_size          int
timeout             seconds per read (10)
connect_timeout     seconds per connection (5)
retries             retries per request (3)
retry_budget        retries over the model's life (100; null: no limit)
backoff             seconds before the first retry (0.5)
rate_limit          requests per second (null: no limit)
headers             table of header names to strings
token_env           name of the environment variable holding a bearer token
==================  ====================================================================

:class:`HttpMapping`'s keys: ``path`` (required), ``request`` (the JSON template), ``method``,
``scores``, ``labels``, ``headers``, ``token_env``, ``token_header``, ``token_prefix``,
``batch_size``. A label-only API, for instance::

    {"path": "/v1/classify", "request": {"instances": "$inputs"},
     "labels": "predictions[*].label"}
"""

from mallory.systems.http.client import (
    MAX_RETRY_AFTER,
    Handler,
    Transport,
    retry_after_seconds,
)
from mallory.systems.http.mapping import HttpMapping
from mallory.systems.http.model import DEFAULT_BATCH, KEYS, HttpModel
from mallory.systems.http.protocols import ANSWER_KEYS, INFO_PATH, PREDICT_PATH, HttpProtocol

__all__ = [
    "ANSWER_KEYS",
    "DEFAULT_BATCH",
    "INFO_PATH",
    "KEYS",
    "MAX_RETRY_AFTER",
    "PREDICT_PATH",
    "Handler",
    "HttpMapping",
    "HttpModel",
    "HttpProtocol",
    "Transport",
    "retry_after_seconds",
]
