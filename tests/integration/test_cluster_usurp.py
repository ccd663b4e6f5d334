"""Two bridge processes with one cluster.node_id, on a real PostgreSQL and a SIPp carrier:
A is SIGSTOPped with calls up, B starts with the same node id once A's lease is over (its
recovery ends A's calls as "bridge restarted") and dials a call of its own. When A gets
SIGCONT, its first heartbeat finds the id taken: A hangs up its legs (BYE at the carrier),
dials and writes nothing, and exits with code 4 naming the problem; B goes on untouched."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from sipbridge.app import EXIT_NODE_ID_TAKEN
from sipbridge.devtools.bridge import bridge_config
from sipbridge.devtools.sipp import SippUas
from sipbridge.pgstore import PostgresStore
from tests.integration.test_cluster_nodes import (
    HEARTBEAT_S,
    LEASE_S,
    _caller,
    _to,
    _user,
    invites,
    readyz,
    wait_until,
)

pytestmark = pytest.mark.integration


def _cfg(tmp_path: Path, dsn: str, carrier: SippUas, caller: str) -> dict[str, Any]:
    return bridge_config(
        tmp_path,
        trunks=[{"name": "t", "address": carrier.uri_hostport, "caller_id": caller}],
        routes=[{"prefix": "+1", "trunk": "t"}],
        store={"backend": "postgresql", "dsn": {"value": dsn}},
        cluster={"node_id": "dup", "lease_s": LEASE_S, "heartbeat_s": HEARTBEAT_S},
    )


def _rows(dsn: str, sids: list[str]) -> list[tuple[Any, ...]]:
    """What the database holds about the node id and these calls (not the claim leases
    B's heartbeat renews, nor the events of a call still live: B's own call goes on
    writing them)."""
    store = PostgresStore(dsn)
    try:
        return [
            *store._one("SELECT node_id, instance, started_at FROM nodes"),
            *store._one(
                "SELECT call_sid, status, reason, owner_node, epoch, dialing, "
                "CASE WHEN c.status IN ('success', 'failure') THEN "
                "(SELECT COUNT(*) || ' ' || MAX(id) FROM events e WHERE e.call_sid=c.call_sid) "
                "END FROM calls c WHERE call_sid = ANY(?) ORDER BY call_sid",
                (sids,),
            ),
        ]
    finally:
        store.close()


def test_a_paused_process_whose_node_id_was_taken_stops(tmp_path, stack, pg_server):
    carrier = stack.sipp("uas_answer_wait_bye.xml")  # calls stay up until the bridge hangs up
    dsn = pg_server.new_database()
    a = stack.bridge(_cfg(tmp_path, dsn, carrier, _caller(1)), name="a")
    sids_a = [a.trigger(to_number=_to(i)) for i in range(2)]
    for sid in sids_a:
        a.wait_status(sid, lambda b: b["status"] == "calling")

    a.proc.send_signal(signal.SIGSTOP)
    try:
        # B's start-up waits while A's row is fresh, then recovers the id and joins
        b = stack.bridge(_cfg(tmp_path, dsn, carrier, _caller(2)), name="b")
        for sid in sids_a:
            body = b.wait_terminal(sid, timeout=10)
            assert (body["status"], body["reason"]) == ("failure", "bridge restarted")
        sid_b = b.trigger(to_number=_to(9))
        b.wait_status(sid_b, lambda body: body["status"] == "calling")
        before = _rows(dsn, [*sids_a, sid_b])
        resumed = time.time()
    finally:
        a.proc.send_signal(signal.SIGCONT)

    assert a.proc.wait(20) == EXIT_NODE_ID_TAKEN
    assert (
        "cluster.node_id 'dup' was taken over by another process (instance "
        f"{before[0][1]}) while this one was paused: this process stops; give every node "
        "its own cluster.node_id"
    ) in a.log()
    seen = invites(carrier)
    legs_a = {cid for i in range(2) for cid in seen[_to(i)]}
    wait_until(
        lambda: legs_a <= {m.call_id for m in carrier.received("BYE")}, 10, "A's legs hung up"
    )
    late = [
        m
        for m in carrier.received("INVITE")
        if _user(m.header("From")) == _caller(1) and (m.ts or 0) >= resumed - 0.5
    ]
    assert not late, late
    # B goes on: its row, its call and A's ended calls are as B left them
    after = _rows(dsn, [*sids_a, sid_b])
    assert after == before, [(x, y) for x, y in zip(before, after, strict=True) if x != y]
    assert not set(seen[_to(9)]) & {m.call_id for m in carrier.received("BYE")}
    view = readyz(b)
    assert view["cluster"]["lease_held"] and view["checks"]["cluster"] == "ok", view
