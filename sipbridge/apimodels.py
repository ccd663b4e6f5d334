"""The control API's request and response bodies (PolyAI Outbound Calling API compatible,
plus sipbridge's extensions): each request field bounded and checked, naming the field."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sipbridge.agentview import agent_view
from sipbridge.apierrors import error_message
from sipbridge.callsettings import StrictModel
from sipbridge.config import (
    DetectionSettings,
    IvrSettings,
    RetryConfig,
    WindowConfig,
    check_dtmf,
)
from sipbridge.headers import is_token, validate_header_value
from sipbridge.ivrscript import IvrScript
from sipbridge.numbers import MAX_NUMBER_CHARS
from sipbridge.records import CallEvent, CallRecord, CallStatus
from sipbridge.schedule import zone

METADATA_MAX_B64_BYTES = 26 * 1024


class TriggerBody(StrictModel):
    """Body of POST /v1/outbound-calling/trigger."""

    model_config = ConfigDict(extra="forbid", frozen=False)  # shortcuts fold in below

    to_number: str = Field(
        max_length=MAX_NUMBER_CHARS,
        description="E.164 number, or a national number with country_code; "
        "ASCII digits, a leading '+' and spaces - . ( ) / only",
    )
    country_code: str | None = Field(
        None, min_length=2, max_length=2, description="ISO 3166-1 alpha-2, for national numbers"
    )
    from_number: str | None = Field(
        None,
        max_length=MAX_NUMBER_CHARS,
        description="caller ID; default: the trunk's caller_id (required when the trunk has none)",
    )
    encryption: Literal["TLS/SRTP", "TLS/RTP", "UDP/SRTP", "UDP/RTP"] | None = None
    metadata: dict[str, str] | None = Field(
        None, description="string values; each key is sent as a SIP header; base64(JSON) < 26 KB"
    )
    polyai_call_id: str | None = Field(
        None, max_length=256, description="the agent platform's call ID"
    )
    idempotency_key: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="a repeated trigger with the same key returns the same callSid",
    )
    timezone: str | None = Field(
        None,
        max_length=64,
        description="IANA zone of the recipient, overriding the number's zone(s)",
    )
    calling_window: WindowConfig | None = Field(
        None, description="allowed local days and hours, e.g. {days: mon-fri, hours: 09:00-20:00}"
    )
    retry: RetryConfig | None = Field(None, description="retry policy for this call")
    detection: DetectionSettings | None = Field(
        None, description="recipient detection settings for this call"
    )
    voicemail_action: Literal["connect", "hangup", "retry", "leave_message"] | None = Field(
        None,
        description="what to do when a machine answers (overrides detection's "
        "machine_action; leave_message needs detection.connect_on=human "
        "and detection.message_wav)",
    )
    send_digits: IvrScript | None = Field(
        None,
        description="DTMF sent after answer (0-9 * # A-D, w = 0.5 s pause, W = 1 s), or a "
        "list of DTMF strings and {say: FILE} steps (a WAV in media.dir played in order)",
    )
    ivr: IvrSettings | None = Field(
        None, description="IVR walking: digits, delay, hold until a person speaks, max time"
    )
    status_callback: str | None = Field(
        None,
        max_length=2048,
        description="http(s) URL that gets a signed POST on every status change; global "
        "addresses only unless the config allows private ones",
    )

    @model_validator(mode="after")
    def _merge_shortcuts(self) -> TriggerBody:
        """Fold voicemail_action and send_digits into detection / ivr (validated)."""
        try:
            if self.voicemail_action is not None:
                base = (self.detection or DetectionSettings()).model_dump()
                base["machine_action"] = self.voicemail_action
                self.detection = DetectionSettings.model_validate(base)
        except ValidationError as e:
            raise ValueError(f"detection.{error_message(e.errors()[0])}") from None
        if self.send_digits is not None:
            ivr = (self.ivr or IvrSettings()).model_dump()
            ivr["send_digits"] = self.send_digits
            self.ivr = IvrSettings.model_validate(ivr)
        return self

    @field_validator("polyai_call_id")
    @classmethod
    def _call_id(cls, v: str | None) -> str | None:
        return None if v is None else validate_header_value(v, "polyai_call_id")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        if v is not None:
            zone(v)
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        for key in v:
            if not is_token(key):
                raise ValueError(
                    f"key {key!r} is not usable as a SIP header name "
                    "(letters, digits and -.!%*_+`'~ only)"
                )
        size = len(base64.b64encode(json.dumps(v, separators=(",", ":")).encode()))
        if size >= METADATA_MAX_B64_BYTES:
            raise ValueError(
                f"too large: {size} bytes as base64 JSON (limit {METADATA_MAX_B64_BYTES})"
            )
        return v


class TriggerResponse(BaseModel):
    callSid: str


class EventOut(BaseModel):
    ts: str
    kind: str
    data: dict[str, Any]


class StatusResponse(BaseModel):
    callSid: str
    status: CallStatus
    reason: str = Field(description="a short cause from the documented outcomes table")
    detail: str = Field(
        "",
        description="technical text behind the reason (SIP reason "
        "phrase, codecs, error text); not a stable value",
    )
    created_at: str
    last_updated: str
    answered_by: str | None = None
    agent_answered_by: str | None = Field(None, description="who answered, as the agent said")
    disposition: dict[str, Any] | None = Field(None, description="the agent's BYE disposition")
    sip_status: int | None = None
    attempts: int = 0
    attempt_history: list[dict[str, Any]] = Field(default_factory=list)
    next_attempt_at: str | None = None
    polyai_call_id: str | None = None
    trunk: str | None = None
    to_number: str
    from_number: str
    detection: dict[str, Any] | None = Field(
        None, description="the latest detection result with its timings (ms from answer)"
    )
    legs: dict[str, Any] = Field(default_factory=dict)
    owner_node: str | None = Field(None, description="cluster mode: the node owning the call")
    events: list[EventOut] = Field(default_factory=list)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_body(rec: CallRecord, events: list[CallEvent]) -> StatusResponse:
    detection = rec.latest_detection()
    agent_answered_by, disposition = agent_view(rec)
    return StatusResponse(
        callSid=rec.call_sid,
        status=rec.status,
        reason=rec.reason,
        detail=rec.detail,
        created_at=_iso(rec.created_at),
        last_updated=_iso(rec.last_updated),
        answered_by=rec.answered_by,
        agent_answered_by=agent_answered_by,
        disposition=disposition,
        sip_status=rec.sip_status,
        attempts=rec.attempts,
        attempt_history=[a.to_json() for a in rec.attempt_history],
        next_attempt_at=_iso(rec.not_before) if rec.not_before and not rec.terminal else None,
        polyai_call_id=rec.polyai_call_id,
        trunk=rec.trunk or None,
        to_number=rec.to_number,
        from_number=rec.from_number,
        legs={leg_id: leg.to_json() for leg_id, leg in rec.legs.items()},
        detection=detection.to_dict() if detection is not None else None,
        owner_node=rec.owner_node,
        events=[EventOut(ts=_iso(e.ts), kind=e.kind, data=e.data) for e in events],
    )


class DtmfBody(StrictModel):
    """Body of POST /v1/outbound-calling/{callSid}/dtmf."""

    model_config = ConfigDict(extra="forbid")

    digits: str = Field(max_length=256, description="0-9 * # A-D; w = 0.5 s pause, W = 1 s pause")
    duration_ms: int = Field(160, ge=40, le=2000, description="length of each digit")
    gap_ms: int = Field(80, ge=20, le=2000, description="silence between digits")

    @field_validator("digits")
    @classmethod
    def _digits(cls, v: str) -> str:
        return check_dtmf(v, "")


__all__ = [
    "METADATA_MAX_B64_BYTES",
    "DtmfBody",
    "EventOut",
    "StatusResponse",
    "TriggerBody",
    "TriggerResponse",
    "status_body",
]
