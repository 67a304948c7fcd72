"""Adapters that turn models into Systems, and pipelines of stages."""

from mallory.systems.base import Bounds, Output, Stage, System, identity
from mallory.systems.callable import CallableModel
from mallory.systems.http import HttpModel
from mallory.systems.onnx import OnnxModel
from mallory.systems.pipeline import Pipeline
from mallory.systems.sklearn import SklearnModel
from mallory.systems.torch import TorchModel

__all__ = [
    "Bounds",
    "CallableModel",
    "HttpModel",
    "OnnxModel",
    "Output",
    "Pipeline",
    "SklearnModel",
    "Stage",
    "System",
    "TorchModel",
    "identity",
]
