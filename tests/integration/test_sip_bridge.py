"""The agent side of the SIP engine against SIPp on loopback: bridging a carrier leg and
an agent leg (audio both ways, checked on the wire with tshark), BYE propagation, DTMF
out and relay (RFC 4733 on the wire), playback, inbound INVITEs, slot reservation."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sipbridge import ipc
from sipbridge.devtools.sipp import SippUas
from sipbridge.plan import DialPlan
from sipbridge.sip.pool import PoolFull, WorkerPool
from tests.doubles import EventRecorder as Recorder
from tests.integration.harness import CALLEE, CALLER, SippHarness, run, sip_cfg, with_pool
from tests.rtp import (
    TsharkCapture,
    digits_of,
    rewrite_rtp_pt,
    rtp_events,
    rtp_packets,
    tone_ratio,
    ulaw_decode,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed"),
]

SIPP_PCAPS = Path("/usr/share/sip-tester")


def plan(
    uas: SippUas,
    leg_id: str,
    *,
    role: str = "carrier",
    bridge_with: str | None = None,
    call_sid: str | None = None,
) -> DialPlan:
    return DialPlan(
        call_sid=call_sid or leg_id.split("/")[0],
        leg_id=leg_id,
        trunk="sipp",
        request_uri=f"sip:{CALLEE}@{uas.uri_hostport};transport=udp",
        from_uri=f"<sip:{CALLER}@127.0.0.1>",
        to_uri=f"<sip:{CALLEE}@{uas.uri_hostport}>",
        headers=(),
        ring_timeout_s=10.0,
        max_duration_s=30.0,
        role=role,
        bridge_with=bridge_with,
    )


def received_audio(cap: TsharkCapture) -> np.ndarray:
    cap.stop()
    pkts = [p for p in rtp_packets(cap.path, cap.port) if p.pt == 0]
    assert pkts, f"no PCMU RTP to port {cap.port}"
    return ulaw_decode(b"".join(p.payload for p in pkts))


def voiced(x: np.ndarray, frame: int = 160) -> np.ndarray:
    """The 20 ms frames of ``x`` that are not silence."""
    n = len(x) // frame
    frames = x[: n * frame].reshape(n, frame)
    keep = np.sqrt(np.mean(frames**2, axis=1)) > 0.01
    return frames[keep].reshape(-1)


def offered_event_pt(sdp: str) -> int:
    m = re.search(r"a=rtpmap:(\d+) telephone-event/8000", sdp)
    assert m, f"no telephone-event/8000 in the offer: {sdp}"
    return int(m.group(1))


def event_pt(cap: TsharkCapture) -> int:
    pts = {p.pt for p in rtp_packets(cap.path, cap.port)} - {0, 8, 13}
    assert len(pts) == 1, f"telephone-event payload type? saw {pts}"
    return pts.pop()


# --------------------------------------------------------------------------- bridge


def test_bridge_audio_crosses_both_ways(h: SippHarness) -> None:
    carrier = h.sipp("uas_answer_stream.xml.in", AUDIO=str(h.tone(1000, 3)))
    agent = h.sipp("uas_answer_stream.xml.in", AUDIO=str(h.tone(1400, 3)))
    to_agent = h.capture(agent.media_port, "to-agent")
    to_carrier = h.capture(carrier.media_port, "to-carrier")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        wid = pool.dial(plan(carrier, "c1/b1"), reserve=1)
        await rec.state("c1/b1", "answered")
        assert pool.dial(plan(agent, "c1/a1", role="agent"), prefer_worker=wid) == wid
        await rec.state("c1/a1", "answered")
        assert pool.bridge("c1/b1", "c1/a1")
        await asyncio.sleep(1.5)  # a measurement window of bridged audio, not an event
        assert pool.hangup("c1/b1")
        await rec.state("c1/b1", "ended")
        end = await rec.state("c1/a1", "ended")
        assert end.cause == "bridged_bye" and end.answered

    run(with_pool(body, workers=1))
    at_agent = voiced(received_audio(to_agent))
    at_carrier = voiced(received_audio(to_carrier))
    assert len(at_agent) >= 8000 * 0.8 and len(at_carrier) >= 8000 * 0.8
    assert tone_ratio(at_agent, 1000.0) > 10, "carrier's 1 kHz not heard by the agent"
    assert tone_ratio(at_carrier, 1400.0) > 10, "agent's 1.4 kHz not heard by the carrier"


def test_carrier_bye_ends_agent_leg(h: SippHarness) -> None:
    carrier = h.sipp("uas_answer_then_bye_3s.xml")
    agent = h.sipp("uas_answer_wait_bye.xml")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        wid = pool.dial(plan(carrier, "c2/b1"), reserve=1)
        await rec.state("c2/b1", "answered")
        pool.dial(plan(agent, "c2/a1", role="agent", bridge_with="c2/b1"), prefer_worker=wid)
        await rec.state("c2/a1", "answered")
        b_end = await rec.state("c2/b1", "ended", 8)
        assert b_end.cause == "remote_bye"
        a_end = await rec.state("c2/a1", "ended")
        assert a_end.cause == "bridged_bye" and a_end.answered
        await agent.async_wait_for(lambda m: m.direction == "received" and m.method == "BYE", 3)
        assert pool.free_slots() == 4 and pool.reserved_slots("c2") == {}

    run(with_pool(body, workers=1))


def test_agent_bye_ends_carrier_leg(h: SippHarness) -> None:
    carrier = h.sipp("uas_answer_wait_bye.xml")
    agent = h.sipp("uas_answer_then_bye.xml")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        wid = pool.dial(plan(carrier, "c3/b1"), reserve=1)
        await rec.state("c3/b1", "answered")
        pool.dial(plan(agent, "c3/a1", role="agent", bridge_with="c3/b1"), prefer_worker=wid)
        a_end = await rec.state("c3/a1", "ended", 8)
        assert a_end.cause == "remote_bye"
        b_end = await rec.state("c3/b1", "ended")
        assert b_end.cause == "bridged_bye" and b_end.answered
        await carrier.async_wait_for(lambda m: m.direction == "received" and m.method == "BYE", 3)

    run(with_pool(body, workers=1))


# --------------------------------------------------------------------------- DTMF


def test_send_dtmf_rfc4733_with_durations_and_pauses(h: SippHarness) -> None:
    carrier = h.sipp("uas_answer_wait_bye.xml")
    cap = h.capture(carrier.media_port, "dtmf-out")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(carrier, "c4/b1"))
        await rec.state("c4/b1", "answered")
        assert pool.send_dtmf("c4/b1", "12w#", duration_ms=200, gap_ms=100)
        sent = await rec.wait(lambda e: isinstance(e, ipc.DtmfSent), 5)
        assert (sent.leg_id, sent.digits) == ("c4/b1", "12w#")
        pool.hangup("c4/b1")
        await rec.state("c4/b1", "ended")

    run(with_pool(body, workers=1))
    cap.stop()
    digits = digits_of(rtp_events(cap.path, cap.port, event_pt(cap)))
    assert [d for d, _ in digits] == ["1", "2", "#"]
    for _, end in digits:
        assert end.end and 1280 <= end.duration <= 1920, end  # 200 ms +-20 % at 8 kHz
    two, pound = digits[1][1], digits[2][1]
    assert pound.timestamp - (two.timestamp + two.duration) >= 4000  # >= 500 ms pause
    # the same on the capture clock: first packet of '#' vs the last of '2'
    evs = rtp_events(cap.path, cap.port, event_pt(cap))
    last_two = max(e.time_s for e in evs if e.timestamp == two.timestamp)
    first_pound = min(e.time_s for e in evs if e.timestamp == pound.timestamp)
    assert first_pound - last_two >= 0.5


@pytest.mark.skipif(not (SIPP_PCAPS / "dtmf_2833_1.pcap").exists(), reason="no SIPp pcaps")
def test_agent_dtmf_relayed_to_carrier(h: SippHarness) -> None:
    carrier = h.sipp("uas_answer_wait_bye.xml")
    cap = h.capture(carrier.media_port, "relay")

    def rx(digit: str) -> Callable[[Any], bool]:
        return lambda e: isinstance(e, ipc.DtmfReceived) and e.digit == digit

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        wid = pool.dial(plan(carrier, "c5/b1"), reserve=1)
        await rec.state("c5/b1", "answered")
        # The agent answers with the telephone-event payload type the bridge offers (as
        # RFC 3264 wants) and sends SIPp's digit-1 pcap with that payload type.
        pt = offered_event_pt(carrier.received("INVITE")[0].body)
        pcap = h.tmp / "dtmf_1.pcap"
        assert rewrite_rtp_pt(SIPP_PCAPS / "dtmf_2833_1.pcap", pcap, pt) > 0
        agent = h.sipp("uas_answer_send_dtmf.xml.in", PCAP=str(pcap), TE_PT=str(pt))
        pool.dial(plan(agent, "c5/a1", role="agent", bridge_with="c5/b1"), prefer_worker=wid)
        await rec.state("c5/a1", "answered")
        one = await rec.wait(rx("1"), 5)
        assert (one.leg_id, one.method, one.relayed_to) == ("c5/a1", "rfc2833", "c5/b1")
        assert 250 <= one.duration_ms <= 310  # the pcap's event lasts 2240 units = 280 ms
        five = await rec.wait(rx("5"), 5)
        assert (five.leg_id, five.method, five.relayed_to) == ("c5/a1", "info", "c5/b1")
        assert five.duration_ms == 160
        seven = await rec.wait(rx("7"), 5)
        assert (seven.method, seven.relayed_to) == ("info", "c5/b1")
        # the agent got 200 OK for both INFOs
        await agent.async_wait_for(
            lambda m: (
                m.direction == "received"
                and m.status == 200
                and m.method == "INFO"
                and (m.header("CSeq") or "").startswith("2 ")
            ),
            3,
        )
        await asyncio.sleep(0.5)  # let the last relayed event's end packets go out
        pool.hangup("c5/a1")
        await rec.state("c5/b1", "ended")

    run(with_pool(body, workers=1))
    cap.stop()
    digits = digits_of(rtp_events(cap.path, cap.port, event_pt(cap)))
    assert [d for d, _ in digits] == ["1", "5", "7"]
    assert digits[0][1].end and abs(digits[0][1].duration - 2240) <= 400
    assert digits[1][1].end and abs(digits[1][1].duration - 1280) <= 400


# --------------------------------------------------------------------------- playback


def test_play_wav_into_carrier_leg(h: SippHarness) -> None:
    carrier = h.sipp("uas_answer_wait_bye.xml")
    cap = h.capture(carrier.media_port, "play")
    wav = h.tone(1000, 1.0, encoding="signed-integer")
    with wave.open(str(wav)) as w:
        assert (w.getframerate(), w.getsampwidth()) == (8000, 2)

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(carrier, "c6/b1"))
        await rec.state("c6/b1", "answered")
        assert pool.play("c6/b1", str(h.tmp / "missing.wav"))
        bad = await rec.wait(lambda e: isinstance(e, ipc.PlaybackDone), 3)
        assert bad.error and bad.path.endswith("missing.wav")
        assert pool.play("c6/b1", str(wav))
        done = await rec.wait(lambda e: isinstance(e, ipc.PlaybackDone) and e.path == str(wav), 5)
        assert done.error == "" and done.leg_id == "c6/b1"
        pool.hangup("c6/b1")
        await rec.state("c6/b1", "ended")

    run(with_pool(body, workers=1))
    audio = voiced(received_audio(cap))
    assert len(audio) >= 8000 * 0.8
    assert tone_ratio(audio, 1000.0) > 10


# --------------------------------------------------------------------------- inbound


def test_inbound_invite_allowed_respond_180_then_200(h: SippHarness) -> None:
    async def body(pool: WorkerPool, rec: Recorder) -> None:
        port = pool.worker_ports()[0]
        uac = h.uac("uac_agent_invite.xml", port)
        inv: ipc.InboundCall = await rec.wait(lambda e: isinstance(e, ipc.InboundCall), 5)
        hdrs = dict(inv.headers)
        assert hdrs["X-Dest-Number"] == CALLEE
        assert hdrs["X-Agent-Call-Id"] == "agent-call-42"
        assert inv.request_uri.startswith("sip:agent@127.0.0.1")
        assert inv.source.startswith("127.0.0.1:") and "agent@" in inv.from_uri
        assert inv.sip_call_id and inv.leg_id.startswith("in-")
        assert pool.worker_of(inv.leg_id) == 0 and pool.free_slots() == 3
        assert pool.respond(inv.leg_id, 180)
        await uac.async_wait_for(lambda m: m.direction == "received" and m.status == 180, 3)
        assert pool.respond(inv.leg_id, 200)
        ok = await uac.async_wait_for(lambda m: m.direction == "received" and m.status == 200)
        assert "m=audio" in ok.body
        ans = await rec.state(inv.leg_id, "answered")
        assert ans.sip_call_id == inv.sip_call_id
        end = await rec.state(inv.leg_id, "ended", 5)  # the UAC hangs up after 1 s
        assert (end.cause, end.answered) == ("remote_bye", True)
        assert pool.free_slots() == 4

    run(with_pool(body, sip_cfg(1, inbound_allow=["127.0.0.0/8"])))


def test_inbound_invite_from_disallowed_source_gets_403(h: SippHarness) -> None:
    async def body(pool: WorkerPool, rec: Recorder) -> None:
        uac = h.uac("uac_agent_invite_refused.xml", pool.worker_ports()[0])
        await uac.async_wait_for(lambda m: m.direction == "received" and m.status == 403, 5)
        assert not rec.of(ipc.InboundCall)
        assert pool.free_slots() == 4

    run(with_pool(body, sip_cfg(1, inbound_allow=["10.0.0.0/8"])))


# --------------------------------------------------------------------------- slots


def test_reserve_slots_for_the_agent_leg(h: SippHarness) -> None:
    carrier = h.sipp("uas_answer_wait_bye.xml")
    agent = h.sipp("uas_answer_wait_bye.xml")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        wa = pool.dial(plan(carrier, "ca/b1"), reserve=1)
        wb = pool.dial(plan(carrier, "cb/b1"), reserve=1)
        assert wa == wb == 0
        assert pool.free_slots() == 0
        assert pool.reserved_slots("ca") == {0: 1}
        with pytest.raises(PoolFull):
            pool.dial(plan(carrier, "cc/b1"), reserve=1)
        with pytest.raises(PoolFull):
            pool.dial(plan(carrier, "cc/b1"))
        await rec.state("ca/b1", "answered")
        await rec.state("cb/b1", "answered")
        assert pool.dial(plan(agent, "ca/a1", role="agent"), prefer_worker=0) == 0
        assert pool.dial(plan(agent, "cb/a1", role="agent"), prefer_worker=0) == 0
        assert pool.reserved_slots("ca") == {} and pool.free_slots() == 0
        await rec.state("ca/a1", "answered")
        await rec.state("cb/a1", "answered")
        for leg in ("ca/b1", "ca/a1", "cb/b1", "cb/a1"):
            pool.hangup(leg)
        for leg in ("ca/b1", "ca/a1", "cb/b1", "cb/a1"):
            await rec.state(leg, "ended")
        assert pool.free_slots() == 4
        # A call whose carrier leg ends before its agent is dialled releases its reserve.
        pool.dial(plan(carrier, "cd/b1"), reserve=1)
        assert pool.free_slots() == 2
        await rec.state("cd/b1", "answered")
        pool.hangup("cd/b1")
        await rec.state("cd/b1", "ended")
        assert pool.free_slots() == 4 and pool.reserved_slots("cd") == {}

    run(with_pool(body, workers=1))


# --------------------------------------------------------------------------- listen


def test_listen_hold_reports_a_live_person(h: SippHarness) -> None:
    speech = h.tmp / "person.wav"
    subprocess.run(
        [
            "espeak-ng",
            "-v",
            "en-us",
            "-s",
            "160",
            "-w",
            str(speech),
            "Hello, this is Sarah in billing. How can I help you today?",
        ],
        check=True,
        capture_output=True,
    )
    audio = h.tmp / "person-ulaw.wav"
    subprocess.run(
        ["sox", str(speech), "-r", "8000", "-c", "1", "-e", "u-law", str(audio), "pad", "1.0", "0"],
        check=True,
        capture_output=True,
    )
    carrier = h.sipp("uas_answer_play.xml.in", AUDIO=str(audio))

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(carrier, "c7/b1"))
        await rec.state("c7/b1", "answered")
        assert pool.listen("c7/b1", "hold", {})
        rep: ipc.DetectionReport = await rec.wait(
            lambda e: isinstance(e, ipc.DetectionReport) and e.kind == "decision", 10
        )
        assert (rep.leg_id, rep.phase) == ("c7/b1", "hold")
        assert rep.detection.answered_by == "human"
        pool.hangup("c7/b1")
        await rec.state("c7/b1", "ended")

    run(with_pool(body, workers=1))


def test_inbound_183_carries_the_carrier_early_media(h: SippHarness) -> None:
    carrier = h.sipp("uas_early_play.xml.in", AUDIO=str(h.tone(1000, 3)))

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        uac = h.uac("uac_agent_invite.xml", pool.worker_ports()[0])
        cap = h.capture(uac.media_port, "early-to-agent")
        inv: ipc.InboundCall = await rec.wait(lambda e: isinstance(e, ipc.InboundCall), 5)
        wid = pool.worker_of(inv.leg_id)
        assert pool.dial(plan(carrier, "c8/b1"), prefer_worker=wid) == wid
        await rec.state("c8/b1", "early")
        assert pool.respond(inv.leg_id, 183, "Session Progress", media_from="c8/b1")
        prog = await uac.async_wait_for(lambda m: m.direction == "received" and m.status == 183, 3)
        assert "m=audio" in prog.body
        await asyncio.sleep(1.5)  # a measurement window of early media, not an event
        pool.hangup("c8/b1")
        await rec.state("c8/b1", "ended")
        assert pool.respond(inv.leg_id, 200)
        await rec.state(inv.leg_id, "answered")
        await rec.state(inv.leg_id, "ended", 5)
        heard = voiced(received_audio(cap))
        assert len(heard) >= 8000 * 0.8
        assert tone_ratio(heard, 1000.0) > 10

    run(with_pool(body, sip_cfg(1, inbound_allow=["127.0.0.0/8"])))
