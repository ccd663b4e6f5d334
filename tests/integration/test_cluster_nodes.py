"""Three bridge nodes as separate processes (each its own HTTP, SIP and RTP ports) on one
real PostgreSQL, against one SIPp carrier. Each node dials with its own caller ID, so the
carrier's From user names the node that sent an INVITE, and every call has its own To
number, so the carrier's distinct Call-IDs per To number count the dials of a call.

(Calls triggered round-robin, each dialled exactly once by the node that owns it: the
300-call test in test_cluster_limits.py.)

(a) kill -9 a node with calls queued and in flight: every call ends terminal, no attempt
    dialled twice, the survivors finish within the stated bound;
(b) SIGSTOP a node past its lease, the others take over, SIGCONT: it dials nothing and
    writes nothing about the calls taken over;
(c) SIGTERM: a draining node hands its claimed, undialled calls back.
"""

from __future__ import annotations

import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from sipbridge.devtools.bridge import Bridge, Stack, bridge_config
from sipbridge.devtools.sipp import SippUas
from sipbridge.pgstore import PostgresStore

pytestmark = pytest.mark.integration

LEASE_S = 4.0
HEARTBEAT_S = 1.0
NODES = 3
# Stated bound (b): after a node is lost, every call is terminal within
# lease_s + heartbeat_s + KILL_BOUND_S (3 s calls, 8 concurrent on 2 survivors).
KILL_BOUND_S = 30.0


def _caller(i: int) -> str:
    return f"+1415555010{i}"


def _to(i: int) -> str:
    return f"+1212555{i:04d}"


def _user(header: str | None) -> str:
    """The user part of a From/To header value."""
    h = header or ""
    return h.split("sip:", 1)[-1].split("@", 1)[0].split(";", 1)[0]


def start_cluster(
    stack: Stack,
    tmp_path: Path,
    dsn: str,
    carrier: SippUas,
    retry: dict[str, Any] | None = None,
    trunk_extra: dict[int, dict[str, Any]] | None = None,
    cluster_extra: dict[str, Any] | None = None,
    **config: Any,
) -> list[Bridge]:
    nodes = []
    for i in range(NODES):
        trunk = {"name": "t", "address": carrier.uri_hostport, "caller_id": _caller(i)}
        trunk.update((trunk_extra or {}).get(i, {}))
        route: dict[str, Any] = {"prefix": "+1", "trunk": "t"}
        if retry:
            route["retry"] = retry
        cfg = bridge_config(
            tmp_path,
            trunks=[trunk],
            routes=[route],
            store={"backend": "postgresql", "dsn": {"value": dsn}},
            cluster={
                "node_id": f"n{i}",
                "lease_s": LEASE_S,
                "heartbeat_s": HEARTBEAT_S,
                **(cluster_extra or {}),
            },
            **config,
        )
        nodes.append(stack.bridge(cfg, name=f"node{i}"))
    stop_together(stack, nodes)
    return nodes


def stop_together(stack: Stack, nodes: list[Bridge]) -> None:
    """At the stack's close, SIGTERM every node at once and then wait for them (each
    drains for its shutdown grace: in parallel, not one after the other)."""

    def stop() -> None:
        live = [n for n in nodes if n.proc.poll() is None]
        for n in live:
            n.proc.terminate()
        for n in live:
            n.stop()  # already terminating: waits (SIGKILL after 20 s)

    stack.add(nodes, stop)


def invites(carrier: SippUas) -> dict[str, dict[str, str]]:
    """To number -> {Call-ID: From user} of every INVITE the carrier received (a
    retransmission has the Call-ID of its original)."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for m in carrier.received("INVITE"):
        out[_user(m.header("To"))][m.call_id] = _user(m.header("From"))
    return out


def wait_all_terminal(node: Bridge, sids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    done: dict[str, dict[str, Any]] = {}
    while True:
        for sid in sids:
            if sid not in done:
                body = node.status(sid)
                if body["status"] in ("success", "failure"):
                    done[sid] = body
        if len(done) == len(sids):
            return done
        if time.monotonic() > deadline:
            left = {s: node.status(s)["status"] for s in sids if s not in done}
            raise AssertionError(f"{len(left)} call(s) not terminal after {timeout}s: {left}")
        time.sleep(0.1)  # polling the status API (the event source)


def wait_until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def readyz(node: Bridge) -> dict[str, Any]:
    body: dict[str, Any] = node.client.get("/readyz").json()
    return body


def test_kill_9_a_node_with_calls_queued_and_in_flight(tmp_path, stack, pg_server):
    """The lost node's in-flight calls end as "bridge node lost" and are retried once
    (the route's policy); its claimed, undialled calls go back to the queue; the queue is
    drained by the survivors. Bound: every call terminal within
    ``lease_s + heartbeat_s + KILL_BOUND_S`` of the kill."""
    carrier = stack.sipp("uas_answer_then_bye_3s.xml")
    retry = {"max_attempts": 2, "base_s": 0.2, "jitter": 0, "retry_on": ["bridge_error"]}
    dsn = pg_server.new_database()
    nodes = start_cluster(stack, tmp_path, dsn, carrier, retry=retry)
    victim = nodes[2]
    n_calls = 30  # 4 calls per node at once (8 SIP slots): most of them queue
    sids = [nodes[i % NODES].trigger(to_number=_to(i)) for i in range(n_calls)]

    def victim_in_flight() -> list[str]:
        return [
            sid
            for sid in sids
            if (b := nodes[0].status(sid))["owner_node"] == "n2" and b["status"] == "calling"
        ]

    wait_until(lambda: len(victim_in_flight()) >= 2, 20, "the victim has calls in flight")
    queued_at_kill = sum(nodes[0].status(s)["status"] == "queued" for s in sids)
    killed_at = time.monotonic()
    victim.proc.kill()  # kill -9 of the supervisor: no drain, no last write
    victim.proc.wait(5)
    done = wait_all_terminal(nodes[0], sids, timeout=LEASE_S + HEARTBEAT_S + KILL_BOUND_S)
    took_s = time.monotonic() - killed_at

    assert queued_at_kill >= 6, queued_at_kill
    assert all(b["status"] == "success" for b in done.values()), [
        (s, b["status"], b["reason"]) for s, b in done.items() if b["status"] != "success"
    ]
    lost = [
        s
        for s, b in done.items()
        if any(a["reason"] == "bridge node lost" for a in b["attempt_history"])
    ]
    assert len(lost) >= 2, lost
    seen = invites(carrier)
    for i, sid in enumerate(sids):
        # one INVITE per attempt: a lost attempt is retried as a new attempt, never redialled
        assert len(seen[_to(i)]) == done[sid]["attempts"], (sid, seen[_to(i)], done[sid])
    print(
        f"kill -9: {len(lost)} lost in flight, {queued_at_kill} queued, all terminal "
        f"{took_s:.1f} s after the kill"
    )
    assert took_s <= LEASE_S + HEARTBEAT_S + KILL_BOUND_S


def _snapshot(dsn: str, sids: list[str]) -> list[tuple[Any, ...]]:
    store = PostgresStore(dsn)
    try:
        rows = store._one(
            "SELECT c.*, (SELECT COUNT(*) FROM events e WHERE e.call_sid=c.call_sid), "
            "(SELECT MAX(id) FROM events e WHERE e.call_sid=c.call_sid) "
            "FROM calls c WHERE call_sid = ANY(?) ORDER BY call_sid",
            (sids,),
        )
        return [tuple(r) for r in rows]
    finally:
        store.close()


def test_a_paused_node_dials_and_writes_nothing_after_a_takeover(tmp_path, stack, pg_server):
    carrier = stack.sipp("uas_answer_wait_bye.xml")  # calls stay up until the bridge hangs up
    dsn = pg_server.new_database()
    nodes = start_cluster(stack, tmp_path, dsn, carrier)
    victim = nodes[2]
    sids = [nodes[i % NODES].trigger(to_number=_to(i)) for i in range(9)]
    wait_until(
        lambda: all(nodes[0].status(s)["status"] == "calling" for s in sids), 20, "all dialled"
    )
    taken = [s for s in sids if nodes[0].status(s)["owner_node"] == "n2"]
    assert taken, "the victim dialled none of the calls"

    victim.proc.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        done = wait_all_terminal(nodes[0], taken, timeout=LEASE_S + 4 * HEARTBEAT_S + 5)
        lost_s = time.monotonic() - stopped_at
        before = _snapshot(dsn, taken)  # the survivors' last word on these calls
        resumed = time.time()
    finally:
        victim.proc.send_signal(signal.SIGCONT)
    assert {(b["status"], b["reason"]) for b in done.values()} == {("failure", "bridge node lost")}
    assert all(b["owner_node"] in ("n0", "n1") for b in done.values())

    # The victim finds its lease gone, hangs up its legs (BYE at the carrier), rejoins.
    legs = {cid for s in taken for cid in invites(carrier)[nodes[0].status(s)["to_number"]]}
    wait_until(
        lambda: legs <= {m.call_id for m in carrier.received("BYE")}, 15, "victim's legs hung up"
    )
    wait_until(lambda: readyz(victim)["cluster"]["lease_held"], 10, "victim rejoined")
    view = readyz(victim)["cluster"]
    assert {m["node_id"] for m in view["members"]} == {"n0", "n1", "n2"}
    assert "lease lost" in victim.log()
    # Its reports about the legs it hung up were fenced out: nothing changed.
    wait_until(lambda: readyz(victim)["cluster"]["stale_writes_dropped"] >= 1, 10, "fenced")
    assert _snapshot(dsn, taken) == before
    late = [
        m
        for m in carrier.received("INVITE")
        if _user(m.header("From")) == _caller(2) and (m.ts or 0) >= resumed - 0.5
    ]
    assert not late, late
    print(f"SIGSTOP: {len(taken)} call(s) taken over {lost_s:.1f} s after the pause")


def test_a_draining_node_hands_its_claimed_calls_back(tmp_path, stack, pg_server):
    """SIGTERM: the node stops claiming and its claimed, undialled calls (here: waiting
    for its slow trunk's CPS tokens) are dialled by the other nodes, once each."""
    carrier = stack.sipp("uas_answer_then_bye.xml")
    slow = {0: {"cps": 0.2, "cps_burst": 1}}  # node 0 dials one call per 5 s
    nodes = start_cluster(stack, tmp_path, pg_server.new_database(), carrier, trunk_extra=slow)
    sids = [nodes[0].trigger(to_number=_to(i)) for i in range(12)]

    def waiting_on_n0() -> list[str]:
        return [
            s
            for s in sids
            if (b := nodes[1].status(s))["owner_node"] == "n0" and b["status"] == "queued"
        ]

    wait_until(lambda: len(waiting_on_n0()) >= 2, 15, "node 0 holds undialled claims")
    assert nodes[0].stop() == 0  # SIGTERM: drain, then exit
    done = wait_all_terminal(nodes[1], sids, timeout=40)
    assert all(b["status"] == "success" for b in done.values()), done
    seen = invites(carrier)
    assert {len(seen[_to(i)]) for i in range(12)} == {1}
    handed = [ln for ln in nodes[0].log().splitlines() if "handed back to the queue" in ln]
    assert handed and int(handed[-1].split("draining: ")[1].split()[0]) >= 2, handed
    by_n0 = [i for i in range(12) if next(iter(seen[_to(i)].values())) == _caller(0)]
    assert len(by_n0) <= 3  # the rest went out through the other nodes
