"""How each way a call can end maps to an API status and reason.

One :class:`Termination` per outcome drives the API status, the retry decision and
the metrics. The table is the single place where SIP codes become user-facing reasons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Result = Literal["success", "failure"]


@dataclass(frozen=True)
class Termination:
    result: Result
    reason: str
    # Outcome class used by retry policies and metrics.
    kind: str
    retryable: bool = False
    sip_status: int | None = None


# SIP final responses (RFC 3261 section 21) -> (kind, reason, retryable).
_SIP_TABLE: dict[int, tuple[str, str, bool]] = {
    404: ("not_in_service", "number not in service", False),
    484: ("not_in_service", "number not in service (address incomplete)", False),
    410: ("not_in_service", "number not in service (gone)", False),
    604: ("not_in_service", "number not in service", False),
    486: ("busy", "busy", True),
    600: ("busy", "busy", True),
    480: ("no_answer", "no answer", True),
    408: ("no_answer", "no answer", True),
    487: ("canceled", "canceled", False),
    603: ("declined", "declined", False),
    403: ("rejected", "rejected by carrier (SIP 403 Forbidden)", False),
    401: ("auth", "carrier authentication failed (SIP 401)", False),
    407: ("auth", "carrier authentication failed (SIP 407)", False),
}


def from_sip(status: int | None, sip_reason: str = "") -> Termination:
    """A final non-2xx SIP response from the carrier."""
    if status is None or status < 300:
        return Termination("failure", "call failed without a SIP final response", "error", True,
                           status)
    if status in _SIP_TABLE:
        kind, reason, retry = _SIP_TABLE[status]
        return Termination("failure", reason, kind, retry, status)
    text = f" {sip_reason}" if sip_reason else ""
    if 500 <= status < 600:
        return Termination("failure", f"carrier error (SIP {status}{text})", "carrier_error",
                           status in (500, 503, 504), status)
    if status >= 600:
        return Termination("failure", f"call rejected (SIP {status}{text})", "rejected", False,
                           status)
    return Termination("failure", f"call failed (SIP {status}{text})", "error", False, status)


def from_leg_end(
    cause: str | None, answered: bool, sip_status: int | None, sip_reason: str = "",
    detail: str = "",
) -> Termination:
    """The carrier leg ended: combine why (``cause``) with the SIP status seen."""
    if cause == "worker_died":
        return Termination("failure", f"SIP worker failed: {detail}".rstrip(": "), "bridge_error",
                           True, sip_status)
    if answered:
        reason = {
            "remote_bye": "",
            "bridged_bye": "ended by agent",
            "local_hangup": "hung up by API",
            "max_duration": "max call duration reached",
        }.get(cause or "", "")
        return Termination("success", reason, "completed", False, 200)
    if cause == "ring_timeout":
        return Termination("failure", "no answer", "no_answer", True, sip_status)
    if cause == "local_hangup":
        return Termination("failure", "canceled", "canceled", False, sip_status)
    if cause == "transport_error":
        text = f": {detail}" if detail else ""
        return Termination("failure", f"carrier unreachable{text}", "transport_error", True,
                           sip_status)
    if cause == "dial_error":
        text = f": {detail}" if detail else ""
        return Termination("failure", f"could not place call{text}", "dial_error", True,
                           sip_status)
    return from_sip(sip_status, sip_reason)


# SIT codes (Telcordia GR-1162 / ANSI T1.401; decoded in sipbridge.media.tones) ->
# (kind, reason, retryable). Intercept and vacant code mean the number is not in service;
# reorder and no-circuit are network congestion and worth another try later.
_SIT_TABLE: dict[str, tuple[str, str, bool]] = {
    "IC": ("not_in_service", "number not in service (SIT IC)", False),
    "VC": ("not_in_service", "number not in service (SIT VC)", False),
    "RO": ("carrier_error", "network congestion (SIT RO)", True),
    "RO'": ("carrier_error", "network congestion (SIT RO')", True),
    "NC": ("carrier_error", "no circuit available (SIT NC)", True),
    "NC'": ("carrier_error", "no circuit available (SIT NC')", True),
    "IO": ("not_in_service", "call cannot be completed (SIT IO)", False),
    "FU": ("not_in_service", "call cannot be completed (SIT FU)", False),
    "ITU": ("not_in_service", "special information tone (SIT ITU)", False),
}


def from_sit(code: str | None) -> Termination:
    """A special information tone heard in early media or after answer."""
    kind, reason, retry = _SIT_TABLE.get(
        code or "", ("not_in_service", f"special information tone (SIT {code or '?'})", False))
    return Termination("failure", reason, kind, retry)


def from_progress_tone(progress: str) -> Termination | None:
    """A call-progress tone in early media that ends the attempt (ringback does not)."""
    if progress == "busy":
        return Termination("failure", "busy", "busy", True)
    if progress == "reorder":
        return Termination("failure", "network congestion (reorder tone)", "carrier_error", True)
    return None


def from_detection(answered_by: str, retry: bool = False) -> Termination:
    """The bridge hung up because of who answered (machine / fax policy)."""
    reasons = {
        "machine": "answered by machine",
        "ivr": "answered by IVR",
        "fax": "answered by fax",
    }
    kind = "machine" if answered_by in ("machine", "ivr") else answered_by
    return Termination("failure", reasons.get(answered_by, f"answered by {answered_by}"), kind,
                       retry)
