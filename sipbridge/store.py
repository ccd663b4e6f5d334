"""Call state storage.

:class:`CallStore` is the interface (a protocol: the call manager knows nothing else);
:class:`SQLiteStore` the embedded default (WAL, durable across restarts);
:class:`sipbridge.pgstore.PostgresStore` the shared one. Both run the queries of
:class:`sipbridge.sqlstore.SqlStore`. The records are in sipbridge.records.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

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
    OutboxMessage,
)
from sipbridge.sqlstore import SqlStore

if TYPE_CHECKING:
    from sipbridge.config import StoreConfig


class CallStore(Protocol):
    """What the call manager needs from call storage. A backend keeps every field of a
    :class:`CallRecord` as written (``to_json`` of its typed parts) and answers these
    queries; a row it cannot read comes back with ``damaged`` saying why."""

    def create(
        self, rec: CallRecord, event: CallEvent | None = None, outbox: Sequence[OutboxMessage] = ()
    ) -> None:
        """Store a new call (with its first event and the callbacks reporting it, in one
        transaction); :class:`DuplicateCall` if its callSid or key exists."""

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

    def save_status(
        self, rec: CallRecord, event: CallEvent, outbox: Sequence[OutboxMessage] = ()
    ) -> None:
        """A status change in one transaction: the record, its ``status`` event and the
        status callbacks that report it (the webhook outbox)."""

    def outbox_due(self, now: float, limit: int) -> list[OutboxMessage]:
        """Undelivered callbacks due by ``now``, oldest first, one per call at most."""

    def outbox_claim(self, now: float, limit: int, lease_s: float) -> list[OutboxMessage]:
        """Those of :meth:`outbox_due`, taken for delivery here until ``now + lease_s``
        (other nodes on the same store skip them meanwhile)."""

    def outbox_next_at(self) -> float | None: ...

    def outbox_pending(self) -> int: ...

    def outbox_retry(self, delivery_id: str, attempts: int, next_at: float, error: str) -> None: ...

    def outbox_done(
        self, delivery_id: str, result: str, attempts: int, now: float, error: str = ""
    ) -> None: ...

    def ping(self) -> bool: ...

    def close(self) -> None: ...


SCHEMA_VERSION = 3
# The durable webhook outbox (version 3).
_OUTBOX_TABLE = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL UNIQUE,
    call_sid TEXT NOT NULL,
    status TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    result TEXT,
    last_error TEXT NOT NULL DEFAULT '',
    done_at REAL
)"""
# Migrations from each older version to the next, applied in order at open.
_MIGRATIONS: dict[int, str] = {
    1: "ALTER TABLE calls ADD COLUMN detail TEXT NOT NULL DEFAULT ''",
    2: _OUTBOX_TABLE,
}
_SCHEMA = (
    """
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
    + _OUTBOX_TABLE
    + """;
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(call_sid, id) WHERE done_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_done ON outbox(done_at);
"""
)


class _SQLiteTx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def run(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[tuple[Any, ...]], int]:
        cur = self.db.execute(sql, tuple(params))
        return cur.fetchall(), cur.rowcount


class SQLiteStore(SqlStore):
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
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='calls'"
            ).fetchone()
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {version}, this build reads {SCHEMA_VERSION}"
                )
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

    @contextmanager
    def _tx(self) -> Iterator[_SQLiteTx]:
        with self._lock:
            try:
                self._db.execute("BEGIN")
                try:
                    yield _SQLiteTx(self._db)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError as e:
                if "UNIQUE" in str(e):
                    raise DuplicateCall(str(e)) from None
                raise StoreError(f"SQLite store {self.path}: {e}") from None
            except sqlite3.Error as e:
                raise StoreError(f"SQLite store {self.path}: {e}") from None

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


def open_store(cfg: StoreConfig) -> CallStore:
    """The configured backend: SQLite (embedded default) or PostgreSQL."""
    if cfg.kind == "sqlite":
        return SQLiteStore(cfg.path, cfg.retention_s)
    if cfg.kind == "postgresql":
        from sipbridge.pgstore import PostgresStore

        assert cfg.dsn is not None  # the config requires it
        return PostgresStore(cfg.dsn.resolve(), cfg.retention_s)
    raise StoreError(f"unknown store backend {cfg.kind!r}")


__all__ = [
    "STATUSES",
    "TERMINAL",
    "AttemptRecord",
    "CallEvent",
    "CallRecord",
    "CallRequest",
    "CallStatus",
    "CallStore",
    "DuplicateCall",
    "LegRecord",
    "OutboxMessage",
    "SQLiteStore",
    "StoreError",
    "open_store",
    "replace",
]
