"""Cluster-wide limits against a real redis-server (sipbridge.devtools.redisserver): the
GCRA under concurrent clients in several processes, concurrency slots that expire with
their holder, a Redis restart mid-run, and the shared API rate limit."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import Callable
from typing import Any

import pytest

from sipbridge.cluster.redislimits import (
    RedisBucket,
    RedisLimits,
    RedisRateLimiter,
    RedisSlots,
)
from sipbridge.clusterconfig import ClusterConfig
from sipbridge.limits import RateLimiter

PREFIX = "t:"


def cluster(url: str, node: str = "n1", **kw: Any) -> ClusterConfig:
    redis = {"url": {"value": url}, "key_prefix": PREFIX, "timeout_s": kw.pop("timeout_s", 0.5)}
    return ClusterConfig.model_validate(
        {"node_id": node, "lease_s": 2, "heartbeat_s": 0.5, "redis": redis, **kw}
    )


class Node:
    """One node's RedisLimits with a wake event standing in for the scheduler."""

    def __init__(self, url: str, node: str = "n1", **kw: Any) -> None:
        self.woken = asyncio.Event()
        self.limits = RedisLimits(cluster(url, node, **kw), wake=self.woken.set)
        self.stop_hb = False
        self.hb = asyncio.create_task(self.limits.run(lambda: self.stop_hb))

    async def until(self, ok: Callable[[], bool], timeout_s: float) -> bool:
        """Ask ``ok`` again each time an answer from Redis wakes us, up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not ok():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.woken.clear()
            # ask again after 0.3 s anyway: a retry time may pass without a wake
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.woken.wait(), min(left, 0.3))
        return True

    async def close(self) -> None:
        self.hb.cancel()
        await self.limits.close()


def windows_ok(times_s: list[float], cap: float) -> tuple[bool, int]:
    """Whether no closed 1 s window holds more than ``cap`` of ``times_s``; the worst count."""
    ts = sorted(times_s)
    worst, j = 0, 0
    for i in range(len(ts)):
        while ts[i] - ts[j] > 1.0:
            j += 1
        worst = max(worst, i - j + 1)
    return worst <= cap, worst


def settle_epoch(url: str) -> None:
    """An established cluster: this Redis has known sipbridge for a while (no warm-up)."""
    import redis

    r = redis.Redis.from_url(url)
    r.set(PREFIX + "epoch", 0)
    r.close()


# ---- GCRA under concurrent clients in several processes --------------------------------


def _hammer(url: str, rate: float, burst: int, duration_s: float, clients: int) -> list[int]:
    """One process: ``clients`` coroutines asking for tokens as fast as Redis answers."""

    async def main() -> list[int]:
        limits = RedisLimits(cluster(url, "p"), wake=lambda: None)
        got: list[int] = []
        end = time.monotonic() + duration_s

        async def client() -> None:
            while time.monotonic() < end:
                ok, _retry_ms, at_us = await limits.gcra(PREFIX + "cps:t", rate, burst)
                if ok:
                    got.append(int(at_us))

        await asyncio.gather(*(client() for _ in range(clients)))
        await limits.close()
        return got

    return asyncio.run(main())


def test_gcra_never_admits_more_than_rate_plus_burst_under_concurrent_processes(
    redis_server: Any,
) -> None:
    settle_epoch(redis_server.url)
    rate, burst, duration_s = 20.0, 3, 2.5
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        parts = pool.starmap(_hammer, [(redis_server.url, rate, burst, duration_s, 4)] * 3)
    times = [t / 1e6 for part in parts for t in part]
    ok, worst = windows_ok(times, rate + burst)
    assert ok, f"{worst} tokens in a 1 s window (cap {rate} + burst {burst})"
    # it admits at the rate, not far below it: burst + rate * span, with 10 % slack for
    # clients starved of CPU on a loaded machine (they ask late, so a due token goes unused)
    span = max(times) - min(times)
    assert len(times) >= 0.9 * (burst + rate * span) - 1, (len(times), span)
    assert sum(1 for p in parts if p) >= 2  # the processes really shared it


# ---- concurrency slots -----------------------------------------------------------------


async def _slots_expire(url: str) -> None:
    a, b = Node(url, "a"), Node(url, "b")
    try:
        sa = RedisSlots(a.limits, global_cap=None, per_key={"t": 2})
        sb = RedisSlots(b.limits, global_cap=None, per_key={"t": 2})
        assert await a.until(lambda: sa.try_acquire("t"), 5)
        assert await a.until(lambda: sa.try_acquire("t"), 5)
        assert sa.active("t") == 2
        # b is refused while a renews, well past the lease (2 s)
        t0 = time.monotonic()
        assert not await b.until(lambda: sb.try_acquire("t"), 3.0)
        assert sb.active("t") == 2 or time.monotonic() - t0 >= 3.0
        # a dies (stops renewing without releasing): its slots expire within the lease
        a.stop_hb = True
        a.hb.cancel()
        died = time.monotonic()
        assert await b.until(lambda: sb.try_acquire("t"), 4.0)
        waited = time.monotonic() - died
        assert waited <= 2.0 + 0.5 + 0.5, waited  # lease + one heartbeat + a retry
        # a's slots are gone, and a's late release is ignored (its count came from Redis)
        sa.release("t")
        sa.release("t")
        sa.release("t")
        # releasing gives the slot back to the cluster after SPARE_S
        sb.release("t")
        assert await b.until(lambda: sb.all_held() == [], 2.0)
    finally:
        await a.close()
        await b.close()


def test_slots_expire_when_their_holder_stops_renewing(redis_server: Any) -> None:
    settle_epoch(redis_server.url)
    asyncio.run(_slots_expire(redis_server.url))


async def _global_cap(url: str) -> None:
    a, b = Node(url, "a"), Node(url, "b")
    try:
        sa = RedisSlots(a.limits, global_cap=2, per_key={})
        sb = RedisSlots(b.limits, global_cap=2, per_key={})
        assert await a.until(lambda: sa.try_acquire("t1"), 5)
        assert await b.until(lambda: sb.try_acquire("t2"), 5)
        assert not await b.until(lambda: sb.try_acquire("t3"), 1.0)
        sa.release("t1")
        assert await b.until(lambda: sb.try_acquire("t3"), 3.0)
    finally:
        await a.close()
        await b.close()


def test_global_cap_counts_every_trunk_of_every_node(redis_server: Any) -> None:
    settle_epoch(redis_server.url)
    asyncio.run(_global_cap(redis_server.url))


async def _spare_not_counted(url: str) -> None:
    a, b = Node(url, "a"), Node(url, "b")
    try:
        sa = RedisSlots(a.limits, None, {"t": 2})
        sb = RedisSlots(b.limits, None, {"t": 2})
        assert await b.until(lambda: sb.try_acquire("t"), 5)
        assert not sa.try_acquire("t")  # asks Redis; the answer is a slot kept for a
        assert await a.until(lambda: bool(sa.all_held()), 5)
        # Redis now counts 2 on t, one of them a's spare: the scheduler must still see
        # room (it checks active() < limit before try_acquire), or a would block itself
        assert sa.active("t") == 1
        assert sa.try_acquire("t")
        assert sa.active("t") == 2
    finally:
        await a.close()
        await b.close()


def test_a_nodes_spare_slot_does_not_block_its_own_next_call(redis_server: Any) -> None:
    settle_epoch(redis_server.url)
    asyncio.run(_spare_not_counted(redis_server.url))


async def _pushback(url: str) -> None:
    a = Node(url, "a")
    try:
        bucket = RedisBucket(a.limits, "t", 10.0, 3)
        for _ in range(3):  # the burst, at once
            assert await a.until(bucket.try_take, 2)
        burst = bucket.granted_at_us[-3:]
        assert burst[-1] - burst[0] < 50_000
        # the carrier pushed back (sipbridge.throttle): rate cut to 2/s and no burst
        bucket.set_rate(2.0)
        bucket.drain()
        for _ in range(3):
            assert await a.until(bucket.try_take, 5)
        # drained after the burst: the k-th token comes k/2 s later at the earliest
        after = [(t - burst[-1]) / 1e6 for t in bucket.granted_at_us[-3:]]
        assert all(t >= k * 0.5 for k, t in enumerate(after, 1)), after
    finally:
        await a.close()


def test_carrier_pushback_cuts_the_shared_rate_and_drains_the_burst(redis_server: Any) -> None:
    settle_epoch(redis_server.url)
    asyncio.run(_pushback(redis_server.url))


# ---- a Redis restart mid-run -----------------------------------------------------------


async def _restart(srv: Any) -> None:
    rate, burst = 10.0, 2
    nodes = [Node(srv.url, f"n{i}", timeout_s=0.3) for i in range(2)]
    buckets = [RedisBucket(n.limits, "t", rate, burst) for n in nodes]
    slots = [RedisSlots(n.limits, None, {"t": 3}) for n in nodes]
    try:
        taken: list[float] = []  # local times, for the phases
        down_seen = ""

        async def dial(i: int, end: float) -> None:
            while time.monotonic() < end:
                if await nodes[i].until(buckets[i].try_take, end - time.monotonic()):
                    taken.append(time.monotonic())

        assert await nodes[0].until(lambda: slots[0].try_acquire("t"), 5)  # a live call
        end = time.monotonic() + 6.0
        runs = [asyncio.create_task(dial(i, end)) for i in range(2)]
        await asyncio.sleep(1.5)  # the test's timeline: dial for a while, then crash Redis
        srv.stop(kill=True)
        stopped_at = time.time()
        assert await nodes[0].until(lambda: nodes[0].limits.error is not None, 3)
        down_seen = nodes[0].limits.error or ""
        assert not slots[1].try_acquire("t")  # fail closed
        n_before = len(taken)
        srv.restart()  # empty: no persistence
        restarted, restarted_at = time.monotonic(), time.time()
        await asyncio.gather(*runs)
        assert down_seen.startswith("redis unreachable"), down_seen
        after = [t for t in taken if t >= restarted]
        assert after, "admission did not resume after the restart"
        # the warm-up: nothing is granted until the live slots are back and 1 s passed
        assert min(after) - restarted >= 1.0
        assert n_before > 0
        grants = [t / 1e6 for b in buckets for t in b.granted_at_us]  # Redis' clock
        # (this host's clock: the same as Redis' here)
        assert not [g for g in grants if stopped_at < g < restarted_at], "granted while down"
        ok, worst = windows_ok(grants, rate + burst)
        assert ok, f"{worst} grants in a 1 s window across the restart"
    finally:
        for n in nodes:
            await n.close()


def test_redis_restart_mid_run_never_exceeds_the_cap_and_resumes(redis_server: Any) -> None:
    settle_epoch(redis_server.url)
    asyncio.run(_restart(redis_server))


async def _slots_back_after_restart(srv: Any) -> None:
    a, b = Node(srv.url, "a", timeout_s=0.3), Node(srv.url, "b", timeout_s=0.3)
    try:
        sa, sb = RedisSlots(a.limits, None, {"t": 1}), RedisSlots(b.limits, None, {"t": 1})
        assert await a.until(lambda: sa.try_acquire("t"), 5)
        srv.stop(kill=True)
        srv.restart()
        # b would find an empty Redis; the warm-up holds it until a's heartbeat put the slot
        # back, and then the cap (1) is taken
        assert not await b.until(lambda: sb.try_acquire("t"), 4.0)
        assert sa.all_held() and not sb.all_held()
        sa.release("t")
        assert await b.until(lambda: sb.try_acquire("t"), 3.0)
    finally:
        await a.close()
        await b.close()


def test_live_slots_are_put_back_after_redis_lost_its_data(redis_server: Any) -> None:
    settle_epoch(redis_server.url)
    asyncio.run(_slots_back_after_restart(redis_server))


# ---- the API rate limit ----------------------------------------------------------------


async def _api_rate(srv: Any) -> None:
    a, b = Node(srv.url, "a", timeout_s=0.3), Node(srv.url, "b", timeout_s=0.3)
    try:
        ra = RedisRateLimiter(a.limits, RateLimiter(1.0, 3, time.monotonic))
        rb = RedisRateLimiter(b.limits, RateLimiter(1.0, 3, time.monotonic))
        got = [await r.check("tok") for r in (ra, rb, ra, rb)]
        assert got[:3] == [None, None, None] and got[3] is not None and got[3] >= 1
        assert await rb.check("other") is None  # per token
        srv.stop(kill=True)
        # Redis down: this node's own limiter decides (triggers keep being queued)
        assert await ra.check("tok") is None
        assert a.limits.error is not None and a.limits.error.startswith("redis unreachable")
    finally:
        await a.close()
        await b.close()


def test_api_rate_limit_is_shared_and_falls_back_to_the_node(redis_server: Any) -> None:
    settle_epoch(redis_server.url)
    asyncio.run(_api_rate(redis_server))


async def _fresh_redis_warms_up(url: str) -> None:
    a = Node(url, "a")
    try:
        # triggers are taken at once: the API rate has no warm-up
        api = RedisRateLimiter(a.limits, RateLimiter(1.0, 1, time.monotonic))
        assert await api.check("tok") is None
        assert await api.check("tok") is not None  # counted in Redis
        bucket = RedisBucket(a.limits, "t", 100.0, 5)
        t0 = time.monotonic()
        assert await a.until(bucket.try_take, 5)
        assert time.monotonic() - t0 >= a.limits.warmup_s - 0.1
    finally:
        await a.close()


def test_a_redis_without_data_grants_nothing_during_the_warm_up(redis_server: Any) -> None:
    asyncio.run(_fresh_redis_warms_up(redis_server.url))


@pytest.mark.parametrize("rate", [5.0, 50.0])
def test_windows_ok_counts_closed_windows(rate: float) -> None:
    ts = [i / rate for i in range(int(rate) + 1)]  # rate + 1 in [0, 1]
    assert windows_ok(ts, rate + 1) == (True, int(rate) + 1)
    assert windows_ok(ts, rate) == (False, int(rate) + 1)


def test_a_redis_that_never_answered_is_logged_with_why(
    redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong password (or URL) from the start: the node logs why, once, not only /readyz."""
    bad = redis_server.url.replace("redis://", "redis://:wrong-password@")

    async def run() -> None:
        node = Node(bad)
        try:
            # the heartbeat asks again every second: two failures, one warning
            assert await node.until(lambda: node.limits.errors_total >= 2, 5.0)
        finally:
            await node.close()

    with caplog.at_level("WARNING", logger="sipbridge"):
        asyncio.run(run())
    down = [r.getMessage() for r in caplog.records if "redis unreachable" in r.getMessage()]
    assert len(down) == 1 and "AUTH" in down[0], down
