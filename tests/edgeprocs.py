"""Edge processes for tests: Kamailio and rtpengine started from generated files in a
temp folder, on loopback, stopped by the test. Also the carrier's TLS side: a second
Kamailio terminating TLS in front of a SIPp UAS (this SIPp has no TLS).

Addresses: nodes and the agent platform on 127.0.0.1 (the edge's inside), the edge's
public address 127.0.0.2, the carrier on 127.0.0.3, so captures and logs tell the sides
apart by address.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from sipbridge.devtools.ports import free_port

INSIDE, PUBLIC, CARRIER = "127.0.0.1", "127.0.0.2", "127.0.0.3"
KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
RTPENGINE = shutil.which("rtpengine") or "/usr/bin/rtpengine"


def need_edge_tools() -> None:
    for tool in (KAMAILIO, RTPENGINE):
        if not Path(tool).exists():
            pytest.skip(f"{tool} is not installed (scripts/install)")


def _listening(port: int, address: str, proto: str) -> bool:
    """Whether ``address:port`` is bound (udp) or listening (tcp), from /proc/net."""
    want = "".join(f"{int(b):02X}" for b in reversed(address.split("."))) + f":{port:04X}"
    table = "/proc/net/tcp" if proto == "tcp" else "/proc/net/udp"
    for line in Path(table).read_text().splitlines()[1:]:
        cols = line.split()
        if cols[1] == want and (proto == "udp" or cols[3] == "0A"):
            return True
    return False


class Proc:
    """A daemon in the foreground, logging to ``log``; :meth:`start` waits until every
    ``(address, port, proto)`` in ``sockets`` is open."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        log: Path,
        sockets: list[tuple[str, int, str]],
        ready: str = "",
    ) -> None:
        self.name, self.cmd, self.log, self.sockets = name, cmd, log, sockets
        self.ready = ready  # a log line that says the daemon is up
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> Proc:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not all(_listening(p, a, k) for a, p, k in self.sockets):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start:\n{self.text()[-3000:]}")
            time.sleep(0.05)  # polling sockets another process opens
        if self.ready:
            self.wait_log(self.ready, timeout)
        return self

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, needle: str, timeout: float = 10.0, after: int = 0) -> str:
        """Wait until the log (from offset ``after``) holds ``needle``; return the line."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()[after:]
            for line in text.splitlines():
                if needle in line:
                    return line
            if time.monotonic() > deadline or (self.proc and self.proc.poll() is not None):
                raise AssertionError(
                    f"{self.name}: no {needle!r} in the log within {timeout} s:\n{text[-3000:]}"
                )
            time.sleep(0.05)  # the log is a file: poll it

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        import os
        import signal

        try:  # kamailio forks children: signal the whole group it leads
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(5)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            with __import__("contextlib").suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def kamailio(cfg: Path, log: Path, sockets: list[tuple[str, int, str]]) -> Proc:
    run = cfg.parent / f"run-{cfg.stem}"
    run.mkdir(exist_ok=True)
    cmd = [
        KAMAILIO,
        "-f",
        str(cfg),
        "-DD",
        "-E",
        "-m",
        "64",
        "-M",
        "8",
        "-Y",
        str(run),
        "-w",
        str(run),
    ]
    return Proc(f"kamailio {cfg.name}", cmd, log, sockets, ready="edge: ready")


def rtpengine(conf: Path, log: Path, control_port: int) -> Proc:
    cmd = [
        RTPENGINE,
        f"--config-file={conf}",
        "--config-section=rtpengine",
        "--foreground",
        "--log-stderr",
        f"--pidfile={conf.parent / 'rtpengine.pid'}",
    ]
    return Proc("rtpengine", cmd, log, [("127.0.0.1", control_port, "udp")])


def free_ports(n: int, address: str, kinds: tuple[int, ...] = (socket.SOCK_DGRAM,)) -> list[int]:
    """``n`` distinct ports free on ``address`` for every socket kind in ``kinds``."""
    out: list[int] = []
    while len(out) < n:
        p = free_port(kinds[0], address)
        ok = p not in out
        for kind in kinds[1:]:
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind((address, p))
                except OSError:
                    ok = False
        if ok:
            out.append(p)
    return out


CARRIER_TLS_CFG = r"""#!KAMAILIO
# Test carrier's TLS side: terminate TLS on @@TLS@@ and proxy to a SIPp UAS over UDP.
debug=2
log_stderror=yes
children=2
tcp_children=2
auto_aliases=no
enable_tls=yes
listen=tls:@@TLS@@
listen=udp:@@UDP@@
loadmodule "tls.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "siputils.so"
loadmodule "textops.so"
modparam("tls", "config", "@@TLSCFG@@")
modparam("rr", "enable_double_rr", 1)

event_route[core:worker-one-init] {
    xlog("L_NOTICE", "edge: ready\n");
}

request_route {
    xlog("L_INFO", "carrier-tls: $rm $ru from $si:$sp over $pr\n");
    if (is_method("CANCEL")) {
        if (t_check_trans()) { t_relay(); }
        exit;
    }
    if (has_totag()) {
        if (loose_route()) { t_relay(); exit; }
        if (is_method("ACK") && t_check_trans()) { t_relay(); }
        exit;
    }
    if (is_method("OPTIONS")) { sl_send_reply("200", "OK"); exit; }
    record_route();
    $du = "sip:@@UAS@@";
    t_relay();
}
"""


def carrier_tls(dir_: Path, cert: Path, key: Path, uas_port: int) -> tuple[Proc, int]:
    """The carrier's TLS side in front of a SIPp UAS on ``CARRIER:uas_port``; returns the
    process (not started) and its TLS port."""
    tls_port, udp_port = free_ports(1, CARRIER, (socket.SOCK_STREAM,))[0], free_ports(1, CARRIER)[0]
    tls_cfg = dir_ / "carrier-tls.cfg"
    tls_cfg.write_text(
        f"[server:default]\nmethod = TLSv1.2+\ncertificate = {cert}\n"
        f"private_key = {key}\nverify_certificate = no\n"
        "require_certificate = no\n\n[client:default]\n"
        "verify_certificate = no\nrequire_certificate = no\n"
    )
    cfg = dir_ / "carrier-kamailio.cfg"
    cfg.write_text(
        CARRIER_TLS_CFG.replace("@@TLS@@", f"{CARRIER}:{tls_port}")
        .replace("@@UDP@@", f"{CARRIER}:{udp_port}")
        .replace("@@TLSCFG@@", str(tls_cfg))
        .replace("@@UAS@@", f"{CARRIER}:{uas_port}")
    )
    proc = kamailio(
        cfg, dir_ / "carrier-kamailio.log", [(CARRIER, tls_port, "tcp"), (CARRIER, udp_port, "udp")]
    )
    return proc, tls_port
