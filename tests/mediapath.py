"""The bridge's media path, agent -> carrier, measured on the wire: a SIPp agent plays
tone bursts, a SIPp carrier is bridged to it through a real worker pool, and one tshark
capture on loopback holds both the agent's packets (to the bridge) and the bridge's packets
(to the carrier), on one clock. Each burst's onset is found sample-exactly on both sides;
the difference is the latency the bridge adds (jitter buffer, conference bridge, the
worker's loop). The burst's length on both sides shows clipping.

Used by ``tests/integration/test_media_path.py`` and ``bench/mediapath.py``.
"""

from __future__ import annotations

import asyncio
import statistics
import wave
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sipbridge.devtools.sipp import ulaw_wav
from sipbridge.plan import DialPlan
from sipbridge.sip.pool import WorkerPool
from tests.doubles import EventRecorder
from tests.integration.harness import CALLEE, CALLER, SippHarness, run, with_pool
from tests.rtp import RtpPacket, TsharkCapture, rtp_packets, ulaw_decode

BURST_HZ = 1400
BURST_MS = 200
PERIOD_MS = 700
LEVEL = 0.3  # burst amplitude (full scale 1)
ONSET = 0.1  # a sample above this is in a burst (the tone's peaks are at 0.3)


@dataclass(frozen=True)
class Burst:
    onset_s: float  # capture time of the burst's first loud sample
    end_s: float  # ... and of its last one


@dataclass(frozen=True)
class PathResult:
    mode: str
    latencies_ms: list[float]  # per burst heard on both sides: carrier onset - agent onset
    length_errors_ms: list[float]  # per burst: carrier length - agent length
    sent: int  # bursts the agent sent while the legs were bridged
    heard: int  # bursts the carrier heard

    def summary(self) -> dict[str, float | int | str]:
        lat = sorted(self.latencies_ms)
        return {
            "mode": self.mode,
            "bursts_sent": self.sent,
            "bursts_heard": self.heard,
            "median_ms": round(statistics.median(lat), 1),
            "p95_ms": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 1),
            "max_ms": round(lat[-1], 1),
            "min_ms": round(lat[0], 1),
            "max_length_error_ms": round(max(abs(e) for e in self.length_errors_ms), 1),
        }


def burst_wav(path: Path, seconds: float) -> Path:
    """A u-law WAV of BURST_MS tone bursts every PERIOD_MS (SIPp's rtp_stream input)."""
    rate = 8000
    t = np.arange(int(rate * seconds)) / rate
    on = (np.floor(t * 1000) % PERIOD_MS) < BURST_MS
    x = np.where(on, LEVEL * np.sin(2 * np.pi * BURST_HZ * t), 0.0)
    pcm = path.with_suffix(".pcm.wav")
    with wave.open(str(pcm), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    return ulaw_wav(pcm, path)


def bursts(packets: list[RtpPacket]) -> list[Burst]:
    """The bursts in a side's PCMU packets. A packet's samples end at its capture time
    (the sender sends a frame once it is complete), so sample i of a 160-sample packet
    captured at t is at t - (160 - i) / 8000."""
    out: list[Burst] = []
    onset: float | None = None
    last = 0.0
    for p in sorted((p for p in packets if p.pt == 0), key=lambda p: p.time_s):
        x = np.abs(ulaw_decode(p.payload))
        loud = np.flatnonzero(x > ONSET)
        n = len(x)
        if len(loud) == 0:
            if onset is not None and p.time_s - last > 0.06:
                out.append(Burst(onset, last))
                onset = None
            continue
        first = p.time_s - (n - int(loud[0])) / 8000
        if onset is None:
            onset = first
        last = p.time_s - (n - 1 - int(loud[-1])) / 8000
    if onset is not None:
        out.append(Burst(onset, last))
    # a burst cut by the capture's start or end is not a whole burst
    return [b for b in out if (b.end_s - b.onset_s) * 1000 >= BURST_MS * 0.5]


def pair(sent: list[Burst], heard: list[Burst], max_ms: float = 650) -> list[tuple[Burst, Burst]]:
    """Each heard burst with the latest sent burst that started before it (within
    ``max_ms``, under the 700 ms burst period: a later burst is the next one's)."""
    pairs = []
    for hb in heard:
        before = [sb for sb in sent if 0 <= (hb.onset_s - sb.onset_s) * 1000 <= max_ms]
        if before:
            pairs.append((before[-1], hb))
    return pairs


def _plan(uas_hostport: str, leg_id: str, role: str = "carrier") -> DialPlan:
    return DialPlan(
        call_sid=leg_id.split("/")[0],
        leg_id=leg_id,
        trunk="sipp",
        request_uri=f"sip:{CALLEE}@{uas_hostport};transport=udp",
        from_uri=f"<sip:{CALLER}@127.0.0.1>",
        to_uri=f"<sip:{CALLEE}@{uas_hostport}>",
        headers=(),
        ring_timeout_s=10.0,
        max_duration_s=120.0,
        role=role,
    )


def measure(h: SippHarness, mode: str, seconds: float = 8.0) -> PathResult:
    """One bridged call: the agent plays bursts for ``seconds`` while the carrier plays a
    steady 440 Hz tone (music to the hold listener: never a person, so it stays active).
    ``mode``: "plain" (nothing listens to the carrier leg), or "tap+hold" (the carrier leg
    has answer-phase detection and a hold listener on its tap all along)."""
    assert mode in ("plain", "tap+hold"), mode
    tag = mode.replace("+", "-")
    carrier = h.sipp("uas_answer_stream.xml.in", AUDIO=str(h.tone(440, 4)))
    agent = h.sipp(
        "uas_answer_stream.xml.in", AUDIO=str(burst_wav(h.tmp / f"bursts-{tag}.wav", 7.0))
    )
    cap = TsharkCapture(
        carrier.media_port,
        h.tmp / f"mediapath-{tag}.pcap",
        bpf=f"src port {agent.media_port} or dst port {carrier.media_port}",
    )

    async def body(pool: WorkerPool, rec: EventRecorder) -> None:
        plan = _plan(carrier.uri_hostport, "m1/b1")
        if mode == "tap+hold":
            plan = replace(plan, detection={"early": False, "answer": True})
        wid = pool.dial(plan, reserve=1)
        await rec.state("m1/b1", "answered")
        if mode == "tap+hold":
            assert pool.listen("m1/b1", "hold", {})
        pool.dial(_plan(agent.uri_hostport, "m1/a1", role="agent"), prefer_worker=wid)
        await rec.state("m1/a1", "answered")
        assert pool.bridge("m1/b1", "m1/a1")
        await asyncio.sleep(seconds)  # the measurement window of bridged audio
        pool.hangup("m1/b1")
        await rec.state("m1/a1", "ended", timeout=10)

    with cap.start():
        run(with_pool(body, workers=1), timeout=seconds + 40)
    sent = bursts(
        [p for p in rtp_packets(cap.path, agent.media_port) if p.dst_port != agent.media_port]
    )
    heard = bursts(
        [p for p in rtp_packets(cap.path, carrier.media_port) if p.dst_port == carrier.media_port]
    )
    if heard:
        # the agent's bursts from the bridge's start to its end (before it, and after the
        # hangup, they go nowhere): each one should have been heard
        sent = [b for b in sent if heard[0].onset_s - 0.4 <= b.onset_s <= heard[-1].onset_s]
    pairs = pair(sent, heard)
    return PathResult(
        mode,
        [(hb.onset_s - sb.onset_s) * 1000 for sb, hb in pairs],
        [((hb.end_s - hb.onset_s) - (sb.end_s - sb.onset_s)) * 1000 for sb, hb in pairs],
        len(sent),
        len(heard),
    )


__all__ = ["Burst", "PathResult", "burst_wav", "bursts", "measure", "pair"]
