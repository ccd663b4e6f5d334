"""OPTIONS health checks through a real `sipbridge run`: a trunk whose peer stops
answering OPTIONS is marked down (/readyz detail, sipbridge_trunk_up 0) and hunting skips
it; when the peer answers again it is marked up. The peer is a UDP SIP responder on
loopback written here (it answers OPTIONS 200 when told to, and records what it got);
the second trunk is a SIPp carrier."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from sipbridge.devtools.bridge import Bridge, Stack, bridge_config

pytestmark = pytest.mark.integration


class OptionsPeer:
    """Receives SIP over UDP on 127.0.0.1; answers OPTIONS with 200 while ``answer``."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.answer = False
        self.received: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            text = data.decode("utf-8", "replace")
            self.received.append(text)
            if text.startswith("OPTIONS ") and self.answer:
                head = text.split("\r\n\r\n", 1)[0].split("\r\n")[1:]
                keep = [
                    h
                    for h in head
                    if h.split(":", 1)[0].lower() in ("via", "from", "to", "call-id", "cseq")
                ]
                reply = "\r\n".join(["SIP/2.0 200 OK", *keep, "Content-Length: 0", "", ""])
                self.sock.sendto(reply.encode(), addr)

    def methods(self) -> list[str]:
        return [m.split(" ", 1)[0] for m in self.received]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _wait(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)  # polling the bridge's HTTP API, bounded by the timeout


def _trunk_up(bridge: Bridge, name: str) -> float | None:
    text = bridge.client.get("/metrics").text
    m = re.search(rf'^sipbridge_trunk_up\{{trunk="{name}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def test_trunk_marked_down_skipped_by_hunting_then_up(stack: Stack) -> None:
    peer = OptionsPeer()
    stack.add(peer, peer.stop)
    backup = stack.sipp("uas_busy.xml")
    hc = {"interval_s": 1, "timeout_s": 0.5, "failures_to_down": 2, "successes_to_up": 2}
    bridge = stack.bridge(
        bridge_config(
            stack.tmp,
            trunks=[
                {
                    "name": "primary",
                    "address": f"127.0.0.1:{peer.port}",
                    "caller_id": "+14155550100",
                    "health_check": hc,
                },
                {"name": "backup", "address": backup.uri_hostport, "caller_id": "+14155550100"},
            ],
            routes=[
                {
                    "prefix": "+1",
                    "trunks": [
                        {"name": "primary", "priority": 0},
                        {"name": "backup", "priority": 1},
                    ],
                }
            ],
        )
    )
    ready = _wait(
        lambda: (
            (r := bridge.client.get("/readyz").json())["trunks"]["primary"].startswith("down") and r
        ),
        10,
        "primary marked down",
    )
    assert ready["status"] == "ok"  # backup is up: the bridge can still place calls
    assert ready["trunks"] == {"primary": "down: OPTIONS not answered", "backup": "up"}
    assert _trunk_up(bridge, "primary") == 0 and _trunk_up(bridge, "backup") == 1
    assert peer.methods().count("OPTIONS") >= 2
    sid = bridge.trigger(to_number="+12125550123")
    body = bridge.wait_terminal(sid, timeout=20)
    assert body["status"] == "failure" and body["sip_status"] == 486, body  # backup: busy
    assert len(backup.received("INVITE")) == 1
    assert "INVITE" not in peer.methods()  # hunting skipped the down trunk
    peer.answer = True
    _wait(
        lambda: bridge.client.get("/readyz").json()["trunks"]["primary"] == "up",
        10,
        "primary marked up",
    )
    assert _trunk_up(bridge, "primary") == 1
    sid = bridge.trigger(to_number="+12125550123")
    _wait(lambda: "INVITE" in peer.methods(), 10, "INVITE to the primary again")
    options = next(m for m in peer.received if m.startswith("OPTIONS "))
    assert options.startswith(f"OPTIONS sip:127.0.0.1:{peer.port} SIP/2.0\r\n")
    assert ";rport" in options and "CSeq: 1 OPTIONS" in options
