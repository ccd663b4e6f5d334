"""The queries both SQL backends share (SQLite and PostgreSQL): calls, events, CDRs and
the webhook outbox. A backend gives :meth:`SqlStore._tx`, a transaction whose ``run``
executes one statement written with ``?`` placeholders and returns its rows and row count;
everything else (row mapping, damaged rows, retention) lives here once.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from sipbridge.errors import StoreError
from sipbridge.records import (
    AttemptRecord,
    CallEvent,
    CallRecord,
    CallRequest,
    CallStatus,
    LegRecord,
    OutboxMessage,
    call_status,
)

COLS = (
    "call_sid",
    "status",
    "reason",
    "to_number",
    "from_number",
    "trunk",
    "sip_status",
    "answered_by",
    "polyai_call_id",
    "attempts",
    "created_at",
    "last_updated",
    "ended_at",
    "request",
    "legs",
    "not_before",
    "idempotency_key",
    "attempt_history",
    "detail",
)
_JSON_COLS = ("request", "legs", "attempt_history")
OUTBOX_COLS = (
    "delivery_id",
    "call_sid",
    "status",
    "url",
    "body",
    "created_at",
    "attempts",
    "next_at",
)


# An undelivered callback with no undelivered earlier one of the same call.
_HEAD = (
    "o.done_at IS NULL AND NOT EXISTS (SELECT 1 FROM outbox p WHERE "
    "p.call_sid = o.call_sid AND p.done_at IS NULL AND p.id < o.id)"
)


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


def _dumps(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"))


class Tx(Protocol):
    def run(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[tuple[Any, ...]], int]:
        """Execute one statement; its rows (empty for writes) and its row count."""


class SqlStore(ABC):
    """A :class:`sipbridge.store.CallStore` over SQL; subclasses open the connection."""

    retention_s: float
    # Columns read besides COLS (never written by the shared queries): the cluster's
    # owner node and attempt epoch on PostgreSQL.
    EXTRA_COLS: tuple[str, ...] = ()

    @abstractmethod
    def _tx(self) -> AbstractContextManager[Tx]:
        """One transaction: committed when the block ends, rolled back on an exception.
        Maps a unique-key violation to DuplicateCall and other database errors to
        StoreError."""

    def _auto(self) -> AbstractContextManager[Tx]:
        """Where one statement runs on its own: in a transaction of its own here; a
        backend whose connection autocommits runs it without BEGIN/COMMIT (PostgreSQL:
        one round trip instead of three). Never for two statements that must agree."""
        return self._tx()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._auto() as tx:
            return tx.run(sql, params)[0]

    # ---- rows ------------------------------------------------------------------------

    def _row(self, row: Sequence[Any]) -> CallRecord:
        d = dict(zip(COLS + self.EXTRA_COLS, row, strict=True))
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
        d = {c: getattr(rec, c) for c in COLS}
        d["request"] = rec.request.to_json()
        d["legs"] = {k: leg.to_json() for k, leg in rec.legs.items()}
        d["attempt_history"] = [a.to_json() for a in rec.attempt_history]
        for c in _JSON_COLS:
            d[c] = _dumps(d[c])
        return tuple(d[c] for c in COLS)

    def _select(self, where: str, params: Sequence[Any]) -> list[CallRecord]:
        cols = ",".join(COLS + self.EXTRA_COLS)
        rows = self._one(f"SELECT {cols} FROM calls WHERE {where}", params)
        return [self._row(r) for r in rows]

    # ---- calls -----------------------------------------------------------------------

    def create(
        self, rec: CallRecord, event: CallEvent | None = None, outbox: Sequence[OutboxMessage] = ()
    ) -> None:
        with self._tx() as tx:
            self._create(tx, rec, event, outbox)

    def _create(
        self, tx: Tx, rec: CallRecord, event: CallEvent | None, outbox: Sequence[OutboxMessage]
    ) -> None:
        marks = ",".join("?" * len(COLS))
        tx.run(f"INSERT INTO calls ({','.join(COLS)}) VALUES ({marks})", self._values(rec))
        if event is not None:
            self._add_event(tx, rec.call_sid, event)
        self._add_outbox(tx, outbox)

    @staticmethod
    def _outbox_row(m: OutboxMessage) -> tuple[Any, ...]:
        """An outbox message as the values of OUTBOX_COLS."""
        return (
            m.delivery_id,
            m.call_sid,
            m.status,
            m.url,
            m.body.decode(),
            m.created_at,
            m.attempts,
            m.next_at,
        )

    def _add_outbox(self, tx: Tx, outbox: Sequence[OutboxMessage]) -> None:
        marks = ",".join("?" * len(OUTBOX_COLS))
        for m in outbox:
            tx.run(
                f"INSERT INTO outbox ({','.join(OUTBOX_COLS)}) VALUES ({marks})",
                self._outbox_row(m),
            )

    def _save(self, tx: Tx, rec: CallRecord) -> None:
        sets = ",".join(f"{c}=?" for c in COLS[1:])
        vals = self._values(rec)
        if tx.run(f"UPDATE calls SET {sets} WHERE call_sid=?", (*vals[1:], vals[0]))[1] != 1:
            raise StoreError(f"call {rec.call_sid} does not exist")

    def save(self, rec: CallRecord) -> None:
        with self._tx() as tx:
            self._save(tx, rec)

    def save_status(
        self, rec: CallRecord, event: CallEvent, outbox: Sequence[OutboxMessage] = ()
    ) -> None:
        """A status change in one transaction: the record, its event and the callbacks
        reporting it (so a callback exists exactly when its status was written)."""
        with self._tx() as tx:
            self._save(tx, rec)
            self._add_event(tx, rec.call_sid, event)
            self._add_outbox(tx, outbox)

    def get(self, call_sid: str, now: float | None = None) -> CallRecord | None:
        found = self._select("call_sid=?", (call_sid,))
        if not found:
            return None
        rec = found[0]
        now = time.time() if now is None else now
        if rec.ended_at is not None and now - rec.ended_at > self.retention_s:
            return None
        return rec

    def find_by_idempotency_key(self, key: str) -> CallRecord | None:
        found = self._select("idempotency_key=?", (key,))
        return self.get(found[0].call_sid) if found else None

    def find_by_polyai_call_id(self, polyai_call_id: str) -> CallRecord | None:
        found = self._select("polyai_call_id=? ORDER BY created_at DESC LIMIT 1", (polyai_call_id,))
        return self.get(found[0].call_sid) if found else None

    def by_status(self, *statuses: CallStatus) -> list[CallRecord]:
        marks = ",".join("?" * len(statuses))
        return self._select(f"status IN ({marks}) ORDER BY created_at", statuses)

    def purge_expired(self, now: float | None = None) -> int:
        """Ended calls (with their events) and finished callbacks past the retention."""
        cutoff = (time.time() if now is None else now) - self.retention_s
        with self._tx() as tx:
            tx.run("DELETE FROM outbox WHERE done_at IS NOT NULL AND done_at < ?", (cutoff,))
            return tx.run(
                "DELETE FROM calls WHERE ended_at IS NOT NULL AND ended_at < ?", (cutoff,)
            )[1]

    # ---- events and CDRs -------------------------------------------------------------

    @staticmethod
    def _event_data(event: CallEvent) -> str:
        return _dumps(event.data)

    def _add_event(self, tx: Tx, call_sid: str, event: CallEvent) -> None:
        tx.run(
            "INSERT INTO events (call_sid, ts, kind, data) VALUES (?,?,?,?)",
            (call_sid, event.ts, event.kind, self._event_data(event)),
        )

    def add_event(self, call_sid: str, event: CallEvent) -> None:
        with self._auto() as tx:
            self._add_event(tx, call_sid, event)

    def events(self, call_sid: str) -> list[CallEvent]:
        rows = self._one(
            "SELECT ts, kind, data FROM events WHERE call_sid=? ORDER BY id", (call_sid,)
        )
        return [CallEvent(ts, kind, json.loads(data)) for ts, kind, data in rows]

    def add_cdr(self, cdr: dict[str, Any]) -> None:
        with self._auto() as tx:
            tx.run(
                "INSERT INTO cdrs (call_sid, attempt, ended_at, data) VALUES (?,?,?,?)",
                (
                    cdr["call_sid"],
                    int(cdr.get("attempt") or 0),
                    float(cdr["ended_at"]),
                    _dumps(cdr),
                ),
            )

    def cdrs(self, since: float, until: float | None = None) -> list[dict[str, Any]]:
        if until is None:
            rows = self._one(
                "SELECT data FROM cdrs WHERE ended_at >= ? ORDER BY ended_at, id", (since,)
            )
        else:
            rows = self._one(
                "SELECT data FROM cdrs WHERE ended_at >= ? AND ended_at < ? ORDER BY ended_at, id",
                (since, until),
            )
        return [json.loads(r[0]) for r in rows]

    # ---- the webhook outbox ----------------------------------------------------------

    def outbox_due(self, now: float, limit: int) -> list[OutboxMessage]:
        """Pending callbacks due by ``now``, oldest first, at most one per call (the
        oldest pending one: a call's callbacks go out in order)."""
        rows = self._one(
            f"SELECT {','.join(OUTBOX_COLS)} FROM outbox o WHERE {_HEAD} "
            "AND o.next_at <= ? ORDER BY o.id LIMIT ?",
            (now, limit),
        )
        return [
            OutboxMessage(d, sid, st, url, body.encode(), float(c), int(a), float(n))
            for d, sid, st, url, body, c, a, n in rows
        ]

    # PostgreSQL: rows another node is taking right now are skipped, not waited for.
    _SKIP_LOCKED = ""

    def outbox_claim(self, now: float, limit: int, lease_s: float) -> list[OutboxMessage]:
        """Take the callbacks :meth:`outbox_due` would list for delivery by this process:
        each one's ``next_at`` moves to ``now + lease_s`` in the same statement, so other
        nodes sharing the store do not send it while this POST is under way. The POST's
        outcome (retry or done) sets ``next_at`` again; a node that dies mid-POST leaves
        the row to be sent after the lease (at least once, same delivery ID)."""
        rows = self._one(
            f"UPDATE outbox SET next_at=? WHERE id IN (SELECT o.id FROM outbox o WHERE "
            f"{_HEAD} AND o.next_at <= ? ORDER BY o.id LIMIT ?{self._SKIP_LOCKED}) "
            f"RETURNING id, {','.join(OUTBOX_COLS)}",
            (now + lease_s, now, limit),
        )
        return [
            OutboxMessage(d, sid, st, url, body.encode(), float(c), int(a), float(n))
            for _, d, sid, st, url, body, c, a, n in sorted(rows)
        ]

    def outbox_next_at(self) -> float | None:
        """When the earliest sendable callback is due (None: nothing pending); one
        waiting behind an earlier callback of its call does not count."""
        rows = self._one(f"SELECT MIN(o.next_at) FROM outbox o WHERE {_HEAD}")
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    def outbox_pending(self) -> int:
        return int(self._one("SELECT COUNT(*) FROM outbox WHERE done_at IS NULL")[0][0])

    def outbox_retry(self, delivery_id: str, attempts: int, next_at: float, error: str) -> None:
        with self._auto() as tx:
            tx.run(
                "UPDATE outbox SET attempts=?, next_at=?, last_error=? WHERE delivery_id=?",
                (attempts, next_at, error[:500], delivery_id),
            )

    def outbox_done(
        self, delivery_id: str, result: str, attempts: int, now: float, error: str = ""
    ) -> None:
        """Finished: ``result`` is delivered, failed or refused."""
        with self._auto() as tx:
            tx.run(
                "UPDATE outbox SET result=?, attempts=?, done_at=?, last_error=? "
                "WHERE delivery_id=?",
                (result, attempts, now, error[:500], delivery_id),
            )


def iter_statements(script: str) -> Iterator[str]:
    """The statements of a migration script (split on ``;``; no ``;`` inside them)."""
    for part in script.split(";"):
        if part.strip():
            yield part.strip()


__all__ = ["COLS", "OUTBOX_COLS", "SqlStore", "Tx", "iter_statements"]
