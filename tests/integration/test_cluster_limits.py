"""Three bridge nodes (separate `sipbridge run` processes, each with its own HTTP, SIP and
RTP ports, on one PostgreSQL server) share one Redis for the trunk's CPS cap, against one
SIPp carrier: triggers round-robin across the nodes; Redis is killed mid-run (the nodes
stop dialling, say why on /readyz, keep taking triggers) and restarted empty (dialling
resumes by itself). In no 1 s window does the carrier see more than the cap plus its burst.

The nodes share one database, whose queue they claim from (SKIP LOCKED, epochs); the last
test sends hangup and DTMF for a live call to a node that does not own it, through the API."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from sipbridge.devtools.bridge import Bridge, Stack, bridge_config
from tests.integration.test_scheduling import invite_times
from tests.unit.test_redislimits import windows_ok

pytestmark = pytest.mark.integration

CPS, BURST = 5.0, 1


def _readyz(node: Bridge) -> tuple[int, dict[str, Any]]:
    r = httpx.get(node.base + "/readyz", timeout=5)
    body: dict[str, Any] = r.json()
    return r.status_code, body


def _wait(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # polling other processes (SIPp's log, a node's API)


def _nodes(
    tmp_path: Path, stack: Stack, pg: Any, redis: Any, carrier: Any, **trunk: Any
) -> list[Bridge]:
    """Three nodes on one database of ``pg``, sharing ``redis``."""
    nodes = []
    dsn = pg.new_database()
    for i in range(3):
        cfg = bridge_config(
            tmp_path,
            trunks=[
                {
                    "name": "t",
                    "address": carrier.uri_hostport,
                    "caller_id": "+14155550100",
                    **trunk,
                }
            ],
            routes=[{"prefix": "+1", "trunk": "t"}],
            limits={"api_rate_per_s": 1000, "api_burst": 1000},
            store={"backend": "postgresql", "dsn": {"value": dsn}},
            cluster={
                "node_id": f"node{i}",
                "lease_s": 2,
                "heartbeat_s": 0.5,
                "redis": {"url": {"value": redis.url}, "timeout_s": 0.5},
            },
        )
        nodes.append(stack.bridge(cfg, name=f"node{i}"))
    return nodes


def _firing(nodes: list[Bridge], sids: list[tuple[Bridge, str]]) -> Any:
    """``fire(start, count)``: trigger calls ``start..start+count-1`` round-robin across
    the nodes, all at once (one thread each); their (node, callSid) go to ``sids``."""
    lock = threading.Lock()

    def fire(start: int, count: int) -> None:
        def one(i: int) -> None:
            node = nodes[i % len(nodes)]
            sid = node.trigger(to_number=f"+1212555{3000 + i:04d}")
            with lock:
                sids.append((node, sid))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(start, start + count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    return fire


def test_three_nodes_share_the_trunk_cps_cap_across_a_redis_restart(
    tmp_path: Path, stack: Stack, pg_server: Any, redis_server: Any
) -> None:
    carrier = stack.sipp("uas_busy.xml")
    nodes = _nodes(tmp_path, stack, pg_server, redis_server, carrier, cps=CPS, cps_burst=BURST)
    sids: list[tuple[Bridge, str]] = []
    fire = _firing(nodes, sids)
    fire(0, 45)
    _wait(lambda: len(invite_times(carrier)) >= 15, 30, "15 INVITEs at the carrier")

    redis_server.stop(kill=True)
    stopped_at = time.time()
    for node in nodes:  # each node notices, stops dialling and says why
        _wait(lambda n=node: _readyz(n)[0] == 503, 10, "/readyz 503")
        _, body = _readyz(node)
        assert "redis" in body["down"], body
        assert body["checks"]["redis"].startswith("redis unreachable"), body
    fire(45, 6)  # triggers are still taken (and queued) while Redis is down
    assert len(sids) == 51
    n_down = len(invite_times(carrier))
    time.sleep(1.0)  # a second of outage: nothing may be dialled meanwhile (checked below)
    redis_server.restart()  # empty, as after a crash without persistence
    restarted_at = time.time()

    finals = [node.wait_terminal(sid, timeout=60) for node, sid in sids]
    assert all((f["status"], f["reason"]) == ("failure", "busy") for f in finals), finals
    for node in nodes:
        assert _readyz(node)[0] == 200

    times = invite_times(carrier)
    assert len(times) == 51  # every call dialled once
    # dialling stopped within one Redis timeout of the crash and stayed stopped
    assert not [t for t in times if stopped_at + 0.6 < t < restarted_at], (stopped_at, times)
    assert n_down < 45
    # The carrier's view (issue #13): in no 1 s window more INVITEs than the cap plus its
    # burst. (Grants are exact in Redis time, tests/unit/test_redislimits.py; between a
    # grant and the wire a loaded node adds scheduling jitter, so two INVITEs may arrive
    # closer than 1/cps, but no second holds more than cps + burst.)
    ok, worst = windows_ok(times, CPS + BURST)
    assert ok, f"{worst} INVITEs in a 1 s window: {times}"
    # and the nodes together dialled at the cap, not below it (between the outage's ends)
    before = [t for t in times if t <= stopped_at]
    assert before[-1] - before[0] <= (len(before) - 1) / CPS + 1.5, before


def test_a_node_carries_out_hangup_and_dtmf_forwarded_on_the_bus(
    tmp_path: Path, stack: Stack, pg_server: Any, redis_server: Any
) -> None:
    """The owner side of item 6 in a real node: another node (here the test, with the same
    CommandBus) forwards a hangup and a DTMF for a call this node holds."""
    import asyncio

    from redis import asyncio as aioredis

    from sipbridge.cluster.bus import CommandBus
    from sipbridge.errors import ApiError, ForwardError

    carrier = stack.sipp("uas_busy.xml")
    cfg = bridge_config(
        tmp_path,
        trunks=[{"name": "t", "address": carrier.uri_hostport, "caller_id": "+14155550100"}],
        routes=[{"prefix": "+1", "trunk": "t"}],
        store={"backend": "postgresql", "dsn": {"value": pg_server.new_database()}},
        cluster={"node_id": "owner", "redis": {"url": {"value": redis_server.url}}},
    )
    node = stack.bridge(cfg, name="owner")
    hour = time.gmtime().tm_hour
    closed = f"{(hour + 3) % 24:02d}:00-{(hour + 4) % 24:02d}:00"  # not open for 2 h
    sid = node.trigger(
        to_number="+12125550123",
        timezone="Etc/UTC",
        calling_window={"days": "daily", "hours": closed},
    )
    node.wait_status(sid, lambda b: "outside calling window" in b["reason"])

    async def forward() -> None:
        client = aioredis.Redis.from_url(redis_server.url)

        async def unused(op: str, sid: str, args: dict[str, Any]) -> None:
            raise AssertionError(op)

        bus = CommandBus(client, "other", "sipbridge:", 3.0, unused)
        await bus.start()
        try:
            assert await bus.wait_listening(5)
            with pytest.raises(ApiError) as e:  # queued: no answered leg to send DTMF on
                await bus.send("owner", "dtmf", sid, {"digits": "1"})
            assert e.value.status == 409 and "node owner" in e.value.message
            await bus.send("owner", "hangup", sid, {})
            with pytest.raises(ForwardError) as f:
                await bus.send("nobody", "hangup", sid, {})
            assert f.value.status == 503 and "node nobody" in f.value.message
        finally:
            await bus.stop()
            await client.aclose()

    asyncio.run(forward())
    final = node.wait_terminal(sid)
    assert (final["status"], final["reason"]) == ("failure", "canceled"), final
    assert invite_times(carrier) == []


def test_three_nodes_share_the_trunk_concurrency_cap(
    tmp_path: Path, stack: Stack, pg_server: Any, redis_server: Any
) -> None:
    """max_concurrent 2 on the trunk, 9 calls across 3 nodes: at the carrier (from its
    INVITE received to its BYE sent, which is inside the slot's hold) never more than 2."""
    cap = 2
    carrier = stack.sipp("uas_answer_then_bye.xml")
    nodes = _nodes(tmp_path, stack, pg_server, redis_server, carrier, max_concurrent=cap)
    sids: list[tuple[Bridge, str]] = []
    _firing(nodes, sids)(0, 9)
    finals = [node.wait_terminal(sid, timeout=60) for node, sid in sids]
    assert all(f["status"] == "success" for f in finals), finals
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    for m in carrier.messages():
        if m.ts is None or not m.is_request:
            continue
        if m.direction == "received" and m.method == "INVITE":
            starts.setdefault(m.call_id, m.ts)
        elif m.direction == "sent" and m.method == "BYE":
            ends.setdefault(m.call_id, m.ts)
    assert len(starts) == 9 and set(ends) == set(starts)  # every call dialled once
    edges = sorted([(t, 1) for t in starts.values()] + [(t, -1) for t in ends.values()])
    level, peak = 0, 0
    for _, step in edges:  # at equal times an end sorts first (-1 < 1)
        level += step
        peak = max(peak, level)
    assert peak <= cap, edges
    assert peak == cap  # the nodes used the cap, not less


def test_hangup_and_dtmf_sent_to_any_node_reach_the_call_s_owner(
    tmp_path: Path, stack: Stack, pg_server: Any, redis_server: Any
) -> None:
    """Item 6 end to end: a live, bridged call owned by one node; DTMF and hangup posted
    to another node's API are forwarded on the bus, carried out by the owner (digits on
    the carrier's wire, BYE to the carrier) and answered 200 with the call's status."""
    from tests.rtp import TsharkCapture, digits_of, rtp_events

    carrier = stack.sipp("uas_answer_wait_bye.xml")
    with TsharkCapture(carrier.media_port, stack.tmp / "carrier.pcap") as cap:
        nodes = _nodes(tmp_path, stack, pg_server, redis_server, carrier)
        sid = nodes[0].trigger(to_number="+12125550190")
        nodes[0].wait_event(sid, "agent.answered", timeout=20)
        owner = nodes[0].status(sid)["owner_node"]
        other = next(n for i, n in enumerate(nodes) if f"node{i}" != owner)
        r = other.client.post(
            f"/v1/outbound-calling/{sid}/dtmf",
            json={"digits": "5#", "duration_ms": 160, "gap_ms": 100},
        )
        assert r.status_code == 200, r.text
        other.wait_event(sid, "dtmf.sent")
        r = other.client.post(f"/v1/outbound-calling/{sid}/hangup")
        assert r.status_code == 200, r.text
        final = other.wait_terminal(sid)
    assert final["status"] in ("success", "failure") and final["owner_node"] == owner, final
    _wait(lambda: bool(carrier.received("BYE")), 10, "the owner's BYE at the carrier")
    got = digits_of(rtp_events(cap.path, carrier.media_port))
    assert [d for d, _ in got] == ["5", "#"], got
