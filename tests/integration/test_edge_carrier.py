"""The edge (Kamailio + rtpengine from `sipbridge edge-config`) between real bridges and
SIPp carriers, for what a carrier network does to calls: node failover only on 408/5xx,
the per-trunk CPS backstop, OPTIONS health checks through the edge, digest auth
through the edge. Addresses: nodes and agent 127.0.0.1, edge public 127.0.0.2, carriers
127.0.0.3 (tests/edgeprocs.py)."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from sipbridge.devtools.bridge import Bridge, Stack
from sipbridge.devtools.sipp import SippUas, render_scenario
from tests.edgeprocs import CARRIER, INSIDE, PUBLIC, free_ports
from tests.integration.edgeharness import (
    Edge,
    agent_uac,
    bridge_with_edge,
    finals,
    handled,
    invites,
    make_edge,
    start_nodes,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def edge(stack: Stack) -> Edge:
    return make_edge(stack)


def carrier(edge: Edge, scenario: Any, extra: list[str] | None = None, port: int = 0) -> SippUas:
    uas = SippUas(scenario, edge.stack.tmp, extra_args=extra, address=CARRIER, port=port)
    return edge.stack.add(uas.start(), uas.stop)


def trunk(name: str, uas: SippUas | str, **extra: Any) -> dict[str, Any]:
    address = uas if isinstance(uas, str) else uas.uri_hostport
    return {"name": name, "address": address, "caller_id": "+14155550100", **extra}


def wait(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)  # polling an HTTP API or a log file, bounded by the timeout
    return got


# ------------------------------------------------------------------ node failover


def test_node_failover_on_503_never_on_486_or_603(edge: Edge) -> None:
    """Node A's carriers answer 486, 603 or 503 (relayed by the real bridge as the SIP-
    triggered INVITE's answer: sipbridge.calls.inbound.inbound_status); node B's carrier
    answers. Round robin alternates the nodes, so each batch of two INVITEs sends one to
    A first. 503: the edge retries that INVITE on B. 486/603: the agent gets it, B never
    sees the INVITE."""
    busy = carrier(edge, "uas_busy.xml")
    decline = carrier(
        edge,
        render_scenario(
            "uas_reject_then_answer.xml.in",
            edge.stack.tmp / "decline.xml",
            STATUS_LINE="603 Decline",
        ),
    )
    unavailable = carrier(edge, "uas_unavailable.xml")
    ok = carrier(edge, "uas_answer_wait_bye.xml")
    trunks = [
        trunk("busy", busy),
        trunk("decline", decline),
        trunk("unavail", unavailable),
        trunk("ok", ok),
    ]
    node_a = [
        {"prefix": "+1212", "trunk": "busy"},
        {"prefix": "+1213", "trunk": "decline"},
        {"prefix": "+1214", "trunk": "unavail"},
    ]
    node_b = [{"prefix": "+1", "trunk": "ok"}]
    # probes tolerant of a loaded machine: a port skipped by round robin breaks the test
    a, b = start_nodes(edge, trunks, [node_a, node_b], probe_failures=2, node_timeout_s=3.0)
    assert edge.kam is not None

    def batch(tag: str, number: str) -> dict[int, int]:
        uac = agent_uac(edge, 2, tag, number=number)
        assert uac.proc is not None
        uac.proc.wait(40)
        got = finals(uac)
        assert sorted(got) == [1, 2], got
        return got

    for tag, number, code, uas in (
        ("busy", "+12125550101", 486, busy),
        ("decline", "+12135550102", 603, decline),
    ):
        got = batch(tag, number)
        # one INVITE went to A (the callee's answer, relayed as it is), one to B
        refused = [n for n, st in got.items() if st == code]
        assert len(refused) == 1 and sorted(got.values()) == sorted([code, 200]), got
        n = refused[0]
        assert handled(a, f"{tag}-{n}") and not handled(b, f"{tag}-{n}"), (tag, n)
        assert len(invites(uas)) == 1
    got = batch("unavail", "+12145550103")
    assert got == {1: 200, 2: 200}, got  # the 503 of A was retried on B
    assert all(handled(b, f"unavail-{n}") for n in (1, 2))
    assert len(invites(unavailable)) == 1  # A tried once; its 503 made the edge move on
    # B's carrier got every call answered: 1 + 1 + 2, each a whole dialog through the
    # edge (the agent hung up: BYE)
    assert len(invites(ok)) == 4
    wait(lambda: len(ok.received("BYE")) == 4, 10, "a BYE for each answered call")
    assert len(invites(busy)) == 1 and len(invites(decline)) == 1


# ------------------------------------------------------------------ CPS backstop


def test_cps_backstop_refuses_the_excess_at_the_edge(edge: Edge) -> None:
    """A SIPp UAC stands in for a node (a bridge never exceeds its own trunk CPS; the
    backstop is for several nodes sharing a trunk): 12 INVITEs for a trunk with cps 2,
    at 40 a second. The edge lets at most 2 per 1 s interval through (pipelimit) and
    answers the rest itself: 503 "Trunk CPS limit at the edge", Retry-After: 1."""
    busy = carrier(edge, "uas_busy.xml")
    bridge_with_edge(edge, [trunk("capped", busy, cps=2)])  # generates and starts the edge
    scen = render_scenario(
        "uac_node_invite.xml.in", edge.stack.tmp / "node_invite.xml", TRUNK="capped"
    )
    total = 12
    node = SippUas(
        scen,
        edge.stack.tmp,
        extra_args=[f"{INSIDE}:{edge.inside_port}", "-m", str(total), "-r", "40"],
    )
    edge.stack.add(node.start(), node.stop)
    assert node.proc is not None
    node.proc.wait(30)
    answers = [
        m
        for m in node.received()
        if not m.is_request and m.method == "INVITE" and (m.status or 0) >= 200
    ]
    by_call = {m.call_id: m for m in answers}
    assert len(by_call) == total, [str(m) for m in answers]
    refused = [m for m in by_call.values() if m.status == 503]
    passed = [m for m in by_call.values() if m.status == 486]  # the carrier's answer
    assert len(refused) + len(passed) == total
    assert all(m.first_line == "SIP/2.0 503 Trunk CPS limit at the edge" for m in refused)
    assert all(m.header("Retry-After") == "1" for m in refused)
    # 2 per 1 s interval of the pipe: a burst spanning S seconds touches at most
    # floor(S) + 2 intervals (12 INVITEs at 40/s: ~0.3 s, so at most 4 pass)
    first_sent: dict[str, float] = {}  # Call-ID -> when SIPp sent its INVITE
    for m in node.messages():
        if m.direction == "sent" and m.is_request and m.method == "INVITE" and m.ts:
            first_sent.setdefault(m.call_id, m.ts)
    stamps = list(first_sent.values())
    assert len(stamps) == total, first_sent
    most = 2 * (int(max(stamps) - min(stamps)) + 2)
    on_wire = invites(busy)
    assert 1 <= len(on_wire) <= most and len(on_wire) == len(passed), (len(on_wire), most)
    assert len(refused) >= total - most
    assert {m.call_id for m in on_wire}.isdisjoint(
        {m.call_id for m in refused}
    )  # topoh keeps Call-IDs; a refused call never reached the carrier


# ------------------------------------------------------------------ OPTIONS health


def _options_carrier(edge: Edge, port: int, answer: bool) -> SippUas:
    reply = (
        """  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag02[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>"""
        if answer
        else '  <pause milliseconds="1"/>'
    )
    mode = "answered" if answer else "silent"
    scen = render_scenario(
        "uas_options_busy.xml.in",
        edge.stack.tmp / f"options_{mode}.xml",
        OPTIONS_MODE=mode,
        OPTIONS_REPLY=reply,
    )
    return carrier(edge, scen, port=port)


def _trunk_up(bridge: Bridge, name: str) -> float | None:
    text = bridge.client.get("/metrics").text
    m = re.search(rf'^sipbridge_trunk_up\{{trunk="{name}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def _readyz(bridge: Bridge, name: str) -> str:
    return str(bridge.client.get("/readyz").json()["trunks"][name])


def test_options_health_checks_through_the_edge(edge: Edge) -> None:
    (port,) = free_ports(1, CARRIER)
    primary = _options_carrier(edge, port, answer=True)
    backup = carrier(edge, "uas_busy.xml")
    hc = {"interval_s": 1, "timeout_s": 0.8, "failures_to_down": 2, "successes_to_up": 2}
    routes = [
        {
            "prefix": "+1",
            "trunks": [{"name": "primary", "priority": 0}, {"name": "backup", "priority": 1}],
        }
    ]
    bridge = bridge_with_edge(
        edge,
        [trunk("primary", f"{CARRIER}:{port}", health_check=hc), trunk("backup", backup)],
        routes=routes,
    )
    # the probes reach the carrier through the edge: from the edge's public address,
    # the nodes' address hidden
    opt = primary.wait_for(lambda m: m.direction == "received" and m.method == "OPTIONS", 10)
    raw = opt.first_line + "\n" + "\n".join(f"{n}: {v}" for n, v in opt.headers)
    assert opt.request_uri == f"sip:{CARRIER}:{port}", raw
    assert INSIDE not in raw and "X-Sipbridge" not in raw, raw
    assert f"sip:sipbridge@{PUBLIC}" in (opt.header("From") or ""), raw
    assert _readyz(bridge, "primary") == "up" and _trunk_up(bridge, "primary") == 1
    # the carrier stops answering OPTIONS (a SIPp that ignores them, same port)
    primary.stop()
    silent = _options_carrier(edge, port, answer=False)
    wait(lambda: _readyz(bridge, "primary").startswith("down"), 15, "primary marked down")
    assert _trunk_up(bridge, "primary") == 0 and _trunk_up(bridge, "backup") == 1
    assert bridge.client.get("/readyz").json()["status"] == "ok"  # backup still up
    sid = bridge.trigger(to_number="+12125550123")
    body = bridge.wait_terminal(sid, timeout=20)
    assert body["status"] == "failure" and body["sip_status"] == 486, body  # backup: busy
    assert len(invites(backup)) == 1
    assert invites(silent) == []  # hunting skipped the down trunk
    assert len(silent.received("OPTIONS")) >= 2  # the probes kept coming, unanswered
    # it answers again: up after 2 answered probes; calls go to it again
    silent.stop()
    again = _options_carrier(edge, port, answer=True)
    wait(lambda: _readyz(bridge, "primary") == "up", 15, "primary marked up")
    assert _trunk_up(bridge, "primary") == 1
    sid = bridge.trigger(to_number="+12125550124")
    body = bridge.wait_terminal(sid, timeout=20)
    assert body["sip_status"] == 486 and len(invites(again)) == 1, body
    assert len(invites(backup)) == 1


# ------------------------------------------------------------------ digest auth

USER, PASSWORD, REALM = "acme", "s3cret-pw", "carrier.test"
NONCE = "7c3e1a9b5d2f4e6a"  # fixed in uas_proxy_auth_challenge.xml


def md5_digest(user: str, password: str, method: str, uri: str) -> str:
    """RFC 2617 3.2.2.1 response without qop."""

    def h(x: str) -> str:
        return hashlib.md5(x.encode()).hexdigest()

    return h(f"{h(f'{user}:{REALM}:{password}')}:{NONCE}:{h(f'{method}:{uri}')}")


def digest_params(value: str) -> dict[str, str]:
    return {k.lower(): v for k, v in re.findall(r'(\w+)="?([^",]*)"?', value.split(" ", 1)[1])}


def test_digest_auth_through_the_edge(edge: Edge) -> None:
    """Trunk "good" (407, right password) and trunk "bad" (401, credentials refused)
    behind the edge: the edge relays each challenge to the node and the node's authenticated
    INVITE to the carrier, in the same dialog (Call-ID, From tag), topology hidden."""
    (port,) = free_ports(1, CARRIER)
    callee = "+12125550140"
    # what the carrier checks: the digest over the Request-URI it receives (RFC 2617
    # 3.2.2.5: the request line's URI is the digest-uri)
    want = md5_digest(USER, PASSWORD, "INVITE", f"sip:{callee}@{CARRIER}:{port}")
    good = carrier(edge, "uas_proxy_auth_challenge.xml", ["-set", "want_response", want], port)
    bad = carrier(edge, "uas_auth_always.xml")  # challenges again: credentials refused
    auth = {"username": USER, "password": {"value": PASSWORD}, "realm": REALM}
    wrong = {"username": USER, "password": {"value": "not-the-password"}, "realm": REALM}
    routes = [{"prefix": "+1212", "trunk": "good"}, {"prefix": "+1213", "trunk": "bad"}]
    bridge = bridge_with_edge(
        edge, [trunk("good", good, auth=auth), trunk("bad", bad, auth=wrong)], routes=routes
    )
    sid = bridge.trigger(to_number=callee)
    bridge.wait_event(sid, "carrier.answered", timeout=15)
    first, second = invites(good)
    assert first.call_id == second.call_id  # one dialog attempt (RFC 3261 22.2)
    assert (first.header("From") or "").split("tag=")[1] == (second.header("From") or "").split(
        "tag="
    )[1]
    assert first.header("Proxy-Authorization") is None
    cred = second.header("Proxy-Authorization") or ""
    p = digest_params(cred)
    assert (p["username"], p["realm"], p["nonce"]) == (USER, REALM, NONCE), cred
    assert p["uri"] == second.request_uri == f"sip:{callee}@{CARRIER}:{port}", cred
    for inv in (first, second):
        raw = inv.first_line + "\n" + "\n".join(f"{n}: {v}" for n, v in inv.headers)
        assert INSIDE not in raw and "X-Sipbridge" not in raw, raw
    bridge.client.post(f"/v1/outbound-calling/{sid}/hangup")
    assert bridge.wait_terminal(sid)["status"] == "success"
    # the whole dialog went through the edge: the 2xx ACK and the BYE reach the carrier
    bye = good.wait_for(lambda m: m.direction == "received" and m.method == "BYE", 10)
    assert bye.call_id == second.call_id
    assert len(good.received("ACK")) == 2  # the 407's (from the edge) and the 200's
    # wrong password: the carrier challenges the authenticated INVITE again (401, same
    # nonce: RFC 2617 3.2.1): the bridge gives up after one retry, with a clear reason
    sid = bridge.trigger(to_number="+12135550141")
    body = bridge.wait_terminal(sid, timeout=15)
    assert (body["status"], body["sip_status"]) == ("failure", 401), body
    assert body["reason"] == "carrier authentication failed", body
    first, second = invites(bad)
    assert first.header("Authorization") is None
    p = digest_params(second.header("Authorization") or "")
    assert p["username"] == USER and p["uri"] == second.request_uri, p
