"""RTP on the wire for tests: capture with tshark on loopback, read RTP payloads and
RFC 4733 events out of a pcap, decode G.711 u-law and measure tones (Goertzel).

Capture (root, or a tshark allowed to capture)::

    with TsharkCapture(port, tmp_path / "agent.pcap") as cap:   # udp and dst port N
        ...                                                      # the call
    packets = rtp_packets(cap.path, port)
    audio = ulaw_decode(b"".join(p.payload for p in packets if p.pt == 0))
    assert tone_ratio(audio, 1000.0) > 10

Working tshark invocations (Wireshark 4.0):

- capture: ``tshark -i lo -f "udp and dst port N" -w file.pcap``
- RTP: ``tshark -r file.pcap -d udp.port==N,rtp -T fields -e rtp.p_type -e rtp.seq
  -e rtp.timestamp -e rtp.marker -e rtp.payload``
- RFC 4733 events: the same with ``-d rtp.pt==PT,rtpevent`` (101 is decoded by default)
  and fields ``rtpevent.event_id -e rtpevent.end_of_event -e rtpevent.duration``.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

TSHARK = shutil.which("tshark") or "tshark"


@dataclass(frozen=True)
class RtpPacket:
    pt: int
    seq: int
    timestamp: int
    marker: bool
    payload: bytes
    time_s: float = 0.0  # capture time (from the capture's start)
    dst_port: int = 0


@dataclass(frozen=True)
class RtpEvent:
    """One RFC 4733 telephone-event packet."""

    event_id: int
    end: bool
    duration: int  # timestamp units (1/8000 s)
    timestamp: int  # RTP timestamp: the event's start
    seq: int
    time_s: float  # capture time


class TsharkCapture:
    """``tshark -i lo -f "udp and dst port N" -w path`` for the duration of a block.

    Starts only when tshark reports it is capturing, and stops with SIGINT so the pcap
    is complete.
    """

    def __init__(
        self, port: int, path: Path, interface: str = "lo", bpf: str | None = None
    ) -> None:
        self.port = port
        self.bpf = bpf or f"dst port {port}"  # a capture filter instead of the port
        self.path = Path(path)
        self.interface = interface
        self.proc: subprocess.Popen[bytes] | None = None
        # End marker: a datagram to a port of our own, captured too. libpcap hands packets
        # to dumpcap in blocks, and packets of a block not yet handed over when SIGINT
        # arrives were lost (the last DTMF digit of a call, for instance): stop() waits
        # until the marker, sent after everything the test expects, is in the file.
        self.marker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.marker.bind(("127.0.0.1", 0))
        self.marker_port = int(self.marker.getsockname()[1])

    def start(self, timeout: float = 10.0) -> TsharkCapture:
        err = self.path.with_suffix(".stderr")
        with open(err, "wb") as f:
            self.proc = subprocess.Popen(
                [
                    TSHARK,
                    "-i",
                    self.interface,
                    "-f",
                    f"udp and (({self.bpf}) or dst port {self.marker_port})",
                    "-w",
                    str(self.path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=f,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Capturing on" in err.read_text(errors="replace"):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"tshark exited: {err.read_text(errors='replace')}")
            time.sleep(0.02)  # polling tshark's start-up message
        self.stop()
        raise RuntimeError("tshark did not start capturing in time")

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.poll() is None:
            self._flush(timeout=5.0)
            proc.send_signal(2)  # SIGINT: flush and close the pcap
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(2)
        self.marker.close()

    def _flush(self, timeout: float) -> None:
        """Send the end marker and wait (bounded) until the pcap file holds it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.marker.sendto(b"sipbridge-capture-end", ("127.0.0.1", self.marker_port))
            out = subprocess.run(
                [TSHARK, "-r", str(self.path), "-Y", f"udp.dstport=={self.marker_port}"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if out.stdout.strip():
                return
            time.sleep(0.1)  # polling the pcap for the marker, bounded by the deadline

    def __enter__(self) -> TsharkCapture:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _tshark_fields(
    pcap: Path, decode: list[str], fields: list[str], display_filter: str = ""
) -> list[list[str]]:
    cmd = [TSHARK, "-r", str(pcap)]
    for d in decode:
        cmd += ["-d", d]
    if display_filter:
        cmd += ["-Y", display_filter]
    cmd += ["-T", "fields", "-E", "separator=\t"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.split("\t") for line in out.splitlines() if line.strip()]


def _hex(s: str) -> bytes:
    return bytes.fromhex(s.replace(":", "").strip())


def rtp_packets(pcap: Path, port: int) -> list[RtpPacket]:
    """Every RTP packet to or from UDP ``port`` in the pcap, in capture order."""
    rows = _tshark_fields(
        pcap,
        [f"udp.port=={port},rtp"],
        [
            "rtp.p_type",
            "rtp.seq",
            "rtp.timestamp",
            "rtp.marker",
            "rtp.payload",
            "frame.time_relative",
            "udp.dstport",
        ],
        "rtp",
    )
    out: list[RtpPacket] = []
    for r in rows:
        r += [""] * (7 - len(r))
        if not r[0]:
            continue
        out.append(
            RtpPacket(
                int(r[0]),
                int(r[1] or 0),
                int(r[2] or 0),
                r[3] in ("1", "True"),
                _hex(r[4]),
                float(r[5] or 0),
                int(r[6] or 0),
            )
        )
    return out


def rtp_events(pcap: Path, port: int, pt: int = 101) -> list[RtpEvent]:
    """Every RFC 4733 event packet (payload type ``pt``) to UDP ``port``."""
    decode = [f"udp.port=={port},rtp"]
    if pt != 101:
        decode.append(f"rtp.pt=={pt},rtpevent")
    rows = _tshark_fields(
        pcap,
        decode,
        [
            "rtpevent.event_id",
            "rtpevent.end_of_event",
            "rtpevent.duration",
            "rtp.timestamp",
            "rtp.seq",
            "frame.time_relative",
        ],
        "rtpevent",
    )
    out: list[RtpEvent] = []
    for r in rows:
        if len(r) < 6 or not r[0]:
            continue
        out.append(
            RtpEvent(int(r[0]), r[1] in ("1", "True"), int(r[2]), int(r[3]), int(r[4]), float(r[5]))
        )
    return out


def digits_of(events: list[RtpEvent]) -> list[tuple[str, RtpEvent]]:
    """One (digit, end packet) per event (RFC 4733 repeats the end packet 3 times):
    events are told apart by their RTP timestamp."""
    names = "0123456789*#ABCD"
    seen: dict[int, RtpEvent] = {}
    order: list[int] = []
    for ev in events:
        if ev.timestamp not in seen:
            order.append(ev.timestamp)
            seen[ev.timestamp] = ev
        elif ev.end and (not seen[ev.timestamp].end or ev.duration > seen[ev.timestamp].duration):
            seen[ev.timestamp] = ev
    return [(names[seen[ts].event_id] if seen[ts].event_id < 16 else "?", seen[ts]) for ts in order]


# ------------------------------------------------------------------ audio
def _ulaw_table() -> npt.NDArray[np.int16]:
    table = np.zeros(256, dtype=np.int16)
    for i in range(256):
        u = ~i & 0xFF
        sign = u & 0x80
        exponent = (u >> 4) & 0x07
        mantissa = u & 0x0F
        magnitude = ((mantissa << 3) + 0x84) << exponent
        sample = magnitude - 0x84
        table[i] = -sample if sign else sample
    return table


_ULAW = _ulaw_table()


def ulaw_decode(data: bytes) -> npt.NDArray[np.float64]:
    """G.711 u-law bytes -> samples in [-1, 1)."""
    codes = np.frombuffer(data, dtype=np.uint8)
    return np.asarray(_ULAW[codes], dtype=np.float64) / 32768.0


def goertzel_power(x: npt.NDArray[np.float64], freq: float, rate: int = 8000) -> float:
    """Power of ``x`` at ``freq`` (Goertzel), normalised by length."""
    n = len(x)
    if n == 0:
        return 0.0
    w = 2.0 * np.pi * freq / rate
    coeff = 2.0 * np.cos(w)
    s1 = s2 = 0.0
    for v in x:
        s0 = float(v) + coeff * s1 - s2
        s2, s1 = s1, s0
    return float((s1 * s1 + s2 * s2 - coeff * s1 * s2) / (n * n))


def tone_ratio(
    x: npt.NDArray[np.float64],
    freq: float,
    rate: int = 8000,
    others: tuple[float, ...] = (400.0, 700.0, 1400.0, 1000.0, 1800.0, 2500.0, 3000.0),
) -> float:
    """Goertzel power at ``freq`` over the strongest of the ``others`` (excluding
    ``freq`` itself): > 10 means the tone clearly dominates."""
    p = goertzel_power(x, freq, rate)
    rest = max((goertzel_power(x, f, rate) for f in others if abs(f - freq) > 50), default=0)
    return p / max(rest, 1e-12)


def tone_packets(packets: list[RtpPacket], freq: float, min_share: float = 0.25) -> list[RtpPacket]:
    """The G.711 u-law packets (payload type 0) whose audio is dominated by ``freq``: its
    Goertzel power over the packet's mean square (0.5 for a pure tone, ~0 for other
    audio), with a floor on the level so that silence never counts."""
    out: list[RtpPacket] = []
    for p in packets:
        if p.pt != 0 or not p.payload:
            continue
        x = ulaw_decode(p.payload)
        ms = float(np.mean(x * x))
        if ms > 1e-4 and goertzel_power(x, freq) / ms >= min_share:
            out.append(p)
    return out


# ------------------------------------------------------------------ pcap writing
def write_rtp_pcap(
    path: Path,
    packets: list[tuple[int, int, int, bool, bytes]],
    dst_port: int,
    src_port: int = 40000,
) -> None:
    """Write a pcap (Ethernet/IPv4/UDP) of RTP packets ``(pt, seq, timestamp, marker,
    payload)`` 20 ms apart, 127.0.0.1 -> 127.0.0.1 (for testing the readers)."""
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for i, (pt, seq, ts, marker, payload) in enumerate(packets):
        rtp = (
            struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq, ts, 0x12345678) + payload
        )
        udp = struct.pack("!HHHH", src_port, dst_port, 8 + len(rtp), 0) + rtp
        ip_hdr = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(udp),
            i,
            0,
            64,
            17,
            0,
            bytes([127, 0, 0, 1]),
            bytes([127, 0, 0, 1]),
        )
        csum = 0
        for j in range(0, 20, 2):
            csum += (ip_hdr[j] << 8) + ip_hdr[j + 1]
        while csum >> 16:
            csum = (csum & 0xFFFF) + (csum >> 16)
        ip_hdr = ip_hdr[:10] + struct.pack("!H", ~csum & 0xFFFF) + ip_hdr[12:]
        frame = b"\x00" * 6 + b"\x00" * 6 + b"\x08\x00" + ip_hdr + udp
        t_us = i * 20000
        out += struct.pack("<IIII", t_us // 1_000_000, t_us % 1_000_000, len(frame), len(frame))
        out += frame
    Path(path).write_bytes(bytes(out))


def rewrite_rtp_pt(src: Path, dst: Path, pt: int) -> int:
    """Copy a pcap (Ethernet or Linux cooked / IPv4 / UDP / RTP), setting every RTP
    packet's payload type to ``pt`` (marker bit kept; UDP checksum zeroed). Returns the
    number of packets changed. For SIPp's ``play_pcap_audio`` pcaps, whose telephone-event
    payload type (101) must match the one negotiated in SDP."""
    data = bytearray(Path(src).read_bytes())
    magic = struct.unpack_from("<I", data, 0)[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    l2 = {1: 14, 113: 16, 0: 4, 101: 0}.get(linktype)
    if l2 is None:
        raise ValueError(f"unsupported pcap link type {linktype}")
    off, changed = 24, 0
    while off + 16 <= len(data):
        incl = struct.unpack_from(endian + "I", data, off + 8)[0]
        pkt = off + 16
        ip = pkt + l2
        ihl = (data[ip] & 0x0F) * 4
        if data[ip] >> 4 == 4 and data[ip + 9] == 17:
            udp = ip + ihl
            struct.pack_into("!H", data, udp + 6, 0)
            rtp = udp + 8
            if rtp + 12 <= pkt + incl and data[rtp] >> 6 == 2:
                data[rtp + 1] = (data[rtp + 1] & 0x80) | (pt & 0x7F)
                changed += 1
        off = pkt + incl
    Path(dst).write_bytes(bytes(data))
    return changed


def ulaw_encode(x: npt.NDArray[np.float64]) -> bytes:
    """Samples in [-1, 1) -> G.711 u-law (nearest code, by table search)."""
    order = np.argsort(_ULAW)
    sorted_vals = _ULAW[order].astype(np.float64) / 32768.0
    idx = np.clip(np.searchsorted(sorted_vals, x), 1, 255)
    left, right = sorted_vals[idx - 1], sorted_vals[idx]
    pick = np.where(np.abs(x - left) <= np.abs(right - x), idx - 1, idx)
    return bytes(order[pick].astype(np.uint8))


__all__ = [
    "RtpEvent",
    "RtpPacket",
    "TsharkCapture",
    "digits_of",
    "goertzel_power",
    "rewrite_rtp_pt",
    "rtp_events",
    "rtp_packets",
    "tone_packets",
    "tone_ratio",
    "ulaw_decode",
    "ulaw_encode",
    "write_rtp_pcap",
]
