"""Hold on request, end to end: a real `sipbridge run`, a SIPp carrier playing hold music
then a person, and a SIPp agent that holds the bridge (re-INVITE a=sendonly / a=inactive,
a control INFO, or the REST ``/hold``). Asserts what the agent sees on the wire: the
answer to its hold (RFC 3264 8.4), the bridge's re-INVITE back to sendrecv with
``X-Sipbridge-Answered-By: human``, and the person's first words in the RTP it receives
(captured with tshark, decoded); and the escape hatch (a hold longer than max_ivr_s)."""

from __future__ import annotations

from typing import Any

import pytest

from sipbridge.devtools.bridge import Bridge, Stack
from sipbridge.devtools.holdagent import HoldAudio, HoldHow, agent_scenario, music_then_person
from sipbridge.devtools.sipp import SippUas, render_scenario
from tests.holdwire import hold_wire
from tests.integration.test_agent_bridge import carrier_bridge
from tests.rtp import TsharkCapture

pytestmark = pytest.mark.integration


def _peers(stack: Stack, how: HoldHow, person: bool = True) -> tuple[SippUas, SippUas, HoldAudio]:
    audio = music_then_person(stack.tmp, person=person, music_s=5.0 if person else 20.0)
    carrier = stack.sipp(
        render_scenario("uas_answer_play.xml.in", stack.tmp / "carrier.xml", AUDIO=str(audio.wav))
    )
    agent = stack.sipp(agent_scenario(stack.tmp / "agent.xml", how, resume=person))
    return carrier, agent, audio


def _bridge(stack: Stack, carrier: SippUas, agent: SippUas, **route: Any) -> Bridge:
    return carrier_bridge(
        stack, carrier, agent, route={"detection": {"answer": False, "early_media": False}, **route}
    )


def _resume_invite(agent: SippUas) -> Any:
    """The bridge's re-INVITE to the agent, saying a person answered."""
    return agent.wait_for(
        lambda m: (
            m.direction == "received"
            and m.is_request
            and m.method == "INVITE"
            and m.header("X-Sipbridge-Answered-By") == "human"
        ),
        20,
    )


def _events(bridge: Bridge, sid: str) -> dict[str, dict[str, Any]]:
    return {e["kind"]: e["data"] for e in bridge.status(sid)["events"]}


def _check_resumed(bridge: Bridge, sid: str, agent: SippUas, how: str) -> dict[str, Any]:
    inv = _resume_invite(agent)
    assert inv.header("X-Sipbridge-Answered-By") == "human"
    assert "a=sendrecv" in inv.body and "a=sendonly" not in inv.body
    bridge.wait_event(sid, "agent.hold.caught_up", timeout=20)
    ev = _events(bridge, sid)
    assert ev["agent.hold.holding"]["via"] == how
    resumed = ev["agent.hold.resumed"]
    assert resumed["via"] == "person" and resumed["buffered_ms"] >= 600, resumed
    assert bridge.status(sid)["answered_by"] == "human"
    return ev


@pytest.mark.parametrize("how", ["sendonly", "info"])
def test_agent_hold_resumes_with_the_person_first_words(stack: Stack, how: HoldHow) -> None:
    carrier, agent, audio = _peers(stack, how)
    bpf = f"port {agent.media_port} or port {carrier.media_port}"
    with TsharkCapture(agent.media_port, stack.tmp / "rtp.pcap", bpf=bpf) as cap:
        bridge = _bridge(stack, carrier, agent)
        sid = bridge.trigger(to_number="+12125550171")
        bridge.wait_event(sid, "agent.hold.holding", timeout=10)
        if how == "sendonly":
            # RFC 3264 8.4: a sendonly offer is answered recvonly
            ok = agent.wait_for(
                lambda m: m.direction == "received" and m.status == 200 and "a=recvonly" in m.body
            )
            assert "a=sendonly" not in ok.body
        else:
            agent.wait_for(lambda m: m.direction == "received" and m.status == 200)
        _check_resumed(bridge, sid, agent, "reinvite" if how == "sendonly" else "info")
        bridge.client.post(f"/v1/outbound-calling/{sid}/hangup")
        assert bridge.wait_terminal(sid)["status"] == "success"
    wire = hold_wire(cap.path, carrier.media_port, agent.media_port, audio)
    # the person's first 200 ms reached the agent (sample for sample on an idle machine;
    # under CPU load pjmedia's jitter buffer may conceal a few ms: compare the envelopes)
    assert wire.envelope > 0.9, wire


def test_rest_hold_and_its_errors(stack: Stack) -> None:
    carrier, agent, _ = _peers(stack, "api")
    bridge = _bridge(stack, carrier, agent)
    unknown = "OUT-00000000-0000-4000-8000-000000000000"
    r = bridge.client.post(f"/v1/outbound-calling/{unknown}/hold")
    assert r.status_code == 404 and "not found" in r.json()["error"]
    assert (
        bridge.client.post(
            f"/v1/outbound-calling/{unknown}/hold", headers={"X-PolyAi-Auth-Token": "wrong"}
        ).status_code
        == 401
    )
    sid = bridge.trigger(to_number="+12125550172")
    bridge.wait_event(sid, "agent.answered", timeout=10)
    r = bridge.client.post(f"/v1/outbound-calling/{sid}/hold")
    assert r.status_code == 200, r.text
    bridge.wait_event(sid, "agent.hold.holding", timeout=10)
    again = bridge.client.post(f"/v1/outbound-calling/{sid}/hold")
    assert again.status_code == 409 and "on hold already" in again.json()["error"]
    _check_resumed(bridge, sid, agent, "api")
    bridge.client.post(f"/v1/outbound-calling/{sid}/hangup")
    bridge.wait_terminal(sid)
    r = bridge.client.post(f"/v1/outbound-calling/{sid}/hold")
    assert r.status_code == 409 and "not bridged" in r.json()["error"], r.text


def test_hold_longer_than_the_limit_ends_as_retryable_failure(stack: Stack) -> None:
    carrier, agent, _ = _peers(stack, "inactive", person=False)
    retry = {"max_attempts": 2, "retry_on": ["ivr_timeout"], "base_s": 600, "jitter": 0}
    bridge = _bridge(stack, carrier, agent, retry=retry)
    sid = bridge.trigger(to_number="+12125550173", ivr={"max_ivr_s": 3})
    bridge.wait_event(sid, "agent.hold.holding", timeout=10)
    # the failure is retryable: the call goes back to the queue for its next attempt
    body = bridge.wait_status(sid, lambda b: b["status"] == "queued" and b["attempts"] == 1, 20)
    assert body["reason"].startswith("IVR/hold time limit exceeded; attempt 2 of 2"), body
    (hist,) = body["attempt_history"]
    assert (hist["result"], hist["reason"]) == ("failure", "IVR/hold time limit exceeded")
    # the agent was never resumed, and got the bridge's BYE
    agent.wait_for(lambda m: m.direction == "received" and m.is_request and m.method == "BYE")
    assert [m.header("X-Sipbridge-Answered-By") for m in agent.received("INVITE")] == ["unknown"]
    bridge.client.post(f"/v1/outbound-calling/{sid}/hangup")
