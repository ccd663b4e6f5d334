"""Rate and concurrency limits (pure logic; the clock is injected).

* :class:`TokenBucket` — calls-per-second per route/trunk and the API rate limit.
* :class:`ConcurrencyLimiter` — simultaneous calls per trunk plus a global cap.
* :class:`RateLimiter` — one token bucket per API token, answering with a Retry-After.

:class:`Bucket` and :class:`Slots` are what the scheduler needs of them; in cluster mode
(``cluster.redis``) sipbridge.cluster.redislimits implements them on Redis.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Protocol

__all__ = ["Bucket", "ConcurrencyLimiter", "RateLimiter", "Slots", "TokenBucket"]


class Bucket(Protocol):
    """A trunk's CPS limit as the scheduler uses it (:class:`TokenBucket`)."""

    @property
    def rate_per_s(self) -> float: ...
    def try_take(self, n: int = 1) -> bool: ...
    def set_rate(self, rate_per_s: float) -> None: ...
    def drain(self) -> None: ...
    def wait_time(self, n: int = 1) -> float: ...


class Slots(Protocol):
    """Concurrency per trunk and in all, as the scheduler uses it (:class:`ConcurrencyLimiter`)."""

    def limit(self, key: str) -> int | None: ...
    def try_acquire(self, key: str) -> bool: ...
    def release(self, key: str) -> None: ...
    def active(self, key: str) -> int: ...
    def active_total(self) -> int: ...


class TokenBucket:
    """Classic token bucket: holds at most ``burst`` tokens, refilled at ``rate_per_s``.

    Starts full. Over any interval of length ``T`` at most ``burst + rate_per_s * T`` tokens
    can be taken. ``clock`` returns monotonic seconds (e.g. ``time.monotonic``); a clock that
    steps backwards adds no tokens.
    """

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float]) -> None:
        if rate_per_s < 0 or not math.isfinite(rate_per_s):
            raise ValueError(f"rate_per_s must be finite and >= 0, got {rate_per_s}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.rate_per_s = float(rate_per_s)
        self.burst = int(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        if now > self._last:
            refill = (now - self._last) * self.rate_per_s
            self._tokens = min(float(self.burst), self._tokens + refill)
            self._last = now

    @property
    def tokens(self) -> float:
        """Tokens available now (fractional)."""
        self._refill()
        return self._tokens

    def try_take(self, n: int = 1) -> bool:
        """Take ``n`` tokens if available now; never blocks."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self._refill()
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    def set_rate(self, rate_per_s: float) -> None:
        """Change the refill rate from now on (tokens earned so far are kept)."""
        self._refill()
        self.rate_per_s = float(rate_per_s)

    def drain(self) -> None:
        """Drop the tokens held (no burst right after a carrier's pushback)."""
        self._refill()
        self._tokens = 0.0

    def wait_time(self, n: int = 1) -> float:
        """Seconds until ``n`` tokens are available (0 if now; ``inf`` if never: ``n > burst``
        or a zero rate)."""
        self._refill()
        missing = n - self._tokens
        if missing <= 0:
            return 0.0
        if n > self.burst or self.rate_per_s == 0:
            return math.inf
        return missing / self.rate_per_s


class ConcurrencyLimiter:
    """Counts active calls per key (trunk name) under a per-key limit and a global cap.

    ``per_key`` gives limits for named keys, ``default_per_key`` for the others; ``None`` means
    unlimited (at that level)."""

    def __init__(
        self,
        global_cap: int | None = None,
        per_key: Mapping[str, int] | None = None,
        default_per_key: int | None = None,
    ) -> None:
        for name, lim in [
            ("global_cap", global_cap),
            ("default_per_key", default_per_key),
            *((f"per_key[{k}]", v) for k, v in (per_key or {}).items()),
        ]:
            if lim is not None and lim < 0:
                raise ValueError(f"{name} must be >= 0, got {lim}")
        self.global_cap = global_cap
        self._per_key = dict(per_key or {})
        self.default_per_key = default_per_key
        self._active: dict[str, int] = {}
        self._total = 0

    def limit(self, key: str) -> int | None:
        """The limit for ``key`` (``None``: unlimited)."""
        return self._per_key.get(key, self.default_per_key)

    def try_acquire(self, key: str) -> bool:
        """Take one slot for ``key`` if both its limit and the global cap allow."""
        if self.global_cap is not None and self._total >= self.global_cap:
            return False
        lim = self.limit(key)
        if lim is not None and self._active.get(key, 0) >= lim:
            return False
        self._active[key] = self._active.get(key, 0) + 1
        self._total += 1
        return True

    def release(self, key: str) -> None:
        """Give back one slot; ``ValueError`` if ``key`` holds none (a double release is a bug)."""
        n = self._active.get(key, 0)
        if n <= 0:
            raise ValueError(f"release({key!r}) without a matching acquire")
        if n == 1:
            del self._active[key]
        else:
            self._active[key] = n - 1
        self._total -= 1

    def active(self, key: str) -> int:
        """Slots held by ``key``."""
        return self._active.get(key, 0)

    def active_total(self) -> int:
        """Slots held by all keys."""
        return self._total


class RateLimiter:
    """One :class:`TokenBucket` per key (API token), created on first use."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float]) -> None:
        if not rate_per_s > 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        TokenBucket(rate_per_s, burst, clock)  # validate parameters now, not on first request
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, key: str) -> float | None:
        """``None`` if a request for ``key`` is allowed now (and count it), else the
        ``Retry-After`` to send: whole seconds, rounded up, at least 1 (RFC 9110 10.2.3 uses
        integer delay-seconds)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate_per_s, self.burst, self._clock)
        if bucket.try_take():
            return None
        return float(max(1, math.ceil(bucket.wait_time())))
