"""Defenses: training recipes that yield a model, stages that wrap a system, and randomized
smoothing with its certificate::

    from mallory.defenses import GaussianNoiseTraining, PGDTraining, bit_depth, certify, defend
    from mallory.zoo import load_dataset

    train = load_dataset("mnist", "train")
    robust = PGDTraining(eps=0.1, steps=3, width=8, epochs=5, lr=3e-3).train(train)
    squeezed = defend(robust, bit_depth(4))  # a Pipeline: bit-depth reduction, then the model
    base = GaussianNoiseTraining(sigma=0.25).train(train)
    predictions, radius = certify(base, load_dataset("mnist", "test").x[:10], sigma=0.25)

Every defense here fails at some stage of the lecture's pipeline of defense failures; the
audit (:mod:`mallory.evaluation`) shows where.
"""

from mallory.defenses.networks import Architecture, build_network
from mallory.defenses.recipes import (
    RECIPES,
    DistillationTraining,
    DropoutTraining,
    FGSMTraining,
    GaussianNoiseTraining,
    PGDTraining,
    PlainTraining,
    WeightDecayTraining,
    linf_attack,
)
from mallory.defenses.smoothing import (
    Certificate,
    SmoothedClassifier,
    certified_radius,
    certify,
    clopper_pearson_lower,
    predict,
)
from mallory.defenses.stages import (
    OutputStage,
    bit_depth,
    center_crop,
    defend,
    jpeg_compression,
    label_only,
    median_smoothing,
    random_resize_pad,
    rounded_scores,
)
from mallory.defenses.training import RECIPE_VERSION, Recipe

__all__ = [
    "RECIPES",
    "RECIPE_VERSION",
    "Architecture",
    "Certificate",
    "DistillationTraining",
    "DropoutTraining",
    "FGSMTraining",
    "GaussianNoiseTraining",
    "OutputStage",
    "PGDTraining",
    "PlainTraining",
    "Recipe",
    "SmoothedClassifier",
    "WeightDecayTraining",
    "bit_depth",
    "build_network",
    "center_crop",
    "certified_radius",
    "certify",
    "clopper_pearson_lower",
    "defend",
    "jpeg_compression",
    "label_only",
    "linf_attack",
    "median_smoothing",
    "predict",
    "random_resize_pad",
    "rounded_scores",
]
