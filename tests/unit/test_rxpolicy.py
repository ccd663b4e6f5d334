"""The SIP packet guard's pure parts: sipbridge.sipmsg (request reader) and
sipbridge.rxpolicy (pass / drop / stateless answer), with fixtures and property tests."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.rxpolicy import (
    Action,
    KnownDialogs,
    RxPolicy,
    SourceLimiter,
    call_id_of,
    summary,
)
from sipbridge.sipmsg import (
    SipParseError,
    dtmf_relay_crashes_pjsua,
    parse_request,
    parse_via,
    sdp_problem,
)
from tests.doubles import Clock
from tests.sipfuzz import SipFuzzer, request

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0\r\n"
)


def _policy(
    allow: list[str] | None = None,
    rate: float = 1000,
    burst: int = 1000,
    clock: Clock | None = None,
) -> RxPolicy:
    clk = clock or Clock(100.0)
    return RxPolicy(
        inbound_allow=allow or [],
        limiter=SourceLimiter(rate, burst, clock=clk),
        dialog_limiter=SourceLimiter(rate, burst, clock=clk),
        dialogs=KnownDialogs(clock=clk),
    )


def _accepting() -> str | None:
    return None


# ----------------------------------------------------------------- sipmsg
def test_parse_request_reads_the_guard_facts() -> None:
    raw = request("INVITE", call_id="abc@h", to_tag=None, body=SDP, extra=["l: " + str(len(SDP))])
    req = parse_request(raw)
    assert (req.method, req.call_id, req.to_tag, req.cseq_method) == (
        "INVITE",
        "abc@h",
        None,
        "INVITE",
    )
    assert req.via.transport == "UDP" and req.via.host == "127.0.0.1" and req.via.port == 5999
    assert req.content_type == "application/sdp" and req.body == SDP
    assert not req.in_dialog


def test_compact_forms_folding_and_to_tag() -> None:
    raw = (
        b"BYE sip:a@127.0.0.1 SIP/2.0\r\nv: SIP/2.0/TCP [::1]:5070\r\n ;branch=z9hG4bK1\r\n"
        b'f: <sip:b@h>;tag=x\r\nt: "A, B" <sip:a@h;tag=no>;tag=y7\r\ni: cid\r\n'
        b"CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    )
    req = parse_request(raw)
    assert req.to_tag == "y7" and req.in_dialog
    assert req.via == parse_via("SIP/2.0/TCP [::1]:5070 ;branch=z9hG4bK1")
    assert req.via.host_is_ip and req.via.params == {"branch": "z9hG4bK1"}


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"", "end of headers"),
        (b"INVITE sip:a@h SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n", "end of headers"),
        (b"INVITE sip:a@h SIP/3.0\r\n\r\n", "request line"),
        (b"SIP/2.0 200 OK\r\n\r\n", "request line"),
        (b"IN VITE sip:a@h SIP/2.0\r\n\r\n", "request line"),
        (b"INVITE sip:a@h SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n", "call-id header missing"),
        (b"\xff\xfe\r\n\r\n", "UTF-8"),
    ],
)
def test_unreadable_requests_name_the_problem(raw: bytes, why: str) -> None:
    with pytest.raises(SipParseError, match=why):
        parse_request(raw)


def test_repeated_mandatory_header_and_short_body_are_refused() -> None:
    with pytest.raises(SipParseError, match="repeated"):
        parse_request(request("INVITE", extra=["Call-ID: second"]))
    with pytest.raises(SipParseError, match="Content-Length"):
        parse_request(request("INVITE", body=b"v=0\r\n", extra=["Content-Length: 900"]))


def test_sdp_problems() -> None:
    assert sdp_problem(SDP) is None
    assert sdp_problem(b"o=x\r\n") == "SDP does not start with v=0"
    assert "longer" in str(sdp_problem(SDP + b"a=ice-ufrag:" + b"u" * 600 + b"\r\n"))
    assert "connection" in str(sdp_problem(SDP.replace(b"c=IN IP4 127.0.0.1\r\n", b"")))
    assert sdp_problem(b"v=0\r\n\xff") == "SDP is not UTF-8"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_parse_request_never_raises_anything_else(raw: bytes) -> None:
    with contextlib.suppress(SipParseError):
        parse_request(raw)
    sdp_problem(raw)


# ----------------------------------------------------------------- policy
def test_out_of_dialog_invite_from_disallowed_source_is_refused_statelessly() -> None:
    p = _policy(allow=["10.0.0.0/8"])
    v = p.decide(request("INVITE"), "127.0.0.1", "udp", _accepting)
    assert (v.action, v.status, v.reason) == (Action.RESPOND, 403, "forbidden_source")
    assert p.decide(request("INVITE"), "10.1.2.3", "udp", _accepting).passes


def test_allowed_invite_when_full_or_stopping() -> None:
    p = _policy(allow=["127.0.0.0/8"])
    assert p.decide(request("INVITE"), "127.0.0.1", "udp", lambda: "full").status == 486
    assert p.decide(request("INVITE"), "127.0.0.1", "udp", lambda: "stopping").status == 503
    # an offer-less INVITE (delayed offer, RFC 3261 13.2.1) is fine
    assert p.decide(request("INVITE", body=b""), "127.0.0.1", "udp", _accepting).passes
    bad = request("INVITE", body=b"garbage\r\n", extra=["Content-Type: application/sdp"])
    assert p.decide(bad, "127.0.0.1", "udp", _accepting).status == 488


@pytest.mark.parametrize(
    "via, transport, reason",
    [
        ("SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK1", "udp", "via"),
        ("SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK1;maddr=192.0.2.1", "udp", "via"),
        ("SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK1", "tcp", "via"),
    ],
)
def test_via_that_redirects_the_response_is_dropped(via: str, transport: str, reason: str) -> None:
    p = _policy(allow=["127.0.0.0/8"])
    v = p.decide(request("OPTIONS", via=via), "127.0.0.1", transport, _accepting)
    assert (v.action, v.reason) == (Action.DROP, reason)


def test_host_name_in_via_is_passed() -> None:
    # pjsip answers a request at its source address ("received", RFC 3261 18.2.2), never
    # at a Via host name: nothing is resolved, so a carrier writing its name is fine.
    p = _policy()
    via = "SIP/2.0/UDP sbc.carrier.example:5060;branch=z9hG4bK1"
    assert p.decide(request("OPTIONS", via=via), "127.0.0.1", "udp", _accepting).passes


def test_in_dialog_requests_need_a_known_call_id() -> None:
    clk = Clock(100.0)
    p = _policy(clock=clk)
    bye = request("BYE", call_id="live-1", to_tag="t1")
    assert p.decide(bye, "203.0.113.9", "udp", _accepting).reason == "unknown_dialog"
    p.dialogs.add("live-1")
    for method in ("BYE", "INFO", "UPDATE", "OPTIONS", "INVITE", "ACK"):
        v = p.decide(
            request(method, call_id="live-1", to_tag="t1"), "198.51.100.7", "udp", _accepting
        )
        assert v.passes, (method, v)
    # an unusable offer inside the call is refused (488), the call goes on; an ACK with
    # one is dropped (nothing can answer an ACK)
    for method, action in (
        ("INVITE", Action.RESPOND),
        ("UPDATE", Action.RESPOND),
        ("ACK", Action.DROP),
        ("PRACK", Action.DROP),
    ):
        v = p.decide(
            request(
                method,
                call_id="live-1",
                to_tag="t1",
                body=b"garbage\r\n",
                extra=["Content-Type: application/sdp"],
            ),
            "198.51.100.7",
            "udp",
            _accepting,
        )
        assert (v.action, v.reason) == (action, "bad_sdp"), method
        assert v.status == (488 if action is Action.RESPOND else v.status)
    p.dialogs.end("live-1")
    clk.t += 30  # a retransmitted BYE still reaches pjsip
    assert p.decide(bye, "203.0.113.9", "udp", _accepting).passes
    clk.t += 10
    assert p.decide(bye, "203.0.113.9", "udp", _accepting).reason == "unknown_dialog"


@pytest.mark.parametrize(
    "body, crashes",
    [
        (b"Signal=5\r\nDuration=160\r\n", False),
        (b"Signal=5\r\n", False),
        (b"", False),
        (b"\r\n", False),
        (b"Signal=5", True),  # no CRLF: pjsua's length goes negative
        (b"Signal=5\n", True),  # bare LF: one byte short
        (b"Signal=5\x00\r\nDuration=1\r\n", True),  # strlen stops at the NUL
        (b"\r\nSignal=5", False),  # leading CRLF leaves enough bytes
    ],
)
def test_dtmf_relay_bodies_that_abort_pjsua(body: bytes, crashes: bool) -> None:
    assert dtmf_relay_crashes_pjsua(body) is crashes
    p = _policy()
    p.dialogs.add("live-1")
    info = request(
        "INFO",
        call_id="live-1",
        to_tag="t",
        body=body,
        extra=["Content-Type: application/dtmf-relay"],
    )
    assert p.decide(info, "127.0.0.1", "udp", _accepting).passes is not crashes


def test_out_of_dialog_methods() -> None:
    p = _policy()
    assert p.decide(request("OPTIONS"), "127.0.0.1", "udp", _accepting).passes
    for method in ("SUBSCRIBE", "MESSAGE", "REGISTER", "REFER", "NOTIFY", "BYE"):
        assert p.decide(request(method), "127.0.0.1", "udp", _accepting).reason == "method"


def test_rate_limit_per_source_and_bounded_table() -> None:
    clk = Clock(100.0)
    p = _policy(rate=10, burst=5, clock=clk)
    got = [p.decide(request("OPTIONS"), "192.0.2.1", "udp", _accepting).reason for _ in range(8)]
    assert got == ["ok"] * 5 + ["rate"] * 3
    # another source is not affected
    assert p.decide(request("OPTIONS"), "192.0.2.2", "udp", _accepting).passes
    clk.t += 0.2  # two tokens back
    assert p.decide(request("OPTIONS"), "192.0.2.1", "udp", _accepting).passes
    lim = SourceLimiter(1, 1, max_sources=100, clock=clk)
    for i in range(1000):
        lim.allow(f"10.0.{i // 256}.{i % 256}")
    assert len(lim) == 100
    assert summary(p.take_counts().items()) == "rate=3"


def _response(call_id: str, status: int = 200) -> bytes:
    return (
        f"SIP/2.0 {status} OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n"
        f"From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: {call_id}\r\n"
        f"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_our_calls_are_counted_per_call_not_per_source() -> None:
    """A carrier's SBC is one source for all its calls: the messages of our own calls
    (responses, in-dialog requests) count against each call's budget, so 20 live calls
    from one address are not throttled as one; a call that loops (a 2xx retransmitted on
    every ACK) is held to its own budget, and strangers to the source's."""
    clk = Clock()
    p = _policy(rate=10, burst=5, clock=clk)
    for i in range(20):
        p.dialogs.add(f"call-{i}")
    for _round in range(4):  # 80 messages from one source within the same instant
        for i in range(20):
            assert p.check_rate(_response(f"call-{i}"), "192.0.2.9") is None
    looping = [p.check_rate(_response("call-0", 200), "192.0.2.9") for _ in range(3)]
    assert [v.reason if v else "ok" for v in looping] == ["ok", "dialog_rate", "dialog_rate"]
    assert p.check_rate(_response("call-1"), "192.0.2.9") is None  # the others go on
    # in-dialog requests of a live call take the same per-call path
    bye = request("BYE", call_id="call-2", to_tag="t")
    assert p.decide(bye, "192.0.2.9", "udp", _accepting).passes
    # a message of no call of ours counts against its source
    stray = [p.check_rate(_response("nobody"), "192.0.2.9") for _ in range(7)]
    assert [v.reason if v else "ok" for v in stray] == ["ok"] * 5 + ["rate"] * 2
    assert call_id_of(b"INVITE x SIP/2.0\r\ni: compact@h\r\n\r\n") == "compact@h"
    assert call_id_of(b"garbage") == ""


def test_known_dialogs_are_bounded() -> None:
    d = KnownDialogs(max_lingering=10)
    for i in range(100):
        d.add(f"c{i}")
        d.end(f"c{i}")
    assert len(d.ended) == 10 and not d.live and "c99" in d and "c0" not in d


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=5000), st.sampled_from(["udp", "tcp", "tls"]))
def test_policy_never_raises_on_arbitrary_bytes(raw: bytes, transport: str) -> None:
    v = _policy(allow=["127.0.0.0/8"]).decide(raw, "127.0.0.1", transport, _accepting)
    assert v.action in Action


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_policy_never_raises_on_mutated_requests(seed: int) -> None:
    fz = SipFuzzer(seed, target="127.0.0.1:5060", live_call_ids=["live-1"])
    p = _policy(allow=["127.0.0.0/8"])
    p.dialogs.add("live-1")
    for _ in range(5):
        raw = fz.message("udp")
        assert p.decide(raw, "127.0.0.1", "udp", _accepting).action in Action
