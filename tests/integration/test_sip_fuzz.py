"""Hostile SIP against a real `sipbridge run` (issue #10): thousands of mutated messages
over UDP and TCP to every worker while a call is live, and a flood from one source while
good calls go through. No worker may exit; the live call goes on and ends normally; new
calls succeed. Seeded (SIPBRIDGE_FUZZ_SEED to replay), bounded in count and time."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from sipbridge.devtools.bridge import Bridge, Stack, bridge_config, sip_section
from sipbridge.devtools.sipp import SippUas
from tests.sipfuzz import LiveDialog, SipFuzzer

pytestmark = pytest.mark.integration
SEED = int(os.environ.get("SIPBRIDGE_FUZZ_SEED", "20261201"))
# Fuzz sources: 127.0.0.2-3 are in sip.inbound_allow, the others are not. The carriers
# (SIPp) are on 127.0.0.1, so the fuzz doesn't eat into their rate budget.
ALLOWED = ["127.0.0.2/31"]
SOURCES = [f"127.0.0.{i}" for i in range(2, 18)]


def _worker_ports(bridge: Bridge) -> list[int]:
    ports = sorted(
        {int(p) for p in re.findall(r"SIP worker \d+ ready on port (\d+)", bridge.log())}
    )
    assert ports, bridge.log()
    return ports


def _assert_no_worker_died(bridge: Bridge) -> None:
    log = bridge.log()
    bad = [
        ln
        for ln in log.splitlines()
        if re.search(r"SIP worker \d+ exited|Assertion|restarting|Fatal Python", ln)
    ]
    assert not bad, "\n".join(bad[:10])
    assert bridge.proc.poll() is None


def _wait_log(bridge: Bridge, pattern: str, timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while True:
        m = re.search(pattern, bridge.log())
        if m:
            return m
        assert time.monotonic() < deadline, f"no log line {pattern!r} within {timeout}s"
        time.sleep(0.1)


def _live_dialog(carrier: SippUas) -> LiveDialog:
    inv = carrier.wait_for(lambda m: m.direction == "received" and m.method == "INVITE", 10)
    ok = carrier.wait_for(lambda m: m.direction == "sent" and m.status == 200, 10)

    def tag(v: str | None) -> str:
        m = re.search(r";\s*tag=([^;>\s]+)", v or "")
        assert m, v
        return m.group(1)

    return LiveDialog(inv.call_id, tag(inv.header("From")), tag(ok.header("To")))


@pytest.fixture
def fuzz_bridge(stack: Stack) -> Iterator[tuple[Bridge, SippUas]]:
    live = stack.sipp("uas_answer_wait_bye.xml")
    quick = stack.sipp("uas_answer_then_bye.xml")
    cfg = bridge_config(
        stack.tmp,
        trunks=[
            {"name": "live", "address": live.uri_hostport, "caller_id": "+14155550100"},
            {"name": "quick", "address": quick.uri_hostport, "caller_id": "+14155550100"},
        ],
        routes=[{"prefix": "+1212", "trunk": "live"}, {"prefix": "+1213", "trunk": "quick"}],
        sip=sip_section(inbound_allow=ALLOWED),
    )
    yield stack.bridge(cfg), live


def _send_tcp(src: str, port: int, messages: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(src, 0)) as s:
        for m in messages:
            s.sendall(m)


def _place_good_call(bridge: Bridge, number: str, timeout: float = 20) -> dict[str, Any]:
    body = bridge.wait_terminal(bridge.trigger(to_number=number), timeout)
    assert (body["status"], body["reason"]) == ("success", ""), body
    return body


def test_mutated_sip_to_every_worker_kills_none(fuzz_bridge: tuple[Bridge, SippUas]) -> None:
    bridge, live_carrier = fuzz_bridge
    ports = _worker_ports(bridge)
    # a call placed by each worker first (the original crash needed one), then one live
    for i in range(len(ports)):
        _place_good_call(bridge, f"+1213555010{i}")
    live_sid = bridge.trigger(to_number="+12125550100")
    bridge.wait_event(live_sid, "carrier.answered", 15)
    live = _live_dialog(live_carrier)
    sent = {"udp": 0, "tcp": 0}
    started = time.monotonic()
    with ExitStack() as es:
        socks = {
            ip: es.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) for ip in SOURCES
        }
        for s_ip, s in socks.items():
            s.bind((s_ip, 0))
            s.setblocking(False)
        for w, port in enumerate(ports):
            fz = SipFuzzer(
                SEED + w, target=f"127.0.0.1:{port}", live=[live], source=f"127.0.0.2:{5990 + w}"
            )
            for n in range(2500):
                ip = SOURCES[n % len(SOURCES)]
                try:
                    socks[ip].sendto(fz.message("udp"), ("127.0.0.1", port))
                    sent["udp"] += 1
                except BlockingIOError:
                    pass
                if n % 200 == 199:
                    time.sleep(0.1)  # ~1000 messages/s per worker: above some sources' limit
            for c in range(60):  # TCP: connections carrying a few messages each
                ip = SOURCES[c % len(SOURCES)]
                msgs = [fz.message("tcp") for _ in range(fz.rng.randint(1, 6))]
                try:
                    _send_tcp(ip, port, msgs)
                    sent["tcp"] += len(msgs)
                except OSError:
                    pass  # refused or reset by the worker: allowed, dying is not
    elapsed = time.monotonic() - started
    assert sent["udp"] >= 4000 and sent["tcp"] >= 200, sent
    assert elapsed < 60, elapsed
    _wait_log(bridge, r"SIP packet guard dropped or refused: .*malformed=\d+", 15)
    _assert_no_worker_died(bridge)
    # the live call was not touched: still up, then ends as asked
    assert bridge.status(live_sid)["status"] not in ("success", "failure")
    assert bridge.client.post(f"/v1/outbound-calling/{live_sid}/hangup").status_code == 200
    body = bridge.wait_terminal(live_sid)
    assert (body["status"], body["reason"]) == ("success", "hung up by API"), body
    live_carrier.wait_for(
        lambda m: m.direction == "received" and m.method == "BYE" and m.call_id == live.call_id, 10
    )
    for i in range(len(ports)):  # and every worker still places calls
        _place_good_call(bridge, f"+1213555020{i}")
    _assert_no_worker_died(bridge)


def test_flood_from_one_source_does_not_starve_good_calls(
    fuzz_bridge: tuple[Bridge, SippUas],
) -> None:
    bridge, _ = fuzz_bridge
    ports = _worker_ports(bridge)
    fz = SipFuzzer(SEED + 100, target=f"127.0.0.1:{ports[0]}")
    corpus = [fz.message("udp") for _ in range(500)]
    flooded = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.66", 0))
        s.setblocking(False)
        sids: list[str] = []
        deadline = time.monotonic() + 8.0
        next_call = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            for port in ports:
                for _ in range(25):
                    try:
                        s.sendto(corpus[flooded % len(corpus)], ("127.0.0.1", port))
                        flooded += 1
                    except BlockingIOError:
                        break
            if time.monotonic() >= next_call and len(sids) < 6:
                sids.append(bridge.trigger(to_number=f"+121355503{len(sids):02d}"))
                next_call = time.monotonic() + 1.0
            time.sleep(0.002)
        for sid in sids:
            body = bridge.wait_terminal(sid, 30)
            assert (body["status"], body["reason"]) == ("success", ""), body
    assert len(sids) == 6
    assert flooded >= 20000, flooded
    m = _wait_log(bridge, r"SIP packet guard dropped or refused: .*rate=(\d+)", 15)
    assert int(m.group(1)) > flooded / len(ports) / 4, (m.group(0), flooded)
    _assert_no_worker_died(bridge)


def test_tcp_connection_churn_kills_no_worker(fuzz_bridge: tuple[Bridge, SippUas]) -> None:
    """Connections opened and closed faster than pjlib frees ioqueue keys (500 ms) used to
    abort a worker (``ioqueue free_list`` assertion) without a byte of SIP."""
    bridge, _ = fuzz_bridge
    ports = _worker_ports(bridge)
    for i in range(len(ports)):
        _place_good_call(bridge, f"+1213555040{i}")
    attempts = 0
    for _ in range(4):
        for port in ports:
            socks = []
            for n in range(100):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind((SOURCES[n % len(SOURCES)], 0))
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                socks.append(s)
                attempts += 1
            time.sleep(0.05)  # let the handshakes the worker allows complete
            for s in socks:
                s.close()
    assert attempts == 400 * len(ports)
    _wait_log(bridge, r"SIP packet guard dropped or refused: .*tcp_gate_closed=\d+", 15)
    _assert_no_worker_died(bridge)
    for i in range(len(ports)):
        _place_good_call(bridge, f"+1213555050{i}")
    _assert_no_worker_died(bridge)
