"""The batch image transformations: identities, shapes, bounds, and known exact cases."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mallory import InputError
from mallory.ops import transforms as T

SETTINGS = settings(max_examples=25, deadline=None)


def images(seed: int, shape: tuple[int, ...] = (3, 2, 9, 7), low: float = 0.0, high: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(shape, generator=gen)


# ---------------------------------------------------------------- identity at zero strength
def test_zero_strength_is_the_identity() -> None:
    x = images(0)
    same = {
        "blur": T.blur(x, 0.0),
        "shift": T.shift(x, 0.0, 0.0),
        "rotate": T.rotate(x, 0.0),
        "scale": T.scale(x, 1.0),
        "stretch": T.scale(x, 1.0, 1.0),
        "contrast": T.contrast(x, 1.0, 0.0),
        "occlude": T.occlude(x, 2, 2, 0),
        "affine": T.affine(x, torch.eye(2).expand(3, 2, 2), torch.zeros(3, 2)),
    }
    for name, out in same.items():
        torch.testing.assert_close(out, x, atol=1e-6, rtol=0, msg=name)
        assert out is not x, name


@SETTINGS
@given(
    n=st.integers(1, 3),
    c=st.sampled_from([1, 3]),
    h=st.integers(3, 19),
    w=st.integers(3, 19),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_shapes_and_dtypes_are_kept(n: int, c: int, h: int, w: int, dtype: torch.dtype) -> None:
    x = images(1, (n, c, h, w)).to(dtype)
    outs = [
        T.blur(x, 1.3),
        T.shift(x, 1.5, -2.0),
        T.rotate(x, 17.0),
        T.scale(x, 1.2, 0.8),
        T.contrast(x, 0.5, 0.1),
        T.occlude(x, 1, 1, 2),
        T.jpeg(x, 40),
    ]
    for out in outs:
        assert out.shape == x.shape and out.dtype == dtype


# ---------------------------------------------------------------- bounds
@SETTINGS
@given(
    seed=st.integers(0, 1000),
    low=st.floats(-3, 3),
    width=st.floats(0.1, 5),
    sigma=st.floats(0.1, 4),
    degrees=st.floats(-180, 180),
    factor=st.floats(0.3, 3),
    quality=st.integers(1, 100),
)
def test_transforms_stay_inside_the_box(
    seed: int, low: float, width: float, sigma: float, degrees: float, factor: float, quality: int
) -> None:
    high = low + width
    x = images(seed, (2, 3, 10, 12), low, high)
    slack = 1e-5 * (1 + abs(low) + abs(high))
    for out in (
        T.blur(x, sigma),
        T.shift(x, factor, -factor, fill=low),
        T.rotate(x, degrees, fill=high),
        T.scale(x, factor, 1 / factor, fill=low),
        T.occlude(x, 2, 3, 4, value=high),
        T.jpeg(x, quality, (low, high)),
    ):
        assert float(out.min()) >= low - slack and float(out.max()) <= high + slack


def test_fill_can_be_a_tensor_of_bounds() -> None:
    lower = torch.linspace(-1, 0, 8).view(1, 1, 8)
    x = lower + torch.rand(2, 1, 8, 8)
    out = T.shift(x, 3, 0, fill=lower)
    torch.testing.assert_close(out[..., :3], lower[..., :3].expand(2, 1, 8, 3))


# ---------------------------------------------------------------- blur
def test_blur_keeps_a_constant_image_and_the_mean() -> None:
    flat = torch.full((2, 1, 12, 12), 0.37)
    torch.testing.assert_close(T.blur(flat, 2.5), flat)
    x = images(2, (4, 3, 28, 28))
    blurred = T.blur(x, 1.0)
    # only the borders (reflected, not wrapped) can move the mean, and only a little
    torch.testing.assert_close(blurred.mean((2, 3)), x.mean((2, 3)), atol=5e-3, rtol=0)
    # and it smooths: neighbouring pixels come closer
    step = (x[..., 1:] - x[..., :-1]).abs().mean()
    assert float((blurred[..., 1:] - blurred[..., :-1]).abs().mean()) < 0.5 * float(step)


def test_blur_of_a_point_is_a_gaussian() -> None:
    x = torch.zeros(1, 1, 15, 15)
    x[0, 0, 7, 7] = 1.0
    out = T.blur(x, 1.0)[0, 0]
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5)
    # separable: the profile along a row is the normalised 1-D Gaussian
    offsets = torch.arange(-3, 4, dtype=torch.float64)
    g = torch.exp(-0.5 * offsets**2)
    g = g / g.sum()
    torch.testing.assert_close(out[7, 4:11].double(), g * g[3], atol=1e-6, rtol=0)


def test_blur_on_tiny_images_caps_the_kernel() -> None:
    x = images(3, (1, 1, 3, 3))
    out = T.blur(x, 5.0)
    assert out.shape == x.shape and bool(torch.isfinite(out).all())


# ---------------------------------------------------------------- geometry
@pytest.mark.parametrize("size", [4, 7, 28])
def test_rotating_a_square_image_by_90_degrees_is_rot90(size: int) -> None:
    x = images(4, (2, 3, size, size))
    torch.testing.assert_close(T.rotate(x, 90.0), torch.rot90(x, 1, (2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(T.rotate(x, -90.0), torch.rot90(x, -1, (2, 3)), atol=1e-5, rtol=0)


def test_rotating_any_image_by_180_degrees_flips_both_axes() -> None:
    x = images(5, (2, 1, 9, 14))
    torch.testing.assert_close(T.rotate(x, 180.0), x.flip(2, 3), atol=1e-5, rtol=0)


def test_rotation_angles_per_image() -> None:
    x = images(6, (2, 1, 6, 6))
    out = T.rotate(x, torch.tensor([90.0, 0.0]))
    torch.testing.assert_close(out[0], torch.rot90(x[0], 1, (1, 2)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], x[1], atol=1e-6, rtol=0)


def test_whole_pixel_shifts_crop_and_pad() -> None:
    x = images(7, (2, 2, 8, 10))
    right = T.shift(x, 3, 0, fill=-1.0)
    torch.testing.assert_close(right[..., 3:], x[..., :-3], atol=1e-6, rtol=0)
    assert bool((right[..., :3] == -1.0).all())
    up = T.shift(x, 0, -2, fill=0.5)
    torch.testing.assert_close(up[..., :-2, :], x[..., 2:, :], atol=1e-6, rtol=0)
    torch.testing.assert_close(up[..., -2:, :], torch.full_like(up[..., -2:, :], 0.5))


def test_scaling_zooms_about_the_centre() -> None:
    x = images(8, (1, 1, 8, 8))
    # zoom out by 2: the image shrinks into the centre, the border is the fill
    small = T.scale(x, 0.5, fill=-1.0)
    assert bool((small[..., :2, :] == -1.0).all()) and bool((small[..., :, -2:] == -1.0).all())
    # zoom in by 2: the centre 4x4 grows to fill the image
    big = T.scale(x, 2.0)
    torch.testing.assert_close(big.mean(), x[..., 2:6, 2:6].mean(), atol=0.05, rtol=0)
    # anisotropic: stretching the width only keeps each column's profile along rows
    wide = T.scale(torch.ones(1, 1, 8, 8).cumsum(2), 1.5, 1.0)
    torch.testing.assert_close(wide, torch.ones(1, 1, 8, 8).cumsum(2), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- photometry
def test_contrast_and_brightness() -> None:
    x = images(9)
    mean = x.mean((2, 3), keepdim=True)
    torch.testing.assert_close(T.contrast(x, 0.0), mean.expand_as(x))
    torch.testing.assert_close(T.contrast(x, 2.0).mean((2, 3)), x.mean((2, 3)))
    torch.testing.assert_close(T.contrast(x, 1.0, 0.25), x + 0.25)
    per_image = T.contrast(x, torch.tensor([1.0, 0.5, 2.0]))
    torch.testing.assert_close(per_image[1], T.contrast(x[1:2], 0.5)[0])


def test_occlusion_covers_the_square_and_nothing_else() -> None:
    x = images(10, (2, 3, 6, 6))
    out = T.occlude(x, 1, 2, 3, value=9.0)
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[1:4, 2:5] = True
    assert bool((out[..., mask] == 9.0).all())
    assert torch.equal(out[..., ~mask], x[..., ~mask])
    edge = T.occlude(x, 4, 4, 5, value=0.0)  # cut at the edges
    assert bool((edge[..., 4:, 4:] == 0).all()) and torch.equal(edge[..., :4, :], x[..., :4, :])


# ---------------------------------------------------------------- JPEG
def test_quantization_tables() -> None:
    luma = T.quantization_table(50)
    assert luma[0, 0] == 16 and luma[7, 7] == 99  # quality 50 is the standard table itself
    assert T.quantization_table(50, chroma=True)[0, 0] == 17
    assert bool((T.quantization_table(100) == 1).all())
    assert bool((T.quantization_table(10) >= T.quantization_table(90)).all())
    for bad in (0, 101, 50.0, True):
        with pytest.raises(InputError, match="quality"):
            T.quantization_table(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 3, 13, 9), (1, 2, 8, 8)])
def test_jpeg_at_quality_100_is_nearly_the_identity(shape: tuple[int, ...]) -> None:
    x = images(11, shape)
    out = T.jpeg(x, 100)
    # quantization steps of 1 on an orthonormal DCT: well under 2/255 on any pixel
    assert float((out - x).abs().max()) < 2 / 255


def test_jpeg_error_grows_as_quality_falls() -> None:
    x = T.blur(images(12, (2, 3, 32, 32)), 1.0)  # image-like: smooth, not white noise
    errors = [float((T.jpeg(x, q) - x).abs().mean()) for q in (95, 75, 50, 25, 5)]
    assert errors == sorted(errors) and errors[-1] > 5 * errors[0]


def test_jpeg_respects_the_bounds_it_is_given() -> None:
    x = images(13, (2, 1, 16, 16), -1.0, 1.0)
    out = T.jpeg(x, 30, (-1.0, 1.0))
    assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0
    # the same as compressing the image rescaled to [0, 1]
    torch.testing.assert_close(out, T.jpeg((x + 1) / 2, 30) * 2 - 1, atol=1e-5, rtol=0)


def test_jpeg_of_a_flat_block_stays_flat() -> None:
    x = torch.full((1, 3, 8, 8), 0.5)
    out = T.jpeg(x, 20)
    assert float(out.std()) < 1e-6 and abs(float(out.mean()) - 0.5) < 2 / 255


# ---------------------------------------------------------------- bad input
def test_bad_inputs_are_refused() -> None:
    with pytest.raises(InputError, match="height, width"):
        T.blur(torch.rand(1, 8, 8), 1.0)
    with pytest.raises(InputError, match="sigma"):
        T.blur(torch.rand(1, 1, 8, 8), -1.0)
    with pytest.raises(InputError, match="3 values"):
        T.rotate(torch.rand(3, 1, 8, 8), torch.tensor([1.0, 2.0]))
    with pytest.raises(InputError, match="factors > 0"):
        T.scale(torch.rand(1, 1, 8, 8), 0.0)
