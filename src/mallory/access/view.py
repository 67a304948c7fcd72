"""The view an attack holds: the oracle's answers for one batch, and nothing else.

A view answers queries about the rows of its batch (logits, scores, labels, gradients, as the
threat model grants), says how many queries each row may still make, and keeps the attacker's
record of the adversarial inputs it has seen. Its public attributes describe the task (the
threat model, the input shape and bounds, the number of classes, the access granted, and for
a white-box attacker the names of the system's parts); none leads to the system, the oracle
or their private state. A wrapper attack derives new views through public methods only:

* :meth:`OracleView.subset`: some rows, as a batch of their own;
* :meth:`OracleView.with_gradient`: the same view with its gradient computed another way
  (estimated from scores, averaged over the system's randomness);
* :meth:`OracleView.with_options`: the same view whose gradient queries pass some parts
  straight through (BPDA) or take the logits under a final softmax.

Derived views compose in any order: options reach the oracle whatever sits between.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mallory.access.oracle import Access, Gradient, LossFn
from mallory.errors import InputError
from mallory.threat import Norm, ThreatModel

if TYPE_CHECKING:
    from mallory.access.oracle import Oracle
    from mallory.access.record import Record
    from mallory.systems.base import Bounds

GradientSource = Callable[["OracleView", Tensor, LossFn, "Tensor | None"], Gradient]
"""How a derived view answers ``gradient(x, loss, rows)``: given the view it was derived from
(whose queries are counted as usual), the inputs, the loss and the rows."""


class OracleView:
    """What an attack holds: the oracle, bound to the batch of samples it attacks.

    Every method takes the inputs and ``rows``, the positions in the batch those inputs belong
    to (all rows in order when omitted), so an attack can query only the samples still
    standing. Answers are noted in the attacker's record (see :mod:`mallory.access.record`).
    """

    def __init__(
        self,
        oracle: Oracle,
        ids: Tensor,
        record: Record | None = None,
        *,
        positions: Tensor | None = None,
        source: GradientSource | None = None,
        base: OracleView | None = None,
        delegate: tuple[OracleView, Tensor] | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.__oracle = oracle
        self.__ids = ids.to(device="cpu", dtype=torch.int64)
        self.__record = record
        self.__positions = positions  # rows of the record these rows are (None: the same)
        self.__source = source  # with base: gradients computed by a wrapper
        self.__base = base
        self.__delegate = delegate  # (view, rows): gradients asked of a derived view's rows
        self.__options: dict[str, Any] = dict(options or {})
        derived = source is not None or delegate is not None
        self.threat: ThreatModel = oracle.threat
        self.name: str = oracle.name
        self.input_shape: tuple[int, ...] = oracle.input_shape
        self.num_classes: int = oracle.num_classes
        self.bounds: Bounds = oracle.bounds
        self.access: Access = Access.GRADIENTS if derived else oracle.access
        self.parts: tuple[str, ...] = oracle.parts if oracle.access is Access.GRADIENTS else ()
        self.softmax_part: str | None = (
            oracle.softmax_part if oracle.access is Access.GRADIENTS else None
        )

    def __len__(self) -> int:
        return len(self.__ids)

    def __repr__(self) -> str:
        return f"OracleView({self.name!r}, {len(self)} rows, threat={self.threat.name!r})"

    @property
    def norm(self) -> Norm:
        return self.threat.norm

    @property
    def eps(self) -> float:
        return self.threat.eps

    # ------------------------------------------------------------------ rows
    def _ids_of(self, rows: Tensor | None, n: int | None) -> Tensor:
        if rows is None:
            if n is not None and n != len(self.__ids):
                raise InputError(
                    f"A query of {n} inputs without rows= must cover the whole batch of "
                    f"{len(self.__ids)}; pass rows= to query part of it."
                )
            return self.__ids
        return self.__ids[rows.to("cpu")]

    def _record_rows(self, rows: Tensor | None) -> Tensor | None:
        if self.__positions is None:
            return rows
        if rows is None:
            return self.__positions
        return self.__positions[rows.to(self.__positions.device)]

    # ------------------------------------------------------------------ queries
    def logits(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        out = self.__oracle.logits(x, self._ids_of(rows, len(x)))
        self._note_scores(x, rows, out, logits=True)
        return out

    def scores(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        out = self.__oracle.scores(x, self._ids_of(rows, len(x)))
        self._note_scores(x, rows, out)
        return out

    def labels(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        out = self.__oracle.labels(x, self._ids_of(rows, len(x)))
        if self.__record is not None:
            self.__record.see(x, self._record_rows(rows), out)
        return out

    def gradient(
        self,
        x: Tensor,
        loss: LossFn,
        rows: Tensor | None = None,
        *,
        straight_through: Sequence[str] = (),
        logits_before: str | None = None,
    ) -> Gradient:
        """Logits, loss and d loss / dx for the rows; see :meth:`Oracle.gradient`.
        ``straight_through`` names stages or parts whose backward is the identity (BPDA);
        ``logits_before`` a part whose input serves as the logits."""
        if straight_through or logits_before is not None:
            view = self.with_options(straight_through=straight_through, logits_before=logits_before)
            return view.gradient(x, loss, rows)
        if self.__delegate is not None:
            parent, mapping = self.__delegate
            if rows is None and len(x) != len(mapping):
                self._ids_of(rows, len(x))  # raises the usual error
            return parent.gradient(x, loss, mapping if rows is None else mapping[rows.cpu()])
        if self.__source is not None and self.__base is not None:
            return self.__source(self.__base, x, loss, rows)
        answer = self.__oracle.gradient(
            x,
            self._ids_of(rows, len(x)),
            loss,
            straight_through=tuple(self.__options.get("straight_through", ())),
            logits_before=self.__options.get("logits_before"),
        )
        self._note_scores(x, rows, answer.logits, logits=True)
        return answer

    def _note_scores(
        self, x: Tensor, rows: Tensor | None, values: Tensor, *, logits: bool = False
    ) -> None:
        """Show the record the answers ``values``: probabilities (NaN where hidden or not
        answered), or ``logits``; the confidence is computed only for the rows it keeps."""
        if self.__record is None:
            return
        if logits:  # a row with a NaN logit (all NaN: not answered) shows no label
            labels = values.argmax(1).masked_fill(values.isnan().any(1), -1)
        else:  # hidden scores are NaN; a row not answered is all NaN
            unanswered = values.isnan().all(1)
            labels = values.nan_to_num(-math.inf).argmax(1).masked_fill(unanswered, -1)

        def confidence(where: Tensor) -> Tensor:
            probs = values[where].softmax(1) if logits else values[where]
            return probs.nan_to_num(-1.0).amax(1)

        self.__record.see(x, self._record_rows(rows), labels, confidence)

    # ------------------------------------------------------------------ budgets
    def remaining(self, rows: Tensor | None = None) -> Tensor:
        """Queries left per row (``inf`` when unlimited)."""
        return self.__oracle.remaining_of(self._ids_of(rows, None))

    def queries(self, rows: Tensor | None = None) -> Tensor:
        """Queries spent so far per row (across every attack on these samples)."""
        return self.__oracle.queries_of(self._ids_of(rows, None))

    # ------------------------------------------------------------------ derived views
    def subset(self, rows: Tensor) -> OracleView:
        """The rows ``rows`` of this batch as a batch of their own (for running a sub-attack on
        the samples still standing); their answers count and are recorded as this view's, and
        their gradients are this view's, at those rows."""
        rows = rows.to("cpu", torch.int64)
        positions = rows if self.__positions is None else self.__positions[rows]
        derived = self.__source is not None or self.__delegate is not None
        return OracleView(
            self.__oracle,
            self.__ids[rows],
            self.__record,
            positions=positions,
            delegate=(self, rows) if derived else None,
            options=self.__options,
        )

    def with_gradient(self, source: GradientSource) -> OracleView:
        """This view with ``gradient(x, loss, rows)`` answered by ``source(view, x, loss,
        rows)``, where ``view`` is this view: every query ``source`` makes through it is
        counted and recorded as usual. The derived view reports gradient access."""
        return OracleView(
            self.__oracle,
            self.__ids,
            self.__record,
            positions=self.__positions,
            source=source,
            base=self,
        )

    def with_options(
        self, *, straight_through: Sequence[str] = (), logits_before: str | None = None
    ) -> OracleView:
        """This view whose gradient queries pass the named stages or parts straight through
        (BPDA) and take the logits before the named part (``"softmax"``: the final softmax);
        the options reach the oracle through any view derived in between."""
        merged = dict(self.__options)
        if straight_through:
            merged["straight_through"] = tuple(
                dict.fromkeys((*merged.get("straight_through", ()), *straight_through))
            )
        if logits_before is not None:
            merged["logits_before"] = logits_before
        if self.__delegate is not None:
            parent, mapping = self.__delegate
            return parent.with_options(
                straight_through=straight_through, logits_before=logits_before
            ).subset(mapping)
        if self.__source is not None and self.__base is not None:
            base = self.__base.with_options(
                straight_through=straight_through, logits_before=logits_before
            )
            return OracleView(
                self.__oracle,
                self.__ids,
                self.__record,
                positions=self.__positions,
                source=self.__source,
                base=base,
                options=merged,
            )
        return OracleView(
            self.__oracle,
            self.__ids,
            self.__record,
            positions=self.__positions,
            options=merged,
        )
