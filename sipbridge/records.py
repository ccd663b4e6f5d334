"""What is stored about a call, typed: its status, the validated request, one record per
SIP leg and one per finished attempt, and the events of its history.

Every type here has ``to_json()`` (the JSON the store writes and the API shows) and
``from_json()`` (which raises ``ValueError`` / ``TypeError`` on a value it cannot read, so
the store can mark the row damaged). Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, cast, get_args

from sipbridge.callsettings import DetectionSettings, IvrSettings, RetryConfig, WindowConfig
from sipbridge.media.detect import Detection

CallStatus = Literal["queued", "calling", "success", "failure"]
STATUSES: tuple[CallStatus, ...] = get_args(CallStatus)
TERMINAL: frozenset[CallStatus] = frozenset({"success", "failure"})
LegRole = Literal["carrier", "agent"]


def call_status(value: object) -> CallStatus:
    """``value`` as a status, or ``ValueError``."""
    if value not in STATUSES:
        raise ValueError(f"unknown call status {value!r}")
    return cast(CallStatus, value)


@dataclass(frozen=True)
class CallEvent:
    ts: float
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutboxMessage:
    """One status callback in the durable outbox: written in the same transaction as the
    status it reports, sent with the same ``delivery_id`` on every attempt."""

    delivery_id: str
    call_sid: str
    status: str
    url: str
    body: bytes
    created_at: float
    attempts: int = 0
    next_at: float = 0.0


@dataclass(frozen=True)
class CallRequest:
    """The validated trigger as given (API body or SIP-triggered INVITE): what dialling,
    retries and detection need from the client. Parsed once when a row is read."""

    metadata: Mapping[str, str] = field(default_factory=dict)
    encryption: str | None = None
    from_number: str | None = None
    timezone: str | None = None
    calling_window: WindowConfig | None = None
    retry: RetryConfig | None = None
    detection: DetectionSettings | None = None
    ivr: IvrSettings | None = None
    status_callback: str | None = None
    # SIP-triggered calls: headers copied from the agent's INVITE to the carrier INVITE,
    # and the inbound leg's id.
    copy_headers: Mapping[str, str] | None = None
    inbound_leg: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "metadata": dict(self.metadata),
            "encryption": self.encryption,
            "from_number": self.from_number,
        }
        for name in ("timezone", "status_callback", "inbound_leg"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        for name in ("calling_window", "retry", "detection", "ivr"):
            model = getattr(self, name)
            if model is not None:
                out[name] = model.model_dump()
        if self.copy_headers is not None:
            out["copy_headers"] = dict(self.copy_headers)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CallRequest:
        def text(name: str) -> str | None:
            v = d.get(name)
            if v is not None and not isinstance(v, str):
                raise ValueError(f"request.{name}: not a string")
            return v or None

        def strings(name: str) -> dict[str, str] | None:
            v = d.get(name)
            if v is None:
                return None
            if not isinstance(v, dict) or not all(
                isinstance(k, str) and isinstance(x, str) for k, x in v.items()
            ):
                raise ValueError(f"request.{name}: not a string map")
            return v

        window, retry, det, ivr = (
            d.get(k) for k in ("calling_window", "retry", "detection", "ivr")
        )
        return cls(
            metadata=strings("metadata") or {},
            encryption=text("encryption"),
            from_number=text("from_number"),
            timezone=text("timezone"),
            calling_window=WindowConfig.model_validate(window) if window else None,
            retry=RetryConfig.model_validate(retry) if retry is not None else None,
            detection=DetectionSettings.model_validate(det) if det is not None else None,
            ivr=IvrSettings.model_validate(ivr) if ivr is not None else None,
            status_callback=text("status_callback"),
            copy_headers=strings("copy_headers"),
            inbound_leg=text("inbound_leg"),
        )


# LegRecord fields shown even when None once the leg has ended (the end's facts).
_END_FIELDS = ("cause", "sip_status")


@dataclass(frozen=True)
class LegRecord:
    """The stored facts of one SIP leg (carrier b-leg, or the agent a-leg, dialled or
    inbound). Times are epoch seconds from the worker; ``None`` = not (yet) known."""

    role: LegRole = "carrier"
    direction: Literal["inbound"] | None = None  # an INVITE from the agent platform
    trunk: str | None = None
    worker: int | None = None
    attempt: int | None = None
    request_uri: str | None = None
    source: str | None = None  # inbound: "ip:port" of the agent platform
    bridge_with: str | None = None  # agent leg: the carrier leg it is bridged to
    sip_call_id: str | None = None
    invite_at: float | None = None
    ring_at: float | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    cause: str | None = None
    sip_status: int | None = None
    sip_reason: str | None = None
    detection: Mapping[str, Detection] = field(default_factory=dict)  # phase -> result
    # Agent leg: the disposition its BYE carried (sipbridge.disposition.Disposition.to_json).
    disposition: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "detection":
                if v:
                    out["detection"] = {phase: det.to_dict() for phase, det in v.items()}
            elif v is not None or (f.name in _END_FIELDS and self.ended_at is not None):
                out[f.name] = v
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LegRecord:
        if not isinstance(d, Mapping):
            raise ValueError("a leg is not a JSON object")
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known and k != "detection"}
        if kw.get("role", "carrier") not in get_args(LegRole):
            raise ValueError(f"unknown leg role {kw.get('role')!r}")
        if not isinstance(kw.get("disposition") or {}, Mapping):
            raise ValueError("leg disposition is not a JSON object")
        dets = d.get("detection") or {}
        if not isinstance(dets, Mapping):
            raise ValueError("leg detection is not a JSON object")
        return cls(**kw, detection={str(p): Detection(**v) for p, v in dets.items()})


@dataclass(frozen=True)
class AttemptRecord:
    """One finished attempt of a call: its outcome and the trunks its legs went to."""

    attempt: int
    result: str
    reason: str
    detail: str
    kind: str
    sip_status: int | None
    ended_at: str  # ISO 8601 UTC
    trunks: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "result": self.result,
            "reason": self.reason,
            "detail": self.detail,
            "kind": self.kind,
            "sip_status": self.sip_status,
            "ended_at": self.ended_at,
            "trunks": list(self.trunks),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AttemptRecord:
        if not isinstance(d, Mapping):
            raise ValueError("an attempt is not a JSON object")
        return cls(
            attempt=int(d["attempt"]),
            result=str(d["result"]),
            reason=str(d.get("reason", "")),
            detail=str(d.get("detail", "")),
            kind=str(d.get("kind", "")),
            sip_status=d.get("sip_status"),
            ended_at=str(d.get("ended_at", "")),
            trunks=tuple(d.get("trunks") or ()),
        )


@dataclass(frozen=True)
class CallRecord:
    call_sid: str
    status: CallStatus
    to_number: str
    from_number: str
    created_at: float
    last_updated: float
    reason: str = ""
    trunk: str = ""
    sip_status: int | None = None
    answered_by: str | None = None
    polyai_call_id: str | None = None
    attempts: int = 0
    ended_at: float | None = None
    # The validated trigger (metadata, extensions) as given, for dialling and retries.
    request: CallRequest = field(default_factory=CallRequest)
    # Per-leg facts by leg id: SIP Call-IDs, worker, times, detection.
    legs: Mapping[str, LegRecord] = field(default_factory=dict)
    # Not dialled before this epoch time (calling window, retry backoff).
    not_before: float | None = None
    idempotency_key: str | None = None
    # One entry per finished attempt.
    attempt_history: tuple[AttemptRecord, ...] = ()
    # Technical text behind ``reason`` (SIP reason phrase, pjsua error, codecs, exception).
    detail: str = ""
    # Cluster mode (PostgreSQL): the node that claimed the call's current attempt (None:
    # unclaimed) and the attempt epoch its writes are fenced by. Always None/0 on SQLite.
    owner_node: str | None = None
    epoch: int = 0
    # Not stored: why a row could not be read as written (unparseable JSON column). The
    # call manager fails such a call instead of acting on half of it.
    damaged: str = ""

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def leg(self, leg_id: str) -> LegRecord | None:
        return self.legs.get(leg_id)

    def with_leg(self, leg_id: str, leg: LegRecord) -> Mapping[str, LegRecord]:
        """The legs with ``leg_id`` set to ``leg`` (for a status change or save)."""
        return {**self.legs, leg_id: leg}

    def latest_detection(self) -> Detection | None:
        """The newest answer (else early) detection result over the legs."""
        latest: Detection | None = None
        for leg in self.legs.values():
            latest = leg.detection.get("answer") or leg.detection.get("early") or latest
        return latest


__all__ = [
    "STATUSES",
    "TERMINAL",
    "AttemptRecord",
    "CallEvent",
    "CallRecord",
    "CallRequest",
    "CallStatus",
    "LegRecord",
    "LegRole",
    "OutboxMessage",
    "call_status",
]
