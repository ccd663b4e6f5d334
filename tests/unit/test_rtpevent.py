"""tests/rtp.py (pcap readers, u-law, Goertzel) and sipbridge.sip.agentleg helpers."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from sipbridge.sip.agentleg import (
    dtmf_steps,
    event_digit,
    parse_info_dtmf,
    source_allowed,
)
from sipbridge.sipmsg import split_message
from tests.rtp import (
    digits_of,
    rtp_events,
    rtp_packets,
    tone_ratio,
    ulaw_decode,
    ulaw_encode,
    write_rtp_pcap,
)

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
SIPP_PCAPS = Path("/usr/share/sip-tester")


def _tone(freq: float, seconds: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(8000 * seconds)) / 8000.0
    return amp * np.sin(2 * np.pi * freq * t)


def test_ulaw_round_trip_and_goertzel() -> None:
    x = _tone(1000.0, 0.5)
    y = ulaw_decode(ulaw_encode(x))
    assert np.max(np.abs(x - y)) < 0.02
    assert tone_ratio(y, 1000.0) > 100
    assert tone_ratio(y, 1400.0) < 0.01


@needs_tshark
def test_rtp_payloads_and_events_from_a_written_pcap(tmp_path: Path) -> None:
    audio = ulaw_encode(_tone(1000.0, 0.4))
    pkts: list[tuple[int, int, int, bool, bytes]] = []
    for i in range(20):
        pkts.append((0, 100 + i, 160 * i, i == 0, audio[160 * i : 160 * (i + 1)]))
    # digit 5 for 800 units (100 ms): start, update, 3 end packets; then digit #
    for j, (dur, end) in enumerate(
        [(160, False), (480, False), (800, True), (800, True), (800, True)]
    ):
        pkts.append(
            (101, 200 + j, 3200, j == 0, struct.pack("!BBH", 5, (0x80 if end else 0) | 10, dur))
        )
    for j, (dur, end) in enumerate([(160, False), (1600, True)]):
        pkts.append(
            (101, 210 + j, 6400, j == 0, struct.pack("!BBH", 11, (0x80 if end else 0) | 10, dur))
        )
    pcap = tmp_path / "known.pcap"
    write_rtp_pcap(pcap, pkts, dst_port=42000)

    got = rtp_packets(pcap, 42000)
    voice = [p for p in got if p.pt == 0]
    assert [p.seq for p in voice] == list(range(100, 120))
    assert b"".join(p.payload for p in voice) == audio[:3200]
    assert tone_ratio(ulaw_decode(b"".join(p.payload for p in voice)), 1000.0) > 100

    digits = digits_of(rtp_events(pcap, 42000))
    assert [d for d, _ in digits] == ["5", "#"]
    assert digits[0][1].end and digits[0][1].duration == 800
    assert digits[1][1].duration == 1600


@needs_tshark
@pytest.mark.skipif(not (SIPP_PCAPS / "dtmf_2833_1.pcap").exists(), reason="no SIPp pcaps")
def test_sipp_dtmf_pcap_is_digit_1() -> None:
    pcap = SIPP_PCAPS / "dtmf_2833_1.pcap"
    digits = digits_of(rtp_events(pcap, 10000))
    assert [d for d, _ in digits] == ["1"]
    assert digits[0][1].end and digits[0][1].duration == 2240


def test_dtmf_steps() -> None:
    steps, invalid = dtmf_steps("12w#xW*a", 200, 100)
    assert invalid == "x"
    assert steps == [
        ("1", 0.3),
        ("2", 0.3),
        (None, 0.5),
        ("#", 0.3),
        (None, 1.0),
        ("*", 0.3),
        ("A", 0.3),
    ]


def test_event_digits_and_info_bodies() -> None:
    assert event_digit(10) == "*" and event_digit(11) == "#" and event_digit(16) == ""
    assert event_digit("5") == "5" and event_digit("11") == "#" and event_digit("b") == "B"
    assert parse_info_dtmf("application/dtmf-relay", "Signal=5\r\nDuration=160\r\n") == ("5", 160)
    assert parse_info_dtmf("Application/DTMF-Relay; x=y", "Signal= #\nDuration= 250") == ("#", 250)
    assert parse_info_dtmf("application/dtmf", "7") == ("7", 160)
    assert parse_info_dtmf("text/plain", "Signal=5") is None
    assert parse_info_dtmf("application/dtmf-relay", "Duration=100") is None


def test_inbound_source_filter_and_parsing() -> None:
    assert source_allowed("127.0.0.1:5060", ["127.0.0.0/8"])
    assert not source_allowed("127.0.0.1:5060", ["10.0.0.0/8"])
    assert not source_allowed("127.0.0.1:5060", [])
    assert source_allowed("[::1]:5060", ["::1/128"])
    assert not source_allowed("garbage", ["0.0.0.0/0"])
    start, headers, body = split_message(
        "INVITE sip:agent@127.0.0.1:5060 SIP/2.0\r\nFrom: <sip:a@b>;tag=1\r\n"
        "X-Dest-Number: +1555\r\nX-Long: a\r\n b\r\n\r\nv=0\r\n"
    )
    assert start.startswith("INVITE sip:agent@")
    assert ("X-Dest-Number", "+1555") in headers and ("X-Long", "a b") in headers
    assert body == "v=0\n"
