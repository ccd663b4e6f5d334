"""Operations against a real `sipbridge run` process and SIPp carriers: metrics after a
real call, signed status callbacks retried after a 500, readiness, CDR export, and a
SIGTERM drain that lets the answered call finish, refuses triggers and keeps queued calls."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sipbridge.devtools.bridge import TOKEN_ENV, Bridge, Stack, bridge_config
from sipbridge.webhooks import verify
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.integration

SECRET = "it-webhook-secret"


def _metrics(bridge: Bridge) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(bridge.base + "/metrics", timeout=5)  # no token
    assert r.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(r.text)
        for s in fam.samples
    }


def test_metrics_callbacks_readiness_and_cdrs_after_a_real_call(
    tmp_path: Path, stack: Stack
) -> None:
    carrier = stack.sipp("uas_answer_then_bye.xml")
    rx = Receiver(fail_first=[500]).__enter__()
    stack.add(rx, rx.__exit__)
    cfg = bridge_config(
        tmp_path,
        trunks=[{"name": "t", "address": carrier.uri_hostport, "caller_id": "+14155550100"}],
        routes=[{"prefix": "+1", "trunk": "t"}],
        # the receiver is on 127.0.0.1: loopback callback targets must be allowed
        webhooks={"secret": {"value": SECRET}, "backoff_s": 0.2, "allow_cidrs": ["127.0.0.0/8"]},
    )
    bridge = stack.bridge(cfg)
    r = httpx.get(bridge.base + "/readyz", timeout=5)
    assert r.status_code == 200 and r.json()["checks"] == {"sip_pool": "ok", "store": "ok"}
    sid = bridge.trigger(to_number="+12125550123", status_callback=rx.url)
    body = bridge.wait_terminal(sid)
    assert body["status"] == "success", body

    got = rx.wait(lambda rs: [r.json()["status"] for r in rs] == ["queued", "calling", "success"])
    assert rx.requests[0].answered == 500 and rx.requests[0].json()["status"] == "queued"
    for req in got:
        assert verify(
            SECRET,
            req.headers["x-sipbridge-timestamp"],
            req.body,
            req.headers["x-sipbridge-signature"],
        )
        assert req.json()["callSid"] == sid

    s = _metrics(bridge)
    assert (
        s[
            (
                "sipbridge_calls_total",
                (("answered_by", ""), ("hint", ""), ("reason", ""), ("status", "success")),
            )
        ]
        == 1
    )
    assert s[("sipbridge_sip_responses_total", (("code", "180"), ("trunk", "t")))] == 1
    assert s[("sipbridge_sip_responses_total", (("code", "200"), ("trunk", "t")))] == 1
    pdd_n = s[("sipbridge_post_dial_delay_seconds_count", (("trunk", "t"),))]
    pdd_sum = s[("sipbridge_post_dial_delay_seconds_sum", (("trunk", "t"),))]
    assert pdd_n == 1 and 0 < pdd_sum < 2
    assert s[("sipbridge_active_calls", (("trunk", "t"),))] == 0
    assert s[("sipbridge_queued_calls", ())] == 0
    assert s[("sipbridge_sip_slots", ())] == 8
    assert (
        s[
            (
                "sipbridge_api_requests_total",
                (("code", "200"), ("method", "POST"), ("route", "/v1/outbound-calling/trigger")),
            )
        ]
        == 1
    )
    assert s[("sipbridge_webhook_deliveries_total", (("result", "delivered"),))] == 3
    assert s[("sipbridge_webhook_deliveries_total", (("result", "retried"),))] == 1

    # one CDR for the one attempt, exported while the bridge runs (WAL: readers welcome)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sipbridge",
            "cdr",
            "-c",
            str(bridge.cfg_path),
            "--since",
            "2000-01-01T00:00:00Z",
            "--format",
            "jsonl",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, **{TOKEN_ENV: "x"}),
    )
    assert out.returncode == 0, out.stderr
    (cdr,) = [json.loads(x) for x in out.stdout.splitlines()]
    (invite,) = carrier.received("INVITE")
    assert (cdr["call_sid"], cdr["attempt"], cdr["trunk"], cdr["sip_status"]) == (sid, 1, "t", 200)
    assert cdr["sip_call_ids"] == [invite.call_id]
    assert cdr["pdd_ms"] is not None and cdr["ring_at"] and cdr["answered_at"]
    assert 0.3 <= cdr["duration_s"] <= 3.0, cdr  # SIPp hangs up 500 ms after the ACK
    assert bridge.stop() == 0


def test_sigterm_drains_then_exits_and_keeps_queued_calls(tmp_path: Path, stack: Stack) -> None:
    carrier = stack.sipp("uas_answer_then_bye_3s.xml")
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
        shutdown={"grace_s": 20},
    )
    bridge = stack.bridge(cfg)
    live = bridge.trigger(to_number="+12125550100")
    bridge.wait_event(live, "carrier.answered")
    queued = bridge.trigger(to_number="+12125550101")  # the trunk's one slot is taken
    assert bridge.status(queued)["status"] == "queued"

    t_term = time.monotonic()
    bridge.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 2
    while True:  # the signal is handled asynchronously: wait for the 503
        r = bridge.client.post("/v1/outbound-calling/trigger", json={"to_number": "+12125550102"})
        if r.status_code == 503 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert r.status_code == 503 and r.headers["Retry-After"], r.text
    assert "shutting down" in r.json()["error"]
    assert httpx.get(bridge.base + "/readyz", timeout=5).status_code == 503
    assert bridge.status(live)["status"] == "calling"  # still up during the drain

    assert bridge.proc.wait(30) == 0
    elapsed = time.monotonic() - t_term
    assert elapsed < 15, elapsed  # exited when the call ended, not at the end of grace

    db = sqlite3.connect(tmp_path / "calls.db")
    rows = dict(db.execute("SELECT call_sid, status FROM calls").fetchall())
    reason = db.execute("SELECT reason FROM calls WHERE call_sid=?", (live,)).fetchone()[0]
    db.close()
    # the answered call ended by the carrier's BYE (not by us), the queued call waits
    assert (rows[live], reason) == ("success", "")
    assert rows[queued] == "queued" and len(rows) == 2
    byes = [m for m in carrier.messages() if m.method == "BYE" and m.is_request]
    assert [m.direction for m in byes] == ["sent"]  # only SIPp's BYE, none from us
    assert len(carrier.received("INVITE")) == 1

    bridge2 = stack.bridge(cfg)  # the queued call is dialled on restart
    assert bridge2.wait_terminal(queued, timeout=20)["status"] == "success"
    assert bridge2.stop() == 0


def test_sigterm_grace_over_hangs_up_with_bye(tmp_path: Path, stack: Stack) -> None:
    carrier = stack.sipp("uas_answer_wait_bye.xml")  # never hangs up itself
    cfg = bridge_config(
        tmp_path,
        trunks=[{"name": "t", "address": carrier.uri_hostport, "caller_id": "+14155550100"}],
        routes=[{"prefix": "+1", "trunk": "t"}],
        shutdown={"grace_s": 1},
    )
    bridge = stack.bridge(cfg)
    sid = bridge.trigger(to_number="+12125550100")
    bridge.wait_event(sid, "carrier.answered")
    t0 = time.monotonic()
    bridge.proc.send_signal(signal.SIGTERM)
    assert bridge.proc.wait(30) == 0
    assert time.monotonic() - t0 >= 1.0
    db = sqlite3.connect(tmp_path / "calls.db")
    status, reason = db.execute(
        "SELECT status, reason FROM calls WHERE call_sid=?", (sid,)
    ).fetchone()
    db.close()
    assert (status, reason) == ("success", "ended by bridge shutdown")
    assert [m.direction for m in carrier.messages() if m.method == "BYE" and m.is_request] == [
        "received"
    ]
