"""The Oracle: the attacker's only handle on a system under a threat model.

It answers exactly what the threat model grants (logits, scores, top-k scores, labels,
gradients), counts every query and gradient evaluation per sample, refuses answers to a sample
whose budget is spent, and records the wall time and money spent. Attacks receive an
:class:`OracleView` bound to the batch they attack; the Oracle's ledger outlives any one
attack, so a campaign of attacks on the same samples shares one budget per sample.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import torch
from torch import Tensor

from mallory.access.record import Record
from mallory.errors import AccessError, InputError, SystemFailure
from mallory.systems.base import Output, System
from mallory.threat import Exposure, Knowledge, Norm, ThreatModel

LossFn = Callable[[Tensor], Tensor]


class Access(IntEnum):
    """What an attack needs from the oracle; each level includes the ones below it."""

    LABELS = 1
    SCORES = 2
    GRADIENTS = 3


@dataclass(frozen=True)
class Gradient:
    """The answer to a gradient query: logits at ``x``, the per-sample loss, and d loss / d x.

    Rows the oracle refused (budget spent) hold NaN logits and loss and a zero gradient.
    """

    logits: Tensor
    loss: Tensor
    grad: Tensor


class Oracle:
    """Gives an attack exactly what ``threat`` grants on ``system``, and counts it.

    Sample ids (non-negative ints, e.g. dataset indices) key the per-sample ledger; an attack
    called with the same ids again spends from the same budgets.
    """

    def __init__(self, system: System, threat: ThreatModel) -> None:
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
        self.system = system
        self.threat = threat
        self._queries = torch.zeros(0, dtype=torch.int64)
        self._gradients = torch.zeros(0, dtype=torch.int64)
        self._seconds = torch.zeros(0, dtype=torch.float64)
        self.total_queries = 0
        self.total_gradients = 0
        self.seconds = 0.0
        self._gradient_refusal = self._why_no_gradients()
        self._budgeted = threat.queries_per_sample is not None or threat.queries_total is not None

    # ---------------------------------------------------------------- what is granted
    def _why_no_gradients(self) -> str | None:
        threat = self.threat
        try:
            path = self.system.gradient_path(adaptive=threat.adaptive)
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

    # ---------------------------------------------------------------- ledger
    def _grow(self, ids: Tensor) -> None:
        need = int(ids.max()) + 1 if len(ids) else 0
        if need > len(self._queries):
            size = max(need, 2 * len(self._queries))
            extra = size - len(self._queries)
            self._queries = torch.cat([self._queries, torch.zeros(extra, dtype=torch.int64)])
            self._gradients = torch.cat([self._gradients, torch.zeros(extra, dtype=torch.int64)])
            self._seconds = torch.cat([self._seconds, torch.zeros(extra, dtype=torch.float64)])

    def queries_of(self, ids: Tensor) -> Tensor:
        """Queries spent so far on each sample id."""
        self._grow(ids)
        return self._queries[ids].clone()

    def gradients_of(self, ids: Tensor) -> Tensor:
        """Gradient evaluations spent so far on each sample id."""
        self._grow(ids)
        return self._gradients[ids].clone()

    def seconds_of(self, ids: Tensor) -> Tensor:
        """Seconds the system spent answering for each sample id (a batch's time is shared)."""
        self._grow(ids)
        return self._seconds[ids].clone()

    def remaining_of(self, ids: Tensor) -> Tensor:
        """Queries each sample may still make (``inf`` when unlimited), as floats."""
        self._grow(ids)
        left = torch.full((len(ids),), math.inf, dtype=torch.float64)
        per = self.threat.queries_per_sample
        if per is not None:
            left = torch.minimum(left, (per - self._queries[ids]).clamp_min(0).double())
        total = self.threat.queries_total
        if total is not None:
            left = left.clamp_max(float(max(total - self.total_queries, 0)))
        return left

    def restore(self, ids: Tensor, queries: Tensor, gradients: Tensor, seconds: Tensor) -> None:
        """Enter what was spent on ``ids`` before (a resumed campaign replays its store), so
        budgets count it. Never for attacks: it only adds to the ledger."""
        ids = ids.to(device="cpu", dtype=torch.int64)
        self._grow(ids)
        self._queries.index_add_(0, ids, queries.to(torch.int64))
        self._gradients.index_add_(0, ids, gradients.to(torch.int64))
        self._seconds.index_add_(0, ids, seconds.to(torch.float64))
        self.total_queries += int(queries.sum())
        self.total_gradients += int(gradients.sum())
        self.seconds += float(seconds.sum())

    @property
    def money(self) -> float:
        return self.total_queries * self.threat.price_per_query

    def _admit(self, ids: Tensor) -> Tensor | None:
        """Charge one query to each row's sample; None when every row is admitted."""
        self._grow(ids)
        if not self._budgeted:
            self._queries.index_add_(0, ids, torch.ones_like(ids))
            self.total_queries += len(ids)
            return None
        ok = torch.ones(len(ids), dtype=torch.bool)
        per = self.threat.queries_per_sample
        if per is not None:
            # several rows of one sample in a call: each takes the next query of that sample
            order = torch.argsort(ids, stable=True)
            sorted_ids = ids[order]
            first = torch.searchsorted(sorted_ids, sorted_ids)
            rank = torch.empty_like(ids)
            rank[order] = torch.arange(len(ids)) - first
            ok &= self._queries[ids] + rank < per
        total = self.threat.queries_total
        if total is not None:
            ok &= torch.cumsum(ok.long(), 0) <= total - self.total_queries
        admitted = ids[ok]
        self._queries.index_add_(0, admitted, torch.ones_like(admitted))
        self.total_queries += len(admitted)
        return None if bool(ok.all()) else ok

    def _clock(self, ids: Tensor, started: float) -> None:
        spent = time.perf_counter() - started
        self.seconds += spent
        if len(ids):
            self._seconds.index_add_(
                0, ids, torch.full((len(ids),), spent / len(ids), dtype=torch.float64)
            )

    # ---------------------------------------------------------------- answering
    def _check_inputs(self, x: Tensor, ids: Tensor) -> None:
        shape = self.system.input_shape
        if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape:
            raise InputError(
                f"Queries to {self.system.name!r} must have shape (n, {', '.join(map(str, shape))})"
                f"; got {tuple(x.shape)}."
            )
        if len(x) != len(ids):
            raise InputError(f"A query of {len(x)} inputs came with {len(ids)} sample ids.")
        lo, hi = self.system.bounds.on(x)
        if x.numel() and lo.numel() == 1 and hi.numel() == 1:
            # one pass over the batch; a NaN propagates into both and fails the test
            low, high = torch.aminmax(x)
            inside = bool((low >= lo - 1e-6) & (high <= hi + 1e-6))
        else:
            inside = bool(((x >= lo - 1e-6) & (x <= hi + 1e-6)).all())
        if not inside:
            raise InputError(
                "A query left the input bounds or held NaN: inputs must satisfy "
                f"{self.system.bounds.to_dict()} (an attack must clamp its candidates)."
            )

    def _run_system(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        try:
            out = fn(x)
        except (MemoryError, KeyboardInterrupt, SystemFailure):
            raise
        except Exception as error:
            raise SystemFailure(
                f"The system {self.system.name!r} raised {type(error).__name__} on a batch of "
                f"{len(x)} inputs: {error}"
            ) from error
        if not isinstance(out, Tensor) or out.shape != (len(x), self.system.num_classes):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise SystemFailure(
                f"The system {self.system.name!r} returned {got} for {len(x)} inputs; expected "
                f"scores of shape ({len(x)}, {self.system.num_classes})."
            )
        if not bool(torch.isfinite(out).all()):
            raise SystemFailure(
                f"The system {self.system.name!r} returned NaN or infinite scores for "
                f"{int((~torch.isfinite(out).all(1)).sum())} of {len(x)} inputs."
            )
        return out

    def _outputs(self, x: Tensor, ids: Tensor) -> tuple[Tensor, Tensor | None]:
        """System outputs for the admitted rows (others NaN), and the admission mask."""
        self._check_inputs(x, ids)
        ok = self._admit(ids)
        started = time.perf_counter()
        if ok is None:
            out = self._run_system(self.system.forward, x)
        else:
            out = torch.full(
                (len(x), self.system.num_classes), math.nan, dtype=x.dtype, device=x.device
            )
            if bool(ok.any()):
                out[ok] = self._run_system(self.system.forward, x[ok]).to(out)
        self._clock(ids if ok is None else ids[ok], started)
        return out, ok

    def logits(self, x: Tensor, ids: Tensor) -> Tensor:
        """Raw logits (log-probabilities for a system that returns probabilities)."""
        if self.threat.exposure is not Exposure.LOGITS:
            raise AccessError(
                f"Logits are not exposed: threat model {self.threat.name!r} has exposure="
                f"{self.threat.exposure.value!r}. Use scores() or labels()."
            )
        out, _ = self._outputs(x, ids)
        return _as_logits(out, self.system.output)

    def scores(self, x: Tensor, ids: Tensor) -> Tensor:
        """Class probabilities; with top-k exposure the hidden ones are NaN."""
        self.require(Access.SCORES, "scores()")
        if self.threat.exposure is Exposure.LABEL:
            raise AccessError(
                f"Scores are not exposed: threat model {self.threat.name!r} has exposure='label'. "
                "Use labels(), or a threat model that exposes scores."
            )
        out, _ = self._outputs(x, ids)
        probs = _as_probabilities(out, self.system.output)
        k = self.threat.top_k
        if self.threat.exposure is Exposure.TOP_K and k is not None and k < probs.shape[1]:
            kth = probs.nan_to_num(-1.0).topk(k, dim=1).values[:, -1:]
            probs = probs.masked_fill(probs < kth, math.nan)
        return probs

    def labels(self, x: Tensor, ids: Tensor) -> Tensor:
        """Predicted classes; -1 for rows refused for want of budget."""
        out, ok = self._outputs(x, ids)
        labels = out.argmax(1)
        if ok is not None:
            labels[~ok] = -1
        return labels

    def gradient(self, x: Tensor, ids: Tensor, loss: LossFn) -> Gradient:
        """Logits, ``loss(logits)`` (one value per row) and its gradient with respect to ``x``.

        Counts one query and one gradient evaluation per row. Parameter gradients are never
        computed: autograd differentiates with respect to the input only.
        """
        if self._gradient_refusal is not None:
            self.require(Access.GRADIENTS, "gradient()")
        self._check_inputs(x, ids)
        ok = self._admit(ids)
        if ok is not None and not bool(ok.any()):
            nan = torch.full((len(x), self.system.num_classes), math.nan).to(x)
            return Gradient(logits=nan, loss=nan[:, 0].clone(), grad=torch.zeros_like(x))
        started = time.perf_counter()
        x_in = x.detach().requires_grad_(True)
        system = self.system

        def forward(inputs: Tensor) -> Tensor:
            return system.forward_differentiable(inputs, adaptive=self.threat.adaptive)

        with torch.enable_grad():
            if ok is None:
                logits = _as_logits(self._run_system(forward, x_in), system.output)
            else:
                logits = torch.zeros((len(x), system.num_classes), dtype=x.dtype, device=x.device)
                rows = ok.nonzero().squeeze(1).to(x.device)
                part = self._run_system(forward, x_in[rows])
                logits = logits.index_copy(0, rows, _as_logits(part, system.output).to(x))
            value = loss(logits)
            if value.shape != (len(x),):
                raise InputError(
                    f"A gradient query's loss must return one value per input, shape "
                    f"({len(x)},); got {tuple(value.shape)}."
                )
            (grad,) = torch.autograd.grad(value.sum(), x_in)
        answered = ids if ok is None else ids[ok]
        self._gradients.index_add_(0, answered, torch.ones_like(answered))
        self.total_gradients += len(answered)
        self._clock(answered, started)
        logits, value = logits.detach(), value.detach()
        if ok is not None:
            refused = (~ok).to(x.device)
            logits = logits.masked_fill(refused[:, None], math.nan)
            value = value.masked_fill(refused, math.nan)
            grad = grad.masked_fill(refused.view(-1, *[1] * (x.dim() - 1)), 0.0)
        return Gradient(logits=logits, loss=value, grad=grad)

    def _judge(self, x: Tensor) -> Tensor:
        """The evaluator's view: true class probabilities, uncounted. Never for attacks."""
        with torch.no_grad():
            out = self._run_system(self.system.forward, x)
        return _as_probabilities(out, self.system.output)

    def bind(self, ids: Tensor, record: Record | None = None) -> OracleView:
        """A view of this oracle for a batch whose rows are the samples ``ids``."""
        return OracleView(self, ids, record)


class OracleView:
    """What an attack holds: the oracle, bound to the batch of samples it attacks.

    Every method takes the inputs and ``rows``, the positions in the batch those inputs belong
    to (all rows in order when omitted), so an attack can query only the samples still standing.
    With a ``record``, every answer is also noted there (see :mod:`mallory.access.record`).
    """

    def __init__(self, oracle: Oracle, ids: Tensor, record: Record | None = None) -> None:
        self._oracle = oracle
        self._ids = ids.to(device="cpu", dtype=torch.int64)
        self.record = record
        system = oracle.system
        self.threat: ThreatModel = oracle.threat
        self.input_shape = system.input_shape
        self.num_classes = system.num_classes
        self.bounds = system.bounds
        self.access = oracle.access

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def norm(self) -> Norm:
        return self.threat.norm

    @property
    def eps(self) -> float:
        return self.threat.eps

    def _ids_of(self, rows: Tensor | None, n: int) -> Tensor:
        if rows is None:
            if n != len(self._ids):
                raise InputError(
                    f"A query of {n} inputs without rows= must cover the whole batch of "
                    f"{len(self._ids)}; pass rows= to query part of it."
                )
            return self._ids
        return self._ids[rows.to("cpu")]

    def logits(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        out = self._oracle.logits(x, self._ids_of(rows, len(x)))
        self._note_scores(x, rows, out.softmax(1))
        return out

    def scores(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        out = self._oracle.scores(x, self._ids_of(rows, len(x)))
        self._note_scores(x, rows, out)
        return out

    def labels(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        out = self._oracle.labels(x, self._ids_of(rows, len(x)))
        if self.record is not None:
            self.record.see(x, rows, out)
        return out

    def gradient(self, x: Tensor, loss: LossFn, rows: Tensor | None = None) -> Gradient:
        answer = self._oracle.gradient(x, self._ids_of(rows, len(x)), loss)
        self._note_scores(x, rows, answer.logits.softmax(1))
        return answer

    def _note_scores(self, x: Tensor, rows: Tensor | None, probs: Tensor) -> None:
        if self.record is None:
            return
        answered = torch.isfinite(probs).any(1)
        confidence, labels = probs.nan_to_num(-1.0).max(1)
        labels = labels.masked_fill(~answered, -1)
        self.record.see(x, rows, labels, confidence)

    def subset(self, rows: Tensor) -> OracleView:
        """The rows ``rows`` of this batch as a batch of their own (for running a sub-attack on
        the samples still standing); its queries are this view's, mapped back."""
        return SubsetView(self, rows)

    def remaining(self, rows: Tensor | None = None) -> Tensor:
        """Queries left per row (``inf`` when unlimited)."""
        ids = self._ids if rows is None else self._ids[rows.to("cpu")]
        return self._oracle.remaining_of(ids)

    def queries(self, rows: Tensor | None = None) -> Tensor:
        """Queries spent so far per row (across every attack on these samples)."""
        ids = self._ids if rows is None else self._ids[rows.to("cpu")]
        return self._oracle.queries_of(ids)


class SubsetView(OracleView):
    """Rows ``rows`` of a parent view, seen as a batch of their own.

    Every query goes to the parent with its rows mapped back, so the parent's ledger and
    record see it as theirs.
    """

    def __init__(self, parent: OracleView, rows: Tensor) -> None:
        # no OracleView.__init__: everything is answered by the parent
        self._parent = parent
        self._rows = rows
        self.record = None
        self.threat = parent.threat
        self.input_shape = parent.input_shape
        self.num_classes = parent.num_classes
        self.bounds = parent.bounds
        self.access = parent.access

    def __len__(self) -> int:
        return len(self._rows)

    def _map(self, rows: Tensor | None, n: int | None = None) -> Tensor:
        if rows is None:
            if n is not None and n != len(self._rows):
                raise InputError(
                    f"A query of {n} inputs without rows= must cover the whole batch of "
                    f"{len(self._rows)}; pass rows= to query part of it."
                )
            return self._rows
        return self._rows[rows.to(self._rows.device)]

    def logits(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        return self._parent.logits(x, rows=self._map(rows, len(x)))

    def scores(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        return self._parent.scores(x, rows=self._map(rows, len(x)))

    def labels(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        return self._parent.labels(x, rows=self._map(rows, len(x)))

    def gradient(self, x: Tensor, loss: LossFn, rows: Tensor | None = None) -> Gradient:
        return self._parent.gradient(x, loss, rows=self._map(rows, len(x)))

    def remaining(self, rows: Tensor | None = None) -> Tensor:
        return self._parent.remaining(self._map(rows))

    def queries(self, rows: Tensor | None = None) -> Tensor:
        return self._parent.queries(self._map(rows))


def _as_logits(out: Tensor, kind: Output) -> Tensor:
    return out if kind is Output.LOGITS else out.clamp_min(1e-30).log()


def _as_probabilities(out: Tensor, kind: Output) -> Tensor:
    return out.softmax(1) if kind is Output.LOGITS else out
