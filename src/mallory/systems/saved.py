"""Systems from saved model files, chosen by the file's suffix.

========================  ===================================  ===========================
suffix                    read with                            system
========================  ===================================  ===========================
``.onnx``                 onnxruntime (``mallory[onnx]``)      :class:`OnnxModel`
``.pt``                   ``torch.jit.load`` (TorchScript)     :class:`TorchModel`
``.pt2``                  ``torch.export.load``                :class:`TorchModel`
``.pkl``, ``.joblib``     pickle / joblib (scikit-learn)       :class:`SklearnModel`
========================  ===================================  ===========================

Loading a pickle (``.pkl``, ``.joblib``) runs whatever code the file names: load only files
you trust. TorchScript and exported programs hold no Python code of their own.
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mallory.errors import InputError
from mallory.systems.base import DETERMINISTIC, INPUT_SHAPE, NAME, OUTPUT, Bounds, Output, System
from mallory.systems.onnx import OnnxModel, in_fixed_batches
from mallory.systems.sklearn import SklearnModel
from mallory.systems.torch import TorchModel

SUFFIXES = {
    ".onnx": "ONNX",
    ".pt": "TorchScript (torch.jit.save)",
    ".pt2": "torch.export (torch.export.save)",
    ".pkl": "scikit-learn estimator (pickle)",
    ".joblib": "scikit-learn estimator (joblib)",
}


def load_saved(
    path: str | Path,
    input_shape: Sequence[int] | None = None,
    bounds: Bounds | tuple[Any, Any] | None = None,
    *,
    output: Output | str = Output.LOGITS,
    name: str | None = None,
    deterministic: bool = True,
) -> System:
    """The model saved at ``path`` as a System (the suffix says how to read it).

    ``input_shape`` (without the batch dimension) is read from ONNX and ``.pt2`` files with
    fixed sizes, and from a scikit-learn estimator's ``n_features_in_``; TorchScript needs it.
    ``bounds`` is required: a file does not say what its inputs mean. ``output`` says whether a
    torch or ONNX model returns logits or probabilities (scikit-learn estimators say it
    themselves). ``deterministic=False`` declares a model that answers the same input
    differently (the judge then votes over draws). Pickles run code when loaded: load only
    files you trust.
    """
    owner = "load_saved"
    deterministic = DETERMINISTIC.check(owner, "deterministic", deterministic)
    output = OUTPUT.check(owner, "output", output)
    if input_shape is not None:
        input_shape = INPUT_SHAPE.check(owner, "input_shape", input_shape)
    if name is not None:
        name = NAME.check(owner, "name", name)
    system = _load(path, input_shape, bounds, output=output, name=name)
    return system if deterministic else system.randomized()


def _load(
    path: str | Path,
    input_shape: Sequence[int] | None,
    bounds: Bounds | tuple[Any, Any] | None,
    *,
    output: Output | str,
    name: str | None,
) -> System:
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in SUFFIXES:
        known = ", ".join(f"{s} ({k})" for s, k in SUFFIXES.items())
        raise InputError(f"Cannot tell how to load {file}: its suffix is not one of {known}.")
    if not file.is_file():
        raise InputError(f"No model file at {file}: it does not exist or is not a file.")
    if bounds is None:
        raise InputError(
            f"Loading {file} needs the input bounds (lower, upper), e.g. (0, 1) for images in "
            "[0, 1] (--bounds 0,1): a model file does not say what its inputs mean."
        )
    label = name or file.stem
    if suffix == ".onnx":
        return OnnxModel(file, input_shape=input_shape, bounds=bounds, output=output, name=label)
    if suffix == ".pt":
        module = _torchscript(file)
        if input_shape is None:
            raise _no_shape(file)
        return TorchModel(module, input_shape=input_shape, bounds=bounds, output=output, name=label)
    if suffix == ".pt2":
        module, shape = _exported(file, input_shape)
        return TorchModel(module, input_shape=shape, bounds=bounds, output=output, name=label)
    estimator = _unpickle(file)
    features = getattr(estimator, "n_features_in_", None)
    if input_shape is None:
        if not isinstance(features, int):
            raise _no_shape(file)
        input_shape = (features,)
    elif isinstance(features, int) and math.prod(input_shape) != features:
        raise InputError(
            f"input_shape {tuple(input_shape)} has {math.prod(input_shape)} features, but the "
            f"estimator in {file} takes {features}. Leave input_shape out, or match it."
        )
    return SklearnModel(estimator, input_shape=input_shape, bounds=bounds, name=label)


def _no_shape(file: Path) -> InputError:
    return InputError(
        f"Loading {file} needs input_shape, the shape of one input without the batch "
        "dimension (--input-shape 1,28,28, say): the file does not say it."
    )


def _torchscript(file: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():
            # torch deprecates TorchScript, but the user's file is what it is
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(file), map_location="cpu")
    except (RuntimeError, ValueError) as error:
        raise InputError(
            f"{file} is not a TorchScript archive ({str(error).splitlines()[0]}). Save a model "
            "with torch.jit.save(torch.jit.script(model), path); a state dict cannot be served "
            "without its code. Or export it: torch.export.save(torch.export.export(model, "
            "(example,)), 'model.pt2')."
        ) from None
    if not isinstance(module, nn.Module):
        raise InputError(f"{file} holds a {type(module).__name__}, not a module.")
    return module


class _Exported(nn.Module):
    """An exported program's module, fed in batches of its fixed size when it has one."""

    def __init__(self, program_module: nn.Module, batch: int | None) -> None:
        super().__init__()
        # kept out of the module tree: an exported module refuses .eval(), which TorchModel calls
        object.__setattr__(self, "program_module", program_module)
        self.batch = batch

    def forward(self, x: Tensor) -> Tensor:
        module: nn.Module = self.__dict__["program_module"]
        return in_fixed_batches(module, x, self.batch)


def _exported(file: Path, given: Sequence[int] | None) -> tuple[nn.Module, Sequence[int]]:
    try:
        program = torch.export.load(str(file))
    except Exception as error:  # torch raises many kinds for a file it cannot read
        raise InputError(
            f"{file} is not a saved torch.export program ({type(error).__name__}: {error}). "
            "Save one with torch.export.save(torch.export.export(model, (example,)), path)."
        ) from None
    user_inputs = list(program.graph_signature.user_inputs)
    if len(user_inputs) != 1:
        raise InputError(f"{file} takes {len(user_inputs)} inputs; a classifier takes one.")
    dims: list[Any] = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == user_inputs[0]:
            value = node.meta.get("val")
            dims = list(value.shape) if value is not None else []
    fixed = [d if isinstance(d, int) else None for d in dims]
    batch = fixed[0] if fixed else None
    if given is not None:
        shape: Sequence[int] = given
    elif len(fixed) > 1 and all(d is not None for d in fixed[1:]):
        shape = [int(d) for d in fixed[1:] if d is not None]
    else:
        raise _no_shape(file)
    return _Exported(program.module(), batch), shape


def _unpickle(file: Path) -> Any:
    try:
        if file.suffix.lower() == ".joblib":
            import joblib  # type: ignore[import-untyped, unused-ignore]

            return joblib.load(file)
        with file.open("rb") as handle:
            return pickle.load(handle)
    except Exception as error:  # unpickling can raise anything the pickled code raises
        raise InputError(
            f"Cannot unpickle {file} ({type(error).__name__}: {error}). It must hold a fitted "
            "scikit-learn estimator, saved with pickle.dump or joblib.dump."
        ) from None
