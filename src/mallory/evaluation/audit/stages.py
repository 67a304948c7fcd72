"""The six stages of the pipeline of defense failures, each a function of the two benches.

Every stage measures the defended system and, where a comparison says something, the
baseline under the same attacks, and returns an :class:`~mallory.report.audit_model.AuditStage`
with its status, a plain-language finding and the evidence. Measurements later stages reuse
(the adaptive attacks, the black-box ones) are kept in ``memo``.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import torch

from mallory import flags as codes
from mallory.attacks.base import create
from mallory.attacks.evasion.base import EvasionAttack
from mallory.evaluation.audit.bench import Bench, Measured, union
from mallory.flags import Flag
from mallory.report.audit_model import FAILED, NOT_MEASURED, PASSED, STAGES, AuditRow, AuditStage
from mallory.report.fmt import pct
from mallory.report.model import Curve
from mallory.systems.base import Output
from mallory.threat import (
    Norm,
    ThreatModel,
    label_only,
    no_knowledge,
    score_based,
    transfer,
    white_box,
)

if TYPE_CHECKING:
    from mallory.evaluation.audit.runner import Audit

Memo = dict[str, Any]


# shares are counts over the samples, held to thresholds such as 0.05: a gain of exactly the
# margin (64% against 59%) must not fail on the last bit of a float sum
_ROUNDING = 1e-9


def _below(value: float, limit: float) -> bool:
    return value < limit - _ROUNDING


def _above(value: float, limit: float) -> bool:
    return value > limit + _ROUNDING


def _stage(number: int, status: str, finding: str, **evidence: Any) -> AuditStage:
    _, name, question = STAGES[number - 1]
    return AuditStage(number, name, question, status, finding, **evidence)


def _row(
    label: str, defended: Measured, baseline: Measured | None = None, detail: str = ""
) -> AuditRow:
    notes = list(defended.skipped)
    if defended.flags:
        notes += [f.code for f in defended.flags]
    text = "; ".join(filter(None, [detail, *notes]))
    return AuditRow(
        label,
        defended.robust if defended.measured else math.nan,
        baseline.robust if baseline is not None and baseline.measured else math.nan,
        text,
    )


def _white(audit: Audit, *, adaptive: bool, eps: float | None = None) -> ThreatModel:
    return white_box(audit.norm, audit.eps if eps is None else eps, adaptive=adaptive)


def _pair(
    audit: Audit, memo: Memo, key: str, label: str, attacks: list[tuple[ThreatModel, EvasionAttack]]
) -> tuple[Measured, Measured]:
    """The same attacks on the defended system and the baseline (cached by ``key``)."""
    if key not in memo:
        memo[key] = (
            memo["defended"].measure(label, attacks),
            memo["baseline"].measure(label, attacks),
        )
    pair: tuple[Measured, Measured] = memo[key]
    return pair


# ---------------------------------------------------------------- 1. no effect
def standard_attacks(audit: Audit) -> list[tuple[ThreatModel, EvasionAttack]]:
    """FGSM and PGD with cross-entropy, by an attacker who ignores the defense (its gradients
    skip the defense's stages): what a naive evaluation runs."""
    threat = _white(audit, adaptive=False)
    return [
        (threat, create("fgsm")),
        (threat, create("pgd", steps=audit.steps, stop_early=True)),
    ]


def no_effect(audit: Audit, memo: Memo) -> AuditStage:
    defended, baseline = _pair(audit, memo, "standard", "standard", standard_attacks(audit))
    if not defended.measured or not baseline.measured:
        return _stage(
            1,
            NOT_MEASURED,
            "The standard white-box attacks could not run: "
            + "; ".join(defended.skipped + baseline.skipped),
        )
    gain = defended.robust - baseline.robust
    rows = [_row("FGSM and PGD, defense-unaware (worst case)", defended, baseline)]
    if _below(gain, audit.margin):
        return _stage(
            1,
            FAILED,
            f"Under the standard attacks the defended system keeps {pct(defended.robust)} robust "
            f"accuracy against the baseline's {pct(baseline.robust)}: a gain of {pct(gain)}, "
            f"less than the {pct(audit.margin)} a defense must show. It has no effect on "
            "adversarial examples.",
            rows=rows,
            flags=defended.flags,
        )
    return _stage(
        1,
        PASSED,
        f"Under the standard attacks the defended system keeps {pct(defended.robust)} robust "
        f"accuracy against the baseline's {pct(baseline.robust)} (+{pct(gain)}): it changes "
        "something. Whether that is robustness, the next stages tell.",
        rows=rows,
        flags=defended.flags,
    )


# ---------------------------------------------------------------- 2. clean accuracy
def clean_accuracy(audit: Audit, memo: Memo) -> AuditStage:
    defended, baseline = memo["defended"], memo["baseline"]
    drop = baseline.clean_accuracy - defended.clean_accuracy
    row = AuditRow(
        "clean accuracy",
        defended.clean_accuracy,
        baseline.clean_accuracy,
        f"drop {pct(drop)} (tolerance {pct(audit.tolerance)})",
    )
    if _above(drop, audit.tolerance):
        return _stage(
            2,
            FAILED,
            f"The defense costs {pct(drop)} of clean accuracy ({pct(defended.clean_accuracy)} "
            f"against {pct(baseline.clean_accuracy)}), more than the {pct(audit.tolerance)} "
            "tolerated: it costs too much to deploy.",
            rows=[row],
        )
    return _stage(
        2,
        PASSED,
        f"The defense costs {pct(max(drop, 0.0))} of clean accuracy, within the "
        f"{pct(audit.tolerance)} tolerated.",
        rows=[row],
    )


# ---------------------------------------------------------------- 3. adaptive attacker
def adaptive_wrap(
    audit: Audit, bench: Bench, inner: EvasionAttack
) -> tuple[EvasionAttack, list[str]]:
    """The inner attack with what an adaptive attacker adds for this system: BPDA through the
    parts named, the logits under a final softmax, EOT over its randomness."""
    attack, how = inner, []
    if audit.straight_through and bench.system is audit.defended:  # parts of the defense
        attack = create("bpda", attack=attack, parts=list(audit.straight_through))
        how.append("BPDA through " + ", ".join(audit.straight_through))
    system = bench.system
    if system.output is Output.PROBABILITIES and system.softmax_part() is not None:
        attack = create("logits", attack=attack)
        how.append("the logits under the softmax")
    if bench.judge.randomized:
        attack = create("eot", attack=attack, draws=audit.draws)
        how.append(f"EOT over {audit.draws} draws")
    return attack, how


def adaptive_attacks(
    audit: Audit, bench: Bench
) -> tuple[list[tuple[ThreatModel, EvasionAttack]], list[str]]:
    threat = _white(audit, adaptive=True)
    inner = [
        create("apgd", steps=audit.steps, loss="ce"),
        create("pgd", steps=audit.steps, loss="margin", stop_early=True),
    ]
    if bench.system.num_classes >= 3:
        inner.insert(1, create("apgd", steps=audit.steps, loss="dlr"))
    out: list[tuple[ThreatModel, EvasionAttack]] = []
    how: list[str] = []
    for attack in inner:
        wrapped, how = adaptive_wrap(audit, bench, attack)
        out.append((threat, wrapped))
    return out, how


def adaptive(audit: Audit, memo: Memo) -> AuditStage:
    if "adaptive" not in memo:
        defended_attacks, how = adaptive_attacks(audit, memo["defended"])
        baseline_attacks, _ = adaptive_attacks(audit, memo["baseline"])
        memo["adaptive"] = (
            memo["defended"].measure("adaptive", defended_attacks),
            memo["baseline"].measure("adaptive", baseline_attacks),
        )
        memo["adaptive_how"] = how
    defended, baseline = memo["adaptive"]
    how = memo["adaptive_how"]
    if not defended.measured:
        return _stage(
            3,
            NOT_MEASURED,
            "No gradient attack could run on the defended system (a white-box attacker needs "
            "gradients): " + "; ".join(defended.skipped),
        )
    method = "APGD-CE, APGD-DLR and PGD with a margin loss" + (
        f", with {', '.join(how)}" if how else ""
    )
    rows = [_row(f"adaptive: {method} (worst case)", defended, baseline)]
    for result in defended.results:
        rows.append(
            AuditRow(
                f"  {_describe(result.params, result.attack)}",
                1.0 - _broken_share(memo["defended"], result),
                math.nan,
                "; ".join(f.code for f in result.flags),
            )
        )
    gain = defended.robust - (baseline.robust if baseline.measured else 0.0)
    if _below(gain, audit.margin):
        return _stage(
            3,
            FAILED,
            f"Attacked end to end ({method}), the defended system keeps {pct(defended.robust)} "
            f"robust accuracy against the baseline's {pct(baseline.robust)}: a gain of "
            f"{pct(gain)}, less than the {pct(audit.margin)} a defense must show. The defense "
            "does not stop an adaptive attacker.",
            rows=rows,
            flags=defended.flags,
        )
    return _stage(
        3,
        PASSED,
        f"Attacked end to end ({method}), the defended system keeps {pct(defended.robust)} "
        f"robust accuracy against the baseline's {pct(baseline.robust)}.",
        rows=rows,
        flags=defended.flags,
    )


def _broken_share(bench: Bench, result: Any) -> float:
    """The share of the bench's samples broken by one attack alone (clean mistakes too)."""
    broken = ~bench.correct
    rows = bench.correct.nonzero().squeeze(1)
    broken = broken.clone()
    broken[rows[result.success.cpu()]] = True
    return float(broken.double().mean())


def _describe(params: dict[str, Any], name: str) -> str:
    inner = params.get("attack")
    if isinstance(inner, dict) and "name" in inner:
        return f"{name}({_describe(inner, inner['name'])})"
    loss = params.get("loss")
    return f"{name}" + (f" [{loss}]" if loss else "")


# ---------------------------------------------------------------- 4. attack algorithms
def black_box(audit: Audit, memo: Memo) -> dict[str, tuple[Measured, Measured]]:
    """Score-based, decision-based and transfer attacks, each on all samples."""
    if "black_box" in memo:
        found: dict[str, tuple[Measured, Measured]] = memo["black_box"]
        return found
    norm, eps, queries = audit.norm, audit.eps, audit.queries
    families: dict[str, list[tuple[ThreatModel, EvasionAttack]]] = {
        "score-based (Square)": [
            (score_based(norm, eps, queries=queries), create("square", n_queries=queries))
        ],
        "decision-based (HopSkipJump)": [
            (
                label_only(norm, eps, queries=queries),
                create("hopskipjump", max_queries=queries, batch_starts=False),
            )
        ],
    }
    baseline = memo["baseline"].system
    surrogate = _baseline_surrogate(baseline)
    if surrogate is not None:
        families["transfer (PGD on the baseline)"] = [
            (
                transfer(norm, eps),
                create(
                    "transfer",
                    surrogate=surrogate,
                    attack={"name": "pgd", "params": {"steps": audit.steps}},
                ),
            )
        ]
    found = {}
    for label, attacks in families.items():
        found[label] = (
            memo["defended"].measure(label, attacks),
            memo["baseline"].measure(label, attacks),
        )
    memo["black_box"] = found
    return found


def _baseline_surrogate(system: Any) -> Any:
    """The baseline, as a surrogate the attacker owns (the undefended model it could train)."""
    from torch import nn

    from mallory.attacks.surrogate import Architecture, Surrogate

    module = getattr(system, "module", None)
    if not isinstance(module, nn.Module) or system.output is not Output.LOGITS:
        return None
    return Surrogate(
        module=module,
        input_shape=system.input_shape,
        bounds=system.bounds,
        num_classes=system.num_classes,
        architecture=Architecture.MLP,
        source="own-data",
    )


def attack_algorithms(audit: Audit, memo: Memo) -> AuditStage:
    adaptive(audit, memo)
    gradient, gradient_base = memo["adaptive"]
    standard, standard_base = _pair(audit, memo, "standard", "standard", standard_attacks(audit))
    families = black_box(audit, memo)
    grad = union("gradient", [gradient, standard])
    rows = [
        _row(
            "gradient (standard and adaptive)",
            grad,
            union("gradient", [gradient_base, standard_base]),
        )
    ]
    for label, (defended, baseline) in families.items():
        rows.append(_row(label, defended, baseline))
    everything = union("all", [grad, *(d for d, _ in families.values())])
    rows.append(_row("worst case over every algorithm", everything))
    if not everything.measured:
        return _stage(4, NOT_MEASURED, "No attack could run on the defended system.", rows=rows)
    missed = (everything.broken & ~grad.broken).nonzero().squeeze(1).tolist()
    loss = (grad.robust if grad.measured else 1.0) - everything.robust
    if grad.measured and _above(loss, audit.margin):
        return _stage(
            4,
            FAILED,
            f"Other attack algorithms break {len(missed)} samples the gradient attacks did not: "
            f"robust accuracy falls from {pct(grad.robust)} (gradients) to "
            f"{pct(everything.robust)} (worst case over every algorithm). The defense does not "
            "generalize over attack algorithms.",
            rows=rows,
            samples=missed,
            flags=everything.flags,
        )
    return _stage(
        4,
        PASSED,
        f"Worst case over gradient, score-based, decision-based and transfer attacks, each on "
        f"every sample: {pct(everything.robust)} robust accuracy"
        + (f" ({len(missed)} samples only a non-gradient attack broke)" if missed else "")
        + ".",
        rows=rows,
        samples=missed,
    )


# ---------------------------------------------------------------- 5. illusion
def illusion(audit: Audit, memo: Memo) -> AuditStage:
    bench: Bench = memo["defended"]
    adaptive(audit, memo)
    families = black_box(audit, memo)
    gradient, _ = memo["adaptive"]
    standard, _ = _pair(audit, memo, "standard", "standard", standard_attacks(audit))
    rows: list[AuditRow] = []
    raised: list[Flag] = []
    listed: list[int] = []
    problems: list[str] = []

    def wrap(inner: EvasionAttack) -> EvasionAttack:
        return adaptive_wrap(audit, bench, inner)[0]

    threat = _white(audit, adaptive=True)
    # iterative beats single-step
    fgsm = bench.measure("fgsm", [(threat, wrap(create("fgsm")))])
    pgd = bench.measure("pgd", [(threat, wrap(create("pgd", steps=audit.steps, stop_early=True)))])
    if fgsm.measured and pgd.measured:
        rows.append(_row("single-step (FGSM)", fgsm))
        rows.append(_row("iterative (PGD)", pgd))
        beaten = (fgsm.broken & ~pgd.broken).nonzero().squeeze(1).tolist()
        if pgd.robust > fgsm.robust + 1.0 / max(len(bench.correct), 1):
            problems.append(
                f"single-step FGSM ({pct(fgsm.robust)}) beats iterative PGD ({pct(pgd.robust)})"
            )
            listed += beaten
    # success grows with eps, and an unbounded attack reaches ~100%
    sweep = [0.5, 1.0, 2.0]
    curve_x, curve_y = [], []
    for factor in sweep:
        measured = bench.measure(
            f"eps x {factor}",
            [
                (
                    _white(audit, adaptive=True, eps=audit.eps * factor),
                    wrap(create("pgd", steps=audit.steps, stop_early=True)),
                )
            ],
        )
        if measured.measured:
            curve_x.append(audit.eps * factor)
            curve_y.append(measured.robust)
            rows.append(_row(f"PGD at eps = {audit.eps * factor:g}", measured))
    step = 1.0 / max(len(bench.correct), 1)
    if any(b > a + step for a, b in itertools.pairwise(curve_y)):
        problems.append("robust accuracy rises with eps (success should only grow with the budget)")
    big = _unbounded_eps(audit, bench)
    unbounded = bench.measure(
        "unbounded",
        [
            (
                _white(audit, adaptive=True, eps=big),
                wrap(create("pgd", steps=audit.steps * 2, stop_early=True)),
            )
        ],
    )
    if unbounded.measured:
        rows.append(_row(f"PGD at eps = {big:g} (the whole input range)", unbounded))
        if unbounded.robust > 0.01:
            problems.append(
                f"an attack without a real bound leaves {pct(unbounded.robust)} standing "
                "(unconstrained failure): the attack, not the defense, is failing"
            )
    # black-box never beats white-box, sample by sample
    white = union("white", [gradient, standard])
    for label, (defended, _) in families.items():
        if not defended.measured or not white.measured:
            continue
        beaten = (defended.broken & ~white.broken).nonzero().squeeze(1).tolist()
        if len(beaten) > max(1, round(audit.margin * len(bench.correct))):
            problems.append(f"{label} breaks {len(beaten)} samples the white-box attacks did not")
            listed += beaten
    # more steps and restarts change little
    longer = bench.measure(
        "longer",
        [(threat, wrap(create("pgd", steps=audit.steps * 5, restarts=3, stop_early=True)))],
    )
    if longer.measured and pgd.measured:
        rows.append(_row(f"PGD, {audit.steps * 5} steps x 3 restarts", longer))
        if _above(pgd.robust - longer.robust, audit.margin):
            problems.append(
                f"five times the steps and three restarts take robust accuracy from "
                f"{pct(pgd.robust)} to {pct(longer.robust)} (incomplete optimization)"
            )
    # the flags of every attack run on the defended system, and the judge's
    seen = [*gradient.flags, *standard.flags, *pgd.flags, *bench.judge.flags]
    for flag in dict.fromkeys(seen):
        if flag.code in (codes.ZERO_GRADIENTS, codes.NONFINITE_GRADIENTS):
            problems.append(f"unavailable gradients: {flag.message}")
        raised.append(flag)
    if bench.system.output is Output.PROBABILITIES:
        raised.append(
            Flag(
                "softmax-output",
                "The defended system answers with probabilities: gradients of their logarithm "
                "saturate; the adaptive stage attacked its logits where it could.",
            )
        )
    curves = [Curve(curve_x, curve_y, f"{audit.norm} eps", "robust accuracy")] if curve_x else []
    indicators = _indicators(problems)
    if problems:
        return _stage(
            5,
            FAILED,
            "The robustness is an illusion: " + "; ".join(problems) + ". " + indicators,
            rows=rows,
            curves=curves,
            flags=raised,
            samples=sorted(set(listed)),
        )
    return _stage(
        5,
        PASSED,
        "No check of a flawed evaluation fires: iterative beats single-step, success grows with "
        "eps, an unbounded attack breaks everything, no black-box attack beats the white-box "
        "ones, more steps change little, gradients are available. " + indicators,
        rows=rows,
        curves=curves,
        flags=raised,
    )


def _indicators(problems: list[str]) -> str:
    """Pintor et al.'s indicators of attack failure, as this stage measured them."""
    text = " ".join(problems)
    found = {
        "silent success": False,  # mallory keeps every adversarial input an attack saw
        "unavailable gradients": "unavailable gradients" in text,
        "incomplete optimization": "incomplete optimization" in text,
        "transfer failure": False,
        "unconstrained failure": "unconstrained failure" in text,
    }
    fired = [name for name, on in found.items() if on]
    return (
        "Indicators of attack failure (Pintor et al. 2022): "
        + (", ".join(fired) if fired else "none")
        + " fired."
    )


def _unbounded_eps(audit: Audit, bench: Bench) -> float:
    width = float((bench.system.bounds.upper - bench.system.bounds.lower).max())
    if audit.norm is Norm.LINF:
        return width
    if audit.norm is Norm.L2:
        return width * math.sqrt(math.prod(bench.system.input_shape))
    return float(math.prod(bench.system.input_shape))


# ---------------------------------------------------------------- 6. threat models
def threat_models(audit: Audit, memo: Memo) -> AuditStage:
    defended_bench: Bench = memo["defended"]
    other_norm, other_eps = audit.other_threat()
    checks: dict[str, list[tuple[ThreatModel, EvasionAttack]]] = {}
    if other_norm is not None:
        inner, _ = adaptive_wrap(
            audit, defended_bench, create("pgd", steps=audit.steps, stop_early=True)
        )
        checks[f"{other_norm.value} ball, eps {other_eps:g} (PGD)"] = [
            (white_box(other_norm, other_eps), inner)
        ]
    if len(defended_bench.system.input_shape) == 3:
        # unbounded: any image falls to a strong enough occlusion or contrast change, so what
        # counts is how strong a transformation each system needs, as for label-only access
        checks["natural transformations (the cheap tricks, unbounded)"] = [
            (no_knowledge(audit.norm, math.inf, queries=200), create("cheap"))
        ]
    checks[f"label-only, {audit.queries} queries (HopSkipJump, unbounded)"] = [
        (
            label_only(Norm.L2, math.inf, queries=audit.queries),
            create("hopskipjump", max_queries=audit.queries, batch_starts=False),
        )
    ]
    rows, failing = [], []
    for label, attacks in checks.items():
        defended = memo["defended"].measure(label, attacks)
        baseline = memo["baseline"].measure(label, attacks)
        detail = ""
        if "unbounded" in label and defended.results:
            detail = _median_distance_text(defended, baseline)
        rows.append(_row(label, defended, baseline, detail))
        bounded = defended.measured and baseline.measured and "unbounded" not in label
        if bounded and _below(defended.robust - baseline.robust, audit.margin):
            failing.append(
                f"{label}: {pct(defended.robust)} against the baseline's {pct(baseline.robust)}"
            )
        if "unbounded" in label and defended.measured and baseline.measured:
            mine, theirs = _median_l2(defended), _median_l2(baseline)
            if not (mine > theirs * (1 + audit.margin) or math.isinf(mine)):
                failing.append(
                    f"{label}: the smallest perturbations found are no larger than the "
                    f"baseline's (median L2 {mine:.3g} against {theirs:.3g})"
                )
    if failing:
        return _stage(
            6,
            FAILED,
            "The defense does not generalize over threat models: " + "; ".join(failing) + ".",
            rows=rows,
        )
    return _stage(
        6,
        PASSED,
        "Under other norms, natural transformations and label-only access the defended system "
        "stays ahead of the baseline.",
        rows=rows,
    )


def _median_l2(measured: Measured) -> float:
    values = torch.cat([r.l2[r.success] for r in measured.results]) if measured.results else None
    if values is None or not len(values):
        return math.inf
    return float(values.median())


def _median_distance_text(defended: Measured, baseline: Measured) -> str:
    return f"median L2 found: {_median_l2(defended):.3g} (baseline {_median_l2(baseline):.3g})"


STAGE_FUNCTIONS = {
    1: no_effect,
    2: clean_accuracy,
    3: adaptive,
    4: attack_algorithms,
    5: illusion,
    6: threat_models,
}
