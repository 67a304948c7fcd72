"""The public conformance kit, ``mallory.testing``: it passes what conforms, and names what
does not.

Third-party attacks written the way a plug-in author would, each broken in one way (it leaves
the ball, modifies its inputs, under-reports its queries, promises fewer queries than it
spends, has an undocumented parameter, is not frozen): ``check_attack`` must fail it and name
the problem. Broken systems and stages likewise for ``check_system`` and ``check_stage``. And
the built-in attacks, systems (a ``mallory.defenses`` recipe's model, defended or not) and
every stage of ``mallory.defenses.stages`` pass. (Every registered attack is checked by the
kit in ``tests/test_conformance.py``.)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import mallory
from mallory import Access, AttackResult, EvasionAttack, Norm, Oracle, Stage, System
from mallory.access.view import OracleView
from mallory.attacks.inference.base import InferenceAttack
from mallory.attacks.noise import Noise
from mallory.attacks.params import integer
from mallory.attacks.poisoning.base import PoisoningAttack
from mallory.defenses import (
    PlainTraining,
    bit_depth,
    center_crop,
    defend,
    jpeg_compression,
    label_only,
    median_smoothing,
    random_resize_pad,
    rounded_scores,
)
from mallory.errors import InputError
from mallory.systems import CallableModel, TorchModel
from mallory.testing import (
    ConformanceError,
    attack_checks,
    check_attack,
    check_stage,
    check_system,
    digits_bench,
    stage_checks,
    system_checks,
)
from mallory.zoo import Dataset, load_dataset


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def failures(check: Callable[[], None]) -> ConformanceError:
    """The ConformanceError ``check()`` raises (the test fails if it passes)."""
    with pytest.raises(ConformanceError) as info:
        check()
    return info.value


# ---------------------------------------------------------------- a plug-in attack
@dataclasses.dataclass(frozen=True, kw_only=True)
class RandomCorners(EvasionAttack):
    """Random corners of the Linf ball: ``tries`` random sign perturbations of size eps per
    sample, each queried for its label; the first that reaches the goal is kept.

    Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015
    (random sign noise, the baseline their fast gradient sign method is compared with).

    Threat model: labels only, Linf; ``tries`` queries per sample at most.
    """

    access = Access.LABELS
    norms = frozenset({Norm.LINF})
    paper = "Goodfellow et al., Explaining and Harnessing Adversarial Examples, ICLR 2015"
    fast: ClassVar[dict[str, Any]] = {"tries": 2}

    tries: int = integer(5, low=1, help="random corners tried per sample")

    def planned_queries(self, oracle: Any) -> int | None:
        return self.tries

    def _run(
        self, oracle: OracleView, x: Tensor, y: Tensor, targets: Tensor | None, noise: Noise
    ) -> Tensor:
        best = x.clone()
        standing = torch.ones(len(x), dtype=torch.bool)
        for t in range(self.tries):
            rows = (standing & (oracle.remaining() >= 1)).nonzero().squeeze(1)
            if not len(rows):
                break
            step = noise.fold("corner", t).sign(x.shape[1:], rows)
            candidate = oracle.bounds.clamp(x[rows] + oracle.eps * step)
            labels = oracle.labels(candidate, rows)
            reached = labels != y[rows] if targets is None else labels == targets[rows]
            won = (labels >= 0) & reached
            best[rows[won]] = candidate[won]
            standing[rows[won]] = False
        return best


# ---------------------------------------------------------------- each broken in one way
@dataclasses.dataclass(frozen=True, kw_only=True)
class SavesAsBytes(RandomCorners):
    """Random corners (Goodfellow et al.), rounded to 8-bit pixels after the base class
    projected them: the rounding leaves the ball."""

    def __call__(self, oracle: Oracle, x: Any, y: Any, **kw: Any) -> AttackResult:
        result = super().__call__(oracle, x, y, **kw)
        return dataclasses.replace(result, x_adv=torch.round(result.x_adv * 255) / 255)


@dataclasses.dataclass(frozen=True, kw_only=True)
class InPlace(RandomCorners):
    """Random corners (Goodfellow et al.), keeping the best candidates in the input tensor
    itself to save memory: the caller's x changes."""

    def _run(
        self, oracle: OracleView, x: Tensor, y: Tensor, targets: Tensor | None, noise: Noise
    ) -> Tensor:
        found = super()._run(oracle, x, y, targets, noise)
        x[:] = found
        return x


@dataclasses.dataclass(frozen=True, kw_only=True)
class FirstQueryOnly(RandomCorners):
    """Random corners (Goodfellow et al.), reporting only the first query of each sample."""

    def __call__(self, oracle: Oracle, x: Any, y: Any, **kw: Any) -> AttackResult:
        result = super().__call__(oracle, x, y, **kw)
        return dataclasses.replace(result, queries=result.queries.clamp_max(1))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Optimist(RandomCorners):
    """Random corners (Goodfellow et al.), announcing one query per sample whatever it tries:
    a campaign sizing budgets by planned_queries() would be misled."""

    fast: ClassVar[dict[str, Any]] = {"tries": 3}

    def planned_queries(self, oracle: Any) -> int | None:
        return 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class Undocumented(RandomCorners):
    """Random corners (Goodfellow et al.), with a scale nobody documented or validated."""

    scale: float = 1.0

    def _run(
        self, oracle: OracleView, x: Tensor, y: Tensor, targets: Tensor | None, noise: Noise
    ) -> Tensor:
        return super()._run(oracle, x, y, targets, noise)


class Unfrozen(RandomCorners):
    """Random corners (Goodfellow et al.), whose author forgot the dataclass decorator."""

    scale: float = 1.0


def test_a_conforming_plug_in_attack_passes() -> None:
    check_attack(RandomCorners)
    check_attack(RandomCorners(tries=3), quick=False)


def test_an_attack_that_leaves_the_ball_is_named() -> None:
    error = failures(lambda: check_attack(SavesAsBytes))
    assert "inside-perturbation-set" in error.names
    assert "leaves the linf ball of radius 0.2" in str(error)
    assert "reported l2 distances are not those of x_adv" in str(error)
    assert "SavesAsBytes failed" in str(error)


def test_an_attack_that_modifies_its_inputs_is_named() -> None:
    error = failures(lambda: check_attack(InPlace))
    assert "inputs-untouched" in error.names
    assert "modified the caller's x" in str(error)


def test_an_attack_that_under_reports_its_queries_is_named() -> None:
    error = failures(lambda: check_attack(FirstQueryOnly))
    assert {"counts-match-event-log", "total-query-budget"} <= set(error.names)
    assert "differ from the oracle's event log" in str(error)


def test_an_attack_that_promises_fewer_queries_than_it_spends_is_named() -> None:
    error = failures(lambda: check_attack(Optimist))
    assert error.names == ("planned-queries-kept",)
    assert "planned_queries() returned 1, but a sample got 3 queries" in str(error)


def test_an_undocumented_parameter_is_named() -> None:
    error = failures(lambda: check_attack(Undocumented))
    assert set(error.names) == {"documented", "bad-values-named"}
    message = str(error)
    assert "the parameter 'scale' of Undocumented has no help text" in message
    assert "the parameter 'scale' of Undocumented has no validation rule" in message
    assert "Undocumented accepted scale=" in message


def test_an_attack_that_is_not_frozen_is_named() -> None:
    error = failures(lambda: check_attack(Unfrozen))
    assert "frozen-keyword-only-dataclass" in error.names
    message = str(error)
    assert "Unfrozen is not a dataclass of its own" in message
    assert "'scale'" in message
    assert "can be changed after construction (setting 'scale' worked)" in message


def test_every_failure_is_listed_not_only_the_first() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Everything(InPlace):
        """Nothing here names its paper's author."""

        paper = ""
        scale: float = 1.0

        def __call__(self, oracle: Oracle, x: Any, y: Any, **kw: Any) -> AttackResult:
            result = super().__call__(oracle, x, y, **kw)
            return dataclasses.replace(result, queries=result.queries.clamp_max(1))

    error = failures(lambda: check_attack(Everything))
    assert {"documented", "bad-values-named", "inputs-untouched", "counts-match-event-log"} <= set(
        error.names
    )
    assert "names no paper" in str(error)
    assert error.checks == len(attack_checks(Everything))
    assert isinstance(error, AssertionError)


def test_an_attack_that_crashes_is_reported_once_per_run() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Crashes(RandomCorners):
        """Random corners (Goodfellow et al.) that divide by zero."""

        def _run(
            self, oracle: OracleView, x: Tensor, y: Tensor, targets: Tensor | None, noise: Noise
        ) -> Tensor:
            raise ZeroDivisionError("no corners today")

    error = failures(lambda: check_attack(Crashes))
    message = str(error)
    assert message.count("the base run of Crashes") == 1  # told once, for every check it broke
    assert "raised ZeroDivisionError: no corners today" in message


def test_checks_one_by_one_are_named_and_documented() -> None:
    checks = attack_checks(RandomCorners)
    assert len({c.name for c in checks}) == len(checks)
    assert all(c.explains and c.subject == "RandomCorners" for c in checks)
    assert "refused-without-access" not in {c.name for c in checks}  # labels are the least
    for check in checks[:4]:  # the class checks run no attack
        check()


def test_attack_checks_on_a_bench_of_ones_own() -> None:
    bench = digits_bench(12)
    check_attack(RandomCorners, system=bench.system, x=bench.x, y=bench.y)
    with pytest.raises(InputError, match="pass system= too"):
        check_attack(RandomCorners, x=bench.x)
    with pytest.raises(InputError, match="at least 8 samples"):
        check_attack(RandomCorners, system=bench.system, x=bench.x[:3], y=bench.y[:3])
    with pytest.raises(InputError, match="check_attack needs an attack"):
        check_attack(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name", ["fgsm", "jacobian-extraction", "label-flip", "confidence-membership"]
)
def test_built_in_attacks_of_every_kind_pass(name: str) -> None:
    check_attack(name)
    check_attack(mallory.attack_class(name))


# ---------------------------------------------------------------- the other kinds
@dataclasses.dataclass(frozen=True, kw_only=True)
class QuietFlip(PoisoningAttack):
    """Label flipping (Biggio et al.) that reports no change: its result hides the rows it
    flipped."""

    paper = "Biggio et al., Support Vector Machines Under Adversarial Label Noise, ACML 2011"

    def _poison(
        self, x: Tensor, y: Tensor, data: Dataset, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        y[:3] = (y[:3] + 1) % len(data.class_names)
        return x, y, torch.zeros(0, dtype=torch.int64)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Jittery(InferenceAttack):
    """Membership by confidence (Yeom et al.), with a tie-breaking jitter from torch's global
    generator: the same seed gives other scores."""

    access = Access.SCORES
    paper = "Yeom et al., Privacy Risk in Machine Learning, IEEE CSF 2018"

    def _score(self, oracle: OracleView, x: Tensor, y: Tensor, rng: int) -> Tensor:
        probs = oracle.scores(x)
        return probs.gather(1, y[:, None]).squeeze(1) + 1e-3 * torch.rand(len(x))


def test_other_kinds_are_checked_for_what_applies_to_them() -> None:
    error = failures(lambda: check_attack(QuietFlip))
    assert error.names == ("result-fields",)
    assert "3 rows changed that result.changed does not list" in str(error)
    error = failures(lambda: check_attack(Jittery))
    assert error.names == ("same-seed-same-result",)
    names = {c.name for c in attack_checks(Jittery)}
    assert {"query-budget", "counts-match-event-log", "refused-without-access"} <= names


# ---------------------------------------------------------------- systems
def module() -> nn.Module:
    return digits_bench().system.module  # type: ignore[attr-defined, no-any-return]


def callable_system(fn: Callable[[Tensor], Tensor], **kw: Any) -> CallableModel:
    settings: dict[str, Any] = {
        "input_shape": (1, 8, 8),
        "num_classes": 10,
        "bounds": (0.0, 1.0),
        "output": "logits",
        "name": "broken",
    }
    return CallableModel(fn, **{**settings, **kw})


@pytest.fixture(scope="module")
def x() -> Tensor:
    return digits_bench(20).x


def test_a_system_with_the_wrong_output_shape_is_named(x: Tensor) -> None:
    net = module()
    system = callable_system(lambda t: torch.cat([net(t), net(t)[:, :1]], 1))
    error = failures(lambda: check_system(system, x))
    assert "output-shape" in error.names
    assert "answer() returned outputs of shape (20, 11) for 20 inputs; expected (20, 10)" in str(
        error
    )


def test_a_nondeterministic_system_declared_deterministic_is_named(x: Tensor) -> None:
    net = module()
    system = callable_system(lambda t: net(t) + torch.randn(len(t), 10))
    error = failures(lambda: check_system(system, x))
    assert "deterministic-as-declared" in error.names
    assert "answered the same inputs differently twice" in str(error)
    # declared randomized, the same system passes those checks
    honest = callable_system(lambda t: net(t) + torch.randn(len(t), 10), deterministic=False)
    check_system(honest, x)


def test_probabilities_that_do_not_sum_to_one_are_named(x: Tensor) -> None:
    net = module()
    system = callable_system(lambda t: torch.sigmoid(net(t)), output="probabilities")
    error = failures(lambda: check_system(system, x))
    assert error.names == ("probabilities-sum-to-one",)
    assert "do not sum to 1" in str(error)


def test_a_system_that_shows_more_than_it_declares_is_named(x: Tensor) -> None:
    net = module()
    system = callable_system(lambda t: net(t), exposes="label")
    error = failures(lambda: check_system(system, x))
    assert error.names == ("exposure-as-declared",)
    assert "carry more than the label" in str(error)


def test_a_stage_declared_differentiable_without_a_gradient_is_named(x: Tensor) -> None:
    def numpy_blur(t: Tensor) -> Tensor:
        array = t.detach().numpy()
        return torch.from_numpy(np.clip(array * 0.5 + 0.25, 0.0, 1.0))

    stage = Stage(name="numpy-blur", fn=numpy_blur)
    error = failures(lambda: check_stage(stage, x))
    assert error.names == ("differentiable-as-declared",)
    assert "carries no gradient" in str(error)
    # inside a system, the same stage is named too
    system = System(
        [stage, *TorchModel(module(), input_shape=(1, 8, 8)).stages],
        input_shape=(1, 8, 8),
        bounds=(0.0, 1.0),
        num_classes=10,
    )
    assert "gradients-as-declared" in failures(lambda: check_system(system, x)).names


def test_a_stage_that_modifies_its_input_or_leaves_the_bounds_is_named(x: Tensor) -> None:
    def brighten(t: Tensor) -> Tensor:
        return t.add_(0.5)

    error = failures(lambda: check_stage(Stage(name="brighten", fn=brighten), x))
    assert {"inputs-untouched", "bounds-kept"} <= set(error.names)
    assert "modified its input in place" in str(error)
    assert "leave the bounds" in str(error)


def test_a_randomized_stage_declared_deterministic_is_named(x: Tensor) -> None:
    stage = random_resize_pad(0.5)
    lying = dataclasses.replace(stage, deterministic=True)
    assert "deterministic-as-declared" in failures(lambda: check_stage(lying, x)).names
    check_stage(stage, x)


# ---------------------------------------------------------------- the built-in ones pass
@pytest.fixture(scope="module")
def trained() -> TorchModel:
    recipe = PlainTraining(architecture="mlp", width=16, epochs=1, lr=1e-2)
    return recipe.train(load_dataset("digits", "train").head(200), progress=False)


def test_a_recipes_model_and_its_defended_systems_pass(trained: TorchModel, x: Tensor) -> None:
    check_system(trained, x)
    check_system(defend(trained, bit_depth(3)), x)
    check_system(defend(trained, median_smoothing(3), label_only()), x)
    check_system(defend(trained, random_resize_pad(0.75)), x)
    # rounding breaks the sum to 1 by design: the tolerance says how much
    rounded = defend(trained, rounded_scores(2))
    assert failures(lambda: check_system(rounded, x)).names == ("probabilities-sum-to-one",)
    check_system(rounded, x, sum_tolerance=0.05)


INPUT_STAGES: dict[str, Callable[[], Stage]] = {
    "center_crop": lambda: center_crop(0.75),
    "bit_depth": lambda: bit_depth(3),
    "jpeg_compression": lambda: jpeg_compression(50),
    "median_smoothing": lambda: median_smoothing(3),
    "random_resize_pad": lambda: random_resize_pad(0.75),
}
OUTPUT_STAGES: dict[str, Callable[[], Stage]] = {
    "label_only": label_only,
    "rounded_scores": lambda: rounded_scores(2),
}


def test_every_defense_stage_is_listed() -> None:
    import mallory.defenses.stages as stages

    made = {
        name
        for name in dir(stages)
        if not name.startswith("_")
        and callable(getattr(stages, name))
        and getattr(getattr(stages, name), "__module__", "") == stages.__name__
        and name not in {"defend", "OutputStage"}
    }
    assert made == set(INPUT_STAGES) | set(OUTPUT_STAGES)


@pytest.mark.parametrize("name", sorted(INPUT_STAGES))
def test_defense_input_stages_pass(name: str, x: Tensor) -> None:
    check_stage(INPUT_STAGES[name](), x)


@pytest.mark.parametrize("name", sorted(OUTPUT_STAGES))
def test_defense_output_stages_pass(name: str, x: Tensor) -> None:
    with torch.no_grad():
        probabilities = module()(x).softmax(1)
    check_stage(OUTPUT_STAGES[name](), probabilities)
    names = {c.name for c in stage_checks(OUTPUT_STAGES[name](), probabilities)}
    assert "exposure-as-declared" in names


def test_system_and_stage_checks_refuse_bad_arguments(x: Tensor) -> None:
    system = digits_bench().system
    with pytest.raises(InputError, match="needs a mallory System"):
        check_system("model", x)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="takes"):
        check_system(system, x.flatten(1))
    with pytest.raises(InputError, match="outside the system's bounds"):
        check_system(system, x + 2)
    with pytest.raises(InputError, match="class indices"):
        check_system(system, x, y=torch.full((len(x),), 10))
    with pytest.raises(InputError, match="needs a mallory Stage"):
        check_stage(lambda t: t, x)
    with pytest.raises(InputError, match="bounds"):
        check_stage(bit_depth(3), x + 2)
    assert {c.name for c in system_checks(system, x)} >= {
        "output-shape",
        "deterministic-as-declared",
        "works-through-oracle",
    }


def test_the_documentation_runs() -> None:
    """Every Python block of docs/testing.md, in order, in one namespace."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "testing.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 4
    namespace: dict[str, Any] = {"__name__": "docs_testing"}
    for block in blocks:
        exec(compile(block, "docs/testing.md", "exec", dont_inherit=True), namespace)
    assert [c.name for c in namespace["CHECKS"]] == [c.name for c in attack_checks(RandomCorners)]
