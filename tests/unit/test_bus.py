"""The cluster command bus (sipbridge.cluster.bus) against a real redis-server: a forwarded
hangup/DTMF is carried out by the owner and acknowledged; the owner's own errors come back;
an owner that does not listen is a 503 and one that does not answer a 504, both naming it;
garbage on the channel and a Redis restart do not kill the listener."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis import asyncio as aioredis

from sipbridge.cluster.bus import CommandBus, service_handler
from sipbridge.errors import ApiError, CallNotFound, ForwardError, InvalidTransition

PREFIX = "t:"


@asynccontextmanager
async def buses(
    url: str, handlers: dict[str, Callable[[str, str, dict[str, Any]], Awaitable[None]]]
) -> AsyncIterator[dict[str, CommandBus]]:
    client = aioredis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    out = {n: CommandBus(client, n, PREFIX, 1.0, h) for n, h in handlers.items()}
    for b in out.values():
        await b.start()
    for b in out.values():
        assert await b.wait_listening(5)
    try:
        yield out
    finally:
        for b in out.values():
            await b.stop()
        await client.aclose()


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_forwarded_commands_are_carried_out_and_acknowledged(redis_server: Any) -> None:
    done: list[tuple[str, Any]] = []
    dtmf_sent: list[tuple[str, str, int, int]] = []

    def hangup(sid: str) -> None:
        if sid == "missing":
            raise CallNotFound(sid)
        done.append(("hangup", sid))

    def send_dtmf(sid: str, digits: str, duration_ms: int, gap_ms: int) -> None:
        if sid == "ringing":
            raise InvalidTransition(f"call {sid} has no answered carrier leg")
        dtmf_sent.append((sid, digits, duration_ms, gap_ms))

    async def main() -> None:
        owner = service_handler(hangup, send_dtmf)

        async def unused(op: str, sid: str, args: dict[str, Any]) -> None:
            raise AssertionError("node a owns nothing here")

        async with buses(redis_server.url, {"a": unused, "b": owner}) as b:
            await b["a"].send("b", "hangup", "CA1", {})
            assert done == [("hangup", "CA1")]
            await b["a"].send("b", "dtmf", "CA1", {"digits": "12#", "duration_ms": 100})
            assert dtmf_sent == [("CA1", "12#", 100, 80)]
            with pytest.raises(ApiError) as e:
                await b["a"].send("b", "hangup", "missing", {})
            assert e.value.status == 404 and "node b" in e.value.message
            with pytest.raises(ApiError) as e:
                await b["a"].send("b", "dtmf", "ringing", {"digits": "1"})
            assert e.value.status == 409 and "no answered carrier leg" in e.value.message
            with pytest.raises(ApiError) as e:  # the owner checks the body again
                await b["a"].send("b", "dtmf", "CA1", {"digits": "1", "gap_ms": 10**9})
            assert e.value.status == 400

    run(main())


def test_unreachable_and_silent_owners_are_503_and_504_naming_the_node(
    redis_server: Any,
) -> None:
    async def main() -> None:
        never = asyncio.Event()

        async def stuck(op: str, sid: str, args: dict[str, Any]) -> None:
            await never.wait()

        async def noop(op: str, sid: str, args: dict[str, Any]) -> None:
            return None

        async with buses(redis_server.url, {"a": noop, "slow": stuck}) as b:
            with pytest.raises(ForwardError) as e:
                await b["a"].send("gone", "hangup", "CA9", {})
            assert e.value.status == 503 and "node gone" in e.value.message
            assert e.value.headers.get("Retry-After") == "1"
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(ForwardError) as e:
                await b["a"].send("slow", "hangup", "CA9", {})
            assert e.value.status == 504 and "node slow" in e.value.message
            assert 0.9 <= loop.time() - t0 < 3.0
            redis_server.stop(kill=True)
            with pytest.raises(ForwardError) as e:
                await b["a"].send("slow", "hangup", "CA9", {})
            assert e.value.status == 503 and "redis unreachable" in e.value.message

    run(main())


def test_garbage_and_a_redis_restart_do_not_stop_the_listener(redis_server: Any) -> None:
    got: list[str] = []

    async def record(op: str, sid: str, args: dict[str, Any]) -> None:
        got.append(sid)

    async def main() -> None:
        async with buses(redis_server.url, {"a": record, "b": record}) as b:
            raw = aioredis.Redis.from_url(redis_server.url)
            channel = b["b"].channel("b")
            for junk in [b"\xff\xfe", b"[]", b'{"id": 3}', b"x" * 100_000]:
                await raw.publish(channel, junk)
            await raw.publish(channel, b'{"id": "i", "from": "a", "op": "rm -rf", "args": {}}')
            await raw.aclose()
            await b["a"].send("b", "hangup", "CA1", {})
            assert got == ["CA1"]

            redis_server.stop(kill=True)
            redis_server.restart()
            # both listeners subscribe again by themselves
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                try:
                    await b["a"].send("b", "hangup", "CA2", {})
                    break
                except ForwardError:
                    assert asyncio.get_running_loop().time() < deadline
                    await b["b"].wait_listening(1)
                    await b["a"].wait_listening(1)
            assert got[-1] == "CA2"

    run(main())
