"""INVITEs as a packet capture sees them: tshark on lo, ``udp dst port`` of a SIPp
carrier, for the length of a run. The kernel's timestamp of each INVITE is when the
node put it on the wire, which SIPp's own log (written when SIPp gets the CPU to read
it) is not on a machine whose 2 cores the node, SIPp and tshark share."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from loadkit.common import SID_HDR


class InviteCapture:
    """``with InviteCapture(port, out) as cap: ...`` then ``cap.times()``: call_sid ->
    epoch seconds of its first INVITE on the wire."""

    def __init__(self, port: int, out: Path) -> None:
        self.port = port
        self.pcap = out / f"sip-{port}-{int(time.time())}.pcap"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> InviteCapture:
        self._proc = subprocess.Popen(
            ["tshark", "-i", "lo", "-q", "-f", f"udp dst port {self.port}", "-w", str(self.pcap)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # tshark says "Capturing on 'Loopback: lo'" once the capture runs
        assert self._proc.stderr is not None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            line = self._proc.stderr.readline()
            if not line or b"Capturing on" in line:
                break
        return self

    def __exit__(self, *_: object) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGINT)  # tshark flushes the file and exits
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)

    def times(self) -> dict[str, float]:
        if not self.pcap.exists():
            return {}
        r = subprocess.run(
            [
                "tshark",
                "-r",
                str(self.pcap),
                "-d",
                f"udp.port=={self.port},sip",
                "-Y",
                'sip.Method == "INVITE"',
                "-T",
                "fields",
                "-E",
                "separator=|",
                "-e",
                "frame.time_epoch",
                "-e",
                "sip.msg_hdr",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        out: dict[str, float] = {}
        want = SID_HDR.lower() + ":"
        for line in r.stdout.splitlines():
            ts, _, hdrs = line.partition("|")
            for h in hdrs.replace("\\r\\n", "\n").splitlines():
                if h.lower().startswith(want):
                    out.setdefault(h.split(":", 1)[1].strip(), float(ts))
        return out


__all__ = ["InviteCapture"]
