"""Defense stages that wrap a system: input transformations and output hardening.

Each function returns a :class:`~mallory.systems.Stage` with ``defense=True`` (a
non-adaptive attacker's gradients do not see it), and :func:`defend` puts stages around a
system. Input stages take a batch of images ``(n, channels, height, width)`` inside the
system's bounds and return a batch of the same shape inside the same bounds; output stages take
the class probabilities ``(n, classes)`` and return ``(n, classes)``. (The geometric stages
move pixels: they keep any box whose bounds are the same at every pixel of a channel, not
per-pixel bounds.)

========================  ==========================================  ============  =============
stage                     what it does                                gradient      deterministic
========================  ==========================================  ============  =============
:func:`center_crop`       crop the centre, resize back (foveation)    exact         yes
:func:`bit_depth`         quantize to ``2**bits`` levels              BPDA identity yes
:func:`jpeg_compression`  JPEG at ``quality``                         BPDA identity yes
:func:`median_smoothing`  median over ``k x k`` windows               BPDA identity yes
:func:`random_resize_pad` shrink at random, pad at a random place     exact         no
:func:`label_only`        one-hot of the top class                    BPDA identity yes
:func:`rounded_scores`    probabilities rounded to ``decimals``       BPDA identity yes
========================  ==========================================  ============  =============

A stage whose gradient is zero almost everywhere or brittle (a quantizer, JPEG, a median, a
rounding) is declared ``differentiable=False`` and computes without autograd; its surrogate
is the identity, the straight-through stand-in of BPDA (Athalye, Carlini and Wagner,
"Obfuscated Gradients Give a False Sense of Security", ICML 2018), which an adaptive attacker
uses. These are the defenses that paper broke: they look robust to a gradient attack that
does not adapt.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mallory.errors import InputError
from mallory.ops import transforms
from mallory.params import Instance, Interval, Text
from mallory.systems.base import Bounds, Output, Stage, System, identity
from mallory.systems.pipeline import Pipeline
from mallory.threat import Exposure

BoundsLike = Bounds | tuple[Any, Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutputStage(Stage):
    """A stage after the model that changes what the system shows: it takes class
    probabilities and exposes at most ``exposes`` (:func:`defend` declares it)."""

    exposes: Exposure = Exposure.SCORES


def _images(x: Tensor, who: str) -> None:
    if x.dim() != 4:
        raise InputError(
            f"The {who} stage needs a batch of images of shape (n, channels, height, width); "
            f"got {tuple(x.shape)}."
        )


def _bounds(owner: str, bounds: BoundsLike) -> Bounds:
    return Bounds.of(bounds, owner=owner)


def _name(owner: str, name: object) -> str:
    checked: str = Text().check(owner, "name", name)
    return checked


def _detached(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """``fn`` run without autograd: a stage declared non-differentiable records no graph."""

    def run(x: Tensor) -> Tensor:
        with torch.no_grad():
            return fn(x)

    return run


# ---------------------------------------------------------------- input stages
def center_crop(fraction: float = 0.8, *, name: str = "center-crop") -> Stage:
    """Cropping / foveation: keep the central ``fraction`` of each side (rounded to whole
    pixels, at least one) and resize it back to the input size with bilinear interpolation.

    Luo, Boix, Roig, Poggio and Zhao, "Foveation-based Mechanisms Alleviate Adversarial
    Examples", 2015. Differentiable (exact gradients) and deterministic; bilinear upsampling
    averages pixels, so the output stays inside any box bounds. The lecture's example of a
    defense that does not stop an adaptive attacker.

    Args:
        fraction: the share of the height and width kept, in (0, 1] (default 0.8; 1 keeps the
            image as it is).
    """
    owner = "center_crop"
    Interval(0.0, 1.0, low_open=True).check(owner, "fraction", fraction)

    def crop(x: Tensor) -> Tensor:
        _images(x, owner)
        h, w = x.shape[2:]
        ch, cw = max(1, round(fraction * h)), max(1, round(fraction * w))
        top, left = (h - ch) // 2, (w - cw) // 2
        centre = x[:, :, top : top + ch, left : left + cw]
        if (ch, cw) == (h, w):
            return centre.clone()
        return F.interpolate(centre, size=(h, w), mode="bilinear", align_corners=False)

    return Stage(name=_name(owner, name), fn=crop, defense=True)


def bit_depth(bits: int, *, bounds: BoundsLike = (0.0, 1.0), name: str = "bit-depth") -> Stage:
    """Bit-depth reduction: each input value quantized to one of ``2**bits`` evenly spaced
    levels of ``bounds`` (the nearest one).

    Xu, Evans and Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep Neural
    Networks", NDSS 2018. Non-differentiable (its gradient is zero almost everywhere),
    deterministic, BPDA identity surrogate. Works on any input shape.

    Args:
        bits: bits per value, an int from 1 to 16 (1: a binary image).
        bounds: the input bounds ``(lower, upper)``, numbers or tensors (default (0, 1)).
    """
    owner = "bit_depth"
    Interval(1, 16, integral=True).check(owner, "bits", bits)
    box = _bounds(owner, bounds)
    levels = 2**bits - 1

    def quantize(x: Tensor) -> Tensor:
        lower, upper = box.on(x)
        scaled = torch.round((x - lower) / (upper - lower) * levels) / levels
        return box.clamp(scaled * (upper - lower) + lower)

    return Stage(
        name=_name(owner, name),
        fn=_detached(quantize),
        differentiable=False,
        surrogate=identity,
        defense=True,
    )


def jpeg_compression(
    quality: int = 75, *, bounds: BoundsLike = (0.0, 1.0), name: str = "jpeg"
) -> Stage:
    """JPEG compression and decompression at ``quality`` (see :func:`mallory.ops.transforms.jpeg`).

    Dziugaite, Ghahramani and Roy, "A study of the effect of JPG compression on adversarial
    images", 2016; Guo, Rana, Cisse and van der Maaten, "Countering Adversarial Images using
    Input Transformations", ICLR 2018. Non-differentiable (quantized DCT coefficients: zero
    gradient), deterministic, BPDA identity surrogate; the result is clamped to ``bounds``.

    Args:
        quality: the IJG quality, an int from 1 to 100 (default 75).
        bounds: the input bounds ``(lower, upper)`` mapped to 0..255 (default (0, 1)).
    """
    owner = "jpeg_compression"
    Interval(1, 100, integral=True).check(owner, "quality", quality)
    box = _bounds(owner, bounds)

    def compress(x: Tensor) -> Tensor:
        _images(x, owner)
        return box.clamp(transforms.jpeg(x, quality, (box.lower, box.upper)))

    return Stage(
        name=_name(owner, name),
        fn=_detached(compress),
        differentiable=False,
        surrogate=identity,
        defense=True,
    )


def median_smoothing(kernel_size: int = 3, *, name: str = "median") -> Stage:
    """Median smoothing: each pixel replaced by the median of the ``kernel_size`` square
    around it, per channel (edges repeated at the border).

    Xu, Evans and Qi, "Feature Squeezing", NDSS 2018. Declared non-differentiable: its
    gradient picks one pixel per window and jumps when the order changes, which gradient
    attacks handle badly; BPDA identity surrogate, deterministic. A median of values inside a
    box stays inside it.

    Args:
        kernel_size: the window's side, an odd int >= 1 (default 3; 1 changes nothing).
    """
    owner = "median_smoothing"
    Interval(low=1, integral=True, odd=True).check(owner, "kernel_size", kernel_size)
    radius = kernel_size // 2

    def smooth(x: Tensor) -> Tensor:
        _images(x, owner)
        if radius == 0:
            return x.clone()
        n, c, h, w = x.shape
        padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
        windows = padded.unfold(2, kernel_size, 1).unfold(3, kernel_size, 1)
        return windows.reshape(n, c, h, w, -1).median(dim=-1).values

    return Stage(
        name=_name(owner, name),
        fn=_detached(smooth),
        differentiable=False,
        surrogate=identity,
        defense=True,
    )


def random_resize_pad(
    min_scale: float = 0.9, *, bounds: BoundsLike = (0.0, 1.0), name: str = "resize-pad"
) -> Stage:
    """Random resizing and padding: each image shrunk to a random size and placed at a random
    position on a canvas of the input size, filled with the lower bound.

    Xie, Wang, Zhang, Ren and Yuille, "Mitigating Adversarial Effects Through Randomization",
    ICLR 2018 (they enlarge 299 to a random size below 331 and pad to 331; here the image is
    shrunk so the shape is kept). Per image, the new height is drawn uniformly among the whole
    numbers of pixels from ``round(min_scale * height)`` to ``height`` (the width keeps the
    aspect ratio), then the top and left offsets uniformly among the positions that fit.
    Bilinear resampling (:func:`mallory.ops.transforms.affine`), so the output stays inside the
    bounds. Differentiable (exact gradients for one draw); randomized
    (``deterministic=False``): it draws from torch's default generator at call time, the
    system's own randomness. Attack it with EOT (average gradients over draws).

    Args:
        min_scale: the smallest size as a share of the input size, in (0, 1] (default 0.9,
            about Xie et al.'s 299/331).
        bounds: the input bounds ``(lower, upper)``; the padding takes the lower bound.
    """
    owner = "random_resize_pad"
    Interval(0.0, 1.0, low_open=True).check(owner, "min_scale", min_scale)
    box = _bounds(owner, bounds)

    def resize_pad(x: Tensor) -> Tensor:
        _images(x, owner)
        n, _, h, w = x.shape
        smallest = max(1, round(min_scale * h))
        new_h = torch.randint(smallest, h + 1, (n,), device=x.device).double()
        new_w = (new_h * w / h).round().clamp(1, w)
        top = (torch.rand(n, device=x.device, dtype=torch.float64) * (h - new_h + 1)).floor()
        left = (torch.rand(n, device=x.device, dtype=torch.float64) * (w - new_w + 1)).floor()
        # the inverse map: output pixel (centred coordinates) -> input pixel
        fx, fy = w / new_w, h / new_h
        zero = torch.zeros_like(fx)
        matrix = torch.stack([torch.stack([fx, zero], 1), torch.stack([zero, fy], 1)], 1)
        centre = torch.stack([left + new_w / 2 - w / 2, top + new_h / 2 - h / 2], 1)
        offset = -centre * torch.stack([fx, fy], 1)
        fill = box.lower.to(x)
        return box.clamp(transforms.affine(x, matrix, offset, fill))

    return Stage(name=_name(owner, name), fn=resize_pad, deterministic=False, defense=True)


# ---------------------------------------------------------------- output stages
def label_only(*, name: str = "label-only") -> OutputStage:
    """Output hardening: the answer is the one-hot vector of the top class, nothing else.

    The system then exposes ``"label"``: no threat model may grant it scores or gradients, so
    only decision-based attacks (Brendel, Rauber and Bethge, "Decision-Based Adversarial
    Attacks", ICLR 2018) remain, and they still work. Non-differentiable, BPDA identity
    surrogate, deterministic; ties go to the lowest class index.
    """

    def one_hot(p: Tensor) -> Tensor:
        _scores(p, "label_only")
        return F.one_hot(p.argmax(1), p.shape[1]).to(p.dtype)

    return OutputStage(
        name=_name("label_only", name),
        fn=_detached(one_hot),
        differentiable=False,
        surrogate=identity,
        defense=True,
        exposes=Exposure.LABEL,
    )


def rounded_scores(decimals: int = 2, *, name: str = "rounded-scores") -> OutputStage:
    """Output hardening: class probabilities rounded to ``decimals`` decimal places.

    A common API hardening against score-based attacks and model extraction (Tramer, Zhang,
    Juels, Reiter and Ristenpart, "Stealing Machine Learning Models via Prediction APIs",
    USENIX Security 2016). The system then exposes ``"scores"`` (no logits). Rows need not sum
    to 1 after rounding, and two classes that round to the same top value are tied: the label
    goes to the lower index. Non-differentiable (zero gradient almost everywhere), BPDA
    identity surrogate, deterministic.

    Args:
        decimals: decimal places kept, an int from 0 to 8 (default 2).
    """
    owner = "rounded_scores"
    Interval(0, 8, integral=True).check(owner, "decimals", decimals)
    factor = 10.0**decimals

    def rounded(p: Tensor) -> Tensor:
        _scores(p, owner)
        return torch.round(p * factor) / factor

    return OutputStage(
        name=_name(owner, name),
        fn=_detached(rounded),
        differentiable=False,
        surrogate=identity,
        defense=True,
        exposes=Exposure.SCORES,
    )


def _scores(p: Tensor, who: str) -> None:
    if p.dim() != 2:
        raise InputError(
            f"The {who} stage takes class scores of shape (n, classes); got {tuple(p.shape)}. "
            "Put it after the model with mallory.defenses.defend(system, stage)."
        )


def _softmax(x: Tensor) -> Tensor:
    return x.softmax(1)


# ---------------------------------------------------------------- assembling
def defend(system: System, *stages: Stage, name: str | None = None) -> Pipeline:
    """``system`` with defense stages around it: input stages before it, in the order given,
    and output stages (:func:`label_only`, :func:`rounded_scores`) after it.

    With output stages, a softmax is put between a logits system and them (an ordinary,
    differentiable stage: an attacker that ignores the defense still sees the model's
    probabilities), the result has ``output="probabilities"``, and it exposes the poorest of
    what the system and the output stages show. ``name`` defaults to
    ``"<system>+<stage>+..."``.
    """
    Instance(System, "a mallory System").check("defend", "system", system)
    if not stages:
        raise InputError(
            "defend needs at least one stage, e.g. defend(model, bit_depth(4)); "
            "mallory.defenses.stages lists them."
        )
    for stage in stages:
        Instance(Stage, "Stage values (from mallory.defenses)").check("defend", "stages", stage)
    inputs = [s for s in stages if not isinstance(s, OutputStage)]
    outputs = [s for s in stages if isinstance(s, OutputStage)]
    label = name if name is not None else "+".join([system.name, *(s.name for s in stages)])
    _name("defend", label)
    core = system
    if outputs:
        after: list[Stage] = []
        if system.output is Output.LOGITS:
            after.append(Stage(name="softmax", fn=_softmax))
        after.extend(outputs)
        names = [s.name for s in (*system.stages, *after)]
        if len(set(names)) != len(names):
            raise InputError(
                f"defend got stages whose names clash with each other or with the system's "
                f"stages {[s.name for s in system.stages]}: {names}. Pass name=... to the "
                "stage functions."
            )
        shown = min((system.exposes, *(s.exposes for s in outputs)), key=lambda e: e.richness)
        # a copy keeps everything else the system carries; only its answer changes
        core = copy.copy(system)
        core.stages = (*system.stages, *after)
        core.output = Output.PROBABILITIES
        core.exposes = shown
        core.top_k = system.top_k if shown is system.exposes else None
    return Pipeline([*inputs, core], name=label)
