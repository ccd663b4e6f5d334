"""Hold on request, measured on the wire: from a tshark capture of the carrier's and the
agent's RTP, when the person's first word left the carrier, and when (and whether) that
word reached the agent (used by tests/integration/test_agent_hold.py and bench/holdresume.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from sipbridge.devtools.holdagent import HoldAudio, locate
from tests.rtp import rtp_packets, ulaw_decode

SAMPLES_PER_MS = 8


@dataclass(frozen=True)
class HoldWire:
    match: float  # normalised correlation of the person's first words found at the agent
    envelope: float  # correlation of their 10 ms level envelopes there (robust to PLC)
    onset_to_agent_ms: float  # carrier sends the first word -> the agent receives it
    agent_packets: int


def hold_wire(
    pcap: Path,
    carrier_port: int,
    agent_port: int,
    audio: HoldAudio,
    ref_ms: int = 200,
    mark_ms: int = 100,
) -> HoldWire:
    """Measure one call: ``carrier_port`` / ``agent_port`` are the SIPp media ports. The
    person's first ``ref_ms`` of speech are looked for in the agent's audio (a short window:
    under CPU load pjmedia's jitter buffer may drop 10 ms here and there, on any bridged
    call, which shifts what follows); the time is taken at the sample ``mark_ms`` into the
    speech on both sides."""
    sent = [p for p in rtp_packets(pcap, carrier_port) if p.dst_port != carrier_port and p.pt == 0]
    if not sent:
        return HoldWire(0.0, 0.0, -1.0, 0)
    mark_ts = sent[0].timestamp + (audio.onset_ms + mark_ms) * SAMPLES_PER_MS
    t_sent = next(
        (p.time_s for p in sent if ((p.timestamp + 160 - mark_ts) & 0xFFFFFFFF) < 1 << 31),
        sent[-1].time_s,
    )
    to_agent = [p for p in rtp_packets(pcap, agent_port) if p.dst_port == agent_port and p.pt == 0]
    rx = ulaw_decode(b"".join(p.payload for p in to_agent))
    idx, score = locate(rx, audio.person[: ref_ms * SAMPLES_PER_MS])
    if idx < 0:
        return HoldWire(0.0, 0.0, -1.0, len(to_agent))
    ref = audio.person[: ref_ms * SAMPLES_PER_MS]
    envelope = float(np.corrcoef(_envelope(ref), _envelope(rx[idx : idx + ref.size]))[0, 1])
    mark = idx + mark_ms * SAMPLES_PER_MS  # that sample in the agent's stream
    pos = 0
    t_heard = to_agent[-1].time_s
    for p in to_agent:
        pos += len(p.payload)
        if pos > mark:
            t_heard = p.time_s
            break
    return HoldWire(score, envelope, (t_heard - t_sent) * 1000.0, len(to_agent))


def _envelope(x: npt.NDArray[np.float64], step: int = 80) -> npt.NDArray[np.float64]:
    """Level per 10 ms, dB."""
    n = x.size // step
    f = x[: n * step].reshape(n, step)
    return np.asarray(10 * np.log10(np.mean(f * f, axis=1) + 1e-10), dtype=np.float64)


__all__ = ["HoldWire", "hold_wire"]
