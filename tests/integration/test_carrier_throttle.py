"""Carrier pushback through a real `sipbridge run`: a SIPp carrier refuses the first two
INVITEs with "403 CPS Limit Exceeded", then answers. The call is queued again (not
failed, the attempt not counted) and the trunk's dial rate is halved per pushback: the
gaps between INVITEs on the wire grow with it. Throttling off: the 403 fails the call."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from sipbridge.devtools.bridge import Stack, bridge_config
from sipbridge.devtools.sipp import render_scenario

pytestmark = pytest.mark.integration


def _carrier(stack: Stack, status_line: str) -> Path:
    return render_scenario(
        "uas_reject_then_answer.xml.in",
        stack.tmp / "reject_then_answer.xml",
        STATUS_LINE=status_line,
    )


def _cfg(stack: Stack, address: str, throttle: bool, max_requeues: int = 10) -> dict[str, object]:
    return bridge_config(
        stack.tmp,
        trunks=[
            {
                "name": "t",
                "address": address,
                "caller_id": "+14155550100",
                "cps": 4,
                "cps_burst": 1,
                "throttle": {
                    "enabled": throttle,
                    "factor": 0.5,
                    "recover_s": 60,
                    "max_requeues": max_requeues,
                },
            }
        ],
        routes=[{"prefix": "+1", "trunk": "t"}],
    )


def test_cps_pushback_requeues_and_slows_the_trunk(stack: Stack) -> None:
    carrier = stack.sipp(_carrier(stack, "403 CPS Limit Exceeded"))
    bridge = stack.bridge(_cfg(stack, carrier.uri_hostport, throttle=True))
    sid = bridge.trigger(to_number="+12125550123")
    body = bridge.wait_terminal(sid, timeout=30)
    assert (body["status"], body["attempts"]) == ("success", 1), body
    requeued = [
        e for e in body["events"] if e["kind"] == "status" and e["data"].get("to") == "queued"
    ]
    assert len(requeued) == 3, body["events"]  # accepted, then two pushbacks
    statuses = [e["data"]["to"] for e in body["events"] if e["kind"] == "status"]
    assert statuses == ["queued", "calling", "queued", "calling", "queued", "calling", "success"], (
        statuses
    )
    invites = [
        m
        for m in carrier.messages()
        if m.direction == "received" and m.is_request and m.method == "INVITE"
    ]
    times = [m.ts for m in invites]
    assert len(times) == 3 and all(t is not None for t in times)
    gaps = [b - a for a, b in itertools.pairwise(t for t in times if t is not None)]
    # 4 cps cut to 2 (0.5 s between INVITEs), then to 1 (1 s); SIPp's log clock is ms.
    assert gaps[0] >= 0.5 - 0.02 and gaps[1] >= 1.0 - 0.02, gaps
    # the metrics: two pushbacks, the trunk dialled at 1 cps now (recover_s is 60 s)
    text = bridge.client.get("/metrics").text
    assert 'sipbridge_trunk_throttled_total{trunk="t"} 2.0' in text, text
    assert 'sipbridge_trunk_dial_rate_cps{trunk="t"} 1.0' in text, text


def test_without_throttling_the_pushback_fails_the_call(stack: Stack) -> None:
    carrier = stack.sipp(_carrier(stack, "403 CPS Limit Exceeded"))
    bridge = stack.bridge(_cfg(stack, carrier.uri_hostport, throttle=False))
    sid = bridge.trigger(to_number="+12125550123")
    body = bridge.wait_terminal(sid, timeout=20)
    assert body["status"] == "failure" and body["sip_status"] == 403, body
    text = bridge.client.get("/metrics").text  # not counted as throttling: it is off
    assert 'sipbridge_trunk_throttled_total{trunk="t"} 0.0' in text, text
    assert 'sipbridge_trunk_dial_rate_cps{trunk="t"} 4.0' in text, text


def test_requeues_per_call_are_bounded(stack: Stack) -> None:
    carrier = stack.sipp(_carrier(stack, "503 Rate Limit Exceeded"))
    bridge = stack.bridge(_cfg(stack, carrier.uri_hostport, throttle=True, max_requeues=1))
    sid = bridge.trigger(to_number="+12125550123")
    body = bridge.wait_terminal(sid, timeout=20)
    assert body["status"] == "failure" and body["sip_status"] == 503, body
    assert len(carrier.received("INVITE")) == 2  # one requeue, then the attempt ends
