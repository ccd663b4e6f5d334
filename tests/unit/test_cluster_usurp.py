"""A process paused past its lease wakes to find its cluster.node_id taken by another
process (same id, started meanwhile; its recovery ended the paused one's calls). On one
real PostgreSQL: the paused process's heartbeat says "usurped" and renews nothing; its
claims, "dialling" marks, hand-backs, leave and call writes all write nothing; the node
hangs up its legs, stops dialling and asks the app to stop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from sipbridge.calls.trigger import TriggerInput
from sipbridge.cluster import membership
from sipbridge.cluster.store import ClusterStore
from sipbridge.devtools.pgserver import available
from sipbridge.errors import NodeIdTaken, StaleClaim
from sipbridge.records import CallEvent
from tests.doubles import RecordingPool
from tests.unit.test_cluster_node import _age, _node, _service
from tests.unit.test_cluster_queue import _rec

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))


@pytest.fixture
def dsn(pg_server: Any) -> str:
    return str(pg_server.new_database())


@pytest.fixture
def stores(dsn: str) -> Iterator[Any]:
    opened: list[ClusterStore] = []

    def store(node_id: str) -> ClusterStore:
        s = ClusterStore(dsn, node_id, 5.0)
        opened.append(s)
        return s

    yield store
    for s in opened:
        s.close()


def _state(store: ClusterStore, sids: list[str]) -> list[tuple[Any, ...]]:
    """The nodes table, the calls ``sids`` and their events, as the database has them."""
    return [
        *store._one("SELECT * FROM nodes ORDER BY node_id"),
        *store._one("SELECT * FROM calls WHERE call_sid = ANY(?) ORDER BY call_sid", (sids,)),
        *store._one("SELECT * FROM events WHERE call_sid = ANY(?) ORDER BY id", (sids,)),
    ]


def _usurp(a: ClusterStore, b: ClusterStore) -> None:
    """``a`` stops beating past its lease; ``b``, with the same node id, starts: its
    recovery takes the id's calls over and it joins (ClusterNode.recover)."""
    _age(a, a.node_id, 10.0)
    assert membership.take_over(b, b.node_id, force=True) is not None
    membership.join(b)


def test_a_usurped_store_writes_nothing(stores):
    a, b = stores("n1"), stores("n1")
    membership.join(a)
    for sid in ("OUT-a1", "OUT-a2", "OUT-a3", "OUT-b1"):
        a.create(_rec(sid))
    assert a.claim(2) == ["OUT-a1", "OUT-a2"]
    assert a.mark_dialing("OUT-a1")
    rec_a1 = a.get("OUT-a1")
    assert rec_a1 is not None
    a.save(replace(rec_a1, status="calling"))
    _usurp(a, b)
    assert b.claim(1) == ["OUT-a3"]  # b's own claim, waiting to be dialled: owner n1 too
    before = _state(a, ["OUT-a1", "OUT-a2", "OUT-a3", "OUT-b1"])

    beat, lost = membership.heartbeat(a, False, dict(a.claims))
    assert (beat, lost) == ("usurped", {"OUT-a1", "OUT-a2"})
    assert a.claim(5) == []  # b's row is fresh, but not a's
    assert not a.mark_dialing("OUT-a2")
    assert a.release_claims() == []  # b's claim on OUT-a3 stays b's
    assert not membership.leave(a)
    # the epoch fence: a's writes about the calls it held end as StaleClaim
    with pytest.raises(StaleClaim):
        a.save(replace(rec_a1, status="success", reason="completed"))
    with pytest.raises(StaleClaim):
        a.add_event("OUT-a2", CallEvent(ts=1001.0, kind="sip.ringing", data={}))
    assert membership.rejoin(a) is None  # the "lost" path would not take b's id over either
    assert _state(a, ["OUT-a1", "OUT-a2", "OUT-a3", "OUT-b1"]) == before
    assert membership.holder_instance(a) == b.instance
    assert b.mark_dialing("OUT-a3")  # b goes on as n1
    assert membership.heartbeat(b, False, dict(b.claims)) == ("ok", set())


def test_a_row_without_a_token_is_never_ours(stores):
    """A NULL token: an older build's process joined with our node id (every join of
    this build writes its token)."""
    a = stores("n1")
    membership.join(a)
    a._one("UPDATE nodes SET instance=NULL WHERE node_id='n1'")
    assert membership.heartbeat(a, False)[0] == "usurped"
    assert a._one("SELECT instance FROM nodes")[0][0] is None


def test_a_lost_node_rejoins_only_while_its_id_is_free(stores):
    """Taken over by another node (its row deleted), a node rejoins and ends what is
    left of its calls; when a process with its node id joined first, it takes nothing."""
    a, x, b = stores("n1"), stores("x"), stores("n1")
    membership.join(a)
    membership.join(x)
    a.create(_rec("OUT-1"))
    assert a.claim(1) == ["OUT-1"]
    _age(a, "n1", 10.0)
    assert membership.take_over(x, "n1") is not None  # row deleted, OUT-1 back in the queue
    membership.join(b)  # before a beats again
    assert b.claim(1) == ["OUT-1"]
    assert membership.heartbeat(a, False)[0] == "usurped"
    assert membership.rejoin(a) is None
    rec = a.get("OUT-1")
    assert rec is not None and rec.owner_node == "n1" and b.held["OUT-1"] == rec.epoch
    # with the id free, the rejoin joins with a's token
    b.release_claims()
    assert membership.leave(b)
    assert membership.rejoin(a) is not None
    assert membership.holder_instance(a) == a.instance


def test_a_usurped_node_hangs_up_stops_dialling_and_asks_to_stop(dsn, caplog):
    a, node_a = _node(dsn, "n1")
    pool_a = a.pool
    assert isinstance(pool_a, RecordingPool)
    fired: list[int] = []
    node_a.on_fatal = lambda: fired.append(1)
    sid_a = a.trigger(TriggerInput(to_number="+14155552671")).call_sid
    a.dispatch_once()
    assert [p.call_sid for p in pool_a.plans] == [sid_a]

    _age(node_a.store, "n1", 10.0)  # a is paused past its lease; b starts with its id
    b, node_b = _service(dsn, "n1")
    asyncio.run(node_b.claim_identity())
    node_b.recover()
    rec = b.store.get(sid_a)
    assert rec is not None and (rec.status, rec.reason) == ("failure", "bridge restarted")
    sid_b = b.trigger(TriggerInput(to_number="+14155552672")).call_sid
    b.dispatch_once()
    rec = b.store.get(sid_b)
    assert rec is not None and rec.status == "calling" and rec.owner_node == "n1"
    before = _state(node_b.store, [sid_a, sid_b])

    node_a.beat()  # a wakes
    assert isinstance(node_a.fatal, NodeIdTaken)
    assert str(node_a.fatal) == (
        f"cluster.node_id 'n1' was taken over by another process (instance "
        f"{node_b.store.instance}) while this one was paused: this process stops; give "
        "every node its own cluster.node_id"
    )
    assert str(node_a.fatal) in caplog.text
    assert fired == [1]
    assert pool_a.hung == [pool_a.plans[0].leg_id]
    assert not node_a.lease_ok and node_a.readiness() == str(node_a.fatal)
    # a queued call is there to dial: a dials nothing, hands nothing back, leaves nothing
    sid_q = b.trigger(TriggerInput(to_number="+14155552673")).call_sid
    a.dispatch_once()
    assert len(pool_a.plans) == 1
    node_a.drain()
    asyncio.run(node_a.stop())
    assert _state(node_b.store, [sid_a, sid_b]) == before
    rec = b.store.get(sid_q)
    assert rec is not None and rec.status == "queued" and rec.owner_node is None
    assert membership.holder_instance(node_b.store) == node_b.store.instance
    node_b.beat()  # b goes on
    assert node_b.lease_ok and fired == [1]
    for s in (a.store, b.store):
        s.close()
