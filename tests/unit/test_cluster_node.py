"""Two call services as cluster nodes on one real PostgreSQL, with the SIP engine's test
double (RecordingPool): a node dials only its claims, a survivor ends a lost node's call
as "bridge node lost" (retried per the route's policy), and the lost node, when it beats
again, finds itself taken over, hangs up its leg and dials nothing more."""

from __future__ import annotations

import time

import pytest

from sipbridge.calls import CallService
from sipbridge.calls.trigger import TriggerInput
from sipbridge.cluster.node import ClusterNode, attach
from sipbridge.cluster.store import ClusterStore
from sipbridge.config import parse_config
from sipbridge.devtools.pgserver import available
from tests.doubles import RecordingPool

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))


def _node(dsn: str, node_id: str, retry: dict | None = None) -> tuple[CallService, ClusterNode]:
    svc, node = _service(dsn, node_id, retry)
    node.recover()
    return svc, node


def _service(dsn: str, node_id: str, retry: dict | None = None) -> tuple[CallService, ClusterNode]:
    """A call service attached as a cluster node, before its start-up recovery."""
    route: dict = {"prefix": "+", "trunk": "t1"}
    if retry:
        route["retry"] = retry
    cfg = parse_config(
        {
            "agent": {"uri": "sip:agent@127.0.0.1"},
            "api": {"tokens": [{"value": "tok"}]},
            "trunks": [{"name": "t1", "address": "127.0.0.1:5060", "caller_id": "+14155550100"}],
            "routes": [route],
            "store": {"backend": "postgresql", "dsn": {"value": dsn}},
            "cluster": {"node_id": node_id, "lease_s": 4, "heartbeat_s": 1},
        }
    )
    assert cfg.cluster is not None
    store = ClusterStore(dsn, node_id, 4.0)
    svc = CallService(cfg, store, RecordingPool())
    node = attach(cfg.cluster, store, svc, dsn)
    return svc, node


def _age(store: ClusterStore, node_id: str, by_s: float) -> None:
    store._one(
        "UPDATE nodes SET last_seen = last_seen - make_interval(secs => ?) WHERE node_id=?",
        (by_s, node_id),
    )


@pytest.mark.parametrize("retried", [False, True])
def test_a_survivor_ends_a_lost_nodes_call_and_the_lost_node_stays_silent(pg_server, retried):
    dsn = pg_server.new_database()
    retry = {"max_attempts": 2, "base_s": 0, "jitter": 0} if retried else None
    a, node_a = _node(dsn, "a", retry)
    b, node_b = _node(dsn, "b", retry)
    pool_a, pool_b = a.pool, b.pool
    assert isinstance(pool_a, RecordingPool) and isinstance(pool_b, RecordingPool)

    sid = b.trigger(TriggerInput(to_number="+14155552671")).call_sid
    a.dispatch_once()  # a claims and dials it
    assert [p.call_sid for p in pool_a.plans] == [sid]
    b.dispatch_once()  # b finds nothing to claim
    assert not pool_b.plans
    rec = b.store.get(sid)
    assert rec is not None and rec.status == "calling" and rec.owner_node == "a"

    _age(node_b.store, "a", 10.0)  # a stops beating (paused, cut off)
    node_b._connected_since = time.monotonic() - 10.0
    node_b.beat()
    rec = b.store.get(sid)
    assert rec is not None
    assert rec.attempt_history[-1].reason == "bridge node lost"
    assert node_b.describe()["takeovers"] == 1
    if retried:
        assert rec.status == "queued" and rec.owner_node is None
        b.dispatch_once()  # the retry is a new attempt, dialled by the survivor
        assert [p.call_sid for p in pool_b.plans] == [sid]
    else:
        assert (rec.status, rec.reason) == ("failure", "bridge node lost")
    after = b.store.get(sid)

    # a resumes: its scheduler dials nothing, and its first beat finds it was taken over.
    a.dispatch_once()
    assert [p.call_sid for p in pool_a.plans] == [sid]
    node_a.beat()
    assert pool_a.hung == [pool_a.plans[0].leg_id]  # its orphaned leg is hung up
    assert b.store.get(sid) == after
    assert {m["node_id"] for m in node_a.describe()["members"]} == {"a", "b"}
    for s in (a.store, b.store):
        s.close()


def test_without_redis_a_command_for_another_nodes_live_call_names_that_node(pg_server):
    """No cluster.redis, so no bus to forward on: hangup or DTMF for a live call another
    node owns is refused (409 naming the node) instead of answering 200 and doing nothing;
    the owner carries it out, and a queued call is cancelled from any node."""
    import asyncio

    from sipbridge.errors import ApiError

    dsn = pg_server.new_database()
    a, _ = _node(dsn, "a")
    b, _ = _node(dsn, "b")
    sid = b.trigger(TriggerInput(to_number="+14155552671")).call_sid
    a.dispatch_once()  # a claims and dials it
    for command in (b.hangup_anywhere(sid), b.send_dtmf_anywhere(sid, "1")):
        with pytest.raises(ApiError) as e:
            asyncio.run(command)
        assert e.value.status == 409 and "live on node a" in e.value.message
        assert "cluster.redis" in e.value.message
    assert a.pool.hung == []  # type: ignore[attr-defined]
    asyncio.run(a.hangup_anywhere(sid))  # the owner hangs up its own leg
    assert a.pool.hung == [a.pool.plans[0].leg_id]  # type: ignore[attr-defined]
    queued = a.trigger(TriggerInput(to_number="+14155552672")).call_sid
    rec = asyncio.run(b.hangup_anywhere(queued))
    assert (rec.status, rec.reason) == ("failure", "canceled")
    for s in (a.store, b.store):
        s.close()
