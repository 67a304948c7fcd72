"""``mallory serve``: a system as a black-box prediction API."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mallory.cli.app import app, console, errors
from mallory.errors import InputError, MalloryError
from mallory.serve.limits import DEFAULT_MAX_BATCH, DEFAULT_READ_TIMEOUT
from mallory.systems.base import Output
from mallory.threat import Exposure

if TYPE_CHECKING:
    from mallory.access.detectors import StatefulDetector
    from mallory.access.policies import Policy

DETECTOR_FPR = 0.001
"""The share of benign training inputs a calibrated ``--detector`` would flag."""


def _numbers(text: str, option: str, kind: type[int] | type[float]) -> list[Any]:
    """A comma-separated list of numbers, as for --input-shape 1,28,28 or --bounds 0,1."""
    try:
        return [kind(part) for part in text.split(",")]
    except ValueError:
        raise typer.BadParameter(
            f"expected numbers separated by commas, got {text!r}", param_hint=option
        ) from None


def build_detector(model: str, threshold: float | None, k: int) -> StatefulDetector:
    """The ``--detector`` of ``mallory serve``: one stateful detector that watches each client
    address as an account, with ``threshold`` or, for a zoo model, calibrated on its training
    data to flag 0.1% of benign inputs."""
    from mallory.access.detectors import StatefulDetector
    from mallory.zoo import list_models, load_dataset

    if threshold is not None:
        return StatefulDetector(threshold, k=k)
    recipe = next((r for r in list_models() if r.name == model), None)
    if recipe is None:
        raise InputError(
            f"--detector on {model!r} needs --detector-threshold: only a zoo model comes with "
            "benign data to calibrate the detector on. Give the distance below which a query "
            "is too close to the client's earlier ones (StatefulDetector.calibrate finds one "
            "from benign inputs)."
        )
    return StatefulDetector.calibrate(
        load_dataset(recipe.dataset, "train").x, fpr=DETECTOR_FPR, k=k
    )


def served_policies(
    rate_limit: float | None, detector: StatefulDetector | None, ban_after: int | None
) -> list[Policy]:
    """The served system's own admission policies: with ``ban_after``, a Ban first (it reads
    the refusals of the others), then the rate limit (here, not the server's outer one, so
    that the Ban sees it) and the detector."""
    from mallory.access.policies import Ban, RateLimit

    policies: list[Policy] = []
    if ban_after is not None:
        if rate_limit is None and detector is None:
            raise InputError(
                "--ban-after bans a client after refusals by --rate-limit or --detector; give "
                "one of them too."
            )
        policies.append(Ban(after=ban_after))
        if rate_limit is not None:
            policies.append(RateLimit(rate_limit, burst=max(1.0, rate_limit)))
    if detector is not None:
        policies.append(detector)
    return policies


@app.command()
def serve(
    model: Annotated[
        str,
        typer.Argument(
            help="zoo model name (see `mallory list models`), or a saved model file: .onnx, "
            ".pt (TorchScript), .pt2 (torch.export), .pkl/.joblib (scikit-learn; loading a "
            "pickle runs the code it names: serve only files you trust)"
        ),
    ],
    exposure: Annotated[
        Exposure, typer.Option(help="what an answer shows: never more than this")
    ] = Exposure.SCORES,
    top_k: Annotated[
        int | None, typer.Option("--top-k", help="classes shown with --exposure top-k", min=1)
    ] = None,
    host: Annotated[
        str, typer.Option(help="address to listen on (loopback unless --allow-remote)")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="port to listen on (0: any free one)", min=0, max=65535)
    ] = 8000,
    allow_remote: Annotated[
        bool, typer.Option(help="allow a non-loopback --host: anyone reaching it may query")
    ] = False,
    rate_limit: Annotated[
        float | None,
        typer.Option(help="requests per second per client; beyond it 429 (default: no limit)"),
    ] = None,
    max_batch: Annotated[
        int, typer.Option(help="most inputs per request; beyond it 413", min=1)
    ] = DEFAULT_MAX_BATCH,
    max_body_bytes: Annotated[
        int | None,
        typer.Option(
            help="largest request body in bytes; beyond it 413 (default: room for --max-batch "
            "inputs at 32 bytes a number, plus 64 KiB)",
            min=1,
        ),
    ] = None,
    read_timeout: Annotated[
        float,
        typer.Option(
            help="seconds a client may take to send a request's head, and again its body; "
            "then 408 and the connection is closed",
            min=0.001,
        ),
    ] = DEFAULT_READ_TIMEOUT,
    query_log: Annotated[
        Path | None, typer.Option(help="append every request to this file as a JSON line")
    ] = None,
    input_shape: Annotated[
        str | None,
        typer.Option(help="shape of one input for a saved file, e.g. 1,28,28 (no batch dim)"),
    ] = None,
    bounds: Annotated[
        str | None, typer.Option(help="input bounds LOWER,UPPER for a saved file, e.g. 0,1")
    ] = None,
    output: Annotated[
        Output, typer.Option(help="what a saved torch or ONNX model returns")
    ] = Output.LOGITS,
    detector: Annotated[
        bool,
        typer.Option(
            help="refuse (403) a client once a query is too close to its earlier ones: a "
            "stateful query-stream detector, one account per client address"
        ),
    ] = False,
    detector_threshold: Annotated[
        float | None,
        typer.Option(
            help="the detector's distance threshold (default: calibrated on a zoo model's "
            "training data to flag 0.1% of benign inputs; needed for a saved file)",
        ),
    ] = None,
    detector_k: Annotated[
        int, typer.Option(help="earlier queries the detector compares each query with", min=1)
    ] = 10,
    ban_after: Annotated[
        int | None,
        typer.Option(
            help="ban a client for good (403) once this many of its input rows were refused "
            "by --rate-limit or --detector (default: no bans)",
            min=1,
        ),
    ] = None,
) -> None:
    """Serve a model as an HTTP prediction API to attack as a black box: mallory's protocol
    (GET /info, POST /predict), which mallory.systems.http.HttpModel speaks, and the Open
    Inference Protocol V2 (/v2/models/NAME/infer); GET /openapi.json describes both. Every
    error is JSON; Ctrl-C stops it. With --detector, a client whose queries look like a
    query attack's (too close to its earlier ones) is refused from then on; with --ban-after,
    a client refused that many rows is banned for good."""
    from mallory.serve.server import Server, check_host, serve_forever
    from mallory.systems.saved import load_saved
    from mallory.zoo import load_model

    shape = _numbers(input_shape, "--input-shape", int) if input_shape is not None else None
    box = _numbers(bounds, "--bounds", float) if bounds is not None else None
    if box is not None and len(box) != 2:
        raise typer.BadParameter(f"expected LOWER,UPPER, got {bounds!r}", param_hint="--bounds")

    def ready(server: Server) -> None:
        shown = f"top-{server.top_k}" if server.top_k is not None else server.exposure.value
        if watch is not None:
            shown += f", detector threshold {watch.threshold:.4g}"
        console.print(
            f"serving {system.name} at {server.url} (exposure {shown}): GET /info, "
            "POST /predict, /v2 (Open Inference Protocol), GET /openapi.json; Ctrl-C stops",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    watch: StatefulDetector | None = None
    try:
        check_host(host, allow_remote)
        if detector:
            watch = build_detector(model, detector_threshold, detector_k)
        if Path(model).suffix or Path(model).exists():  # zoo names have no dot
            system = load_saved(
                model,
                input_shape=shape,
                bounds=(box[0], box[1]) if box is not None else None,
                output=output,
            )
        else:
            system = load_model(model)
        policies = served_policies(rate_limit, watch, ban_after)
        if policies:
            system = system.with_policies(*policies)
        serve_forever(
            system,
            host=host,
            port=port,
            exposure=exposure,
            top_k=top_k,
            rate_limit=None if ban_after is not None else rate_limit,
            max_batch=max_batch,
            max_body_bytes=max_body_bytes,
            read_timeout=read_timeout,
            query_log=query_log,
            allow_remote=allow_remote,
            ready=ready,
        )
    except MalloryError as error:
        errors.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    console.print("stopped")
