"""The results store: one SQLite file holding runs, per-sample outcomes and the event log.

A campaign commits its work in units (one attack on one chunk of the samples still standing
under one threat model), each in a single transaction with its outcomes, its ledger rows and
its events. A run killed at any point, even by ``kill -9``, leaves only whole units behind;
started again, it skips them and goes on, so nothing is lost and nothing is counted twice.

Tables::

    meta       key, value                      -- format = "mallory-store", version
    runs       run, created, config, status, flags
    samples    run, id, label, prediction, confidence, agreement, source, target, x
    units      run, threat, attack, chunk, name, params, samples, seconds, error,
               status, reason, budget, planned, flags, evaluator, refusals
    outcomes   run, threat, attack, id, success, interrupted, prediction, confidence, agreement,
               l0, l2, linf, target, x_adv (float32 bytes; only for successes)
    ledger     run, threat, attack, id, queries, gradients, seconds, money
    events     run, threat, attack, chunk, seq, account, kind, time, seconds, price,
               ids, outcome, reason, flags (the calls of the event log, per-row columns as bytes)
    artifacts  run, threat, name, data   -- what a resumed run must not rebuild (a surrogate
                                            bought with queries)

The event log is the record (attacker's calls, account ``"attacker"``, and the judge's,
``"evaluator"``); the ledger holds its per-sample sums per attack, for the report. Unit
``attack = -1`` is a threat model's preface (an extraction); ``threat = -1`` the run's own
(the judge's clean verdicts).

A file that exists and is not a mallory store is refused, never written to. A store of an
earlier version is upgraded in place, in one transaction, and its runs resume.
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mallory.access.events import Call, Kind
from mallory.errors import InputError

FORMAT = "mallory-store"
VERSION = "2"

_TABLES = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    run TEXT PRIMARY KEY, created TEXT NOT NULL, config TEXT NOT NULL, status TEXT NOT NULL,
    flags TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE samples (
    run TEXT NOT NULL, id INTEGER NOT NULL, label INTEGER NOT NULL, prediction INTEGER NOT NULL,
    confidence REAL, source INTEGER, target INTEGER, x BLOB NOT NULL, agreement REAL,
    PRIMARY KEY (run, id)
);
CREATE TABLE units (
    run TEXT NOT NULL, threat INTEGER NOT NULL, attack INTEGER NOT NULL, chunk INTEGER NOT NULL,
    name TEXT NOT NULL, params TEXT NOT NULL, samples INTEGER NOT NULL, seconds REAL NOT NULL,
    error TEXT, status TEXT NOT NULL DEFAULT 'ran', reason TEXT, budget INTEGER,
    planned INTEGER, flags TEXT NOT NULL DEFAULT '[]', evaluator TEXT NOT NULL DEFAULT '{}',
    refusals TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (run, threat, attack, chunk)
);
CREATE TABLE outcomes (
    run TEXT NOT NULL, threat INTEGER NOT NULL, attack INTEGER NOT NULL, id INTEGER NOT NULL,
    success INTEGER NOT NULL, interrupted INTEGER NOT NULL, prediction INTEGER NOT NULL,
    confidence REAL, l0 REAL, l2 REAL, linf REAL, target INTEGER, x_adv BLOB, agreement REAL,
    PRIMARY KEY (run, threat, attack, id)
);
CREATE TABLE ledger (
    run TEXT NOT NULL, threat INTEGER NOT NULL, attack INTEGER NOT NULL, id INTEGER NOT NULL,
    queries INTEGER NOT NULL, gradients INTEGER NOT NULL, seconds REAL NOT NULL,
    money REAL NOT NULL, PRIMARY KEY (run, threat, attack, id)
);
CREATE TABLE events (
    run TEXT NOT NULL, threat INTEGER NOT NULL, attack INTEGER NOT NULL, chunk INTEGER NOT NULL,
    seq INTEGER NOT NULL, account TEXT NOT NULL, kind TEXT NOT NULL, time REAL NOT NULL,
    seconds REAL NOT NULL, price REAL NOT NULL, ids BLOB NOT NULL, outcome BLOB NOT NULL,
    reason BLOB NOT NULL, flags BLOB,
    PRIMARY KEY (run, threat, attack, chunk, account, seq)
);
CREATE TABLE artifacts (
    run TEXT NOT NULL, threat INTEGER NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (run, threat, name)
);
"""

# version 1 -> 2: new columns (defaults keep the old rows' meaning), the event log rebuilt from
# the ledger (one call per unit and kind, each sample's rows as often as it was charged), the
# artifacts table, and the configurations of old runs given the keys that appeared since.
_UPGRADE_1_TO_2 = [
    "ALTER TABLE runs ADD COLUMN flags TEXT NOT NULL DEFAULT '[]'",
    "ALTER TABLE samples ADD COLUMN agreement REAL",
    "ALTER TABLE units ADD COLUMN status TEXT NOT NULL DEFAULT 'ran'",
    "ALTER TABLE units ADD COLUMN reason TEXT",
    "ALTER TABLE units ADD COLUMN budget INTEGER",
    "ALTER TABLE units ADD COLUMN planned INTEGER",
    "ALTER TABLE units ADD COLUMN flags TEXT NOT NULL DEFAULT '[]'",
    "ALTER TABLE units ADD COLUMN evaluator TEXT NOT NULL DEFAULT '{}'",
    "ALTER TABLE units ADD COLUMN refusals TEXT NOT NULL DEFAULT '{}'",
    "ALTER TABLE outcomes ADD COLUMN agreement REAL",
]


@dataclass(frozen=True)
class Samples:
    """The samples of a run: ids, true labels, the judge's clean prediction, confidence and
    agreement, the inputs, and for grid rows the source sample and the target class (-1
    elsewhere)."""

    ids: Tensor
    labels: Tensor
    predictions: Tensor
    confidence: Tensor
    x: Tensor
    source: Tensor
    target: Tensor
    agreement: Tensor | None = None


@dataclass(frozen=True)
class Unit:
    """One committed unit: the attack (by index in its threat model) on one chunk.

    ``status`` is ``"ran"`` or ``"not-run"`` (then ``reason`` says why); ``budget`` is the
    attack's share of the per-sample query budget (None: unlimited), ``planned`` the queries
    per sample it planned; ``flags`` (dicts of code and message), the judge's ledger for the
    unit (``evaluator``: queries, seconds, money) and the refused rows by reason."""

    threat: int
    attack: int
    chunk: int
    name: str
    params: dict[str, Any]
    samples: int
    seconds: float
    error: str | None
    status: str = "ran"
    reason: str | None = None
    budget: int | None = None
    planned: int | None = None
    flags: list[dict[str, Any]] = field(default_factory=list)
    evaluator: dict[str, Any] = field(default_factory=dict)
    refusals: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcomes:
    """Per-sample outcomes and ledger rows of one attack under one threat model."""

    ids: Tensor
    success: Tensor
    interrupted: Tensor
    predictions: Tensor
    confidence: Tensor
    l0: Tensor
    l2: Tensor
    linf: Tensor
    targets: Tensor  # -1 where untargeted
    queries: Tensor
    gradients: Tensor
    seconds: Tensor
    money: Tensor
    x_adv: dict[int, Tensor]  # id -> adversarial input (successes only)
    agreement: Tensor | None = None


class Store:
    """A mallory results store in a SQLite file (created when missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise InputError(f"The store path {str(self.path)!r} is a folder; give a file path.")
        exists = self.path.exists() and self.path.stat().st_size > 0
        version = VERSION
        if exists:
            version = _check_is_store(self.path)
        elif not self.path.parent.exists():
            raise InputError(
                f"The folder of the store {str(self.path)!r} does not exist; create it first."
            )
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        if not exists:
            with self._transaction():
                self._create()
        elif version != VERSION:
            with self._transaction():
                self._upgrade(version)

    def _create(self) -> None:
        for statement in _TABLES.split(";"):
            if statement.strip():
                self._db.execute(statement)
        self._db.executemany(
            "INSERT INTO meta VALUES (?, ?)", [("format", FORMAT), ("version", VERSION)]
        )

    def _upgrade(self, version: str) -> None:
        """Bring a store of an earlier version to this one (inside the caller's transaction)."""
        if version == "1":
            for statement in _UPGRADE_1_TO_2:
                self._db.execute(statement)
            for statement in _TABLES.split(";"):
                if "CREATE TABLE events" in statement or "CREATE TABLE artifacts" in statement:
                    self._db.execute(statement)
            self._events_from_ledger()
            self._configs_1_to_2()
        self._db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (VERSION,))

    def _events_from_ledger(self) -> None:
        """A version-1 store kept per-sample sums only: one call per unit and kind rebuilds
        the totals every budget and curve reads (each row charged, at the unit's time)."""
        rows = self._db.execute(
            "SELECT run, threat, attack, id, queries, gradients, seconds, money FROM ledger "
            "ORDER BY run, threat, attack, id"
        ).fetchall()
        groups: dict[tuple[str, int, int], list[tuple[int, int, int, float, float]]] = {}
        for run, threat, attack, sid, queries, gradients, seconds, money in rows:
            groups.setdefault((run, threat, attack), []).append(
                (sid, queries, gradients, seconds, money)
            )
        for (run, threat, attack), members in groups.items():
            queries = sum(m[1] for m in members)
            price = sum(m[4] for m in members) / queries if queries else 0.0
            for seq, kind in enumerate((Kind.GRADIENT, Kind.QUERY)):
                counts = [m[2] if kind is Kind.GRADIENT else m[1] - m[2] for m in members]
                ids = torch.repeat_interleave(
                    torch.tensor([m[0] for m in members], dtype=torch.int64),
                    torch.tensor(counts, dtype=torch.int64),
                )
                if not len(ids):
                    continue
                seconds = sum(m[3] for m in members) if kind is Kind.QUERY else 0.0
                self._insert_call(
                    run,
                    threat,
                    attack,
                    0,
                    Call(
                        seq=seq,
                        time=0.0,
                        seconds=seconds,
                        account="attacker",
                        kind=kind,
                        ids=ids,
                        outcome=torch.zeros(len(ids), dtype=torch.int8),
                        reason=torch.zeros(len(ids), dtype=torch.int8),
                        price=price,
                    ),
                )

    def _configs_1_to_2(self) -> None:
        rows = self._db.execute("SELECT run, config FROM runs").fetchall()
        for run, text in rows:
            config = upgrade_config(json.loads(text))
            text = json.dumps(config, sort_keys=True)
            self._db.execute("UPDATE runs SET config = ? WHERE run = ?", (text, run))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ------------------------------------------------------------------ runs
    def runs(self) -> list[dict[str, Any]]:
        """Every run: name, created, status, configuration."""
        rows = self._db.execute("SELECT run, created, status, config FROM runs ORDER BY created")
        return [
            {"run": r, "created": c, "status": s, "config": json.loads(cfg)}
            for r, c, s, cfg in rows
        ]

    def run(self, run: str) -> dict[str, Any]:
        row = self._db.execute(
            "SELECT created, status, config, flags FROM runs WHERE run = ?", (run,)
        ).fetchone()
        if row is None:
            known = ", ".join(r["run"] for r in self.runs()) or "none"
            raise InputError(f"No run {run!r} in the store {str(self.path)!r}; runs: {known}.")
        return {
            "run": run,
            "created": row[0],
            "status": row[1],
            "config": json.loads(row[2]),
            "flags": json.loads(row[3]),
        }

    def begin(self, run: str, config: dict[str, Any]) -> bool:
        """Start run ``run`` with ``config``, or find it to resume (True when it existed).

        A run of the same name with another configuration is refused: resuming it would mix
        two campaigns."""
        text = json.dumps(config, sort_keys=True)
        row = self._db.execute("SELECT config FROM runs WHERE run = ?", (run,)).fetchone()
        if row is not None:
            if json.loads(row[0]) != json.loads(text):
                raise InputError(
                    f"The store {str(self.path)!r} already has a run {run!r} with another "
                    "configuration. Give this campaign another name (or another store) to keep "
                    "both."
                )
            return True
        created = datetime.now(UTC).isoformat(timespec="seconds")
        with self._transaction():
            self._db.execute(
                "INSERT INTO runs (run, created, config, status) VALUES (?, ?, ?, ?)",
                (run, created, text, "running"),
            )
        return False

    def finish(self, run: str, status: str = "complete") -> None:
        with self._transaction():
            self._db.execute("UPDATE runs SET status = ? WHERE run = ?", (status, run))

    def add_flags(self, run: str, flags: list[dict[str, Any]]) -> None:
        """Add run-level flags (each code and message once)."""
        known = self.run(run)["flags"]
        merged = list(known)
        for flag in flags:
            if flag not in merged:
                merged.append(flag)
        if merged != known:
            with self._transaction():
                self._db.execute(
                    "UPDATE runs SET flags = ? WHERE run = ?", (json.dumps(merged), run)
                )

    # ------------------------------------------------------------------ samples
    def has_samples(self, run: str) -> bool:
        row = self._db.execute("SELECT COUNT(*) FROM samples WHERE run = ?", (run,)).fetchone()
        return bool(row[0])

    def add_samples(self, run: str, samples: Samples, calls: list[Call] = ()) -> None:  # type: ignore[assignment]
        """The run's samples, and the judge's calls that decided them (one transaction)."""
        agreement = samples.agreement
        rows = [
            (
                run,
                int(samples.ids[i]),
                int(samples.labels[i]),
                int(samples.predictions[i]),
                _float_or_none(samples.confidence[i]),
                _int_or_none(samples.source[i]),
                _int_or_none(samples.target[i]),
                _blob(samples.x[i]),
                None if agreement is None else _float_or_none(agreement[i]),
            )
            for i in range(len(samples.ids))
        ]
        with self._transaction():
            self._db.executemany(
                "INSERT INTO samples (run, id, label, prediction, confidence, source, target, x, "
                "agreement) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            for call in calls:
                self._insert_call(run, -1, -1, 0, call)

    def samples(self, run: str, shape: tuple[int, ...]) -> Samples:
        rows = self._db.execute(
            "SELECT id, label, prediction, confidence, source, target, x, agreement FROM samples "
            "WHERE run = ? ORDER BY id",
            (run,),
        ).fetchall()
        x = torch.stack([_tensor(r[6], shape) for r in rows]) if rows else torch.zeros(0, *shape)
        return Samples(
            ids=torch.tensor([r[0] for r in rows], dtype=torch.int64),
            labels=torch.tensor([r[1] for r in rows], dtype=torch.int64),
            predictions=torch.tensor([r[2] for r in rows], dtype=torch.int64),
            confidence=torch.tensor(
                [np.nan if r[3] is None else r[3] for r in rows], dtype=torch.float64
            ),
            x=x,
            source=torch.tensor([-1 if r[4] is None else r[4] for r in rows], dtype=torch.int64),
            target=torch.tensor([-1 if r[5] is None else r[5] for r in rows], dtype=torch.int64),
            agreement=torch.tensor(
                [np.nan if r[7] is None else r[7] for r in rows], dtype=torch.float64
            ),
        )

    # ------------------------------------------------------------------ units
    def units(self, run: str) -> list[Unit]:
        rows = self._db.execute(
            "SELECT threat, attack, chunk, name, params, samples, seconds, error, status, reason, "
            "budget, planned, flags, evaluator, refusals FROM units "
            "WHERE run = ? ORDER BY threat, attack, chunk",
            (run,),
        )
        return [
            Unit(
                t,
                a,
                c,
                n,
                json.loads(p),
                s,
                sec,
                e,
                status,
                reason,
                budget,
                planned,
                json.loads(flags),
                json.loads(evaluator),
                json.loads(refusals),
            )
            for (
                t,
                a,
                c,
                n,
                p,
                s,
                sec,
                e,
                status,
                reason,
                budget,
                planned,
                flags,
                evaluator,
                refusals,
            ) in rows
        ]

    def commit_unit(
        self,
        run: str,
        unit: Unit,
        outcomes: Outcomes | None,
        calls: list[Call] = (),  # type: ignore[assignment]
        artifacts: dict[str, bytes] | None = None,
    ) -> None:
        """The unit, its outcomes, ledger rows, events and artifacts, all or nothing."""
        t, a = unit.threat, unit.attack
        outcome_rows = []
        ledger_rows = []
        if outcomes is not None:
            agreement = outcomes.agreement
            for i in range(len(outcomes.ids)):
                sid = int(outcomes.ids[i])
                x_adv = outcomes.x_adv.get(sid)
                outcome_rows.append(
                    (
                        run,
                        t,
                        a,
                        sid,
                        int(outcomes.success[i]),
                        int(outcomes.interrupted[i]),
                        int(outcomes.predictions[i]),
                        _float_or_none(outcomes.confidence[i]),
                        _float_or_none(outcomes.l0[i]),
                        _float_or_none(outcomes.l2[i]),
                        _float_or_none(outcomes.linf[i]),
                        _int_or_none(outcomes.targets[i]),
                        None if x_adv is None else _blob(x_adv),
                        None if agreement is None else _float_or_none(agreement[i]),
                    )
                )
                ledger_rows.append(
                    (
                        run,
                        t,
                        a,
                        sid,
                        int(outcomes.queries[i]),
                        int(outcomes.gradients[i]),
                        float(outcomes.seconds[i]),
                        float(outcomes.money[i]),
                    )
                )
        with self._transaction():
            self._db.execute(
                "INSERT INTO units (run, threat, attack, chunk, name, params, samples, seconds, "
                "error, status, reason, budget, planned, flags, evaluator, refusals) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run,
                    t,
                    a,
                    unit.chunk,
                    unit.name,
                    json.dumps(unit.params, sort_keys=True, default=str),
                    unit.samples,
                    unit.seconds,
                    unit.error,
                    unit.status,
                    unit.reason,
                    unit.budget,
                    unit.planned,
                    json.dumps(unit.flags),
                    json.dumps(unit.evaluator),
                    json.dumps(unit.refusals),
                ),
            )
            self._db.executemany(
                "INSERT INTO outcomes (run, threat, attack, id, success, interrupted, prediction, "
                "confidence, l0, l2, linf, target, x_adv, agreement) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                outcome_rows,
            )
            self._db.executemany("INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?)", ledger_rows)
            for call in calls:
                self._insert_call(run, t, a, unit.chunk, call)
            for name, data in (artifacts or {}).items():
                self._db.execute("INSERT INTO artifacts VALUES (?, ?, ?, ?)", (run, t, name, data))

    def outcomes(
        self, run: str, threat: int, attack: int, shape: tuple[int, ...], *, inputs: bool = True
    ) -> Outcomes:
        """Outcomes and ledger rows of one attack (all its committed chunks), by sample id."""
        rows = self._db.execute(
            "SELECT o.id, o.success, o.interrupted, o.prediction, o.confidence, o.l0, o.l2, "
            "o.linf, o.target, l.queries, l.gradients, l.seconds, l.money, o.agreement, "
            + ("o.x_adv " if inputs else "NULL ")
            + "FROM outcomes o JOIN ledger l USING (run, threat, attack, id) "
            "WHERE run = ? AND threat = ? AND attack = ? ORDER BY o.id",
            (run, threat, attack),
        ).fetchall()

        def column(k: int, dtype: torch.dtype) -> Tensor:
            values = [np.nan if r[k] is None else r[k] for r in rows]
            return torch.tensor(values, dtype=dtype)

        return Outcomes(
            ids=column(0, torch.int64),
            success=column(1, torch.bool),
            interrupted=column(2, torch.bool),
            predictions=column(3, torch.int64),
            confidence=column(4, torch.float64),
            l0=column(5, torch.float64),
            l2=column(6, torch.float64),
            linf=column(7, torch.float64),
            targets=torch.tensor([-1 if r[8] is None else r[8] for r in rows], dtype=torch.int64),
            queries=column(9, torch.int64),
            gradients=column(10, torch.int64),
            seconds=column(11, torch.float64),
            money=column(12, torch.float64),
            agreement=column(13, torch.float64),
            x_adv={r[0]: _tensor(r[14], shape) for r in rows if r[14] is not None},
        )

    # ------------------------------------------------------------------ events
    def _insert_call(self, run: str, threat: int, attack: int, chunk: int, call: Call) -> None:
        self._db.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run,
                threat,
                attack,
                chunk,
                call.seq,
                call.account,
                call.kind.value,
                call.time,
                call.seconds,
                call.price,
                call.ids.numpy().astype(np.int64).tobytes(),
                call.outcome.numpy().astype(np.int8).tobytes(),
                call.reason.numpy().astype(np.int8).tobytes(),
                None if call.flags is None else call.flags.numpy().astype(np.int8).tobytes(),
            ),
        )

    def events(
        self,
        run: str,
        *,
        threat: int | None = None,
        attack: int | None = None,
        account: str | None = None,
    ) -> list[Call]:
        """The stored calls of a run (of one threat model, of one account), in the order
        they were made: by unit, then by position in the unit's log."""
        query = (
            "SELECT seq, account, kind, time, seconds, price, ids, outcome, reason, flags "
            "FROM events WHERE run = ?"
        )
        args: list[Any] = [run]
        if threat is not None:
            query += " AND threat = ?"
            args.append(threat)
        if attack is not None:
            query += " AND attack = ?"
            args.append(attack)
        if account is not None:
            query += " AND account = ?"
            args.append(account)
        query += " ORDER BY threat, attack, chunk, seq"
        out = []
        for seq, acct, kind, at, seconds, price, ids, outcome, reason, flags in self._db.execute(
            query, args
        ):
            out.append(
                Call(
                    seq=seq,
                    time=at,
                    seconds=seconds,
                    account=acct,
                    kind=Kind(kind),
                    ids=torch.from_numpy(np.frombuffer(ids, dtype=np.int64).copy()),
                    outcome=torch.from_numpy(np.frombuffer(outcome, dtype=np.int8).copy()),
                    reason=torch.from_numpy(np.frombuffer(reason, dtype=np.int8).copy()),
                    price=price,
                    flags=None
                    if flags is None
                    else torch.from_numpy(np.frombuffer(flags, dtype=np.int8).copy()),
                )
            )
        return out

    def artifact(self, run: str, threat: int, name: str) -> bytes | None:
        row = self._db.execute(
            "SELECT data FROM artifacts WHERE run = ? AND threat = ? AND name = ?",
            (run, threat, name),
        ).fetchone()
        return None if row is None else bytes(row[0])


_EXPERTISE = {"trick": "none", "decision": "low", "score": "low", "transfer": "medium"}


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A campaign configuration of store version 1 with the keys that appeared since, at the
    values that keep its meaning (so a campaign started before resumes)."""
    config = dict(config)
    config.setdefault("draws", None)
    config.setdefault("economics", None)
    plans = []
    for plan in config.get("plans", []):
        plan = dict(plan)
        threat = dict(plan.get("threat", {}))
        threat.setdefault("feedback", "blocked")
        threat.setdefault("price_per_second", 0.0)
        threat.setdefault("price_per_account", 0.0)
        plan["threat"] = threat
        plan.setdefault("shares", None)
        plan.setdefault("extraction", None)
        plan["attacks"] = [
            {"expertise": _EXPERTISE.get(a.get("family", ""), "high"), **a}
            for a in plan.get("attacks", [])
        ]
        plans.append(plan)
    config["plans"] = plans
    return config


def _check_is_store(path: Path) -> str:
    """Refuse (without writing) a file that is not a mallory store; its version otherwise."""
    refusal = InputError(
        f"{str(path)!r} exists and is not a mallory store; it is left untouched. Give a new "
        "file name (or an existing mallory store)."
    )
    with path.open("rb") as file:
        if file.read(16) != b"SQLite format 3\x00":
            raise refusal
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            version = db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        raise refusal from None
    if row is None or row[0] != FORMAT:
        raise refusal
    found = None if version is None else version[0]
    if found not in ("1", VERSION):
        raise InputError(
            f"{str(path)!r} is a mallory store of version {found!r}; this mallory reads versions "
            f"1 to {VERSION}. Use a new store file, or a newer mallory."
        )
    return str(found)


def save_object(value: Any) -> bytes:
    """Bytes of a torch-picklable object (an artifact of a run)."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def load_object(data: bytes) -> Any:
    """An artifact written by :func:`save_object` (the store is trusted: it unpickles)."""
    return torch.load(io.BytesIO(data), weights_only=False)


def _blob(x: Tensor) -> bytes:
    return x.detach().to(torch.float32).contiguous().numpy().tobytes()


def _tensor(blob: bytes, shape: tuple[int, ...]) -> Tensor:
    return torch.from_numpy(np.frombuffer(blob, dtype=np.float32).copy()).view(shape)


def _int_or_none(value: Tensor) -> int | None:
    v = int(value)
    return None if v < 0 else v


def _float_or_none(value: Tensor) -> float | None:
    v = float(value)
    return None if v != v else v
