"""The control API (compatible with PolyAI's Outbound Calling API), FastAPI + OpenAPI: the
app, its authentication and its routes. The request and response bodies are in
:mod:`sipbridge.apimodels`, the error answers in :mod:`sipbridge.apierrors`."""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Security
from fastapi.security import APIKeyHeader

from sipbridge.apierrors import add_error_handlers, drop_422, error_responses
from sipbridge.apimodels import METADATA_MAX_B64_BYTES as METADATA_MAX_B64_BYTES
from sipbridge.apimodels import (
    DtmfBody,
    StatusResponse,
    TriggerBody,
    TriggerResponse,
    status_body,
)
from sipbridge.bodylimit import BodyLimit
from sipbridge.calls import CallService, TriggerInput
from sipbridge.errors import ApiError, CallNotFound, InputError, InvalidTransition
from sipbridge.holdapi import add_hold_route
from sipbridge.ivrscript import check_ivr_media
from sipbridge.mediafiles import media_path
from sipbridge.netpolicy import callback_url_problem
from sipbridge.numbers import to_e164, validate_country_code
from sipbridge.ops import Operations
from sipbridge.records import CallEvent, CallRecord

log = logging.getLogger("sipbridge.api")

API_KEY = APIKeyHeader(
    name="X-PolyAi-Auth-Token", auto_error=False, description="an API token from api.tokens"
)
SID_RE = re.compile(r"^OUT-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


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

    add_error_handlers(app)

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
        responses=error_responses(400, 401, 413, 429, 503),
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
                ),
                admitted=True,  # admission control let it in above
            )
        except InputError as e:  # NumberError, HeaderError, RoutingError
            raise ApiError(400, str(e), e.field) from None
        return TriggerResponse(callSid=rec.call_sid)

    @app.get(
        "/v1/outbound-calling/{call_sid}/status",
        response_model=StatusResponse,
        dependencies=[Depends(auth)],
        responses=error_responses(400, 401, 404, 503),
    )
    async def status(call_sid: str) -> StatusResponse:
        """Status of a call, with its event history."""
        return status_body(*lookup(call_sid))

    @app.post(
        "/v1/outbound-calling/{call_sid}/hangup",
        response_model=StatusResponse,
        dependencies=[Depends(auth)],
        responses=error_responses(400, 401, 404, 413, 503),
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
        responses=error_responses(400, 401, 404, 409, 413, 503),
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
        "responses": error_responses(400, 401, 404, 409, 413, 503),
    }
    add_hold_route(app, service, auth, lookup, status_body, hold_doc)

    @app.get(
        "/v1/outbound-calling/by-polyai-call-id/{polyai_call_id}",
        response_model=StatusResponse,
        dependencies=[Depends(auth)],
        responses=error_responses(400, 401, 404, 503),
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
            app.openapi_schema = drop_422(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
