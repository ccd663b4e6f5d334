"""A call's legs end together and its outcome says what happened, against real processes:
a `sipbridge run` with SIPp carriers and SIPp agents on loopback. The races between the
carrier's end and the agent leg (BYE before ACK, during the agent's ringing or early
media, agent refusal mid-IVR), a carrier answering with a codec we never offered, no RTP
after answer (media timeout), a hold and an RFC 4028 session refresh, and a start-up
over poisoned stored records."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from sipbridge.devtools.bridge import Bridge, Stack, bridge_config, sip_section
from sipbridge.devtools.sipp import SipMessage, SippUas, render_scenario
from sipbridge.records import CallStatus
from sipbridge.store import CallRecord, SQLiteStore
from tests.integration.harness import tone_wav
from tests.integration.test_agent_bridge import _got, _invite, carrier_bridge

pytestmark = pytest.mark.integration

NOT_CONNECTED = "hung up before the agent was connected"


def _agent_invites(agent: SippUas, sid: str) -> list[Any]:
    return [m for m in agent.received("INVITE") if m.header("X-Sipbridge-Call-SID") == sid]


def _all_legs_ended(bridge: Bridge, sid: str, timeout: float = 10.0) -> dict[str, Any]:
    """Wait until every leg of the call has ended (the status body's ``legs``)."""
    return bridge.wait_status(
        sid,
        lambda b: (
            b["status"] in ("success", "failure")
            and all("ended_at" in leg for leg in b["legs"].values())
        ),
        timeout,
    )


def _agent_ended_on_the_wire(agent: SippUas, sid: str) -> None:
    """Every agent INVITE of the call got its CANCEL or BYE (or was never sent)."""
    for inv in _agent_invites(agent, sid):

        def ends(m: SipMessage, cid: str = inv.call_id) -> bool:
            return (
                m.direction == "received"
                and m.is_request
                and m.method in ("CANCEL", "BYE")
                and m.call_id == cid
            )

        agent.wait_for(ends, 10)


def test_carrier_bye_before_ack_leaves_no_agent_leg(stack: Stack) -> None:
    """The carrier answers and hangs up at once: the agent leg is never left up (it is not
    dialled, or it gets CANCEL/BYE), and the call is no success. Three calls: the race
    between the answer reaching the supervisor and the BYE reaching the worker."""
    carrier = stack.sipp("uas_answer_bye_before_ack.xml", ["-default_behaviors", "all,-abortunexp"])
    agent = stack.sipp("uas_answer_wait_bye.xml")
    bridge = carrier_bridge(stack, carrier, agent)
    for i in range(3):
        sid = bridge.trigger(to_number=f"+1212555020{i}")
        body = _all_legs_ended(bridge, sid)
        assert (body["status"], body["reason"]) == ("failure", NOT_CONNECTED), body
        _agent_ended_on_the_wire(agent, sid)


@pytest.mark.parametrize(
    "agent_scenario", ["uas_ring_no_answer.xml", "uas_early_media_no_answer.xml"]
)
def test_carrier_bye_while_agent_rings_cancels_the_agent(stack: Stack, agent_scenario: str) -> None:
    carrier = stack.sipp("uas_answer_then_bye.xml")  # BYE 500 ms after the answer
    agent = stack.sipp(agent_scenario)  # 180 (or 183 with SDP), never answers
    bridge = carrier_bridge(stack, carrier, agent)
    sid = bridge.trigger(to_number="+12125550210")
    inv = _invite(agent)
    _got(agent, "CANCEL", inv.call_id)
    body = _all_legs_ended(bridge, sid)
    assert (body["status"], body["reason"]) == ("failure", NOT_CONNECTED), body
    assert [e["kind"] for e in body["events"]].count("agent.ended") == 1


def test_codec_refused_after_answer_is_a_media_failure(stack: Stack) -> None:
    carrier = stack.sipp("uas_answer_g729.xml")  # answers with G.729 only
    agent = stack.sipp("uas_answer_wait_bye.xml")
    bridge = carrier_bridge(stack, carrier, agent)
    sid = bridge.trigger(to_number="+12125550220")
    inv = _invite(carrier)
    _got(carrier, "BYE", inv.call_id)
    body = _all_legs_ended(bridge, sid)
    assert (body["status"], body["reason"]) == ("failure", "media negotiation failed"), body
    assert "answered G729/8000" in body["detail"] and "PCMU/8000" in body["detail"], body
    _agent_ended_on_the_wire(agent, sid)


def test_agent_refusal_mid_ivr_hangs_up_the_carrier(stack: Stack) -> None:
    carrier = stack.sipp("uas_answer_wait_bye.xml")
    agent = stack.sipp("uas_unavailable.xml")  # 503
    bridge = carrier_bridge(
        stack, carrier, agent, route={"ivr": {"send_digits": "1w2", "send_digits_delay_s": 0.2}}
    )
    sid = bridge.trigger(to_number="+12125550230")
    cinv = _invite(carrier)
    _got(carrier, "BYE", cinv.call_id)
    body = _all_legs_ended(bridge, sid)
    assert (body["status"], body["reason"], body["detail"]) == (
        "failure",
        "agent leg failed",
        "SIP 503 Service Unavailable",
    ), body
    kinds = [e["kind"] for e in body["events"]]
    assert kinds.index("dtmf.sent") < kinds.index("agent.dial"), kinds


def _streaming_agent(stack: Stack) -> SippUas:
    """An agent that answers and sends RTP (a tone, looped) until the bridge's BYE."""
    wav = tone_wav(stack.tmp / "agent.wav", 600, 2)
    return stack.sipp(
        render_scenario("uas_answer_stream.xml.in", stack.tmp / "agent.xml", AUDIO=str(wav))
    )


def test_no_rtp_after_answer_ends_both_legs_with_media_timeout(stack: Stack) -> None:
    carrier = stack.sipp("uas_answer_wait_bye.xml")  # answers, never sends RTP
    agent = _streaming_agent(stack)
    bridge = carrier_bridge(
        stack,
        carrier,
        agent,
        sip=sip_section(workers=1, media_timeout_s=2),
    )
    sid = bridge.trigger(to_number="+12125550240")
    answered = bridge.wait_event(sid, "carrier.answered")
    t_answer = next(e for e in answered["events"] if e["kind"] == "carrier.answered")["ts"]
    cinv = _invite(carrier)
    ainv = _invite(agent)
    _got(carrier, "BYE", cinv.call_id)
    _got(agent, "BYE", ainv.call_id)
    body = _all_legs_ended(bridge, sid)
    assert (body["status"], body["reason"]) == ("failure", "media timeout"), body
    assert "no RTP" in body["detail"], body
    ended = next(e for e in body["events"] if e["kind"] == "carrier.ended")["ts"]
    # 2 s of silence, noticed within 1.25 x media_timeout_s (+ loop latency)
    took = _seconds(ended) - _seconds(t_answer)
    assert 1.9 <= took <= 4.0, took


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_hold_is_not_a_media_timeout_and_session_refresh_is_answered(stack: Stack) -> None:
    """The carrier answers without RTP, then holds (re-INVITE a=sendonly with
    Session-Expires) for 5 s, then resumes without RTP: the hold outlives the 2 s media
    timeout, the refresh gets 200 with the session timer, the resumed silence ends it."""
    scen = render_scenario("uas_answer_hold_resume.xml.in", stack.tmp / "hold.xml", HOLD_MS="5000")
    carrier = stack.sipp(scen)
    agent = _streaming_agent(stack)
    bridge = carrier_bridge(
        stack,
        carrier,
        agent,
        sip=sip_section(workers=1, media_timeout_s=2),
    )
    sid = bridge.trigger(to_number="+12125550250")
    ok = carrier.wait_for(
        lambda m: (
            m.direction == "received" and m.status == 200 and (m.header("CSeq") or "") == "1 INVITE"
        ),
        10,
    )
    assert "sendonly" not in ok.body and ("recvonly" in ok.body or "inactive" in ok.body)
    assert (ok.header("Session-Expires") or "").startswith("90"), ok.header_dict
    held_at = time.monotonic()
    while time.monotonic() - held_at < 4.0:  # twice the media timeout, on hold
        assert bridge.status(sid)["status"] == "calling"
        time.sleep(0.25)  # sampling the status while nothing should happen
    carrier.wait_for(
        lambda m: (
            m.direction == "received" and m.status == 200 and (m.header("CSeq") or "") == "2 INVITE"
        ),
        10,
    )
    resumed_at = time.monotonic()
    cinv = _invite(carrier)
    _got(carrier, "BYE", cinv.call_id, timeout=10)
    assert time.monotonic() - resumed_at < 5.0
    body = _all_legs_ended(bridge, sid)
    assert (body["status"], body["reason"]) == ("failure", "media timeout"), body


def test_failed_session_refresh_ends_the_call(stack: Stack) -> None:
    """RFC 4028: the carrier makes us the refresher (Session-Expires: 90;refresher=uac),
    then answers our refresh at 45 s with 481. The session is over: both legs get BYE and
    the answered call ends as failure "call lost", not success. (Min-SE is 90 s in pjsip,
    so this test takes about 50 s.)"""
    carrier = stack.sipp("uas_answer_refresh_fails.xml")
    agent = _streaming_agent(stack)
    # the carrier sends no RTP: media timeout off, so only the session timer can end it
    bridge = carrier_bridge(
        stack,
        carrier,
        agent,
        sip=sip_section(workers=1, media_timeout_s=0),
    )
    sid = bridge.trigger(to_number="+12125550260")
    cinv = _invite(carrier)
    ainv = _invite(agent)
    carrier.wait_for(
        lambda m: (
            m.direction == "received"
            and m.is_request
            and m.method == "INVITE"
            and m.call_id == cinv.call_id
            and m.header("CSeq") != cinv.header("CSeq")
        ),
        60,
    )
    _got(carrier, "BYE", cinv.call_id, timeout=20)
    _got(agent, "BYE", ainv.call_id, timeout=20)
    body = _all_legs_ended(bridge, sid)
    assert (body["status"], body["reason"]) == ("failure", "call lost"), body
    assert "481" in body["detail"], body


def test_start_up_fails_poisoned_records_and_goes_on(tmp_path: Path) -> None:
    """Records a crash left behind, one with a retry policy that overflows the backoff
    and one with unparseable JSON, do not stop the bridge: each ends as failure
    "internal error", and a queued call beside them is dialled."""
    carrier = SippUas("uas_answer_then_bye_3s.xml", tmp_path).start()
    stack = Stack(tmp_path)
    stack.add(carrier, carrier.stop)
    try:
        cfg = bridge_config(
            tmp_path,
            trunks=[{"name": "c", "address": carrier.uri_hostport, "caller_id": "+14155550100"}],
            routes=[{"prefix": "+1", "trunk": "c"}],
        )
        store = SQLiteStore(cfg["store"]["path"])
        now = time.time()

        def rec(sid: str, status: CallStatus, **kw: Any) -> None:
            store.create(
                CallRecord(
                    call_sid=sid,
                    status=status,
                    to_number="+12125550260",
                    from_number="+14155550100",
                    created_at=now,
                    last_updated=now,
                    attempts=1 if status == "calling" else 0,
                    **kw,
                )
            )

        huge = (
            '{"retry": {"max_attempts": 3, "base_s": 1e308, "cap_s": 1e308, "factor": 2, '
            '"jitter": 0, "retry_on": ["bridge_error"]}}'
        )
        rec("OUT-00000000-0000-4000-8000-000000000001", "calling")
        rec("OUT-00000000-0000-4000-8000-000000000002", "calling")
        rec("OUT-00000000-0000-4000-8000-000000000003", "queued")
        store.close()
        db = sqlite3.connect(cfg["store"]["path"])
        # a retry policy out of bounds (its backoff would overflow), unparseable JSON
        db.execute("UPDATE calls SET request=? WHERE call_sid LIKE '%0001'", (huge,))
        db.execute("UPDATE calls SET legs='{not json' WHERE call_sid LIKE '%0002'")
        db.commit()
        db.close()
        bridge = stack.bridge(cfg)
        for n in ("1", "2"):
            body = bridge.wait_terminal(f"OUT-00000000-0000-4000-8000-00000000000{n}")
            assert (body["status"], body["reason"]) == ("failure", "internal error"), body
            assert body["detail"], body
        good = bridge.wait_terminal("OUT-00000000-0000-4000-8000-000000000003", timeout=20)
        assert good["status"] == "success", good
        assert "Traceback" in bridge.log()  # the exceptions are in the log
    finally:
        stack.close()
