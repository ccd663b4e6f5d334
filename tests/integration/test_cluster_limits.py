"""Three bridge nodes (separate `sipbridge run` processes, each with its own HTTP, SIP and
RTP ports, on one PostgreSQL database) share one Redis for the trunks' limits. One
cluster serves the whole module (starting three nodes costs seconds): three trunks, each
to its own SIPp carrier, reached by To prefix:

* ``capped`` (+1212, busy carrier, CPS 10 burst 2): 300 calls triggered round-robin
  across the nodes; Redis is killed mid-run (the nodes stop dialling, say why on
  /readyz, keep taking triggers) and restarted empty (dialling resumes by itself). In no
  1 s window does the carrier see more than the cap plus its burst; every call is
  dialled exactly once (INVITE Call-IDs per X-PolyAI-Call-SID), by the node that owns it
  (each node has its own caller ID), and all 300 end terminal.
* ``conc`` (+1313, answer then BYE, max_concurrent 2): never more than 2 at the carrier.
* ``open`` (+1414, answers and waits): hangup and DTMF sent to a node that does not own
  the call are forwarded to its owner.

The nodes share one database, whose queue they claim from (SKIP LOCKED, epochs, per-claim
leases renewed while calls wait for CPS tokens)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sipbridge.devtools.bridge import Bridge, Stack, bridge_config
from sipbridge.devtools.sipp import SippUas
from tests.integration.test_cluster_nodes import _caller, _user, stop_together
from tests.integration.test_scheduling import invite_times
from tests.unit.test_redislimits import windows_ok

pytestmark = pytest.mark.integration

CPS, BURST = 10.0, 2
N_CALLS = 300
CONC_CAP = 2
SID_HDR = "X-PolyAI-Call-SID"


@dataclass
class Cluster:
    nodes: list[Bridge]
    busy: SippUas  # trunk "capped"
    answer: SippUas  # trunk "conc"
    held: SippUas  # trunk "open"
    redis: Any
    tmp: Path


def _readyz(node: Bridge) -> tuple[int, dict[str, Any]]:
    r = httpx.get(node.base + "/readyz", timeout=5)
    body: dict[str, Any] = r.json()
    return r.status_code, body


def _wait(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # polling other processes (SIPp's log, a node's API)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pg_server: Any) -> Iterator[Cluster]:
    from sipbridge.devtools.redisserver import RedisServer, available

    if why := available():
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("cluster")
    redis = RedisServer().start()
    try:
        with Stack(tmp) as stack:
            busy = stack.sipp("uas_busy.xml")
            answer = stack.sipp("uas_answer_then_bye.xml")
            held = stack.sipp("uas_answer_wait_bye.xml")
            dsn = pg_server.new_database()
            nodes = []
            for i in range(3):
                cfg = bridge_config(
                    tmp,
                    trunks=[
                        {
                            "name": "capped",
                            "address": busy.uri_hostport,
                            "caller_id": _caller(i),
                            "cps": CPS,
                            "cps_burst": BURST,
                            "header_templates": {SID_HDR: "{call_sid}"},
                        },
                        {
                            "name": "conc",
                            "address": answer.uri_hostport,
                            "caller_id": _caller(i),
                            "max_concurrent": CONC_CAP,
                        },
                        {"name": "open", "address": held.uri_hostport, "caller_id": _caller(i)},
                    ],
                    routes=[
                        {"prefix": "+1212", "trunk": "capped"},
                        {"prefix": "+1313", "trunk": "conc"},
                        {"prefix": "+1414", "trunk": "open"},
                    ],
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
            stop_together(stack, nodes)
            yield Cluster(nodes, busy, answer, held, redis, tmp)
    finally:
        redis.close()


def _firing(nodes: list[Bridge], sids: dict[int, tuple[Bridge, str]], prefix: str) -> Any:
    """``fire(start, count, rate)``: trigger calls ``start..start+count-1`` round-robin
    across the nodes (call i to node i mod 3, To ``prefix`` + i), ``rate`` per second
    (None: as fast as 12 clients go); their (node, callSid) go to ``sids[i]``."""
    lock = threading.Lock()

    def fire(start: int, count: int, rate: float | None = None) -> None:
        t0 = time.monotonic()

        def one(i: int) -> None:
            if rate:  # an API client's pace (a trigger storm would starve the nodes' loops)
                time.sleep(max(0.0, t0 + (i - start) / rate - time.monotonic()))
            node = nodes[i % len(nodes)]
            sid = node.trigger(to_number=f"{prefix}{i:04d}")
            with lock:
                sids[i] = (node, sid)

        with ThreadPoolExecutor(12) as ex:
            list(ex.map(one, range(start, start + count)))

    return fire


def _invites_by_sid(carrier: SippUas) -> dict[str, dict[str, tuple[float, str]]]:
    """callSid -> {INVITE Call-ID: (first seen, From user)} at the carrier (a
    retransmission has its original's Call-ID)."""
    out: dict[str, dict[str, tuple[float, str]]] = defaultdict(dict)
    for m in carrier.received("INVITE"):
        sid = m.header(SID_HDR)
        if sid and m.ts is not None:
            out[sid].setdefault(m.call_id, (m.ts, _user(m.header("From"))))
    return out


def test_300_calls_across_three_nodes_stay_under_the_cps_cap_across_a_redis_restart(
    cluster: Cluster,
) -> None:
    nodes, carrier, redis = cluster.nodes, cluster.busy, cluster.redis
    view = _readyz(nodes[0])[1]["cluster"]
    assert view["node_id"] == "node0" and view["limits"] == "cluster-wide (Redis)"
    _wait(lambda: len(_readyz(nodes[0])[1]["cluster"]["members"]) == 3, 10, "3 members")
    _wait(lambda: all(_readyz(n)[1]["cluster"]["listening"] for n in nodes), 10, "LISTEN up")
    sids: dict[int, tuple[Bridge, str]] = {}
    fire = _firing(nodes, sids, "+1212555")
    # 3x the cap: the queue grows while the nodes dial at the cap
    first = threading.Thread(target=fire, args=(0, 200, 3 * CPS))
    first.start()
    try:
        _wait(lambda: len(invite_times(carrier)) >= 60, 30, "60 INVITEs at the carrier")
        redis.stop(kill=True)
        stopped_at = time.time()
        for node in nodes:  # each node notices, stops dialling and says why
            _wait(lambda n=node: _readyz(n)[0] == 503, 10, "/readyz 503")
            _, body = _readyz(node)
            assert "redis" in body["down"], body
            assert body["checks"]["redis"].startswith("redis unreachable"), body
            assert "sipbridge_redis_up 0.0" in node.client.get("/metrics").text
        first.join()
        fire(200, N_CALLS - 200)  # triggers are still taken (and queued) while Redis is down
        assert len(sids) == N_CALLS
        n_down = len(invite_times(carrier))
        time.sleep(1.0)  # a second of outage: nothing may be dialled meanwhile (checked below)
    finally:
        first.join()
        redis.restart()  # empty, as after a crash without persistence
    restarted_at = time.time()

    # 240 calls left at 10 CPS: ~24 s; all terminal within twice that
    _wait(lambda: len(invite_times(carrier)) >= N_CALLS, 60, f"{N_CALLS} INVITEs")
    finals = {sid: node.wait_terminal(sid, timeout=30) for node, sid in sids.values()}
    assert all((f["status"], f["reason"]) == ("failure", "busy") for f in finals.values()), [
        f for f in finals.values() if (f["status"], f["reason"]) != ("failure", "busy")
    ]
    for node in nodes:
        assert _readyz(node)[0] == 200
        text = node.client.get("/metrics").text
        assert "sipbridge_redis_up 1.0" in text and "sipbridge_redis_down_seconds 0.0" in text
        errors = [ln for ln in text.splitlines() if ln.startswith("sipbridge_redis_errors_total ")]
        assert errors and float(errors[0].split()[1]) >= 1, errors

    seen = _invites_by_sid(carrier)
    assert set(seen) == set(finals)
    twice = {sid: calls for sid, calls in seen.items() if len(calls) != 1}
    assert not twice, twice  # every call dialled exactly once
    # ... by the node that owns its record (each node dials with its own caller ID)
    for sid, calls in seen.items():
        ((_, sender),) = calls.values()
        assert sender == _caller(int(finals[sid]["owner_node"][-1])), (sid, finals[sid])
    assert len({f["owner_node"] for f in finals.values()}) == 3  # all nodes dialled

    times = sorted(t for calls in seen.values() for t, _ in calls.values())
    # dialling stopped within one Redis timeout of the crash and stayed stopped
    assert not [t for t in times if stopped_at + 0.6 < t < restarted_at], (stopped_at, times)
    assert n_down < N_CALLS
    # The carrier's view (issue #13): in no 1 s window more INVITEs than the cap plus its
    # burst. (Grants are exact in Redis time, tests/unit/test_redislimits.py; between a
    # grant and the wire a loaded node adds scheduling jitter, so two INVITEs may arrive
    # closer than 1/cps, but no second holds more than cps + burst.)
    ok, worst = windows_ok(times, CPS + BURST)
    assert ok, f"{worst} INVITEs in a 1 s window: {times}"
    # and the nodes together dialled at the cap, not below it (on both sides of the outage)
    before = [t for t in times if t <= stopped_at]
    after = [t for t in times if t >= restarted_at]
    for part in (before, after):
        assert part[-1] - part[0] <= (len(part) - 1) / CPS + 1.5, part
    print(f"{N_CALLS} calls: worst 1 s window {worst} INVITEs (cap {CPS:g} + burst {BURST})")


def test_a_node_carries_out_hangup_and_dtmf_forwarded_on_the_bus(
    cluster: Cluster,
) -> None:
    """The owner side of item 6 in a real node: another node (here the test, with the same
    CommandBus) forwards a hangup and a DTMF for a call this node holds."""
    import asyncio

    from redis import asyncio as aioredis

    from sipbridge.cluster.bus import CommandBus
    from sipbridge.errors import ApiError, ForwardError

    node, redis_server = cluster.nodes[0], cluster.redis
    hour = time.gmtime().tm_hour
    closed = f"{(hour + 3) % 24:02d}:00-{(hour + 4) % 24:02d}:00"  # not open for 2 h
    sid = node.trigger(
        to_number="+14145550123",
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
                await bus.send("node0", "dtmf", sid, {"digits": "1"})
            assert e.value.status == 409 and "node node0" in e.value.message
            await bus.send("node0", "hangup", sid, {})
            with pytest.raises(ForwardError) as f:
                await bus.send("nobody", "hangup", sid, {})
            assert f.value.status == 503 and "node nobody" in f.value.message
        finally:
            await bus.stop()
            await client.aclose()

    asyncio.run(forward())
    final = node.wait_terminal(sid)
    assert (final["status"], final["reason"]) == ("failure", "canceled"), final
    assert sid not in _invites_by_sid(cluster.held)


def test_three_nodes_share_the_trunk_concurrency_cap(
    cluster: Cluster,
) -> None:
    """max_concurrent 2 on the trunk, 9 calls across 3 nodes: at the carrier (from its
    INVITE received to its BYE sent, which is inside the slot's hold) never more than 2."""
    cap, carrier = CONC_CAP, cluster.answer
    sids: dict[int, tuple[Bridge, str]] = {}
    _firing(cluster.nodes, sids, "+1313555")(0, 9)
    finals = [node.wait_terminal(sid, timeout=60) for node, sid in sids.values()]
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
    cluster: Cluster,
) -> None:
    """Item 6 end to end: a live, bridged call owned by one node; DTMF and hangup posted
    to another node's API are forwarded on the bus, carried out by the owner (digits on
    the carrier's wire, BYE to the carrier) and answered 200 with the call's status."""
    from tests.rtp import TsharkCapture, digits_of, rtp_events

    carrier, nodes = cluster.held, cluster.nodes
    with TsharkCapture(carrier.media_port, cluster.tmp / "carrier.pcap") as cap:
        sid = nodes[0].trigger(to_number="+14145550190")
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


def test_an_idempotency_key_raced_on_every_node_makes_one_call(cluster: Cluster) -> None:
    """Item 6: the same idempotency key sent at once to all three nodes (4 requests each,
    released together): every request answers 200 with the same callSid, so the
    cluster stored one call. The call waits for its calling window (nothing is dialled)."""
    nodes, n_req = cluster.nodes, 12
    hour = time.gmtime().tm_hour
    closed = f"{(hour + 3) % 24:02d}:00-{(hour + 4) % 24:02d}:00"
    key = f"race-{time.time_ns()}"
    gate = threading.Barrier(n_req)

    def one(i: int) -> str:
        gate.wait(10)
        return nodes[i % len(nodes)].trigger(
            to_number="+14145550177",
            idempotency_key=key,
            timezone="Etc/UTC",
            calling_window={"days": "daily", "hours": closed},
        )

    with ThreadPoolExecutor(n_req) as ex:
        sids = set(ex.map(one, range(n_req)))
    assert len(sids) == 1, sids
    (sid,) = sids
    for node in nodes:  # every node finds the one call by its callSid
        assert node.status(sid)["status"] == "queued"
    r = nodes[1].client.post(f"/v1/outbound-calling/{sid}/hangup")
    assert r.status_code == 200, r.text
