"""The queue across nodes against a real PostgreSQL (sipbridge.devtools.pgserver): claims
under concurrency never hand one call to two nodes, epochs fence a stale owner's writes,
"dialing" is refused once the lease or the epoch is gone, takeover re-queues undialled
calls and adopts in-flight ones, draining hands claims back. Leases are aged by moving
``last_seen`` back in the database (the DB clock is the only clock a lease uses)."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from sipbridge.calls.journal import Journal
from sipbridge.cluster import membership
from sipbridge.cluster.store import ClusterStore
from sipbridge.devtools.pgserver import available
from sipbridge.errors import StaleClaim
from sipbridge.records import CallEvent, CallRecord

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))


def _rec(sid: str, t: float = 1000.0, **kw: object) -> CallRecord:
    return CallRecord(
        call_sid=sid,
        status="queued",
        to_number="+14155552671",
        from_number="+14155550100",
        created_at=t,
        last_updated=t,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def nodes(pg_server):
    dsn = pg_server.new_database()
    opened: list[ClusterStore] = []

    def node(node_id: str, lease_s: float = 5.0) -> ClusterStore:
        s = ClusterStore(dsn, node_id, lease_s)
        membership.join(s)
        opened.append(s)
        return s

    yield node
    for s in opened:
        s.close()


def _age(store: ClusterStore, node_id: str, by_s: float) -> None:
    """Move a node's last heartbeat back ``by_s`` seconds (as if it stopped beating)."""
    store._one(
        "UPDATE nodes SET last_seen = last_seen - make_interval(secs => ?) WHERE node_id=?",
        (by_s, node_id),
    )


def test_two_claimers_never_get_the_same_call(nodes):
    a, b = nodes("a"), nodes("b")
    sids = [f"OUT-{i}" for i in range(60)]
    for i, sid in enumerate(sids):
        a.create(_rec(sid, t=1000.0 + i))
    got: dict[str, list[str]] = {"a": [], "b": []}
    start, first_done = threading.Barrier(2), threading.Barrier(2)

    def run(store: ClusterStore) -> None:
        start.wait()
        first = True
        while True:
            claimed = store.claim(3)
            got[store.node_id] += claimed
            if first:  # both claim at least once (on a loaded machine one thread could
                first = False  # otherwise take the whole queue before the other runs)
                first_done.wait()
            if not claimed:
                return

    threads = [threading.Thread(target=run, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not set(got["a"]) & set(got["b"])
    assert sorted(got["a"] + got["b"]) == sorted(sids)
    assert got["a"] and got["b"]  # both took part
    owners = dict(a._one("SELECT call_sid, owner_node FROM calls"))
    assert all(owners[s] == "a" for s in got["a"]) and all(owners[s] == "b" for s in got["b"])
    assert {r.call_sid for r in a.claimed()} == set(got["a"])


def test_claims_only_due_calls_oldest_first(nodes):
    a = nodes("a")
    a.create(_rec("OUT-late", t=1000.0, not_before=5000.0))
    a.create(_rec("OUT-2", t=1002.0))
    a.create(_rec("OUT-1", t=1001.0))
    assert a.claim(1, now=2000.0) == ["OUT-1"]
    assert a.claim(5, now=2000.0) == ["OUT-2"]
    assert a.claim(5, now=6000.0) == ["OUT-late"]


def test_no_claims_without_a_fresh_lease_or_while_draining(nodes):
    a = nodes("a", lease_s=5.0)
    a.create(_rec("OUT-1"))
    _age(a, "a", 6.0)
    assert a.claim(5) == []
    membership.join(a, draining=True)
    assert a.claim(5) == []
    membership.join(a)
    assert a.claim(5) == ["OUT-1"]


def test_a_stale_owner_writes_nothing_after_a_takeover(nodes):
    a, b = nodes("a", lease_s=5.0), nodes("b", lease_s=5.0)
    a.create(_rec("OUT-1"))
    assert a.claim(1) == ["OUT-1"]
    assert a.mark_dialing("OUT-1")
    rec = a.get("OUT-1")
    assert rec is not None and rec.owner_node == "a" and rec.epoch == 1
    calling = replace(rec, status="calling", attempts=1, last_updated=1001.0)
    a.save_status(calling, CallEvent(1001.0, "status", {"to": "calling"}))

    _age(b, "a", 6.0)
    t = membership.take_over(b, "a")
    assert t is not None and t.adopted == ["OUT-1"] and not t.requeued
    after = b.get("OUT-1")
    assert after is not None and after.owner_node == "b" and after.epoch == 2
    events_before = len(b.events("OUT-1"))

    # a (paused, now resumed) still thinks it owns epoch 1: every write is fenced out.
    with pytest.raises(StaleClaim):
        a.save(replace(calling, reason="late", last_updated=1002.0))
    with pytest.raises(StaleClaim):
        a.add_event("OUT-1", CallEvent(1002.0, "sip.bye", {}))
    with pytest.raises(StaleClaim):
        a.save_status(
            replace(calling, status="success", ended_at=1003.0),
            CallEvent(1003.0, "status", {"to": "success"}),
        )
    assert not a.mark_dialing("OUT-1")
    assert b.get("OUT-1") == after
    assert len(b.events("OUT-1")) == events_before
    assert a.stale_writes == 3
    # The new owner's writes go through.
    b.save(replace(after, reason="bridge node lost", last_updated=1004.0))


def test_a_node_whose_lease_ended_may_not_dial(nodes):
    a = nodes("a", lease_s=5.0)
    a.create(_rec("OUT-1"))
    assert a.claim(1) == ["OUT-1"]
    _age(a, "a", 6.0)
    assert not a.mark_dialing("OUT-1")  # nobody took over yet; still no dial
    membership.join(a)
    assert a.mark_dialing("OUT-1")


def test_takeover_requeues_undialled_and_adopts_in_flight_calls(nodes):
    a, b, c = nodes("a"), nodes("b"), nodes("c")
    for i, sid in enumerate(["OUT-q", "OUT-d", "OUT-c", "OUT-done"]):
        a.create(_rec(sid, t=1000.0 + i))
    assert a.claim(4) == ["OUT-q", "OUT-d", "OUT-c", "OUT-done"]
    assert a.mark_dialing("OUT-d") and a.mark_dialing("OUT-c")
    rec_c = a.get("OUT-c")
    assert rec_c is not None
    a.save(replace(rec_c, status="calling", attempts=1))
    rec_done = a.get("OUT-done")
    assert rec_done is not None
    a.save(replace(rec_done, status="success", ended_at=1010.0))

    _age(a, "a", 60.0)
    assert membership.take_over(c, "b") is None  # b is alive: nothing to take
    tb = membership.take_over(b, "a")
    tc = membership.take_over(c, "a")  # the second survivor finds nothing left
    assert tb is not None and tb.requeued == ["OUT-q"]
    assert tb.adopted == ["OUT-d", "OUT-c"] and tb.dialing_only == {"OUT-d"}
    assert tc is not None and not tc.requeued and not tc.adopted
    q = b.get("OUT-q")
    assert q is not None and q.owner_node is None and q.status == "queued"
    assert b._select("call_sid=?", ("OUT-done",))[0].owner_node == "a"  # terminal: kept
    assert [m.node_id for m in membership.members(b)] == ["b", "c"]
    assert c.claim(5) == ["OUT-q"]  # back in the queue for anyone


def test_a_live_node_is_not_taken_over(nodes):
    a, b = nodes("a"), nodes("b")
    a.create(_rec("OUT-1"))
    a.claim(1)
    assert membership.take_over(b, "a") is None
    assert a.get("OUT-1").owner_node == "a"


def test_release_claims_on_drain_keeps_dialled_calls(nodes):
    a, b = nodes("a"), nodes("b")
    a.create(_rec("OUT-1", t=1000.0))
    a.create(_rec("OUT-2", t=1001.0))
    assert a.claim(2) == ["OUT-1", "OUT-2"]
    assert a.mark_dialing("OUT-2")
    assert a.release_claims() == ["OUT-1"]
    assert b.claim(5) == ["OUT-1"]
    with pytest.raises(StaleClaim):  # a late write of the old claimer is fenced out
        a.add_event("OUT-1", CallEvent(1002.0, "late", {}))
    assert not membership.leave(a)  # OUT-2 is still ours: the row stays for a takeover


def test_retry_requeue_releases_the_claim(nodes):
    a, b = nodes("a"), nodes("b")
    a.create(_rec("OUT-1"))
    a.claim(1)
    rec = a.get("OUT-1")
    assert rec is not None
    a.save(replace(rec, not_before=1.0, reason="busy; attempt 2"))  # queued again
    again = b.get("OUT-1")
    assert again is not None and again.owner_node is None and again.epoch == rec.epoch + 1
    a.add_event("OUT-1", CallEvent(1002.0, "sip.late", {}))  # late report, nobody claimed
    assert b.claim(1) == ["OUT-1"]
    with pytest.raises(StaleClaim):  # after b's claim, a's late reports are fenced
        a.add_event("OUT-1", CallEvent(1003.0, "sip.later", {}))


def test_journal_logs_and_drops_a_fenced_write(nodes, caplog):
    a, b = nodes("a", lease_s=5.0), nodes("b")
    journal = Journal(a, clock=lambda: 1001.0)
    seen: list[str] = []
    journal.listeners.append(lambda rec, ev: seen.append(ev.kind))
    journal.create(_rec("OUT-1"), {"to": "queued"})
    a.claim(1)
    rec = a.get("OUT-1")
    assert rec is not None
    _age(b, "a", 6.0)
    membership.take_over(b, "a")
    seen.clear()
    out = journal.set_status(rec, "calling", "")
    journal.event(rec, "sip.ringing", {})
    assert out is rec and not seen
    assert b.get("OUT-1").status == "queued"
    assert "dropped" in caplog.text and "stale" in caplog.text


def test_a_non_owner_status_change_fences_the_claimer(nodes):
    """An API hangup on any node of a call another node claimed: the claimer's dial is
    refused afterwards."""
    a, b = nodes("a"), nodes("b")
    a.create(_rec("OUT-1"))
    a.claim(1)
    rec = b.get("OUT-1")
    assert rec is not None
    b.save(replace(rec, status="failure", reason="canceled", ended_at=1001.0))
    assert not a.mark_dialing("OUT-1")


def test_heartbeat_renews_a_lapsed_lease_unless_taken_over(nodes):
    a, b = nodes("a", lease_s=5.0), nodes("b")
    assert membership.heartbeat(a, draining=False)[0] == "ok"
    _age(a, "a", 6.0)  # e.g. the database was down for longer than the lease
    assert membership.heartbeat(a, draining=False)[0] == "lapsed"
    assert membership.heartbeat(a, draining=False)[0] == "ok"
    _age(a, "a", 6.0)
    assert membership.take_over(b, "a") is not None
    assert membership.heartbeat(a, draining=False)[0] == "lost"


def test_a_call_created_claimed_is_never_claimed_by_another_node(nodes):
    """A SIP-triggered call is dialled by the node the agent's INVITE reached."""
    a, b = nodes("a"), nodes("b")
    a.create(_rec("OUT-in", owner_node="a"))
    assert b.claim(5) == []
    rec = a.get("OUT-in")
    assert rec is not None and rec.owner_node == "a" and rec.epoch == 1
    assert a.mark_dialing("OUT-in")
    assert not b.mark_dialing("OUT-in")


def test_queueing_and_handing_back_notify_the_listening_nodes(nodes):
    """LISTEN/NOTIFY: a call queued, or claims handed back, wake every listening node
    (the notification is sent with the write, in the same statement or transaction)."""
    import psycopg

    from sipbridge.cluster.store import CHANNEL

    a = nodes("a")
    with psycopg.connect(a._dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")

        def woken() -> int:
            return sum(1 for _ in listener.notifies(timeout=0.5, stop_after=5))

        a.create(_rec("OUT-1"))
        assert woken() >= 1
        assert a.claim(1) == ["OUT-1"]
        assert woken() == 0  # a claim wakes nobody
        assert a.release_claims() == ["OUT-1"]
        assert woken() >= 1
