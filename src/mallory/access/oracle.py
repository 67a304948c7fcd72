"""The Oracle: the attacker's only handle on a system under a threat model.

It answers exactly what the threat model grants (logits, scores, top-k scores, labels,
gradients), lets each call through a chain of admission policies (the threat model's query
budget, a campaign's allotment for the attack now running, the system's own rate limits, bans
and detectors: :mod:`mallory.access.policies`), records every call in its event log
(:mod:`mallory.access.events`), and shows a refusal only as the threat model's feedback
allows. Attacks receive an :class:`~mallory.access.view.OracleView` bound to the batch they
attack, and nothing else: no attribute of the view leads to the system.

The oracle also holds the :class:`~mallory.access.judge.Judge` of its evaluation (the attack
base and campaigns use it; attacks never see it), whose own ledger is separate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mallory.access.events import (
    NONFINITE_GRADIENT,
    ZERO_GRADIENT,
    Clock,
    EventLog,
    Kind,
    Outcome,
    Reason,
    VirtualClock,
)
from mallory.access.exposure import as_logits, as_probabilities, hide_scores
from mallory.access.judge import Judge
from mallory.access.policies import Admission, Allowance, Chain, Policy, QueryBudget, Request
from mallory.errors import AccessError, InputError, SystemFailure
from mallory.systems.base import ABSTAINED as ABSTAINED  # the labels a refused or
from mallory.systems.base import REFUSED as REFUSED  # abstained row shows (re-exported)
from mallory.systems.base import System, Verdict
from mallory.threat import Exposure, Feedback, Knowledge, Norm, ThreatModel

if TYPE_CHECKING:
    from mallory.access.record import Record
    from mallory.access.view import OracleView

LossFn = Callable[[Tensor], Tensor]


class Access(IntEnum):
    """What an attack needs from the oracle; each level includes the ones below it."""

    LABELS = 1
    SCORES = 2
    GRADIENTS = 3


@dataclass(frozen=True)
class Gradient:
    """The answer to a gradient query: logits at ``x``, the per-sample loss, and d loss / d x.

    Rows the oracle refused hold NaN logits and loss and a zero gradient.
    """

    logits: Tensor
    loss: Tensor
    grad: Tensor


@dataclass(frozen=True)
class _Served:
    """What one call came to: per row, the system's outputs (NaN where it gave none), the
    label the attacker sees, and the outcome."""

    out: Tensor
    labels: Tensor
    outcome: Tensor


class Oracle:
    """Gives an attack exactly what ``threat`` grants on ``system``, and records it.

    Sample ids (non-negative ints, e.g. dataset indices; ``-1`` for rows tied to no sample)
    key the per-sample totals of the event log; an attack called with the same ids again spends
    from the same budgets. ``policies`` are the system's admission policies (rate limits, bans,
    detectors), applied after the threat model's budget; ``judge`` is the evaluator (one is
    made for the system when not given); ``clock`` gives the log's times (simulated by default:
    the system's answering time and any wait a policy imposes); ``account`` names the attacker.
    """

    def __init__(
        self,
        system: System,
        threat: ThreatModel,
        *,
        policies: Sequence[Policy] = (),
        judge: Judge | None = None,
        clock: Clock | None = None,
        account: str = "attacker",
        log: EventLog | None = None,
    ) -> None:
        if not isinstance(system, System):
            raise InputError(
                f"Oracle needs a mallory System (TorchModel, SklearnModel, ...); got "
                f"{type(system).__name__}. Wrap the model in one of mallory.systems."
            )
        if not isinstance(threat, ThreatModel):
            raise InputError(f"Oracle needs a ThreatModel; got {type(threat).__name__}.")
        if threat.exposure.richness > system.exposes.richness:
            raise AccessError(
                f"The threat model {threat.name!r} grants exposure={threat.exposure.value!r}, but "
                f"the system {system.name!r} answers with {system.exposes.value!r} at most. Use a "
                "threat model that grants no more than the system shows, e.g. label_only(...)."
            )
        shown_k = system.top_k if system.exposes is Exposure.TOP_K else None
        if shown_k is not None and threat.top_k is not None and threat.top_k > shown_k:
            raise AccessError(
                f"The threat model {threat.name!r} grants the top {threat.top_k} scores, but the "
                f"system {system.name!r} shows only its top {shown_k}. Use top_k <= {shown_k}."
            )
        if threat.feedback is Feedback.LABEL and system.refusal_label is None:
            raise InputError(
                f"The threat model {threat.name!r} says a refusal looks like a label "
                f"(feedback='label'), but the system {system.name!r} names no refusal label. "
                "Give the system refusal_label=<class shown when it refuses>, or use another "
                "feedback."
            )
        if judge is not None and not isinstance(judge, Judge):
            raise InputError(f"Oracle's judge must be a mallory Judge; got {judge!r}.")
        self._system = system
        self.threat = threat
        self.name = system.name
        self.input_shape = system.input_shape
        self.num_classes = system.num_classes
        self.bounds = system.bounds
        lower, upper = self.bounds.lower, self.bounds.upper
        # a box with one lower and one upper bound, as floats: checked in one pass per query
        self._box = (
            (float(lower), float(upper)) if lower.numel() == 1 and upper.numel() == 1 else None
        )
        self.output = system.output  # logits or probabilities: what the gradients are of
        self.account = account
        self.log = log if log is not None else EventLog()
        self.clock: Clock = clock if clock is not None else VirtualClock()
        self.judge = (
            judge if judge is not None else Judge(system, price_per_query=threat.price_per_query)
        )
        self.allowance = Allowance()
        self._budget = QueryBudget(threat.queries_per_sample, threat.queries_total)
        self._system_policies = [*getattr(system, "policies", ()), *policies]
        self.policies = Chain([self._budget, self.allowance, *self._system_policies])
        self._gradient_refusal = self._why_no_gradients()

    def __repr__(self) -> str:
        return f"Oracle({self.name!r}, threat={self.threat.name!r})"

    @property
    def parts(self) -> tuple[str, ...]:
        """The names of the system's stages and of the parts inside them (a white-box attacker
        knows the architecture): what ``straight_through`` and ``logits_before`` may name."""
        return tuple(s.name for s in self._system.stages) + tuple(self._system.parts())

    @property
    def softmax_part(self) -> str | None:
        """The name of the system's final softmax layer, when it has one as a part."""
        return self._system.softmax_part()

    @property
    def norm(self) -> Norm:
        return self.threat.norm

    @property
    def eps(self) -> float:
        return self.threat.eps

    # ---------------------------------------------------------------- what is granted
    def _why_no_gradients(self) -> str | None:
        threat = self.threat
        try:
            path = self._system.gradient_path(adaptive=threat.adaptive)
        except AccessError as error:
            return str(error)
        for stage in path:
            knowledge = threat.knowledge_of(stage.name)
            if knowledge is not Knowledge.PERFECT:
                return (
                    f"the threat model {threat.name!r} gives {knowledge.value} knowledge of stage "
                    f"{stage.name!r}; gradients need perfect knowledge of every stage"
                )
        return None

    @property
    def access(self) -> Access:
        """The highest access granted."""
        if self._gradient_refusal is None:
            return Access.GRADIENTS
        return Access.SCORES if self.threat.sees_scores else Access.LABELS

    def require(self, access: Access, who: str) -> None:
        """Refuse, before it starts, an attack that needs more than is granted."""
        if self.access >= access:
            return
        threat = self.threat
        granted = {Access.LABELS: "labels only", Access.SCORES: "scores but no gradients"}
        reason = (
            f" ({self._gradient_refusal})"
            if access is Access.GRADIENTS and self._gradient_refusal
            else ""
        )
        hint = {
            Access.GRADIENTS: "a white-box threat model, e.g. mallory.white_box(norm, eps)",
            Access.SCORES: "a threat model that exposes scores, e.g. mallory.score_based(...)",
            Access.LABELS: "any threat model",
        }[access]
        raise AccessError(
            f"{who} needs {access.name.lower()}, but this oracle grants {granted[self.access]}: "
            f"threat model {threat.name!r} has exposure={threat.exposure.value!r}, "
            f"knowledge={threat.knowledge.value!r}{reason}. Run it under {hint}."
        )

    # ---------------------------------------------------------------- the ledger
    def queries_of(self, ids: Tensor) -> Tensor:
        """Queries charged so far to each sample id."""
        return self.log.queries_of(ids)

    def gradients_of(self, ids: Tensor) -> Tensor:
        """Gradient evaluations charged so far to each sample id."""
        return self.log.gradients_of(ids)

    def seconds_of(self, ids: Tensor) -> Tensor:
        """Seconds spent answering each sample id (a call's time is shared by its rows)."""
        return self.log.seconds_of(ids)

    @property
    def total_queries(self) -> int:
        return self.log.queries

    @property
    def total_gradients(self) -> int:
        return self.log.gradients

    @property
    def seconds(self) -> float:
        return self.log.seconds

    @property
    def money(self) -> float:
        return self.log.money

    def remaining_of(self, ids: Tensor) -> Tensor:
        """Queries each sample may still be charged (``inf`` when unlimited), as floats: the
        threat model's budget and the running attack's allotment, whichever is smaller."""
        ids = ids.to(device="cpu", dtype=torch.int64)
        spent = self.log.queries_of(ids)
        left = torch.full((len(ids),), math.inf, dtype=torch.float64)
        per = self.threat.queries_per_sample
        if per is not None:
            left = torch.where(ids >= 0, (per - spent).clamp_min(0).double(), left)
        total = self.threat.queries_total
        if total is not None:
            left = left.clamp_max(float(max(total - self.log.queries, 0)))
        caps = self.allowance.caps(ids)
        capped = caps >= 0
        if bool(capped.any()):
            left[capped] = torch.minimum(
                left[capped], (caps[capped] - spent[capped]).clamp_min(0).double()
            )
        return left

    # ---------------------------------------------------------------- answering
    def _check_inputs(self, x: Tensor, ids: Tensor) -> None:
        shape = self.input_shape
        if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape:
            raise InputError(
                f"Queries to {self.name!r} must have shape (n, {', '.join(map(str, shape))})"
                f"; got {tuple(x.shape)}."
            )
        if len(x) != len(ids):
            raise InputError(f"A query of {len(x)} inputs came with {len(ids)} sample ids.")
        box = self._box
        if box is not None and x.numel() and x.is_floating_point():
            # one pass over the batch; a NaN propagates into both and fails the test
            low, high = torch.aminmax(x)
            inside = low.item() >= box[0] - 1e-6 and high.item() <= box[1] + 1e-6
        else:
            lo, hi = self.bounds.on(x)
            inside = bool(((x >= lo - 1e-6) & (x <= hi + 1e-6)).all())
        if not inside:
            raise InputError(
                "A query left the input bounds or held NaN: inputs must satisfy "
                f"{self.bounds.to_dict()} (an attack must clamp its candidates)."
            )

    def _admit(self, kind: Kind, x: Tensor, ids: Tensor) -> tuple[Admission | None, float]:
        """Which rows the policies let through (None: all, without asking a policy that cannot
        refuse), after any wait the threat model's feedback turns a rate limit into."""
        if not self._budgeted():
            return None, 0.0
        waited = 0.0
        while True:
            request = Request(ids, self.account, self.clock.now(), kind, x)
            admission = self.policies.admit(request, self.log)
            if admission.all:
                return None, waited
            can_wait = (
                self.threat.feedback is Feedback.DELAY
                and admission.wait > 0
                and bool(admission.system_mask()[~admission.admitted].all())
            )
            if not can_wait:
                return admission, waited
            self.clock.wait(admission.wait)
            waited += admission.wait

    def _budgeted(self) -> bool:
        threat = self.threat
        return (
            threat.queries_per_sample is not None
            or threat.queries_total is not None
            or self.allowance.active
            or bool(self._system_policies)
        )

    def _run_system(self, fn: Callable[[Tensor], Verdict | Tensor], x: Tensor) -> Verdict:
        system = self._system
        try:
            out = fn(x)
        except (MemoryError, KeyboardInterrupt, SystemFailure):
            raise
        except Exception as error:
            raise SystemFailure(
                f"The system {self.name!r} raised {type(error).__name__} on a batch of "
                f"{len(x)} inputs: {error}"
            ) from error
        verdict = out if isinstance(out, Verdict) else Verdict(out)
        values = verdict.values
        if not isinstance(values, Tensor) or values.shape != (len(x), system.num_classes):
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise SystemFailure(
                f"The system {self.name!r} returned {got} for {len(x)} inputs; expected "
                f"scores of shape ({len(x)}, {system.num_classes})."
            )
        every = verdict.refused is None and verdict.abstained is None
        if every and bool(torch.isfinite(values).all()):
            return verdict  # the usual answer: every row decided, and finite
        decided = ~(verdict.mask("refused") | verdict.mask("abstained")).to(values.device)
        finite = torch.isfinite(values).all(1)
        if not bool(finite[decided].all()):
            raise SystemFailure(
                f"The system {self.name!r} returned NaN or infinite scores for "
                f"{int((~finite & decided).sum())} of {len(x)} inputs."
            )
        return verdict

    def _serve(self, x: Tensor, ids: Tensor) -> _Served:
        """One query call: admission, the system's answer on the admitted rows, the log."""
        self._check_inputs(x, ids)
        admission, waited = self._admit(Kind.QUERY, x, ids)
        n, classes = len(x), self.num_classes
        sent = self.clock.now()
        started = time.perf_counter()
        rows = None if admission is None else admission.admitted.nonzero().squeeze(1)
        out = torch.full((n, classes), math.nan, dtype=x.dtype, device=x.device)
        outcome = torch.full((n,), int(Outcome.REFUSED), dtype=torch.int8)
        reason = torch.zeros(n, dtype=torch.int8) if admission is None else admission.reason.clone()
        if rows is None or len(rows):
            part = x if rows is None else x[rows.to(x.device)]
            try:
                verdict = self._run_system(self._system.answer, part)
            except SystemFailure:
                failed = torch.full((n,), int(Outcome.REFUSED), dtype=torch.int8)
                failed[slice(None) if rows is None else rows] = int(Outcome.FAILED)
                self._log(Kind.QUERY, ids, failed, reason, sent, started, waited)
                raise
            if len(self.log) == 0:
                self.judge.check_logits(verdict.values)
            where = slice(None) if rows is None else rows
            out[where] = verdict.values.to(out)
            blocked, abstained = verdict.mask("refused"), verdict.mask("abstained")
            got = torch.where(
                blocked,
                int(Outcome.BLOCKED),
                torch.where(abstained, int(Outcome.ABSTAINED), int(Outcome.ANSWERED)),
            ).to(torch.int8)
            outcome[where] = got
            if bool(blocked.any()):
                codes = reason[where].clone()
                codes[blocked] = int(Reason.of_text(verdict.reason))
                reason[where] = codes
        self._log(Kind.QUERY, ids, outcome, reason, sent, started, waited)
        labels = out.nan_to_num(-math.inf).argmax(1)
        return _Served(out, self._shown_labels(labels, outcome, admission), outcome)

    def _shown_labels(self, labels: Tensor, outcome: Tensor, admission: Admission | None) -> Tensor:
        """The label each row shows the attacker: the system's, ``-2`` for an abstention, and
        for a refusal what the feedback allows (the refusal label, or ``-1``)."""
        outcome = outcome.to(labels.device)
        answered = outcome == int(Outcome.ANSWERED)
        if bool(answered.all()):
            return labels
        shown = torch.full_like(labels, REFUSED)
        shown[answered] = labels[answered]
        shown[outcome == int(Outcome.ABSTAINED)] = ABSTAINED
        if self.threat.feedback is Feedback.LABEL:
            by_system = outcome == int(Outcome.BLOCKED)
            if admission is not None:
                by_system |= admission.system_mask().to(labels.device)
            assert self._system.refusal_label is not None  # checked at construction
            shown[by_system] = self._system.refusal_label
        return shown

    def _log(
        self,
        kind: Kind,
        ids: Tensor,
        outcome: Tensor,
        reason: Tensor,
        sent: float,
        started: float,
        waited: float,
        flags: Tensor | None = None,
    ) -> None:
        spent = time.perf_counter() - started
        if isinstance(self.clock, VirtualClock):
            self.clock.advance(spent)
        self.log.record(
            account=self.account,
            kind=kind,
            ids=ids,
            outcome=outcome,
            reason=reason,
            time=sent,
            seconds=spent + waited,
            price=self.threat.price_per_query,
            flags=flags,
        )

    def logits(self, x: Tensor, ids: Tensor) -> Tensor:
        """Raw logits (log-probabilities for a system that returns probabilities); rows that
        got no answer are NaN."""
        if self.threat.exposure is not Exposure.LOGITS:
            raise AccessError(
                f"Logits are not exposed: threat model {self.threat.name!r} has exposure="
                f"{self.threat.exposure.value!r}. Use scores() or labels()."
            )
        served = self._serve(x, ids)
        return self._as_shown(as_logits(served.out, self._system.output), served)

    def scores(self, x: Tensor, ids: Tensor) -> Tensor:
        """Class probabilities; with top-k exposure the hidden ones are NaN; rows that got no
        answer are NaN."""
        self.require(Access.SCORES, "scores()")
        if self.threat.exposure is Exposure.LABEL:
            raise AccessError(
                f"Scores are not exposed: threat model {self.threat.name!r} has exposure='label'. "
                "Use labels(), or a threat model that exposes scores."
            )
        served = self._serve(x, ids)
        probs = hide_scores(
            as_probabilities(served.out, self._system.output),
            self.threat.exposure,
            self.threat.top_k,
        )
        return self._as_shown(probs, served)

    def _as_shown(self, values: Tensor, served: _Served) -> Tensor:
        """Scores or logits of the rows that got no answer: NaN, or, where a refusal shows as
        a label, that label's one-hot scores (logits of 0 and -inf cut to -1e4)."""
        answered = (served.outcome == int(Outcome.ANSWERED)).to(values.device)
        if bool(answered.all()):
            return values
        values = values.masked_fill(~answered[:, None], math.nan)
        decoy = (served.labels >= 0) & ~answered
        if bool(decoy.any()):
            onehot = torch.nn.functional.one_hot(served.labels[decoy], self.num_classes).to(values)
            is_logits = self.threat.exposure is Exposure.LOGITS
            values[decoy] = (onehot - 1.0) * 1e4 if is_logits else onehot
        return values

    def labels(self, x: Tensor, ids: Tensor) -> Tensor:
        """Predicted classes; ``-1`` for rows that got no answer (refused, blocked), ``-2`` for
        an abstention; a refusal shows as the system's refusal label where the feedback says."""
        return self._serve(x, ids).labels

    def gradient(
        self,
        x: Tensor,
        ids: Tensor,
        loss: LossFn,
        *,
        straight_through: Sequence[str] = (),
        logits_before: str | None = None,
    ) -> Gradient:
        """Logits, ``loss(logits)`` (one value per row) and its gradient with respect to ``x``.

        Counts one query and one gradient evaluation per admitted row. Parameter gradients are
        never computed: autograd differentiates with respect to the input only. A gradient that
        is not finite is answered as zero and flagged in the log, as is an exactly zero one.
        ``straight_through`` names stages (or submodules of a torch model) whose backward pass
        is replaced by the identity (BPDA); ``logits_before`` names a part whose input serves
        as the logits (``"softmax"``: the final softmax layer), for an attacker who knows the
        architecture of a system that ends in a softmax.
        """
        if self._gradient_refusal is not None:
            self.require(Access.GRADIENTS, "gradient()")
        self._check_inputs(x, ids)
        admission, waited = self._admit(Kind.GRADIENT, x, ids)
        n, classes = len(x), self.num_classes
        sent = self.clock.now()
        started = time.perf_counter()
        outcome = torch.full((n,), int(Outcome.ANSWERED), dtype=torch.int8)
        reason = torch.zeros(n, dtype=torch.int8) if admission is None else admission.reason.clone()
        if admission is not None:
            outcome[~admission.admitted] = int(Outcome.REFUSED)
            if not bool(admission.admitted.any()):
                self._log(Kind.GRADIENT, ids, outcome, reason, sent, started, waited)
                nan = torch.full((n, classes), math.nan).to(x)
                return Gradient(logits=nan, loss=nan[:, 0].clone(), grad=torch.zeros_like(x))
        x_in = x.detach().requires_grad_(True)
        system = self._system
        adaptive = self.threat.adaptive

        def forward(inputs: Tensor) -> Tensor:
            return system.forward_differentiable(
                inputs,
                adaptive=adaptive,
                straight_through=tuple(straight_through),
                logits_before=logits_before,
            )

        def logits_of(out: Tensor) -> Tensor:
            return out if logits_before is not None else as_logits(out, system.output)

        try:
            with torch.enable_grad():
                if admission is None:
                    logits = logits_of(self._run_system(forward, x_in).values)
                else:
                    logits = torch.zeros((n, classes), dtype=x.dtype, device=x.device)
                    rows = admission.admitted.nonzero().squeeze(1).to(x.device)
                    part = self._run_system(forward, x_in[rows]).values
                    logits = logits.index_copy(0, rows, logits_of(part).to(x))
                value = loss(logits)
                if value.shape != (n,):
                    raise InputError(
                        f"A gradient query's loss must return one value per input, shape "
                        f"({n},); got {tuple(value.shape)}."
                    )
                (grad,) = torch.autograd.grad(value.sum(), x_in)
        except SystemFailure:
            failed = outcome.clone()
            failed[outcome == int(Outcome.ANSWERED)] = int(Outcome.FAILED)
            self._log(Kind.GRADIENT, ids, failed, reason, sent, started, waited)
            raise
        grad, flags = _gradient_flags(grad)
        self._log(Kind.GRADIENT, ids, outcome, reason, sent, started, waited, flags)
        logits, value = logits.detach(), value.detach()
        if admission is not None:
            refused = (~admission.admitted).to(x.device)
            logits = logits.masked_fill(refused[:, None], math.nan)
            value = value.masked_fill(refused, math.nan)
            grad = grad.masked_fill(refused.view(-1, *[1] * (x.dim() - 1)), 0.0)
        return Gradient(logits=logits, loss=value, grad=grad)

    def bind(self, ids: Tensor, record: Record | None = None) -> OracleView:
        """A view of this oracle for a batch whose rows are the samples ``ids``."""
        from mallory.access.view import OracleView

        return OracleView(self, ids, record)


def _gradient_flags(grad: Tensor) -> tuple[Tensor, Tensor | None]:
    """The gradient with non-finite rows zeroed, and its flags per row for the log: zero
    (every entry exactly 0) or non-finite (any entry NaN or infinite); None when no row is
    either, the usual case."""
    # one pass: a row's largest magnitude is NaN or inf when any entry is, 0 when all are
    peak = grad.detach().flatten(1).abs().amax(1)
    if peak.numel():
        low, high = torch.aminmax(peak)  # NaN in either when any row has one
        if low.item() > 0 and high.item() < math.inf:
            return grad, None
    finite = torch.isfinite(peak)
    if not bool(finite.all()):
        grad = grad.nan_to_num(0.0, 0.0, 0.0)
    zero = peak == 0
    flags = torch.where(finite, 0, NONFINITE_GRADIENT) | torch.where(zero, ZERO_GRADIENT, 0)
    return grad, flags.to(device="cpu", dtype=torch.int8)
