"""Dispositions from the agent, end to end: a real `sipbridge run`, a SIPp carrier and a
SIPp agent that hangs up with a disposition in its BYE (the configured header or an RFC
3326 Reason). Asserts what a user sees: the status (reason, ``agent_answered_by``,
``disposition``), the status callback, the CDR, the metrics, the log line for a refused
value, and a retry disposition bringing a second INVITE to the carrier after the backoff."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest

from sipbridge.devtools.bridge import Bridge, Stack
from sipbridge.devtools.sipp import SippUas, render_scenario
from tests.integration.test_agent_bridge import _got, _invite, carrier_bridge
from tests.integration.test_operations import _metrics
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.integration


def _agent(stack: Stack, *bye_headers: str, pause_ms: int = 800) -> SippUas:
    """A SIPp agent that answers, waits ``pause_ms`` and hangs up with ``bye_headers``."""
    out = render_scenario(
        "uas_answer_bye_headers.xml.in",
        stack.tmp / f"agent-{len(list(stack.tmp.glob('agent-*.xml')))}.xml",
        PAUSE_MS=str(pause_ms),
        # a harmless header keeps the line when the test sends no disposition
        BYE_HEADERS="\n      ".join(bye_headers or ("Subject: goodbye",)),
    )
    return stack.sipp(out)


def _cdrs(bridge: Bridge, sid: str) -> list[dict[str, Any]]:
    with sqlite3.connect(bridge.log_dir / "calls.db") as db:
        rows = db.execute(
            "SELECT data FROM cdrs WHERE call_sid = ? ORDER BY attempt", (sid,)
        ).fetchall()
    return [json.loads(r[0]) for r in rows]


def _dispositions(bridge: Bridge) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["disposition"], dict(labels)["source"]): v
        for (name, labels), v in _metrics(bridge).items()
        if name == "sipbridge_agent_dispositions_total"
    }


def test_header_disposition_reaches_status_callback_cdr_and_metrics(stack: Stack) -> None:
    carrier = stack.sipp("uas_answer_wait_bye.xml")
    agent = _agent(stack, 'X-Sipbridge-Disposition: not_in_service; reason="intercept message"')
    rx = Receiver().__enter__()
    stack.add(rx, rx.__exit__)
    bridge = carrier_bridge(
        stack, carrier, agent, webhooks={"backoff_s": 0.2, "allow_cidrs": ["127.0.0.0/8"]}
    )
    sid = bridge.trigger(to_number="+12125550131", status_callback=rx.url)
    _invite(agent)
    cinv = _invite(carrier)
    _got(carrier, "BYE", cinv.call_id, timeout=15)  # the agent's BYE ends the carrier leg
    body = bridge.wait_terminal(sid)
    assert (body["status"], body["reason"]) == ("failure", "number not in service (agent)"), body
    assert body["detail"] == "agent disposition not_in_service; intercept message"
    assert body["agent_answered_by"] is None  # the agent heard no one
    assert body["disposition"] == {
        "value": "not_in_service",
        "source": "header",
        "text": "intercept message",
    }
    assert body["attempt_history"][0]["kind"] == "not_in_service"
    ev = next(e for e in body["events"] if e["kind"] == "agent.disposition")
    assert ev["data"]["value"] == "not_in_service"
    # the final status callback carries the agent's view too
    got = rx.wait(lambda rs: any(r.json()["status"] == "failure" for r in rs))
    (final,) = [r for r in got if r.json()["status"] == "failure"]
    assert final.json()["disposition"]["value"] == "not_in_service"
    assert final.json()["reason"] == "number not in service (agent)"
    (cdr,) = _cdrs(bridge, sid)
    assert (cdr["result"], cdr["disposition"], cdr["agent_answered_by"]) == (
        "failure",
        "not_in_service",
        None,
    )
    assert _dispositions(bridge) == {("not_in_service", "header"): 1}


def test_reason_header_q850_unallocated_number(stack: Stack) -> None:
    carrier = stack.sipp("uas_answer_wait_bye.xml")
    agent = _agent(stack, 'Reason: Q.850;cause=1;text="Unallocated number"')
    bridge = carrier_bridge(stack, carrier, agent)
    sid = bridge.trigger(to_number="+12125550132")
    body = bridge.wait_terminal(sid)
    assert (body["status"], body["reason"]) == ("failure", "number not in service (agent)"), body
    assert body["disposition"] == {
        "value": "not_in_service",
        "source": "reason",
        "text": "Unallocated number",
        "cause": "Q.850 1",
    }
    assert "Reason Q.850 1" in body["detail"]
    assert _dispositions(bridge) == {("not_in_service", "reason"): 1}


def test_voicemail_header_sets_agent_answered_by(stack: Stack) -> None:
    carrier = stack.sipp("uas_answer_wait_bye.xml")
    agent = _agent(stack, "X-Sipbridge-Disposition: voicemail")
    bridge = carrier_bridge(stack, carrier, agent)
    sid = bridge.trigger(to_number="+12125550133")
    body = bridge.wait_terminal(sid)
    assert (body["status"], body["reason"]) == ("failure", "answered by machine (agent)"), body
    assert body["agent_answered_by"] == "machine"


def test_unknown_value_is_logged_and_the_call_ends_as_today(stack: Stack) -> None:
    carrier = stack.sipp("uas_answer_wait_bye.xml")
    agent = _agent(
        stack,
        "X-Sipbridge-Disposition: martian; retry=true",
        # a second, oversize instance (a duplicated header): refused too
        f'X-Sipbridge-Disposition: human; reason="{"x" * 300}"',
        "Reason: Q.850;cause=16",  # normal call clearing: no disposition
    )
    bridge = carrier_bridge(stack, carrier, agent)
    sid = bridge.trigger(to_number="+12125550134")
    body = bridge.wait_terminal(sid)
    assert (body["status"], body["reason"]) == ("success", "ended by agent"), body
    assert body["disposition"] is None and body["agent_answered_by"] is None
    ev = next(e for e in body["events"] if e["kind"] == "agent.disposition")
    assert ev["data"]["value"] == "invalid"
    log = bridge.log()
    assert "unknown disposition 'martian'" in log
    assert "value longer than 256 characters ignored" in log
    assert _dispositions(bridge) == {("invalid", ""): 1}


def test_no_disposition_keeps_todays_behaviour(stack: Stack) -> None:
    carrier = stack.sipp("uas_answer_wait_bye.xml")
    agent = _agent(stack)
    bridge = carrier_bridge(stack, carrier, agent)
    sid = bridge.trigger(
        to_number="+12125550135", retry={"max_attempts": 2, "base_s": 0.5, "jitter": 0}
    )
    body = bridge.wait_terminal(sid)
    assert (body["status"], body["reason"], body["attempts"]) == ("success", "ended by agent", 1)
    assert body["disposition"] is None and body["agent_answered_by"] is None
    assert not [e for e in body["events"] if e["kind"] == "agent.disposition"]
    (cdr,) = _cdrs(bridge, sid)
    assert (cdr["disposition"], cdr["agent_answered_by"]) == (None, None)
    assert _dispositions(bridge) == {}


def test_retry_disposition_dials_the_carrier_again_after_the_backoff(stack: Stack) -> None:
    carrier = stack.sipp("uas_answer_wait_bye.xml")
    agent = _agent(stack, "X-Sipbridge-Disposition: voicemail; retry=true")
    bridge = carrier_bridge(stack, carrier, agent)
    backoff_s = 2.0
    sid = bridge.trigger(
        to_number="+12125550136", retry={"max_attempts": 2, "base_s": backoff_s, "jitter": 0}
    )
    queued = bridge.wait_status(sid, lambda b: b["status"] == "queued" and b["attempts"] == 1)
    assert queued["reason"].startswith("answered by machine (agent); attempt 2 of 2 at "), queued
    assert queued["disposition"]["retry"] is True
    assert queued["next_attempt_at"] is not None
    first = _invite(carrier)
    first_bye = _got(carrier, "BYE", first.call_id)
    second = _invite(carrier, lambda m: m.call_id != first.call_id, timeout=backoff_s + 10)
    assert first_bye.ts is not None and second.ts is not None
    gap_s = second.ts - first_bye.ts
    assert backoff_s - 0.3 <= gap_s <= backoff_s + 3.0, gap_s
    # the second attempt's agent says the same: no attempt left, the call ends
    body = bridge.wait_terminal(sid, timeout=20)
    assert (body["status"], body["reason"], body["attempts"]) == (
        "failure",
        "answered by machine (agent)",
        2,
    ), body
    assert [a["kind"] for a in body["attempt_history"]] == ["machine", "machine"]
    assert [c["disposition"] for c in _cdrs(bridge, sid)] == ["voicemail", "voicemail"]
    print(f"retry disposition: second INVITE {gap_s:.2f} s after the first BYE")
