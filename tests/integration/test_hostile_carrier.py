"""A carrier that answers our INVITE in hostile or unusual (but possible) ways, against a
real `sipbridge run` with one SIP worker: redirects, odd or missing SDP answers, reliable
provisional responses, 18x storms, retransmitted 200s, forked answers, requests inside the
dialog (re-INVITE, UPDATE, INFO, BYE with wrong tags, NOTIFY, REFER, OPTIONS), CANCEL
races and oversized headers. Each carrier is a SIPp scenario built by
:mod:`tests.hostile_carrier`.

For every case: the worker does not die, the call reaches its documented outcome with the
technical text in ``detail``, no leg is left up (the agent got CANCEL/BYE or was never
called, the carrier got its BYE when answered), and a normal call through the same worker
then succeeds. One bridge serves the module: each case gets its own trunk and route.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sipbridge.devtools.bridge import Bridge, Stack, bridge_config, sip_section
from sipbridge.devtools.ports import free_port
from sipbridge.devtools.sipp import SippUas
from tests.hostile_carrier import (
    SDP_OK,
    SIPP_ARGS,
    answer,
    carrier_scenario,
    in_dialog,
    label,
    ok_to_last,
    pause,
    recv,
    repeat,
    response,
    sdp_with,
)
from tests.integration.test_call_integrity import _agent_ended_on_the_wire, _agent_invites

pytestmark = pytest.mark.integration

SLOTS = 48  # trunks (and routes) the module's bridge is configured with
NOT_CONNECTED = "hung up before the agent was connected"


@dataclass
class Hostile:
    """The module's bridge, its agent, a normal carrier, and a SIPp that must never be
    called (the target of redirects and transfers)."""

    bridge: Bridge
    agent: SippUas
    normal: SippUas
    bystander: SippUas
    ports: list[int]
    log_dir: Path  # kept as a failed test's logs (tests/conftest.py)
    next_slot: int = 0

    def slot(self) -> tuple[int, int]:
        """(slot number, its trunk's SIP port) for one case."""
        n = self.next_slot
        assert n < SLOTS, "raise SLOTS"
        self.next_slot += 1
        return n, self.ports[n]


def make_hostile(stack: Stack) -> Hostile:
    """A bridge with one SIP worker, SLOTS trunks for the cases, and its peers."""
    tmp = stack.tmp
    agent = stack.sipp("uas_answer_wait_bye.xml")
    normal = stack.sipp("uas_answer_then_bye.xml")
    bystander = stack.sipp("uas_answer_wait_bye.xml")
    ports = [free_port() for _ in range(SLOTS)]
    trunks = [
        {"name": f"t{i}", "address": f"127.0.0.1:{p}", "caller_id": "+14155550100"}
        for i, p in enumerate(ports)
    ]
    trunks.append({"name": "normal", "address": normal.uri_hostport, "caller_id": "+14155550100"})
    routes = [{"prefix": f"+12125{i:02d}", "trunk": f"t{i}"} for i in range(SLOTS)]
    routes.append({"prefix": "+1213", "trunk": "normal"})
    cfg = bridge_config(
        tmp,
        trunks=trunks,
        routes=routes,
        sip=sip_section(workers=1, media_timeout_s=4),
        timers={"ring_timeout_s": 6},
        agent={"uri": f"sip:agent@{agent.uri_hostport}"},
    )
    return Hostile(stack.bridge(cfg), agent, normal, bystander, ports, tmp)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    stack = Stack(tmp_path_factory.mktemp("hostile"))
    try:
        yield make_hostile(stack)
    finally:
        stack.close()


@dataclass
class Case:
    """One hostile carrier and what must come of the call."""

    id: str
    early: str = ""
    final: str = ""
    midcall: str = ""
    hangup_ms: int = 1000
    bye_tag: str = "01"
    status: str = "success"
    reason: str = ""
    detail: str = ""  # a piece of text ``detail`` must contain
    answered: bool = True  # the carrier leg was answered: it must get a BYE
    # A check of what SIPp saw (the carrier's messages) and the final status body.
    check: Callable[[SippUas, Hostile, dict[str, Any]], None] | None = None
    hangup_on: str = ""  # the test hangs up (API) once this event is in the status
    bridge_byes: bool = False  # the BYE must come from the bridge (not the carrier's own)
    marks: list[Any] = field(default_factory=list)
    timeout_s: float = 20.0


def _worker_deaths(bridge: Bridge, since: int) -> list[str]:
    return [
        ln
        for ln in bridge.log()[since:].splitlines()
        if re.search(r"SIP worker \d+ exited|Assertion|restarting|Fatal Python", ln)
    ]


def _all_legs_ended(bridge: Bridge, sid: str, timeout: float) -> dict[str, Any]:
    return bridge.wait_status(
        sid,
        lambda b: (
            b["status"] in ("success", "failure")
            and all("ended_at" in leg for leg in b["legs"].values())
        ),
        timeout,
    )


def _responses_to(carrier: SippUas, method: str) -> list[int]:
    """Final status codes the bridge gave to the carrier's in-dialog ``method``."""
    return [
        m.status or 0
        for m in carrier.messages()
        if m.direction == "received"
        and not m.is_request
        and m.method == method
        and (m.status or 0) >= 200
    ]


def run_case(h: Hostile, case: Case, tmp: Path) -> tuple[SippUas, dict[str, Any]]:
    n, port = h.slot()
    bystander = str(h.bystander.port)
    sub = {
        k: getattr(case, k).replace("@BYSTANDER@", bystander) for k in ("early", "final", "midcall")
    }
    scen = carrier_scenario(
        tmp / f"{case.id}.xml",
        early=sub["early"],
        final=sub["final"],
        midcall=sub["midcall"],
        hangup_ms=case.hangup_ms,
        bye_tag=case.bye_tag,
    )
    carrier = SippUas(scen, tmp, extra_args=SIPP_ARGS, port=port).start()
    try:
        since = len(h.bridge.log())
        sid = h.bridge.trigger(to_number=f"+12125{n:02d}0123")
        if case.hangup_on:
            h.bridge.wait_event(sid, case.hangup_on)
            r = h.bridge.client.post(f"/v1/outbound-calling/{sid}/hangup")
            assert r.status_code == 200, r.text
        body = _all_legs_ended(h.bridge, sid, case.timeout_s)
        assert (body["status"], body["reason"]) == (case.status, case.reason), body
        assert case.detail in body.get("detail", ""), body
        # no leg left up: the agent got CANCEL/BYE (or was never called) ...
        _agent_ended_on_the_wire(h.agent, sid)
        if case.status == "success":
            assert _agent_invites(h.agent, sid), "the agent was never connected"
        # ... and an answered carrier leg ended with a BYE (its or ours)
        invite = carrier.wait_for(
            lambda m: m.direction == "received" and m.is_request and m.method == "INVITE", 5
        )
        if case.answered:
            carrier.wait_for(
                lambda m: (
                    m.is_request
                    and m.method == "BYE"
                    and m.call_id == invite.call_id
                    and (m.direction == "received" or not case.bridge_byes)
                ),
                10,
            )
        if case.check is not None:
            case.check(carrier, h, body)
        # the worker survived, and the next normal call on it succeeds
        assert not _worker_deaths(h.bridge, since)
        ok = h.bridge.wait_terminal(h.bridge.trigger(to_number="+12135550100"))
        assert (ok["status"], ok["reason"]) == ("success", ""), ok
        assert not _worker_deaths(h.bridge, since)
        return carrier, body
    finally:
        carrier.stop()


def _pcmu(port: str = "[media_port]") -> str:
    return f"m=audio {port} RTP/AVP 0\na=rtpmap:0 PCMU/8000"


def _never_called(carrier: SippUas, h: Hostile, body: dict[str, Any]) -> None:
    """Nobody but the carrier and the agent got an INVITE from the bridge."""
    assert not h.bystander.received("INVITE"), h.bystander.received("INVITE")


SDP_CASES = [
    # RFC 3261 13.2.1: the 2xx must carry the answer to the INVITE's offer
    Case(
        "200_without_sdp",
        final=answer(None),
        status="failure",
        reason="media negotiation failed",
        detail="answered with no usable SDP",
    ),
    Case(
        "200_unparseable_sdp",
        final=answer("this is not an SDP\nat=all\n"),
        status="failure",
        reason="media negotiation failed",
        detail="no usable SDP",
    ),
    Case("sdp_c_0.0.0.0", final=answer(sdp_with(_pcmu(), conn="c=IN IP4 0.0.0.0"))),
    Case(
        "sdp_port_0",
        final=answer(sdp_with(_pcmu("0"))),
        status="failure",
        reason="media negotiation failed",
    ),
    Case(
        "sdp_40_m_lines",
        final=answer(
            sdp_with(
                *[f"m=video {4000 + 2 * i} RTP/AVP 96\na=rtpmap:96 H264/90000" for i in range(39)],
                _pcmu(),
            )
        ),
        status="failure",
        reason="media negotiation failed",
    ),
    # pjsip's SDP parser refuses payload types outside 0..127 (RFC 3551): the whole answer
    Case(
        "sdp_giant_payload_types",
        final=answer(
            sdp_with(
                "m=audio [media_port] RTP/AVP 0 4294967296 99999 -1 128\na=rtpmap:0 PCMU/8000\n"
                "a=rtpmap:4294967296 PCMU/8000\na=rtpmap:99999 opus/48000/2"
            )
        ),
        status="failure",
        reason="media negotiation failed",
        detail="PT 128",
    ),
    Case(
        "sdp_duplicate_payload_types",
        final=answer(
            sdp_with(
                "m=audio [media_port] RTP/AVP 0 0 8 0 101 101\na=rtpmap:0 PCMU/8000\n"
                "a=rtpmap:0 PCMA/8000\na=rtpmap:101 telephone-event/8000\n"
                "a=rtpmap:101 PCMU/8000"
            )
        ),
    ),
    Case(
        "sdp_rtpmap_garbage",
        final=answer(
            sdp_with(
                "m=audio [media_port] RTP/AVP 0 96\na=rtpmap:\na=rtpmap:96\na=rtpmap:x y/z\n"
                "a=rtpmap:96 PCMU/0\na=rtpmap:0 " + "A" * 600 + "/8000\na=fmtp:96 " + ";" * 300
            )
        ),
    ),
    # our media is IPv4: an IPv6 c= line cannot be reached
    Case(
        "sdp_ipv6_c_line",
        final=answer(sdp_with(_pcmu(), conn="c=IN IP6 ::1")),
        status="failure",
        reason="media negotiation failed",
        detail="c=IN IP6 ::1",
    ),
    Case(
        "183_then_200_other_sdp",
        early=response(183, "Session Progress", body=SDP_OK),
        final=answer(sdp_with("m=audio 7078 RTP/AVP 8\na=rtpmap:8 PCMA/8000", version=2)),
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in SDP_CASES])
def test_odd_sdp_answer(hostile: Hostile, case: Case, tmp_path: Path) -> None:
    run_case(hostile, case, tmp_path)


def _bye_from_bridge(carrier: SippUas, h: Hostile, body: dict[str, Any]) -> None:
    assert carrier.received("BYE"), "the bridge never sent BYE"


def _refused_redirect(code: int, reason: str, contact: str) -> Case:
    return Case(
        f"{code}_to_{contact.split(':', 1)[0].strip('<')}",
        final=response(code, reason, contact=False, headers=[f"Contact: {contact}"])
        + recv("ACK", next_label="end"),
        status="failure",
        reason="redirected (not followed)",
        detail="not followed",
        answered=False,
        check=_never_called,
    )


REDIRECT_CASES = [
    _refused_redirect(302, "Moved Temporarily", "<sip:+12125550199@127.0.0.1:@BYSTANDER@>"),
    _refused_redirect(301, "Moved Permanently", "<http://127.0.0.1:@BYSTANDER@/x>"),
    _refused_redirect(
        300,
        "Multiple Choices",
        "<tel:+12125550199>, <sip:+12125550199@127.0.0.1:@BYSTANDER@>;q=0.5, <mailto:a@127.0.0.1>",
    ),
    _refused_redirect(305, "Use Proxy", "<sip:127.0.0.1:@BYSTANDER@>"),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in REDIRECT_CASES])
def test_redirect_is_not_followed(hostile: Hostile, case: Case, tmp_path: Path) -> None:
    run_case(hostile, case, tmp_path)


def _prack_acknowledged(carrier: SippUas, h: Hostile, body: dict[str, Any]) -> None:
    """RFC 3262 7.2: the PRACK's RAck names the RSeq and the INVITE's CSeq."""
    inv = carrier.received("INVITE")[0]
    prack = carrier.received("PRACK")
    assert prack, "no PRACK for the reliable provisional response"
    assert prack[0].header("RAck") == f"1 {inv.header('CSeq')}", prack[0].header_dict


def _acked_every_200(carrier: SippUas, h: Hostile, body: dict[str, Any]) -> None:
    """RFC 3261 13.2.2.4: every retransmission of the 2xx is ACKed; nothing else."""
    acks = carrier.received("ACK")
    assert 1 <= len(acks) <= 40, len(acks)
    assert len(carrier.received("INVITE")) == 1


RELIABLE_183 = (
    response(183, "Session Progress", headers=["Require: 100rel", "RSeq: 1"], body=SDP_OK)
    + recv("PRACK")
    + ok_to_last()
)

PROVISIONAL_CASES = [
    # RFC 3262: the answer came in the reliable 183, the 200 carries no SDP
    Case(
        "reliable_183_then_200_without_sdp",
        early=RELIABLE_183,
        final=answer(None),
        check=_prack_acknowledged,
    ),
    Case(
        "reliable_180_without_sdp",
        early=response(180, "Ringing", headers=["Require: 100rel", "RSeq: 1"])
        + recv("PRACK")
        + ok_to_last(),
        final=answer(),
        check=_prack_acknowledged,
    ),
    Case("300_180s_then_200", early=repeat(response(180, "Ringing"), 300, "storm")),
    # (the ACKs cross the 200s: SIPp may have seen them all before it waits for one)
    Case(
        "200_sent_40_times",
        final=repeat(response(200, "OK", body=SDP_OK), 40, "again")
        + recv("ACK", timeout_ms=1000, ontimeout="acked")
        + label("acked"),
        check=_acked_every_200,
    ),
    # forking (RFC 3261 12.1.2, 13.2.2.4): early media from one branch, answer from another
    Case(
        "183_and_200_from_two_forks",
        early=response(183, "Session Progress", body=SDP_OK),
        final=response(200, "OK", tag="02", body=SDP_OK, retrans=True) + recv("ACK"),
        bye_tag="02",
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in PROVISIONAL_CASES])
def test_odd_provisional_and_final_responses(hostile: Hostile, case: Case, tmp_path: Path) -> None:
    run_case(hostile, case, tmp_path)


def _answered(method: str, *codes: int) -> Callable[[SippUas, Hostile, dict[str, Any]], None]:
    def check(carrier: SippUas, h: Hostile, body: dict[str, Any]) -> None:
        got = _responses_to(carrier, method)
        assert got and all(c in codes for c in got), (method, got)

    return check


def _refer_refused(carrier: SippUas, h: Hostile, body: dict[str, Any]) -> None:
    _answered("REFER", 603)(carrier, h, body)
    _never_called(carrier, h, body)
    assert not carrier.received("NOTIFY")  # no transfer subscription either


def _mid(*requests: str) -> str:
    return pause(200) + "".join(requests)


ODD_INFO_BODIES = [
    ("application/dtmf-relay", "Signal=\r\nDuration=-5\r\n"),
    ("application/dtmf-relay", "Signal=99999999999\r\nDuration=99999999999\r\n"),
    ("application/dtmf", "\x01\x02 not a digit"),
    ("application/json", "{" * 200),
    ("text/plain", "A" * 2500),
    ("multipart/mixed;boundary=x", "--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n"),
]

MIDCALL_CASES = [
    Case(
        "reinvite_garbage_sdp",
        midcall=_mid(in_dialog("INVITE", 2, body="garbage\n")),
        check=_answered("INVITE", 400, 488, 500),
    ),
    # an offer-less re-INVITE: pjsua offers in the 200, we answer in the ACK (RFC 3264)
    Case(
        "reinvite_without_sdp", midcall=_mid(in_dialog("INVITE", 2)), check=_answered("INVITE", 200)
    ),
    Case(
        "update_with_sdp",
        midcall=_mid(in_dialog("UPDATE", 2, body=sdp_with(_pcmu(), version=2))),
        check=_answered("UPDATE", 200),
    ),
    Case(
        "info_odd_bodies",
        midcall=_mid(
            *[in_dialog("INFO", 2 + i, body=b, ctype=c) for i, (c, b) in enumerate(ODD_INFO_BODIES)]
        ),
    ),
    # RFC 3261 12.2.2: a request matching no dialog gets 481, the call goes on
    Case(
        "bye_with_wrong_tags",
        midcall=_mid(
            in_dialog("BYE", 2, from_tag="not-the-carriers"),
            in_dialog("BYE", 3, to="<sip:bridge@127.0.0.1>;tag=not-ours"),
        ),
        check=_answered("BYE", 481, 200),
    ),
    Case(
        "notify_without_subscription",
        midcall=_mid(
            in_dialog(
                "NOTIFY",
                2,
                headers=["Event: refer", "Subscription-State: active"],
                body="SIP/2.0 200 OK\n",
                ctype="message/sipfrag",
            )
        ),
        check=_answered("NOTIFY", 481, 489, 405, 501),
    ),
    # RFC 3515: a REFER must not make the bridge call a third party
    Case(
        "refer_to_a_third_party",
        midcall=_mid(
            in_dialog(
                "REFER",
                2,
                headers=[
                    "Refer-To: <sip:+12125550199@127.0.0.1:@BYSTANDER@>",
                    "Referred-By: <sip:carrier@127.0.0.1>",
                ],
            )
        ),
        check=_refer_refused,
    ),
    Case(
        "options_in_dialog", midcall=_mid(in_dialog("OPTIONS", 2)), check=_answered("OPTIONS", 200)
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in MIDCALL_CASES])
def test_carrier_requests_inside_the_call(hostile: Hostile, case: Case, tmp_path: Path) -> None:
    # the carrier hangs up 1 s after its requests: the call was never disturbed
    case.hangup_ms = 1000
    run_case(hostile, case, tmp_path)


CANCEL_CASES = [
    # RFC 3261 9.1: our CANCEL crosses the carrier's 200: we ACK it, then BYE
    Case(
        "cancel_crossing_200",
        early=response(180, "Ringing"),
        final=recv("CANCEL")
        + ok_to_last()
        + response(200, "OK", body=SDP_OK, retrans=True)
        + recv("ACK"),
        hangup_ms=8000,
        hangup_on="carrier.ringing",
        status="failure",
        reason="canceled",
        bridge_byes=True,
        check=_bye_from_bridge,
    ),
    # a 200 after the 487 (a broken carrier): the INVITE transaction is over
    Case(
        "487_then_200",
        early=response(180, "Ringing"),
        final=recv("CANCEL")
        + ok_to_last()
        + response(487, "Request Terminated")
        + recv("ACK")
        + response(200, "OK", body=SDP_OK)
        + '  <pause milliseconds="1500" next="end"/>\n',
        hangup_on="carrier.ringing",
        status="failure",
        reason="canceled",
        answered=False,
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CANCEL_CASES])
def test_cancel_races(stack: Stack, case: Case, tmp_path: Path) -> None:
    """Each on its own bridge: a CANCELled INVITE keeps its pjsua call slot until its
    transaction ends (Timer B/D, 32 s on UDP), unknown to the supervisor; two such calls
    in a row leave a 4-slot worker too few slots for the next call's agent leg."""
    run_case(make_hostile(stack), case, tmp_path)


HEADER_CASES = [
    Case("200_with_a_2500_byte_header", final=answer(headers=["X-Junk: " + "a" * 2500])),
    Case(
        "200_with_80_headers",
        final=answer(
            headers=[
                *[f"X-H{i}: {i}" for i in range(70)],
                "Supported: " + "x," * 30 + "timer",
                "Allow: " + "FOO, " * 30 + "INVITE",
                "Subject: " + "\u00e9" * 40,
                'Warning: 399 127.0.0.1 "' + "w" * 200 + '"',
                "Require: foo-bar-ext",
                "Unsupported: 100rel",
                "Server: " + "s" * 900,
            ]
        ),
    ),
    Case(
        "200_with_60_allow_values",
        final=answer(headers=["Allow: " + "FOO, " * 60 + "BYE"]),
        marks=[
            pytest.mark.xfail(
                strict=True,
                reason=(
                    "pjsip 2.15 cannot parse an Allow/Supported/Require header with more than 32 "
                    "values (PJSIP_GENERIC_ARRAY_MAX_COUNT, compile time) and drops the whole "
                    "200 OK: the answer is never seen, the call ends 'no answer' at the ring "
                    "timeout while the callee is on the line"
                ),
            )
        ],
    ),
    # RFC 3261 8.1.3.3: a response with more than one Via is not for us
    Case(
        "200_with_10_vias",
        final=answer(
            headers=[f"Via: SIP/2.0/UDP 127.0.0.{i + 2}:5060;branch=z9hG4bKx{i}" for i in range(10)]
        ),
    ),
    Case(
        "200_with_30_record_routes",
        final=answer(
            headers=[f"Record-Route: <sip:127.0.0.1:[local_port];lr;n={i}>" for i in range(30)]
        ),
    ),
    # odd URIs behind a usable first hop (the UAC's route set is the reversed list,
    # RFC 3261 12.1.2: the last entry is the first hop)
    Case(
        "200_with_odd_record_routes",
        final=answer(
            headers=[
                "Record-Route: <http://127.0.0.1/x>, <tel:+15550000>",
                "Record-Route: <sips:127.0.0.1:1;lr;transport=tls>",
                "Record-Route: <sip:127.0.0.1:[local_port];lr>",
            ]
        ),
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in HEADER_CASES])
def test_odd_headers_in_the_answer(hostile: Hostile, case: Case, tmp_path: Path) -> None:
    run_case(hostile, case, tmp_path)


SILENT_CASES = [
    # the 200 comes once, then nothing: no RTP, no BYE, our BYE unanswered (Timer F)
    Case(
        "200_then_nothing",
        final=response(200, "OK", body=SDP_OK) + recv("ACK"),
        midcall=pause(60_000),
        status="failure",
        reason="media timeout",
        bridge_byes=True,
    ),
    # the route set's first hop is a dead loopback port: our ACK and BYE go nowhere, the
    # carrier retransmits its 200 and never hears from us again
    Case(
        "200_with_dead_record_route",
        final=answer(headers=["Record-Route: <sip:127.0.0.1:9;lr>"]) + pause(60_000),
        status="failure",
        reason="media timeout",
        answered=False,
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in SILENT_CASES])
def test_carrier_that_goes_silent(stack: Stack, case: Case, tmp_path: Path) -> None:
    """Each on its own bridge: our unanswered BYE holds a pjsua call slot until Timer F
    (32 s), which must not keep the next call from being placed."""
    run_case(make_hostile(stack), case, tmp_path)
