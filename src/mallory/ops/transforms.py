"""Natural image transformations on batches: blur, shifts, rotations, scaling, contrast,
occlusion and JPEG recompression, in plain PyTorch.

These are the cheap tricks of real attackers (a blurred or stretched logo, a cropped photo, a
recompressed upload) and the input transformations some defenses apply. Every function takes
a batch ``x`` of shape ``(n, channels, height, width)`` and returns a new tensor of the same
shape and dtype; none of them changes ``x``. Strength zero (sigma 0, a shift of 0 pixels, 0
degrees, factor 1, ...) returns ``x`` itself, within float round-off.

Geometric transformations resample with bilinear interpolation about the image centre and
fill what comes from outside the image with ``fill`` (a number, or a tensor that broadcasts to
the image, e.g. the lower input bound). Their parameters are numbers, or tensors of one value
per image. Blur, the geometric transformations and occlusion take convex combinations of the
pixels and the fill, so they stay inside any box that holds both; contrast can leave the box
(clamp afterwards); JPEG clamps to the ``bounds`` it is given.
"""

from __future__ import annotations

import math
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

from mallory.errors import InputError

Value = float | Tensor

# ITU-T T.81 Annex K: the example quantization tables for luminance and chrominance.
_LUMINANCE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMINANCE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    *((99,) * 8 for _ in range(4)),
)
# JFIF's RGB -> YCbCr (full range); Cb and Cr are offset by 128 after the product.
_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168736, -0.331264, 0.5),
    (0.5, -0.418688, -0.081312),
)
_BLOCK = 8


def _check_images(x: Tensor, who: str) -> None:
    if x.dim() != 4:
        raise InputError(
            f"{who} needs a batch of images of shape (n, channels, height, width); got "
            f"{tuple(x.shape)}."
        )


def _per_image(value: Value, x: Tensor) -> Tensor:
    """A parameter as a float tensor of one value per image, on the device of ``x``."""
    t = torch.as_tensor(value, dtype=torch.float64, device=x.device)
    if t.dim() == 0:
        return t.expand(len(x))
    if t.shape != (len(x),):
        raise InputError(f"A per-image parameter needs {len(x)} values; got {tuple(t.shape)}.")
    return t


# ---------------------------------------------------------------- blur
def blur(x: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of standard deviation ``sigma`` pixels (separable, reflect padding).

    The kernel reaches ``ceil(3 sigma)`` pixels each way (at most the image size minus one,
    as reflect padding needs) and sums to one, so a constant image stays constant.
    """
    _check_images(x, "blur")
    if not sigma >= 0 or not math.isfinite(sigma):
        raise InputError(f"blur needs a finite sigma >= 0; got {sigma!r}.")
    n, c, h, w = x.shape
    radius = min(math.ceil(3 * sigma), h - 1, w - 1)
    if sigma == 0 or radius < 1:
        return x.clone()
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    flat = x.reshape(n * c, 1, h, w)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1))
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1))
    return flat.reshape(n, c, h, w)


# ---------------------------------------------------------------- geometry
def affine(x: Tensor, matrix: Tensor, offset: Tensor, fill: Value = 0.0) -> Tensor:
    """Resample each image at ``matrix @ p + offset`` for every output pixel ``p``.

    Coordinates are in pixels, ``(column, row)``, measured from the image centre; ``matrix`` is
    ``(n, 2, 2)`` and ``offset`` ``(n, 2)``: the inverse map, from output to input. Points that
    fall outside the image take the value ``fill``.
    """
    _check_images(x, "affine")
    n, _, h, w = x.shape
    # pixels -> grid_sample's normalised coordinates (align_corners=False): u = 2 p / size
    half = torch.tensor([w / 2, h / 2], dtype=torch.float64, device=x.device)
    theta = torch.empty((n, 2, 3), dtype=torch.float64, device=x.device)
    theta[:, :, :2] = matrix.double() * half[None, None, :] / half[None, :, None]
    theta[:, :, 2] = offset.double() / half[None, :]
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    base = torch.as_tensor(fill, dtype=x.dtype, device=x.device)
    moved = F.grid_sample(
        x - base, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return moved + base


def shift(x: Tensor, dx: Value, dy: Value, fill: Value = 0.0) -> Tensor:
    """Translate the content ``dx`` pixels right and ``dy`` pixels down (negative: left, up);
    what enters at the edges is ``fill`` (a shift of whole pixels is a crop and pad)."""
    n = len(x)
    eye = torch.eye(2, dtype=torch.float64, device=x.device).expand(n, 2, 2)
    offset = -torch.stack([_per_image(dx, x), _per_image(dy, x)], dim=1)
    return affine(x, eye, offset, fill)


def rotate(x: Tensor, degrees: Value, fill: Value = 0.0) -> Tensor:
    """Rotate the content counter-clockwise (as displayed, row 0 on top) by ``degrees`` about
    the centre; 90 degrees on a square image is ``torch.rot90(x, 1, (2, 3))``."""
    angle = _per_image(degrees, x) * (math.pi / 180)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # (column, row) with rows pointing down: a counter-clockwise turn on screen by a maps the
    # output point back to the input point R(a) p, with R = [[cos, -sin], [sin, cos]]
    matrix = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    return affine(x, matrix, torch.zeros((len(x), 2), dtype=torch.float64, device=x.device), fill)


def scale(x: Tensor, sx: Value, sy: Value | None = None, fill: Value = 0.0) -> Tensor:
    """Stretch the content by ``sx`` horizontally and ``sy`` vertically (default ``sx``) about
    the centre: factors above one zoom in (the edges are cropped), below one shrink (the border
    is ``fill``)."""
    fx = _per_image(sx, x)
    fy = fx if sy is None else _per_image(sy, x)
    if bool((fx <= 0).any()) or bool((fy <= 0).any()):
        raise InputError("scale needs factors > 0.")
    zero = torch.zeros_like(fx)
    matrix = torch.stack([torch.stack([1 / fx, zero], 1), torch.stack([zero, 1 / fy], 1)], 1)
    return affine(x, matrix, torch.zeros((len(x), 2), dtype=torch.float64, device=x.device), fill)


# ---------------------------------------------------------------- photometry
def contrast(x: Tensor, factor: Value, brightness: Value = 0.0) -> Tensor:
    """``(x - mean) * factor + mean + brightness``, with the mean of each channel of each image:
    factor below one fades the image towards its mean, above one sharpens the contrast. Not
    clamped."""
    _check_images(x, "contrast")
    view = (-1, 1, 1, 1)
    c = _per_image(factor, x).to(x.dtype).view(view)
    b = _per_image(brightness, x).to(x.dtype).view(view)
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * c + mean + b


def occlude(x: Tensor, top: Value, left: Value, size: Value, value: Value = 0.0) -> Tensor:
    """Cover a square of ``size`` pixels with its corner at row ``top``, column ``left`` with
    ``value`` (a number, or a tensor that broadcasts to the image); the square is cut at the
    image's edges."""
    _check_images(x, "occlude")
    _, _, h, w = x.shape
    view = (-1, 1, 1)
    t, lf, s = (_per_image(v, x).view(view) for v in (top, left, size))
    rows = torch.arange(h, dtype=torch.float64, device=x.device).view(1, -1, 1)
    cols = torch.arange(w, dtype=torch.float64, device=x.device).view(1, 1, -1)
    mask = (rows >= t) & (rows < t + s) & (cols >= lf) & (cols < lf + s)
    fill = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    return torch.where(mask[:, None], fill, x)


# ---------------------------------------------------------------- JPEG
@cache
def _dct_matrix(device: torch.device) -> Tensor:
    """The orthonormal 8-point DCT-II matrix (float64): coefficients = D @ block @ D.T."""
    k = torch.arange(_BLOCK, dtype=torch.float64).view(-1, 1)
    i = torch.arange(_BLOCK, dtype=torch.float64).view(1, -1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * _BLOCK)) * math.sqrt(2 / _BLOCK)
    d[0] /= math.sqrt(2)
    return d.to(device)


def quantization_table(quality: int, chroma: bool = False) -> Tensor:
    """The standard JPEG table (luminance, or chrominance) scaled to ``quality`` (1-100) by the
    Independent JPEG Group's rule; entries are at least 1 (quality 100: all ones)."""
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise InputError(f"JPEG quality must be an int from 1 to 100; got {quality!r}.")
    base = torch.tensor(_CHROMINANCE if chroma else _LUMINANCE, dtype=torch.float64)
    factor = 5000 / quality if quality < 50 else 200 - 2 * quality
    return torch.floor((base * factor + 50) / 100).clamp(1, 255)


def jpeg(x: Tensor, quality: int, bounds: tuple[Value, Value] = (0.0, 1.0)) -> Tensor:
    """JPEG compression and decompression at ``quality`` (1-100, the IJG scale).

    The images are mapped from ``bounds`` (lower, upper; numbers or tensors that broadcast to
    the image) to 0..255; three-channel images are read as RGB and converted to YCbCr, other
    channel counts are compressed channel by channel as luminance. Each channel is padded to
    whole 8x8 blocks (edge pixels repeated), shifted by -128, transformed by the 8x8 DCT,
    quantized with the standard table scaled to ``quality`` (chrominance table for Cb and Cr,
    no subsampling), dequantized and transformed back; the result is clamped to 0..255 and
    mapped back to ``bounds``. Pixel values are not rounded to integers.
    """
    _check_images(x, "jpeg")
    n, c, h, w = x.shape
    lower = torch.as_tensor(bounds[0], dtype=torch.float64, device=x.device)
    upper = torch.as_tensor(bounds[1], dtype=torch.float64, device=x.device)
    pixels = (x.double() - lower) / (upper - lower) * 255
    color = c == 3
    if color:
        to_ycbcr = torch.tensor(_YCBCR, dtype=torch.float64, device=x.device)
        pixels = torch.einsum("ij,njhw->nihw", to_ycbcr, pixels)
        pixels[:, 1:] += 128
    tables = torch.stack(
        [quantization_table(quality, chroma=color and k > 0) for k in range(c)]
    ).to(x.device)
    pad_h, pad_w = -h % _BLOCK, -w % _BLOCK
    if pad_h or pad_w:
        pixels = F.pad(pixels, (0, pad_w, 0, pad_h), mode="replicate")
    bh, bw = pixels.shape[2] // _BLOCK, pixels.shape[3] // _BLOCK
    blocks = pixels.reshape(n, c, bh, _BLOCK, bw, _BLOCK).permute(0, 1, 2, 4, 3, 5) - 128
    d = _dct_matrix(x.device)
    table = tables.view(1, c, 1, 1, _BLOCK, _BLOCK)
    coefficients = torch.round(d @ blocks @ d.T / table) * table
    blocks = d.T @ coefficients @ d + 128
    pixels = blocks.permute(0, 1, 2, 4, 3, 5).reshape(n, c, bh * _BLOCK, bw * _BLOCK)
    pixels = pixels[:, :, :h, :w]
    if color:
        pixels = pixels.clone()
        pixels[:, 1:] -= 128
        from_ycbcr = torch.linalg.inv(to_ycbcr)
        pixels = torch.einsum("ij,njhw->nihw", from_ycbcr, pixels)
    pixels = pixels.clamp(0, 255)
    return (pixels / 255 * (upper - lower) + lower).to(x.dtype)
