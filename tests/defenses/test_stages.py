"""Defense stages: shapes and bounds kept, differentiability and determinism as declared,
output hardening that exposes only what it declares, and defend()."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import mallory
from mallory.defenses import (
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
from mallory.errors import AccessError, InputError
from mallory.systems import Output, Pipeline, Stage, TorchModel
from mallory.threat import Exposure

SHAPE = (2, 12, 12)
INPUT_STAGES: dict[str, Callable[[tuple[float, float]], Stage]] = {
    "center_crop": lambda b: center_crop(0.75),
    "bit_depth": lambda b: bit_depth(3, bounds=b),
    "jpeg_compression": lambda b: jpeg_compression(30, bounds=b),
    "median_smoothing": lambda b: median_smoothing(3),
    "random_resize_pad": lambda b: random_resize_pad(0.6, bounds=b),
}
DIFFERENTIABLE = {"center_crop", "random_resize_pad"}
RANDOMIZED = {"random_resize_pad"}


def images(bounds: tuple[float, float], n: int = 6) -> Tensor:
    generator = torch.Generator().manual_seed(0)
    lower, upper = bounds
    return lower + (upper - lower) * torch.rand((n, *SHAPE), generator=generator)


def model(classes: int = 4) -> TorchModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = nn.Sequential(nn.Flatten(), nn.Linear(2 * 12 * 12, classes))
    return TorchModel(module, input_shape=SHAPE, name="net")


@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-1.0, 2.0)])
@pytest.mark.parametrize("kind", sorted(INPUT_STAGES))
def test_input_stage_keeps_shape_and_bounds_and_behaves_as_declared(
    kind: str, bounds: tuple[float, float]
) -> None:
    stage = INPUT_STAGES[kind](bounds)
    assert stage.defense
    assert stage.differentiable is (kind in DIFFERENTIABLE)
    assert stage.deterministic is (kind not in RANDOMIZED)
    assert stage.surrogate is not None  # every stage can be attacked with BPDA
    x = images(bounds)
    out = stage.fn(x)
    assert isinstance(out, Tensor)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= bounds[0] and float(out.max()) <= bounds[1]
    assert not torch.equal(out, x)  # it does something
    again = stage.fn(x)
    assert isinstance(again, Tensor)
    assert torch.equal(out, again) is stage.deterministic
    # gradients: exact where declared differentiable, none recorded otherwise
    leaf = x.clone().requires_grad_(True)
    result = stage.fn(leaf)
    assert isinstance(result, Tensor)
    if stage.differentiable:
        (grad,) = torch.autograd.grad(result.sum(), leaf)
        assert float(grad.abs().sum()) > 0
    else:
        assert not result.requires_grad


def test_bit_depth_keeps_only_its_levels() -> None:
    x = images((0.0, 1.0))
    assert set(bit_depth(1).fn(x).unique().tolist()) <= {0.0, 1.0}  # type: ignore[union-attr]
    levels = bit_depth(2, bounds=(-1.0, 2.0)).fn(images((-1.0, 2.0)))
    assert set(levels.unique().tolist()) <= {-1.0, 0.0, 1.0, 2.0}  # type: ignore[union-attr]


def test_median_smoothing_removes_salt_and_keeps_flat_images() -> None:
    flat = torch.full((1, 1, 7, 7), 0.25)
    salted = flat.clone()
    salted[0, 0, 3, 3] = 1.0
    torch.testing.assert_close(median_smoothing(3).fn(salted), flat)
    assert torch.equal(median_smoothing(1).fn(salted), salted)  # type: ignore[arg-type]


def test_center_crop_enlarges_the_centre_and_identity_at_fraction_one() -> None:
    x = torch.zeros(1, 1, 10, 10)
    x[0, 0, 4:6, 4:6] = 1.0  # a 2x2 square in the middle
    out = center_crop(0.5).fn(x)
    assert isinstance(out, Tensor)
    assert int((out > 0.5).sum()) == 16  # the square, twice as large each way
    assert torch.equal(center_crop(1.0).fn(x), x)  # type: ignore[arg-type]


def test_random_resize_pad_shrinks_and_pads_with_the_lower_bound() -> None:
    x = torch.ones(50, 1, 10, 10)
    out = random_resize_pad(0.5, bounds=(-1.0, 1.0)).fn(x)
    assert isinstance(out, Tensor)
    padded = (out == -1.0).flatten(1).sum(1)
    assert bool((padded >= 0).all()) and int(padded.max()) >= 19  # some shrunk to 9 or less
    torch.testing.assert_close(random_resize_pad(1.0).fn(x), x)


def test_jpeg_stage_matches_the_transform() -> None:
    from mallory.ops import transforms

    x = images((0.0, 1.0))
    torch.testing.assert_close(jpeg_compression(50).fn(x), transforms.jpeg(x, 50).clamp(0, 1))


def test_image_stages_refuse_flat_inputs() -> None:
    with pytest.raises(InputError, match=r"shape \(n, channels, height, width\)"):
        center_crop().fn(torch.rand(3, 5))


# ---------------------------------------------------------------- output hardening
def test_label_only_system_exposes_labels_only() -> None:
    base = model()
    hardened = defend(base, label_only())
    assert isinstance(hardened, Pipeline)
    assert hardened.exposes is Exposure.LABEL
    assert hardened.output is Output.PROBABILITIES
    assert [s.name for s in hardened.stages] == ["model", "softmax", "label-only"]
    x = images((0.0, 1.0))
    out = hardened.forward(x)
    assert set(out.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(out.sum(1), torch.ones(len(x)))
    assert torch.equal(out.argmax(1), base.forward(x).argmax(1))
    for threat in (mallory.white_box("linf", 0.1), mallory.score_based("linf", 0.1)):
        with pytest.raises(AccessError, match="answers with 'label' at most"):
            mallory.Oracle(hardened, threat)
    oracle = mallory.Oracle(hardened, mallory.label_only("l2", 1.0))
    assert torch.equal(oracle.labels(x, torch.arange(len(x))), base.forward(x).argmax(1))


def test_rounded_scores_system_exposes_rounded_scores_and_no_logits() -> None:
    base = model()
    hardened = defend(base, rounded_scores(1))
    assert hardened.exposes is Exposure.SCORES
    x = images((0.0, 1.0))
    out = hardened.forward(x)
    torch.testing.assert_close(out, (base.forward(x).softmax(1) * 10).round() / 10)
    with pytest.raises(AccessError, match="answers with 'scores' at most"):
        mallory.Oracle(hardened, mallory.white_box("linf", 0.1))
    scores = mallory.Oracle(hardened, mallory.score_based("linf", 0.1)).scores(
        x, torch.arange(len(x))
    )
    torch.testing.assert_close(scores, out)
    # the poorer exposure wins: a label-only system stays label-only
    labels = defend(defend(base, label_only()), rounded_scores(2))
    assert labels.exposes is Exposure.LABEL


def test_output_stages_take_probabilities_and_hide_gradients() -> None:
    for stage in (label_only(), rounded_scores()):
        assert isinstance(stage, OutputStage) and stage.defense and not stage.differentiable
        p = torch.rand(5, 3).softmax(1).requires_grad_(True)
        assert not stage.fn(p).requires_grad  # type: ignore[union-attr]
        with pytest.raises(InputError, match="class scores of shape"):
            stage.fn(torch.rand(2, 1, 3, 3))


# ---------------------------------------------------------------- defend
def test_defend_puts_input_stages_first_in_order() -> None:
    base = model()
    system = defend(base, bit_depth(4), median_smoothing(3), rounded_scores())
    assert [s.name for s in system.stages] == [
        "bit-depth",
        "median",
        "model",
        "softmax",
        "rounded-scores",
    ]
    assert system.name == "net+bit-depth+median+rounded-scores"
    assert system.exposes is Exposure.SCORES
    plain = defend(base, bit_depth(4), name="squeezed")
    assert plain.name == "squeezed" and plain.exposes is Exposure.LOGITS
    assert plain.output is Output.LOGITS
    assert base.stages == (base.stages[0],)  # the wrapped system is left as it was
    x = images((0.0, 1.0))
    torch.testing.assert_close(plain.forward(x), base.forward(bit_depth(4).fn(x)))  # type: ignore[arg-type]
    assert not defend(base, random_resize_pad()).deterministic


def test_defense_stages_hide_from_non_adaptive_gradients_and_bpda_bridges_them() -> None:
    system = defend(model(), bit_depth(1))
    x = images((0.0, 1.0), n=2)
    ids = torch.arange(2)

    def loss(logits: Tensor) -> Tensor:
        return logits[:, 0]

    naive = mallory.Oracle(system, mallory.white_box("linf", 0.1, adaptive=False))
    adaptive = mallory.Oracle(system, mallory.white_box("linf", 0.1))
    grad_naive = naive.gradient(x, ids, loss).grad
    grad_bpda = adaptive.gradient(x, ids, loss).grad
    assert float(grad_bpda.abs().sum()) > 0
    # the BPDA gradient is the model's gradient at the quantized input
    quantized = bit_depth(1).fn(x)
    assert isinstance(quantized, Tensor)
    torch.testing.assert_close(grad_bpda, naive.gradient(quantized, ids, loss).grad)
    assert float(grad_naive.abs().sum()) > 0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: bit_depth(0), "The 'bits' parameter of bit_depth must be an int >= 1 and <= 16"),
        (
            lambda: bit_depth(2.0),  # type: ignore[arg-type]
            "The 'bits' parameter of bit_depth must be an int",
        ),
        (
            lambda: jpeg_compression(101),
            "The 'quality' parameter of jpeg_compression must be an int >= 1 and <= 100; got 101",
        ),
        (
            lambda: median_smoothing(2),
            "The 'kernel_size' parameter of median_smoothing must be an odd int >= 1; got 2",
        ),
        (
            lambda: center_crop(0),
            "The 'fraction' parameter of center_crop must be a finite number > 0 and <= 1; got 0",
        ),
        (
            lambda: random_resize_pad(1.5),
            "The 'min_scale' parameter of random_resize_pad must be a finite number > 0 and <= 1",
        ),
        (
            lambda: rounded_scores(-1),
            "The 'decimals' parameter of rounded_scores must be an int >= 0 and <= 8; got -1",
        ),
        (lambda: label_only(name=""), "The 'name' parameter of label_only must be a non-empty"),
        (lambda: bit_depth(4, bounds=(1, 0)), "The 'bounds' parameter of bit_depth"),
        (lambda: defend(model()), "defend needs at least one stage"),
        (
            lambda: defend(model(), lambda x: x),  # type: ignore[arg-type]
            "The 'stages' parameter of defend must be Stage values",
        ),
        (
            lambda: defend(nn.Linear(2, 2), bit_depth(2)),  # type: ignore[arg-type]
            "The 'system' parameter of defend",
        ),
        (lambda: defend(model(), label_only(name="model")), "defend got stages whose names clash"),
    ],
)
def test_bad_parameters_say_what_was_expected(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(InputError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        make()


# ---------------------------------------------------------------- Pipeline exposure
def test_pipeline_declares_the_exposure_of_its_last_system_or_a_poorer_one() -> None:
    base = model()
    labels = mallory.CallableModel(
        lambda x: torch.ones(len(x), 4) / 4,
        input_shape=SHAPE,
        num_classes=4,
        bounds=(0, 1),
        exposes="label",
    )
    assert Pipeline([bit_depth(2), labels]).exposes is Exposure.LABEL
    assert Pipeline([bit_depth(2), base]).exposes is Exposure.LOGITS
    top = Pipeline([base], exposes="top-k", top_k=2)
    assert (top.exposes, top.top_k) == (Exposure.TOP_K, 2)
    assert Pipeline([top], exposes="label").exposes is Exposure.LABEL
    with pytest.raises(InputError, match="no richer than its last system"):
        Pipeline([labels], exposes="scores")
    with pytest.raises(InputError, match="at most the 2 scores"):
        Pipeline([top], exposes="top-k", top_k=3)
    with pytest.raises(InputError, match="'top_k' parameter of Pipeline"):
        Pipeline([base], top_k=2)
    with pytest.raises(InputError, match="'exposes' parameter of Pipeline must be one of"):
        Pipeline([base], exposes="everything")
