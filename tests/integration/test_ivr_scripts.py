"""Scripted IVR steps over SIP, through a real `sipbridge run` against a SIPp carrier.
Spoken steps: a script ``["1", "w", {say: WAV}, "w2"]``; tshark on the carrier's side sees
the RFC 4733 digits and the WAV's 1.4 kHz tone (Goertzel on the decoded RTP) in the
scripted order and timing, the tone whole (not clipped by the next digit). A looping menu
gets the next alternative digit string once per repeat, then the call fails retryable."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipbridge.devtools.bridge import Stack
from tests.integration.harness import tone_wav
from tests.integration.test_agent_bridge import carrier_bridge
from tests.integration.test_ivr_inbound import looping_menu_carrier
from tests.rtp import TsharkCapture, digits_of, rtp_events, rtp_packets, tone_packets

pytestmark = pytest.mark.integration

SAY_S = 0.8
DIGIT_MS = 160
GAP_MS = 80


def test_say_step_plays_between_the_digits_in_order(stack: Stack, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    tone_wav(media / "agent.wav", 1400, SAY_S, encoding="signed-integer")
    carrier = stack.sipp("uas_answer_wait_bye.xml")
    agent = stack.sipp("uas_answer_wait_bye.xml")
    with TsharkCapture(carrier.media_port, tmp_path / "carrier.pcap") as cap:
        bridge = carrier_bridge(
            stack,
            carrier,
            agent,
            media={"dir": str(media)},
            detection={"answer": False, "early_media": False},
        )
        sid = bridge.trigger(
            to_number="+12125550170",
            ivr={
                "send_digits": ["1", "w", {"say": "agent.wav"}, "w2"],
                "send_digits_delay_s": 0.3,
                "digit_duration_ms": DIGIT_MS,
                "digit_gap_ms": GAP_MS,
            },
        )
        bridge.wait_event(sid, "agent.dial", timeout=15)
        bridge.client.post(f"/v1/outbound-calling/{sid}/hangup")
        body = bridge.wait_terminal(sid)
    assert body["status"] == "success", body
    kinds = [e["kind"] for e in body["events"]]
    # the journal: digits, the say and its end, digits, then the agent
    order = [k for k in kinds if k in ("dtmf.send", "ivr.say", "ivr.said", "agent.dial")]
    assert order == ["dtmf.send", "ivr.say", "ivr.said", "dtmf.send", "agent.dial"], kinds

    got = digits_of(rtp_events(cap.path, carrier.media_port))
    assert [d for d, _ in got] == ["1", "2"], got
    (_, one), (_, two) = got
    tone = tone_packets(rtp_packets(cap.path, carrier.media_port), 1400)
    assert tone, "the say step's 1.4 kHz tone never reached the carrier"
    tone_start, tone_end = tone[0].time_s, tone[-1].time_s + 0.02
    one_end = one.time_s
    two_start = two.time_s - two.duration / 8000
    # in order: 1, then (gap + w = 0.58 s) the tone, then (w = 0.5 s) 2
    assert one_end < tone_start < tone_end < two_start, (one_end, tone_start, tone_end, two_start)
    assert 0.45 <= tone_start - one_end <= 0.58 + 0.35, tone_start - one_end
    assert 0.45 <= two_start - tone_end <= 0.5 + 0.35, two_start - tone_end
    # the whole prompt was played (not clipped), as one run of tone packets
    assert abs((tone_end - tone_start) - SAY_S) <= 0.1, tone_end - tone_start
    assert len(tone) >= int(SAY_S / 0.02) - 3, len(tone)


def test_looping_menu_gets_the_next_digit_string_then_fails(stack: Stack) -> None:
    """The carrier's menu comes back after each digit string: the bridge sends the next
    alternative once per repeat (one menu cycle apart on the wire), and after the last
    one ends the call "IVR menu repeated" (retryable) without dialling the agent."""
    # a short pause: after several seconds of silence the hold step takes the replayed
    # menu's first words for a person before the repeat is recognised (README)
    carrier, menu_s = looping_menu_carrier(stack, repeats=2, pause_s=3.0)
    cycle_s = menu_s + 3.0  # the menu, then 3 s of silence
    with TsharkCapture(carrier.media_port, stack.tmp / "carrier.pcap") as cap:
        bridge = carrier_bridge(stack, carrier, None)
        sid = bridge.trigger(
            to_number="+12125550171",
            send_digits="9",
            ivr={
                "hold": True,
                "send_digits_delay_s": round(menu_s + 0.5, 2),
                "max_ivr_s": 90,
                "on_menu_repeat": "next_digits",
                "alternative_digits": ["2#"],
            },
        )
        body = bridge.wait_terminal(sid, timeout=3 * cycle_s + 20)
    events = body["events"]
    assert (body["status"], body["reason"]) == ("failure", "IVR menu repeated"), "\n".join(
        f"{e['ts']} {e['kind']} {e['data'].get('phase') or e['data'].get('digits') or ''} "
        f"{e['data'].get('reason') or ''}"
        for e in events
    )
    kinds = [e["kind"] for e in events]
    assert "agent.dial" not in kinds
    steps = [
        e["data"].get("digits") or "repeat"
        for e in events
        if e["kind"] == "dtmf.send" or (e["kind"] == "detection" and e["data"]["phase"] == "repeat")
    ]
    assert steps == ["9", "repeat", "2#", "repeat"], steps
    # on the wire: the strings in order, each a menu cycle after the previous one (a
    # re-armed watch recognises the replay as early as the first did, so the strings do
    # not drift; on a starved machine a repeat can be caught one replay later)
    got = digits_of(rtp_events(cap.path, carrier.media_port))
    assert [d for d, _ in got] == ["9", "2", "#"], got
    a, b = (ev.time_s - ev.duration / 8000 for _, ev in got[:2])
    assert cycle_s - 1.5 <= b - a <= 2 * cycle_s + 1.5, (b - a, cycle_s)


def test_a_say_file_gone_since_the_trigger_ends_the_call_cleanly(
    stack: Stack, tmp_path: Path
) -> None:
    media = tmp_path / "media"
    media.mkdir()
    wav = tone_wav(media / "agent.wav", 1400, SAY_S, encoding="signed-integer")
    carrier = stack.sipp("uas_answer_wait_bye.xml")
    bridge = carrier_bridge(
        stack, carrier, None, media={"dir": str(media)}, detection={"answer": False}
    )
    sid = bridge.trigger(
        to_number="+12125550172",
        ivr={"send_digits": [{"say": "agent.wav"}, "1"], "send_digits_delay_s": 2.0},
    )
    bridge.wait_event(sid, "carrier.answered")
    wav.unlink()  # the say step comes 2 s after the answer
    body = bridge.wait_terminal(sid, timeout=15)
    assert (body["status"], body["reason"]) == ("failure", "IVR say step not played"), body
    assert "does not exist" in body["detail"], body
    assert "agent.dial" not in [e["kind"] for e in body["events"]]
    carrier.wait_for(lambda m: m.direction == "received" and m.method == "BYE")
