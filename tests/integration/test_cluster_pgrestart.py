"""PostgreSQL restarted under three nodes (issue #13, item 8): while it is down every
node's API answers 503 with Retry-After (trigger and status) and /readyz 503, calls
that end meanwhile are not forgotten, and when it returns the nodes reconnect by
themselves: every call triggered before the outage ends terminal, each dialled once, and
each of its statuses reaches the status-callback receiver, in order.

The server is this test's own (stopping the session's shared one would break other
tests); its restart keeps the port and the data directory, as a real restart does. The
outage (a few seconds) is shorter than the nodes' lease, as a PostgreSQL restart or a
fail-over to a standby is shorter than the default lease_s of 15 s.
"""

from __future__ import annotations

import time

import pytest

from tests.integration.test_cluster_nodes import (
    NODES,
    _to,
    invites,
    readyz,
    start_cluster,
    wait_all_terminal,
    wait_until,
)
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.integration

LEASE_S = 12.0  # longer than the outage below (stop, 503 checks, a call ending, restart)


def test_postgresql_restart_mid_run_loses_nothing(tmp_path, stack, own_pg_server):
    carrier = stack.sipp("uas_answer_then_bye_3s.xml")  # the carrier hangs up after 3 s
    rx = Receiver().__enter__()  # every status callback must arrive too
    stack.add(rx, rx.__exit__)
    nodes = start_cluster(
        stack,
        tmp_path,
        own_pg_server.new_database(),
        carrier,
        cluster_extra={"lease_s": LEASE_S},
        webhooks={"url": rx.url, "backoff_s": 0.5, "allow_cidrs": ["127.0.0.0/8"]},
    )
    n_calls = 18
    sids = [nodes[i % NODES].trigger(to_number=_to(i)) for i in range(n_calls)]
    wait_until(
        lambda: sum(nodes[0].status(s)["status"] == "calling" for s in sids) >= 3,
        20,
        "calls in flight",
    )

    own_pg_server.stop()  # fast shutdown: every connection of every node is cut
    down_at = time.time()
    try:
        for node in nodes:
            r = node.client.post("/v1/outbound-calling/trigger", json={"to_number": _to(99)})
            assert r.status_code == 503 and r.headers.get("Retry-After"), (r.status_code, r.text)
            assert "unavailable" in r.json()["error"], r.text
            r = node.client.get(f"/v1/outbound-calling/{sids[-1]}/status")
            assert r.status_code == 503 and r.headers.get("Retry-After"), (r.status_code, r.text)
            r = node.client.get("/readyz")  # a load balancer takes the node out meanwhile
            assert r.status_code == 503 and "store" in r.json()["down"], r.text
        # A call ends while the store is down (the carrier's BYE): its end must survive.
        wait_until(
            lambda: any(
                m.direction == "sent" and m.method == "BYE" and (m.ts or 0) > down_at
                for m in carrier.messages()
            ),
            10,
            "a call ended during the outage",
        )
    finally:
        own_pg_server.restart()  # same port, same data directory
    up_at = time.time()

    for node in nodes:  # each node reconnects by itself
        wait_until(
            lambda n=node: (
                n.client.get(f"/v1/outbound-calling/{sids[-1]}/status").status_code == 200
            ),
            15,
            "status answered again",
        )
    done = wait_all_terminal(nodes[1], sids, timeout=30)
    assert all(b["status"] == "success" for b in done.values()), [
        (s, b["status"], b["reason"]) for s, b in done.items() if b["status"] != "success"
    ]
    seen = invites(carrier)
    assert {len(seen[_to(i)]) for i in range(n_calls)} == {1}, seen  # each dialled once
    assert _to(99) not in seen  # the trigger refused with 503 was not dialled
    # every status of every call reported, in order (the outbox waited out the outage)
    got = rx.wait(lambda rs: len({r.headers["x-sipbridge-delivery"] for r in rs}) >= 3 * n_calls)
    by_sid: dict[str, list[str]] = {}
    first: set[str] = set()  # a POST whose outcome was not written is sent again (same ID)
    for cb in got:
        if cb.headers["x-sipbridge-delivery"] not in first:
            first.add(cb.headers["x-sipbridge-delivery"])
            by_sid.setdefault(cb.json()["callSid"], []).append(cb.json()["status"])
    assert {s: by_sid.get(s) for s in sids} == {s: ["queued", "calling", "success"] for s in sids}
    for node in nodes:
        wait_until(lambda n=node: n.client.get("/readyz").status_code == 200, 15, "ready")
        assert len(readyz(node)["cluster"]["members"]) == NODES
    print(f"PostgreSQL down {up_at - down_at:.1f} s; {n_calls} calls all terminal, once each")
