"""The results store: one SQLite file holding runs, per-sample outcomes and the query ledger.

A campaign commits its work in units (one attack on one chunk of the samples still standing
under one threat model), each in a single transaction with its outcomes and its ledger rows.
A run killed at any point, even by ``kill -9``, leaves only whole units behind; started again,
it skips them and goes on, so nothing is lost and nothing is counted twice.

Tables::

    meta      key, value                       -- format = "mallory-store", version
    runs      run, created, config, status      -- config: the campaign as JSON
    samples   run, id, label, prediction, confidence, source, target, x
    units     run, threat, attack, chunk, name, params, samples, seconds, error
    outcomes  run, threat, attack, id, success, interrupted, prediction, confidence,
              l0, l2, linf, target, x_adv (float32 bytes; only for successes)
    ledger    run, threat, attack, id, queries, gradients, seconds, money

A file that exists and is not a mallory store is refused, never written to.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mallory.errors import InputError

FORMAT = "mallory-store"
VERSION = "1"

_TABLES = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    run TEXT PRIMARY KEY, created TEXT NOT NULL, config TEXT NOT NULL, status TEXT NOT NULL
);
CREATE TABLE samples (
    run TEXT NOT NULL, id INTEGER NOT NULL, label INTEGER NOT NULL, prediction INTEGER NOT NULL,
    confidence REAL NOT NULL, source INTEGER, target INTEGER, x BLOB NOT NULL,
    PRIMARY KEY (run, id)
);
CREATE TABLE units (
    run TEXT NOT NULL, threat INTEGER NOT NULL, attack INTEGER NOT NULL, chunk INTEGER NOT NULL,
    name TEXT NOT NULL, params TEXT NOT NULL, samples INTEGER NOT NULL, seconds REAL NOT NULL,
    error TEXT, PRIMARY KEY (run, threat, attack, chunk)
);
CREATE TABLE outcomes (
    run TEXT NOT NULL, threat INTEGER NOT NULL, attack INTEGER NOT NULL, id INTEGER NOT NULL,
    success INTEGER NOT NULL, interrupted INTEGER NOT NULL, prediction INTEGER NOT NULL,
    confidence REAL, l0 REAL, l2 REAL, linf REAL, target INTEGER, x_adv BLOB,
    PRIMARY KEY (run, threat, attack, id)
);
CREATE TABLE ledger (
    run TEXT NOT NULL, threat INTEGER NOT NULL, attack INTEGER NOT NULL, id INTEGER NOT NULL,
    queries INTEGER NOT NULL, gradients INTEGER NOT NULL, seconds REAL NOT NULL,
    money REAL NOT NULL, PRIMARY KEY (run, threat, attack, id)
);
"""


@dataclass(frozen=True)
class Samples:
    """The samples of a run: ids, true labels, the system's clean prediction and confidence,
    the inputs, and for grid rows the source sample and the target class (-1 elsewhere)."""

    ids: Tensor
    labels: Tensor
    predictions: Tensor
    confidence: Tensor
    x: Tensor
    source: Tensor
    target: Tensor


@dataclass(frozen=True)
class Unit:
    """One committed unit: the attack (by index in its threat model) on one chunk."""

    threat: int
    attack: int
    chunk: int
    name: str
    params: dict[str, Any]
    samples: int
    seconds: float
    error: str | None


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


class Store:
    """A mallory results store in a SQLite file (created when missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise InputError(f"The store path {str(self.path)!r} is a folder; give a file path.")
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists:
            _check_is_store(self.path)
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

    def _create(self) -> None:
        for statement in _TABLES.split(";"):
            if statement.strip():
                self._db.execute(statement)
        self._db.executemany(
            "INSERT INTO meta VALUES (?, ?)", [("format", FORMAT), ("version", VERSION)]
        )

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
            "SELECT created, status, config FROM runs WHERE run = ?", (run,)
        ).fetchone()
        if row is None:
            known = ", ".join(r["run"] for r in self.runs()) or "none"
            raise InputError(f"No run {run!r} in the store {str(self.path)!r}; runs: {known}.")
        return {"run": run, "created": row[0], "status": row[1], "config": json.loads(row[2])}

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
                "INSERT INTO runs VALUES (?, ?, ?, ?)", (run, created, text, "running")
            )
        return False

    def finish(self, run: str, status: str = "complete") -> None:
        with self._transaction():
            self._db.execute("UPDATE runs SET status = ? WHERE run = ?", (status, run))

    # ------------------------------------------------------------------ samples
    def has_samples(self, run: str) -> bool:
        row = self._db.execute("SELECT COUNT(*) FROM samples WHERE run = ?", (run,)).fetchone()
        return bool(row[0])

    def add_samples(self, run: str, samples: Samples) -> None:
        rows = [
            (
                run,
                int(samples.ids[i]),
                int(samples.labels[i]),
                int(samples.predictions[i]),
                float(samples.confidence[i]),
                _int_or_none(samples.source[i]),
                _int_or_none(samples.target[i]),
                _blob(samples.x[i]),
            )
            for i in range(len(samples.ids))
        ]
        with self._transaction():
            self._db.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def samples(self, run: str, shape: tuple[int, ...]) -> Samples:
        rows = self._db.execute(
            "SELECT id, label, prediction, confidence, source, target, x FROM samples "
            "WHERE run = ? ORDER BY id",
            (run,),
        ).fetchall()
        x = torch.stack([_tensor(r[6], shape) for r in rows]) if rows else torch.zeros(0, *shape)
        return Samples(
            ids=torch.tensor([r[0] for r in rows], dtype=torch.int64),
            labels=torch.tensor([r[1] for r in rows], dtype=torch.int64),
            predictions=torch.tensor([r[2] for r in rows], dtype=torch.int64),
            confidence=torch.tensor([r[3] for r in rows], dtype=torch.float64),
            x=x,
            source=torch.tensor([-1 if r[4] is None else r[4] for r in rows], dtype=torch.int64),
            target=torch.tensor([-1 if r[5] is None else r[5] for r in rows], dtype=torch.int64),
        )

    # ------------------------------------------------------------------ units
    def units(self, run: str) -> list[Unit]:
        rows = self._db.execute(
            "SELECT threat, attack, chunk, name, params, samples, seconds, error FROM units "
            "WHERE run = ? ORDER BY threat, attack, chunk",
            (run,),
        )
        return [Unit(t, a, c, n, json.loads(p), s, sec, e) for t, a, c, n, p, s, sec, e in rows]

    def commit_unit(self, run: str, unit: Unit, outcomes: Outcomes) -> None:
        """The unit, its outcomes and its ledger rows, all or nothing."""
        t, a = unit.threat, unit.attack
        outcome_rows = []
        ledger_rows = []
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
                "INSERT INTO units VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                ),
            )
            self._db.executemany(
                "INSERT INTO outcomes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", outcome_rows
            )
            self._db.executemany("INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?)", ledger_rows)

    def outcomes(
        self, run: str, threat: int, attack: int, shape: tuple[int, ...], *, inputs: bool = True
    ) -> Outcomes:
        """Outcomes and ledger rows of one attack (all its committed chunks), by sample id."""
        rows = self._db.execute(
            "SELECT o.id, o.success, o.interrupted, o.prediction, o.confidence, o.l0, o.l2, "
            "o.linf, o.target, l.queries, l.gradients, l.seconds, l.money, "
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
            x_adv={r[0]: _tensor(r[13], shape) for r in rows if r[13] is not None},
        )


def _check_is_store(path: Path) -> None:
    """Refuse (without writing) a file that is not a mallory store."""
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
    if version is None or version[0] != VERSION:
        found = None if version is None else version[0]
        raise InputError(
            f"{str(path)!r} is a mallory store of version {found!r}; this mallory reads version "
            f"{VERSION}. Use a new store file."
        )


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
