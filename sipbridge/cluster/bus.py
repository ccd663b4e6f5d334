"""Node-to-node commands over Redis pub/sub: a hangup or DTMF request that reached a node
which does not own the call is forwarded to the owner and acknowledged (issue #13 item 6).

Each node listens on ``<prefix>node:<node_id>`` for commands and on
``<prefix>reply:<node_id>`` for the answers to its own. A command is JSON
``{"id", "from", "op", "call_sid", "args"}``; the answer is ``{"id", "ok"}`` plus, when
not ok, the HTTP ``status`` and ``error`` the owner would have answered itself.

Pub/sub delivers to whoever listens at that moment and keeps nothing, so a command is
never queued for later: PUBLISH telling that nobody listens on the owner's channel is a
503 at once ("node X is not reachable"), and no answer within ``timeout_s`` is a 504. A
command may then still have been carried out; both are safe to repeat (a second hangup
of an ended call changes nothing).

Everything read from Redis is validated (size, JSON shape, known op); a bad message is
logged and dropped, and the listener never dies: it subscribes again after Redis returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from sipbridge.errors import ApiError, CallNotFound, ForwardError, InvalidTransition

if TYPE_CHECKING:
    from sipbridge.cluster.redislimits import RedisLimits

log = logging.getLogger("sipbridge.cluster")

OPS = frozenset({"hangup", "dtmf"})
MAX_MESSAGE_BYTES = 16 * 1024
_RESUBSCRIBE_S = 0.5

# (op, call_sid, args) -> None; raises CallNotFound / InvalidTransition / ValueError
Handler = Callable[[str, str, dict[str, Any]], Awaitable[None]]


def _error_status(e: Exception) -> int:
    if isinstance(e, CallNotFound):
        return 404
    if isinstance(e, InvalidTransition):
        return 409
    if isinstance(e, ValueError):
        return 400
    if isinstance(e, ApiError):
        return e.status
    return 500


class CommandBus:
    def __init__(
        self,
        client: aioredis.Redis,
        node_id: str,
        prefix: str,
        timeout_s: float,
        handler: Handler,
    ) -> None:
        self.client = client
        self.node_id = node_id
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.handler = handler
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._handling: set[asyncio.Task[None]] = set()

    def channel(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    def reply_channel(self, node_id: str) -> str:
        return f"{self.prefix}reply:{node_id}"

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="cluster-bus")

    async def wait_listening(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout_s)
        return self._subscribed.is_set()

    async def stop(self) -> None:
        tasks = [t for t in [self._task, *self._handling] if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _listen(self) -> None:
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self.channel(self.node_id), self.reply_channel(self.node_id))
                self._subscribed.set()
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        self._on_message(str(msg["channel"], "latin-1"), msg["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as e:
                if self._subscribed.is_set():
                    log.warning("cluster bus: redis unreachable: %s: subscribing again", e)
                self._subscribed.clear()
            except Exception:  # never let the listener die
                log.exception("cluster bus listener failed: subscribing again")
                self._subscribed.clear()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(_RESUBSCRIBE_S)  # Redis is down: try again in a moment

    def _on_message(self, channel: str, data: bytes) -> None:
        if len(data) > MAX_MESSAGE_BYTES:
            log.warning("cluster bus: dropped a %d-byte message on %s", len(data), channel)
            return
        try:
            msg = json.loads(data)
            if not isinstance(msg, dict) or not isinstance(msg.get("id"), str):
                raise ValueError("not an object with an id")
        except ValueError as e:
            log.warning("cluster bus: dropped a malformed message on %s: %s", channel, e)
            return
        if channel == self.reply_channel(self.node_id):
            fut = self._waiting.get(msg["id"])
            if fut is not None and not fut.done():
                fut.set_result(msg)
            return
        task = asyncio.create_task(self._handle(msg))
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)

    async def _handle(self, msg: dict[str, Any]) -> None:
        op, sid, args, sender = msg.get("op"), msg.get("call_sid"), msg.get("args"), msg.get("from")
        reply: dict[str, Any] = {"id": msg["id"], "ok": True}
        if not (
            op in OPS
            and isinstance(sid, str)
            and isinstance(args, dict)
            and isinstance(sender, str)
        ):
            log.warning("cluster bus: dropped a bad command %r", {"op": op, "from": sender})
            if not isinstance(sender, str):
                return
            reply = {"id": msg["id"], "ok": False, "status": 400, "error": "bad command"}
        else:
            try:
                await self.handler(op, sid, args)
            except Exception as e:
                status = _error_status(e)
                if status == 500:
                    log.exception("%s: forwarded %s failed", sid, op, extra={"call_sid": sid})
                reply = {"id": msg["id"], "ok": False, "status": status, "error": str(e)[:500]}
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(
                self.client.publish(self.reply_channel(sender), json.dumps(reply)), self.timeout_s
            )

    # ---- sending ---------------------------------------------------------------------

    async def send(self, owner: str, op: str, call_sid: str, args: dict[str, Any]) -> None:
        """Have ``owner`` carry out ``op`` on ``call_sid``; returns once it acknowledged.
        Raises :class:`ForwardError` (503/504, naming the owner) or the owner's own answer
        (``ApiError`` with its status: 404, 409, 400)."""
        if op not in OPS:
            raise ValueError(f"unknown command {op!r}")
        cid = uuid.uuid4().hex
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[cid] = fut
        body = {"id": cid, "from": self.node_id, "op": op, "call_sid": call_sid, "args": args}
        try:
            try:
                listeners = await asyncio.wait_for(
                    self.client.publish(self.channel(owner), json.dumps(body)), self.timeout_s
                )
            except (RedisError, OSError, TimeoutError) as e:
                raise ForwardError(
                    503,
                    f"call {call_sid} is owned by node {owner}; cannot forward the {op}: "
                    f"redis unreachable: {e or type(e).__name__}",
                    "callSid",
                    {"Retry-After": "1"},
                ) from None
            if not listeners:
                raise ForwardError(
                    503,
                    f"call {call_sid} is owned by node {owner}, which is not reachable "
                    f"(not listening on the cluster bus)",
                    "callSid",
                    {"Retry-After": "1"},
                )
            try:
                reply = await asyncio.wait_for(fut, self.timeout_s)
            except TimeoutError:
                raise ForwardError(
                    504,
                    f"call {call_sid} is owned by node {owner}, which did not acknowledge "
                    f"the {op} within {self.timeout_s:g} s (it may still be carried out)",
                    "callSid",
                ) from None
        finally:
            self._waiting.pop(cid, None)
        if not reply.get("ok"):
            status = reply.get("status")
            status = status if isinstance(status, int) and 400 <= status <= 599 else 502
            raise ApiError(status, f"node {owner}: {reply.get('error', 'failed')}", "callSid")


def service_handler(hangup: Callable[[str], Any], send_dtmf: Callable[..., Any]) -> Handler:
    """The owner's side: run a forwarded command on this node's call service
    (``CallService.hangup`` / ``CallService.send_dtmf``)."""

    async def handle(op: str, call_sid: str, args: dict[str, Any]) -> None:
        if op == "hangup":
            hangup(call_sid)
            return
        digits = args.get("digits")
        duration_ms, gap_ms = args.get("duration_ms", 160), args.get("gap_ms", 80)
        # the sending node's API validated the body (api.DtmfBody); a message from Redis is
        # checked again, within the same bounds
        if not (
            isinstance(digits, str)
            and isinstance(duration_ms, int)
            and isinstance(gap_ms, int)
            and 40 <= duration_ms <= 2000
            and 20 <= gap_ms <= 2000
        ):
            raise ValueError(
                "dtmf: digits (text), duration_ms (40-2000) and gap_ms (20-2000) expected"
            )
        send_dtmf(call_sid, digits, duration_ms, gap_ms)

    return handle


async def start_node_bus(
    limits: RedisLimits, hangup: Callable[[str], Any], send_dtmf: Callable[..., Any]
) -> CommandBus:
    """This node's bus on the cluster's Redis, running commands on its call service. A
    forwarded command waits ``2 * timeout_s`` (at least 2 s) for the owner's answer."""
    bus = CommandBus(
        limits.client,
        limits.node_id,
        limits.prefix,
        max(2.0, 2 * limits.timeout_s),
        service_handler(hangup, send_dtmf),
    )
    await bus.start()
    return bus


__all__ = ["OPS", "CommandBus", "Handler", "service_handler", "start_node_bus"]
