"""SIPp test harness: run a SIPp UAS scenario on loopback and read what it saw.

Usage::

    with SippUas("uas_busy.xml", tmp_path) as uas:      # or uas = SippUas(...).start()
        plan = make_plan(f"sip:+15551234567@{uas.address}:{uas.port}")
        ...
        invite = uas.wait_for(lambda m: m.method == "INVITE" and m.direction == "received", 5)
        assert invite.header("X-Foo") == "bar"
    # uas.stop() is idempotent; logs stay in tmp_path/sipp-<n>/

Every message SIPp sends or receives is in ``-message_file``; :meth:`SippUas.messages`
parses it into :class:`SipMessage` objects (first line, case-insensitive headers, body).

Scenarios are looked up by name in :data:`SCENARIOS` (this package's ``scenarios/``, shared
by the integration tests, ``bench/load.py``, ``scripts/demo.py`` and the Docker ``sipp``
image); ``*.xml.in`` templates are filled in by :func:`render_scenario`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sipbridge.devtools.ports import ADDRESS, free_even_port_pair, free_port

SCENARIOS = Path(__file__).parent / "scenarios"

# SIPp -trace_msg separators, e.g.
#   "----------------------------------------------- 2024-01-01 10:00:00.123456"
#   "UDP message received [812] bytes :"  /  "UDP message sent (812 bytes):"
_SEP_RE = re.compile(r"^-{20,} (.*)$", re.M)
_DIR_RE = re.compile(r"^\s*(\w+) message (received|sent)\b.*$", re.M)

# Compact header forms (RFC 3261 7.3.3) -> full names, for lookups.
_COMPACT = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
}


@dataclass
class SipMessage:
    """One SIP message as logged by SIPp."""

    direction: str  # "received" or "sent" (from SIPp's point of view)
    first_line: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: str = ""
    # When SIPp logged it (time.time() scale; SIPp writes local time), None if unknown.
    ts: float | None = None

    @property
    def is_request(self) -> bool:
        return not self.first_line.startswith("SIP/2.0")

    @property
    def method(self) -> str:
        """Request method, or the CSeq method for a response."""
        if self.is_request:
            return self.first_line.split(" ", 1)[0]
        cseq = self.header("CSeq") or ""
        return cseq.split()[-1] if cseq else ""

    @property
    def request_uri(self) -> str:
        return self.first_line.split(" ")[1] if self.is_request else ""

    @property
    def status(self) -> int | None:
        return None if self.is_request else int(self.first_line.split(" ")[1])

    @property
    def call_id(self) -> str:
        return self.header("Call-ID") or ""

    def header(self, name: str) -> str | None:
        """First value of a header (case-insensitive, compact forms understood)."""
        vals = self.header_all(name)
        return vals[0] if vals else None

    def header_all(self, name: str) -> list[str]:
        key = _COMPACT.get(name.lower(), name.lower())
        return [v for n, v in self.headers if _COMPACT.get(n.lower(), n.lower()) == key]

    @property
    def header_dict(self) -> dict[str, str]:
        """Headers by lower-case full name (first occurrence wins)."""
        out: dict[str, str] = {}
        for n, v in self.headers:
            out.setdefault(_COMPACT.get(n.lower(), n.lower()), v)
        return out

    def __str__(self) -> str:
        return f"<{self.direction} {self.first_line} ({self.call_id})>"


def _stamp(text: str) -> float | None:
    try:
        return datetime.strptime(text.strip(), "%Y-%m-%d %H:%M:%S.%f").timestamp()
    except ValueError:
        return None


def parse_message_log(text: str) -> list[SipMessage]:
    """Parse a SIPp ``-trace_msg`` file into messages."""
    msgs: list[SipMessage] = []
    parts = _SEP_RE.split(text)  # [before, stamp, chunk, stamp, chunk, ...]
    for stamp, chunk in zip(parts[1::2], parts[2::2], strict=True):
        m = _DIR_RE.search(chunk)
        if not m:
            continue
        raw = chunk[m.end() :].lstrip("\r\n")
        raw = raw.replace("\r\n", "\n")
        head, _, body = raw.partition("\n\n")
        lines = [ln for ln in head.split("\n")]
        while lines and not lines[0].strip():
            lines.pop(0)
        if not lines:
            continue
        hdrs: list[tuple[str, str]] = []
        for ln in lines[1:]:
            if not ln.strip():
                continue
            if ln[0] in " \t" and hdrs:  # folded line (RFC 3261 7.3.1)
                n, v = hdrs[-1]
                hdrs[-1] = (n, v + " " + ln.strip())
                continue
            n, _, v = ln.partition(":")
            hdrs.append((n.strip(), v.strip()))
        msgs.append(SipMessage(m.group(2), lines[0].strip(), hdrs, body.strip("\n"), _stamp(stamp)))
    return msgs


# SippUas(transport=...) -> SIPp's -t mode (one socket for all calls).
_SIPP_TRANSPORTS = {"udp": "u1", "tcp": "t1"}


class SippUas:
    """A SIPp UAS process on 127.0.0.1 with free SIP (UDP, or TCP) and media ports.

    ``transport="tcp"`` runs SIPp with ``-t t1`` (one TCP listener). This SIPp build has
    no TLS (``-t l1`` needs SIPp compiled with OpenSSL). ``port`` fixes the SIP port (for
    scenarios whose parameters depend on it); by default a free one is picked.
    """

    _counter = 0

    def __init__(
        self,
        scenario: str | Path,
        log_dir: Path,
        extra_args: list[str] | None = None,
        address: str = ADDRESS,
        transport: str = "udp",
        port: int = 0,
    ) -> None:
        if transport not in _SIPP_TRANSPORTS:
            raise ValueError(f"transport must be one of {sorted(_SIPP_TRANSPORTS)}")
        self.transport = transport
        path = Path(scenario)
        if not path.is_absolute() and not path.exists():
            path = SCENARIOS / path
        if not path.exists():
            raise FileNotFoundError(path)
        self.scenario = path
        SippUas._counter += 1
        self.log_dir = Path(log_dir) / f"sipp-{SippUas._counter}-{path.stem}"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.address = address
        self.extra_args = list(extra_args or [])
        self.fixed_port = port  # 0: a free port per start attempt
        self.port = 0
        self.media_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def message_file(self) -> Path:
        return self.log_dir / "messages.log"

    @property
    def error_file(self) -> Path:
        return self.log_dir / "errors.log"

    @property
    def uri_hostport(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self, attempts: int = 5) -> SippUas:
        """Start SIPp; retry on a lost port race. Returns self."""
        last = ""
        for _ in range(attempts):
            kind = socket.SOCK_STREAM if self.transport == "tcp" else socket.SOCK_DGRAM
            self.port = self.fixed_port or free_port(kind)
            self.media_port = free_even_port_pair()
            cmd = [
                "sipp",
                "-sf", str(self.scenario),
                "-i", self.address,
                "-p", str(self.port),
                "-mi", self.address,
                "-mp", str(self.media_port),
                "-t", _SIPP_TRANSPORTS[self.transport],
                "-trace_msg", "-message_file", str(self.message_file),
                "-trace_err", "-error_file", str(self.error_file),
                "-nostdin",
                "-max_recv_loops", "10000",
                *self.extra_args,
            ]  # fmt: skip
            (self.log_dir / "cmd.txt").write_text(" ".join(cmd) + "\n")
            out = open(self.log_dir / "stdout.log", "ab")  # noqa: SIM115 - kept by Popen
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
            out.close()
            if self._wait_listening(5.0):
                return self
            last = self._read(self.log_dir / "stdout.log")[-2000:]
            self.stop()
        raise RuntimeError(f"SIPp did not start ({self.scenario.name}): {last}")

    def _wait_listening(self, timeout: float) -> bool:
        """Wait until SIPp's port shows up in /proc/net/udp (tcp: listening) or SIPp exited.

        Probing with bind() would race SIPp's own bind, so read the kernel's table.
        """
        want = f":{self.port:04X} "
        tcp = self.transport == "tcp"
        tables = ("/proc/net/tcp", "/proc/net/tcp6") if tcp else ("/proc/net/udp", "/proc/net/udp6")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            for table in tables:
                for line in self._read(Path(table)).splitlines()[1:]:
                    cols = line.split()
                    local = cols[1] + " " if len(cols) > 1 else ""
                    # TCP: state 0A is LISTEN.
                    if (
                        local.endswith(want)
                        and (not tcp or (len(cols) > 3 and cols[3] == "0A"))
                        and len(cols) > 9
                        and self._owns_socket(cols[9])
                    ):
                        return True
            time.sleep(0.02)  # polling for a bind by another process
        return False

    def _owns_socket(self, inode: str) -> bool:
        """The socket with this inode is SIPp's own: a port held by another process shows
        in the same table while SIPp fails to bind it ("Address already in use")."""
        assert self.proc is not None
        fd_dir = Path(f"/proc/{self.proc.pid}/fd")
        try:
            links = [os.readlink(fd_dir / fd) for fd in os.listdir(fd_dir)]
        except OSError:  # exited meanwhile
            return False
        return f"socket:[{inode}]" in links

    @staticmethod
    def _read(p: Path) -> str:
        try:
            return p.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def messages(self) -> list[SipMessage]:
        """Every SIP message SIPp has logged so far (received and sent), in order."""
        return parse_message_log(self._read(self.message_file))

    def received(self, method: str | None = None) -> list[SipMessage]:
        """Requests/responses SIPp received (optionally only requests of ``method``)."""
        return [
            m
            for m in self.messages()
            if m.direction == "received"
            and (method is None or (m.is_request and m.method == method))
        ]

    def _match(self, predicate: Callable[[SipMessage], bool]) -> SipMessage | None:
        return next((m for m in self.messages() if predicate(m)), None)

    def _not_seen(self, timeout: float) -> TimeoutError:
        return TimeoutError(
            f"no matching SIP message within {timeout} s; SIPp saw: "
            + ", ".join(str(m) for m in self.messages())
        )

    def wait_for(self, predicate: Callable[[SipMessage], bool], timeout: float = 5.0) -> SipMessage:
        """Poll the message log until a message matches; return it or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        while (m := self._match(predicate)) is None:
            if time.monotonic() >= deadline:
                raise self._not_seen(timeout)
            time.sleep(0.02)  # the log is a file: poll it
        return m

    def wait_request(self, method: str, call_id: str, timeout: float = 5.0) -> SipMessage:
        """Wait until SIPp receives a ``method`` request in the dialog ``call_id``."""
        return self.wait_for(
            lambda m: (
                m.direction == "received"
                and m.is_request
                and m.method == method
                and m.call_id == call_id
            ),
            timeout,
        )

    async def async_wait_for(
        self, predicate: Callable[[SipMessage], bool], timeout: float = 5.0
    ) -> SipMessage:
        """Like :meth:`wait_for`, without blocking the event loop."""
        deadline = time.monotonic() + timeout
        while (m := self._match(predicate)) is None:
            if time.monotonic() >= deadline:
                raise self._not_seen(timeout)
            await asyncio.sleep(0.02)
        return m

    def stop(self) -> None:
        """Stop SIPp (SIGTERM, then SIGKILL). Idempotent."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(3)
        self.proc = None

    def __enter__(self) -> SippUas:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc is not None and self.proc.poll() is None:
                os.kill(self.proc.pid, 9)


def render_scenario(template: str, out: Path, **subst: str) -> Path:
    """Write ``out``: the scenario ``template`` (a name in :data:`SCENARIOS`, usually an
    ``.xml.in``) with every ``@KEY@`` replaced by ``subst[KEY]``; return ``out``."""
    text = (SCENARIOS / template).read_text()
    for key, value in subst.items():
        if f"@{key}@" not in text:
            raise KeyError(f"{template} has no @{key}@")
        text = text.replace(f"@{key}@", value)
    out.write_text(text)
    return out


def ulaw_wav(src: Path, dst: Path, *effects: str) -> Path:
    """``src`` as an 8 kHz mono G.711 u-law WAV (what SIPp's ``rtp_stream`` plays as
    payload type 0), through sox with optional ``effects`` (e.g. ``"pad", "1.0", "0"``)."""
    subprocess.run(
        ["sox", str(src), "-r", "8000", "-c", "1", "-e", "u-law", str(dst), *effects],
        check=True,
        capture_output=True,
    )
    return dst
