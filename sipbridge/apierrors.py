"""The control API's error answers: validation errors located by field, the documented
error responses of each route, and the exception handlers that give every error the one
shape (:class:`ErrorBody`)."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from sipbridge.errors import ApiError, StoreError

log = logging.getLogger("sipbridge.api")


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


def _field_of(loc: tuple[Any, ...], kind: str = "") -> str:
    if kind == "json_invalid":  # loc is ("body", <offset>): the body as a whole
        return "body"
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def error_message(err: Any) -> str:
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
    field, message = _field_of(tuple(err["loc"]), err.get("type", "")), error_message(err)
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


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorBody, "description": _ERROR_TEXT[c]} for c in codes}


def drop_422(schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI documents 422 for validation errors; this API answers them with 400."""
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            if isinstance(op, dict):
                op.get("responses", {}).pop("422", None)
    comps = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        comps.pop(name, None)
    return schema


def add_error_handlers(app: FastAPI) -> None:
    """Every error answer in the documented shape (:class:`ErrorBody`): the API's own
    (``ApiError``), validation (400 naming the field, never FastAPI's 422), Starlette's
    (unknown path, wrong method, unreadable body), the call store down (503) and anything
    unexpected (500, logged)."""

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


__all__ = [
    "ErrorBody",
    "ErrorDetail",
    "add_error_handlers",
    "drop_422",
    "error_message",
    "error_responses",
]
