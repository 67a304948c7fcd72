"""mallory.serve: request validation, exposure, rate limit, query log; the CLI; saved models."""

from __future__ import annotations

import http.client
import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import joblib  # type: ignore[import-untyped]
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn
from typer.testing import CliRunner

from mallory.cli import app
from mallory.errors import InputError
from mallory.serve.server import Server, check_host, serve
from mallory.systems import CallableModel, HttpModel, SklearnModel, TorchModel
from mallory.systems.saved import load_saved


@pytest.fixture(scope="module")
def local() -> TorchModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    return TorchModel(net, input_shape=(2, 3), bounds=(0.0, 1.0), name="small")


def request(
    server: Server, method: str, path: str, body: bytes | None = None
) -> tuple[int, dict[str, str], Any]:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        data = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, json.loads(data) if data else None
    finally:
        connection.close()


def predict(server: Server, inputs: Any) -> tuple[int, dict[str, str], Any]:
    return request(server, "POST", "/predict", json.dumps({"inputs": inputs}).encode())


ROW = [0.5] * 6


def test_info_describes_the_served_model(local: TorchModel) -> None:
    with serve(local, exposure="top-k", top_k=2, max_batch=7) as server:
        status, _, info = request(server, "GET", "/info")
    assert status == 200
    assert info == {
        "input_shape": [2, 3],
        "num_classes": 4,
        "bounds": [0.0, 1.0],
        "exposure": "top-k",
        "top_k": 2,
        "class_names": ["0", "1", "2", "3"],
        "max_batch": 7,
        "deterministic": True,
        "name": "small",
    }
    assert server.url.startswith("http://127.0.0.1:") and server.port > 0


@pytest.mark.parametrize("exposure", ["logits", "scores", "top-k", "label"])
def test_answers_show_only_the_exposure(local: TorchModel, exposure: str) -> None:
    x = torch.tensor([ROW, [0.1] * 6]).reshape(2, 2, 3)
    logits = local.forward(x)
    top_k = 3 if exposure == "top-k" else None
    with serve(local, exposure=exposure, top_k=top_k) as server:
        status, _, answer = predict(server, x.reshape(2, -1).tolist())
        same, _, unflattened = predict(server, x.tolist())  # the full shape is accepted too
    assert status == 200 and same == 200 and answer == unflattened
    (key,) = answer
    if exposure == "logits":
        assert torch.equal(torch.tensor(answer[key]), logits)
    elif exposure == "scores":
        assert torch.equal(torch.tensor(answer[key]), logits.softmax(1))
    elif exposure == "label":
        assert answer == {"labels": logits.argmax(1).tolist()}
    else:
        top = logits.softmax(1).topk(3, dim=1)
        assert answer[key]["indices"] == top.indices.tolist()
        assert torch.equal(torch.tensor(answer[key]["scores"]), top.values)


@pytest.mark.parametrize(
    ("body", "status", "match"),
    [
        (b"{not json", 400, "not JSON"),
        (b'{"rows": []}', 400, '{"inputs"'),
        (json.dumps({"inputs": [[0.5] * 5]}).encode(), 400, "6 numbers"),
        (json.dumps({"inputs": [ROW, [0.5] * 5]}).encode(), 400, "list of rows"),
        (json.dumps({"inputs": [["a"] * 6]}).encode(), 400, "list of rows"),
        (json.dumps({"inputs": [[*ROW[:5], 1.5]]}).encode(), 400, "1 of 1 inputs leave the bounds"),
        (b'{"inputs": [[0.5, 0.5, 0.5, 0.5, 0.5, NaN]]}', 400, "NaN"),
        (json.dumps({"inputs": [ROW] * 5}).encode(), 413, "at most 4"),
        (json.dumps({"inputs": [ROW] * 40}).encode(), 413, "bytes"),
    ],
)
def test_bad_requests_are_refused(local: TorchModel, body: bytes, status: int, match: str) -> None:
    with serve(local, max_batch=4, max_body_bytes=1000) as server:
        got, _, answer = request(server, "POST", "/predict", body)
    assert got == status
    assert match in answer["error"]


def test_per_feature_bounds_travel_with_info() -> None:
    lower = torch.zeros(2, 3)
    upper = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    system = TorchModel(net, input_shape=(2, 3), bounds=(lower, upper))
    with serve(system) as server:
        remote = HttpModel(server.url)
        assert torch.equal(remote.bounds.upper.float(), upper)
        assert predict(server, [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])[0] == 200
        status, _, answer = predict(server, [[1.0, 2.5, 3.0, 4.0, 5.0, 6.0]])
    assert status == 400 and "leave the bounds" in answer["error"]


def test_unknown_paths_and_methods(local: TorchModel) -> None:
    with serve(local) as server:
        assert request(server, "GET", "/nothing")[0] == 404
        status, headers, _ = request(server, "GET", "/predict")
        assert status == 405 and headers["allow"] == "POST"
        assert request(server, "GET", "/info?verbose=1")[0] == 200


def test_a_failing_model_answers_500() -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("out of memory, say")

    system = CallableModel(broken, input_shape=(6,), num_classes=4, bounds=(0, 1))
    with serve(system) as server:
        status, _, answer = predict(server, [ROW])
    assert status == 500 and "out of memory, say" in answer["error"]


def test_rate_limit_answers_429_with_retry_after(local: TorchModel) -> None:
    with serve(local, rate_limit=2.0) as server:
        statuses = [predict(server, [ROW])[0] for _ in range(2)]
        status, headers, answer = predict(server, [ROW])
    assert statuses == [200, 200]
    assert status == 429 and headers["retry-after"] == "1"
    assert "2 requests per second" in answer["error"]


def test_query_log_has_a_line_per_request(local: TorchModel, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "queries.jsonl"
    with serve(local, query_log=log, max_batch=4) as server:
        request(server, "GET", "/info")
        predict(server, [ROW, ROW, ROW])
        predict(server, [ROW] * 5)
        predict(server, [[2.0] * 6])
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["method"], e["path"], e["inputs"], e["status"]) for e in lines] == [
        ("GET", "/info", None, 200),
        ("POST", "/predict", 3, 200),
        ("POST", "/predict", 5, 413),
        ("POST", "/predict", 1, 400),
    ]
    assert all(e["client"] == "127.0.0.1" and e["seconds"] >= 0 and "T" in e["time"] for e in lines)


def test_serve_refuses_bad_settings(local: TorchModel) -> None:
    with pytest.raises(InputError, match="loopback"):
        serve(local, host="0.0.0.0")
    with pytest.raises(InputError, match="top_k"):
        serve(local, exposure="top-k")
    with pytest.raises(InputError, match="top_k"):
        serve(local, exposure="scores", top_k=2)
    with pytest.raises(InputError, match="exposure"):
        serve(local, exposure="everything")
    with pytest.raises(InputError, match="max_batch"):
        serve(local, max_batch=0)
    with pytest.raises(InputError, match="rate_limit"):
        serve(local, rate_limit=-1)
    with serve(local, exposure="label") as server:
        remote = HttpModel(server.url)
        with pytest.raises(InputError, match="answers with 'label' at most"):
            serve(remote, exposure="scores")
        with serve(remote, exposure="label") as relay:  # a relay shows no more than it gets
            assert HttpModel(relay.url).forward(torch.full((1, 2, 3), 0.5)).sum() == 1


def test_check_host() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        check_host(host)
    for host in ("0.0.0.0", "192.168.1.4", "example.org", "::"):
        with pytest.raises(InputError, match="allow_remote"):
            check_host(host)
        check_host(host, allow_remote=True)


def test_serves_on_ipv6_loopback(local: TorchModel) -> None:
    try:
        server = serve(local, host="::1")
    except InputError as error:
        pytest.skip(f"no IPv6 loopback here: {error}")
    with server:
        assert server.url.startswith("http://[::1]:")
        x = torch.rand(3, 2, 3)
        assert torch.equal(HttpModel(server.url).forward(x), local.forward(x).softmax(1))


def test_close_is_idempotent_and_frees_the_port(local: TorchModel) -> None:
    server = serve(local)
    assert "running" in repr(server)
    server.close()
    server.close()
    assert "closed" in repr(server)
    with serve(local, port=server.port) as again:
        assert again.port == server.port


# ---------------------------------------------------------------- the CLI
runner = CliRunner()


def test_cli_refuses_a_bad_exposure() -> None:
    result = runner.invoke(app, ["serve", "digits-mlp", "--exposure", "everything"])
    assert result.exit_code == 2
    assert "everything" in result.output


def test_cli_refuses_a_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", str(tmp_path / "model.onnx"), "--bounds", "0,1"])
    assert result.exit_code == 2
    assert "No model file" in result.output


def test_cli_refuses_an_unknown_suffix(tmp_path: Path) -> None:
    (tmp_path / "model.h5").write_bytes(b"")
    result = runner.invoke(app, ["serve", str(tmp_path / "model.h5")])
    assert result.exit_code == 2 and "suffix" in result.output


def test_cli_refuses_a_non_loopback_host() -> None:
    result = runner.invoke(app, ["serve", "digits-mlp", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "loopback" in result.output


def test_cli_refuses_malformed_numbers() -> None:
    result = runner.invoke(app, ["serve", "model.pt", "--input-shape", "1,x"])
    assert result.exit_code == 2 and "--input-shape" in result.output
    result = runner.invoke(app, ["serve", "model.pt", "--bounds", "0,1,2"])
    assert result.exit_code == 2 and "--bounds" in result.output


# ---------------------------------------------------------------- saved models
@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()


def test_load_torchscript(net: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "net.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in torch
        torch.jit.save(torch.jit.script(net), str(path))
    system = load_saved(path, input_shape=(2, 3), bounds=(0, 1))
    x = torch.rand(7, 2, 3)
    assert isinstance(system, TorchModel) and system.name == "net"
    assert torch.allclose(system.forward(x), net(x))
    with pytest.raises(InputError, match="input_shape"):
        load_saved(path, bounds=(0, 1))
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(InputError, match="not a TorchScript archive"):
        load_saved(tmp_path / "weights.pt", input_shape=(2, 3), bounds=(0, 1))


def test_load_exported_program_with_a_fixed_batch(net: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "net.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(net, (torch.rand(4, 2, 3),)), str(path))
    system = load_saved(path, bounds=(0, 1))
    assert system.input_shape == (2, 3) and system.num_classes == 3
    x = torch.rand(11, 2, 3)  # not a multiple of the exported batch of 4
    assert torch.allclose(system.forward(x), net(x), atol=1e-6)


def test_load_sklearn_pickles(tmp_path: Path) -> None:
    x = torch.rand(60, 6).numpy()
    y = (x[:, 0] > 0.5).astype(int)
    estimator = LogisticRegression().fit(x, y)
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(estimator))
    joblib.dump(estimator, tmp_path / "m.joblib")
    for name in ("m.pkl", "m.joblib"):
        system = load_saved(tmp_path / name, bounds=(0, 1))
        assert isinstance(system, SklearnModel) and system.input_shape == (6,)
        probs = system.forward(torch.from_numpy(x[:5]).double())
        expected = torch.from_numpy(estimator.predict_proba(x[:5].astype("float64")))
        assert torch.allclose(probs, expected)
    with pytest.raises(InputError, match="6"):
        load_saved(tmp_path / "m.pkl", input_shape=(5,), bounds=(0, 1))
    (tmp_path / "bad.pkl").write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="Cannot unpickle"):
        load_saved(tmp_path / "bad.pkl", bounds=(0, 1))


def test_load_saved_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="No model file"):
        load_saved(tmp_path / "missing.pt", input_shape=(2,), bounds=(0, 1))
    (tmp_path / "model.h5").write_bytes(b"")
    with pytest.raises(InputError, match=r"suffix is not one of \.onnx"):
        load_saved(tmp_path / "model.h5")
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(InputError, match="bounds"):
        load_saved(tmp_path / "model.pt", input_shape=(2,))
