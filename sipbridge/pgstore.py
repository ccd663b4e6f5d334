"""PostgreSQL call store (psycopg 3): the same queries as SQLite (sipbridge.sqlstore), a
schema versioned by numbered migrations, applied at open inside one transaction under an
advisory lock (several nodes may start at once), recorded in ``schema_version``.

One connection, used from the supervisor's loop thread like the SQLite one, in
autocommit: a read or a single write is one statement (no BEGIN/COMMIT round trips), a
new call or a status change is one statement too (the call row, its event and its
callbacks through data-modifying CTEs); explicit transactions remain only where two
statements must agree (migrations, takeovers, purges). A lost
connection makes every operation raise :class:`StoreError` ("PostgreSQL store
unavailable: ..."); the next operation reconnects (at most one try per
``RECONNECT_EVERY_S``, so a dead server does not stall the loop on every call).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pgerrors

from sipbridge.errors import DuplicateCall, StoreError, StoreUnavailable
from sipbridge.records import CallEvent, CallRecord, OutboxMessage
from sipbridge.sqlstore import COLS, OUTBOX_COLS, SqlStore, iter_statements

# Numbered migrations: version N's script takes the schema from N-1 to N. Never edit
# a released one; add the next number.
MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE calls (
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
    created_at DOUBLE PRECISION NOT NULL,
    last_updated DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    request TEXT NOT NULL DEFAULT '{}',
    legs TEXT NOT NULL DEFAULT '{}',
    not_before DOUBLE PRECISION,
    idempotency_key TEXT,
    attempt_history TEXT NOT NULL DEFAULT '[]',
    detail TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX calls_idem ON calls(idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX calls_status ON calls(status, created_at);
CREATE INDEX calls_polyai ON calls(polyai_call_id);
CREATE INDEX calls_ended ON calls(ended_at);
CREATE TABLE events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_sid TEXT NOT NULL REFERENCES calls(call_sid) ON DELETE CASCADE,
    ts DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_sid ON events(call_sid, id);
CREATE TABLE cdrs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_sid TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    ended_at DOUBLE PRECISION NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX cdrs_ended ON cdrs(ended_at, id);
CREATE INDEX cdrs_sid ON cdrs(call_sid)
""",
    2: """
CREATE TABLE outbox (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id TEXT NOT NULL UNIQUE,
    call_sid TEXT NOT NULL,
    status TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at DOUBLE PRECISION NOT NULL,
    result TEXT,
    last_error TEXT NOT NULL DEFAULT '',
    done_at DOUBLE PRECISION
);
CREATE INDEX outbox_pending ON outbox(call_sid, id) WHERE done_at IS NULL;
CREATE INDEX outbox_due ON outbox(next_at) WHERE done_at IS NULL;
CREATE INDEX outbox_done ON outbox(done_at)
""",
    # Cluster mode (sipbridge.cluster): who owns a call's attempt (the node that claimed
    # it), the attempt epoch every write about the attempt is fenced by, whether the
    # INVITE may have gone out (``dialing``), and the nodes' heartbeats (DB clock).
    3: """
ALTER TABLE calls ADD COLUMN owner_node TEXT;
ALTER TABLE calls ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE calls ADD COLUMN claimed_at TIMESTAMPTZ;
ALTER TABLE calls ADD COLUMN dialing BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX calls_claimable ON calls(created_at) WHERE status = 'queued' AND owner_node IS NULL;
CREATE INDEX calls_owner ON calls(owner_node, status) WHERE owner_node IS NOT NULL;
CREATE TABLE nodes (
    node_id TEXT PRIMARY KEY,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_s DOUBLE PRECISION NOT NULL,
    draining BOOLEAN NOT NULL DEFAULT false
)
""",
    # Per-claim leases: a claim holds until ``lease_until`` (DB clock), renewed by its
    # node's heartbeat; an expired one is taken over even if the node is alive. NULL: a
    # claim made by an older build, governed by its node's lease alone.
    4: """
ALTER TABLE calls ADD COLUMN lease_until TIMESTAMPTZ;
CREATE INDEX calls_lease ON calls(lease_until) WHERE owner_node IS NOT NULL
""",
    # The process holding a node id (sipbridge.cluster.identity): a second process started
    # with the same cluster.node_id while the first is alive is refused.
    5: "ALTER TABLE nodes ADD COLUMN instance TEXT",
}
SCHEMA_VERSION = max(MIGRATIONS)
# pg_advisory_xact_lock key: "sipb" — serialises migrations of nodes starting together.
_MIGRATION_LOCK = 0x73697062
CONNECT_TIMEOUT_S = 5
RECONNECT_EVERY_S = 1.0


def _pg_sql(sql: str) -> str:
    """The shared queries use ``?``; psycopg uses ``%s`` (and ``%`` must be doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


MIN_SERVER_VERSION = 130000  # PostgreSQL 13 (libpq's server_version: major * 10000 + minor)


def check_server_version(version: int) -> None:
    """Refuse a server older than PostgreSQL 13, naming its version."""
    if version < MIN_SERVER_VERSION:
        minor = version % 10000 if version >= 100000 else version // 100 % 100  # 9.6: 90624
        shown = f"{version // 10000}.{minor}"
        raise StoreError(f"PostgreSQL {shown} is too old: sipbridge needs PostgreSQL 13 or newer")


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Apply the missing migrations in one transaction; the version now in place."""
    check_server_version(conn.info.server_version)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL "
            "DEFAULT now())"
        )
        row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
        have = int(row[0]) if row else 0
        if have > SCHEMA_VERSION:
            raise StoreError(
                f"PostgreSQL schema version {have}, this build reads "
                f"{SCHEMA_VERSION}: upgrade sipbridge"
            )
        for v in range(have + 1, SCHEMA_VERSION + 1):
            for stmt in iter_statements(MIGRATIONS[v]):
                conn.execute(stmt.encode())
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (v,))
    return SCHEMA_VERSION


def _problem(e: BaseException) -> str:
    """A one-line reason without the connection string (which may hold a password)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return re.sub(r"password=\S+", "password=***", text)[:300]


class _PgTx:
    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self.cur = cur

    def run(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[tuple[Any, ...]], int]:
        self.cur.execute(_pg_sql(sql).encode(), tuple(params))
        rows = self.cur.fetchall() if self.cur.description is not None else []
        return rows, self.cur.rowcount


class PostgresStore(SqlStore):
    """PostgreSQL; every write is committed before the call returns."""

    EXTRA_COLS = ("owner_node", "epoch")
    _SKIP_LOCKED = " FOR UPDATE OF o SKIP LOCKED"

    def __init__(self, dsn: str, retention_s: float = 7200.0, clock: Any = time.monotonic) -> None:
        self._dsn = dsn
        self.retention_s = retention_s
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._last_try = float("-inf")
        self._conn = self._connect()
        try:
            migrate(self._conn)
        except psycopg.Error as e:
            self._conn.close()
            raise StoreError(f"cannot migrate the PostgreSQL store: {_problem(e)}") from None
        except StoreError:  # too old a server, or a schema newer than this build
            self._conn.close()
            raise

    def __repr__(self) -> str:  # never the DSN
        return "PostgresStore()"

    def _connect(self) -> psycopg.Connection[Any]:
        self._last_try = self._clock()
        try:
            return psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name="sipbridge",
            )
        except psycopg.Error as e:
            raise StoreUnavailable(f"PostgreSQL store unavailable: {_problem(e)}") from None

    def _live(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._clock() - self._last_try < RECONNECT_EVERY_S:
            raise StoreUnavailable("PostgreSQL store unavailable: reconnecting")
        self._conn = self._connect()
        return self._conn

    @contextmanager
    def _guard(self) -> Iterator[psycopg.Connection[Any]]:
        """The live connection, held alone; database errors mapped to the store's."""
        with self._lock:
            try:
                yield self._live()
            except pgerrors.UniqueViolation as e:
                raise DuplicateCall(_problem(e)) from None
            except psycopg.OperationalError as e:
                raise StoreUnavailable(f"PostgreSQL store unavailable: {_problem(e)}") from None
            except psycopg.Error as e:
                raise StoreError(f"PostgreSQL store: {_problem(e)}") from None

    @contextmanager
    def _tx(self) -> Iterator[_PgTx]:
        with self._guard() as conn, conn.transaction(), conn.cursor() as cur:
            yield _PgTx(cur)

    @contextmanager
    def _auto(self) -> Iterator[_PgTx]:
        # The connection autocommits: one statement, one round trip, no BEGIN/COMMIT.
        with self._guard() as conn, conn.cursor() as cur:
            yield _PgTx(cur)

    # ---- writes of one statement each ---------------------------------------------------
    # A status change writes the call row, its event and its callbacks in ONE statement
    # (data-modifying CTEs, atomic like a transaction): the event and callback rows are
    # inserted only if the UPDATE matched its row.

    def create(
        self, rec: CallRecord, event: CallEvent | None = None, outbox: Sequence[OutboxMessage] = ()
    ) -> None:
        self._create_one(rec, event, outbox)

    def _create_one(
        self,
        rec: CallRecord,
        event: CallEvent | None,
        outbox: Sequence[OutboxMessage],
        extra: dict[str, str] | None = None,
        extra_params: Sequence[Any] = (),
        tail: str = "1",
    ) -> None:
        """INSERT the call (``extra``: more columns as SQL expressions) with its event
        and callbacks, one statement."""
        extra = extra or {}
        cols = ",".join((*COLS, *extra))
        marks = ",".join(("?",) * len(COLS) + tuple(extra.values()))
        head = f"INSERT INTO calls ({cols}) VALUES ({marks})"
        self._chain(head, (*self._values(rec), *extra_params), event, outbox, tail)

    def save(self, rec: CallRecord) -> None:
        self._write(rec, None, ())

    def save_status(
        self, rec: CallRecord, event: CallEvent, outbox: Sequence[OutboxMessage] = ()
    ) -> None:
        self._write(rec, event, outbox)

    def _write(
        self, rec: CallRecord, event: CallEvent | None, outbox: Sequence[OutboxMessage]
    ) -> None:
        sets = ",".join(f"{c}=?" for c in COLS[1:])
        vals = self._values(rec)
        head = f"UPDATE calls SET {sets} WHERE call_sid=?"
        if self._chain(head, (*vals[1:], vals[0]), event, outbox) != 1:
            raise StoreError(f"call {rec.call_sid} does not exist")

    def _chain(
        self,
        head: str,
        params: Sequence[Any],
        event: CallEvent | None,
        outbox: Sequence[OutboxMessage],
        tail: str = "1",
    ) -> int:
        """Run ``head`` (an INSERT or UPDATE of one calls row) and, if it wrote its row,
        insert the event and the callbacks, as one statement; the rows written by
        ``head`` (``tail`` is evaluated once per such row, e.g. a pg_notify)."""
        parts = [f"w AS ({head} RETURNING call_sid)"]
        args = list(params)
        if event is not None:
            parts.append(
                "e AS (INSERT INTO events (call_sid, ts, kind, data) SELECT call_sid,?,?,? FROM w)"
            )
            args += [event.ts, event.kind, self._event_data(event)]
        if outbox:  # one INSERT, rows in order (ids order a call's callbacks)
            cols = ",".join(OUTBOX_COLS)
            row = "(?," + ",".join("?" * len(OUTBOX_COLS)) + ")"
            parts.append(
                f"o AS (INSERT INTO outbox ({cols}) SELECT "
                + ",".join(f"v.{c}" for c in OUTBOX_COLS)
                + f" FROM w CROSS JOIN (VALUES {','.join([row] * len(outbox))}) "
                f"AS v(n,{cols}) ORDER BY v.n)"
            )
            for i, m in enumerate(outbox):
                args += (i, *self._outbox_row(m))
        with self._auto() as tx:
            rows = tx.run(f"WITH {','.join(parts)} SELECT {tail} FROM w", args)[0]
        return len(rows)

    def schema_version(self) -> int:
        rows = self._one("SELECT MAX(version) FROM schema_version")
        return int(rows[0][0])

    def ping(self) -> bool:
        try:
            self._one("SELECT 1")
            return True
        except StoreError:
            return False

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "PostgresStore", "migrate"]
