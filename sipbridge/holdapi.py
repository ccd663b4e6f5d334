"""``POST /v1/outbound-calling/{callSid}/hold``: the agent platform puts a bridged call's
agent on hold over HTTP (the same as the agent's own sendonly re-INVITE or control INFO,
see sipbridge.holdcontrol). Added to the app by :func:`add_hold_route`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI

from sipbridge.calls import CallService
from sipbridge.errors import ApiError, InvalidTransition
from sipbridge.records import CallEvent, CallRecord


def add_hold_route(
    app: FastAPI,
    service: CallService,
    auth: Callable[..., Awaitable[str]],
    lookup: Callable[[str], tuple[CallRecord, list[CallEvent]]],
    status_body: Callable[[CallRecord, list[CallEvent]], Any],
    doc: dict[str, Any],
) -> None:
    """The route, authenticated like the other call actions; ``lookup`` gives 400 for a
    malformed callSid and 404 for an unknown one; it answers the status body. ``doc``: the
    route's ``response_model`` and ``responses`` for the OpenAPI document."""

    @app.post(
        "/v1/outbound-calling/{call_sid}/hold",
        dependencies=[Depends(auth)],
        **doc,
    )
    async def hold(call_sid: str) -> Any:
        """Put the bridged call's agent on hold: the bridge listens to the carrier leg
        and gives the agent the call back (re-INVITE, ``X-Sipbridge-Answered-By: human``)
        when a person speaks. 409 when the call is not bridged to an answered agent."""
        lookup(call_sid)
        try:
            service.hold(call_sid)
        except InvalidTransition as e:
            raise ApiError(409, str(e), "callSid") from None
        return status_body(*service.get(call_sid))


__all__ = ["add_hold_route"]
