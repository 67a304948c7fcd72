"""An ONNX model, run by onnxruntime on the CPU, as a (non-differentiable) system.

onnxruntime is optional (``pip install mallory[onnx]``); it is imported when an
:class:`OnnxModel` is made, so the rest of mallory works without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mallory.errors import InputError, SystemFailure
from mallory.systems.base import INPUT_SHAPE, NAME, Bounds, Output, Stage, System

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
}


def in_fixed_batches(fn: Callable[[Tensor], Tensor], x: Tensor, size: int | None) -> Tensor:
    """``fn(x)`` for a model that takes batches of exactly ``size`` inputs (None: any size).

    The batch is cut into chunks of ``size``; the last one is padded with copies of its first
    input, whose outputs are dropped.
    """
    if size is None or len(x) == size:
        return fn(x)
    outs = []
    for start in range(0, len(x), size):
        part = x[start : start + size]
        short = size - len(part)
        if short:
            part = torch.cat([part, part[:1].expand(short, *part.shape[1:])])
        outs.append(fn(part)[: size - short])
    return torch.cat(outs)


class OnnxModel(System):
    """An ONNX classifier: one input ``(batch, *input_shape)``, first output ``(batch, C)``.

    It runs on onnxruntime's CPU provider and offers no gradients (its stage ``"model"`` has no
    surrogate), so it is attacked with score-based, label-only or transfer threat models; for
    white-box attacks load the original PyTorch model.

    Args:
        path: the ``.onnx`` file.
        input_shape: the shape of one input (no batch dimension); read from the model when its
            dimensions are fixed. A model with a fixed batch size is fed in batches of that size.
        bounds: the input domain ``(lower, upper)``; there is no default, as the file does not
            say what its inputs mean.
        output: whether the first output holds ``"logits"`` or ``"probabilities"``.
        class_names: a name per class (``"0"``, ``"1"``, ... by default).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        input_shape: Sequence[int] | None = None,
        bounds: Bounds | tuple[Any, Any],
        output: Output | str = Output.LOGITS,
        class_names: Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        owner = type(self).__name__
        if input_shape is not None:
            input_shape = INPUT_SHAPE.check(owner, "input_shape", input_shape)
        if name is not None:
            name = NAME.check(owner, "name", name)
        try:
            import onnxruntime  # type: ignore[import-untyped, import-not-found, unused-ignore]
        except ImportError:
            raise InputError(
                "OnnxModel needs onnxruntime, which is not installed. Install it with "
                "`pip install mallory[onnx]`."
            ) from None
        file = Path(path)
        if not file.is_file():
            raise InputError(f"No ONNX model at {file}: the file does not exist.")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        try:
            session = onnxruntime.InferenceSession(
                str(file), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own, undocumented, exception types
            raise InputError(f"onnxruntime cannot load {file}: {error}") from None
        inputs = session.get_inputs()
        if len(inputs) != 1:
            names = [i.name for i in inputs]
            raise InputError(
                f"OnnxModel needs a model with one input; {file} has {len(inputs)}: {names}."
            )
        spec = inputs[0]
        dtype = _DTYPES.get(spec.type)
        if dtype is None:
            raise InputError(
                f"The input {spec.name!r} of {file} is {spec.type}; OnnxModel feeds floats "
                f"({', '.join(_DTYPES)})."
            )
        dims = list(spec.shape or [])
        shape = _input_shape(dims, input_shape, file)
        batch = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else None
        input_name, output_name = spec.name, session.get_outputs()[0].name
        self.path = file

        def run_batch(x: Tensor) -> Tensor:
            array = x.detach().cpu().numpy().astype(dtype, copy=False)
            (out,) = session.run([output_name], {input_name: array})
            result = torch.from_numpy(np.asarray(out))
            if result.dim() != 2 or len(result) != len(x):
                raise SystemFailure(
                    f"The ONNX model {file.name} returned shape {tuple(result.shape)} for "
                    f"{len(x)} inputs; expected (batch, classes)."
                )
            return result

        def run(x: Tensor) -> Tensor:
            out = in_fixed_batches(run_batch, x, batch)
            return out.to(device=x.device, dtype=x.dtype)

        out_dims = session.get_outputs()[0].shape or []
        if len(out_dims) == 2 and isinstance(out_dims[1], int) and out_dims[1] > 0:
            num_classes = out_dims[1]
        else:
            num_classes = int(run(torch.zeros((1, *shape))).shape[1])
        stage = Stage(name="model", fn=run, differentiable=False, surrogate=None)
        super().__init__(
            [stage],
            input_shape=shape,
            bounds=bounds,
            num_classes=num_classes,
            output=output,
            class_names=class_names,
            name=name or file.stem,
        )


def _input_shape(dims: list[Any], given: Sequence[int] | None, file: Path) -> tuple[int, ...]:
    """The shape of one input: from the model's fixed dimensions, checked against ``given``."""
    model_dims = dims[1:]
    fixed = all(isinstance(d, int) and d > 0 for d in model_dims)
    if given is None:
        if not dims or not fixed:
            raise InputError(
                f"The input of {file} has shape {dims} (no fixed size per input); give "
                "input_shape (--input-shape), e.g. (1, 28, 28)."
            )
        return tuple(int(d) for d in model_dims)
    shape = tuple(int(d) for d in given)
    clash = len(model_dims) != len(shape) or any(
        isinstance(d, int) and d > 0 and d != s for d, s in zip(model_dims, shape, strict=False)
    )
    if dims and clash:
        raise InputError(
            f"input_shape {shape} does not fit the input of {file}, of shape {dims} (the first "
            "dimension is the batch). Leave input_shape out or match the model."
        )
    return shape
