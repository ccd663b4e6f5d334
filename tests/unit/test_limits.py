"""Token bucket, concurrency and API rate limits (sipbridge.limits), with an injected clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.limits import ConcurrencyLimiter, RateLimiter, TokenBucket
from tests.doubles import Clock as FakeClock


def test_bucket_burst_then_rate() -> None:
    clk = FakeClock()
    b = TokenBucket(rate_per_s=2, burst=3, clock=clk)
    assert [b.try_take() for _ in range(4)] == [True, True, True, False]
    assert b.wait_time() == pytest.approx(0.5)
    clk.advance(0.25)
    assert not b.try_take()
    assert b.wait_time() == pytest.approx(0.25)
    clk.advance(0.25)
    assert b.try_take()
    clk.advance(100)  # refill is capped at burst
    assert b.tokens == 3
    assert not b.try_take(4)
    assert b.wait_time(4) == math.inf
    assert b.try_take(3)
    assert b.wait_time(2) == pytest.approx(1.0)


def test_bucket_clock_backwards_adds_nothing() -> None:
    clk = FakeClock()
    b = TokenBucket(1, 1, clk)
    assert b.try_take()
    clk.advance(-50)
    assert not b.try_take()
    clk.advance(50.5)
    assert not b.try_take()  # only 0.5 s really elapsed since the take
    clk.advance(0.5)
    assert b.try_take()
    # ...and takes none away either: a full bucket stays full.
    clk.advance(10)
    assert b.tokens == 1
    clk.advance(-60)
    assert b.try_take()


def test_bucket_zero_rate_and_validation() -> None:
    b = TokenBucket(0, 2, FakeClock())
    assert b.try_take(2)
    assert b.wait_time() == math.inf
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(1, 0, FakeClock())
    with pytest.raises(ValueError, match="rate_per_s"):
        TokenBucket(-1, 1, FakeClock())


@settings(max_examples=200, deadline=None)
@given(
    rate=st.sampled_from([0.5, 1.0, 3.0, 10.0, 0.1]),
    burst=st.integers(1, 5),
    steps=st.lists(st.tuples(st.integers(0, 1500), st.integers(1, 3)), min_size=1, max_size=120),
)
def test_bucket_never_exceeds_burst_plus_rate_t(
    rate: float, burst: int, steps: list[tuple[int, int]]
) -> None:
    clk = FakeClock(0.0)
    b = TokenBucket(rate, burst, clk)
    taken: list[tuple[float, int]] = []
    for dt_ms, n in steps:
        clk.advance(dt_ms / 1000)
        waited = b.wait_time(n)
        ok = b.try_take(n)
        assert ok == (waited == 0)  # wait_time agrees with try_take
        if ok:
            taken.append((clk.t, n))
    # Any window [t_i, t_j] between takes holds at most burst + rate * (t_j - t_i) tokens.
    for i in range(len(taken)):
        total = 0
        for j in range(i, len(taken)):
            total += taken[j][1]
            span = taken[j][0] - taken[i][0]
            assert total <= burst + rate * span + 1e-6, (i, j, taken)


@given(
    rate=st.floats(0.1, 50),
    burst=st.integers(1, 5),
    drain=st.integers(0, 5),
    n=st.integers(1, 5),
)
def test_bucket_wait_time_is_enough(rate: float, burst: int, drain: int, n: int) -> None:
    clk = FakeClock()
    b = TokenBucket(rate, burst, clk)
    for _ in range(drain):
        b.try_take()
    w = b.wait_time(n)
    if n > burst:
        assert w == math.inf
        return
    if w > 0:
        clk.advance(w * (1 - 1e-9) - 1e-9)
        assert not b.try_take(n)  # not available before the wait
    clk.advance(2e-9 * max(1.0, w) + 1e-9)
    assert b.try_take(n)


def test_concurrency_limiter() -> None:
    lim = ConcurrencyLimiter(global_cap=3, per_key={"a": 2}, default_per_key=1)
    assert lim.try_acquire("a")
    assert lim.try_acquire("a")
    assert not lim.try_acquire("a")  # per-key limit
    assert lim.try_acquire("b")
    assert not lim.try_acquire("b")  # default per-key limit
    assert not lim.try_acquire("c")  # global cap
    assert (lim.active("a"), lim.active("b"), lim.active("c"), lim.active_total()) == (2, 1, 0, 3)
    lim.release("a")
    assert lim.try_acquire("c")
    lim.release("c")
    with pytest.raises(ValueError, match="without a matching acquire"):
        lim.release("c")
    with pytest.raises(ValueError, match="without a matching acquire"):
        lim.release("never")
    assert lim.active_total() == 2


def test_concurrency_unlimited_and_zero() -> None:
    lim = ConcurrencyLimiter()
    assert all(lim.try_acquire("x") for _ in range(100))
    assert lim.active_total() == 100
    closed = ConcurrencyLimiter(per_key={"off": 0})
    assert not closed.try_acquire("off")
    assert closed.try_acquire("on")
    with pytest.raises(ValueError, match="global_cap"):
        ConcurrencyLimiter(global_cap=-1)


def test_rate_limiter_retry_after() -> None:
    clk = FakeClock()
    rl = RateLimiter(rate_per_s=0.1, burst=2, clock=clk)
    assert rl.check("tok-a") is None
    assert rl.check("tok-a") is None
    assert rl.check("tok-a") == 10.0  # one token per 10 s
    assert rl.check("tok-b") is None  # keys are independent
    clk.advance(2.5)
    assert rl.check("tok-a") == 8.0  # 7.5 s left, rounded up
    clk.advance(7.5)
    assert rl.check("tok-a") is None


def test_rate_limiter_retry_after_at_least_one() -> None:
    clk = FakeClock()
    rl = RateLimiter(rate_per_s=100, burst=1, clock=clk)
    assert rl.check("k") is None
    assert rl.check("k") == 1.0  # 0.01 s really, but Retry-After is whole seconds >= 1
    with pytest.raises(ValueError, match="rate_per_s"):
        RateLimiter(0, 1, clk)
