"""Randomized smoothing: a classifier that votes under Gaussian noise, and its certificate.

Cohen, Rosenfeld and Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
ICML 2019. From any base classifier ``f``, the smoothed classifier ``g(x)`` is the class ``f``
returns most often on ``x + N(0, sigma^2 I)``. If ``f`` returns class ``A`` with probability at
least ``pA > 1/2`` under that noise, ``g`` returns ``A`` everywhere within the L2 radius
``sigma * Phi^-1(pA)`` of ``x`` (Theorem 1, with ``pB = 1 - pA``). The threat model of the
certificate: any L2 perturbation smaller than the radius, by an attacker who knows
everything, gradients and noise distribution included (but not the noise drawn).

* :class:`SmoothedClassifier`: ``g`` as a System, answering with PREDICT (n noise draws, a
  two-sided binomial test at ``alpha`` between the top two classes, abstain otherwise);
* :func:`predict`: PREDICT with an explicit seed;
* :func:`certify`: CERTIFY (n0 draws to guess the class, n draws to bound ``pA`` from below
  with a one-sided Clopper-Pearson interval at level ``1 - alpha``, radius ``sigma *
  Phi^-1(pA_lower)``, abstain when ``pA_lower < 1/2``);
* :class:`~mallory.defenses.GaussianNoiseTraining` trains a base classifier for it.

The noise is added in input units and not clipped to the bounds, as in the paper (the base
classifier sees inputs outside them). Votes come from the base system's top class; rows the
base refuses or abstains on do not vote.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from scipy.stats import beta, binom, norm
from torch import Tensor

from mallory.defenses.training import stream
from mallory.errors import AccessError, InputError
from mallory.params import Constraint, Instance, Interval, OrNone, Text, check_values
from mallory.systems.base import ABSTAINED, Output, Stage, System, Verdict

SURROGATE_SAMPLES = 8
"""Noise draws averaged by the smoothed classifier's surrogate gradient (see
:class:`SmoothedClassifier`)."""


class Certificate(NamedTuple):
    """What :func:`certify` returns, per input: the certified class (``ABSTAINED`` = -2 where
    it abstains) and the certified L2 radius in input units (0 where it abstains)."""

    predictions: Tensor
    radius: Tensor


SMOOTHING_PARAMS: dict[str, Constraint] = {
    "sigma": Interval(low=0.0, low_open=True),
    "n": Interval(low=1, integral=True),
    "n0": Interval(low=1, integral=True),
    "alpha": Interval(0.0, 1.0, low_open=True, high_open=True),
    "batch": Interval(low=1, integral=True),
    "rng": Interval(low=0, integral=True),
    "base": Instance(System, "a mallory System"),
    "name": OrNone(Text()),
}
"""The constraints of the parameters of :class:`SmoothedClassifier`, :func:`predict` and
:func:`certify`, by name."""


def _check_common(owner: str, *, sigma: float, n: int, alpha: float, batch: int) -> None:
    check_values(owner, SMOOTHING_PARAMS, {"sigma": sigma, "n": n, "alpha": alpha, "batch": batch})


def _inputs(base: System, x: object, owner: str) -> Tensor:
    shape = base.input_shape
    if not isinstance(x, Tensor):
        raise InputError(
            f"{owner} needs inputs as a float tensor of shape (n, {', '.join(map(str, shape))}); "
            f"got {type(x).__name__}."
        )
    if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape or not x.is_floating_point():
        raise InputError(
            f"{owner} needs float inputs of shape (n, {', '.join(map(str, shape))}) for the "
            f"system {base.name!r}; got {x.dtype} of shape {tuple(x.shape)}."
        )
    return x


def sample_counts(
    base: System,
    x: Tensor,
    *,
    sigma: float,
    n: int,
    batch: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Votes of ``base`` on ``n`` noisy copies of each input: int64 counts ``(m, classes)``.

    Copies of all inputs are evaluated together, ``batch`` at a time; the noise comes from
    ``generator`` (a CPU generator), or from torch's default generator on the inputs' device
    when None (the draws depend on ``batch``: torch draws normal numbers differently for
    small and large tensors). Rows the base refuses or abstains on do not vote.
    """
    m = len(x)
    counts = torch.zeros((m, base.num_classes), dtype=torch.int64)
    total = m * n
    for begin in range(0, total, batch):
        index = torch.arange(begin, min(begin + batch, total))
        rows = index // n
        shape = (len(index), *x.shape[1:])
        if generator is None:
            noise = torch.randn(shape, dtype=x.dtype, device=x.device)
        else:
            noise = torch.randn(shape, generator=generator, dtype=x.dtype).to(x.device)
        answer = base.answer(x[rows.to(x.device)] + sigma * noise)
        labels = answer.values.argmax(1).cpu()
        votes = ~(answer.mask("refused") | answer.mask("abstained"))
        counts.index_put_((rows[votes], labels[votes]), torch.ones_like(labels[votes]), True)
    return counts


def binomial_p_value(top: Tensor, second: Tensor) -> Tensor:
    """Two-sided binomial test p-values of ``top`` successes in ``top + second`` trials at
    probability 1/2 (as ``scipy.stats.binomtest``), elementwise; 1 where there are no
    trials. Needs ``top >= second``."""
    trials = (top + second).numpy()
    p = 2 * binom.cdf(second.numpy(), trials, 0.5)
    return torch.from_numpy(p).clamp(max=1.0).masked_fill(top + second == 0, 1.0)


def _decide(counts: Tensor, alpha: float) -> Verdict:
    """PREDICT's decision from vote counts: shares as values, abstained where the test fails."""
    top2 = counts.topk(2, dim=1).values if counts.shape[1] > 1 else counts
    p = binomial_p_value(top2[:, 0], top2[:, 1])
    voted = counts.sum(1, keepdim=True)
    shares = counts.double() / voted.clamp(min=1)
    # a row without any vote gets uniform shares (and abstains)
    uniform = torch.full_like(shares, 1.0 / counts.shape[1])
    shares = torch.where(voted > 0, shares, uniform)
    return Verdict(values=shares, abstained=p > alpha)


def predict(
    system: System,
    x: Tensor,
    *,
    sigma: float | None = None,
    n: int = 1000,
    alpha: float = 0.001,
    batch: int = 1000,
    rng: int = 0,
) -> Verdict:
    """PREDICT (Cohen et al., Algorithm 1) with seeded noise: the class the base votes for
    most under ``n`` draws of ``N(0, sigma^2 I)``, or an abstention when the two-sided binomial
    test of the top two counts has a p-value above ``alpha``.

    ``system`` is the base classifier (then ``sigma`` is required) or a
    :class:`SmoothedClassifier` (its base and sigma are used; a ``sigma`` given must match).
    Returns a :class:`~mallory.systems.base.Verdict`: ``values`` the vote shares ``(m,
    classes)`` (rows sum to 1; their argmax is the prediction) and ``abstained`` the rows
    that abstain. A wrong class is returned with probability at most ``alpha``.
    """
    base, sigma = _base_and_sigma(system, sigma, "predict")
    _check_common("predict", sigma=sigma, n=n, alpha=alpha, batch=batch)
    check_values("predict", SMOOTHING_PARAMS, {"rng": rng})
    x = _inputs(base, x, "predict")
    counts = sample_counts(
        base, x, sigma=sigma, n=n, batch=batch, generator=stream(rng, "smoothing.predict")
    )
    return _decide(counts, alpha)


def clopper_pearson_lower(successes: Tensor, trials: int, alpha: float) -> Tensor:
    """One-sided ``(1 - alpha)`` lower confidence bounds on a binomial proportion (Clopper and
    Pearson, 1934): ``Beta(alpha; k, n - k + 1)``'s quantile, 0 where ``k = 0``."""
    k = successes.double().numpy()
    bound = beta.ppf(alpha, k, trials - k + 1)
    out = torch.from_numpy(bound).double()
    return torch.where(successes > 0, out.nan_to_num(0.0), torch.zeros_like(out))


def certified_radius(p_lower: Tensor, sigma: float) -> Tensor:
    """``sigma * Phi^-1(p_lower)``, the L2 radius of Cohen et al.'s Theorem 1 (0 at or below
    p_lower = 1/2)."""
    radius = torch.from_numpy(sigma * norm.ppf(p_lower.double().numpy()))
    return radius.clamp(min=0.0).nan_to_num(0.0)


def certify(
    system: System,
    x: Tensor,
    *,
    sigma: float | None = None,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch: int = 1000,
    rng: int = 0,
) -> Certificate:
    """CERTIFY (Cohen et al., Algorithm 1): a class and an L2 radius within which the smoothed
    classifier is certified not to change its answer, with probability at least ``1 - alpha``.

    The class ``cA`` is the top vote of ``n0`` noisy copies; an independent ``n`` copies count
    ``nA`` votes for it; ``pA_lower`` is the one-sided Clopper-Pearson lower bound at level
    ``1 - alpha`` (``scipy.stats.beta.ppf(alpha, nA, n - nA + 1)``) and the radius is ``sigma
    * Phi^-1(pA_lower)``. Where ``pA_lower < 1/2`` it abstains: the prediction is
    ``ABSTAINED`` (-2) and the radius 0.

    Args:
        system: the base classifier (``sigma`` required) or a :class:`SmoothedClassifier`
            (its base and sigma; a ``sigma`` given must match).
        x: inputs ``(m, *input_shape)`` of the base.
        sigma: the noise's standard deviation, in input units.
        n0: draws to pick the class (default 100, the paper's).
        n: draws to estimate ``pA`` (default 100,000, the paper's; the radius grows with n).
        alpha: the failure probability (default 0.001, the paper's).
        batch: noisy copies evaluated at once (default 1,000).
        rng: the seed of the noise (the same seed and batch give the same certificate; the
            draws depend on how they are split into batches).

    Returns a :class:`Certificate` ``(predictions, radius)``: int64 ``(m,)`` and float64
    ``(m,)``.
    """
    base, sigma = _base_and_sigma(system, sigma, "certify")
    _check_common("certify", sigma=sigma, n=n, alpha=alpha, batch=batch)
    check_values("certify", SMOOTHING_PARAMS, {"n0": n0, "rng": rng})
    x = _inputs(base, x, "certify")
    select = stream(rng, "smoothing.certify.select")
    estimate = stream(rng, "smoothing.certify.estimate")
    guess = sample_counts(base, x, sigma=sigma, n=n0, batch=batch, generator=select).argmax(1)
    counts = sample_counts(base, x, sigma=sigma, n=n, batch=batch, generator=estimate)
    top = counts.gather(1, guess[:, None]).squeeze(1)
    p_lower = clopper_pearson_lower(top, n, alpha)
    certified = p_lower >= 0.5
    predictions = torch.where(certified, guess, torch.full_like(guess, ABSTAINED))
    radius = torch.where(certified, certified_radius(p_lower, sigma), torch.zeros_like(p_lower))
    return Certificate(predictions, radius)


def _base_and_sigma(system: object, sigma: float | None, owner: str) -> tuple[System, float]:
    if isinstance(system, SmoothedClassifier):
        if sigma is not None and sigma != system.sigma:
            raise InputError(
                f"The 'sigma' parameter of {owner} must match the smoothed classifier's "
                f"sigma={system.sigma!r} (or be left out); got {sigma!r} instead."
            )
        return system.base, system.sigma
    if not isinstance(system, System):
        raise InputError(
            f"The 'system' parameter of {owner} must be a mallory System or a "
            f"SmoothedClassifier; got {type(system).__name__} instead."
        )
    if sigma is None:
        raise InputError(
            f"The 'sigma' parameter of {owner} must be a finite number > 0 for a base "
            f"classifier {system.name!r}; got None instead."
        )
    return system, sigma


class SmoothedClassifier(System):
    """The smoothed classifier ``g`` of Cohen et al. (ICML 2019) around a base System, as a
    System that answers with PREDICT.

    Each call draws ``n`` noisy copies of every input from torch's default generator (the
    system's own randomness: ``deterministic`` is False, judge it by a majority over draws)
    and returns a :class:`~mallory.systems.base.Verdict`: the vote shares ``(m, classes)``
    (probabilities, rows summing to 1) with ``abstained`` set on the rows where the two-sided
    binomial test of the top two counts gives a p-value above ``alpha``.

    It is one stage, named ``"smoothing"``, not differentiable. For attackers allowed
    gradients its surrogate is the base's expected probabilities under the noise, estimated on
    :data:`SURROGATE_SAMPLES` draws (the soft smoothed classifier that Salman et al., NeurIPS
    2019, attack); there is none when the base itself offers no gradients.

    Args:
        base: the base classifier (any System; train one with
            :class:`~mallory.defenses.GaussianNoiseTraining` at the same sigma).
        sigma: the noise's standard deviation, in input units (required).
        n: noisy copies per input and call (default 1,000; Cohen et al. evaluate with
            100,000).
        alpha: the test's level: a wrong class is returned with probability at most alpha
            (default 0.001).
        batch: noisy copies evaluated at once (default 1,000).
        name: default ``"<base>-smoothed"``.
    """

    def __init__(
        self,
        base: System,
        *,
        sigma: float,
        n: int = 1000,
        alpha: float = 0.001,
        batch: int = 1000,
        name: str | None = None,
    ) -> None:
        owner = "SmoothedClassifier"
        check_values(owner, SMOOTHING_PARAMS, {"base": base, "name": name})
        _check_common(owner, sigma=sigma, n=n, alpha=alpha, batch=batch)
        self.base = base
        self.sigma = float(sigma)
        self.n = n
        self.alpha = float(alpha)
        self.batch = batch
        try:
            base.gradient_path(adaptive=True)
            surrogate = self._expected_probabilities
        except AccessError:
            surrogate = None
        stage = Stage(
            name="smoothing",
            fn=self._vote,
            differentiable=False,
            deterministic=False,
            surrogate=surrogate,
        )
        super().__init__(
            [stage],
            input_shape=base.input_shape,
            bounds=base.bounds,
            num_classes=base.num_classes,
            output=Output.PROBABILITIES,
            class_names=base.class_names,
            name=name if name is not None else f"{base.name}-smoothed",
        )

    def _vote(self, x: Tensor) -> Verdict:
        counts = sample_counts(self.base, x, sigma=self.sigma, n=self.n, batch=self.batch)
        verdict = _decide(counts, self.alpha)
        return Verdict(values=verdict.values.to(x), abstained=verdict.abstained)

    def _expected_probabilities(self, x: Tensor) -> Tensor:
        total = torch.zeros((), dtype=x.dtype, device=x.device)
        for _ in range(SURROGATE_SAMPLES):
            noisy = x + self.sigma * torch.randn_like(x)
            out = self.base.forward_differentiable(noisy, adaptive=True)
            probs = out.softmax(1) if self.base.output is Output.LOGITS else out
            total = total + probs
        return total / SURROGATE_SAMPLES


__all__ = [
    "ABSTAINED",
    "SURROGATE_SAMPLES",
    "Certificate",
    "SmoothedClassifier",
    "binomial_p_value",
    "certified_radius",
    "certify",
    "clopper_pearson_lower",
    "predict",
    "sample_counts",
]
