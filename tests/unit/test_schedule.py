"""Calling windows, time zones, DST, backoff and retry timing (sipbridge.schedule)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipbridge import outcomes
from sipbridge.schedule import (
    CallingWindow,
    RetryPolicy,
    backoff_s,
    is_open,
    next_attempt_time,
    next_open,
    resolve_zones,
    zones_for_number,
)

NY = ("America/New_York",)
LON = ("Europe/London",)
SEC = timedelta(seconds=1)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=UTC)


# --- parsing -----------------------------------------------------------------------------


def test_parse_days_and_hours() -> None:
    w = CallingWindow.parse("mon-fri", "09:00-20:00")
    assert w.days == frozenset({0, 1, 2, 3, 4})
    assert (w.start, w.end) == (time(9), time(20))
    assert not w.crosses_midnight
    assert CallingWindow.parse("fri-mon", "09:00-17:00").days == frozenset({4, 5, 6, 0})
    assert CallingWindow.parse("Mon,wed,SAT-sun", "9:00-17:30").days == frozenset({0, 2, 5, 6})
    assert CallingWindow.parse("daily", "08:00-21:00").days == frozenset(range(7))
    night = CallingWindow.parse("fri", "20:00-02:00")
    assert night.crosses_midnight and night.end == time(2)
    allday = CallingWindow.parse("sat", "00:00-24:00")
    assert allday.start == allday.end == time(0)


@pytest.mark.parametrize(
    ("days", "hours", "needle"),
    [
        ("funday", "09:00-17:00", "'funday'"),
        ("mon-", "09:00-17:00", "bad range"),
        ("", "09:00-17:00", "days: empty"),
        ("mon-fri", "9-17", "'9' is not HH:MM"),
        ("mon-fri", "25:00-26:00", "start '25:00' is out of range"),
        ("mon-fri", "09:00-09:60", "end '09:60' is out of range"),
        ("mon-fri", "09:00", "not 'HH:MM-HH:MM'"),
        ("mon-fri", "09:00-09:00", "start equals end"),
        ("mon-fri", "24:00-09:00", "start '24:00' is out of range"),
    ],
)
def test_parse_errors_name_the_problem(days: str, hours: str, needle: str) -> None:
    with pytest.raises(ValueError) as exc:
        CallingWindow.parse(days, hours)
    assert needle in str(exc.value)


def test_window_validates_days() -> None:
    with pytest.raises(ValueError, match="days"):
        CallingWindow(frozenset({7}), time(9), time(17))
    with pytest.raises(ValueError, match="days"):
        CallingWindow(frozenset(), time(9), time(17))


# --- zones -------------------------------------------------------------------------------


def test_zones_for_number() -> None:
    assert zones_for_number("+12125551234") == ("America/New_York",)
    assert zones_for_number("+33123456789") == ("Europe/Paris",)
    # Non-geographic UK range: libphonenumber says Etc/Unknown, which is dropped.
    assert zones_for_number("+441632960123") == ()
    toll_free = zones_for_number("+18005551234")
    assert len(toll_free) > 10
    assert {"America/New_York", "America/Los_Angeles", "Pacific/Honolulu"} <= set(toll_free)
    with pytest.raises(ValueError, match="to_number"):
        zones_for_number("not a number")


def test_resolve_zones() -> None:
    assert resolve_zones("+12125551234") == NY
    assert resolve_zones("+12125551234", override="Europe/London") == LON
    assert resolve_zones("+441632960123", default="Europe/London") == LON
    with pytest.raises(ValueError, match="no time zone known"):
        resolve_zones("+441632960123")
    with pytest.raises(ValueError, match="Mars/Olympus"):
        resolve_zones("+12125551234", override="Mars/Olympus")


def test_empty_zones_is_an_error_not_anytime() -> None:
    w = CallingWindow.parse("daily", "00:00-24:00")
    with pytest.raises(ValueError, match="no time zone"):
        is_open(w, (), utc(2024, 6, 5, 12))
    with pytest.raises(ValueError, match="no time zone"):
        next_open(w, [], utc(2024, 6, 5, 12))


def test_naive_now_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        is_open(CallingWindow.parse(), NY, datetime(2024, 6, 5, 12))


# --- is_open -----------------------------------------------------------------------------


def test_inside_outside_and_days() -> None:
    w = CallingWindow.parse("mon-fri", "09:00-20:00")
    # 2024-06-05 is a Wednesday; New York is UTC-4 (EDT).
    assert is_open(w, NY, utc(2024, 6, 5, 13))  # 09:00 EDT, start inclusive
    assert not is_open(w, NY, utc(2024, 6, 5, 12, 59, 59))
    assert is_open(w, NY, utc(2024, 6, 5, 23, 59, 59))  # 19:59:59 EDT
    assert not is_open(w, NY, utc(2024, 6, 6, 0))  # 20:00 EDT, end exclusive
    assert not is_open(w, NY, utc(2024, 6, 8, 15))  # Saturday
    assert is_open(w, NY, utc(2024, 6, 5, 13).timestamp())  # float epoch accepted
    assert is_open(w, "America/New_York", utc(2024, 6, 5, 13))  # a bare zone name


def test_crossing_midnight_day_is_the_opening_day() -> None:
    w = CallingWindow.parse("fri", "20:00-02:00")
    # January: London is on GMT (= UTC). 2024-01-05 is a Friday.
    assert not is_open(w, LON, utc(2024, 1, 5, 19, 59))
    assert is_open(w, LON, utc(2024, 1, 5, 20))
    assert is_open(w, LON, utc(2024, 1, 6, 1, 59, 59))  # Saturday early hours: Friday's window
    assert not is_open(w, LON, utc(2024, 1, 6, 2))
    assert not is_open(w, LON, utc(2024, 1, 6, 21))  # Saturday evening: not allowed
    assert not is_open(w, LON, utc(2024, 1, 5, 1))  # Friday early hours belong to Thursday
    assert next_open(w, LON, utc(2024, 1, 6, 2)) == utc(2024, 1, 12, 20)


def test_all_day_window() -> None:
    w = CallingWindow.parse("sat", "00:00-24:00")
    assert not is_open(w, LON, utc(2024, 1, 5, 23, 59, 59))
    assert is_open(w, LON, utc(2024, 1, 6, 0))
    assert is_open(w, LON, utc(2024, 1, 6, 23, 59, 59))
    assert not is_open(w, LON, utc(2024, 1, 7, 0))
    # Ends at midnight: 09:00-24:00 is a crossing window that closes at 00:00.
    eve = CallingWindow.parse("sat", "09:00-24:00")
    assert is_open(eve, LON, utc(2024, 1, 6, 23, 59))
    assert not is_open(eve, LON, utc(2024, 1, 7, 0, 1))


def test_several_zones_must_all_be_open() -> None:
    w = CallingWindow.parse("daily", "09:00-20:00")
    both = ("America/New_York", "America/Los_Angeles")
    # June: NY = UTC-4, LA = UTC-7; both open 16:00-24:00 UTC.
    assert is_open(w, NY, utc(2024, 6, 5, 14))
    assert not is_open(w, both, utc(2024, 6, 5, 14))  # 07:00 in LA
    assert next_open(w, both, utc(2024, 6, 5, 14)) == utc(2024, 6, 5, 16)
    assert not is_open(w, both, utc(2024, 6, 6, 0))  # 20:00 in NY
    # Toll-free +1 800 spans Guam (UTC+10) to Puerto Rico (UTC-4): an 11-hour window is never
    # open everywhere at once, so such numbers need a per-call timezone override.
    toll_free = zones_for_number("+18005551234")
    assert next_open(w, toll_free, utc(2024, 6, 5, 14)) is None
    wide = CallingWindow.parse("daily", "06:00-23:00")
    r = next_open(wide, toll_free, utc(2024, 6, 5, 14))
    assert r is not None and is_open(wide, toll_free, r)
    assert not is_open(wide, toll_free, r - SEC)


def test_next_open_is_now_when_open_and_exact_otherwise() -> None:
    w = CallingWindow.parse("mon-fri", "09:00-20:00")
    now = utc(2024, 6, 5, 15, 12, 7, 123456)
    assert next_open(w, NY, now) == now
    # Friday 20:00:01 EDT -> Monday 09:00 EDT.
    assert next_open(w, NY, utc(2024, 6, 8, 0, 0, 1)) == utc(2024, 6, 10, 13)
    assert next_open(w, NY, utc(2024, 6, 5, 12, 59, 59, 999999)) == utc(2024, 6, 5, 13)


def test_next_open_horizon() -> None:
    w = CallingWindow.parse("sun", "10:00-11:00")
    mon = utc(2024, 6, 3, 12)
    assert next_open(w, LON, mon, horizon_days=1) is None
    assert next_open(w, LON, mon) == utc(2024, 6, 9, 9)  # 10:00 BST
    # Never open at once: 09:00-10:00 in Tokyo and in New York.
    short = CallingWindow.parse("daily", "09:00-10:00")
    assert next_open(short, ("Asia/Tokyo", "America/New_York"), mon) is None


# --- DST ---------------------------------------------------------------------------------


def test_dst_spring_forward_new_york() -> None:
    # 2024-03-10: 02:00 EST (07:00 UTC) jumps to 03:00 EDT; 02:00-02:59 never happen.
    w = CallingWindow.parse("daily", "02:30-04:00")
    r = next_open(w, NY, utc(2024, 3, 10, 5))
    assert r == utc(2024, 3, 10, 7)  # first instant after the gap (03:00 EDT)
    assert not is_open(w, NY, r - SEC)  # 01:59:59 EST
    assert is_open(w, NY, utc(2024, 3, 10, 7, 59, 59))  # 03:59:59 EDT
    assert not is_open(w, NY, utc(2024, 3, 10, 8))  # 04:00 EDT
    # A window that ends inside the gap closes at the jump.
    early = CallingWindow.parse("daily", "01:30-02:30")
    assert is_open(early, NY, utc(2024, 3, 10, 6, 59, 59))
    assert not is_open(early, NY, utc(2024, 3, 10, 7))
    # The day after, the same window opens at 02:30 EDT = 06:30 UTC.
    assert next_open(w, NY, utc(2024, 3, 10, 9)) == utc(2024, 3, 11, 6, 30)


def test_dst_fall_back_new_york() -> None:
    # 2024-11-03: 02:00 EDT (06:00 UTC) goes back to 01:00 EST; 01:00-01:59 happen twice.
    w = CallingWindow.parse("daily", "01:00-01:30")
    assert is_open(w, NY, utc(2024, 11, 3, 5, 0))  # 01:00 EDT
    assert not is_open(w, NY, utc(2024, 11, 3, 5, 30))  # 01:30 EDT
    assert next_open(w, NY, utc(2024, 11, 3, 5, 45)) == utc(2024, 11, 3, 6)  # 01:00 EST
    assert is_open(w, NY, utc(2024, 11, 3, 6, 29, 59))
    assert not is_open(w, NY, utc(2024, 11, 3, 6, 30))
    # Business hours span 9 wall-clock hours on the 25-hour day too.
    biz = CallingWindow.parse("sun", "09:00-18:00")
    assert next_open(biz, NY, utc(2024, 11, 3, 0)) == utc(2024, 11, 3, 14)  # 09:00 EST


def test_dst_europe_london() -> None:
    # 2024-03-31: 01:00 GMT jumps to 02:00 BST.
    w = CallingWindow.parse("sun", "01:15-03:00")
    assert next_open(w, LON, utc(2024, 3, 30, 23)) == utc(2024, 3, 31, 1)  # 02:00 BST
    assert not is_open(w, LON, utc(2024, 3, 31, 0, 59, 59))
    assert not is_open(w, LON, utc(2024, 3, 31, 2))  # 03:00 BST
    # 2024-10-27: 02:00 BST (01:00 UTC) goes back to 01:00 GMT.
    late = CallingWindow.parse("sat", "20:00-01:30")
    assert is_open(late, LON, utc(2024, 10, 27, 0, 29))  # 01:29 BST
    assert not is_open(late, LON, utc(2024, 10, 27, 0, 30))  # 01:30 BST
    assert next_open(late, LON, utc(2024, 10, 27, 0, 30)) == utc(2024, 10, 27, 1)  # 01:00 GMT
    assert not is_open(late, LON, utc(2024, 10, 27, 1, 30))


# --- property: next_open is exact ---------------------------------------------------------

_ZONES = [
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "America/St_Johns",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "America/Santiago",
    "Europe/Berlin",
    "Pacific/Apia",
    "UTC",
]
# DST transitions (UTC) to draw "now" close to.
_TRANSITIONS = [
    utc(2024, 3, 10, 7),
    utc(2024, 11, 3, 6),
    utc(2024, 3, 31, 1),
    utc(2024, 10, 27, 1),
    utc(2024, 4, 6, 15),
    utc(2024, 10, 5, 15),
    utc(2024, 9, 8, 4),
    utc(2024, 4, 7, 3),
]

_windows = st.builds(
    lambda days, s, e: CallingWindow(frozenset(days), time(s // 60, s % 60), time(e // 60, e % 60)),
    st.sets(st.integers(0, 6), min_size=1),
    st.integers(0, 1439),
    st.integers(0, 1439),
)
_nows = st.one_of(
    st.datetimes(datetime(2023, 1, 1), datetime(2026, 1, 1)).map(lambda d: d.replace(tzinfo=UTC)),
    st.builds(
        lambda t, s: t + timedelta(seconds=s),
        st.sampled_from(_TRANSITIONS),
        st.integers(-3 * 86400, 3 * 86400),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    window=_windows,
    zones=st.lists(st.sampled_from(_ZONES), min_size=1, max_size=3, unique=True),
    now=_nows,
)
def test_next_open_property(window: CallingWindow, zones: list[str], now: datetime) -> None:
    r = next_open(window, zones, now, horizon_days=8)
    end = r if r is not None else now + timedelta(days=8)
    if r is not None:
        assert r >= now
        assert is_open(window, zones, r)
        if r > now:
            assert not is_open(window, zones, r - SEC)  # exact to the second
    # No earlier instant is open: 1-minute steps (coarser on long gaps), plus the last second.
    stride = timedelta(seconds=max(60, int((end - now).total_seconds()) // 1500))
    t = now
    while t < end:
        assert not is_open(window, zones, t), f"open at {t} before {r}"
        t += stride


# --- backoff and retry -------------------------------------------------------------------


def test_backoff_sequence_fixed_rand() -> None:
    seq = [backoff_s(a, 10, 2, 100, 0.5, lambda: 0.0) for a in range(1, 8)]
    assert seq == [10, 20, 40, 80, 100, 100, 100]
    half = [backoff_s(a, 10, 2, 100, 0.5, lambda: 0.5) for a in range(1, 6)]
    assert half == [7.5, 15, 30, 60, 75]
    assert backoff_s(10_000, 1, 10, 300, 0, lambda: 0.3) == 300  # no overflow
    assert backoff_s(3, 5, 1, 100, 0, lambda: 0.9) == 5  # factor 1: constant


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((0, 1, 2, 10, 0.1), "attempt"),
        ((1, 1, 2, 10, 1.5), "jitter"),
        ((1, -1, 2, 10, 0.1), "base_s"),
        ((1, 1, 0.5, 10, 0.1), "factor"),
    ],
)
def test_backoff_rejects_bad_input(
    args: tuple[int, float, float, float, float], needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):
        backoff_s(*args, rand=lambda: 0.5)


@given(
    attempt=st.integers(1, 60),
    base=st.floats(0.1, 600),
    factor=st.floats(1, 4),
    cap=st.floats(1, 7200),
    jitter=st.floats(0, 1),
    r=st.floats(0, 1, exclude_max=True),
)
def test_backoff_jitter_bounds(
    attempt: int, base: float, factor: float, cap: float, jitter: float, r: float
) -> None:
    d = backoff_s(attempt, base, factor, cap, jitter, lambda: r)
    full = min(cap, base * factor ** (attempt - 1))
    assert d <= cap
    assert (1 - jitter) * full - 1e-9 <= d <= full + 1e-9
    assert d > 0 or jitter == 1  # only full jitter may reach (near) zero
    # Without jitter the sequence never decreases.
    assert backoff_s(attempt, base, factor, cap, 0, lambda: r) <= backoff_s(
        attempt + 1, base, factor, cap, 0, lambda: r
    )


def test_retry_policy_uses_outcome_kinds() -> None:
    p = RetryPolicy(max_attempts=3)
    for status in (486, 480, 408, 503):  # busy, no answer, no answer, carrier error
        assert p.should_retry(outcomes.from_sip(status).kind, 1), status
    for status in (404, 603, 403, 487):  # not in service, declined, rejected, canceled
        assert not p.should_retry(outcomes.from_sip(status).kind, 1), status
    transport = outcomes.from_leg_end("transport_error", False, None)
    assert p.should_retry(transport.kind, 1)
    worker = outcomes.from_leg_end("worker_died", False, None)
    assert p.should_retry(worker.kind, 2)
    assert not p.should_retry("busy", 3)  # max_attempts counts every attempt
    assert not RetryPolicy(max_attempts=1).should_retry("busy", 1)
    only_busy = RetryPolicy(retry_on=frozenset({"busy"}))
    assert not only_busy.should_retry("no_answer", 1)
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=2)


def test_next_attempt_time_combines_backoff_and_window() -> None:
    p = RetryPolicy(base_s=600, factor=2, cap_s=3600, jitter=0)
    w = CallingWindow.parse("mon-fri", "09:00-20:00")
    # Wednesday 10:00 EDT: the backoff alone decides.
    now = utc(2024, 6, 5, 14)
    assert next_attempt_time(p, 1, now, lambda: 0.0, w, NY) == now + timedelta(seconds=600)
    assert next_attempt_time(p, 2, now, lambda: 0.0) == now + timedelta(seconds=1200)
    # Friday 19:55 EDT: 10 min later the window is shut; Monday 09:00 EDT.
    fri = utc(2024, 6, 7, 23, 55)
    assert next_attempt_time(p, 1, fri, lambda: 0.0, w, NY) == utc(2024, 6, 10, 13)
    # The window reopens before the backoff ends: the backoff still holds.
    sat = utc(2024, 6, 10, 12, 30)  # Monday 08:30 EDT, backoff 1 h -> 09:30 EDT
    assert next_attempt_time(p, 4, sat, lambda: 0.0, w, NY) == utc(2024, 6, 10, 13, 30)
    never = CallingWindow.parse("daily", "09:00-10:00")
    assert next_attempt_time(p, 1, now, lambda: 0.0, never, ("Asia/Tokyo", *NY)) is None
