"""PostgreSQL round trips per store operation, counted by the server itself
(pg_stat_statements on a server of this module, BEGIN and COMMIT included): a read or a
single write is one statement (autocommit, no BEGIN/COMMIT), a new call or a status
change with its event and callbacks is one statement, and so are a cluster node's claim,
its "dialling" write and its heartbeat renewing all its claims. A fenced status change
writes none of its rows."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from sipbridge.cluster import membership
from sipbridge.cluster.store import ClusterStore
from sipbridge.devtools.pgserver import PgServer, available
from sipbridge.errors import StaleClaim
from sipbridge.pgstore import PostgresStore
from sipbridge.records import CallEvent
from tests.unit.test_outbox import _all_ids, _msg, _rec

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))


@pytest.fixture(scope="module")
def pg_stats() -> Iterator[PgServer]:
    srv = PgServer({"shared_preload_libraries": "pg_stat_statements"}).start()
    try:
        yield srv
    finally:
        srv.close()


class Counter:
    """Statements run on one database since the last :meth:`take` (every statement is
    one client round trip)."""

    def __init__(self, srv: PgServer, dsn: str) -> None:
        import psycopg

        self.db = dsn.rsplit("/", 1)[1]
        self.conn = psycopg.connect(srv.dsn(), autocommit=True)
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        self.take()

    def _rows(self) -> list[tuple[int, str]]:
        return [
            (int(c), str(q))
            for c, q in self.conn.execute(
                "SELECT calls, query FROM pg_stat_statements WHERE dbid = "
                "(SELECT oid FROM pg_database WHERE datname = %s)",
                (self.db,),
            ).fetchall()
        ]

    def take(self) -> list[str]:
        """The statements since the last call (BEGIN and COMMIT spelled out)."""
        out = [q for c, q in self._rows() for _ in range(c)]
        self.conn.execute("SELECT pg_stat_statements_reset()")
        return out


@pytest.fixture
def counted(pg_stats: PgServer) -> Iterator[Any]:
    dsn = pg_stats.new_database()
    opened: list[Any] = []

    def make(cls: Any = PostgresStore, *args: Any) -> tuple[Any, Counter]:
        store = cls(dsn, *args)
        opened.append(store)
        if cls is ClusterStore:
            membership.join(store)
        return store, Counter(pg_stats, dsn)

    yield make
    for s in opened:
        s.close()


def test_single_node_operations_are_one_statement_each(counted):
    store, n = counted()
    rec = _rec("OUT-1")
    store.create(rec, CallEvent(1000.0, "status", {"to": "queued"}), [_msg("a1"), _msg("a2")])
    assert len(n.take()) == 1
    assert store.get("OUT-1") == rec and len(n.take()) == 1
    calling = replace(rec, status="calling", attempts=1, last_updated=1001.0)
    store.save_status(calling, CallEvent(1001.0, "status", {"to": "calling"}), [_msg("a3")])
    assert len(n.take()) == 1
    store.save(replace(calling, reason="ringing"))
    store.add_event("OUT-1", CallEvent(1002.0, "sip.ringing", {}))
    assert len(n.take()) == 2
    # every row landed, the callbacks in their order
    assert [e.kind for e in store.events("OUT-1")] == ["status", "status", "sip.ringing"]
    assert _all_ids(store) == ["a1", "a2", "a3"]
    assert store.get("OUT-1").reason == "ringing"


def test_a_cluster_call_costs_one_statement_per_step(counted):
    a, n = counted(ClusterStore, "a", 5.0)
    a.create(_rec("OUT-1"), CallEvent(1000.0, "status", {}), [_msg("q1")])  # + NOTIFY
    assert len(n.take()) == 1
    (claimed,) = a.claim_records(8)
    assert claimed.owner_node == "a" and len(n.take()) == 1
    assert a.mark_dialing("OUT-1") and len(n.take()) == 1
    calling = replace(claimed, status="calling", attempts=1)
    a.save_status(calling, CallEvent(1001.0, "status", {"to": "calling"}), [_msg("c1")])
    a.add_event("OUT-1", CallEvent(1002.0, "sip.ringing", {}))  # fenced by the epoch
    assert len(n.take()) == 2
    for i in range(2, 6):
        a.create(_rec(f"OUT-{i}"))
    a.claim_records(8)
    n.take()
    beat, lost = membership.heartbeat(a, False, dict(a.claims))  # 5 claims renewed
    assert (beat, lost) == ("ok", set()) and len(n.take()) == 1


def test_a_fenced_status_change_writes_no_event_and_no_callback(counted):
    a, _ = counted(ClusterStore, "a", 5.0)
    b, _ = counted(ClusterStore, "b", 5.0)
    a.create(_rec("OUT-1"))
    a.claim_records(1)
    rec = b.get("OUT-1")
    assert rec is not None
    b.save(replace(rec, status="failure", reason="canceled", ended_at=1001.0))  # takes it
    events = len(a.events("OUT-1"))
    with pytest.raises(StaleClaim):
        a.save_status(replace(rec, status="calling"), CallEvent(1002.0, "status", {}), [_msg("x1")])
    assert len(a.events("OUT-1")) == events and _all_ids(a) == []
    assert a._select("call_sid=?", ("OUT-1",))[0].status == "failure"
