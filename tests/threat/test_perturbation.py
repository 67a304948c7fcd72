"""Property tests for the perturbation maths (projections, distances) and the per-sample noise."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from mallory.attacks.noise import Noise
from mallory.systems.base import Bounds
from mallory.threat import Norm
from mallory.threat.perturbation import L0_TOLERANCE, distances, norm_of, project, project_ball

# deterministic examples: the suite must not flake in CI
PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None)

DTYPES = [torch.float32, torch.float64]


# ---------------------------------------------------------------- strategies
@st.composite
def boxes(draw: st.DrawFn) -> dict[str, object]:
    """A batch shape, a dtype, bounds (scalar or per feature), a clean x inside them and a
    candidate x_adv that may leave both the ball and the box."""
    n = draw(st.integers(1, 4))
    features = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    lower = draw(st.floats(-10.0, 10.0, allow_nan=False))
    width = draw(st.sampled_from([0.5, 1.0, 2.0, 255.0]))
    per_feature = draw(st.booleans())
    spread = draw(st.sampled_from([0.01, 0.3, 1.5]))  # how far x_adv strays, in box widths
    unchanged = draw(st.floats(0.0, 0.7))  # share of features left exactly equal
    g = torch.Generator().manual_seed(seed)
    shape = (n, *features)
    if per_feature:
        lo = lower + torch.rand(features, generator=g, dtype=torch.float64)
        hi = lo + width * (0.5 + torch.rand(features, generator=g, dtype=torch.float64))
    else:
        lo = torch.tensor(lower, dtype=torch.float64)
        hi = lo + width
    bounds = Bounds.of((lo, hi), features)
    x = (lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)).to(dtype)
    x = bounds.clamp(x)
    noise = spread * (hi - lo) * (2 * torch.rand(shape, generator=g, dtype=torch.float64) - 1)
    keep = torch.rand(shape, generator=g) < unchanged
    x_adv = torch.where(keep, x, (x.double() + noise).to(dtype))
    return {"x": x, "x_adv": x_adv, "bounds": bounds, "dtype": dtype, "width": float(width)}


@st.composite
def radii(draw: st.DrawFn, features: int, width: float) -> tuple[Norm, float]:
    norm = draw(st.sampled_from(list(Norm)))
    if norm is Norm.L0:
        return norm, float(draw(st.integers(0, features)))
    if draw(st.integers(0, 9)) == 0:
        return norm, math.inf
    scale = width * (1.0 if norm is Norm.LINF else math.sqrt(features))
    return norm, draw(st.floats(0.0, 1.2)) * scale


def tolerance(dtype: torch.dtype, scale: float) -> float:
    return 16 * torch.finfo(dtype).eps * (1.0 + scale)


def scale_of(bounds: Bounds) -> float:
    return float(torch.maximum(bounds.lower.abs(), bounds.upper.abs()).max())


def features_of(x: Tensor) -> int:
    return x[0].numel()


# ---------------------------------------------------------------- projections
@PROPERTY
@given(st.data())
def test_projection_lands_inside_ball_and_box(data: st.DataObject) -> None:
    case = data.draw(boxes())
    x, x_adv, bounds = case["x"], case["x_adv"], case["bounds"]
    assert isinstance(x, Tensor) and isinstance(x_adv, Tensor) and isinstance(bounds, Bounds)
    norm, eps = data.draw(radii(features_of(x), float(case["width"])))  # type: ignore[arg-type]
    p = project(x_adv, x, norm, eps, bounds)
    assert p.shape == x.shape and p.dtype == x.dtype
    lo, hi = bounds.on(p)
    # within rounding: see test_project_stays_inside_the_box_exactly for the exact claim
    slack = tolerance(x.dtype, scale_of(bounds))
    assert bool(((p >= lo - slack) & (p <= hi + slack)).all()), "projection left the box"
    size = norm_of(p - x, norm)
    if norm is Norm.L0:
        assert bool((size <= eps).all())
    else:
        slack *= math.sqrt(features_of(x)) if norm is Norm.L2 else 1.0
        assert bool((size <= eps + slack).all()), (size.max().item(), eps)


@PROPERTY
@given(st.data())
def test_projection_is_idempotent(data: st.DataObject) -> None:
    case = data.draw(boxes())
    x, x_adv, bounds = case["x"], case["x_adv"], case["bounds"]
    assert isinstance(x, Tensor) and isinstance(x_adv, Tensor) and isinstance(bounds, Bounds)
    norm, eps = data.draw(radii(features_of(x), float(case["width"])))  # type: ignore[arg-type]
    once = project(x_adv, x, norm, eps, bounds)
    twice = project(once, x, norm, eps, bounds)
    slack = tolerance(x.dtype, scale_of(bounds))
    torch.testing.assert_close(twice, once, atol=slack, rtol=0)
    if norm is not Norm.L2:  # clipping and feature selection are exact, rescaling is not
        assert bool((norm_of(twice - x, norm) <= norm_of(once - x, norm) + slack).all())


@PROPERTY
@given(st.data())
def test_projection_of_ball_is_idempotent_exactly(data: st.DataObject) -> None:
    case = data.draw(boxes())
    x, x_adv = case["x"], case["x_adv"]
    assert isinstance(x, Tensor) and isinstance(x_adv, Tensor)
    norm, eps = data.draw(radii(features_of(x), float(case["width"])))  # type: ignore[arg-type]
    once = project_ball(x_adv - x, norm, eps)
    twice = project_ball(once, norm, eps)
    if norm is Norm.L2:
        torch.testing.assert_close(twice, once, atol=tolerance(x.dtype, 0.0), rtol=1e-6)
    else:
        assert torch.equal(twice, once)


@PROPERTY
@given(st.data())
def test_points_inside_the_ball_stay_put_exactly(data: st.DataObject) -> None:
    case = data.draw(boxes())
    x, x_adv = case["x"], case["x_adv"]
    assert isinstance(x, Tensor) and isinstance(x_adv, Tensor)
    norm = data.draw(st.sampled_from(list(Norm)))
    delta = x_adv - x
    size = norm_of(delta, norm)
    # the smallest radius that holds every row, and a looser one
    for eps in (float(size.max()), float(size.max()) * 1.5 + 1.0):
        assert torch.equal(project_ball(delta, norm, eps), delta)
    # per-sample radii: each row's own size
    assert torch.equal(project_ball(delta, norm, size), delta)


@PROPERTY
@given(st.data())
def test_points_inside_ball_and_box_stay_put_within_rounding(data: st.DataObject) -> None:
    case = data.draw(boxes())
    x, x_adv, bounds = case["x"], case["x_adv"], case["bounds"]
    assert isinstance(x, Tensor) and isinstance(x_adv, Tensor) and isinstance(bounds, Bounds)
    norm = data.draw(st.sampled_from(list(Norm)))
    inside = bounds.clamp(x_adv)
    eps = float(norm_of(inside - x, norm).max())
    if norm is Norm.L2:
        eps *= 1 + 1e-6
    p = project(inside, x, norm, eps, bounds)
    torch.testing.assert_close(p, inside, atol=tolerance(x.dtype, scale_of(bounds)), rtol=0)


# Radii the two regressions below use: finite (at eps=inf project returns the clamped point
# exactly), and large enough that the ball does not bind.
LOOSE = {Norm.LINF: 1e9, Norm.L2: 1e9, Norm.L0: 3.0}


def test_project_at_infinite_eps_is_exact() -> None:
    x = torch.tensor([[0.1, 3.3, 200.7]], dtype=torch.float32)
    x_adv = torch.tensor([[0.7, 9.1, 17.3]], dtype=torch.float32)
    bounds = Bounds.of((0.0, 255.0), (3,))
    for norm in Norm:
        assert torch.equal(project(x_adv, x, norm, math.inf, bounds), x_adv)


def test_project_keeps_points_inside_exactly() -> None:
    x = torch.tensor([[0.1, 3.3, 200.7]], dtype=torch.float32)
    x_adv = torch.tensor([[0.7, 9.1, 17.3]], dtype=torch.float32)
    bounds = Bounds.of((0.0, 255.0), (3,))
    for norm in Norm:
        assert torch.equal(project(x_adv, x, norm, LOOSE[norm], bounds), x_adv), norm


def test_project_stays_inside_the_box_exactly() -> None:
    bounds = Bounds.of((0.32920578122138977, 2.0))
    x = torch.tensor([[1.1022542715072632]], dtype=torch.float32)
    for norm in Norm:
        p = project(torch.zeros_like(x), x, norm, LOOSE[norm], bounds)
        lo, hi = bounds.on(p)
        assert bool(((p >= lo) & (p <= hi)).all()), (norm, p.item(), lo.item())


@PROPERTY
@given(
    n=st.integers(1, 5),
    d=st.integers(1, 30),
    k=st.integers(0, 30),
    seed=st.integers(0, 2**31 - 1),
    ties=st.booleans(),
)
def test_l0_projection_keeps_the_largest_changes(
    n: int, d: int, k: int, seed: int, ties: bool
) -> None:
    g = torch.Generator().manual_seed(seed)
    if ties:
        magnitude = torch.randint(0, 4, (n, d), generator=g).double() / 4
    else:
        magnitude = torch.randperm(n * d, generator=g).reshape(n, d).double() + 1.0
    signs = torch.where(torch.rand(n, d, generator=g) < 0.5, -1.0, 1.0).double()
    delta = magnitude * signs
    out = project_ball(delta, Norm.L0, float(k))
    kept = out != 0
    changed = (delta.abs() > L0_TOLERANCE).sum(1)
    assert torch.equal(kept.sum(1), changed.clamp_max(k))
    # kept values are the original ones, unscaled
    assert torch.equal(out[kept], delta[kept])
    # no dropped change is larger than a kept one
    for row in range(n):
        if kept[row].any() and (~kept[row]).any():
            assert delta[row][~kept[row]].abs().max() <= delta[row][kept[row]].abs().min()


def test_l0_projection_per_sample_budget() -> None:
    delta = torch.tensor([[3.0, -1.0, 2.0], [1.0, 5.0, -4.0]])
    out = project_ball(delta, Norm.L0, torch.tensor([1.0, 2.0]))
    assert torch.equal(out, torch.tensor([[3.0, 0.0, 0.0], [0.0, 5.0, -4.0]]))


def test_linf_and_l2_projection_values() -> None:
    delta = torch.tensor([[3.0, -4.0], [0.3, 0.4]])
    assert torch.equal(project_ball(delta, Norm.LINF, 1.0), torch.tensor([[1.0, -1.0], [0.3, 0.4]]))
    out = project_ball(delta, Norm.L2, 1.0)
    torch.testing.assert_close(out, torch.tensor([[0.6, -0.8], [0.3, 0.4]]))
    # a zero perturbation stays zero (no division by zero)
    assert torch.equal(project_ball(torch.zeros(2, 3), Norm.L2, 0.0), torch.zeros(2, 3))
    assert torch.equal(project_ball(delta, Norm.L2, math.inf), delta)


def test_project_respects_per_feature_bounds() -> None:
    bounds = Bounds.of((torch.tensor([0.0, -1.0]), torch.tensor([1.0, 0.0])), (2,))
    x = torch.tensor([[0.5, -0.5]])
    out = project(torch.tensor([[5.0, 5.0]]), x, Norm.LINF, math.inf, bounds)
    assert torch.equal(out, torch.tensor([[1.0, 0.0]]))


# ---------------------------------------------------------------- distances
@PROPERTY
@given(st.data())
def test_distance_inequalities(data: st.DataObject) -> None:
    case = data.draw(boxes())
    x, x_adv = case["x"], case["x_adv"]
    assert isinstance(x, Tensor) and isinstance(x_adv, Tensor)
    d = distances(x_adv, x)
    features = features_of(x)
    l0, l2, linf = d[Norm.L0], d[Norm.L2], d[Norm.LINF]
    for value in (l0, l2, linf):
        assert value.shape == (len(x),)
        assert value.dtype == torch.float64
        assert bool((value >= 0).all())
    assert bool((linf <= l2 * (1 + 1e-12)).all())
    assert bool((l2 <= math.sqrt(features) * linf * (1 + 1e-12)).all())
    assert bool((l0 <= features).all())
    assert torch.equal(l0, l0.round())
    # a point with no change has all three distances zero
    same = distances(x, x)
    for value in same.values():
        assert torch.equal(value, torch.zeros(len(x), dtype=torch.float64))
    # symmetric
    back = distances(x, x_adv)
    for norm in Norm:
        torch.testing.assert_close(back[norm], d[norm], rtol=0, atol=0)


@PROPERTY
@given(st.data())
def test_norm_of_agrees_with_distances(data: st.DataObject) -> None:
    case = data.draw(boxes())
    x, x_adv = case["x"], case["x_adv"]
    assert isinstance(x, Tensor) and isinstance(x_adv, Tensor)
    d = distances(x_adv, x)
    for norm in Norm:
        size = norm_of(x_adv - x, norm)
        assert size.shape == (len(x),)
        assert bool((size >= 0).all())
        atol = tolerance(x.dtype, float(d[Norm.L2].max()))
        torch.testing.assert_close(size.double(), d[norm], atol=atol, rtol=1e-5)


def test_l0_ignores_float_noise() -> None:
    x = torch.zeros(1, 4, dtype=torch.float64)
    x_adv = torch.tensor([[0.0, 1e-9, 0.5, -2.0]], dtype=torch.float64)
    assert distances(x_adv, x)[Norm.L0].item() == 2.0
    assert norm_of(x_adv - x, Norm.L0).item() == 2.0


# ---------------------------------------------------------------- noise
@PROPERTY
@given(seed=st.integers(-(2**40), 2**40), key=st.integers(-5, 10**6))
def test_noise_does_not_depend_on_batch_composition(seed: int, key: int) -> None:
    everyone = Noise(seed, torch.arange(10)).fold("test", key)
    pair = Noise(seed, torch.tensor([3, 7])).fold("test", key)
    for draw in ("uniform", "normal", "sign"):
        full = getattr(everyone, draw)((2, 3))
        part = getattr(pair, draw)((2, 3))
        assert full.shape == (10, 2, 3)
        assert torch.equal(full[[3, 7]], part)
        # rows= selects within the batch the same way
        assert torch.equal(getattr(everyone, draw)((2, 3), torch.tensor([7, 3])), full[[7, 3]])
    ints = everyone.integers(9, (5,))
    assert torch.equal(ints[[3, 7]], pair.integers(9, (5,)))
    # a bound view draws the same as a fresh one
    assert torch.equal(everyone.bind(torch.tensor([3, 7])).uniform((4,)), pair.uniform((4,)))


def test_noise_order_and_duplicates() -> None:
    base = Noise(1, torch.arange(6)).uniform((8,))
    shuffled = Noise(1, torch.tensor([5, 0, 2, 2])).uniform((8,))
    assert torch.equal(shuffled, base[[5, 0, 2, 2]])


def test_noise_differs_across_streams_seeds_ids_positions() -> None:
    ids = torch.arange(4)
    a = Noise(0, ids).fold("a").uniform((100,))
    assert not torch.equal(a, Noise(0, ids).fold("b").uniform((100,)))
    assert not torch.equal(a, Noise(0, ids).fold("a", 1).uniform((100,)))
    assert not torch.equal(a, Noise(1, ids).fold("a").uniform((100,)))
    assert not torch.equal(a, Noise(0, ids).uniform((100,)))
    assert not torch.equal(a[0], a[1])  # ids differ
    assert len(torch.unique(a[0])) > 95  # positions differ
    # folding is a path: ("a", 1) then "b" differs from ("a", 2) then "b", and from "b" alone
    deep = Noise(0, ids).fold("a", 1).fold("b").uniform((100,))
    assert not torch.equal(deep, Noise(0, ids).fold("a", 2).fold("b").uniform((100,)))
    assert not torch.equal(deep, Noise(0, ids).fold("b").uniform((100,)))
    # the same stream twice gives the same numbers
    assert torch.equal(a, Noise(0, ids).fold("a").uniform((100,)))


def test_noise_shapes_dtypes_devices() -> None:
    noise = Noise(3, torch.arange(5))
    assert noise.uniform().shape == (5,)
    assert noise.uniform((2, 3)).shape == (5, 2, 3)
    assert noise.uniform((2,), dtype=torch.float64).dtype == torch.float64
    assert noise.normal((2,)).dtype == torch.float32
    assert noise.normal((3, 3)).shape == (5, 3, 3)  # an odd count of a Box-Muller pair
    assert noise.integers(4, (3,)).dtype == torch.int64
    assert noise.sign((3,), rows=torch.tensor([1, 2])).shape == (2, 3)
    assert noise.uniform((2,), device="cpu").device.type == "cpu"


@pytest.mark.parametrize("dtype", DTYPES)
def test_uniform_in_unit_interval(dtype: torch.dtype) -> None:
    u = Noise(11, torch.arange(100)).uniform((1000,), dtype=dtype)
    assert bool((u >= 0).all()) and bool((u < 1).all())
    assert abs(float(u.double().mean()) - 0.5) < 0.01
    # roughly flat: each tenth holds about a tenth
    counts = torch.histc(u.double(), bins=10, min=0.0, max=1.0) / u.numel()
    assert bool(((counts - 0.1).abs() < 0.01).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_uniform_in_unit_interval_half_precision(dtype: torch.dtype) -> None:
    u = Noise(0, torch.arange(100)).uniform((10000,), dtype=dtype)
    assert bool((u < 1).all())


def test_normal_roughly_standard() -> None:
    z = Noise(5, torch.arange(10)).normal((1000,), dtype=torch.float64)
    assert z.numel() == 10_000
    assert bool(torch.isfinite(z).all())
    assert abs(float(z.mean())) < 0.05
    assert abs(float(z.std()) - 1.0) < 0.05
    assert abs(float((z.abs() < 1).double().mean()) - 0.6827) < 0.03
    # both numbers of each pair are used, and they are uncorrelated
    first, second = z[:, 0::2].flatten(), z[:, 1::2].flatten()
    assert abs(float(torch.corrcoef(torch.stack([first, second]))[0, 1])) < 0.05


def test_a_longer_draw_begins_with_a_shorter_one() -> None:
    noise = Noise(2, torch.arange(3)).fold("prefix")
    for draw in ("uniform", "normal", "sign"):
        short, long = getattr(noise, draw)((7,)), getattr(noise, draw)((20,))
        assert torch.equal(long[:, :7], short), draw


@PROPERTY
@given(seed=st.integers(0, 2**32), high=st.integers(1, 50))
def test_integers_in_range(seed: int, high: int) -> None:
    k = Noise(seed, torch.arange(20)).integers(high, (30,))
    assert bool((k >= 0).all()) and bool((k < high).all())


def test_integers_per_row_bounds_and_coverage() -> None:
    high = torch.tensor([1, 2, 7, 10])
    k = Noise(0, torch.arange(4)).integers(high, (500,))
    assert k.shape == (4, 500)
    assert bool((k >= 0).all()) and bool((k < high[:, None]).all())
    assert bool((k[0] == 0).all())
    for row, top in enumerate(high.tolist()):
        assert set(k[row].tolist()) == set(range(top))


def test_sign_values() -> None:
    s = Noise(0, torch.arange(10)).sign((1000,))
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(s.mean())) < 0.05


def test_noise_rejects_non_int_seed() -> None:
    with pytest.raises(TypeError, match="seed"):
        Noise(1.5, torch.arange(3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed"):
        Noise(True, torch.arange(3))
