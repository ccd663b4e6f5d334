"""A trunk's media profile on the wire (SIPp carrier on loopback, pjsua2 worker): the
offered codec order, our telephone-event payload type and the peer's DTMF on it both
ways (RFC 4733, checked with tshark), the trunk's RFC 4028 timer values, and pjsua's
defaults back for the next leg (codec priorities are endpoint-wide)."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from typing import Any

import pytest

from sipbridge import ipc
from sipbridge.sip.pool import WorkerPool
from sipbridge.sip.sdp import audio_codecs
from tests.doubles import EventRecorder
from tests.integration.harness import SippHarness, run, sip_cfg, with_pool
from tests.integration.test_sip_bridge import SIPP_PCAPS, plan
from tests.rtp import digits_of, rewrite_rtp_pt, rtp_events, rtp_packets

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed"),
    pytest.mark.skipif(not (SIPP_PCAPS / "dtmf_2833_1.pcap").exists(), reason="no SIPp pcaps"),
]


def _audio(sdp: str) -> list[str]:
    return [c for c in audio_codecs(sdp)[1] if not c.startswith("telephone-event")]


def test_trunk_codec_order_event_pt_and_timers_on_the_wire(h: SippHarness) -> None:
    # The carrier answers telephone-event 101 and sends its digit on 101 (what carriers
    # that ignore our offer do); our offer says 101 too, so the digit is understood.
    pcap = h.tmp / "dtmf_101.pcap"
    assert rewrite_rtp_pt(SIPP_PCAPS / "dtmf_2833_1.pcap", pcap, 101) > 0
    carrier = h.sipp("uas_answer_send_dtmf.xml.in", PCAP=str(pcap), TE_PT="101")
    plain = h.sipp("uas_busy.xml")
    cap = h.capture(carrier.media_port, "carrier")

    async def body(pool: WorkerPool, rec: EventRecorder) -> None:
        leg = replace(
            plan(carrier, "p1/b1"),
            codecs=("PCMA/8000", "G722/16000", "PCMU/8000"),
            telephone_event_pt=101,
            session_timers=(300, 120),
        )
        wid = pool.dial(leg)
        await rec.state("p1/b1", "answered")
        one = await rec.wait(
            lambda e: (
                isinstance(e, ipc.DtmfReceived) and e.leg_id == "p1/b1" and e.method == "rfc2833"
            ),
            5,
        )
        assert one.digit == "1"
        assert pool.send_dtmf("p1/b1", "42")
        await rec.wait(lambda e: isinstance(e, ipc.DtmfSent) and e.leg_id == "p1/b1", 5)
        await asyncio.sleep(0.3)  # the last event's end packets leave after DtmfSent
        # The next leg on the same worker, without a codec list: pjsua's own offer.
        pool.dial(plan(plain, "p2/b1"), prefer_worker=wid)
        await rec.state("p2/b1", "ended")
        pool.hangup("p1/b1")
        await rec.state("p1/b1", "ended")

    run(with_pool(body, workers=1))
    cap.stop()
    invite = carrier.received("INVITE")[0]
    assert _audio(invite.body) == ["PCMA/8000", "G722/8000", "PCMU/8000"]
    assert "a=rtpmap:101 telephone-event/8000" in invite.body
    assert (invite.header("Session-Expires") or "").split(";")[0].strip() == "300"
    assert invite.header("Min-SE") == "120"
    default = plain.received("INVITE")[0]
    assert {"PCMU/8000", "PCMA/8000", "G722/8000"} <= set(_audio(default.body))
    assert len(_audio(default.body)) > 3  # speex, iLBC, GSM are offered again
    assert "a=rtpmap:101 telephone-event/8000" not in default.body  # pjsua's own PT
    # Our digits went out on the PT the carrier answered (RFC 3264), seen by tshark.
    sent = {p.pt for p in rtp_packets(cap.path, cap.port)} - {0}
    assert sent == {101}, sent
    assert [d for d, _ in digits_of(rtp_events(cap.path, cap.port, 101))] == ["4", "2"]


def test_unknown_codec_is_a_dial_error(h: SippHarness) -> None:
    carrier = h.sipp("uas_busy.xml")

    async def body(pool: WorkerPool, rec: EventRecorder) -> None:
        pool.dial(replace(plan(carrier, "p3/b1"), codecs=("G729/8000",)))
        end: Any = await rec.state("p3/b1", "ended")
        assert end.cause == "dial_error" and "G729/8000" in end.detail

    run(with_pool(body, workers=1))
    assert carrier.received("INVITE") == []


def test_inbound_offer_of_101_is_answered_and_used_for_dtmf(h: SippHarness) -> None:
    # The agent platform (SIP-triggered mode) offers telephone-event 101: our answer keeps
    # 101 (RFC 3264 6.1) and the digits we send on that leg go out on 101.
    captured: dict[str, Any] = {}

    async def body(pool: WorkerPool, rec: EventRecorder) -> None:
        uac = h.uac("uac_agent_invite.xml", pool.worker_ports()[0])
        cap = h.capture(uac.media_port, "inbound")
        captured["cap"] = cap
        inv: Any = await rec.wait(lambda e: isinstance(e, ipc.InboundCall), 5)
        assert pool.respond(inv.leg_id, 200)
        ok = await uac.async_wait_for(lambda m: m.direction == "received" and m.status == 200)
        captured["answer"] = ok.body
        await rec.state(inv.leg_id, "answered")
        assert pool.send_dtmf(inv.leg_id, "9")
        await rec.wait(lambda e: isinstance(e, ipc.DtmfSent) and e.leg_id == inv.leg_id, 3)
        await rec.state(inv.leg_id, "ended", 5)  # the UAC hangs up after 1 s

    run(with_pool(body, sip_cfg(1, inbound_allow=["127.0.0.0/8"])))
    cap = captured["cap"]
    cap.stop()
    assert "a=rtpmap:101 telephone-event/8000" in captured["answer"]
    assert {p.pt for p in rtp_packets(cap.path, cap.port)} - {0} == {101}
    assert [d for d, _ in digits_of(rtp_events(cap.path, cap.port, 101))] == ["9"]
