"""A real bridge on PostgreSQL (a throwaway server from sipbridge.devtools.pgserver)
placing a call against a SIPp carrier, with its status callbacks' receiver down: the
bridge is stopped with callbacks pending, restarted, and the receiver gets every one with
its original delivery ID, in order. CDRs and events are in PostgreSQL."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sipbridge.devtools.bridge import Stack, bridge_config
from sipbridge.devtools.ports import free_port
from sipbridge.pgstore import PostgresStore
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.integration


def test_call_on_postgresql_and_callbacks_survive_a_restart(
    tmp_path: Path, stack: Stack, pg_server
) -> None:
    dsn = pg_server.new_database()
    carrier = stack.sipp("uas_answer_then_bye.xml")
    hook_port = free_port(socket.SOCK_STREAM)  # nothing listens yet: the receiver is down
    cfg = bridge_config(
        tmp_path,
        trunks=[{"name": "t", "address": carrier.uri_hostport, "caller_id": "+14155550100"}],
        routes=[{"prefix": "+1", "trunk": "t"}],
        store={"backend": "postgresql", "dsn": {"value": dsn}},
        webhooks={
            "backoff_s": 0.5,
            "max_attempts": 20,
            "allow_cidrs": ["127.0.0.0/8"],
            "url": f"http://127.0.0.1:{hook_port}/hook",
        },
    )
    bridge = stack.bridge(cfg)
    sid = bridge.trigger(to_number="+12125550123")
    body = bridge.wait_terminal(sid)
    assert body["status"] == "success", body
    assert [e["kind"] for e in body["events"]].count("status") == 3
    assert bridge.stop() == 0

    # Everything the bridge wrote is in PostgreSQL; the callbacks wait in the outbox.
    store = PostgresStore(dsn)
    try:
        rows = store._one(
            "SELECT delivery_id, status, attempts FROM outbox WHERE done_at IS NULL ORDER BY id"
        )
        assert [st for _, st, _ in rows] == ["queued", "calling", "success"]
        assert rows[0][2] >= 1  # tried while the receiver was down
        assert [c["call_sid"] for c in store.cdrs(0)] == [sid]
    finally:
        store.close()

    rx = Receiver(port=hook_port).__enter__()
    stack.add(rx, rx.__exit__)
    stack.bridge(cfg, name="bridge2")
    got = rx.wait(lambda rs: len(rs) == 3, timeout=20)
    assert [g.headers["x-sipbridge-delivery"] for g in got] == [d for d, _, _ in rows]
    assert [g.json()["status"] for g in got] == ["queued", "calling", "success"]
    assert all(g.json()["callSid"] == sid for g in got)
