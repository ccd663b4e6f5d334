"""Cluster-wide limits on Redis: per-trunk CPS, per-trunk and global concurrency, and the
per-token API rate, shared by every node (README "Redis: cluster-wide limits").

The scheduler is synchronous (one pass decides and dials), so it never waits on Redis:
:class:`RedisBucket` and :class:`RedisSlots` implement the same
:class:`~sipbridge.limits.Bucket` / :class:`~sipbridge.limits.Slots` interfaces as the
in-memory limits. When the scheduler asks for a token or a slot the node does not hold yet,
the answer is "not now" and a request goes to Redis; its answer wakes the scheduler, whose
next pass takes what was granted. A granted CPS token unused for ``GRANT_TTL_S`` is
dropped (never returned: the cap holds whatever a node does with it).

Fail closed: while Redis does not answer within ``timeout_s``, no token or slot is granted,
so the node dials nothing; queued calls wait in the store and the heartbeat notices when
Redis is back and wakes the scheduler. The API rate limit then falls back to this node's
in-memory limiter, so triggers keep being accepted and queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from sipbridge.cluster import redislua
from sipbridge.clusterconfig import ClusterConfig, RedisConfig
from sipbridge.limits import RateLimiter

if TYPE_CHECKING:
    from sipbridge.calls.dispatch import Dispatcher
    from sipbridge.config import Config

log = logging.getLogger("sipbridge.cluster")

GRANT_TTL_S = 0.05  # a CPS token not used by then is dropped (it would dial late)
SPARE_S = 0.5  # a slot released by this node stays here for its next call this long
_IN_FLIGHT_WAIT_S = 0.25  # the answer wakes the scheduler before this
_DOWN_WAIT_S = 1.0  # Redis is down: the heartbeat wakes the scheduler when it is back


def install(cfg: Config, dispatcher: Dispatcher, api: RateLimiter) -> RedisRateLimiter | None:
    """With ``cluster.redis`` configured, put the dispatcher's limits on Redis and return
    the API's rate limiter (its ``limits`` runs the heartbeat); else change nothing."""
    if cfg.cluster is None or cfg.cluster.redis is None:
        return None
    limits = RedisLimits(cfg.cluster, wake=dispatcher.wake)
    caps = {t.name: t.max_concurrent for t in cfg.trunks if t.max_concurrent}
    dispatcher.limiter = RedisSlots(limits, cfg.limits.max_concurrent_calls, caps)
    dispatcher.buckets = {
        t.name: RedisBucket(limits, t.name, t.cps, t.cps_burst) for t in cfg.trunks if t.cps
    }
    return RedisRateLimiter(limits, api)


_NOT_CONNECTED = "redis: not connected yet"


class RedisDown(Exception):
    """Redis did not answer (in ``timeout_s``) or failed."""


class RedisLimits:
    """One node's connection to the cluster's Redis, its health, and its heartbeat."""

    def __init__(
        self,
        cluster: ClusterConfig,
        wake: Callable[[], None],
        client: aioredis.Redis | None = None,
    ) -> None:
        rcfg = cluster.redis
        assert rcfg is not None
        self.cfg: RedisConfig = rcfg
        self.node_id = cluster.node_id
        self.lease_s = cluster.lease_s
        self.heartbeat_s = cluster.heartbeat_s
        # After Redis lost its data, grant nothing until every live node has put its slots
        # back (one heartbeat, which may take timeout_s) and the last 1 s CPS window passed.
        self.warmup_s = cluster.heartbeat_s + rcfg.timeout_s + 1.0
        self.timeout_s = rcfg.timeout_s
        self.prefix = rcfg.key_prefix
        self.client = client or aioredis.Redis.from_url(
            rcfg.url.resolve(),
            socket_timeout=rcfg.timeout_s,
            socket_connect_timeout=rcfg.timeout_s,
        )
        self.wake = wake
        self.error: str | None = _NOT_CONNECTED  # closed until Redis answers
        self.errors_total = 0
        self.down_since: float | None = time.monotonic()
        self._gcra = self.client.register_script(redislua.GCRA)
        self._acquire = self.client.register_script(redislua.ACQUIRE)
        self._renew = self.client.register_script(redislua.RENEW)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.slots: RedisSlots | None = None

    # ---- Redis calls: a timeout, and the node's view of Redis' health ----------------

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        try:
            out = await asyncio.wait_for(fn(), self.timeout_s)
        except (RedisError, OSError, TimeoutError) as e:
            self._failed(e)
            raise RedisDown(str(e) or type(e).__name__) from e
        self._answered()
        return out

    def _failed(self, e: BaseException) -> None:
        self.errors_total += 1
        if self.error is None or self.error == _NOT_CONNECTED:
            # also when Redis never answered since start (a wrong URL or password)
            log.warning("redis unreachable: %s: not dialling until it answers", e)
        if self.error is None:
            self.down_since = time.monotonic()
        self.error = f"redis unreachable: {str(e) or type(e).__name__}"

    def _answered(self) -> None:
        if self.error is not None:
            log.info("redis answers again: dialling resumes")
            self.error = None
            self.down_since = None
            self.wake()

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run a Redis request in the background (kept referenced until done)."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- the scripts -----------------------------------------------------------------

    async def gcra(
        self, key: str, rate_per_s: float, burst: int, drain: bool = False, warm_up: bool = True
    ) -> Any:
        """One GCRA request; ``warm_up=False`` for the API rate, which a Redis that lost its
        data must not hold up (triggers are queued, not dialled)."""
        interval_us = 1e6 / max(rate_per_s, 1e-6)
        keys = [self.key("epoch"), key]
        args: list[str | int] = [
            f"{interval_us:.3f}",
            burst,
            int(self.warmup_s * 1e6) if warm_up else 0,
            "drain" if drain else "take",
        ]
        return await self.call(lambda: self._gcra(keys=keys, args=args))

    async def acquire(self, slot: str, trunk: str, global_cap: int, trunk_cap: int) -> Any:
        keys = [self.key("epoch"), self.key("slots", "all"), self.key("slots", "trunk", trunk)]
        args: list[str | int] = [
            slot,
            int(self.lease_s * 1e6),
            global_cap,
            trunk_cap,
            int(self.warmup_s * 1e6),
        ]
        return await self.call(lambda: self._acquire(keys=keys, args=args))

    async def renew(self, held: Iterable[tuple[str, str]]) -> None:
        """Extend the lease of every ``(trunk, slot)`` held (adding back lost ones)."""
        pairs = list(held)
        keys = [self.key("epoch"), self.key("slots", "all")]
        keys += [self.key("slots", "trunk", trunk) for trunk, _ in pairs]
        args: list[Any] = [int(self.lease_s * 1e6), *(slot for _, slot in pairs)]
        await self.call(lambda: self._renew(keys=keys, args=args))

    async def drop(self, trunk: str, slot: str) -> None:
        async def zrem() -> Any:
            async with self.client.pipeline(transaction=True) as p:
                p.zrem(self.key("slots", "all"), slot)
                p.zrem(self.key("slots", "trunk", trunk), slot)
                return await p.execute()

        await self.call(zrem)

    # ---- heartbeat -------------------------------------------------------------------

    async def run(self, stopping: Callable[[], bool]) -> None:
        """Renew this node's slots every ``heartbeat_s`` (every second while Redis is
        down, which is also how the node notices that it is back)."""
        while not stopping():
            held = self.slots.all_held() if self.slots is not None else []
            try:
                await self.renew(held)
            except RedisDown:
                pass
            except Exception:  # never let the heartbeat die
                log.exception("redis heartbeat failed")
            await asyncio.sleep(self.heartbeat_s if self.error is None else _DOWN_WAIT_S)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await self.client.aclose()

    def collector(self) -> Collector:
        return _RedisCollector(self)


class RedisBucket:
    """A trunk's CPS cap shared by the cluster (:class:`~sipbridge.limits.Bucket`).

    ``set_rate`` (the carrier pushback throttle of sipbridge.throttle) changes the interval
    this node asks for: its calls use more of the shared budget, so a pushback seen by one
    node slows the whole cluster's dialling on that trunk."""

    def __init__(self, limits: RedisLimits, trunk: str, rate_per_s: float, burst: int) -> None:
        self.limits = limits
        self.key = limits.key("cps", trunk)
        self.base_rate = rate_per_s
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._granted_until = 0.0
        self._in_flight = False
        self._retry_at = 0.0
        self.granted_at_us: list[int] = []  # Redis times of the last grants (for checks)

    def try_take(self, n: int = 1) -> bool:
        now = time.monotonic()
        if self._granted_until > now:
            self._granted_until = 0.0
            return True
        if self.limits.error is None and not self._in_flight and now >= self._retry_at:
            self._in_flight = True
            self.limits.spawn(self._fetch())
        return False

    async def _fetch(self) -> None:
        try:
            admitted, retry_ms, at_us = await self.limits.gcra(
                self.key, self.rate_per_s, self.burst
            )
        except RedisDown:
            return
        finally:
            self._in_flight = False
        now = time.monotonic()
        if admitted:
            self._granted_until = now + GRANT_TTL_S
            self.granted_at_us = [*self.granted_at_us[-999:], int(at_us)]
        else:
            self._retry_at = now + int(retry_ms) / 1000.0
        self.limits.wake()

    def wait_time(self, n: int = 1) -> float:
        if self.limits.error is not None:
            return _DOWN_WAIT_S
        if self._in_flight:
            return _IN_FLIGHT_WAIT_S
        return max(self._retry_at - time.monotonic(), 0.001)

    def set_rate(self, rate_per_s: float) -> None:
        self.rate_per_s = rate_per_s

    def drain(self) -> None:
        """Empty the shared bucket; no token is asked for until Redis has done it."""
        self._granted_until = 0.0
        self._in_flight = True

        async def drain() -> None:
            try:
                with contextlib.suppress(RedisDown):
                    await self.limits.gcra(self.key, self.rate_per_s, self.burst, drain=True)
            finally:
                self._in_flight = False
                self.limits.wake()

        self.limits.spawn(drain())


class RedisSlots:
    """Concurrency caps shared by the cluster (:class:`~sipbridge.limits.Slots`): each
    carrier leg holds a slot in Redis whose lease this node's heartbeat renews; the slots
    of a node that stops renewing expire after ``lease_s``. Trunks with no cap (and no
    global cap) are counted here only."""

    def __init__(
        self,
        limits: RedisLimits,
        global_cap: int | None = None,
        per_key: Mapping[str, int] | None = None,
    ) -> None:
        self.limits = limits
        limits.slots = self
        self.global_cap = global_cap
        self._per_key = dict(per_key or {})
        self._held: dict[str, list[str]] = {}
        self._spare: dict[str, list[tuple[str, float]]] = {}
        self._in_flight: set[str] = set()
        self._retry_at: dict[str, float] = {}
        self._counts: dict[str, tuple[int, float]] = {}  # trunk -> (cluster count, when)

    def limit(self, key: str) -> int | None:
        return self._per_key.get(key)

    def _capped(self, key: str) -> bool:
        return self.global_cap is not None or self.limit(key) is not None

    def try_acquire(self, key: str) -> bool:
        if self.limits.error is not None:
            return False  # fail closed
        if not self._capped(key):
            self._held.setdefault(key, []).append("")
            return True
        spare = self._spare.get(key)
        if spare:
            self._held.setdefault(key, []).append(spare.pop()[0])
            return True
        now = time.monotonic()
        if key not in self._in_flight and now >= self._retry_at.get(key, 0.0):
            self._in_flight.add(key)
            self.limits.spawn(self._fetch(key))
        return False

    async def _fetch(self, key: str) -> None:
        slot = f"{self.limits.node_id}:{uuid.uuid4().hex}"
        gcap = -1 if self.global_cap is None else self.global_cap
        tcap = self.limit(key)
        try:
            got, n_trunk, _n_all, retry_ms = await self.limits.acquire(
                slot, key, gcap, -1 if tcap is None else tcap
            )
        except RedisDown:
            return
        finally:
            self._in_flight.discard(key)
        now = time.monotonic()
        self._counts[key] = (int(n_trunk), now)
        if got:
            self._spare.setdefault(key, []).append((slot, now + SPARE_S))
            asyncio.get_running_loop().call_later(SPARE_S, self._reap)
        else:  # full: a leg ending anywhere frees one; ask again soon
            self._retry_at[key] = now + max(int(retry_ms) / 1000.0, 0.05)
        self.limits.wake()

    def release(self, key: str) -> None:
        """Give back one of this node's slots on ``key``. Unlike the in-memory limiter, a
        release with none held is ignored: :meth:`active` counts the whole cluster, so a
        caller's ``active(key) > 0`` does not prove this node holds one."""
        held = self._held.get(key)
        if not held:
            log.debug("release(%r): this node holds no slot there", key)
            return
        slot = held.pop()
        if slot:
            self._spare.setdefault(key, []).append((slot, time.monotonic() + SPARE_S))
            asyncio.get_running_loop().call_later(SPARE_S, self._reap)

    def _reap(self) -> None:
        """Give back to the cluster the slots this node kept but did not reuse."""
        now = time.monotonic()
        for key, spare in self._spare.items():
            for slot, until in [s for s in spare if s[1] <= now]:
                spare.remove((slot, until))
                self.limits.spawn(self._drop(key, slot))

    async def _drop(self, key: str, slot: str) -> None:
        with contextlib.suppress(RedisDown):  # else the slot's lease ends it
            await self.limits.drop(key, slot)
        self.limits.wake()

    def active(self, key: str) -> int:
        """Legs on ``key`` in the cluster (Redis' last answer, if recent), else this node's.
        Slots this node holds spare are free for it, so they are not counted."""
        mine = len(self._held.get(key, ()))
        count = self._counts.get(key)
        if count is not None and time.monotonic() - count[1] < SPARE_S:
            return max(count[0] - len(self._spare.get(key, ())), mine)
        return mine

    def active_total(self) -> int:
        return sum(len(v) for v in self._held.values())

    def all_held(self) -> list[tuple[str, str]]:
        """Every ``(trunk, slot)`` this node holds in Redis (in use or spare)."""
        out = [(k, s) for k, slots in self._held.items() for s in slots if s]
        out += [(k, s) for k, spare in self._spare.items() for s, _ in spare]
        return out


class RedisRateLimiter:
    """The per-token API rate limit shared by the cluster (a GCRA per token; Redis keys
    hold a hash of the token, never the token). While Redis is down, ``fallback`` (this
    node's in-memory limiter) decides, so triggers are still taken and queued."""

    def __init__(self, limits: RedisLimits, fallback: RateLimiter) -> None:
        self.limits = limits
        self.fallback = fallback

    async def check(self, token: str) -> float | None:
        digest = hashlib.sha256(token.encode()).hexdigest()[:32]
        try:
            admitted, retry_ms, _ = await self.limits.gcra(
                self.limits.key("api", digest),
                self.fallback.rate_per_s,
                self.fallback.burst,
                warm_up=False,
            )
        except RedisDown:
            return self.fallback.check(token)
        if admitted:
            return None
        return float(max(1, math.ceil(int(retry_ms) / 1000.0)))


class _RedisCollector(Collector):
    def __init__(self, limits: RedisLimits) -> None:
        self.limits = limits

    def collect(self) -> Iterable[Metric]:
        lim = self.limits
        yield GaugeMetricFamily(
            "sipbridge_redis_up",
            "1 while the cluster's Redis answers; 0: this node dials nothing (fail closed)",
            value=0 if lim.error else 1,
        )
        down = 0.0 if lim.down_since is None else time.monotonic() - lim.down_since
        yield GaugeMetricFamily(
            "sipbridge_redis_down_seconds", "How long Redis has not answered (0 when up)", down
        )
        errors = CounterMetricFamily(
            "sipbridge_redis_errors", "Redis requests that failed or timed out"
        )
        errors.add_metric([], lim.errors_total)
        yield errors
        held = len(lim.slots.all_held()) if lim.slots is not None else 0
        yield GaugeMetricFamily(
            "sipbridge_cluster_slots_held", "Concurrency slots this node holds in Redis", held
        )


__all__ = [
    "RedisBucket",
    "RedisDown",
    "RedisLimits",
    "RedisRateLimiter",
    "RedisSlots",
    "install",
]
