"""Immutable dial plans: everything one attempt needs, resolved before dialling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DialPlan:
    """One outbound leg, fully resolved: no config look-ups happen after this."""

    call_sid: str
    leg_id: str  # unique per leg, e.g. "<call_sid>/b1"
    trunk: str
    request_uri: str  # sip:+15551234567@carrier.example:5060;transport=udp
    from_uri: str  # "<sip:+15557654321@bridge.example>"
    to_uri: str
    headers: tuple[tuple[str, str], ...]
    ring_timeout_s: float
    max_duration_s: float
    transport: str = "udp"
    # Digest credentials (RFC 3261 22, RFC 8760) answered when the carrier challenges
    # with 401/407: (username, password, realm); realm "*" answers any realm.
    auth: tuple[str, str, str] | None = None
    # SRTP for this leg (RFC 4568 SDES): "off" or "mandatory" (from the trigger's
    # `encryption` or the trunk's default).
    srtp: str = "off"
    # transport "tls": verify the peer's certificate and host name (RFC 5922) against
    # the PEM CA file ``tls_ca_file`` ("" = the OS bundle, see sipbridge.tlsca).
    tls_verify: bool = True
    tls_ca_file: str = ""
    # Recipient detection in the worker: {"early": bool, "answer": bool,
    # "config": {DetectionConfig field: value}, and with a prompt library "prompts": folder,
    # "prompt_limits": [max_s, max_bytes]}; None = no media analysis.
    detection: dict[str, Any] | None = None
    # "carrier" (b-leg, to the callee) or "agent" (a-leg, to the AI agent's SIP URI).
    role: str = "carrier"
    # Once this leg and the named leg are both answered, the worker connects their audio
    # both ways and relays DTMF received on the agent leg to the carrier leg (RFC 4733).
    bridge_with: str | None = None
    # Carrier profile (sipbridge.carrier): pjsua codec ids offered in this order (empty:
    # pjsua's defaults), the RFC 4733 telephone-event payload type of our offer (0: as
    # pjsua makes it), RFC 4028 (Session-Expires, Min-SE) seconds (None: sip-wide).
    codecs: tuple[str, ...] = ()
    telephone_event_pt: int = 0
    session_timers: tuple[int, int] | None = None
    # Agent leg: the header names whose values the worker reports (ipc.ByeHeaders) from a
    # BYE the agent sends (its disposition, sipbridge.disposition); empty: none.
    read_headers: tuple[str, ...] = ()
    # The first hop, a loose-routing proxy (RFC 3261 16.12, ";lr"): behind the edge proxy
    # its inside socket, so the Request-URI (and a digest's uri, RFC 2617 3.2.2.5) names
    # the carrier; "" sends to the Request-URI's host.
    next_hop: str = ""
