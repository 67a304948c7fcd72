"""APGD: the checkpoint schedule, the halving rule, DLR, and known outcomes on the MNIST CNN."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from mallory import InputError, Oracle, TorchModel, create, white_box
from mallory.attacks.evasion.apgd import APGD, APGDLoss, StepSchedule, checkpoints
from mallory.attacks.evasion.losses import dlr
from mallory.attacks.evasion.result import AttackResult

MNIST_SAMPLES = 100


def assert_inside(result: AttackResult, x: torch.Tensor, norm: str, eps: float) -> None:
    delta = (result.x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(p=2, dim=1)
    assert float(size.max()) <= eps + (1e-6 if norm == "linf" else 1e-5)
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0


def assert_really_wrong(model: TorchModel, result: AttackResult) -> None:
    predicted = model.forward(result.x_adv).argmax(1)
    goal = predicted != result.labels if result.targets is None else predicted == result.targets
    assert torch.equal(goal, result.success)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads and, on a busy machine, lose a lot to
    their synchronization; the thread count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_problem(n: int = 48) -> tuple[TorchModel, torch.Tensor, torch.Tensor]:
    """A fixed random linear classifier on 8x8 inputs in [0, 1], labelled by itself."""
    gen = torch.Generator().manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        layer[1].weight.copy_(torch.randn(10, 64, generator=gen))
        layer[1].bias.zero_()
    model = TorchModel(layer, input_shape=(1, 8, 8))
    x = torch.rand(n, 1, 8, 8, generator=gen)
    return model, x, model.forward(x).argmax(1)


# ---------------------------------------------------------------- the step-size schedule
def test_checkpoints_follow_the_paper() -> None:
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (then 1.05, past the end)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(200) == [44, 82, 114, 140, 160, 174, 186, 198]
    assert checkpoints(10) == [3, 5, 6, 7, 8, 9]  # ceil(2.2), ceil(4.1), ceil(5.7), ...
    assert checkpoints(1) == [] and checkpoints(2) == [1]
    for steps in range(1, 300):
        w = checkpoints(steps)
        assert w == sorted(set(w)) and all(0 < c < steps for c in w)


def run_schedule(losses: list[float], steps: int = 100) -> list[float]:
    """The step size after each iteration, for one row seeing ``losses``."""
    schedule = StepSchedule(steps, 0.75, torch.tensor([1.0]))
    sizes = []
    for value in losses:
        schedule.observe(torch.tensor([value]))
        sizes.append(float(schedule.size[0]))
    return sizes


def halvings(sizes: list[float]) -> list[int]:
    return [k for k in range(1, len(sizes)) if sizes[k] < sizes[k - 1]]


def test_rising_loss_keeps_the_step() -> None:
    assert halvings(run_schedule([float(k) for k in range(100)])) == []


def test_flat_loss_halves_at_every_checkpoint() -> None:
    sizes = run_schedule([0.0] * 100)
    assert halvings(sizes) == checkpoints(100)
    assert sizes[-1] == 2.0**-8


def test_too_few_rising_steps_halve() -> None:
    # the loss rises on every other step only (below rho = 0.75), but keeps setting records
    losses = [k / 2 if k % 2 == 0 else -1.0 for k in range(100)]
    rises = sum(losses[k] > losses[k - 1] for k in range(1, 23))
    assert rises < 0.75 * 22 and max(losses[1:23]) > losses[0]
    assert halvings(run_schedule(losses)) == checkpoints(100)


def test_stalled_best_halves_unless_halved_at_the_last_checkpoint() -> None:
    # every step rises (condition 1 never holds), but the best loss stays the first one
    # (condition 2): halved at the first checkpoint, not at the second (the step size changed
    # since the first), halved again at the third, ...
    losses = [1000.0] + [float(k) for k in range(1, 100)]
    window = checkpoints(100)
    assert halvings(run_schedule(losses)) == window[::2]


def test_a_halved_row_restarts_from_its_best_point() -> None:
    schedule = StepSchedule(100, 0.75, torch.tensor([1.0, 1.0]))
    improved, halved = schedule.observe(torch.tensor([5.0, 5.0]))
    assert bool(improved.all()) and halved is None
    for k in range(1, 22):
        # row 0 rises every step; row 1 falls every step
        improved, halved = schedule.observe(torch.tensor([5.0 + k, 5.0 - k]))
        assert improved.tolist() == [True, False] and halved is None
    improved, halved = schedule.observe(torch.tensor([30.0, 4.0]))  # iteration 22: checkpoint
    assert halved is not None and halved.tolist() == [False, True]
    assert schedule.size.tolist() == [1.0, 0.5] and schedule.best.tolist() == [30.0, 5.0]


def test_schedule_on_a_toy_objective() -> None:
    """Sign ascent on f(x) = -(x - 0.3)^2 over [-1, 1], as APGD steps in Linf: the big first
    step overshoots and oscillates, the rule halves it at checkpoints only, and x settles."""
    steps = 100
    schedule = StepSchedule(steps, 0.75, torch.tensor([2.0]))
    x, best_x, sizes = torch.tensor([-1.0]), torch.tensor([-1.0]), []
    for _ in range(steps):
        improved, halved = schedule.observe(-((x - 0.3) ** 2))
        best_x = torch.where(improved, x, best_x)
        if halved is not None:
            x = torch.where(halved, best_x, x)
        sizes.append(float(schedule.size[0]))
        x = (x + schedule.size * torch.sign(0.3 - x)).clamp(-1.0, 1.0)
    assert set(halvings(sizes)) <= set(checkpoints(steps))
    assert len(halvings(sizes)) >= 5
    assert abs(float(best_x[0]) - 0.3) < 0.05


# ---------------------------------------------------------------- DLR
def test_dlr_is_invariant_to_shift_and_scale() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (64,), generator=gen)
    t = (y + 1 + torch.randint(0, 9, (64,), generator=gen)) % 10
    for targets in (None, t):
        plain = dlr(logits, y, targets)
        for scale, shift in ((7.0, 0.0), (0.01, 0.0), (3.0, -5.0)):
            torch.testing.assert_close(dlr(scale * logits + shift, y, targets), plain)


def test_dlr_values() -> None:
    z = torch.tensor([[4.0, 3.0, 1.0, 0.0]])
    # untargeted, y = 0 (top): -(4 - 3) / (4 - 1)
    assert float(dlr(z, torch.tensor([0]))) == pytest.approx(-1 / 3)
    # untargeted, y = 2: -(1 - 4) / (4 - 1)
    assert float(dlr(z, torch.tensor([2]))) == pytest.approx(1.0)
    # targeted, y = 0, t = 3: -(4 - 0) / (4 - (1 + 0) / 2)
    assert float(dlr(z, torch.tensor([0]), torch.tensor([3]))) == pytest.approx(-4 / 3.5)


# ---------------------------------------------------------------- parameters
def test_parameters_are_validated() -> None:
    attack = APGD()
    assert (attack.steps, attack.restarts, attack.rho, attack.loss) == (100, 1, 0.75, None)
    assert attack.target_classes == 9 and attack.stop_early
    assert create("apgd", loss="dlr-targeted").loss is APGDLoss.DLR_TARGETED
    with pytest.raises(InputError, match="'steps' parameter of APGD must be an int >= 1"):
        APGD(steps=0)
    with pytest.raises(InputError, match="'rho' parameter of APGD"):
        APGD(rho=0.0)
    with pytest.raises(InputError, match="'rho' parameter of APGD"):
        APGD(rho=1.5)
    with pytest.raises(InputError, match="'loss' parameter of APGD must be one of 'ce', 'dlr'"):
        APGD(loss="margin")  # type: ignore[arg-type]


def test_dlr_needs_enough_classes(one_thread: None) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    model = TorchModel(module, input_shape=(1, 2, 2))
    x = torch.rand(5, 1, 2, 2, generator=gen)
    y = model.forward(x).argmax(1)
    oracle = Oracle(model, white_box("linf", 0.1))
    create("apgd", loss="dlr", steps=2)(oracle, x, y)  # 3 classes: enough for DLR
    oracle = Oracle(model, white_box("linf", 0.1))
    with pytest.raises(InputError, match="needs at least 4 classes"):
        create("apgd", loss="dlr-targeted", steps=2)(oracle, x, y)
    assert oracle.total_queries == 0


# ---------------------------------------------------------------- on a tiny problem
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("loss", ["ce", "dlr", "dlr-targeted"])
def test_batch_independence_and_the_ball(one_thread: None, norm: str, loss: str) -> None:
    model, x, y = tiny_problem()
    eps = 0.05 if norm == "linf" else 0.3
    attack = APGD(steps=10, restarts=2, loss=APGDLoss(loss), target_classes=3)
    whole = attack(Oracle(model, white_box(norm, eps)), x, y, rng=3)
    split = APGD(steps=10, restarts=2, loss=APGDLoss(loss), target_classes=3, batch_size=20)(
        Oracle(model, white_box(norm, eps)), x, y, rng=3
    )
    assert 0 < int(whole.success.sum()) < len(x)  # survivors: restarts and targets matter
    torch.testing.assert_close(whole.x_adv, split.x_adv, rtol=0, atol=1e-6)
    assert torch.equal(whole.gradients, split.gradients)
    assert_inside(whole, x, norm, eps)
    assert_really_wrong(model, whole)
    runs = 2 * (3 if loss == "dlr-targeted" else 1)
    extra = 1 if loss == "dlr-targeted" else 0  # the clean query that ranks the classes
    assert int(whole.gradients.max()) <= runs * 10 + extra
    assert torch.equal(whole.queries, whole.gradients)


def test_fixed_budget_without_stop_early(one_thread: None) -> None:
    model, x, y = tiny_problem()
    threat = white_box("linf", 0.05)
    fixed = APGD(steps=10, stop_early=False)(Oracle(model, threat), x, y, rng=0)
    early = APGD(steps=10)(Oracle(model, threat), x, y, rng=0)
    assert bool((fixed.gradients == 10).all())
    assert bool((early.gradients <= 10).all()) and int(early.gradients.sum()) < 10 * len(x)
    assert torch.equal(fixed.success, early.success)  # same trajectories, same first successes
    assert_really_wrong(model, fixed)


def test_spent_budget_stops_the_attack_without_crashing(one_thread: None) -> None:
    model, x, y = tiny_problem()
    threat = white_box("linf", 0.02, queries_per_sample=3)
    result = APGD(steps=40, restarts=3, loss=APGDLoss.DLR_TARGETED)(Oracle(model, threat), x, y)
    assert int(result.queries.max()) <= 3 and int(result.gradients.max()) <= 3
    assert_inside(result, x, "linf", 0.02)


# ---------------------------------------------------------------- the MNIST CNN
@pytest.fixture(scope="module")
def mnist() -> tuple[TorchModel, torch.Tensor, torch.Tensor]:
    from mallory.zoo import load_dataset, load_model

    model = load_model("mnist-cnn")
    assert isinstance(model, TorchModel)
    data = load_dataset("mnist", split="test")
    return model, data.x[:MNIST_SAMPLES], data.y[:MNIST_SAMPLES]


@pytest.mark.slow
def test_apgd_ce_at_linf_03_breaks_the_mnist_cnn(
    mnist: tuple[TorchModel, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = mnist
    result = create("apgd")(Oracle(model, white_box("linf", 0.3)), x, y, rng=0)
    assert result.robust_accuracy <= 0.01
    assert bool((result.gradients <= 100).all())
    assert float(result.gradients.double().mean()) < 10  # stops at the first success
    assert_inside(result, x, "linf", 0.3)
    assert_really_wrong(model, result)


@pytest.mark.slow
def test_apgd_beats_pgd_at_equal_gradients(
    mnist: tuple[TorchModel, torch.Tensor, torch.Tensor],
) -> None:
    """At eps 0.15 and 20 gradient evaluations per sample (at eps 0.1 both attacks reach the
    same plateau of this CNN, about 0.62, and a tie is decided by the random start)."""
    model, x, y = mnist
    threat = white_box("linf", 0.15)
    apgd = create("apgd", steps=20)(Oracle(model, threat), x, y, rng=0)
    pgd = create("pgd", steps=20)(Oracle(model, threat), x, y, rng=0)
    assert bool((apgd.gradients <= 20).all()) and bool((pgd.gradients == 20).all())
    assert apgd.robust_accuracy <= pgd.robust_accuracy
    assert_inside(apgd, x, "linf", 0.15)
    assert_really_wrong(model, apgd)


@pytest.mark.slow
def test_l2_apgd_stays_in_the_ball(mnist: tuple[TorchModel, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = mnist
    threat = white_box("l2", 2.0)
    result = create("apgd", steps=20)(Oracle(model, threat), x[:50], y[:50], rng=0)
    assert result.robust_accuracy < 0.5
    assert_inside(result, x[:50], "l2", 2.0)
    assert_really_wrong(model, result)


@pytest.mark.slow
def test_targeted_success_lands_on_the_target(
    mnist: tuple[TorchModel, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = mnist
    threat = white_box("linf", 0.3, goal="targeted")
    result = create("apgd", steps=20)(Oracle(model, threat), x[:50], y[:50], rng=0)
    assert result.params["loss"] is None  # the targeted DLR by default
    assert result.targets is not None and result.success_rate > 0.8
    hit = result.success
    assert torch.equal(result.predictions[hit], result.targets[hit])
    assert_inside(result, x[:50], "linf", 0.3)
    assert_really_wrong(model, result)


@pytest.mark.slow
def test_apgd_t_tries_the_likeliest_wrong_classes(
    mnist: tuple[TorchModel, torch.Tensor, torch.Tensor],
) -> None:
    """Under an untargeted threat model, loss='dlr-targeted' tries the most likely wrong
    classes in turn, each on the samples still standing; any wrong class is a success."""
    model, x, y = mnist
    x, y = x[:50], y[:50]
    threat = white_box("linf", 0.15)
    one = create("apgd", steps=10, loss="dlr-targeted", target_classes=1)
    three = create("apgd", steps=10, loss="dlr-targeted", target_classes=3)
    first = one(Oracle(model, threat), x, y, rng=0)
    more = three(Oracle(model, threat), x, y, rng=0)
    assert first.targets is None and more.targets is None
    assert bool((more.success | ~first.success).all())  # the first target's successes stay
    assert int(more.success.sum()) > int(first.success.sum())
    assert int(more.gradients.max()) <= 1 + 3 * 10
    # a sample broken by the first target was never attacked again
    assert torch.equal(more.gradients[first.success], first.gradients[first.success])
    assert_really_wrong(model, more)
    with torch.no_grad():
        wrong_at_start = model.forward(x).argmax(1) != y
    assert bool((more.gradients[wrong_at_start] == 1).all())  # misclassified: one query
