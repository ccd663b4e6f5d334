"""Why a leg ended: the cause and detail of its ``ended`` event, from the facts pjsua gives
when the call is DISCONNECTED. Pure (no pjsua2, no asyncio; unit-tested on its own).

The worker reads the facts off pjsua2 objects into a :class:`Disconnect` and calls
:func:`classify_end` unless it had already decided the cause itself (a timer, a hangup).

Transport errors (``cause="transport_error"``) are recognised from the event that
disconnected the INVITE transaction: a timer (RFC 3261 17.1.1.2 Timer B, 32 s on UDP,
pjsip reports a locally generated 408) or a transport failure (pjsip reports a locally
generated 503/408 with the transport error text). As a fallback a 408/503 on a leg that
never received any response from the peer is also classified as a transport error. A TLS
leg refused for the peer's certificate names why (:func:`tls_reject_detail`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple

from sipbridge.ipc import EndCause
from sipbridge.sip.sdp import negotiation_detail
from sipbridge.sipmsg import final_response_retry_after, header, split_message
from sipbridge.tlsca import tls_reject_text

# What produced the event that disconnected the call (pjsip's ``tsxState.type`` for a
# transaction event): a timer, a transport failure, a received message, or anything else
# (no transaction event, a locally sent message).
EventSource = Literal["timer", "transport_error", "rx_msg", "other"]

# The status pjsua gives a call it ends because the answer's SDP was unusable (488 "Unable
# to create media session"; 415/406/606 from other SDP failures).
MEDIA_REFUSED = frozenset({406, 415, 488, 606})


@dataclass(frozen=True)
class Disconnect:
    """The facts about a leg at DISCONNECTED."""

    source: EventSource
    status: int | None  # pjsua's last status code (None: none)
    reason: str  # pjsua's last reason phrase
    received: str  # the whole message received with the event ("" if none)
    answered: bool
    inbound: bool  # an INVITE we received (SIP-triggered mode)
    any_response: bool  # did the peer ever send a response to this leg
    transport: str  # the leg's SIP transport: "udp", "tcp", "tls"
    tls_reject: str = ""  # TLS leg: why the peer's certificate was refused ("" none)
    offered_codecs: tuple[str, ...] = ()  # audio codecs we offered
    remote_sdp: str = ""  # the last SDP the peer sent
    answer_received: bool = False  # a 2xx to our INVITE arrived (pjsua may have refused it)


def classify_end(d: Disconnect) -> tuple[EndCause, str]:
    """(cause, detail) of a leg's ``ended`` event."""
    by_stack = d.source in ("timer", "transport_error")
    response = d.received.startswith("SIP/2.0 ")
    if d.inbound:
        # The agent platform hung up (BYE, or CANCEL before our answer), or our 200 was
        # never ACKed (Timer H).
        return ("transport_error" if by_stack else "remote_bye"), ""
    if by_stack:
        detail = f"{d.status} {d.reason} (locally generated)"
        if d.transport == "tls":
            detail = d.tls_reject or detail
        return "transport_error", detail
    if d.status in MEDIA_REFUSED and (
        (d.answered and response) or (not d.answered and d.answer_received)
    ):
        # pjsua hung up by itself (it sent the BYE) right after the answer: the carrier's
        # SDP answer is unusable (RFC 3264 6: no codec we offered, or plain RTP/AVP to a
        # mandatory-SRTP offer). pjsua ACKs the 200, then sends BYE with "Reason: SIP
        # ;cause=488" ("Unable to create media session"); the disconnect comes with the
        # response to that BYE (or the INVITE's 2xx). A 200 with no SDP answer to our
        # offer (RFC 3261 13.2.1: 406 "SDP offer/answer incomplete") or an SDP pjsip
        # cannot parse (415) is refused before the call is CONFIRMED: the same outcome,
        # though the leg was never answered.
        offered = list(d.offered_codecs)
        return "media_error", (
            f"{negotiation_detail(offered, d.remote_sdp)} ({d.status} {d.reason})"
        )
    if d.answered and response:
        # The SIP stack ended the session itself (it sent the BYE), or a failed in-dialog
        # request ended it: a session refresh (RFC 4028 10: the re-INVITE/UPDATE answered
        # 408/481, or not refreshed in time).
        first = d.received.split("\n", 1)[0].strip()
        return "transport_error", (
            f"session ended by the SIP stack: {d.status} {d.reason}"
            if d.received.startswith("SIP/2.0 2")
            else f"in-dialog request failed: {first}"
        )
    if d.answered:
        return "remote_bye", ""
    if d.status in (408, 503) and not d.any_response:
        return "transport_error", f"{d.status} {d.reason} (no response from peer)"
    return "remote_final", ""


def redirect_report(received: str) -> tuple[int, str, str] | None:
    """(status, reason phrase, detail) of a 3xx final response we did not follow (RFC 3261
    8.1.3.4; the worker's ``onCallRedirected`` stops every redirect): pjsip reports a
    stopped redirect as 487, the ended event reports the carrier's 3xx and its target.
    None for any other message."""
    if not received.startswith("SIP/2.0 3") or not final_response_retry_after(received)[0]:
        return None
    code, _, text = received[len("SIP/2.0 ") :].partition(" ")
    _start, headers, _body = split_message(received)
    target = header(headers, "contact")
    detail = f"redirect to {(target or 'no Contact')[:160]} not followed"
    return int(code), text.split("\n", 1)[0].strip()[:80], detail


class TlsReject(NamedTuple):
    """A TLS connection pjsip closed because the peer's certificate failed verification."""

    at: float  # monotonic time
    peer: str  # remote address, "ip:port"
    verify_status: int  # pj_ssl_cert_verify_flag_t bits
    subject_cn: str
    alt_names: tuple[str, ...]  # "DNS:x", "IP:x", "URI:x"


def tls_reject_detail(request_uri: str, since: float, rejects: Iterable[TlsReject]) -> str:
    """Why a TLS leg's connection was refused ("" if not for its certificate): the latest
    refusal since the leg started (``since``) of a peer on its port (its exact address
    first; a host name resolves to an address we don't see here)."""
    m = re.search(r"@(\[[^\]]+\]|[^:;>]+)(?::(\d+))?", request_uri)
    if m is None:
        return ""
    host, port = m.group(1), m.group(2) or "5061"
    recent = [r for r in rejects if r.at >= since and r.peer.rsplit(":", 1)[-1] == port]
    exact = [r for r in recent if r.peer == f"{host}:{port}"]
    for r in (exact or recent)[-1:]:
        return tls_reject_text(r.verify_status, r.peer, host, r.subject_cn, list(r.alt_names))
    return ""


__all__ = [
    "MEDIA_REFUSED",
    "Disconnect",
    "EventSource",
    "TlsReject",
    "classify_end",
    "redirect_report",
    "tls_reject_detail",
]
