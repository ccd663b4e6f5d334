"""Scheduling, carrier routing and retries against real SIPp carriers, through the API of a
real `sipbridge run` process: failover between trunks, busy retried with backoff, a CPS cap
counted at the carrier, and a restart with queued calls."""

from __future__ import annotations

import itertools
import re
import threading
from datetime import datetime
from pathlib import Path

import pytest

from sipbridge.devtools.bridge import Stack, bridge_config
from sipbridge.devtools.sipp import SippUas

pytestmark = pytest.mark.integration

_LOG_RE = re.compile(
    r"-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\s*\n\w+ message received[^\n]*\n\s*\n"
    r"INVITE "
)


def invite_times(sipp: SippUas) -> list[float]:
    """When SIPp received each INVITE, from the timestamps of its message log."""
    text = sipp.message_file.read_text(errors="replace")
    return sorted(
        datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        for m in _LOG_RE.finditer(text)
    )


def test_503_on_first_trunk_fails_over_to_second(tmp_path: Path, stack: Stack) -> None:
    a = stack.sipp("uas_unavailable.xml")
    b = stack.sipp("uas_answer_then_bye.xml")
    cfg = bridge_config(
        tmp_path,
        trunks=[
            {
                "name": "primary",
                "address": a.uri_hostport,
                "caller_id": "+14155550100",
                "header_templates": {"X-PolyAI-Call-SID": "{call_sid}"},
            },
            {
                "name": "backup",
                "address": b.uri_hostport,
                "caller_id": "+14155550100",
                "header_templates": {"X-PolyAI-Call-SID": "{call_sid}"},
            },
        ],
        routes=[
            {
                "prefix": "+1",
                "trunks": [{"name": "primary", "priority": 0}, {"name": "backup", "priority": 1}],
            }
        ],
    )
    bridge = stack.bridge(cfg)
    sid = bridge.trigger(to_number="+12125550123")
    body = bridge.wait_terminal(sid)
    assert (body["status"], body["trunk"], body["attempts"]) == ("success", "backup", 1), body
    assert body["attempt_history"][0]["trunks"] == ["primary", "backup"]
    failover = [e for e in body["events"] if e["kind"] == "failover"]
    assert len(failover) == 1 and failover[0]["data"]["sip_status"] == 503
    # each carrier saw exactly one INVITE for this call, the same Request-URI user
    (inv_a,) = [m for m in a.received("INVITE") if m.header("X-PolyAI-Call-SID") == sid]
    (inv_b,) = [m for m in b.received("INVITE") if m.header("X-PolyAI-Call-SID") == sid]
    assert inv_a.request_uri.startswith("sip:+12125550123@")
    assert inv_b.request_uri == f"sip:+12125550123@{b.uri_hostport}"
    assert inv_a.call_id != inv_b.call_id


def test_busy_retried_with_backoff_until_answered(tmp_path: Path, stack: Stack) -> None:
    carrier = stack.sipp("uas_busy_then_answer.xml")
    cfg = bridge_config(
        tmp_path,
        trunks=[{"name": "t", "address": carrier.uri_hostport, "caller_id": "+14155550100"}],
        routes=[
            {
                "prefix": "+1",
                "trunk": "t",
                "retry": {
                    "max_attempts": 4,
                    "retry_on": ["busy"],
                    "base_s": 1.0,
                    "factor": 2.0,
                    "jitter": 0.0,
                },
            }
        ],
    )
    bridge = stack.bridge(cfg)
    sid = bridge.trigger(to_number="+12125550123")
    retrying = bridge.wait_status(sid, lambda b: b["status"] == "queued" and b["attempts"] == 1)
    assert retrying["reason"].startswith("busy; attempt 2 of 4 at"), retrying
    assert retrying["next_attempt_at"]
    body = bridge.wait_terminal(sid, timeout=20)
    assert (body["status"], body["attempts"]) == ("success", 3), body
    assert [h["reason"] for h in body["attempt_history"]] == ["busy", "busy", ""]
    times = invite_times(carrier)
    assert len(times) == 3
    gaps = [t1 - t0 for t0, t1 in itertools.pairwise(times)]
    # backoff 1 s then 2 s (no jitter); the busy answer itself takes a few ms
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0, gaps
    assert [e["data"]["to"] for e in body["events"] if e["kind"] == "status"] == [
        "queued",
        "calling",
        "queued",
        "calling",
        "queued",
        "calling",
        "success",
    ]


def test_cps_cap_holds_when_50_calls_arrive_at_once(tmp_path: Path, stack: Stack) -> None:
    cps = 10.0
    carrier = stack.sipp("uas_busy.xml")
    cfg = bridge_config(
        tmp_path,
        trunks=[
            {
                "name": "t",
                "address": carrier.uri_hostport,
                "caller_id": "+14155550100",
                "cps": cps,
                "cps_burst": 1,
            }
        ],
        routes=[{"prefix": "+1", "trunk": "t"}],
        limits={"api_rate_per_s": 1000, "api_burst": 1000},
    )
    bridge = stack.bridge(cfg)
    sids: list[str] = []
    lock = threading.Lock()

    def fire(i: int) -> None:
        sid = bridge.trigger(to_number=f"+1212555{3000 + i:04d}")
        with lock:
            sids.append(sid)

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(sids)) == 50
    finals = [bridge.wait_terminal(s, timeout=30) for s in sids]
    assert all((f["status"], f["reason"]) == ("failure", "busy") for f in finals)
    times = invite_times(carrier)
    assert len(times) == 50  # every call dialled exactly once
    # in any window of length T at the carrier: at most burst + cps*T INVITEs. Timestamps
    # are taken by SIPp on arrival: on a loaded 2-core machine one INVITE can be stamped
    # late and the next on time, compressing a gap; allow 50 ms of stamping jitter at
    # each end of a window. (The scheduler's own dial times are checked exactly, without
    # slack, by the property test in tests/unit/calls/test_dispatch.py.)
    slack_s = 0.1
    for i in range(len(times)):
        for j in range(i, len(times)):
            assert j - i + 1 <= 1 + cps * (times[j] - times[i] + slack_s), (i, j, times)
    span = times[-1] - times[0]
    assert span >= (50 - 1) / cps - slack_s


def test_restart_keeps_queued_calls_and_marks_in_flight(tmp_path: Path, stack: Stack) -> None:
    carrier = stack.sipp("uas_answer_wait_bye.xml")
    cfg = bridge_config(
        tmp_path,
        trunks=[
            {
                "name": "t",
                "address": carrier.uri_hostport,
                "caller_id": "+14155550100",
                "max_concurrent": 1,
            }
        ],
        routes=[{"prefix": "+1", "trunk": "t"}],
    )
    bridge = stack.bridge(cfg)
    first = bridge.trigger(to_number="+12125550100")
    bridge.wait_event(first, "carrier.answered")
    queued = [bridge.trigger(to_number=f"+121255501{i:02d}") for i in (1, 2)]
    assert all(bridge.status(s)["status"] == "queued" for s in queued)
    bridge.stop(sig_kill=True)  # a crash: no clean shutdown

    bridge2 = stack.bridge(cfg)
    body = bridge2.status(first)
    assert (body["status"], body["reason"]) == ("failure", "bridge restarted"), body
    for sid in queued:
        bridge2.wait_event(sid, "carrier.answered")
        assert bridge2.client.post(f"/v1/outbound-calling/{sid}/hangup").status_code == 200
        assert bridge2.wait_terminal(sid)["status"] == "success"
    # nothing was dialled twice: one INVITE per call at the carrier
    per_call: dict[str, int] = {}
    for m in carrier.received("INVITE"):
        per_call[m.call_id] = per_call.get(m.call_id, 0) + 1
    assert len(per_call) == 3 and set(per_call.values()) == {1}
    assert bridge2.stop() == 0


def test_idempotent_trigger_places_one_call(tmp_path: Path, stack: Stack) -> None:
    carrier = stack.sipp("uas_busy.xml")
    cfg = bridge_config(
        tmp_path,
        trunks=[{"name": "t", "address": carrier.uri_hostport, "caller_id": "+14155550100"}],
        routes=[{"prefix": "+1", "trunk": "t"}],
        limits={"api_rate_per_s": 1, "api_burst": 3},
    )
    bridge = stack.bridge(cfg)
    a = bridge.trigger(to_number="+12125550123", idempotency_key="order-77")
    b = bridge.trigger(to_number="+12125550123", idempotency_key="order-77")
    assert a == b
    bridge.wait_terminal(a)
    assert len(carrier.received("INVITE")) == 1
    # the API rate limit: burst of 3 used up -> 429 with Retry-After
    r = bridge.client.post("/v1/outbound-calling/trigger", json={"to_number": "+12125550124"})
    r2 = bridge.client.post("/v1/outbound-calling/trigger", json={"to_number": "+12125550125"})
    limited = [x for x in (r, r2) if x.status_code == 429]
    assert limited and int(limited[0].headers["Retry-After"]) >= 1
