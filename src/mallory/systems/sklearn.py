"""A scikit-learn estimator or Pipeline as a (non-differentiable) system."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mallory.errors import InputError, SystemFailure
from mallory.params import Options
from mallory.systems.base import Bounds, Output, Stage, System

METHOD = Options(("auto", "predict_proba", "decision_function"))
"""What :class:`SklearnModel` asks the estimator for (``"auto"``: predict_proba if it has one)."""


class SklearnModel(System):
    """A fitted estimator (or ``sklearn.pipeline.Pipeline``) with ``predict_proba`` or
    ``decision_function``.

    Its steps need not be differentiable: the system offers no gradients, so it is attacked
    with score-based, label-only or transfer threat models. Inputs have shape
    ``(n, *input_shape)`` and are flattened to ``(n, features)`` for the estimator. Classes are
    numbered in the order of ``estimator.classes_``.

    ``method`` is ``"auto"`` (``predict_proba`` when present), ``"predict_proba"`` or
    ``"decision_function"`` (a binary decision value ``d`` becomes the logits ``(-d/2, d/2)``).
    """

    def __init__(
        self,
        estimator: Any,
        *,
        input_shape: Sequence[int],
        bounds: Bounds | tuple[Any, Any],
        method: str = "auto",
        class_names: Sequence[str] | None = None,
        name: str = "sklearn-model",
    ) -> None:
        method = METHOD.check(type(self).__name__, "method", method)
        if method == "auto":
            method = "predict_proba" if hasattr(estimator, "predict_proba") else "decision_function"
        if not hasattr(estimator, method):
            raise InputError(
                f"SklearnModel needs an estimator with {method}(); {type(estimator).__name__} has "
                "none. Fit a classifier that offers predict_proba or decision_function."
            )
        classes = getattr(estimator, "classes_", None)
        if classes is None:
            raise InputError(
                f"SklearnModel needs a fitted classifier (with classes_); "
                f"{type(estimator).__name__} is not fitted."
            )
        self.estimator = estimator
        answer = getattr(estimator, method)
        num_classes = len(classes)

        def run(x: Tensor) -> Tensor:
            features = x.detach().reshape(len(x), -1).cpu().numpy().astype(np.float64)
            out = np.asarray(answer(features), dtype=np.float64)
            if method == "decision_function" and out.ndim == 1:
                out = np.stack([-out / 2, out / 2], axis=1)
            if out.shape != (len(x), num_classes):
                raise SystemFailure(
                    f"{type(estimator).__name__}.{method} returned shape {out.shape}; "
                    f"expected {(len(x), num_classes)}."
                )
            return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)

        stage = Stage(name="model", fn=run, differentiable=False, surrogate=None)
        super().__init__(
            [stage],
            input_shape=input_shape,
            bounds=bounds,
            num_classes=num_classes,
            output=Output.PROBABILITIES if method == "predict_proba" else Output.LOGITS,
            class_names=class_names if class_names is not None else [str(c) for c in classes],
            name=name,
        )
