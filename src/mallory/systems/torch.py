"""A PyTorch module as a system."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mallory.errors import InputError
from mallory.systems.base import Bounds, Output, Stage, System, check_system_params


class TorchModel(System):
    """An ``nn.Module`` mapping a batch of shape ``(n, *input_shape)`` to logits ``(n, C)``.

    ``preprocess`` is an optional differentiable function applied first (normalization, say);
    it is a stage of its own so the attacker works in the raw input space bounded by ``bounds``.
    The module is put in eval mode: attacks need a fixed function, not dropout noise.
    ``num_classes`` is read off one forward pass when not given. ``deterministic=False``
    declares a module that answers the same input differently (noise layers, random
    transformations inside it): the judge then decides by a majority over draws.

    Its submodules (by their names in ``module.named_modules()``) can pass gradients straight
    through (BPDA) in a gradient query, for layers such as a quantizer whose gradient is zero.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        input_shape: Sequence[int],
        bounds: Bounds | tuple[Any, Any] = (0.0, 1.0),
        preprocess: Callable[[Tensor], Tensor] | None = None,
        num_classes: int | None = None,
        output: Output | str = Output.LOGITS,
        class_names: Sequence[str] | None = None,
        name: str = "torch-model",
        deterministic: bool = True,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise InputError(f"TorchModel needs a torch.nn.Module; got {type(module).__name__}.")
        given = check_system_params(
            type(self).__name__, input_shape=input_shape, deterministic=deterministic
        )
        input_shape = given["input_shape"]
        module.eval()
        self.module = module
        param = next(iter(module.parameters()), None)
        dtype = param.dtype if param is not None else torch.float32
        device = param.device if param is not None else torch.device("cpu")

        def run(x: Tensor) -> Tensor:
            return module(x.to(device=device, dtype=dtype))

        stages = []
        if preprocess is not None:
            stages.append(Stage(name="preprocess", fn=preprocess))
        stages.append(Stage(name="model", fn=run, deterministic=deterministic))
        if num_classes is None:
            probe = torch.zeros((1, *input_shape), dtype=dtype, device=device)
            with torch.no_grad():
                probe = run(preprocess(probe) if preprocess is not None else probe)
            if probe.dim() != 2:
                raise InputError(
                    f"The module must return (batch, classes) outputs; got shape "
                    f"{tuple(probe.shape)} for an input of shape {(1, *input_shape)}."
                )
            num_classes = int(probe.shape[1])
        super().__init__(
            stages,
            input_shape=input_shape,
            bounds=bounds,
            num_classes=num_classes,
            output=output,
            class_names=class_names,
            name=name,
        )

    def parts(self) -> dict[str, Any]:
        return {name: module for name, module in self.module.named_modules() if name}
