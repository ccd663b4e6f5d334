"""Per-claim leases against a real PostgreSQL: each claim holds until its own
``lease_until`` (DB clock), renewed for all of a node's claims by the heartbeat's single
statement; a claim its node stopped renewing is taken over even though the node is
alive (undialled: re-queued; possibly dialled: ended as "bridge node lost"), its epoch
fences the old owner, and the old owner learns it on its next beat and hangs up."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from sipbridge.calls.trigger import TriggerInput
from sipbridge.cluster import membership
from sipbridge.cluster.store import ClusterStore
from sipbridge.devtools.pgserver import available
from sipbridge.errors import StaleClaim
from sipbridge.ipc import LegEvent
from sipbridge.records import CallEvent
from tests.doubles import RecordingPool
from tests.unit import test_cluster_queue as queue_tests
from tests.unit.test_cluster_node import _node

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))
_rec = queue_tests._rec
nodes = queue_tests.nodes  # the fixture: ClusterStores joined to one fresh database


def _expire_claim(store: ClusterStore, sid: str) -> None:
    """Move a claim's lease into the past (as if its node stopped renewing it)."""
    store._one(
        "UPDATE calls SET lease_until = now() - interval '1 second' WHERE call_sid=?", (sid,)
    )


def _lease_left_s(store: ClusterStore, sid: str) -> float:
    rows = store._one(
        "SELECT EXTRACT(EPOCH FROM lease_until - now()) FROM calls WHERE call_sid=?", (sid,)
    )
    return float(rows[0][0])


def test_a_claim_gets_a_lease_and_the_heartbeat_renews_it(nodes):
    a = nodes("a", lease_s=5.0)
    a.create(_rec("OUT-1"))
    assert a.claim(1) == ["OUT-1"]
    assert 4.0 < _lease_left_s(a, "OUT-1") <= 5.0
    a._one("UPDATE calls SET lease_until = now() + interval '1 second'")
    beat, lost = membership.heartbeat(a, False, dict(a.claims))
    assert (beat, lost) == ("ok", set())
    assert _lease_left_s(a, "OUT-1") > 4.0


def test_an_unrenewed_claim_of_a_live_node_is_taken_over(nodes):
    a, b = nodes("a", lease_s=5.0), nodes("b", lease_s=5.0)
    for i, sid in enumerate(["OUT-q", "OUT-d", "OUT-ok"]):
        a.create(_rec(sid, t=1000.0 + i))
    assert a.claim(3) == ["OUT-q", "OUT-d", "OUT-ok"]
    assert a.mark_dialing("OUT-d")
    assert membership.take_over_expired_claims(b) is None  # nothing expired yet
    _expire_claim(a, "OUT-q")
    _expire_claim(a, "OUT-d")
    assert not a.mark_dialing("OUT-q")  # an expired claim may not dial, node alive or not

    t = membership.take_over_expired_claims(b)
    assert t is not None and t.requeued == ["OUT-q"] and t.adopted == ["OUT-d"]
    assert t.dialing_only == {"OUT-d"}
    assert [m.node_id for m in membership.members(b)] == ["a", "b"]  # a is still a member
    d = b.get("OUT-d")
    assert d is not None and d.owner_node == "b" and d.epoch == 2
    assert b.claims == {"OUT-d": 2} and _lease_left_s(b, "OUT-d") > 4.0
    # a's writes about the calls it lost are fenced out; the other claim is intact.
    with pytest.raises(StaleClaim):
        a.add_event("OUT-d", CallEvent(1001.0, "sip.late", {}))
    rec_d = a._select("call_sid=?", ("OUT-d",))[0]
    with pytest.raises(StaleClaim):
        a.save(replace(rec_d, reason="late"))
    assert a.mark_dialing("OUT-ok")
    # a's next beat renews what it still holds and names what it lost.
    beat, lost = membership.heartbeat(a, False, {"OUT-q": 1, "OUT-d": 1, "OUT-ok": 1})
    assert beat == "ok" and lost == {"OUT-q", "OUT-d"}
    assert b.claim(5) == ["OUT-q"]  # back in the queue


def test_a_node_that_lost_track_of_a_call_stops_renewing_it(pg_server):
    """The dialled call's LiveCall is gone from node a (it lost track of it): a keeps
    beating, but no longer renews that claim; once it expires, b ends the call as
    "bridge node lost" while a stays a member."""
    dsn = pg_server.new_database()
    a, node_a = _node(dsn, "a")
    b, node_b = _node(dsn, "b")
    sid = a.trigger(TriggerInput(to_number="+14155552671")).call_sid
    a.dispatch_once()
    assert isinstance(a.pool, RecordingPool) and [p.call_sid for p in a.pool.plans] == [sid]
    assert sid in node_a.renewable()
    a.registry.drop(sid)
    assert sid not in node_a.renewable()
    node_a.beat()
    _expire_claim(node_b.store, sid)
    node_b._connected_since = time.monotonic() - 10.0
    node_b.beat()
    rec = b.store.get(sid)
    assert rec is not None and (rec.status, rec.reason) == ("failure", "bridge node lost")
    assert "claim lease expired" in rec.attempt_history[-1].detail
    assert {m.node_id for m in membership.members(node_b.store)} == {"a", "b"}
    for s in (a.store, b.store):
        s.close()


def test_the_old_owner_hangs_up_a_call_whose_claim_was_taken_over(pg_server):
    dsn = pg_server.new_database()
    a, node_a = _node(dsn, "a")
    b, node_b = _node(dsn, "b")
    sid = a.trigger(TriggerInput(to_number="+14155552671")).call_sid
    a.dispatch_once()
    assert isinstance(a.pool, RecordingPool)
    _expire_claim(node_b.store, sid)  # as if a had not renewed it for a whole lease
    node_b._connected_since = time.monotonic() - 10.0
    node_b.beat()
    after = b.store.get(sid)
    assert after is not None and after.status == "failure" and after.owner_node == "b"
    node_a.beat()  # a learns the claim is gone: hangs up its leg, writes nothing
    assert a.pool.hung == [a.pool.plans[0].leg_id]
    assert sid not in node_a.store.claims
    assert b.store.get(sid) == after
    assert node_a.lease_ok  # the node itself stays a member
    # the leg's end reaches a: its write about it is fenced, and a forgets the call
    # (a LiveCall kept after that would hold a drain, and the node's memory, for good)
    leg = a.pool.plans[0].leg_id
    a.pool.end(leg)
    a.on_sip_event(LegEvent(leg, sid, "ended", 0, time.time(), 487, "", "cid@x", "local_hangup"))
    assert sid not in a.registry and a.registry.carrier_legs_up() == 0
    assert b.store.get(sid) == after
    for s in (a.store, b.store):
        s.close()
