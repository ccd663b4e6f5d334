"""How each way a call can end maps to an API status and reason.

One :class:`Termination` per outcome drives the API status, the retry decision and
the metrics. The table is the single place where SIP codes become user-facing reasons.

``reason`` is always one of the short, fixed causes documented in the README's outcomes
table (safe to show, to count in metrics, to match on); technical text — SIP reason
phrases, pjsua error text, codec names, exception text — goes to ``detail``.
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
    # Technical detail for operators (never part of ``reason``).
    detail: str = ""
    # Asked for by the agent (disposition ``retry=true``): retried under the retry policy
    # (max_attempts, backoff) whatever its retry_on lists.
    retry_requested: bool = False


# Every outcome kind a Termination can carry: what a route's ``retry.retry_on`` may list
# and what metrics count (tests/unit/test_outcomes.py checks every kind in the code is here).
OUTCOME_KINDS: frozenset[str] = frozenset(
    {
        # the call itself
        "completed",
        "message_left",
        "abandoned",
        "max_duration",
        "canceled",
        # the carrier's answer
        "busy",
        "no_answer",
        "not_in_service",
        "declined",
        "rejected",
        "auth",
        "redirected",
        "carrier_error",
        "transport_error",
        "error",
        "dial_error",
        # media and detection
        "media_error",
        "media_timeout",
        "machine",
        "fax",
        "no_person",
        "ivr_timeout",
        "message_error",
        "ivr_repeat",
        "operator",
        "screening",
        # the agent and the bridge
        "agent_error",
        "agent_retry",
        "bridge_error",
        "internal_error",
        # scheduling
        "queue_timeout",
        "window_error",
    }
)

# Fixed outcomes the call manager uses directly.
INTERNAL_ERROR = "internal error"
# Cluster mode: the node that owned the attempt lost its lease (died, paused, cut off); a
# surviving node ends the attempt (sipbridge.cluster.node), and the retry policy decides.
NODE_LOST = "bridge node lost"
MEDIA_NEGOTIATION_FAILED = "media negotiation failed"
MEDIA_TIMEOUT = "media timeout"
# An answered call's dialog died under it (carrier or agent leg).
CALL_LOST = "call lost"


def internal_error(detail: str) -> Termination:
    """A bug or unexpected state in the bridge: never retried (it would repeat)."""
    return Termination("failure", INTERNAL_ERROR, "internal_error", False, None, detail)


def _sip_text(status: int | None, sip_reason: str) -> str:
    return f"SIP {status} {sip_reason}".strip() if status else sip_reason


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
    403: ("rejected", "rejected by carrier", False),
    401: ("auth", "carrier authentication failed", False),
    407: ("auth", "carrier authentication failed", False),
}


def from_sip(status: int | None, sip_reason: str = "", note: str = "") -> Termination:
    """A final non-2xx SIP response from the carrier (``note``: more technical text)."""
    detail = "; ".join(t for t in (_sip_text(status, sip_reason), note) if t)
    if status is None or status < 300:
        return Termination(
            "failure", "call failed", "error", True, status, detail or "no SIP final response"
        )
    if status in _SIP_TABLE:
        kind, reason, retry = _SIP_TABLE[status]
        return Termination("failure", reason, kind, retry, status, detail)
    if 300 <= status < 400:
        # RFC 3261 8.1.3.4: the bridge never follows a redirect (the carrier would
        # choose whom we call); the call ends, the target is in ``detail``.
        return Termination(
            "failure", "redirected (not followed)", "redirected", False, status, detail
        )
    if 500 <= status < 600:
        return Termination(
            "failure", "carrier error", "carrier_error", status in (500, 503, 504), status, detail
        )
    if status >= 600:
        return Termination("failure", "call rejected", "rejected", False, status, detail)
    return Termination("failure", "call failed", "error", False, status, detail)


def from_leg_end(
    cause: str | None,
    answered: bool,
    sip_status: int | None,
    sip_reason: str = "",
    detail: str = "",
    connected: bool = True,
) -> Termination:
    """The carrier leg ended: combine why (``cause``) with the SIP status seen.

    ``connected``: the agent was connected (or the voicemail action completed) before
    the end. An answered call is a success only then; answered but never connected is a
    failure naming why it ended."""
    if cause == "worker_died":
        return Termination("failure", "SIP worker failed", "bridge_error", True, sip_status, detail)
    if cause == "media_error":
        # The 200 OK's SDP could not be used (no common codec, RTP vs SRTP, RFC 3264 6):
        # pjsua ACKed it and sent BYE itself.
        return Termination(
            "failure", MEDIA_NEGOTIATION_FAILED, "media_error", False, sip_status, detail
        )
    if cause == "media_timeout":
        return Termination("failure", MEDIA_TIMEOUT, "media_timeout", False, sip_status, detail)
    if answered and cause == "transport_error":
        # The dialog died under an answered call: a session refresh (RFC 4028) or a BYE
        # that got no answer, or the transport broke.
        return _call_lost(sip_status, detail or _sip_text(sip_status, sip_reason))
    if answered and connected:
        reason = {
            "remote_bye": "",
            "bridged_bye": "ended by agent",
            "local_hangup": "hung up by API",
            "max_duration": "max call duration reached",
        }.get(cause or "", "")
        return Termination("success", reason, "completed", False, 200, detail)
    if answered:
        reason, kind = {
            "local_hangup": ("hung up by API", "canceled"),
            "max_duration": ("max call duration reached", "max_duration"),
        }.get(cause or "", ("hung up before the agent was connected", "abandoned"))
        return Termination("failure", reason, kind, False, 200, detail)
    if cause == "ring_timeout":
        return Termination("failure", "no answer", "no_answer", True, sip_status, detail)
    if cause == "local_hangup":
        return Termination("failure", "canceled", "canceled", False, sip_status, detail)
    if cause == "transport_error":
        return Termination(
            "failure", "carrier unreachable", "transport_error", True, sip_status, detail
        )
    if cause == "dial_error":
        return Termination(
            "failure", "could not place call", "dial_error", True, sip_status, detail
        )
    return from_sip(sip_status, sip_reason, detail)


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


def agent_dialog_lost(sip_status: int | None, detail: str) -> Termination:
    """The answered agent leg's dialog died under the call (``cause`` ``transport_error``):
    the agent answered an in-dialog request (the detection INFO, a session refresh, a
    re-INVITE) with 481 or 408, which ends the dialog usage (RFC 3261 12.2.1.2, RFC 5057
    5.1), the refresh never came (RFC 4028 10) or the transport broke. The agent ended
    nothing: the call is lost, as when the carrier leg's dialog dies (never success "ended
    by agent"; not retried: the callee was reached and may have talked to the agent)."""
    return _call_lost(sip_status, f"agent leg: {detail}" if detail else "agent leg: dialog lost")


def _call_lost(sip_status: int | None, detail: str) -> Termination:
    """An answered call whose dialog died (either leg's): failure, not retried."""
    return Termination("failure", CALL_LOST, "transport_error", False, sip_status, detail)


def from_sit(code: str | None) -> Termination:
    """A special information tone heard in early media or after answer."""
    if code in _SIT_TABLE:
        kind, reason, retry = _SIT_TABLE[code]
        return Termination("failure", reason, kind, retry)
    return Termination(
        "failure", "special information tone", "not_in_service", False, None, f"SIT {code or '?'}"
    )


def from_progress_tone(progress: str) -> Termination | None:
    """A call-progress tone in early media that ends the attempt (ringback does not)."""
    if progress == "busy":
        return Termination("failure", "busy", "busy", True)
    if progress == "reorder":
        return Termination("failure", "network congestion (reorder tone)", "carrier_error", True)
    return None


def node_lost(node_id: str) -> Termination:
    """The attempt's node lost its lease; its dialog is gone (retryable: bridge_error)."""
    return Termination(
        "failure", NODE_LOST, "bridge_error", True, None, f"node {node_id} lost its lease"
    )


def from_detection(answered_by: str, retry: bool = False) -> Termination:
    """The bridge hung up because of who answered (machine / fax policy)."""
    reasons = {
        "machine": "answered by machine",
        "ivr": "answered by IVR",
        "fax": "answered by fax",
    }
    kind = "machine" if answered_by in ("machine", "ivr") else answered_by
    if answered_by in reasons:
        return Termination("failure", reasons[answered_by], kind, retry)
    return Termination(
        "failure", "answered by machine", "machine", retry, None, f"answered by {answered_by}"
    )


# Agent dispositions (sipbridge.disposition) -> (result, reason, kind, retryable). The
# "(agent)" in a reason tells the agent's verdict from the bridge's own detection.
AGENT_RETRY = "retry requested by agent"
_DISPOSITION_TABLE: dict[str, tuple[Result, str, str, bool]] = {
    "human": ("success", "ended by agent", "completed", False),
    "completed": ("success", "ended by agent", "completed", False),
    "machine": ("failure", "answered by machine (agent)", "machine", False),
    "voicemail": ("failure", "answered by machine (agent)", "machine", False),
    "ivr": ("failure", "answered by IVR (agent)", "machine", False),
    "fax": ("failure", "answered by fax (agent)", "fax", False),
    "not_in_service": ("failure", "number not in service (agent)", "not_in_service", False),
    "operator": ("failure", "answered by operator (agent)", "operator", False),
    "screening": ("failure", "answered by screening assistant (agent)", "screening", False),
    "busy": ("failure", "busy (agent)", "busy", True),
    "no_answer": ("failure", "no answer (agent)", "no_answer", True),
    "retry": ("failure", AGENT_RETRY, "agent_retry", True),
}
# agent.disposition.voicemail: "message_left" makes machine/voicemail a success.
VOICEMAIL_MESSAGE_LEFT = ("success", "voicemail message left (agent)", "message_left", False)


def from_disposition(
    value: str, retry: bool | None, detail: str = "", voicemail: str = "failure"
) -> Termination:
    """The outcome of an agent's disposition (README "Dispositions from the agent").
    ``retry`` true asks for another attempt (a success becomes failure "retry requested
    by agent"); false forbids one; None keeps the value's default."""
    result, reason, kind, retryable = _DISPOSITION_TABLE.get(value, _DISPOSITION_TABLE["completed"])
    if value in ("machine", "voicemail") and voicemail == "message_left":
        result, reason, kind, retryable = VOICEMAIL_MESSAGE_LEFT  # type: ignore[assignment]
    requested = value == "retry" if retry is None else retry
    if retry is not None:
        retryable = retry
    if requested and result == "success":
        result, reason, kind = "failure", AGENT_RETRY, "agent_retry"
    status = 200
    return Termination(result, reason, kind, retryable, status, detail, requested)
