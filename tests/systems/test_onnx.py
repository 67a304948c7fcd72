"""OnnxModel: an exported torch model gives the torch outputs; shapes, errors, serving."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import mallory  # noqa: E402
from mallory.access.oracle import Access  # noqa: E402
from mallory.errors import InputError  # noqa: E402
from mallory.serve.server import serve  # noqa: E402
from mallory.systems import HttpModel, OnnxModel  # noqa: E402
from mallory.systems.saved import load_saved  # noqa: E402


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)
    ).eval()


def export(net: nn.Module, path: Path, *, dynamic_batch: bool, batch: int = 2) -> Path:
    """The TorchScript-based exporter (quick); the dynamo one (slow) where it is gone."""
    example = (torch.rand(batch, 1, 6, 6),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                net,
                example,
                str(path),
                dynamo=False,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}
                if dynamic_batch
                else None,
            )
        except Exception:  # a torch without the legacy exporter
            dims = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
            torch.onnx.export(net, example, str(path), dynamo=True, dynamic_shapes=dims)
    return path


@pytest.fixture(scope="module")
def dynamic_file(net: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(net, tmp_path_factory.mktemp("onnx") / "net.onnx", dynamic_batch=True)


def test_outputs_match_torch(net: nn.Module, dynamic_file: Path) -> None:
    system = OnnxModel(dynamic_file, bounds=(0.0, 1.0))
    assert system.input_shape == (1, 6, 6) and system.num_classes == 5
    assert system.name == "net" and system.exposes is mallory.Exposure.LOGITS
    x = torch.rand(33, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(x)
    out = system.forward(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, expected, atol=1e-5, rtol=0)
    assert torch.allclose(system.forward(x.double()), expected.double(), atol=1e-5, rtol=0)


def test_a_fixed_batch_size_is_fed_in_chunks(net: nn.Module, tmp_path: Path) -> None:
    system = OnnxModel(
        export(net, tmp_path / "fixed.onnx", dynamic_batch=False, batch=4), bounds=(0, 1)
    )
    x = torch.rand(10, 1, 6, 6)
    with torch.no_grad():
        assert torch.allclose(system.forward(x), net(x), atol=1e-5, rtol=0)


def test_no_gradients_only_scores(dynamic_file: Path) -> None:
    system = OnnxModel(dynamic_file, bounds=(0.0, 1.0), output="logits")
    oracle = mallory.Oracle(system, mallory.white_box("linf", 0.1))
    assert oracle.access is Access.SCORES
    with pytest.raises(mallory.AccessError, match="not differentiable"):
        oracle.require(Access.GRADIENTS, "fgsm")


def symbolic_graph(path: Path, dims: list[int | str]) -> Path:
    """A hand-built ONNX graph: flatten, then a 4 -> 3 matrix product."""
    helper, TensorProto = onnx.helper, onnx.TensorProto
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], [0.1 * i for i in range(12)])
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "classes"])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_shapes_from_the_model_or_given(tmp_path: Path) -> None:
    path = symbolic_graph(tmp_path / "free.onnx", ["n", "a", "b"])
    with pytest.raises(InputError, match="give input_shape"):
        OnnxModel(path, bounds=(0, 1))
    system = OnnxModel(path, input_shape=(2, 2), bounds=(0, 1), class_names=["a", "b", "c"])
    assert system.num_classes == 3 and system.class_names == ("a", "b", "c")  # from a probe
    x = torch.rand(5, 2, 2)
    weight = (0.1 * torch.arange(12.0)).reshape(4, 3)
    assert torch.allclose(system.forward(x), x.reshape(5, 4) @ weight, atol=1e-6)
    fixed = symbolic_graph(tmp_path / "fixed.onnx", ["n", 2, 2])
    with pytest.raises(InputError, match="does not fit"):
        OnnxModel(fixed, input_shape=(4, 1), bounds=(0, 1))


def test_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dynamic_file: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        OnnxModel(tmp_path / "missing.onnx", bounds=(0, 1))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(InputError, match="cannot load"):
        OnnxModel(tmp_path / "junk.onnx", bounds=(0, 1))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(InputError, match=r"pip install mallory\[onnx\]"):
        OnnxModel(dynamic_file, bounds=(0, 1))


def test_load_saved_and_serve_over_http(net: nn.Module, dynamic_file: Path) -> None:
    system = load_saved(dynamic_file, bounds=(0, 1))
    assert isinstance(system, OnnxModel)
    x = torch.rand(9, 1, 6, 6)
    with serve(system, exposure="scores") as server:
        remote = HttpModel(server.url)
        with torch.no_grad():
            expected = net(x).softmax(1)
        assert torch.allclose(remote.forward(x), expected, atol=1e-5, rtol=0)
