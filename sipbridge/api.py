"""The control API (compatible with PolyAI's Outbound Calling API), FastAPI + OpenAPI."""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from sipbridge.agentview import agent_view
from sipbridge.bodylimit import BodyLimit
from sipbridge.calls import CallService, TriggerInput
from sipbridge.callsettings import StrictModel
from sipbridge.config import (
    DetectionSettings,
    IvrSettings,
    RetryConfig,
    WindowConfig,
    check_dtmf,
)
from sipbridge.errors import (
    ApiError,
    CallNotFound,
    InputError,
    InvalidTransition,
    StoreError,
)
from sipbridge.headers import is_token, validate_header_value
from sipbridge.holdapi import add_hold_route
from sipbridge.ivrscript import IvrScript, check_ivr_media
from sipbridge.mediafiles import media_path
from sipbridge.netpolicy import callback_url_problem
from sipbridge.numbers import MAX_NUMBER_CHARS, to_e164, validate_country_code
from sipbridge.ops import Operations
from sipbridge.records import CallEvent, CallRecord, CallStatus
from sipbridge.schedule import zone

log = logging.getLogger("sipbridge.api")

METADATA_MAX_B64_BYTES = 26 * 1024
API_KEY = APIKeyHeader(
    name="X-PolyAi-Auth-Token", auto_error=False, description="an API token from api.tokens"
)
SID_RE = re.compile(r"^OUT-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


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
            raise ValueError(f"detection.{_message(e.errors()[0])}") from None
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


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    """Every error response: ``error`` says what is wrong, ``field`` names the request
    field (dotted path; ``body`` for the body as a whole) or is null."""

    error: str
    field: str | None = None
    details: list[ErrorDetail] | None = Field(
        default=None, description="every problem found, for 400s from validation"
    )


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


def _field_of(loc: tuple[Any, ...], kind: str = "") -> str:
    if kind == "json_invalid":  # loc is ("body", <offset>): the body as a whole
        return "body"
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def _message(err: Any) -> str:
    """A validation error's message, without pydantic's prefix or a repeated field name."""
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    kind = err.get("type")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "json_invalid":
        pos = err.get("loc", ("body", None))[-1]
        return "not valid JSON" + (f" (at character {pos})" if isinstance(pos, int) else "")
    loc = err.get("loc") or ()
    if tuple(loc) == ("body",) and kind in (
        "missing",
        "model_attributes_type",
        "dict_type",
        "model_type",
    ):  # the body as a whole
        return (
            "required: a JSON object"
            if kind == "missing"
            else "must be a JSON object, sent with Content-Type: application/json"
        )
    last = str(loc[-1]) if loc else ""
    return msg.removeprefix(f"{last}: ") if last else msg


_NAMED_RE = re.compile(r"^([A-Za-z_][\w.]*): (.*)$", re.S)


def _located(err: Any) -> tuple[str, str]:
    """(field, message) of a validation error; a model-level check that names the key it
    is about ("connect_on: must be ...") is reported under that key."""
    field, message = _field_of(tuple(err["loc"]), err.get("type", "")), _message(err)
    m = _NAMED_RE.match(message)
    if m and err.get("type") == "value_error":
        field = m.group(1) if field == "body" else f"{field}.{m.group(1)}"
        message = m.group(2)
    return field, message


# Error responses declared in the OpenAPI document, by status.
_ERROR_TEXT = {
    400: "invalid request: the message names the field",
    401: "missing or wrong X-PolyAi-Auth-Token",
    404: "no such call (or it ended more than store.retention_s ago)",
    409: "the call is not in a state that allows this",
    413: "request body larger than api.max_body_bytes",
    429: "over the per-token API rate limit (see Retry-After)",
    503: "shutting down, overloaded, or the call store is unavailable (see Retry-After)",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorBody, "description": _ERROR_TEXT[c]} for c in codes}


def _drop_422(schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI documents 422 for validation errors; this API answers them with 400."""
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            if isinstance(op, dict):
                op.get("responses", {}).pop("422", None)
    comps = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        comps.pop(name, None)
    return schema


def create_app(
    service: CallService,
    tokens: list[str],
    on_shutdown: Callable[[], None] | None = None,
    ops: Operations | None = None,
) -> FastAPI:
    """The ASGI app. ``tokens`` are the accepted ``X-PolyAi-Auth-Token`` values.

    Handlers are ``async`` so that every call-state change happens on the event loop
    thread, the only thread that touches the call service. The app's lifespan starts
    and stops the service (and with it the SIP worker pool).
    """

    ops = ops or Operations(
        service, lambda rec: status_body(rec, []).model_dump(exclude={"events"})
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await ops.start()
        await service.start()
        try:
            yield
        finally:
            await service.stop()
            await ops.stop()
            if on_shutdown:
                on_shutdown()

    app = FastAPI(
        title="sipbridge",
        version="0.1.0",
        lifespan=lifespan,
        description="Outbound SIP bridge for voice-AI agents "
        "(PolyAI Outbound Calling API compatible)",
    )
    app.state.ops = ops
    # Oversized bodies never reach the app; the metrics middleware (added next, so
    # outside this one) still counts their 413s.
    app.add_middleware(BodyLimit, max_bytes=service.cfg.api.max_body_bytes)
    ops.install(app)
    token_bytes = [t.encode() for t in tokens]

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status,
            headers=exc.headers,
            content=ErrorBody(error=exc.message, field=exc.field).model_dump(),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errs = list(exc.errors()) or [{"loc": ("body",), "msg": "invalid request"}]
        located = [_located(e) for e in errs]
        field, message = located[0]
        details = [ErrorDetail(field=f, message=m) for f, m in located]
        return JSONResponse(
            status_code=400,
            content=ErrorBody(
                error=f"{field}: {message}", field=field, details=details
            ).model_dump(),
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own errors (unknown path, wrong method, a body that cannot be read)
        # in the documented shape.
        message = str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in message:
            message = "body cannot be read as JSON (not UTF-8, or not JSON)"
        field = "body" if exc.status_code in (400, 413) else None
        return JSONResponse(
            status_code=exc.status_code,
            headers=exc.headers,
            content=ErrorBody(error=message, field=field).model_dump(),
        )

    @app.exception_handler(StoreError)
    async def _store_down(_: Request, exc: StoreError) -> JSONResponse:
        # The call store (e.g. PostgreSQL) cannot be reached: try again later, not a bug.
        log.warning("API request failed: %s", exc)
        return JSONResponse(
            status_code=503,
            headers={"Retry-After": "5"},
            content=ErrorBody(error=f"call store unavailable: {exc}").model_dump(),
        )

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.error("internal error in an API request", exc_info=exc)
        return JSONResponse(status_code=500, content=ErrorBody(error="internal error").model_dump())

    # async: FastAPI runs a plain ``def`` dependency on its thread pool, a thread hop on
    # every request that waited for a pool thread's CPU turn under load (60-100 ms)
    async def auth(x_polyai_auth_token: Annotated[str | None, Security(API_KEY)] = None) -> str:
        if not x_polyai_auth_token:
            raise ApiError(401, "missing X-PolyAi-Auth-Token header")
        given = x_polyai_auth_token.encode()
        ok = False
        for t in token_bytes:  # constant time per token, no early exit
            ok |= hmac.compare_digest(given, t)
        if not ok:
            raise ApiError(401, "invalid X-PolyAi-Auth-Token")
        return x_polyai_auth_token

    def lookup(call_sid: str) -> tuple[CallRecord, list[CallEvent]]:
        if not SID_RE.match(call_sid):
            raise ApiError(400, f"malformed callSid {call_sid!r} (expected OUT-<uuid4>)", "callSid")
        try:
            return service.get(call_sid)
        except CallNotFound:
            raise ApiError(404, f"call {call_sid} not found", "callSid") from None

    @app.post(
        "/v1/outbound-calling/trigger",
        response_model=TriggerResponse,
        responses=_errors(400, 401, 413, 429, 503),
    )
    async def trigger(body: TriggerBody, token: str = Depends(auth)) -> TriggerResponse:
        """Queue an outbound call; returns its callSid."""
        refused = ops.refusal()  # draining, or admission control (overloaded / full)
        if refused is not None:
            raise ApiError(503, refused[0], headers={"Retry-After": str(refused[1])})
        retry_after = await service.check_api_rate(token)
        if retry_after is not None:
            raise ApiError(
                429,
                "API rate limit exceeded for this token",
                headers={"Retry-After": str(int(retry_after))},
            )
        _check_targets(body)
        try:
            if body.country_code is not None:
                validate_country_code(body.country_code)
            to = to_e164(body.to_number, body.country_code, "to_number")
            frm = (
                to_e164(body.from_number, body.country_code, "from_number")
                if body.from_number
                else None
            )
            rec = service.trigger(
                TriggerInput(
                    to_number=to,
                    from_number=frm,
                    metadata=body.metadata or {},
                    polyai_call_id=body.polyai_call_id,
                    encryption=body.encryption,
                    idempotency_key=body.idempotency_key,
                    timezone=body.timezone,
                    calling_window=body.calling_window,
                    retry=body.retry,
                    detection=body.detection,
                    status_callback=body.status_callback,
                    ivr=body.ivr,
                )
            )
        except InputError as e:  # NumberError, HeaderError, RoutingError
            raise ApiError(400, str(e), e.field) from None
        return TriggerResponse(callSid=rec.call_sid)

    @app.get(
        "/v1/outbound-calling/{call_sid}/status",
        response_model=StatusResponse,
        dependencies=[Depends(auth)],
        responses=_errors(400, 401, 404, 503),
    )
    async def status(call_sid: str) -> StatusResponse:
        """Status of a call, with its event history."""
        return status_body(*lookup(call_sid))

    @app.post(
        "/v1/outbound-calling/{call_sid}/hangup",
        response_model=StatusResponse,
        dependencies=[Depends(auth)],
        responses=_errors(400, 401, 404, 413, 503),
    )
    async def hangup(call_sid: str) -> StatusResponse:
        """Cancel a queued call or hang up a live one (CANCEL before answer, BYE after)."""
        lookup(call_sid)
        await service.hangup_anywhere(call_sid)  # cluster: forwarded to the call's node
        return status_body(*service.get(call_sid))

    @app.post(
        "/v1/outbound-calling/{call_sid}/dtmf",
        response_model=StatusResponse,
        dependencies=[Depends(auth)],
        responses=_errors(400, 401, 404, 409, 413, 503),
    )
    async def dtmf(call_sid: str, body: DtmfBody) -> StatusResponse:
        """Send DTMF digits on the answered carrier leg as RFC 4733 telephone-events."""
        lookup(call_sid)
        try:
            await service.send_dtmf_anywhere(call_sid, body.digits, body.duration_ms, body.gap_ms)
        except InvalidTransition as e:
            raise ApiError(409, str(e), "callSid") from None
        return status_body(*service.get(call_sid))

    hold_doc = {
        "response_model": StatusResponse,
        "responses": _errors(400, 401, 404, 409, 413, 503),
    }
    add_hold_route(app, service, auth, lookup, status_body, hold_doc)

    @app.get(
        "/v1/outbound-calling/by-polyai-call-id/{polyai_call_id}",
        response_model=StatusResponse,
        dependencies=[Depends(auth)],
        responses=_errors(400, 401, 404, 503),
    )
    async def by_polyai_call_id(polyai_call_id: str) -> StatusResponse:
        """Look a call up by the agent platform's call ID."""
        rec = service.find_by_polyai_call_id(polyai_call_id)
        if rec is None:
            raise ApiError(404, f"no call with polyai_call_id {polyai_call_id!r}", "polyai_call_id")
        return status_body(*service.get(rec.call_sid))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    def _check_targets(body: TriggerBody) -> None:
        """Values whose check needs the config: the callback target, the media file."""
        cfg = service.cfg
        if body.status_callback is not None:
            problem = callback_url_problem(body.status_callback, cfg.webhooks.policy())
            if problem:
                raise ApiError(400, f"status_callback: {problem}", "status_callback")
        wav = body.detection.message_wav if body.detection else None
        try:
            if wav is not None:
                media_path(cfg.media.dir, wav, "detection.message_wav")
            check_ivr_media(cfg.media.dir, body.ivr, "ivr")
        except InputError as e:  # MediaFileError
            raise ApiError(400, str(e), e.field) from None

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _drop_422(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
