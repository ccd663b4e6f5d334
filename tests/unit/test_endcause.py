"""End-cause classification of a DISCONNECTED leg (sipbridge.sip.endcause), without
pjsua2: fixtures for each path a carrier or pjsip can take, and property tests."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.ipc import EndCause
from sipbridge.sip.endcause import (
    MEDIA_REFUSED,
    Disconnect,
    TlsReject,
    classify_end,
    tls_reject_detail,
)

OK_200 = "SIP/2.0 200 OK\r\nCSeq: 2 BYE\r\n\r\n"
BYE = "BYE sip:sipbridge@127.0.0.1 SIP/2.0\r\nCSeq: 3 BYE\r\n\r\n"
G729_ANSWER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 18\r\n"
)


def _d(**kw: Any) -> Disconnect:
    facts: dict[str, Any] = dict(
        source="rx_msg",
        status=None,
        reason="",
        received="",
        answered=False,
        inbound=False,
        any_response=False,
        transport="udp",
    )
    facts.update(kw)
    return Disconnect(**facts)


@pytest.mark.parametrize(
    ("facts", "cause", "detail"),
    [
        # The carrier refused the call.
        (
            dict(
                status=486,
                reason="Busy Here",
                any_response=True,
                received="SIP/2.0 486 Busy Here\r\n\r\n",
            ),
            "remote_final",
            "",
        ),
        # The carrier hung up an answered call.
        (
            dict(status=200, reason="OK", answered=True, any_response=True, received=BYE),
            "remote_bye",
            "",
        ),
        (dict(status=200, reason="OK", answered=True, source="other"), "remote_bye", ""),
        # Timer B: pjsip's locally generated 408.
        (
            dict(status=408, reason="Request Timeout", source="timer"),
            "transport_error",
            "408 Request Timeout (locally generated)",
        ),
        (
            dict(
                status=503, reason="Connection refused", source="transport_error", any_response=True
            ),
            "transport_error",
            "503 Connection refused (locally generated)",
        ),
        # A 408/503 that is not locally recognised, but nothing ever came from the peer.
        (
            dict(status=503, reason="Service Unavailable"),
            "transport_error",
            "503 Service Unavailable (no response from peer)",
        ),
        (
            dict(
                status=408,
                reason="Request Timeout",
                any_response=True,
                received="SIP/2.0 408 Request Timeout\r\n\r\n",
            ),
            "remote_final",
            "",
        ),
        # pjsua refused the carrier's SDP answer and sent BYE itself.
        (
            dict(
                status=488,
                reason="Not Acceptable Here",
                answered=True,
                any_response=True,
                received=OK_200,
                offered_codecs=("PCMU/8000", "PCMA/8000"),
                remote_sdp=G729_ANSWER,
            ),
            "media_error",
            "offered PCMU/8000, PCMA/8000; answered G729/8000 (RTP/AVP) (488 Not Acceptable Here)",
        ),
        # The SIP stack ended an answered session (RFC 4028 refresh failed).
        (
            dict(status=200, reason="OK", answered=True, any_response=True, received=OK_200),
            "transport_error",
            "session ended by the SIP stack: 200 OK",
        ),
        (
            dict(
                status=481,
                reason="Call Does Not Exist",
                answered=True,
                any_response=True,
                received="SIP/2.0 481 Call/Transaction Does Not Exist\r\nCSeq: 2 UPDATE\r\n\r\n",
            ),
            "transport_error",
            "in-dialog request failed: SIP/2.0 481 Call/Transaction Does Not Exist",
        ),
        # Inbound legs: the agent platform hung up, or our 200 was never ACKed.
        (
            dict(inbound=True, answered=True, status=200, received=BYE, any_response=True),
            "remote_bye",
            "",
        ),
        (
            dict(inbound=True, status=487, reason="Request Terminated", any_response=True),
            "remote_bye",
            "",
        ),
        (
            dict(inbound=True, answered=True, status=408, source="timer", any_response=True),
            "transport_error",
            "",
        ),
    ],
)
def test_classification(facts: dict[str, Any], cause: str, detail: str) -> None:
    assert classify_end(_d(**facts)) == (cause, detail)


def test_tls_leg_names_the_certificate_refusal() -> None:
    reject = "TLS certificate of 127.0.0.1:5061 rejected: ..."
    got = classify_end(
        _d(source="transport_error", status=503, reason="x", transport="tls", tls_reject=reject)
    )
    assert got == ("transport_error", reject)
    # Without a refusal on record the locally generated status is the detail.
    got = classify_end(_d(source="transport_error", status=503, reason="x", transport="tls"))
    assert got == ("transport_error", "503 x (locally generated)")


def _reject(at: float, peer: str, cn: str = "other.example") -> TlsReject:
    return TlsReject(at, peer, 1 << 30, cn, ("DNS:other.example",))  # identity mismatch


def test_tls_reject_detail_picks_the_leg_peer() -> None:
    rejects = [
        _reject(5.0, "127.0.0.1:5061", "old"),  # before the leg started
        _reject(11.0, "127.0.0.2:5061", "near"),  # same port, other address
        _reject(12.0, "127.0.0.1:5062", "port"),
    ]  # other port
    uri = "sips:+1555@127.0.0.1:5061;transport=tls"
    detail = tls_reject_detail(uri, 10.0, rejects)
    assert detail.startswith("TLS certificate of 127.0.0.2:5061 rejected")  # recent, same port
    rejects.append(_reject(13.0, "127.0.0.1:5061", "exact"))
    assert "CN=exact" in tls_reject_detail(uri, 10.0, rejects)  # its exact address wins
    assert "'127.0.0.1'" in tls_reject_detail(uri, 10.0, rejects)  # the host it wanted
    assert tls_reject_detail(uri, 20.0, rejects) == ""  # nothing since the leg started
    assert (
        tls_reject_detail("sips:+1555@carrier.example", 10.0, [_reject(11.0, "192.0.2.1:5061")])
        != ""
    )  # default port 5061
    assert tls_reject_detail("no-at-sign", 0.0, rejects) == ""


_SOURCES = st.sampled_from(["timer", "transport_error", "rx_msg", "other"])
_STATUS = st.one_of(st.none(), st.integers(100, 699))
_RECEIVED = st.one_of(
    st.just(""),
    st.just(BYE),
    st.just(OK_200),
    st.builds(
        lambda c, r: f"SIP/2.0 {c} {r}\r\nCSeq: 1 INVITE\r\n\r\n",
        st.integers(100, 699),
        st.text(max_size=20),
    ),
    st.text(max_size=80),
)
_FACTS = st.builds(
    Disconnect,
    source=_SOURCES,
    status=_STATUS,
    reason=st.text(max_size=30),
    received=_RECEIVED,
    answered=st.booleans(),
    inbound=st.booleans(),
    any_response=st.booleans(),
    transport=st.sampled_from(["udp", "tcp", "tls"]),
    tls_reject=st.sampled_from(["", "TLS certificate of x rejected: expired"]),
    offered_codecs=st.lists(st.text(max_size=12), max_size=3).map(tuple),
    remote_sdp=st.one_of(st.just(""), st.just(G729_ANSWER), st.text(max_size=80)),
)


@settings(max_examples=500, deadline=None)
@given(d=_FACTS)
def test_classification_properties(d: Disconnect) -> None:
    cause, detail = classify_end(d)
    assert cause in get_args(EndCause)
    by_stack = d.source in ("timer", "transport_error")
    # Only these causes come from a disconnect the worker did not decide itself.
    assert cause in ("remote_final", "remote_bye", "transport_error", "media_error")
    if by_stack:
        assert cause == "transport_error"
    if d.inbound:
        assert cause in ("remote_bye", "transport_error") and detail == ""
        return
    if cause == "remote_final":  # a refusal means the call was never answered
        assert not d.answered
    if cause == "media_error":
        assert d.answered and d.status in MEDIA_REFUSED and d.received.startswith("SIP/2.0 ")
    if by_stack and d.transport == "tls" and d.tls_reject:
        assert detail == d.tls_reject
    if cause in ("remote_final", "remote_bye"):
        assert detail == ""
    else:
        assert detail  # an operator always gets a reason for an error


def test_pure_modules_do_not_import_pjsua2() -> None:
    code = (
        "import sys\n"
        "import sipbridge.sip.endcause, sipbridge.sip.leg, sipbridge.sip.sdp\n"
        "import sipbridge.sip.agentleg, sipbridge.sipmsg\n"
        "assert 'pjsua2' not in sys.modules, 'pjsua2 imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
