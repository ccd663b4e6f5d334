"""The durable webhook outbox, on both stores (``open_store``: SQLite and a real
PostgreSQL server): a callback row exists exactly when its status was written, one call's
callbacks go out in order, and callbacks left undelivered at exit go out after a restart
with their original delivery IDs (against a real local HTTP receiver)."""

from __future__ import annotations

import socket
import time
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from sipbridge.api import create_app
from sipbridge.calls import CallService
from sipbridge.calls.journal import Journal
from sipbridge.config import parse_config
from sipbridge.devtools.ports import free_port
from sipbridge.errors import StoreError
from sipbridge.records import CallEvent, CallRecord, OutboxMessage
from tests.doubles import RecordingPool
from tests.webhook_receiver import Receiver

AUTH = {"X-PolyAi-Auth-Token": "tok"}


def _cfg(**webhooks):
    return parse_config(
        {
            "agent": {"uri": "sip:agent@127.0.0.1"},
            "api": {"tokens": [{"value": "tok"}]},
            "trunks": [{"name": "t1", "address": "127.0.0.1:5060", "caller_id": "+14155550100"}],
            "routes": [{"prefix": "+", "trunk": "t1"}],
            "webhooks": {"allow_private": True, **webhooks},
        }
    )


def _rec(sid="OUT-1"):
    return CallRecord(
        call_sid=sid,
        status="queued",
        to_number="+14155552671",
        from_number="+14155550100",
        created_at=1000.0,
        last_updated=1000.0,
    )


def _msg(did, sid="OUT-1", next_at=1000.0):
    return OutboxMessage(did, sid, "calling", "http://127.0.0.1:9/", b"{}", 1000.0, 0, next_at)


def _all_ids(store):
    return [r[0] for r in store._one("SELECT delivery_id FROM outbox ORDER BY id")]


def test_callback_row_written_with_its_status_or_not_at_all(open_store):
    store = open_store()
    journal = Journal(store, clock=lambda: 1001.0)
    journal.outbox.append(lambda rec, ev: [_msg(f"d-{rec.call_sid}-{rec.status}", rec.call_sid)])
    rec = _rec()
    journal.create(rec, {"from": None, "to": "queued"})
    journal.set_status(rec, "calling", "")
    assert _all_ids(store) == ["d-OUT-1-queued", "d-OUT-1-calling"]
    assert [e.kind for e in store.events("OUT-1")] == ["status", "status"]
    # A status that cannot be written leaves no callback (and no event) behind.
    with pytest.raises(StoreError):
        journal.set_status(_rec("OUT-ghost"), "calling", "")
    assert _all_ids(store) == ["d-OUT-1-queued", "d-OUT-1-calling"]
    assert store.events("OUT-ghost") == []


def test_due_one_per_call_in_order_with_retry_schedule(open_store):
    store = open_store()
    store.create(_rec("OUT-1"), CallEvent(1000.0, "status", {}), [_msg("a1"), _msg("a2")])
    store.create(_rec("OUT-2"), None, [_msg("b1", "OUT-2", next_at=1005.0)])
    assert [m.delivery_id for m in store.outbox_due(1001.0, 10)] == ["a1"]
    assert [m.delivery_id for m in store.outbox_due(1005.0, 10)] == ["a1", "b1"]
    store.outbox_retry("a1", 1, 1010.0, "HTTP 500")
    # a1 waits for its retry, and a2 waits behind it (one call's callbacks in order)
    assert [m.delivery_id for m in store.outbox_due(1006.0, 10)] == ["b1"]
    assert store.outbox_next_at() == 1005.0  # b1; a2 (due) waits behind a1 (at 1010)
    due = store.outbox_due(1010.0, 10)
    assert [(m.delivery_id, m.attempts) for m in due] == [("a1", 1), ("b1", 0)]
    store.outbox_done("a1", "delivered", 2, 1011.0)
    assert [m.delivery_id for m in store.outbox_due(1011.0, 10)] == ["a2", "b1"]
    assert store.outbox_pending() == 2
    store.outbox_done("a2", "failed", 5, 1012.0, "HTTP 500")
    store.outbox_done("b1", "refused", 1, 1012.0, "loopback")
    assert store.outbox_pending() == 0 and store.outbox_next_at() is None
    # finished callbacks go with the retention window, like ended calls
    store.save(replace(_rec("OUT-1"), status="success", ended_at=1012.0))
    store.purge_expired(now=1012.0 + store.retention_s + 1)
    assert _all_ids(store) == []


def test_undelivered_callbacks_survive_a_restart_with_their_ids(open_store):
    port = free_port(socket.SOCK_STREAM)  # the receiver is down at first
    url = f"http://127.0.0.1:{port}/hook"
    cfg = _cfg(backoff_s=0.5, max_attempts=20)

    store = open_store()
    svc = CallService(cfg, store, RecordingPool())
    with TestClient(create_app(svc, ["tok"])) as client:
        r = client.post(
            "/v1/outbound-calling/trigger",
            headers=AUTH,
            json={"to_number": "+14155552671", "status_callback": url},
        )
        sid = r.json()["callSid"]
        client.post(f"/v1/outbound-calling/{sid}/hangup", headers=AUTH)
    rows = store._one("SELECT delivery_id, status FROM outbox ORDER BY id")
    assert [st for _, st in rows][:1] == ["queued"] and len(rows) >= 2
    assert store.outbox_pending() == len(rows)  # none delivered, none dropped
    store.close()

    with Receiver(port=port) as rx:
        store2 = open_store()
        svc2 = CallService(cfg, store2, RecordingPool())
        with TestClient(create_app(svc2, ["tok"])):
            got = rx.wait(lambda rs: len(rs) >= len(rows), timeout=15)
    # (the restart may add its own: a call left "calling" is ended at start-up)
    got = got[: len(rows)]
    assert [g.headers["x-sipbridge-delivery"] for g in got] == [d for d, _ in rows]
    assert [g.json()["status"] for g in got] == [st for _, st in rows]
    assert all(g.json()["callSid"] == sid for g in got)
    # the first POST after the restart counts the attempts made before it
    assert int(got[0].headers["x-sipbridge-attempt"]) >= 2


def test_a_claimed_callback_is_skipped_by_other_nodes_until_its_lease_ends(open_store):
    """Several nodes deliver one outbox: the node that takes a callback leases it, the
    others skip it (and the call's later ones) until its outcome or the lease's end."""
    a, b = open_store(), open_store()  # two nodes, one database
    a.create(_rec("OUT-1"), None, [_msg("a1"), _msg("a2")])
    a.create(_rec("OUT-2"), None, [_msg("b1", "OUT-2")])
    assert [m.delivery_id for m in a.outbox_claim(1001.0, 1, lease_s=10)] == ["a1"]
    assert [m.delivery_id for m in b.outbox_claim(1001.0, 10, lease_s=20)] == ["b1"]
    assert b.outbox_claim(1002.0, 10, lease_s=10) == []
    assert b.outbox_next_at() == 1011.0  # a1's lease (b1's ends at 1021)
    assert [m.delivery_id for m in b.outbox_claim(1011.0, 10, lease_s=10)] == ["a1"]  # a died
    b.outbox_done("a1", "delivered", 1, 1012.0)
    assert [m.delivery_id for m in a.outbox_claim(1012.0, 10, lease_s=10)] == ["a2"]
    b.outbox_retry("b1", 1, 1013.0, "HTTP 500")  # an outcome ends the lease
    assert [m.delivery_id for m in a.outbox_claim(1013.0, 10, lease_s=10)] == ["b1"]


def test_nodes_racing_for_the_outbox_take_each_callback_once(pg_server):
    """PostgreSQL, several connections claiming at once (FOR UPDATE SKIP LOCKED)."""
    import threading

    from sipbridge.pgstore import PostgresStore

    dsn = pg_server.new_database()
    stores = [PostgresStore(dsn) for _ in range(4)]
    for i in range(40):
        stores[0].create(_rec(f"OUT-{i}"), None, [_msg(f"d{i}", f"OUT-{i}")])
    taken: list[str] = []
    gate = threading.Barrier(len(stores))

    def node(s) -> None:
        gate.wait(10)
        for _ in range(20):
            taken.extend(m.delivery_id for m in s.outbox_claim(1001.0, 3, lease_s=60))

    threads = [threading.Thread(target=node, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for s in stores:
        s.close()
    assert sorted(taken) == sorted(f"d{i}" for i in range(40))  # each once, none left


def test_three_nodes_on_one_postgresql_post_each_callback_once(pg_server):
    """Three services sharing one PostgreSQL outbox, a receiver taking 200 ms per POST
    (each node's loop sees every due callback): every callback arrives once, not once per
    node (before the outbox claim: 3 POSTs each)."""
    import collections
    import contextlib

    from sipbridge.pgstore import PostgresStore

    dsn = pg_server.new_database()
    with Receiver(delay_s=0.2) as rx, contextlib.ExitStack() as nodes:
        clients = [
            nodes.enter_context(
                TestClient(
                    create_app(CallService(_cfg(), PostgresStore(dsn), RecordingPool()), ["tok"])
                )
            )
            for _ in range(3)
        ]
        for i in range(6):
            r = clients[i % 3].post(
                "/v1/outbound-calling/trigger",
                headers=AUTH,
                json={"to_number": f"+1415555267{i}", "status_callback": rx.url},
            )
            assert r.status_code == 200, r.text
        rx.wait(lambda rs: len(rs) >= 6, timeout=15)
        time.sleep(1.5)  # any second POST would come from another node's next poll (1 s)
    per_id = collections.Counter(r.headers["x-sipbridge-delivery"] for r in rx.requests)
    assert len(per_id) >= 6 and set(per_id.values()) == {1}, per_id  # queued, calling, ...


def test_a_post_cut_by_shutdown_gives_its_claim_back(open_store):
    """Stopping with a POST in flight (a slow receiver): the callback is due again at
    once for the next start, not only when this node's claim would have run out."""
    import asyncio

    from sipbridge.webhooks import WebhookDispatcher

    store = open_store()

    async def run(url: str) -> None:
        d = WebhookDispatcher(_cfg().webhooks, render=lambda rec: {}, store=store)
        store.create(_rec(), None, [replace(_msg("a1"), url=url, next_at=time.time())])
        await d.start()
        deadline = time.monotonic() + 5
        while store._one("SELECT next_at FROM outbox")[0][0] <= time.time() + 1:
            assert time.monotonic() < deadline, "never claimed"
            await asyncio.sleep(0.02)  # the loop claims it and starts the POST
        await d.stop(flush_s=0.1)

    with Receiver(delay_s=3.0) as rx:
        asyncio.run(run(rx.url))
    assert store._one("SELECT next_at, done_at FROM outbox")[0][0] <= time.time()
    assert store.outbox_pending() == 1
