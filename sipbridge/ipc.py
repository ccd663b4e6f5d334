"""The versioned IPC protocol between the supervisor and the SIP worker processes.

Messages are plain dicts (picklable, JSON-compatible) carrying ``v`` (protocol version)
and ``type``. Commands go supervisor -> worker, events go worker -> supervisor.
Pure module: no pjsua2, no asyncio.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sipbridge.errors import ProtocolError
from sipbridge.media.detect import Detection
from sipbridge.plan import DialPlan

PROTOCOL_VERSION = 1

LegState = Literal["trying", "ringing", "early", "answered", "ended"]

# Why a leg ended, from the bridge's side (the SIP status tells the peer's side).
EndCause = Literal[
    "remote_final",  # the peer sent a final non-2xx response
    "remote_bye",  # the peer hung up an answered call
    "ring_timeout",  # no answer before ring_timeout_s: we sent CANCEL
    "max_duration",  # answered call reached max_duration_s: we sent BYE
    "local_hangup",  # the supervisor asked (API hangup, shutdown)
    "bridged_bye",  # the other leg of the bridge ended, so the worker ended this one
    "transport_error",  # could not send / no response (timer B/F, ICMP)
    "dial_error",  # makeCall itself failed (bad URI, too many calls)
    "media_error",  # the answer's SDP was unusable (no common codec, RTP vs SRTP): BYE sent
    "media_timeout",  # no RTP on an answered sendrecv leg for media_timeout_s: BYE sent
    "worker_died",  # synthesised by the supervisor when a worker process dies
]


@dataclass(frozen=True)
class Dial:
    plan: DialPlan
    type: str = "dial"


@dataclass(frozen=True)
class Hangup:
    leg_id: str
    reason: str = "local_hangup"
    type: str = "hangup"


@dataclass(frozen=True)
class SendDtmf:
    """Send DTMF on a leg as RFC 4733 telephone-events. ``digits`` holds 0-9 * # A-D,
    and pauses: ``w`` = 0.5 s, ``W`` = 1 s. Each digit lasts ``duration_ms`` and digits
    are ``gap_ms`` apart."""

    leg_id: str
    digits: str
    duration_ms: int = 160
    gap_ms: int = 80
    type: str = "dtmf"


@dataclass(frozen=True)
class BridgeLegs:
    """Connect two answered legs' audio both ways (and relay DTMF from ``agent_leg``)."""

    carrier_leg: str
    agent_leg: str
    type: str = "bridge"


@dataclass(frozen=True)
class PlayAudio:
    """Play a WAV file (8/16 kHz mono PCM) into a leg; ``PlaybackDone`` when it ends."""

    leg_id: str
    path: str
    type: str = "play"


@dataclass(frozen=True)
class Listen:
    """Analyse a leg's audio in another phase: ``phase`` "hold" waits for a live person
    (not music, not a looping prompt) and reports it as a DetectionReport of that phase.
    ``phase`` "agent_hold" on a bridged carrier leg puts its agent on hold the same way
    (sipbridge.sip.agenthold; reported as AgentHoldEvent)."""

    leg_id: str
    phase: str
    config: dict[str, Any] = field(default_factory=dict)
    type: str = "listen"


@dataclass(frozen=True)
class Respond:
    """Answer an inbound INVITE (SIP-triggered mode): 180/183 (with early media bridged
    from ``media_from`` when given), 200, or a final error status."""

    leg_id: str
    status: int
    reason: str = ""
    media_from: str | None = None
    type: str = "respond"


@dataclass(frozen=True)
class SendInfo:
    """Send a SIP INFO (RFC 6086) in an answered leg's dialog."""

    leg_id: str
    content_type: str
    body: str
    headers: tuple[tuple[str, str], ...] = ()
    type: str = "info"


@dataclass(frozen=True)
class Shutdown:
    type: str = "shutdown"


@dataclass(frozen=True)
class LegEvent:
    """A leg's state changed. ``sip_status``/``sip_reason`` are the last SIP status seen."""

    leg_id: str
    call_sid: str
    state: LegState
    worker_id: int
    ts: float  # time.time() in the worker when it happened
    sip_status: int | None = None
    sip_reason: str = ""
    sip_call_id: str = ""
    cause: EndCause | None = None  # only for state == "ended"
    answered: bool = False  # only for state == "ended": was the leg ever answered
    detail: str = ""  # human-readable extra, e.g. a transport error text
    # Seconds from a final response's Retry-After header (RFC 3261 20.33), e.g. on 503.
    retry_after_s: float | None = None
    # Only for "trying": monotonic times the worker took the Dial and makeCall returned
    # (sipbridge.dialstages).
    dial_mono: tuple[float, float] | None = None
    type: str = "leg"


@dataclass(frozen=True)
class DetectionReport:
    """A recipient-detection result for a leg.

    ``phase`` is "early" (183 early media: SIT, call progress) or "answer" (after 200 OK:
    human / machine / ivr / fax / silence / unknown, then the beep). ``kind`` is the
    detector's event kind: "decision", "update" (e.g. the beep finalising a machine) or
    "progress" (call-progress tones)."""

    leg_id: str
    call_sid: str
    worker_id: int
    ts: float
    phase: str
    kind: str
    detection: Detection
    type: str = "detection"


@dataclass(frozen=True)
class DtmfReceived:
    """A DTMF digit received on a leg (RFC 4733 event or SIP INFO)."""

    leg_id: str
    call_sid: str
    worker_id: int
    ts: float
    digit: str
    duration_ms: int
    method: str  # "rfc2833" | "info"
    relayed_to: str | None = None  # the leg it was relayed to as RFC 4733, if any
    type: str = "dtmf_rx"


@dataclass(frozen=True)
class DtmfSent:
    """The worker finished sending a SendDtmf string (pauses included)."""

    leg_id: str
    call_sid: str
    worker_id: int
    ts: float
    digits: str
    type: str = "dtmf_sent"


@dataclass(frozen=True)
class PlaybackDone:
    leg_id: str
    call_sid: str
    worker_id: int
    ts: float
    path: str
    error: str = ""
    type: str = "play_done"


@dataclass(frozen=True)
class InboundCall:
    """An INVITE from an allowed agent-platform address (SIP-triggered mode). The worker
    has sent 100 Trying and waits for ``Respond``; ``leg_id`` names this leg from now on.
    Sources outside ``sip.inbound_allow`` get 403 in the worker and never reach here."""

    leg_id: str
    worker_id: int
    ts: float
    request_uri: str
    from_uri: str
    to_uri: str
    sip_call_id: str
    source: str  # "ip:port"
    headers: tuple[tuple[str, str], ...]
    type: str = "inbound"


@dataclass(frozen=True)
class ByeHeaders:
    """The BYE that ended an agent leg carried these headers (its ``read_headers``; raw
    values, bounded by :func:`sipbridge.disposition.bye_header_values`). Sent just
    before that leg's ``ended`` event, so before its bridged carrier leg's end."""

    leg_id: str
    call_sid: str
    worker_id: int
    ts: float
    headers: tuple[tuple[str, str], ...]
    type: str = "bye_headers"


@dataclass(frozen=True)
class AgentHoldEvent:
    """The agent's hold on request (sipbridge.sip.agenthold) changed: ``state`` is
    "holding", "resumed" (a person spoke, or the agent took the call back), "caught_up"
    (the agent hears the carrier directly again) or "refused" (``detail`` says why).
    ``leg_id`` is the carrier leg; ``timings`` holds the measured ms values."""

    leg_id: str
    call_sid: str
    worker_id: int
    ts: float
    state: str
    via: str = ""  # "reinvite" | "info" | "api" | "person" | "agent"
    detail: str = ""
    timings: dict[str, int] = field(default_factory=dict)
    type: str = "agent_hold"


@dataclass(frozen=True)
class WorkerReady:
    worker_id: int
    sip_port: int
    capacity: int
    type: str = "ready"


@dataclass(frozen=True)
class WorkerLog:
    worker_id: int
    level: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)
    type: str = "log"


Command = Dial | Hangup | SendDtmf | BridgeLegs | PlayAudio | Listen | Respond | SendInfo | Shutdown
# What a worker reports about calls (the call manager's input, sipbridge.calls.events).
CallReport = (
    LegEvent
    | DetectionReport
    | DtmfReceived
    | DtmfSent
    | PlaybackDone
    | InboundCall
    | ByeHeaders
    | AgentHoldEvent
)
Event = CallReport | WorkerReady | WorkerLog


def encode(msg: Command | Event) -> dict[str, Any]:
    d = asdict(msg)
    d["v"] = PROTOCOL_VERSION
    return d


def decode(d: Any) -> Command | Event:
    if not isinstance(d, dict):
        raise ProtocolError(f"message is not a dict: {type(d).__name__}")
    v = d.get("v")
    if v != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {v!r} (want {PROTOCOL_VERSION})")
    body = {k: val for k, val in d.items() if k != "v"}
    kind = body.get("type")
    try:
        if kind == "dial":
            plan = dict(body["plan"])
            plan["headers"] = tuple(tuple(h) for h in plan["headers"])
            if plan.get("auth") is not None:
                plan["auth"] = tuple(plan["auth"])
            plan["codecs"] = tuple(plan.get("codecs") or ())
            plan["read_headers"] = tuple(plan.get("read_headers") or ())
            if plan.get("session_timers") is not None:
                plan["session_timers"] = tuple(plan["session_timers"])
            return Dial(plan=DialPlan(**plan))
        if kind in ("inbound", "info", "bye_headers"):
            body["headers"] = tuple(tuple(h) for h in body["headers"])
        if kind == "detection":
            body["detection"] = Detection(**body["detection"])
        if kind == "leg" and body.get("dial_mono") is not None:
            body["dial_mono"] = tuple(body["dial_mono"])
        cls = {
            "hangup": Hangup,
            "dtmf": SendDtmf,
            "bridge": BridgeLegs,
            "play": PlayAudio,
            "listen": Listen,
            "respond": Respond,
            "info": SendInfo,
            "shutdown": Shutdown,
            "leg": LegEvent,
            "detection": DetectionReport,
            "dtmf_rx": DtmfReceived,
            "dtmf_sent": DtmfSent,
            "play_done": PlaybackDone,
            "inbound": InboundCall,
            "bye_headers": ByeHeaders,
            "agent_hold": AgentHoldEvent,
            "ready": WorkerReady,
            "log": WorkerLog,
        }.get(str(kind))
        if cls is None:
            raise ProtocolError(f"unknown message type {kind!r}")
        return cls(**body)  # type: ignore[no-any-return,unused-ignore]
    except (TypeError, KeyError) as e:
        raise ProtocolError(f"malformed {kind!r} message: {e}") from None
