"""End to end through the real HTTP API: `sipbridge run` as a subprocess (supervisor +
2 SIP worker processes), one SIPp UAS per trunk acting as the carrier, routed by number
prefix. Asserts what a user would check: the INVITE the carrier saw, statuses, reasons."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sipbridge.devtools.bridge import Bridge, bridge_config, start_bridge
from sipbridge.devtools.sipp import SippUas

pytestmark = pytest.mark.integration

# area code -> (trunk name, SIPp scenario)
CARRIERS = {
    "212": ("answer_wait", "uas_answer_wait_bye.xml"),
    "213": ("busy", "uas_busy.xml"),
    "214": ("notfound", "uas_not_found.xml"),
    "215": ("unavailable", "uas_unavailable.xml"),
    "216": ("noanswer", "uas_ring_no_answer.xml"),
    "217": ("answer_bye", "uas_answer_then_bye.xml"),
    "312": ("answer_wait2", "uas_answer_wait_bye.xml"),
}
RING_TIMEOUT_S = 2.0
MAX_DURATION_S = 6.0


def _invites_for(sipp: SippUas, sid: str) -> list[Any]:
    return [m for m in sipp.received("INVITE") if m.header("X-PolyAI-Call-SID") == sid]


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    log_dir = tmp_path_factory.mktemp("bridge")
    carriers: dict[str, SippUas] = {}
    try:
        for area, (_, scenario) in CARRIERS.items():
            carriers[area] = SippUas(scenario, log_dir).start()
        cfg = bridge_config(
            log_dir,
            trunks=[
                {
                    "name": name,
                    "address": carriers[area].uri_hostport,
                    "caller_id": "+14155550100",
                    "headers": {"X-Carrier-Account": "acct-7"},
                    "header_templates": {
                        "X-PolyAI-Call-SID": "{call_sid}",
                        "X-PolyAI-Call-ID": "{polyai_call_id}",
                    },
                }
                for area, (name, _) in CARRIERS.items()
            ],
            routes=[{"prefix": f"+1{area}", "trunk": name} for area, (name, _) in CARRIERS.items()],
            timers={"ring_timeout_s": RING_TIMEOUT_S, "max_call_duration_s": MAX_DURATION_S},
        )
        b = start_bridge(log_dir, cfg)
        b.carriers = carriers
        yield b
        rc = b.stop()
        log = b.log()
        assert rc == 0, "bridge did not exit cleanly:\n" + log[-3000:]
        assert "Assertion" not in log and "Traceback" not in log, log[-3000:]
    finally:
        for s in carriers.values():
            s.stop()


def test_answered_call_carries_headers_and_succeeds(bridge: Bridge) -> None:
    sid = bridge.trigger(
        to_number="+12175550123", metadata={"customer_id": "C-42"}, polyai_call_id="agent-call-1"
    )
    body = bridge.wait_terminal(sid)
    assert (body["status"], body["reason"]) == ("success", ""), body
    kinds = [e["kind"] for e in body["events"]]
    assert kinds[:2] == ["status", "status"]
    # the carrier's BYE ended the call; the agent leg was hung up with it
    body = bridge.wait_event(sid, "agent.ended")
    kinds = [e["kind"] for e in body["events"]]
    assert "carrier.answered" in kinds and kinds.index("carrier.answered") < kinds.index(
        "carrier.ended"
    )
    assert [e["data"]["to"] for e in body["events"] if e["kind"] == "status"] == [
        "queued",
        "calling",
        "success",
    ]
    sipp = bridge.carriers["217"]
    (invite,) = _invites_for(sipp, sid)
    assert invite.request_uri == f"sip:+12175550123@{sipp.uri_hostport}"
    assert "sip:+14155550100@" in invite.header("From")
    assert invite.header("X-PolyAI-Call-ID") == "agent-call-1"
    assert invite.header("X-Carrier-Account") == "acct-7"
    # metadata reaches a carrier only for keys its trunk opts in to (none here)
    assert invite.header("X-customer_id") is None
    assert "application/sdp" in (invite.header("Content-Type") or "")
    leg = next(iter(body["legs"].values()))
    assert leg["sip_call_id"] == invite.call_id
    # the carrier hung up: the bridge answered its BYE
    sipp.wait_for(
        lambda m: (
            m.direction == "received"
            and m.status == 200
            and m.call_id == invite.call_id
            and "BYE" in (m.header("CSeq") or "")
        )
    )
    assert (
        bridge.client.get("/v1/outbound-calling/by-polyai-call-id/agent-call-1").json()["callSid"]
        == sid
    )


@pytest.mark.parametrize(
    ("number", "reason", "sip_status", "detail"),
    [
        ("+12135550123", "busy", 486, "SIP 486 Busy Here"),
        ("+12145550123", "number not in service", 404, "SIP 404 Not Found"),
        ("+12155550123", "carrier error", 503, "SIP 503 Service Unavailable"),
    ],
)
def test_carrier_rejections_map_to_failure(
    bridge: Bridge, number: str, reason: str, sip_status: int, detail: str
) -> None:
    sid = bridge.trigger(to_number=number)
    body = bridge.wait_terminal(sid)
    assert (body["status"], body["reason"], body["sip_status"], body["detail"]) == (
        "failure",
        reason,
        sip_status,
        detail,
    ), body
    assert len(_invites_for(bridge.carriers[number[2:5]], sid)) == 1


def test_ring_timeout_cancels_and_reports_no_answer(bridge: Bridge) -> None:
    sid = bridge.trigger(to_number="+12165550123")
    body = bridge.wait_terminal(sid, timeout=RING_TIMEOUT_S + 10)
    assert (body["status"], body["reason"]) == ("failure", "no answer"), body
    sipp = bridge.carriers["216"]
    (invite,) = _invites_for(sipp, sid)
    cancel = sipp.wait_request("CANCEL", invite.call_id)
    assert cancel.request_uri == invite.request_uri  # RFC 3261 9.1


def test_api_hangup_before_answer_sends_cancel(bridge: Bridge) -> None:
    sid = bridge.trigger(to_number="+12165550124")
    bridge.wait_event(sid, "carrier.ringing")
    r = bridge.client.post(f"/v1/outbound-calling/{sid}/hangup")
    assert r.status_code == 200
    body = bridge.wait_terminal(sid)
    assert (body["status"], body["reason"]) == ("failure", "canceled"), body
    sipp = bridge.carriers["216"]
    (invite,) = _invites_for(sipp, sid)
    sipp.wait_request("CANCEL", invite.call_id)


def test_api_hangup_after_answer_sends_bye(bridge: Bridge) -> None:
    sid = bridge.trigger(to_number="+12125550123")
    bridge.wait_event(sid, "agent.answered")  # connected: a hang-up now ends a success
    assert bridge.client.post(f"/v1/outbound-calling/{sid}/hangup").status_code == 200
    body = bridge.wait_terminal(sid)
    assert (body["status"], body["reason"]) == ("success", "hung up by API"), body
    sipp = bridge.carriers["212"]
    (invite,) = _invites_for(sipp, sid)
    sipp.wait_request("BYE", invite.call_id)


def test_max_duration_sends_bye(bridge: Bridge) -> None:
    sid = bridge.trigger(to_number="+13125550123")
    answered = bridge.wait_event(sid, "carrier.answered")
    body = bridge.wait_terminal(sid, timeout=MAX_DURATION_S + 10)
    assert (body["status"], body["reason"]) == ("success", "max call duration reached"), body
    sipp = bridge.carriers["312"]
    (invite,) = _invites_for(sipp, sid)
    sipp.wait_request("BYE", invite.call_id)
    assert answered["status"] == "calling"


def test_more_calls_than_one_worker_holds(bridge: Bridge) -> None:
    """10 calls at once on 2 workers x 4 legs: a bridged call holds 2 legs (carrier and
    agent, in one worker), so 4 run together on both workers, 6 wait queued until slots
    free, and every call completes."""
    sids = [bridge.trigger(to_number=f"+1212555{1000 + i:04d}") for i in range(10)]
    deadline = time.monotonic() + 15
    while True:
        bodies = [bridge.status(s) for s in sids]
        answered = [
            b
            for b in bodies
            if any(e["kind"] == "agent.answered" for e in b["events"]) and b["status"] == "calling"
        ]
        if len(answered) == 4:
            break
        assert time.monotonic() < deadline, [b["status"] for b in bodies]
        time.sleep(0.05)
    workers = {leg["worker"] for b in answered for leg in b["legs"].values()}
    assert workers == {0, 1}
    waiting = [b for b in bodies if b["status"] == "queued"]
    assert len(waiting) == 6
    assert all(any(leg["role"] == "agent" for leg in b["legs"].values()) for b in answered)
    for b in answered:
        bridge.client.post(f"/v1/outbound-calling/{b['callSid']}/hangup")
    for b in waiting:
        bridge.wait_event(b["callSid"], "agent.answered")
        bridge.client.post(f"/v1/outbound-calling/{b['callSid']}/hangup")
    finals = [bridge.wait_terminal(s) for s in sids]
    assert [f["status"] for f in finals] == ["success"] * 10, finals


def test_unsafe_header_value_is_refused_and_never_sent(bridge: Bridge) -> None:
    before = len(bridge.carriers["217"].received("INVITE"))
    r = bridge.client.post(
        "/v1/outbound-calling/trigger",
        json={"to_number": "+12175550199", "metadata": {"note": "hi\r\nX-Injected: 1"}},
    )
    assert r.status_code == 400 and r.json()["field"] == "metadata.note", r.text
    # a good call afterwards reaches the carrier; the refused one never did
    sid = bridge.trigger(to_number="+12175550198")
    bridge.wait_terminal(sid)
    invites = bridge.carriers["217"].received("INVITE")
    assert len(invites) == before + 1
    assert all(m.header("X-Injected") is None for m in invites)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _worker_pids(bridge_pid: int) -> list[int]:
    """The bridge's SIP worker processes: children of its multiprocessing fork server."""
    for p in _children(bridge_pid):
        if b"forkserver" in Path(f"/proc/{p}/cmdline").read_bytes():
            return _children(p)
    return []


def test_worker_crash_ends_its_calls_with_a_reason(bridge: Bridge) -> None:
    sid = bridge.trigger(to_number="+12125550777")
    bridge.wait_event(sid, "carrier.answered")
    pids = _worker_pids(bridge.proc.pid)
    assert len(pids) == 2, pids
    for pid in pids:  # both workers: whichever holds the call dies
        os.kill(pid, 9)
    body = bridge.wait_terminal(sid)
    assert (body["status"], body["reason"]) == ("failure", "SIP worker failed"), body
    assert "exited" in body["detail"], body
    # the pool restarted its workers: new calls still go through
    sid2 = bridge.trigger(to_number="+12175550777")
    assert bridge.wait_terminal(sid2, timeout=30)["status"] == "success"
    assert len(_worker_pids(bridge.proc.pid)) == 2
