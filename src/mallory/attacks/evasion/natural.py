"""The cheap tricks of real attackers on images: noise, blur, shifts, rotations, stretching,
contrast, occlusion and JPEG recompression, tried through the predicted label alone.

Real evasions of deployed systems rarely compute gradients: a blurred or stretched logo, a
cropped or recompressed image, a patch stuck on top (Apruzzese et al., "Real Attackers Don't
Compute Gradients", SaTML 2023). Each trick here is an attack that needs only labels: it tries a
fixed, ordered list of candidates, weakest first, through ``oracle.labels``, keeps the first
candidate that reaches the goal for each sample, and stops that sample there. All samples still
standing go in one label call per candidate, so a trick costs as many calls as its ladder has
rungs, and each sample pays one query per candidate it tried.

The transformations themselves live in :mod:`mallory.ops.transforms`. :class:`Trick` is the
search the tricks share (the tabular feature edits of :mod:`mallory.attacks.evasion.tabular` use it
too); :mod:`mallory.attacks.evasion.battery` runs them all, cheapest first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from mallory.access.oracle import Access, Oracle
from mallory.access.view import OracleView
from mallory.attacks.base import register
from mallory.attacks.evasion.base import EvasionAttack, Family
from mallory.attacks.noise import Noise
from mallory.attacks.params import integer, real
from mallory.errors import InputError
from mallory.ops import transforms
from mallory.threat import Norm
from mallory.threat.perturbation import project

# One rung of a ladder: the numbers that set one candidate (a sigma, a shift (dx, dy), ...).
Setting = tuple[float, ...]

APRUZZESE = (
    "Apruzzese, Anderson, Dambra, Freeman, Pierazzi and Roundy, \"Real Attackers Don't Compute "
    'Gradients": Bridging the Gap Between Adversarial ML Research and Practice, SaTML 2023'
)
HENDRYCKS = (
    "Hendrycks and Dietterich, Benchmarking Neural Network Robustness to Common Corruptions "
    "and Perturbations, ICLR 2019"
)
ENGSTROM = (
    "Engstrom, Tran, Tsipras, Schmidt and Madry, Exploring the Landscape of Spatial "
    "Robustness, ICML 2019"
)
ZEILER = "Zeiler and Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014"


def rungs(top: float, levels: int) -> list[float]:
    """``levels`` evenly spaced strengths up to ``top``, weakest first (zero excluded)."""
    return [top * k / levels for k in range(1, levels + 1)]


@dataclass(frozen=True, kw_only=True)
class Trick(EvasionAttack):
    """Try a fixed ladder of candidates per sample, weakest first; keep the first that works.

    Subclasses give the ladder (:meth:`ladder`) and how one rung transforms a batch
    (:meth:`candidate`). Each candidate is clamped into the bounds, held to the threat model's
    feature constraints and, when ``eps`` is finite, projected into the ball before it is
    queried, so what is queried is what is returned. The clean input itself is not queried (a
    campaign attacks only the samples the system gets right): a sample the system already gets
    wrong is reported at its first candidate.
    """

    access = Access.LABELS
    family = Family.TRICK
    minimizes = True
    images_only: ClassVar[bool] = True

    def check_applicable(self, oracle: Oracle) -> None:
        super().check_applicable(oracle)
        shape = oracle.input_shape
        if self.images_only and len(shape) != 3:
            raise InputError(
                f"{self.name} transforms images of shape (channels, height, width); the system "
                f"{oracle.name!r} takes inputs of shape {shape}. For tabular inputs use "
                "'feature-edit'."
            )

    def ladder(self, oracle: Oracle | OracleView) -> list[Setting]:
        """The candidates' settings, weakest first."""
        raise NotImplementedError

    def candidate(
        self, oracle: OracleView, x: Tensor, rows: Tensor, noise: Noise, setting: Setting, step: int
    ) -> Tensor:
        """The candidates of rung ``step`` (setting ``setting``) for the inputs ``x`` of batch
        rows ``rows``; the search clamps and projects them."""
        raise NotImplementedError

    def planned_queries(self, oracle: Oracle | OracleView) -> int | None:
        return len(self.ladder(oracle))

    def _run(
        self, oracle: OracleView, x: Tensor, y: Tensor, targets: Tensor | None, noise: Noise
    ) -> Tensor:
        return self.search(oracle, x, y, targets, noise)[0]

    def search(
        self, oracle: OracleView, x: Tensor, y: Tensor, targets: Tensor | None, noise: Noise
    ) -> tuple[Tensor, Tensor]:
        """The first successful candidate per sample (the clean input where none was), and
        the mask of samples for which one was found."""
        out = x.clone()
        found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        active = torch.arange(len(x), device=x.device)
        for step, setting in enumerate(self.ladder(oracle)):
            if len(active):
                active = active[(oracle.remaining(active) > 0).to(x.device)]
            if not len(active):
                break
            clean = x[active]
            trial = admissible(
                oracle, self.candidate(oracle, clean, active, noise, setting, step), clean
            )
            labels = oracle.labels(trial, rows=active).to(y.device)
            goal = y[active] if targets is None else targets[active]
            hit = (labels >= 0) & ((labels != goal) if targets is None else (labels == goal))
            out[active[hit]] = trial[hit]
            found[active[hit]] = True
            # a refused row (-1) has no budget left
            active = active[(labels >= 0) & ~hit]
        return out, found


def admissible(oracle: OracleView, candidate: Tensor, x: Tensor) -> Tensor:
    """``candidate`` as the attack base would return it: clamped into the bounds, held to the
    feature constraints, and projected into the ball when eps is finite."""
    candidate = oracle.bounds.clamp(candidate)
    features = oracle.threat.features
    if features is not None:
        candidate = features.apply(candidate, x)
    if math.isfinite(oracle.eps):
        candidate = project(candidate, x, oracle.norm, oracle.eps, oracle.bounds)
    return candidate


def _width(oracle: OracleView, x: Tensor) -> Tensor:
    lower, upper = oracle.bounds.on(x)
    return upper - lower


def _to_length(delta: Tensor, length: float) -> Tensor:
    """Each row of ``delta`` rescaled to L2 norm ``length``."""
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * (length / norms).view(-1, *[1] * (delta.dim() - 1))


# ---------------------------------------------------------------- noise
@register("gaussian-noise")
@dataclass(frozen=True, kw_only=True)
class GaussianNoise(Trick):
    """Add Gaussian noise, stronger and stronger, a few random draws per strength.

    Hendrycks and Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019; a trick of real attackers (Apruzzese et al., SaTML 2023).

    Threat model: labels only; any norm; untargeted or targeted; eps may be ``inf``. With a
    finite eps in Linf or L2 the noise is scaled to the threat model's budget, the strength
    ladder running up to exactly eps: Linf: standard deviation eps_k / 2, clipped to
    ``+-eps_k``; L2: a Gaussian direction of length eps_k. Otherwise (eps ``inf``, or L0) the
    standard deviation runs up to ``max_std`` times the width of the input range, and with a
    finite L0 eps the ball keeps the eps largest changes. Candidates are clamped into the
    bounds. Shapes: ``x`` is ``(n, channels, height, width)``.

    Cost: at most ``levels * tries`` queries per sample; a sample stops at its first success.

    Args:
        levels: strengths tried (4), evenly spaced up to the top one.
        tries: random draws per strength (3).
        max_std: top standard deviation as a fraction of the input range, when eps is ``inf``
            or the norm is L0 (0.5).

    Example::

        result = create("gaussian-noise")(Oracle(model, no_knowledge(queries=20)), x, y)
    """

    default = True  # run by a campaign that names no attacks
    rank = 0

    paper = HENDRYCKS

    levels: int = integer(4, low=1, help="strengths tried, evenly spaced up to the top one")
    tries: int = integer(3, low=1, help="random draws per strength")
    max_std: float = real(
        0.5,
        low=0.0,
        low_open=True,
        help="top standard deviation as a fraction of the input range (eps inf or L0)",
    )

    def ladder(self, oracle: Oracle | OracleView) -> list[Setting]:
        return [(f, t) for f in rungs(1.0, self.levels) for t in range(self.tries)]

    def candidate(
        self, oracle: OracleView, x: Tensor, rows: Tensor, noise: Noise, setting: Setting, step: int
    ) -> Tensor:
        z = noise.fold(self.name, step).normal(x.shape[1:], rows, dtype=x.dtype, device=x.device)
        fraction, eps = setting[0], oracle.eps
        if math.isfinite(eps) and oracle.norm is Norm.LINF:
            top = fraction * eps
            return x + (z * (top / 2)).clamp(-top, top)
        if math.isfinite(eps) and oracle.norm is Norm.L2:
            return x + _to_length(z, fraction * eps)
        return x + z * (fraction * self.max_std) * _width(oracle, x)


@register("uniform-noise")
@dataclass(frozen=True, kw_only=True)
class UniformNoise(Trick):
    """Add uniform noise, stronger and stronger, a few random draws per strength.

    Hendrycks and Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019; a trick of real attackers (Apruzzese et al., SaTML 2023).

    Threat model: labels only; any norm; untargeted or targeted; eps may be ``inf``. With a
    finite eps in Linf or L2 the noise is scaled to the threat model's budget, the strength
    ladder running up to exactly eps: Linf: uniform in ``+-eps_k``; L2: a uniform draw in the
    cube rescaled to length eps_k. Otherwise (eps ``inf``, or L0) the noise is uniform in
    ``+-max_width`` times the width of the input range at the top strength, and with a finite
    L0 eps the ball keeps the eps largest changes. Candidates are clamped into the bounds.
    Shapes: ``x`` is ``(n, channels, height, width)``.

    Cost: at most ``levels * tries`` queries per sample; a sample stops at its first success.

    Args:
        levels: strengths tried (4), evenly spaced up to the top one.
        tries: random draws per strength (3).
        max_width: top half-width of the noise as a fraction of the input range, when eps is
            ``inf`` or the norm is L0 (0.8).

    Example::

        result = create("uniform-noise")(Oracle(model, no_knowledge("linf", 0.1)), x, y)
    """

    default = True  # run by a campaign that names no attacks
    rank = 1

    paper = HENDRYCKS

    levels: int = integer(4, low=1, help="strengths tried, evenly spaced up to the top one")
    tries: int = integer(3, low=1, help="random draws per strength")
    max_width: float = real(
        0.8,
        low=0.0,
        low_open=True,
        help="top half-width of the noise as a fraction of the input range (eps inf or L0)",
    )

    def ladder(self, oracle: Oracle | OracleView) -> list[Setting]:
        return [(f, t) for f in rungs(1.0, self.levels) for t in range(self.tries)]

    def candidate(
        self, oracle: OracleView, x: Tensor, rows: Tensor, noise: Noise, setting: Setting, step: int
    ) -> Tensor:
        u = noise.fold(self.name, step).uniform(x.shape[1:], rows, dtype=x.dtype, device=x.device)
        v = 2 * u - 1
        fraction, eps = setting[0], oracle.eps
        if math.isfinite(eps) and oracle.norm is Norm.LINF:
            return x + v * (fraction * eps)
        if math.isfinite(eps) and oracle.norm is Norm.L2:
            return x + _to_length(v, fraction * eps)
        return x + v * (fraction * self.max_width) * _width(oracle, x)


# ---------------------------------------------------------------- blur
@register("blur")
@dataclass(frozen=True, kw_only=True)
class Blur(Trick):
    """Blur the image with a Gaussian kernel of growing width.

    Hendrycks and Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019; blurred logos evade real phishing detectors (Apruzzese et al.,
    SaTML 2023).

    Threat model: labels only; any norm; untargeted or targeted; eps may be ``inf``. When eps
    is finite, the blurred image is projected into the ball (a partial blur). Candidates:
    :func:`mallory.ops.transforms.blur` at sigma ``max_sigma * k / levels`` pixels,
    ``k = 1..levels``.
    Shapes: ``x`` is ``(n, channels, height, width)``.

    Cost: at most ``levels`` queries per sample.

    Args:
        levels: blur widths tried (5).
        max_sigma: the widest blur's standard deviation, in pixels (2.0).

    Example::

        result = create("blur")(Oracle(model, no_knowledge(queries=10)), x, y)
    """

    default = True  # run by a campaign that names no attacks
    rank = 3

    paper = HENDRYCKS

    levels: int = integer(5, low=1, help="blur widths tried, evenly spaced up to max_sigma")
    max_sigma: float = real(
        2.0, low=0.0, low_open=True, help="the widest blur's standard deviation, in pixels"
    )

    def ladder(self, oracle: Oracle | OracleView) -> list[Setting]:
        return [(s,) for s in rungs(self.max_sigma, self.levels)]

    def candidate(
        self, oracle: OracleView, x: Tensor, rows: Tensor, noise: Noise, setting: Setting, step: int
    ) -> Tensor:
        return transforms.blur(x, setting[0])


# ---------------------------------------------------------------- geometry
@register("shift")
@dataclass(frozen=True, kw_only=True)
class Shift(Trick):
    """Crop and shift: move the content in eight directions, further and further.

    Engstrom, Tran, Tsipras, Schmidt and Madry, "Exploring the Landscape of Spatial
    Robustness", ICML 2019; cropping evades real detectors (Apruzzese et al., SaTML 2023).

    Threat model: labels only; any norm; untargeted or targeted; eps may be ``inf``. When eps
    is finite, the shifted image is projected into the ball. Candidates:
    :func:`mallory.ops.transforms.shift` by ``p = max_pixels * k / levels`` pixels (``k =
    1..levels``) right, left, down, up and along the four diagonals; what enters at the edge is
    the lower input bound. Shapes: ``x`` is ``(n, channels, height, width)``.

    Cost: at most ``8 * levels`` queries per sample.

    Args:
        levels: distances tried (2).
        max_pixels: the longest shift, in pixels (2.0); fractions of a pixel interpolate.

    Example::

        result = create("shift", max_pixels=3)(Oracle(model, no_knowledge()), x, y)
    """

    default = True  # run by a campaign that names no attacks
    rank = 4

    paper = ENGSTROM

    levels: int = integer(2, low=1, help="distances tried, evenly spaced up to max_pixels")
    max_pixels: float = real(2.0, low=0.0, low_open=True, help="the longest shift, in pixels")

    def ladder(self, oracle: Oracle | OracleView) -> list[Setting]:
        out: list[Setting] = []
        for p in rungs(self.max_pixels, self.levels):
            out += [(p, 0.0), (-p, 0.0), (0.0, p), (0.0, -p), (p, p), (p, -p), (-p, p), (-p, -p)]
        return out

    def candidate(
        self, oracle: OracleView, x: Tensor, rows: Tensor, noise: Noise, setting: Setting, step: int
    ) -> Tensor:
        lower, _ = oracle.bounds.on(x)
        return transforms.shift(x, setting[0], setting[1], fill=lower)


@register("rotate")
@dataclass(frozen=True, kw_only=True)
class Rotate(Trick):
    """Rotate the image about its centre, both ways, by growing angles.

    Engstrom, Tran, Tsipras, Schmidt and Madry, "Exploring the Landscape of Spatial
    Robustness", ICML 2019; a trick of real attackers (Apruzzese et al., SaTML 2023).

    Threat model: labels only; any norm; untargeted or targeted; eps may be ``inf``. When eps
    is finite, the rotated image is projected into the ball (a partial rotation). Candidates:
    :func:`mallory.ops.transforms.rotate` by ``+-max_degrees * k / levels`` (``k = 1..levels``,
    counter-clockwise first); the corners are filled with the lower input bound. Shapes: ``x``
    is ``(n, channels, height, width)``.

    Cost: at most ``2 * levels`` queries per sample.

    Args:
        levels: angles tried each way (3).
        max_degrees: the largest angle, in degrees (30.0).

    Example::

        result = create("rotate")(Oracle(model, no_knowledge(queries=6)), x, y)
    """

    default = True  # run by a campaign that names no attacks
    rank = 5

    paper = ENGSTROM

    levels: int = integer(3, low=1, help="angles tried each way, evenly spaced up to the top")
    max_degrees: float = real(
        30.0, low=0.0, low_open=True, high=180.0, help="the largest angle, in degrees"
    )

    def ladder(self, oracle: Oracle | OracleView) -> list[Setting]:
        return [(s * a,) for a in rungs(self.max_degrees, self.levels) for s in (1.0, -1.0)]

    def candidate(
        self, oracle: OracleView, x: Tensor, rows: Tensor, noise: Noise, setting: Setting, step: int
    ) -> Tensor:
        lower, _ = oracle.bounds.on(x)
        return transforms.rotate(x, setting[0], fill=lower)


@register("scale")
@dataclass(frozen=True, kw_only=True)
class Scale(Trick):
    """Stretch and scale: zoom in and out, stretch and squeeze each axis.

    Engstrom, Tran, Tsipras, Schmidt and Madry, "Exploring the Landscape of Spatial
    Robustness", ICML 2019; stretched logos evade real detectors (Apruzzese et al., SaTML 2023).

    Threat model: labels only; any norm; untargeted or targeted; eps may be ``inf``. When eps
    is finite, the transformed image is projected into the ball. Candidates:
    :func:`mallory.ops.transforms.scale` about the centre with ``f = 1 + (max_factor - 1) k /
    levels`` (``k = 1..levels``), each as (x, y) factors ``(f, f)``, ``(1/f, 1/f)``, ``(f, 1)``,
    ``(1, f)``, ``(1/f, 1)``, ``(1, 1/f)``; the border of a shrunk image is the lower input
    bound. Shapes: ``x`` is ``(n, channels, height, width)``.

    Cost: at most ``6 * levels`` queries per sample.

    Args:
        levels: factors tried (3).
        max_factor: the largest factor (1.5); its inverse is the smallest.

    Example::

        result = create("scale")(Oracle(model, no_knowledge()), x, y)
    """

    default = True  # run by a campaign that names no attacks
    rank = 6

    paper = ENGSTROM

    levels: int = integer(3, low=1, help="factors tried, evenly spaced up to max_factor")
    max_factor: float = real(
        1.5, low=1.0, low_open=True, high=10.0, help="the largest zoom or stretch factor"
    )

    def ladder(self, oracle: Oracle | OracleView) -> list[Setting]:
        out: list[Setting] = []
        for f in (1 + s for s in rungs(self.max_factor - 1, self.levels)):
            g = 1 / f
            out += [(f, f), (g, g), (f, 1.0), (1.0, f), (g, 1.0), (1.0, g)]
        return out

    def candidate(
        self, oracle: OracleView, x: Tensor, rows: Tensor, noise: Noise, setting: Setting, step: int
    ) -> Tensor:
        lower, _ = oracle.bounds.on(x)
        return transforms.scale(x, setting[0], setting[1], fill=lower)


# ---------------------------------------------------------------- photometry
@register("contrast")
@dataclass(frozen=True, kw_only=True)
class Contrast(Trick):
    """Brightness and contrast: fade or sharpen the contrast, brighten or darken.

    Hendrycks and Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019; a trick of real attackers (Apruzzese et al., SaTML 2023).

    Threat model: labels only; any norm; untargeted or targeted; eps may be ``inf``. When eps
    is finite, the transformed image is projected into the ball. Candidates:
    :func:`mallory.ops.transforms.contrast`, ``x' = (x - mean) c + mean + b`` per channel, clamped
    into the bounds; at strength ``t = k / levels`` (``k = 1..levels``): ``c = 1 - (1 -
    min_contrast) t``, ``c = 1 + (max_contrast - 1) t``, then ``b = +-max_brightness t`` times
    the width of the input range. Shapes: ``x`` is ``(n, channels, height, width)``.

    Cost: at most ``4 * levels`` queries per sample.

    Args:
        levels: strengths tried (3).
        min_contrast: the faintest contrast factor (0.3).
        max_contrast: the strongest contrast factor (2.0).
        max_brightness: the largest brightness shift, as a fraction of the input range (0.3).

    Example::

        result = create("contrast")(Oracle(model, no_knowledge()), x, y)
    """

    default = True  # run by a campaign that names no attacks
    rank = 2

    paper = HENDRYCKS

    levels: int = integer(3, low=1, help="strengths tried, evenly spaced up to the top ones")
    min_contrast: float = real(
        0.3, low=0.0, high=1.0, low_open=True, help="the faintest contrast factor"
    )
    max_contrast: float = real(2.0, low=1.0, high=100.0, help="the strongest contrast factor")
    max_brightness: float = real(
        0.3, low=0.0, high=1.0, help="the largest brightness shift, as a fraction of the range"
    )

    def ladder(self, oracle: Oracle | OracleView) -> list[Setting]:
        out: list[Setting] = []
        for t in rungs(1.0, self.levels):
            b = self.max_brightness * t
            fade, sharpen = 1 - (1 - self.min_contrast) * t, 1 + (self.max_contrast - 1) * t
            out += [(fade, 0.0), (sharpen, 0.0), (1.0, b), (1.0, -b)]
        return [s for s in dict.fromkeys(out) if s != (1.0, 0.0)]

    def candidate(
        self, oracle: OracleView, x: Tensor, rows: Tensor, noise: Noise, setting: Setting, step: int
    ) -> Tensor:
        factor, brightness = setting
        return transforms.contrast(x, factor) + brightness * _width(oracle, x)


@register("occlude")
@dataclass(frozen=True, kw_only=True)
class Occlude(Trick):
    """Occlusion: cover a square of the image with black or white, at positions on a grid.

    Zeiler and Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014 (the
    occlusion test); content hidden under a patch evades real detectors (Apruzzese et al.,
    SaTML 2023).

    Threat model: labels only; any norm; untargeted or targeted; eps may be ``inf``. When eps
    is finite, the occluded image is projected into the ball. Candidates:
    :func:`mallory.ops.transforms.occlude` with squares of side ``max_fraction * min(height, width)
    * k / levels`` pixels (``k = 1..levels``, rounded, at least 1) at the ``grid x grid``
    positions evenly spread over the image, filled with the lower, then the upper input bound.
    Shapes: ``x`` is ``(n, channels, height, width)``.

    Cost: at most ``2 * grid**2 * levels`` queries per sample (fewer where positions coincide).

    Args:
        levels: square sizes tried (2).
        max_fraction: the largest square's side, as a fraction of the image's side (0.5).
        grid: positions per axis (3).

    Example::

        result = create("occlude")(Oracle(model, no_knowledge()), x, y)
    """

    default = True  # run by a campaign that names no attacks
    rank = 7

    paper = ZEILER

    levels: int = integer(2, low=1, help="square sizes tried, evenly spaced up to the top one")
    max_fraction: float = real(
        0.5,
        low=0.0,
        low_open=True,
        high=1.0,
        help="the largest square's side, as a fraction of the image's side",
    )
    grid: int = integer(3, low=1, high=64, help="positions per axis")

    def ladder(self, oracle: Oracle | OracleView) -> list[Setting]:
        _, h, w = oracle.input_shape
        side = min(h, w)
        sizes = dict.fromkeys(
            max(1, round(s)) for s in rungs(self.max_fraction * side, self.levels)
        )
        out: list[Setting] = []
        for size in sizes:
            tops = _spread(h - size, self.grid)
            lefts = _spread(w - size, self.grid)
            out += [
                (float(size), float(t), float(lf), color)
                for t in tops
                for lf in lefts
                for color in (0.0, 1.0)
            ]
        return out

    def candidate(
        self, oracle: OracleView, x: Tensor, rows: Tensor, noise: Noise, setting: Setting, step: int
    ) -> Tensor:
        size, top, left, color = setting
        lower, upper = oracle.bounds.on(x)
        return transforms.occlude(x, top, left, size, upper if color else lower)


def _spread(room: int, count: int) -> list[int]:
    """``count`` positions evenly spread over ``0..room`` (distinct, in order)."""
    if count == 1:
        return [room // 2]
    return list(dict.fromkeys(round(room * g / (count - 1)) for g in range(count)))


@register("jpeg")
@dataclass(frozen=True, kw_only=True)
class Jpeg(Trick):
    """JPEG recompression at falling quality.

    Hendrycks and Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019; recompressed uploads are what real pipelines see (Apruzzese et
    al., SaTML 2023).

    Threat model: labels only; any norm; untargeted or targeted; eps may be ``inf``. When eps
    is finite, the recompressed image is projected into the ball. Candidates:
    :func:`mallory.ops.transforms.jpeg` (8x8 block DCT, the standard quantization tables scaled to
    the quality; three channels are read as RGB and compressed in YCbCr) at qualities evenly
    spaced from 90 down to ``min_quality``. Shapes: ``x`` is ``(n, channels, height, width)``.

    Cost: at most ``levels`` queries per sample.

    Args:
        levels: qualities tried (5).
        min_quality: the lowest quality, 1-90 (10).

    Example::

        result = create("jpeg")(Oracle(model, no_knowledge(queries=5)), x, y)
    """

    default = True  # run by a campaign that names no attacks
    rank = 8

    paper = HENDRYCKS

    levels: int = integer(5, low=1, help="qualities tried, from 90 down to min_quality")
    min_quality: int = integer(10, low=1, high=90, help="the lowest JPEG quality (1-90)")

    def ladder(self, oracle: Oracle | OracleView) -> list[Setting]:
        if self.levels == 1:
            return [(float(self.min_quality),)]
        top, span = 90, 90 - self.min_quality
        qualities = (round(top - span * k / (self.levels - 1)) for k in range(self.levels))
        return [(float(q),) for q in dict.fromkeys(qualities)]

    def candidate(
        self, oracle: OracleView, x: Tensor, rows: Tensor, noise: Noise, setting: Setting, step: int
    ) -> Tensor:
        return transforms.jpeg(x, int(setting[0]), oracle.bounds.on(x))
