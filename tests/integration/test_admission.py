"""Admission control against real SIPp carriers, through the API of a real `sipbridge run`:
a node at its ``max_analysed_calls`` refuses triggers (503 + Retry-After naming why),
reports it on /readyz, leaves a queued call undialled, and dials it by itself once the
live call ends."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sipbridge.devtools.bridge import Stack, bridge_config
from tests.integration.test_api_calls import _worker_pids
from tests.integration.test_scheduling import invite_times

pytestmark = pytest.mark.integration

SID = {"X-PolyAI-Call-SID": "{call_sid}"}


def nice_of(pid: int) -> int:
    """A process's nice value: field 19 of /proc/PID/stat (after the parenthesised name)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


def test_full_node_refuses_then_resumes_by_itself(tmp_path: Path, stack: Stack) -> None:
    busy = stack.sipp("uas_busy.xml")  # call B: busy, retried 1 s later
    live = stack.sipp("uas_answer_wait_bye.xml")  # call A: answered and held
    cfg = bridge_config(
        tmp_path,
        trunks=[
            {"name": "busy", "address": busy.uri_hostport, "caller_id": "+14155550100"},
            {"name": "live", "address": live.uri_hostport, "caller_id": "+14155550100"},
        ],
        routes=[
            {
                "prefix": "+1415",
                "trunk": "busy",
                "retry": {"max_attempts": 2, "retry_on": ["busy"], "base_s": 1.0, "jitter": 0},
            },
            {"prefix": "+1", "trunk": "live"},
        ],
        # only the count: CPU and loop lag on a shared test machine are not ours to force
        admission={
            "max_analysed_calls": 1,
            "max_cpu_busy": None,
            "max_loop_lag_ms": None,
            "retry_after_s": 3,
            # raising nice needs no privilege: the supervisor sets it, the workers inherit it;
            # then the supervisor takes its own value
            "process_nice": 3,
            "supervisor_nice": 4,
        },
    )
    bridge = stack.bridge(cfg)
    # B: busy on its first attempt, queued again for a retry 1 s later
    b = bridge.trigger(to_number="+14155550123")
    queued = bridge.wait_status(b, lambda s: s["status"] == "queued" and s["attempts"] == 1)
    # A: answered and held, the node is full (1/1) before B's retry is due
    a = bridge.trigger(to_number="+12125550123")
    bridge.wait_event(a, "carrier.answered")
    assert queued["next_attempt_at"], queued
    workers = _worker_pids(bridge.proc.pid)
    assert workers and {nice_of(p) for p in workers} == {3}
    assert nice_of(bridge.proc.pid) == 4

    r = bridge.client.post("/v1/outbound-calling/trigger", json={"to_number": "+12125550124"})
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"] == "3"
    assert r.json()["error"] == "node at capacity: analysed calls 1/1"
    ready = bridge.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["load"] == "node at capacity: analysed calls 1/1"
    assert "load" in ready.json()["down"]

    # B's retry was due 1 s after its busy; wait past it: still queued, not dialled
    due = time.time() + 2.0
    while time.time() < due:
        s = bridge.status(b)
        assert (s["status"], s["attempts"]) == ("queued", 1), s
        time.sleep(0.1)  # watching for a dial that must not happen, bounded by `due`
    assert len(invite_times(busy)) == 1

    hung_up_at = time.time()
    assert bridge.client.post(f"/v1/outbound-calling/{a}/hangup").status_code == 200
    bridge.wait_terminal(a)
    done = bridge.wait_terminal(b, timeout=10)
    assert done["attempts"] == 2, done
    times = invite_times(busy)
    assert len(times) == 2 and times[1] >= hung_up_at - 0.05, (times, hung_up_at)
    assert bridge.client.get("/readyz").status_code == 200
    metrics = bridge.client.get("/metrics").text
    assert 'sipbridge_admission_refused_total{reason="calls"} 1.0' in metrics
