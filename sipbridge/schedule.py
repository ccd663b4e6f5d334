"""Calling windows in the recipient's time zone, and retry timing.

Pure logic: no clock is read here; every time-dependent function takes ``now``.

Semantics of a window (all in *local wall-clock time* of each recipient zone):

* ``start <= end`` is never assumed: when ``end <= start`` the window crosses midnight
  (``20:00-02:00``) and the allowed *day* is the day on which the window opens; ``start == end``
  is a 24-hour window opening at ``start`` (``CallingWindow.parse(hours="00:00-24:00")``).
* ``start`` is inclusive, ``end`` exclusive.
* DST: a window is judged by the wall clock. On a spring-forward day a start inside the gap
  (02:30 in America/New_York) opens at the first instant after the gap (03:00 EDT); on a
  fall-back day the repeated hour is inside the window both times it is shown on the clock.
* A number may map to several zones (``+1 800`` maps to ~40 zones): it is callable only when
  the window is open in **all** of them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from itertools import pairwise
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import phonenumbers
from phonenumbers import timezone as pn_timezone

__all__ = [
    "DEFAULT_RETRY_ON",
    "MAX_BACKOFF_S",
    "CallingWindow",
    "RetryPolicy",
    "backoff_s",
    "is_open",
    "next_attempt_time",
    "next_open",
    "resolve_zones",
    "zone",
    "zones_for_number",
]

_DAY_NAMES = {
    "mon": 0,
    "monday": 0,
    "tue": 1,
    "tues": 1,
    "tuesday": 1,
    "wed": 2,
    "wednesday": 2,
    "thu": 3,
    "thur": 3,
    "thurs": 3,
    "thursday": 3,
    "fri": 4,
    "friday": 4,
    "sat": 5,
    "saturday": 5,
    "sun": 6,
    "sunday": 6,
}
_ALL_DAYS = frozenset(range(7))
_HHMM = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")
_UNKNOWN_ZONE = "Etc/Unknown"


def _parse_days(days: str) -> frozenset[int]:
    spec = days.strip().lower()
    if spec in ("*", "all", "daily", "every day", "everyday"):
        return _ALL_DAYS
    if not spec:
        raise ValueError("days: empty (use e.g. 'mon-fri', 'mon,wed,sat-sun' or 'daily')")
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        bounds = [b.strip() for b in part.split("-")]
        if len(bounds) > 2 or not all(bounds):
            raise ValueError(f"days: bad range {part!r} (expected 'mon' or 'mon-fri')")
        for b in bounds:
            if b not in _DAY_NAMES:
                raise ValueError(
                    f"days: unknown day {b!r} in {days!r} (use mon, tue, wed, thu, fri, sat, sun)"
                )
        lo = _DAY_NAMES[bounds[0]]
        hi = _DAY_NAMES[bounds[-1]]
        # A range wraps around the week: 'fri-mon' is fri, sat, sun, mon.
        d = lo
        out.add(d)
        while d != hi:
            d = (d + 1) % 7
            out.add(d)
    return frozenset(out)


def _parse_clock(text: str, what: str, allow_24: bool) -> time:
    m = _HHMM.match(text.strip())
    if not m:
        raise ValueError(f"hours: {what} {text.strip()!r} is not HH:MM")
    h, mi, s = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if allow_24 and (h, mi, s) == (24, 0, 0):
        return time(0)
    if h > 23 or mi > 59 or s > 59:
        limit = "00:00..24:00" if allow_24 else "00:00..23:59"
        raise ValueError(f"hours: {what} {text.strip()!r} is out of range ({limit})")
    return time(h, mi, s)


@dataclass(frozen=True)
class CallingWindow:
    """Local days and hours during which a recipient may be called.

    ``days``: allowed local weekdays (Monday=0) *on which the window opens*.
    ``start``/``end``: local wall-clock times, end exclusive; ``end <= start`` crosses midnight
    and ``start == end`` is a 24-hour window.
    """

    days: frozenset[int]
    start: time
    end: time

    def __post_init__(self) -> None:
        if not self.days:
            raise ValueError("days: at least one day is required")
        bad = sorted(d for d in self.days if not (isinstance(d, int) and 0 <= d <= 6))
        if bad:
            raise ValueError(f"days: {bad} not in 0..6 (Monday=0)")
        for name, t in (("start", self.start), ("end", self.end)):
            if t.tzinfo is not None:
                raise ValueError(f"hours: {name} must be a naive local time")

    @classmethod
    def parse(cls, days: str = "mon-fri", hours: str = "09:00-20:00") -> CallingWindow:
        """Build from text: ``days`` like ``"mon-fri"``, ``"mon,wed,sat-sun"``, ``"daily"``;
        ``hours`` like ``"09:00-20:00"``, ``"20:00-02:00"`` (crosses midnight) or
        ``"00:00-24:00"`` (all day). Raises ``ValueError`` naming what is wrong."""
        parts = hours.split("-")
        if len(parts) != 2:
            raise ValueError(f"hours: {hours!r} is not 'HH:MM-HH:MM'")
        if parts[0].strip() == parts[1].strip():
            raise ValueError(
                f"hours: {hours!r} is empty (start equals end; use 00:00-24:00 for all day)"
            )
        start = _parse_clock(parts[0], "start", allow_24=False)
        end = _parse_clock(parts[1], "end", allow_24=True)
        return cls(_parse_days(days), start, end)

    @property
    def crosses_midnight(self) -> bool:
        """True when the window ends on the day after it opens (includes 24-hour windows)."""
        return self.end <= self.start

    def contains_local(self, local: datetime) -> bool:
        """Is this local wall-clock datetime (its date and time fields) inside the window?"""
        t = local.time()
        wd = local.weekday()
        if not self.crosses_midnight:
            return wd in self.days and self.start <= t < self.end
        return (wd in self.days and t >= self.start) or ((wd - 1) % 7 in self.days and t < self.end)


@lru_cache(maxsize=1024)
@lru_cache(maxsize=1)
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def zone(name: str) -> ZoneInfo:
    """``ZoneInfo`` by IANA name; ``ValueError`` naming it if unknown.

    Only names in the zone database are looked up: ``ZoneInfo`` opens files by name, and a
    directory or an over-long name would raise ``OSError``, not ``ValueError``."""
    if not isinstance(name, str) or name not in _known_zones():
        raise ValueError(f"timezone: unknown time zone {str(name)[:80]!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"timezone: unknown time zone {name!r}") from exc


def zones_for_number(e164: str) -> tuple[str, ...]:
    """IANA zones of an E.164 number per libphonenumber's geocoding data.

    ``Etc/Unknown`` is dropped. An empty tuple means nothing is known (e.g. +44 non-geographic
    ranges): callers then need a per-call ``timezone`` override or the route's default zone —
    see :func:`resolve_zones`. A number that cannot be parsed raises ``ValueError``.
    """
    try:
        num = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"to_number: cannot parse {e164!r}: {exc}") from exc
    zones = pn_timezone.time_zones_for_number(num)
    return tuple(z for z in zones if z != _UNKNOWN_ZONE)


def resolve_zones(
    e164: str, override: str | None = None, default: str | None = None
) -> tuple[str, ...]:
    """Zones to judge a call by: the per-call ``override`` if given, else the number's zones,
    else the route's ``default``; ``ValueError`` if none is known or a name is invalid."""
    if override:
        zone(override)
        return (override,)
    zones = zones_for_number(e164)
    if zones:
        return zones
    if default:
        zone(default)
        return (default,)
    raise ValueError(
        f"timezone: no time zone known for {e164}; give a per-call timezone or a route default"
    )


def _as_utc(now: datetime | float) -> datetime:
    if isinstance(now, datetime):
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be timezone-aware (UTC)")
        return now.astimezone(UTC)
    return datetime.fromtimestamp(float(now), UTC)


def _zones(zones: Iterable[str]) -> tuple[ZoneInfo, ...]:
    if isinstance(zones, str):
        zones = (zones,)
    zs = tuple(zone(z) for z in zones)
    if not zs:
        raise ValueError(
            "timezone: no time zone given (number has no known zone; pass a per-call "
            "timezone or the route's default)"
        )
    return zs


def is_open(window: CallingWindow, zones: Iterable[str], now_utc: datetime | float) -> bool:
    """True iff ``now_utc`` is inside ``window`` in the local time of *every* zone in ``zones``.

    ``zones`` must be non-empty (``ValueError`` otherwise: an unknown zone never means
    "anytime")."""
    now = _as_utc(now_utc)
    return all(window.contains_local(now.astimezone(z)) for z in _zones(zones))


def _offset(z: ZoneInfo, ts: int) -> timedelta:
    off = datetime.fromtimestamp(ts, z).utcoffset()
    assert off is not None
    return off


def _transitions(z: ZoneInfo, a: int, b: int, step: int = 1800) -> list[int]:
    """Epoch seconds in (a, b] where the zone's UTC offset changes (DST or rule changes).

    Scans at ``step`` (tzdb transitions are far more than 30 min apart) and bisects to the
    exact second (tzdb transitions fall on whole seconds)."""
    out: list[int] = []
    t = a
    prev = _offset(z, t)
    while t < b:
        u = min(t + step, b)
        cur = _offset(z, u)
        if cur != prev:
            lo, hi = t, u  # offset(lo) == prev, offset(hi) != prev
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset(z, mid) == prev:
                    lo = mid
                else:
                    hi = mid
            out.append(hi)
            prev = cur
        t = u
    return out


def _opening_candidates(
    window: CallingWindow, z: ZoneInfo, lo: datetime, hi: datetime
) -> list[datetime]:
    """UTC instants in (lo, hi] at which the window may open in zone ``z``.

    The open set is right-continuous and changes from closed to open only when the wall clock
    reaches ``start`` on an allowed day, or when the offset changes (the clock jumps, e.g. into
    the window after a fall-back, or over a spring-forward gap that contains ``start``).
    Midnight itself never opens a window unless it equals ``start``."""
    a = math.floor(lo.timestamp())
    b = math.ceil(hi.timestamp())
    trans = _transitions(z, a, b)
    bounds = [a, *trans, b]
    out = [datetime.fromtimestamp(t, UTC) for t in trans]
    for s0, s1 in pairwise(bounds):
        seg_lo = datetime.fromtimestamp(s0, UTC)
        seg_hi = datetime.fromtimestamp(s1, UTC)
        off = _offset(z, s0)
        local_lo = (seg_lo + off).replace(tzinfo=None)
        local_hi = (seg_hi + off).replace(tzinfo=None)
        d: date = local_lo.date()
        while d <= local_hi.date():
            if d.weekday() in window.days:
                naive = datetime.combine(d, window.start)
                if local_lo <= naive < local_hi:
                    out.append((naive - off).replace(tzinfo=UTC))
            d += timedelta(days=1)
    return [t for t in out if lo < t <= hi]


def next_open(
    window: CallingWindow,
    zones: Iterable[str],
    now_utc: datetime | float,
    horizon_days: float = 8,
) -> datetime | None:
    """Earliest UTC instant ``r >= now_utc`` with ``is_open(window, zones, r)``; ``None`` if the
    window does not open (in all zones at once) within ``horizon_days``.

    Exact: the intersection of the per-zone open sets starts either at ``now`` or at an instant
    where one zone opens (its wall clock reaches ``start``, or its offset changes), so those
    candidates are evaluated in order."""
    now = _as_utc(now_utc)
    zs = _zones(zones)
    if all(window.contains_local(now.astimezone(z)) for z in zs):
        return now
    hi = now + timedelta(days=horizon_days)
    cands: set[datetime] = set()
    for z in zs:
        cands.update(_opening_candidates(window, z, now, hi))
    for c in sorted(cands):
        if all(window.contains_local(c.astimezone(z)) for z in zs):
            return c
    return None


# The longest backoff any policy can produce (a year): keeps ``now + delay`` far from
# ``datetime.max`` whatever a policy says.
MAX_BACKOFF_S = 366 * 86400.0


def backoff_s(
    attempt: int,
    base_s: float,
    factor: float,
    cap_s: float,
    jitter: float,
    rand: Callable[[], float],
) -> float:
    """Delay before the retry that follows failed attempt number ``attempt`` (1-based).

    ``min(cap_s, base_s * factor ** (attempt - 1)) * (1 - jitter * rand())``: exponential, capped,
    with proportional jitter. ``jitter=1`` is AWS-style "full jitter" (uniform in (0, d]);
    ``jitter=0`` is deterministic. Jitter only ever *shortens* the delay, so the cap is a hard
    upper bound and ``(1 - jitter) * d`` the lower bound. ``rand`` returns a float in [0, 1).

    Never overflows: whatever the inputs (1e308, +Infinity), the result is at most
    :data:`MAX_BACKOFF_S`; NaN is refused with ``ValueError``.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if not (base_s >= 0 and cap_s >= 0 and factor >= 1):  # also refuses NaN
        raise ValueError("backoff: need base_s >= 0, cap_s >= 0 and factor >= 1")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"backoff: jitter must be in [0, 1], got {jitter}")
    try:
        raw = float(base_s) * float(factor) ** (attempt - 1)
    except OverflowError:
        raw = math.inf
    if math.isnan(raw):  # 0 * inf
        raw = 0.0
    delay = min(cap_s, raw, MAX_BACKOFF_S)
    r = rand()
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"backoff: rand() returned {r}, expected [0, 1)")
    return delay * (1.0 - jitter * r)


# Outcome kinds (``sipbridge.outcomes.Termination.kind``) worth another attempt by default.
# "machine" is the detector's voicemail outcome when the voicemail action asks for a retry.
DEFAULT_RETRY_ON: frozenset[str] = frozenset(
    {"busy", "no_answer", "carrier_error", "transport_error", "bridge_error", "machine"}
)


@dataclass(frozen=True)
class RetryPolicy:
    """When and how often a failed call is tried again.

    ``max_attempts`` counts every attempt including the first (1 = never retry). Delays come
    from :func:`backoff_s`."""

    retry_on: frozenset[str] = field(default=DEFAULT_RETRY_ON)
    max_attempts: int = 3
    base_s: float = 60.0
    factor: float = 2.0
    cap_s: float = 3600.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"retry.max_attempts must be >= 1, got {self.max_attempts}")
        if not (self.base_s >= 0 and self.cap_s >= 0):  # also refuses NaN
            raise ValueError("retry: base_s and cap_s must be >= 0")
        if not self.factor >= 1:
            raise ValueError(f"retry.factor must be >= 1, got {self.factor}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"retry.jitter must be in [0, 1], got {self.jitter}")

    def should_retry(self, kind: str, attempts_done: int) -> bool:
        """Another attempt after ``attempts_done`` attempts, the last ending with ``kind``?"""
        return kind in self.retry_on and attempts_done < self.max_attempts

    def delay_s(self, attempts_done: int, rand: Callable[[], float]) -> float:
        """Backoff after ``attempts_done`` failed attempts."""
        return backoff_s(attempts_done, self.base_s, self.factor, self.cap_s, self.jitter, rand)


def next_attempt_time(
    policy: RetryPolicy,
    attempts_done: int,
    now_utc: datetime | float,
    rand: Callable[[], float],
    window: CallingWindow | None = None,
    zones: Iterable[str] = (),
    horizon_days: float = 8,
) -> datetime | None:
    """When to place the next attempt: the backoff, then the calling window.

    Returns ``next_open(window, zones, now + backoff)`` — i.e. ``max(now + backoff, open)``
    where ``open`` is the window's first opening not before the backoff has elapsed (not merely
    the next opening after ``now``, which could already have closed again). ``None`` if the
    window does not open within ``horizon_days`` after the backoff. Does not consult
    :meth:`RetryPolicy.should_retry`; callers check that first. Without a window, the
    backoff alone decides."""
    delay = min(policy.delay_s(attempts_done, rand), MAX_BACKOFF_S)
    try:
        earliest = _as_utc(now_utc) + timedelta(seconds=delay)
    except OverflowError:  # ``now`` near datetime.max: no attempt can be scheduled
        return None
    if window is None:
        return earliest
    return next_open(window, zones, earliest, horizon_days)
