"""Request body size limit: an ASGI middleware answering 413 in the API's error shape.

With a ``Content-Length`` above the limit the request is refused before a byte of the
body is read. Without one (``Transfer-Encoding: chunked``) the body is read chunk by
chunk and refused as soon as the count passes the limit, so at most ``max_bytes`` (plus
one chunk) is ever held in memory. A body within the limit is replayed to the app.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def send_error(send: Send, status: int, message: str, field: str | None) -> None:
    """An ``{"error", "field"}`` JSON response, sent directly over ASGI."""
    body = json.dumps({"error": message, "field": field}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = f"request body larger than {self.max_bytes} bytes (api.max_body_bytes)"
        length = next(
            (v for k, v in scope.get("headers", ()) if k.lower() == b"content-length"), None
        )
        if length is not None:
            if not length.strip().isdigit():
                await send_error(send, 400, "Content-Length is not a number", "body")
                return
            if int(length) > self.max_bytes:
                await send_error(send, 413, too_big, "body")
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":  # client went away
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await send_error(send, 413, too_big, "body")
                return
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


__all__ = ["BodyLimit", "send_error"]
