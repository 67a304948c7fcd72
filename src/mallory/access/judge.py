"""The judge: the evaluator that decides clean and adversarial predictions.

It stands outside every threat model. Attacks never see it; the attack base, campaigns and
reports ask it whether an input is classified correctly, wrongly, or on target. It talks to the
system directly (no admission policy, no exposure), and every row it sends is recorded in its
own ledger (:attr:`Judge.log`, account ``"evaluator"``): priced where a price exists, shown in
reports, and never charged to the attacker's budget.

A randomized system (a stage declared not deterministic, or randomness the judge detects) is
judged by a vote over ``draws`` answers: the prediction is the class most draws gave (a tie
goes to the true label when it is known, so a coin flip is not a success), and the agreement
is the share of draws that gave it. Undeclared randomness is detected the way AutoAttack
checks it: the first rows the judge sees (up to :data:`INSPECT_ROWS`) are answered twice, and
any difference means the system is randomized (flagged, and voted on from then on). The first
batch also gets the output sanity checks: logits that are really probabilities, and
probabilities so saturated that the gradients of their logarithm vanish.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from mallory import flags
from mallory.access.events import EventLog, Kind, Outcome
from mallory.access.exposure import as_probabilities
from mallory.errors import SystemFailure
from mallory.flags import Flag
from mallory.params import Boolean, Constraint, Interval, OrNone, check_values
from mallory.systems.base import ABSTAINED, REFUSED, Output, System
from mallory.threat import Exposure

DEFAULT_DRAWS = 10
"""Draws per vote for a randomized system, unless the judge is told otherwise."""

BATCH = 512
"""Rows per call to the system."""

INSPECT_ROWS = 128
"""Rows of the first batch answered a second time to detect undeclared randomness."""

SATURATED = 1.0 - 1e-6  # a top probability at least this high has lost its gradient
SATURATED_SHARE = 0.5  # flag when at least this share of the first batch is saturated


@dataclass(frozen=True)
class Judgement:
    """The judge's verdict per row: the prediction (``-1``: the system refused the input,
    ``-2``: it abstained), the mean probability of that class over the draws (NaN when the
    system shows labels only, or for a refusal), the share of draws that gave it, and the
    number of draws."""

    predictions: Tensor
    confidence: Tensor
    agreement: Tensor
    draws: int

    def __len__(self) -> int:
        return len(self.predictions)

    def rows(self, rows: Tensor) -> Judgement:
        return Judgement(
            self.predictions[rows], self.confidence[rows], self.agreement[rows], self.draws
        )


JUDGE_PARAMS: dict[str, Constraint] = {
    "draws": OrNone(Interval(low=1, integral=True), "for the default"),
    "price_per_query": Interval(low=0.0),
    "detect": Boolean(),
}
"""The constraints of :class:`Judge`'s parameters."""


class Judge:
    """Decides the system's prediction on inputs, by majority over draws when it is random.

    ``draws``: answers per vote for a randomized system (default :data:`DEFAULT_DRAWS`; a
    deterministic one is answered once). ``price_per_query`` prices the judge's rows in its
    ledger. ``detect``: answer the first batch twice to detect undeclared randomness.
    """

    def __init__(
        self,
        system: System,
        *,
        draws: int | None = None,
        price_per_query: float = 0.0,
        detect: bool = True,
    ) -> None:
        check_values(
            "Judge",
            JUDGE_PARAMS,
            {"draws": draws, "price_per_query": price_per_query, "detect": detect},
        )
        self._system = system
        self._asked = draws
        self._randomized = not system.deterministic
        self._inspected = not detect
        self._raw_checked = False
        self.price_per_query = float(price_per_query)
        self.log = EventLog()
        self.flags: list[Flag] = []
        self._cache: dict[int, tuple[float, float, int, float, float]] = {}
        if self._randomized:
            self._note_randomized(declared=True)

    # ------------------------------------------------------------------ properties
    @property
    def randomized(self) -> bool:
        """Whether the system was declared or found to answer the same input differently."""
        return self._randomized

    @property
    def draws(self) -> int:
        """Answers per verdict: 1 for a deterministic system."""
        if not self._randomized:
            return 1
        return self._asked if self._asked is not None else DEFAULT_DRAWS

    @property
    def shows_scores(self) -> bool:
        return self._system.exposes is not Exposure.LABEL

    # ------------------------------------------------------------------ verdicts
    def judge(self, x: Tensor, ids: Tensor | None = None, y: Tensor | None = None) -> Judgement:
        """The verdict on ``x`` (``ids``: the samples the rows belong to, for the ledger;
        ``y``: the true labels, which win a tie in the vote)."""
        n = len(x)
        ids = torch.full((n,), -1, dtype=torch.int64) if ids is None else ids.cpu().long()
        classes = self._system.num_classes
        if n == 0:
            empty = torch.zeros(0, dtype=torch.float64)
            return Judgement(torch.zeros(0, dtype=torch.int64), empty, empty, self.draws)
        answers: list[tuple[Tensor, Tensor]] = []
        if not self._inspected:
            self._inspected = True
            first = self._answer(x, ids)
            k = min(n, INSPECT_ROWS)
            second = self._answer(x[:k], ids[:k])
            answers.append(first)
            self._inspect((first[0][:k], first[1][:k]), second)
        while len(answers) < self.draws:
            answers.append(self._answer(x, ids))
        votes = torch.zeros((n, classes + 2), dtype=torch.int64)
        prob_sum = torch.zeros((n, classes), dtype=torch.float64)
        decided = torch.zeros(n, dtype=torch.int64)
        rows = torch.arange(n)
        for labels, probs in answers:
            column = torch.where(labels >= 0, labels, classes - 1 - labels)  # -1 -> C, -2 -> C+1
            votes[rows, column] += 1
            prob_sum += probs.nan_to_num(0.0)
            decided += (labels >= 0).long()
        top = votes.max(1, keepdim=True).values
        tied = votes == top
        winner = torch.argmax(tied.long(), 1)  # the lowest tied column
        if y is not None:
            truth = y.cpu().long()
            keep_truth = tied[rows, truth]
            winner = torch.where(keep_truth, truth, winner)
        predictions = torch.where(winner < classes, winner, classes - 1 - winner)
        agreement = votes[rows, winner].double() / len(answers)
        answered = predictions >= 0
        confidence = torch.full((n,), math.nan, dtype=torch.float64)
        if self.shows_scores and bool(answered.any()):
            # the mean probability of the predicted class over the draws that decided
            mean = prob_sum[rows, winner.clamp_max(classes - 1)] / decided.clamp_min(1).double()
            confidence[answered] = mean[answered]
        return Judgement(predictions, confidence, agreement, len(answers))

    def clean(self, x: Tensor, ids: Tensor, y: Tensor | None = None) -> Judgement:
        """The verdict on clean inputs, decided once per sample id (and input): a sample judged
        correct stays correct for every attack that follows, whatever later draws say."""
        ids = ids.cpu().long()
        n = len(x)
        marks = _fingerprint(x)
        predictions = torch.zeros(n, dtype=torch.int64)
        confidence = torch.zeros(n, dtype=torch.float64)
        agreement = torch.zeros(n, dtype=torch.float64)
        todo = []
        for k, sid in enumerate(ids.tolist()):
            held = self._cache.get(sid)
            if held is not None and held[0] == float(marks[k, 0]) and held[1] == float(marks[k, 1]):
                predictions[k], confidence[k], agreement[k] = held[2], held[3], held[4]
            else:
                todo.append(k)
        if todo:
            rows = torch.tensor(todo, dtype=torch.int64)
            fresh = self.judge(
                x[rows.to(x.device)], ids[rows], None if y is None else y.cpu()[rows]
            )
            predictions[rows], confidence[rows] = fresh.predictions, fresh.confidence
            agreement[rows] = fresh.agreement
            for j, k in enumerate(todo):
                sid = int(ids[k])
                if sid >= 0:
                    self._cache[sid] = (
                        float(marks[k, 0]),
                        float(marks[k, 1]),
                        int(fresh.predictions[j]),
                        float(fresh.confidence[j]),
                        float(fresh.agreement[j]),
                    )
        return Judgement(predictions, confidence, agreement, self.draws)

    def remember(
        self,
        x: Tensor,
        ids: Tensor,
        predictions: Tensor,
        confidence: Tensor,
        agreement: Tensor | None = None,
    ) -> None:
        """Take clean verdicts decided before (a resumed run's stored samples) as this judge's
        own, so that no later draw overturns them."""
        marks = _fingerprint(x)
        agree = torch.ones(len(ids), dtype=torch.float64) if agreement is None else agreement
        for k, sid in enumerate(ids.cpu().tolist()):
            if sid >= 0:
                self._cache[int(sid)] = (
                    float(marks[k, 0]),
                    float(marks[k, 1]),
                    int(predictions[k]),
                    float(confidence[k]),
                    float(agree[k]) if not math.isnan(float(agree[k])) else 1.0,
                )

    # ------------------------------------------------------------------ internals
    def _answer(self, x: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
        """One draw: labels (-1 refused, -2 abstained) and probabilities, in batches, each
        batch recorded in the ledger."""
        labels, probs = [], []
        system = self._system
        for start in range(0, len(x), BATCH):
            part = x[start : start + BATCH]
            part_ids = ids[start : start + BATCH]
            began = time.perf_counter()
            try:
                verdict = system.answer(part)
                out = verdict.values
                if not isinstance(out, Tensor) or out.shape != (len(part), system.num_classes):
                    got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    raise SystemFailure(
                        f"The system {system.name!r} returned {got} for {len(part)} inputs; "
                        f"expected scores of shape ({len(part)}, {system.num_classes})."
                    )
            except (MemoryError, KeyboardInterrupt):
                raise
            except Exception as error:
                self.log.record(
                    account="evaluator",
                    kind=Kind.QUERY,
                    ids=part_ids,
                    outcome=torch.full((len(part),), int(Outcome.FAILED)),
                    seconds=time.perf_counter() - began,
                    price=self.price_per_query,
                )
                if isinstance(error, SystemFailure):
                    raise
                raise SystemFailure(
                    f"The system {system.name!r} raised {type(error).__name__} on a batch of "
                    f"{len(part)} inputs the evaluator sent: {error}"
                ) from error
            if not self._raw_checked:
                self._raw_checked = True
                self.check_logits(out)
            refused = verdict.mask("refused")
            abstained = verdict.mask("abstained")
            decided = ~(refused | abstained)
            p = as_probabilities(out.detach().to("cpu", torch.float64), system.output)
            if not bool(torch.isfinite(p[decided]).all()):
                raise SystemFailure(
                    f"The system {system.name!r} returned NaN or infinite scores for inputs the "
                    "evaluator sent."
                )
            label = p.nan_to_num(-1.0).argmax(1)
            label = torch.where(refused, REFUSED, torch.where(abstained, ABSTAINED, label))
            outcome = torch.where(
                refused,
                int(Outcome.BLOCKED),
                torch.where(abstained, int(Outcome.ABSTAINED), int(Outcome.ANSWERED)),
            )
            self.log.record(
                account="evaluator",
                kind=Kind.QUERY,
                ids=part_ids,
                outcome=outcome,
                seconds=time.perf_counter() - began,
                price=self.price_per_query,
            )
            labels.append(label)
            probs.append(p.masked_fill(~decided[:, None], math.nan))
        return torch.cat(labels), torch.cat(probs)

    def _inspect(self, first: tuple[Tensor, Tensor], second: tuple[Tensor, Tensor]) -> None:
        """Randomness (the same inputs answered differently) and output sanity."""
        (labels_a, probs_a), (labels_b, probs_b) = first, second
        if not self._randomized:
            scale = probs_a.nan_to_num(0.0).abs().amax().clamp_min(1e-12)
            gap = (probs_a.nan_to_num(0.0) - probs_b.nan_to_num(0.0)).abs().amax() / scale
            if not torch.equal(labels_a, labels_b) or float(gap) > 1e-4:
                self._randomized = True
                changed = int((labels_a != labels_b).sum())
                self.flags.append(
                    Flag(
                        flags.UNDECLARED_RANDOMNESS,
                        f"The system {self._system.name!r} answered the same inputs differently "
                        f"({changed} of {len(labels_a)} labels changed between two draws) but "
                        "was not declared randomized. Every verdict is now a majority over "
                        f"{self.draws} draws; declare it (deterministic=False) to say so, and "
                        "attack it with EOT (expectation over the randomness).",
                    )
                )
                self._note_randomized(declared=False)
        self._check_outputs(probs_a)

    def _note_randomized(self, *, declared: bool) -> None:
        how = "declared" if declared else "found"
        self.flags.append(
            Flag(
                flags.RANDOMIZED,
                f"The system {self._system.name!r} is randomized ({how}): clean and adversarial "
                f"predictions are majorities over {self.draws} draws, with their agreement.",
            )
        )

    def _check_outputs(self, probs: Tensor) -> None:
        system = self._system
        decided = torch.isfinite(probs).all(1)
        if not bool(decided.any()) or not self.shows_scores:
            return
        raw_probs = probs[decided]
        if system.output is Output.LOGITS:
            # a softmax of probabilities is nearly flat: look at the raw outputs again
            return
        top = raw_probs.max(1).values
        share = float((top >= SATURATED).double().mean())
        if share >= SATURATED_SHARE:
            self.flags.append(
                Flag(
                    flags.SATURATED_SOFTMAX,
                    f"The system {system.name!r} returns probabilities, and {share:.0%} of the "
                    "first inputs judged get a top probability within 1e-6 of 1: the logarithm "
                    "of such probabilities has no gradient, so gradient attacks see zeros and "
                    "robust accuracy looks higher than it is. Attack the logits (a TorchModel "
                    "of the network before its softmax, output='logits'), or use a margin "
                    "loss (loss='margin') on them.",
                )
            )

    def check_logits(self, raw: Tensor) -> None:
        """Flag raw outputs declared logits whose rows are probabilities (the oracle calls this
        with the first raw outputs it sees)."""
        system = self._system
        if system.output is not Output.LOGITS or any(
            f.code == flags.PROBABILITIES_AS_LOGITS for f in self.flags
        ):
            return
        rows = raw.detach().double()
        rows = rows[torch.isfinite(rows).all(1)]
        if not len(rows):
            return
        looks = (rows >= 0).all(1) & ((rows.sum(1) - 1).abs() < 1e-3)
        if float(looks.double().mean()) >= 0.9:
            self.flags.append(
                Flag(
                    flags.PROBABILITIES_AS_LOGITS,
                    f"The system {system.name!r} is declared to return logits, but its outputs "
                    "are probabilities (non-negative rows that sum to 1): the softmax mallory "
                    "applies flattens them and the losses of gradient attacks barely move. "
                    "Declare output='probabilities', or better, attack the logits.",
                )
            )


def _fingerprint(x: Tensor) -> Tensor:
    """Two checksums per row, to tell whether an id still names the same input."""
    flat = x.detach().to("cpu", torch.float64).flatten(1)
    weights = torch.linspace(1.0, 2.0, flat.shape[1], dtype=torch.float64)
    return torch.stack([flat.sum(1), (flat * weights).sum(1)], 1)
