"""Call state storage.

:class:`CallStore` is the interface (a protocol: the call manager knows nothing else);
:class:`SQLiteStore` the embedded default (WAL, durable across restarts). A shared store
(PostgreSQL) implements the same protocol later. The records are in sipbridge.records.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from sipbridge.errors import DuplicateCall, StoreError
from sipbridge.records import (
    STATUSES,
    TERMINAL,
    AttemptRecord,
    CallEvent,
    CallRecord,
    CallRequest,
    CallStatus,
    LegRecord,
    call_status,
)


class CallStore(Protocol):
    """What the call manager needs from call storage. A backend keeps every field of a
    :class:`CallRecord` as written (``to_json`` of its typed parts) and answers these
    queries; a row it cannot read comes back with ``damaged`` saying why."""

    def create(self, rec: CallRecord) -> None:
        """Store a new call; :class:`DuplicateCall` if its callSid or key exists."""

    def get(self, call_sid: str, now: float | None = None) -> CallRecord | None:
        """The call, or None if unknown or ended longer than the retention window ago."""

    def save(self, rec: CallRecord) -> None:
        """Write all fields of an existing call."""

    def add_event(self, call_sid: str, event: CallEvent) -> None: ...

    def events(self, call_sid: str) -> list[CallEvent]: ...

    def by_status(self, *statuses: CallStatus) -> list[CallRecord]:
        """Calls in any of these statuses, oldest first."""

    def find_by_idempotency_key(self, key: str) -> CallRecord | None: ...

    def find_by_polyai_call_id(self, polyai_call_id: str) -> CallRecord | None: ...

    def purge_expired(self, now: float | None = None) -> int:
        """Delete calls that ended more than the retention window ago; return how many."""

    def add_cdr(self, cdr: dict[str, Any]) -> None:
        """Store one call detail record (a JSON object with ``call_sid``, ``attempt`` and
        ``ended_at`` epoch seconds). CDRs are kept when their call is purged."""

    def cdrs(self, since: float, until: float | None = None) -> list[dict[str, Any]]:
        """CDRs whose attempt ended in ``[since, until)``, oldest first."""

    def ping(self) -> bool: ...

    def close(self) -> None: ...


SCHEMA_VERSION = 2
# Migrations from each older version to the next, applied in order at open.
_MIGRATIONS: dict[int, str] = {
    1: "ALTER TABLE calls ADD COLUMN detail TEXT NOT NULL DEFAULT ''",
}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    call_sid TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    to_number TEXT NOT NULL,
    from_number TEXT NOT NULL,
    trunk TEXT NOT NULL DEFAULT '',
    sip_status INTEGER,
    answered_by TEXT,
    polyai_call_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    last_updated REAL NOT NULL,
    ended_at REAL,
    request TEXT NOT NULL DEFAULT '{}',
    legs TEXT NOT NULL DEFAULT '{}',
    not_before REAL,
    idempotency_key TEXT,
    attempt_history TEXT NOT NULL DEFAULT '[]',
    detail TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS calls_idem ON calls(idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS calls_status ON calls(status);
CREATE INDEX IF NOT EXISTS calls_polyai ON calls(polyai_call_id);
CREATE INDEX IF NOT EXISTS calls_ended ON calls(ended_at);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    call_sid TEXT NOT NULL REFERENCES calls(call_sid) ON DELETE CASCADE,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_sid ON events(call_sid, id);
CREATE TABLE IF NOT EXISTS cdrs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    call_sid TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    ended_at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cdrs_ended ON cdrs(ended_at, id);
CREATE INDEX IF NOT EXISTS cdrs_sid ON cdrs(call_sid);
"""

_COLS = (
    "call_sid", "status", "reason", "to_number", "from_number", "trunk", "sip_status",
    "answered_by", "polyai_call_id", "attempts", "created_at", "last_updated", "ended_at",
    "request", "legs", "not_before", "idempotency_key", "attempt_history", "detail",
)
_JSON_COLS = ("request", "legs", "attempt_history")


def _json_object(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ValueError("not a JSON object")
    return v


def _json_list(v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise ValueError("not a JSON list")
    return v


# How each JSON column becomes its typed field (ValueError/TypeError/KeyError: damaged).
_PARSE: dict[str, Any] = {
    "request": lambda v: CallRequest.from_json(_json_object(v)),
    "legs": lambda v: {str(k): LegRecord.from_json(x) for k, x in _json_object(v).items()},
    "attempt_history": lambda v: tuple(AttemptRecord.from_json(x) for x in _json_list(v)),
}
_EMPTY: dict[str, Any] = {"request": CallRequest(), "legs": {}, "attempt_history": ()}


class SQLiteStore:
    """SQLite in WAL mode; every write is committed before the call returns."""

    def __init__(self, path: str | Path, retention_s: float = 7200.0):
        self.path = str(path)
        self.retention_s = retention_s
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            had_calls = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='calls'").fetchone()
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: schema version {version}, this build "
                                 f"reads {SCHEMA_VERSION}")
            if had_calls and version < SCHEMA_VERSION:
                # A file from an older build: bring it up to date in one transaction.
                self._db.execute("BEGIN IMMEDIATE")
                for v in range(max(version, 1), SCHEMA_VERSION):
                    self._db.execute(_MIGRATIONS[v])
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self._db.execute("COMMIT")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as e:
            raise StoreError(f"cannot open SQLite store {self.path}: {e}") from None

    def _row(self, row: tuple[Any, ...]) -> CallRecord:
        d = dict(zip(_COLS, row, strict=True))
        damaged = []
        for c in _JSON_COLS:
            try:
                d[c] = _PARSE[c](json.loads(d[c]))
            except (TypeError, ValueError, KeyError) as e:
                damaged.append(f"column {c}: {e}")
                d[c] = _EMPTY[c]
        try:
            d["status"] = call_status(d["status"])
        except ValueError as e:
            damaged.append(f"column status: {e}")
        if damaged:
            d["damaged"] = "; ".join(damaged)
        return CallRecord(**d)

    def _values(self, rec: CallRecord) -> tuple[Any, ...]:
        d = {c: getattr(rec, c) for c in _COLS}
        d["request"] = rec.request.to_json()
        d["legs"] = {k: leg.to_json() for k, leg in rec.legs.items()}
        d["attempt_history"] = [a.to_json() for a in rec.attempt_history]
        for c in _JSON_COLS:
            d[c] = json.dumps(d[c], separators=(",", ":"))
        return tuple(d[c] for c in _COLS)

    def create(self, rec: CallRecord) -> None:
        marks = ",".join("?" * len(_COLS))
        try:
            with self._lock:
                self._db.execute(f"INSERT INTO calls ({','.join(_COLS)}) VALUES ({marks})",
                                 self._values(rec))
        except sqlite3.IntegrityError as e:
            raise DuplicateCall(f"{rec.call_sid}: {e}") from None

    def find_by_idempotency_key(self, key: str) -> CallRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {','.join(_COLS)} FROM calls WHERE idempotency_key=?", (key,)
            ).fetchone()
        return None if row is None else self.get(self._row(row).call_sid)

    def save(self, rec: CallRecord) -> None:
        sets = ",".join(f"{c}=?" for c in _COLS[1:])
        vals = self._values(rec)
        with self._lock:
            cur = self._db.execute(f"UPDATE calls SET {sets} WHERE call_sid=?",
                                   (*vals[1:], vals[0]))
        if cur.rowcount != 1:
            raise StoreError(f"call {rec.call_sid} does not exist")

    def get(self, call_sid: str, now: float | None = None) -> CallRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {','.join(_COLS)} FROM calls WHERE call_sid=?", (call_sid,)
            ).fetchone()
        if row is None:
            return None
        rec = self._row(row)
        now = time.time() if now is None else now
        if rec.ended_at is not None and now - rec.ended_at > self.retention_s:
            return None
        return rec

    def add_event(self, call_sid: str, event: CallEvent) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO events (call_sid, ts, kind, data) VALUES (?,?,?,?)",
                (call_sid, event.ts, event.kind, json.dumps(event.data, separators=(",", ":"))),
            )

    def events(self, call_sid: str) -> list[CallEvent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT ts, kind, data FROM events WHERE call_sid=? ORDER BY id", (call_sid,)
            ).fetchall()
        return [CallEvent(ts, kind, json.loads(data)) for ts, kind, data in rows]

    def by_status(self, *statuses: CallStatus) -> list[CallRecord]:
        marks = ",".join("?" * len(statuses))
        with self._lock:
            rows = self._db.execute(
                f"SELECT {','.join(_COLS)} FROM calls WHERE status IN ({marks}) "
                "ORDER BY created_at",
                statuses,
            ).fetchall()
        return [self._row(r) for r in rows]

    def find_by_polyai_call_id(self, polyai_call_id: str) -> CallRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {','.join(_COLS)} FROM calls WHERE polyai_call_id=? "
                "ORDER BY created_at DESC LIMIT 1",
                (polyai_call_id,),
            ).fetchone()
        if row is None:
            return None
        rec = self._row(row)
        return self.get(rec.call_sid)

    def purge_expired(self, now: float | None = None) -> int:
        cutoff = (time.time() if now is None else now) - self.retention_s
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM calls WHERE ended_at IS NOT NULL AND ended_at < ?", (cutoff,)
            )
        return cur.rowcount

    def add_cdr(self, cdr: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO cdrs (call_sid, attempt, ended_at, data) VALUES (?,?,?,?)",
                (cdr["call_sid"], int(cdr.get("attempt") or 0), float(cdr["ended_at"]),
                 json.dumps(cdr, separators=(",", ":"))),
            )

    def cdrs(self, since: float, until: float | None = None) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT data FROM cdrs WHERE ended_at >= ? AND ended_at < ? "
                "ORDER BY ended_at, id",
                (since, float("inf") if until is None else until),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def ping(self) -> bool:
        try:
            with self._lock:
                self._db.execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_store(kind: str, path: str, retention_s: float) -> CallStore:
    if kind == "sqlite":
        return SQLiteStore(path, retention_s)
    raise StoreError(f"unknown store kind {kind!r}")


__all__ = [
    "STATUSES", "TERMINAL", "AttemptRecord", "CallEvent", "CallRecord", "CallRequest",
    "CallStatus", "CallStore", "DuplicateCall", "LegRecord", "SQLiteStore", "StoreError",
    "open_store", "replace",
]
