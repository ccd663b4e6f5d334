"""Carrier pushback (sipbridge.throttle): which responses are pushback, and the cut and
recovering rate."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipbridge.limits import TokenBucket
from sipbridge.throttle import CpsThrottle, is_pushback


@pytest.mark.parametrize(
    ("status", "reason", "retry_after", "want"),
    [
        (503, "CPS Limit Exceeded", None, True),
        # the edge proxy's own per-trunk backstop (sipbridge.edge.kamcfg route CPS_LIMIT)
        (503, "Trunk CPS limit at the edge", 1.0, True),
        (503, "Trunk CPS limit at the edge", None, True),
        (403, "Rate limited", None, True),
        (403, "Call rate exceeded", None, True),
        (403, "Forbidden - cps", None, True),
        (503, "Service Unavailable", None, False),
        (403, "Forbidden", None, False),
        (403, "Caller ID not verified", None, False),
        (403, "Separate numbers", None, False),  # 'rate' inside a word is no pushback
        (486, "Busy Here", None, False),
        (480, "Temporarily Unavailable", 30.0, True),  # any Retry-After
        (503, "", 5.0, True),
        (200, "OK", 5.0, False),
        (None, None, None, False),
        (404, "Rate", None, False),  # only 403/503 by reason
    ],
)
def test_is_pushback(status, reason, retry_after, want):
    assert is_pushback(status, reason, retry_after) is want


def test_rate_halves_per_pushback_and_recovers_step_by_step():
    th = CpsThrottle(base_cps=8, factor=0.5, recover_s=10, min_cps=1)
    assert th.pushback(0.0) == 4
    assert th.pushback(1.0) == 2
    assert th.current(10.9) == 2  # recovery counts from the last pushback
    assert th.current(11.0) == 4
    assert th.current(21.0) == 8 and not th.throttled
    assert th.current(100.0) == 8


def test_floor_and_retry_after_hold():
    th = CpsThrottle(base_cps=1, factor=0.5, recover_s=5, min_cps=0.25)
    for _ in range(10):
        th.pushback(0.0)
    assert th.rate == 0.25
    th = CpsThrottle(base_cps=1, factor=0.5, recover_s=5, min_cps=0.25)
    th.pushback(0.0, retry_after_s=60)
    assert th.current(59.0) == 0.5 and th.current(60.0) == 1


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 100)), max_size=40))
def test_rate_stays_between_floor_and_base(steps):
    th = CpsThrottle(base_cps=10, factor=0.5, recover_s=3, min_cps=0.5)
    now = 0.0
    for push, dt in steps:
        now += dt
        rate = th.pushback(now) if push else th.current(now)
        assert 0.5 <= rate <= 10


def test_bucket_rate_change_and_drain():
    now = [0.0]
    b = TokenBucket(4, 2, lambda: now[0])
    b.drain()
    assert not b.try_take()
    b.set_rate(1)
    now[0] = 0.5
    assert not b.try_take()  # 0.5 tokens at 1/s
    now[0] = 1.0
    assert b.try_take()
