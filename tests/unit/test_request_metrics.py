"""sipbridge.metrics.RequestMetrics: the API's request counter as a plain ASGI middleware.
Its status code is the one the client saw; an app that raises before answering is a 500."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.routing import Route

from sipbridge.bodylimit import Scope
from sipbridge.metrics import Metrics, RequestMetrics


def _count(m: Metrics, route: str, method: str, code: str) -> float:
    v = m.registry.get_sample_value(
        "sipbridge_api_requests_total", {"route": route, "method": method, "code": code}
    )
    return v or 0.0


def _call(app: Any, path: str = "/x", method: str = "GET") -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    asyncio.run(app(scope, receive, send))
    return sent


def test_counts_the_code_sent_under_the_route_template() -> None:
    m = Metrics()
    route = Route("/v1/outbound-calling/{call_sid}/status", endpoint=lambda r: None)

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        scope["route"] = route  # what the router does when a route matches
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    sent = _call(RequestMetrics(app, m), "/v1/outbound-calling/OUT-1/status")
    assert [x["type"] for x in sent] == ["http.response.start", "http.response.body"]
    assert _count(m, "/v1/outbound-calling/{call_sid}/status", "GET", "404") == 1
    assert _count(m, "unmatched", "GET", "404") == 0


def test_an_app_that_raises_before_answering_is_counted_as_500() -> None:
    m = Metrics()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        _call(RequestMetrics(app, m), "/nope", "POST")
    assert _count(m, "unmatched", "POST", "500") == 1


def test_lifespan_and_websocket_scopes_pass_through_uncounted() -> None:
    m = Metrics()
    seen: list[str] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    mw = RequestMetrics(app, m)

    async def nothing() -> dict[str, Any]:
        return {}

    async def drop(_: Any) -> None:
        return None

    asyncio.run(mw({"type": "lifespan"}, nothing, drop))
    assert seen == ["lifespan"]
    assert m.registry.get_sample_value("sipbridge_api_requests_total", {}) is None
