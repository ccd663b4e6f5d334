"""The bridge to the agent, end to end: a real `sipbridge run`, a SIPp carrier and a SIPp
agent on loopback. Asserts the agent INVITE's mapping headers, BYE propagation both ways,
audio crossing the bridge (captured with tshark and decoded), DTMF on the carrier's wire,
agent failures, and leaving a voicemail message after the beep."""

from __future__ import annotations

import json
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sipbridge.devtools.bridge import Bridge, Stack, bridge_config
from sipbridge.devtools.sipp import SippUas, render_scenario, ulaw_wav
from tests.integration.harness import tone_wav
from tests.rtp import TsharkCapture, digits_of, rtp_events, rtp_packets, tone_ratio, ulaw_decode

pytestmark = pytest.mark.integration


def carrier_bridge(
    stack: Stack, carrier: SippUas, agent: SippUas | None, **sections: Any
) -> Bridge:
    """A bridge whose one trunk is ``carrier`` and whose agent is ``agent``."""
    if agent is not None:
        sections["agent"] = {"uri": f"sip:agent@{agent.uri_hostport}"}
    cfg = bridge_config(
        stack.tmp,
        trunks=[
            {
                "name": "carrier",
                "address": carrier.uri_hostport,
                "caller_id": "+14155550100",
                "header_templates": {"X-PolyAI-Call-SID": "{call_sid}"},
            }
        ],
        routes=[{"prefix": "+1", "trunk": "carrier", **sections.pop("route", {})}],
        **sections,
    )
    return stack.bridge(cfg)


def _invite(
    sipp: SippUas, pred: Callable[[Any], bool] = lambda m: True, timeout: float = 10
) -> Any:
    return sipp.wait_for(
        lambda m: m.direction == "received" and m.is_request and m.method == "INVITE" and pred(m),
        timeout,
    )


def _got(sipp: SippUas, method: str, call_id: str, timeout: float = 10) -> Any:
    return sipp.wait_request(method, call_id, timeout)


def _playing(stack: Stack, audio: Path, tmp_path: Path, stem: str) -> SippUas:
    """A carrier that answers and plays ``audio`` (a corpus WAV, sent as G.711 µ-law)."""
    return stack.sipp(
        render_scenario(
            "uas_answer_play.xml.in",
            tmp_path / f"{stem}.xml",
            AUDIO=str(ulaw_wav(audio, tmp_path / f"{stem}.wav")),
        )
    )


def test_agent_invite_carries_mapping_and_carrier_bye_reaches_agent(stack: Stack) -> None:
    carrier = stack.sipp("uas_answer_then_bye_3s.xml")
    agent = stack.sipp("uas_answer_wait_bye.xml")
    bridge = carrier_bridge(stack, carrier, agent)
    sid = bridge.trigger(
        to_number="+12125550123", polyai_call_id="agent-42", metadata={"customer": "C-9"}
    )
    inv = _invite(agent)
    assert inv.header("X-Sipbridge-Call-SID") == sid
    assert inv.header("X-PolyAI-Call-SID") == sid
    assert inv.header("X-PolyAI-Call-ID") == "agent-42"
    assert inv.header("X-Sipbridge-Callee") == "+12125550123"
    assert inv.header("X-Sipbridge-Caller") == "+14155550100"
    assert inv.header("X-customer") == "C-9"
    assert inv.header("X-Sipbridge-Answered-By") is not None
    assert "sip:+12125550123@" in inv.header("From")
    # the carrier hangs up after 3 s: the agent gets a BYE
    _got(agent, "BYE", inv.call_id, timeout=15)
    body = bridge.wait_terminal(sid)
    assert (body["status"], body["reason"]) == ("success", ""), body
    roles = {leg["role"]: leg for leg in body["legs"].values()}
    assert roles["agent"]["sip_call_id"] == inv.call_id
    carrier_inv = _invite(carrier)
    assert roles["carrier"]["sip_call_id"] == carrier_inv.call_id
    kinds = [e["kind"] for e in body["events"]]
    assert (
        kinds.index("carrier.answered") < kinds.index("agent.dial") < kinds.index("agent.answered")
    )


def test_agent_hangup_ends_the_carrier_leg(stack: Stack) -> None:
    carrier = stack.sipp("uas_answer_wait_bye.xml")
    agent = stack.sipp("uas_answer_then_bye_3s.xml")
    bridge = carrier_bridge(stack, carrier, agent)
    sid = bridge.trigger(to_number="+12125550124")
    cinv = _invite(carrier)
    _got(carrier, "BYE", cinv.call_id, timeout=15)
    body = bridge.wait_terminal(sid)
    assert (body["status"], body["reason"]) == ("success", "ended by agent"), body


def test_agent_failure_ends_the_call(stack: Stack) -> None:
    carrier = stack.sipp("uas_answer_wait_bye.xml")
    agent = stack.sipp("uas_unavailable.xml")
    bridge = carrier_bridge(stack, carrier, agent)
    sid = bridge.trigger(to_number="+12125550125")
    cinv = _invite(carrier)
    _got(carrier, "BYE", cinv.call_id)
    body = bridge.wait_terminal(sid)
    assert (body["status"], body["reason"], body["detail"]) == (
        "failure",
        "agent leg failed",
        "SIP 503 Service Unavailable",
    ), body


def _wait_tone(pcap: Path, port: int, hz: float, timeout: float = 15.0) -> float:
    """Read the growing capture until the tone dominates the received audio."""
    deadline = time.monotonic() + timeout
    best = 0.0
    while time.monotonic() < deadline:
        if pcap.exists() and pcap.stat().st_size > 0:
            pkts = [p for p in rtp_packets(pcap, port) if p.pt == 0]
            if len(pkts) >= 50:
                audio = ulaw_decode(b"".join(p.payload for p in pkts[-50:]))
                best = max(best, tone_ratio(audio, hz))
                if best > 10:
                    return best
        time.sleep(0.2)  # the capture file grows as audio arrives
    return best


def test_audio_crosses_the_bridge_both_ways(stack: Stack) -> None:
    tmp = stack.tmp
    carrier = stack.sipp(
        render_scenario(
            "uas_answer_play.xml.in",
            tmp / "carrier.xml",
            AUDIO=str(tone_wav(tmp / "c.wav", 1000, 20)),
        )
    )
    agent = stack.sipp(
        render_scenario(
            "uas_answer_play.xml.in",
            tmp / "agent.xml",
            AUDIO=str(tone_wav(tmp / "a.wav", 1400, 20)),
        )
    )
    with (
        TsharkCapture(agent.media_port, tmp / "to_agent.pcap") as to_agent,
        TsharkCapture(carrier.media_port, tmp / "to_carrier.pcap") as to_carrier,
    ):
        bridge = carrier_bridge(
            stack, carrier, agent, detection={"answer": False, "early_media": False}
        )
        sid = bridge.trigger(to_number="+12125550126")
        bridge.wait_event(sid, "agent.answered")
        # the carrier's 1 kHz reaches the agent, the agent's 1.4 kHz reaches the carrier
        assert _wait_tone(to_agent.path, agent.media_port, 1000) > 10
        assert _wait_tone(to_carrier.path, carrier.media_port, 1400) > 10
        bridge.client.post(f"/v1/outbound-calling/{sid}/hangup")
        assert bridge.wait_terminal(sid)["status"] == "success"


def test_dtmf_from_the_api_is_sent_as_rfc4733(stack: Stack) -> None:
    carrier = stack.sipp("uas_answer_wait_bye.xml")
    agent = stack.sipp("uas_answer_wait_bye.xml")
    with TsharkCapture(carrier.media_port, stack.tmp / "carrier.pcap") as cap:
        bridge = carrier_bridge(stack, carrier, agent)
        sid = bridge.trigger(to_number="+12125550127")
        bridge.wait_event(sid, "carrier.answered")
        r = bridge.client.post(
            f"/v1/outbound-calling/{sid}/dtmf",
            json={"digits": "12w#", "duration_ms": 200, "gap_ms": 100},
        )
        assert r.status_code == 200, r.text
        bridge.wait_event(sid, "dtmf.sent")
        bridge.client.post(f"/v1/outbound-calling/{sid}/hangup")
        bridge.wait_terminal(sid)
    got = digits_of(rtp_events(cap.path, carrier.media_port))
    assert [d for d, _ in got] == ["1", "2", "#"], got
    for _, ev in got:
        assert abs(ev.duration - 1600) <= 320, ev  # 200 ms at 8 kHz, +-20 %
    # the 'w' pause: at least 0.5 s between the end of 2 and the start of #
    t2, t3 = got[1][1], got[2][1]
    assert (t3.timestamp - (t2.timestamp + t2.duration)) / 8000 >= 0.45


def test_leave_message_after_the_beep(
    stack: Stack, tmp_path: Path, corpus: tuple[Path, dict[str, Any]]
) -> None:
    corpus_dir, labels = corpus
    greeting = ulaw_wav(corpus_dir / "machine_00.wav", tmp_path / "vm.wav")
    message = tone_wav(tmp_path / "message.wav", 1400, 2.0, encoding="signed-integer")
    carrier = stack.sipp(
        render_scenario("uas_answer_play.xml.in", tmp_path / "vm.xml", AUDIO=str(greeting))
    )
    agent = stack.sipp("uas_answer_wait_bye.xml")
    with TsharkCapture(carrier.media_port, tmp_path / "carrier.pcap") as cap:
        bridge = carrier_bridge(
            stack,
            carrier,
            agent,
            route={
                "detection": {
                    "connect_on": "human",
                    "machine_action": "leave_message",
                    "message_wav": message.name,
                }
            },
            media={"dir": str(message.parent)},
        )
        sid = bridge.trigger(to_number="+12125550128")
        body = bridge.wait_terminal(sid, timeout=30)
    assert (body["status"], body["reason"], body["answered_by"]) == (
        "success",
        "voicemail message left",
        "machine",
    ), body
    kinds = [e["kind"] for e in body["events"]]
    assert "voicemail.play" in kinds and "voicemail.played" in kinds
    assert "agent.dial" not in kinds  # never bridged to the voicemail
    play_at = next(e for e in body["events"] if e["kind"] == "voicemail.play")
    det = next(
        e
        for e in body["events"]
        if e["kind"] == "detection" and e["data"].get("final") and e["data"].get("beep_ms")
    )
    assert play_at["ts"] >= det["ts"]
    assert det["data"]["beep_ms"] >= labels["machine_00.wav"]["beep_ms"]
    # the message's 1.4 kHz reached the carrier
    pkts = [p for p in rtp_packets(cap.path, carrier.media_port) if p.pt == 0]
    audio = ulaw_decode(b"".join(p.payload for p in pkts))
    window = 8000  # 1 s windows: the best one is inside the message
    best = max(
        tone_ratio(audio[i : i + window], 1400)
        for i in range(0, max(len(audio) - window, 1), window // 2)
    )
    assert best > 10, best
    assert not agent.received("INVITE")


def _greeting_then_beep(src: Path, cut_ms: int, dst: Path, beep_ms: int = 400) -> Path:
    """``src``'s first ``cut_ms`` (a greeting, without its own beep), a ``beep_ms`` 1 kHz
    beep, then 4 s of silence, as a 16-bit 8 kHz WAV."""
    with wave.open(str(src)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    assert rate == 8000
    t = np.arange(beep_ms * 8) / 8000
    beep = (0.3 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    y = np.concatenate([x[: cut_ms * 8], beep, np.zeros(4 * 8000, dtype=np.int16)])
    with wave.open(str(dst), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(y.tobytes())
    return dst


def test_leave_message_starts_after_the_beep_ends(
    stack: Stack, tmp_path: Path, corpus: tuple[Path, dict[str, Any]]
) -> None:
    """A 400 ms beep: the message's first audio reaches the carrier after the beep's last
    packet left it (both read from one capture on the carrier's side)."""
    corpus_dir, labels = corpus
    src = _greeting_then_beep(
        corpus_dir / "machine_00.wav",
        labels["machine_00.wav"]["beep_ms"],
        tmp_path / "greeting.wav",
    )
    greeting = ulaw_wav(src, tmp_path / "vm.wav")
    message = tone_wav(tmp_path / "message.wav", 1400, 1.0, encoding="signed-integer")
    carrier = stack.sipp(
        render_scenario("uas_answer_play.xml.in", tmp_path / "vm.xml", AUDIO=str(greeting))
    )
    mp = carrier.media_port
    # both ways: what the carrier plays and what the bridge sends it
    with TsharkCapture(mp, tmp_path / "carrier.pcap", bpf=f"port {mp}") as cap:
        bridge = carrier_bridge(
            stack,
            carrier,
            None,
            route={
                "detection": {
                    "connect_on": "human",
                    "machine_action": "leave_message",
                    "message_wav": message.name,
                }
            },
            media={"dir": str(message.parent)},
        )
        sid = bridge.trigger(to_number="+12125550129")
        body = bridge.wait_terminal(sid, timeout=30)
    assert (body["status"], body["reason"]) == ("success", "voicemail message left"), body
    pkts = [p for p in rtp_packets(cap.path, mp) if p.pt == 0]
    sent = [p for p in pkts if p.dst_port == mp]
    played = [p for p in pkts if p.dst_port != mp]

    def tone_times(pkts: list[Any], hz: float) -> list[float]:
        return [p.time_s for p in pkts if tone_ratio(ulaw_decode(p.payload), hz) > 10]

    # the beep: the longest run of 1 kHz packets the carrier sent (a voice can have one)
    runs: list[list[float]] = []
    for t in tone_times(played, 1000):
        if runs and t - runs[-1][-1] < 0.05:
            runs[-1].append(t)
        else:
            runs.append([t])
    beep = max(runs, key=len, default=[])
    msg = tone_times(sent, 1400)  # sent by the bridge
    assert beep and msg, (len(beep), len(msg))
    beep_end_s = max(beep) + 0.02
    assert 0.3 <= beep_end_s - min(beep) <= 0.5, (min(beep), beep_end_s)
    # The message starts after the beep's end (within the detector's end check + playback
    # start), never while it sounds.
    assert beep_end_s <= min(msg) < beep_end_s + 1.0, (beep_end_s, min(msg))


def test_agent_dialled_at_answer_is_told_the_result_by_info(
    stack: Stack, tmp_path: Path, corpus: tuple[Path, dict[str, Any]]
) -> None:
    """connect_on: answer dials the agent before detection decides (its INVITE says
    ``unknown``); the result follows as a SIP INFO in the agent's dialog."""
    corpus_dir, labels = corpus
    name = next(n for n, lab in sorted(labels.items()) if lab["answered_by"] == "human")
    carrier = _playing(stack, corpus_dir / name, tmp_path, "p")
    agent = stack.sipp("uas_answer_info_bye.xml")
    bridge = carrier_bridge(stack, carrier, agent)
    sid = bridge.trigger(to_number="+12125550130")
    inv = _invite(agent)
    assert inv.header("X-Sipbridge-Answered-By") == "unknown"
    info = _got(agent, "INFO", inv.call_id, timeout=15)
    assert info.header("Content-Type") == "application/vnd.sipbridge.detection+json"
    assert info.header("X-Sipbridge-Answered-By") == "human"
    body = json.loads(info.body)
    assert (body["call_sid"], body["answered_by"]) == (sid, "human"), body
    status = bridge.wait_event(sid, "agent.info")
    assert status["answered_by"] == "human"
    bridge.client.post(f"/v1/outbound-calling/{sid}/hangup")
    bridge.wait_terminal(sid)


def _human_and_agent(
    stack: Stack,
    tmp_path: Path,
    corpus: tuple[Path, dict[str, Any]],
    remember: str,
    on_info: str,
) -> tuple[SippUas, SippUas]:
    """A carrier playing a live answer, and an agent (uas_agent_hold) that answers the
    detection INFO with ``on_info``."""
    corpus_dir, labels = corpus
    name = next(n for n, lab in sorted(labels.items()) if lab["answered_by"] == "human")
    carrier = _playing(stack, corpus_dir / name, tmp_path, "p")
    agent = stack.sipp(
        render_scenario(
            "uas_agent_hold.xml.in",
            tmp_path / "agent.xml",
            REMEMBER=remember,
            HOLD=on_info,
            RESUME="",
        )
    )
    return carrier, agent


_REFUSE_INFO = """  <recv request="INFO">
  </recv>
  <send>
    <![CDATA[

      SIP/2.0 415 Unsupported Media Type
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Accept: application/sdp
      Content-Length: 0

    ]]>
  </send>
"""


def test_an_agent_that_refuses_the_detection_info_keeps_its_call(
    stack: Stack, tmp_path: Path, corpus: tuple[Path, dict[str, Any]]
) -> None:
    """An agent platform that cannot read the detection INFO answers 415 (or 501): the
    call goes on bridged. After the 415 the agent holds with a control INFO, which the
    bridge only accepts (200, not 409/481) on a live bridged leg."""
    from sipbridge.devtools.holdagent import _REMEMBER, _info

    carrier, agent = _human_and_agent(
        stack, tmp_path, corpus, _REMEMBER, _REFUSE_INFO + _info(50, '{"action":"hold"}')
    )
    bridge = carrier_bridge(stack, carrier, agent)
    sid = bridge.trigger(to_number="+12125550131")
    inv = _invite(agent)
    assert inv.header("X-Sipbridge-Answered-By") == "unknown"
    _got(agent, "INFO", inv.call_id, timeout=15)
    held = bridge.wait_event(sid, "agent.hold.holding", timeout=10)
    assert held["status"] not in ("success", "failure"), held
    bridge.client.post(f"/v1/outbound-calling/{sid}/hangup")
    final = bridge.wait_terminal(sid)
    assert final["status"] == "success", final
    _got(agent, "BYE", inv.call_id)


_GONE_INFO = _REFUSE_INFO.replace(
    "415 Unsupported Media Type", "481 Call/Transaction Does Not Exist"
)


def test_an_agent_that_answers_the_detection_info_481_loses_the_call(
    stack: Stack, tmp_path: Path, corpus: tuple[Path, dict[str, Any]]
) -> None:
    """A 481 to the detection INFO means the agent's dialog is gone (RFC 3261 12.2.1.2,
    RFC 5057 5.1: it ends the dialog usage): the bridge ends the agent leg (BYE) and the
    carrier leg, and the call is failure "call lost" like any answered call whose dialog
    died, not success "ended by agent" (the agent ended nothing)."""
    carrier, agent = _human_and_agent(stack, tmp_path, corpus, "", _GONE_INFO)
    bridge = carrier_bridge(stack, carrier, agent)
    sid = bridge.trigger(to_number="+12125550132")
    inv = _invite(agent)
    cinv = _invite(carrier)
    assert inv.header("X-Sipbridge-Answered-By") == "unknown"
    _got(agent, "INFO", inv.call_id, timeout=15)
    _got(agent, "BYE", inv.call_id)  # the dialog is ended on our side too
    _got(carrier, "BYE", cinv.call_id)
    final = bridge.wait_terminal(sid)
    assert (final["status"], final["reason"]) == ("failure", "call lost"), final
    assert "agent leg" in final["detail"] and "481" in final["detail"], final


def test_agent_dialled_for_a_screening_assistant_is_told_in_its_invite(
    stack: Stack, tmp_path: Path, regress_corpus: tuple[Path, dict[str, Any]]
) -> None:
    """Bridge-driven (connect_on: human, machines hung up) and a phone-side screening
    assistant (screening_action: connect, the default): the agent's INVITE says human with
    the hint screening, so it can state name and purpose from its first words."""
    corpus_dir, labels = regress_corpus
    name = next(n for n, lab in sorted(labels.items()) if lab.get("hint") == "screening")
    carrier = _playing(stack, corpus_dir / name, tmp_path, "s")
    agent = stack.sipp("uas_answer_wait_bye.xml")
    bridge = carrier_bridge(
        stack,
        carrier,
        agent,
        route={"detection": {"connect_on": "human", "machine_action": "hangup"}},
    )
    sid = bridge.trigger(to_number="+12125550132")
    inv = _invite(agent, timeout=30)
    assert inv.header("X-Sipbridge-Answered-By") == "human"
    assert inv.header("X-Sipbridge-Answered-By-Hint") == "screening"
    bridge.client.post(f"/v1/outbound-calling/{sid}/hangup")
    final = bridge.wait_terminal(sid)
    dial = next(e for e in final["events"] if e["kind"] == "agent.dial")
    assert dial["data"]["hint"] == "screening", dial
    assert not [e for e in final["events"] if e["kind"] == "agent.info"]  # nothing new to tell
