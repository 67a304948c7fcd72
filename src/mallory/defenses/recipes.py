"""Training recipes: plain, dropout, weight decay, adversarial training with a weak (FGSM) and
a strong (PGD) attack, Gaussian noise augmentation, and defensive distillation.

Every recipe is a frozen keyword-only dataclass; ``recipe.train(data)`` returns a
:class:`~mallory.systems.TorchModel` and caches it (see :mod:`mallory.defenses.training`).
The shared fields and their defaults:

* ``architecture``: ``"cnn"`` (default; the zoo's MNIST CNN at ``width=32``) or ``"mlp"``;
* ``width`` (32): the CNN's first conv channels, or the MLP's hidden units;
* ``epochs`` (10), ``lr`` (1e-3, Adam), ``batch_size`` (64), ``seed`` (0).

Perturbation sizes (``eps``, ``sigma``) are in the units of the inputs (pixels in ``[0, 1]``
for the zoo's images) and have no default: no value fits every dataset.

Speed, on 2 CPU cores with the zoo's MNIST (4,000 training images): a CI-sized PGD-trained
CNN, ``PGDTraining(eps=0.1, steps=3, width=8, epochs=5, lr=3e-3)``, trains in about 15 s
(measured: 94.0% clean test accuracy, 81% under PGD-20 at eps 0.1, against 94.8% and 62% for
the same plain CNN); the flagship settings, close to Madry et al.'s MNIST model,
``PGDTraining(eps=0.3, steps=40, step_size=0.01, epochs=20)``, take about an hour and a half
(estimated: 41 forward and backward passes per batch instead of the plain CNN's one, which
trains 10 epochs in 59 s).
"""

from __future__ import annotations

import dataclasses

import torch
from rich.progress import Progress
from torch import Tensor, nn

from mallory.attacks.params import integer, real
from mallory.defenses.training import Recipe, stream
from mallory.params import Interval, param
from mallory.systems import Output
from mallory.zoo.datasets import Dataset


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlainTraining(Recipe):
    """Empirical risk minimisation: cross-entropy on the clean data, nothing else.

    The baseline every defense is compared against. The defaults train the zoo's MNIST CNN
    shape on the zoo's MNIST to 97.3% test accuracy in about a minute on 2 CPU cores
    (measured: 59 s).
    """

    name = "plain"


@dataclasses.dataclass(frozen=True, kw_only=True)
class DropoutTraining(Recipe):
    """Dropout at rate ``p`` after each pooling layer and the hidden layer.

    Srivastava, Hinton, Krizhevsky, Sutskever and Salakhutdinov, "Dropout: A Simple Way to
    Prevent Neural Networks from Overfitting", JMLR 2014. A regulariser, not a defense: the
    lecture's example of a defense that has no effect on adversarial examples. The deployed
    model runs in eval mode (no dropout at inference).

    Args:
        p: the probability of zeroing a unit during training, in (0, 0.999] (default 0.5).
    """

    name = "dropout"
    paper = "Srivastava et al., Dropout, JMLR 2014"

    p: float = real(0.5, low=0.0, low_open=True, high=0.999, help="dropout rate")

    def _network(self, data: Dataset, *, dropout: float = 0.0) -> nn.Module:
        return super()._network(data, dropout=self.p)


@dataclasses.dataclass(frozen=True, kw_only=True)
class WeightDecayTraining(Recipe):
    """An L2 penalty ``weight_decay / 2 * ||theta||^2`` on every parameter (Adam's coupled
    ``weight_decay``: ``weight_decay * theta`` added to each gradient).

    Krogh and Hertz, "A Simple Weight Decay Can Improve Generalization", NIPS 1991. A
    regulariser, not a defense (the lecture's example of one with no effect on adversarial
    examples).

    Args:
        weight_decay: the penalty's coefficient lambda, > 0 (default 5e-4).
    """

    name = "weight-decay"
    paper = "Krogh and Hertz, A Simple Weight Decay Can Improve Generalization, NIPS 1991"

    weight_decay: float = real(5e-4, low=0.0, low_open=True, help="L2 coefficient lambda")

    def _optimizer(self, module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def linf_attack(
    module: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    bounds: tuple[float, float],
    start: torch.Generator | None,
) -> Tensor:
    """The defender's own white-box Linf attack used for adversarial training.

    Signed-gradient ascent on the cross-entropy w.r.t. the input, projected after each step
    into the ``eps``-ball around ``x`` and the ``bounds``; from a uniform random start in the
    ball when ``start`` (a generator) is given, from ``x`` otherwise. One step of size ``eps``
    without a start is FGSM. The module is in eval mode while attacking and back in its mode
    after; no parameter gradient is computed. Returns detached inputs of the shape of ``x``.
    """
    was_training = module.training
    module.eval()
    lower, upper = bounds
    x = x.detach()
    if start is not None:
        noise = torch.rand(x.shape, generator=start, dtype=x.dtype).to(x.device)
        adv = (x + (2 * noise - 1) * eps).clamp(lower, upper)
    else:
        adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = nn.functional.cross_entropy(module(adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + step_size * grad.sign()
        adv = torch.minimum(torch.maximum(adv, x - eps), x + eps).clamp(lower, upper)
    module.train(was_training)
    return adv.detach()


def _adversarial_fit(
    recipe: Recipe,
    data: Dataset,
    bar: Progress,
    *,
    eps: float,
    steps: int,
    step_size: float,
    random_start: bool,
    clean_weight: float,
) -> nn.Module:
    """Train on the defender's own Linf adversarial examples, made afresh for every batch
    against the current model (see :func:`linf_attack`); the loss is
    ``clean_weight * CE(x) + (1 - clean_weight) * CE(x_adv)``."""
    start = stream(recipe.seed, f"{recipe.name}.start") if random_start else None
    bounds = (float(data.bounds[0]), float(data.bounds[1]))

    def loss(module: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        adv = linf_attack(
            module, x, y, eps=eps, steps=steps, step_size=step_size, bounds=bounds, start=start
        )
        value = nn.functional.cross_entropy(module(adv), y)
        if clean_weight > 0:
            clean = nn.functional.cross_entropy(module(x), y)
            value = clean_weight * clean + (1 - clean_weight) * value
        return value

    module = recipe._network(data)
    recipe._epochs(module, data, loss, bar, recipe.name)
    return module


_POSITIVE = Interval(low=0.0, low_open=True)  # eps and sigma: no value fits every dataset


@dataclasses.dataclass(frozen=True, kw_only=True)
class FGSMTraining(Recipe):
    """Adversarial training with a weak attack: FGSM, one signed-gradient step of size
    ``eps`` from the clean input, no random start.

    Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR
    2015: the loss mixes clean and adversarial cross-entropy with weight ``clean_weight``
    (their alpha = 0.5). Threat model it trains against: Linf ball of radius ``eps`` around
    each training input, inside the data's bounds. The lecture's example of a defense that does
    not generalise over attack algorithms: it resists FGSM, not iterated attacks (and may learn
    to mask its gradients).

    Args:
        eps: the Linf radius, in input units (required; Goodfellow et al. used 0.25 on MNIST
            in [0, 1]).
        clean_weight: weight of the clean loss, in [0, 1] (default 0.5).

    Flagship MNIST settings: ``FGSMTraining(eps=0.25, epochs=20)`` (a few minutes on a CPU).
    """

    name = "fgsm-training"
    paper = "Goodfellow et al., Explaining and Harnessing Adversarial Examples, ICLR 2015"

    eps: float = param(_POSITIVE, help="Linf radius, in input units")
    clean_weight: float = real(0.5, low=0.0, high=1.0, help="weight of the clean loss")

    def _fit(self, data: Dataset, bar: Progress) -> nn.Module:
        return _adversarial_fit(
            self,
            data,
            bar,
            eps=self.eps,
            steps=1,
            step_size=self.eps,
            random_start=False,
            clean_weight=self.clean_weight,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class PGDTraining(Recipe):
    """Adversarial training with a strong attack: PGD from a uniform random start in the
    Linf ball, ``steps`` signed-gradient steps of ``step_size``, each projected back.

    Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep Learning Models Resistant to
    Adversarial Attacks", ICLR 2018: the model is trained on the adversarial examples only
    (``clean_weight=0``, the default here). Threat model it trains against: Linf ball of
    radius ``eps`` in the data's bounds, white-box. Cost per training batch: ``steps`` extra
    forward and backward passes (input gradients only).

    Args:
        eps: the Linf radius, in input units (required; Madry et al.: 0.3 on MNIST in [0, 1]).
        steps: PGD steps per batch, >= 1 (default 10; Madry et al.: 40 on MNIST).
        step_size: step length in input units (default None: ``2.5 * eps / steps``; Madry et
            al.: 0.01 on MNIST).
        clean_weight: weight of the clean loss, in [0, 1] (default 0).

    CI-sized MNIST: ``PGDTraining(eps=0.1, steps=3, width=8, epochs=5, lr=3e-3)`` (about 15 s
    on 2 CPU cores; 94% clean, 81% under PGD-20 at eps 0.1). Flagship MNIST:
    ``PGDTraining(eps=0.3, steps=40, step_size=0.01, epochs=20)`` (about an hour and a half on
    2 CPU cores, estimated from the cost per step).
    """

    name = "pgd-training"
    paper = "Madry et al., Towards Deep Learning Models Resistant to Adversarial Attacks, 2018"

    eps: float = param(_POSITIVE, help="Linf radius, in input units")
    steps: int = integer(10, low=1, help="PGD steps per training batch")
    step_size: float | None = real(
        None,
        low=0.0,
        low_open=True,
        optional=True,
        help="PGD step length in input units (None: 2.5 * eps / steps)",
    )
    clean_weight: float = real(0.0, low=0.0, high=1.0, help="weight of the clean loss")

    def _fit(self, data: Dataset, bar: Progress) -> nn.Module:
        size = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        return _adversarial_fit(
            self,
            data,
            bar,
            eps=self.eps,
            steps=self.steps,
            step_size=size,
            random_start=True,
            clean_weight=self.clean_weight,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class GaussianNoiseTraining(Recipe):
    """Training on inputs with Gaussian noise ``N(0, sigma^2 I)`` added (not clipped to the
    bounds): the base classifier of randomized smoothing.

    Cohen, Rosenfeld and Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
    ICML 2019, section 4: train the base classifier at the sigma the smoothed classifier will
    use (see :class:`mallory.defenses.SmoothedClassifier`). Every batch draws fresh noise from
    the recipe's seeded stream.

    Args:
        sigma: the noise's standard deviation, in input units (required; Cohen et al. used
            0.12 to 1.0 on images in [0, 1]).
    """

    name = "gaussian-noise"
    paper = "Cohen et al., Certified Adversarial Robustness via Randomized Smoothing, ICML 2019"

    sigma: float = param(_POSITIVE, help="noise standard deviation")

    def _fit(self, data: Dataset, bar: Progress) -> nn.Module:
        noise = stream(self.seed, f"{self.name}.noise")

        def loss(module: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            draw = torch.randn(x.shape, generator=noise, dtype=x.dtype).to(x.device)
            return nn.functional.cross_entropy(module(x + self.sigma * draw), y)

        module = self._network(data)
        self._epochs(module, data, loss, bar, self.name)
        return module


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistillationTraining(Recipe):
    """Defensive distillation, deployed with a softmax output at temperature 1, as published.

    Papernot, McDaniel, Wu, Jha and Swami, "Distillation as a Defense to Adversarial
    Perturbations against Deep Neural Networks", IEEE S&P 2016: a teacher is trained with a
    softmax at temperature ``T`` (cross-entropy of ``softmax(z / T)``), then a student of the
    same architecture is trained at ``T`` on the teacher's soft labels
    ``softmax(z_teacher / T)``; each for ``epochs``. At test time the temperature goes back to
    1, so the student's logits, about ``T`` times larger than a plain model's, saturate the
    softmax: the deployed module ends in ``nn.Softmax`` and the model has
    ``output="probabilities"``, most of them exactly 1.0 in float32. Gradients of the loss on
    those probabilities vanish (gradient masking), which is why the defense looked strong and
    why Carlini and Wagner (S&P 2017) broke it on the logits.

    Args:
        temperature: the distillation temperature T, >= 1 (default 100, Papernot et al.'s
            MNIST choice).
        lr: Adam's learning rate (default 3e-2, 30 times the other recipes'): ``softmax(z / T)``
            is confident only once the logits are about T times larger than a plain model's,
            and Adam moves each weight by about ``lr`` per step. Measured on the zoo's MNIST
            (CNN of width 8, 5 epochs): 72% test accuracy at 1e-3, 89% at 1e-2, 95.6% at 3e-2
            (plain training: 94.8%), with 99% of the deployed probabilities exactly 1.0.
    """

    name = "distillation"
    paper = "Papernot et al., Distillation as a Defense to Adversarial Perturbations, S&P 2016"
    output = Output.PROBABILITIES

    lr: float = real(
        3e-2, low=0.0, low_open=True, help="Adam's learning rate (30x plain: logits grow T-fold)"
    )
    temperature: float = real(100.0, low=1.0, help="distillation temperature T")

    def _deployed(self, data: Dataset) -> nn.Module:
        return nn.Sequential(self._network(data), nn.Softmax(dim=1))

    def _fit(self, data: Dataset, bar: Progress) -> nn.Module:
        t = self.temperature

        def hard(module: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            return nn.functional.cross_entropy(module(x) / t, y)

        def soft(module: nn.Module, x: Tensor, target: Tensor) -> Tensor:
            log_probs = nn.functional.log_softmax(module(x) / t, dim=1)
            return -(target * log_probs).sum(1).mean()

        teacher = self._network(data)
        self._epochs(teacher, data, hard, bar, f"{self.name}.teacher")
        with torch.no_grad():
            labels = torch.cat(
                [(teacher(x) / t).softmax(1) for x in data.x.split(max(self.batch_size, 256))]
            )
        student = self._network(data)
        self._epochs(student, data, soft, bar, f"{self.name}.student", targets=labels)
        return nn.Sequential(student, nn.Softmax(dim=1))


RECIPES: tuple[type[Recipe], ...] = (
    PlainTraining,
    DropoutTraining,
    WeightDecayTraining,
    FGSMTraining,
    PGDTraining,
    GaussianNoiseTraining,
    DistillationTraining,
)
"""Every recipe class, cheapest first."""

if len({recipe.name for recipe in RECIPES}) != len(RECIPES):
    raise RuntimeError("Two training recipes share a name.")
