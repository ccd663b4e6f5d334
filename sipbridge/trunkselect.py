"""Which trunks to try, in which order, for one carrier attempt (pure logic).

The route gives candidates ``(trunk, priority, weight)`` in the manner of DNS SRV records
(RFC 2782, as used for SIP by RFC 3263): lower priority first, and within one priority a
weighted random order. Trunks resting after a 503 with Retry-After are skipped until then.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import NamedTuple

__all__ = [
    "Candidate",
    "TrunkHealth",
    "hunt_list",
    "parse_retry_after",
    "should_failover",
    "weighted_order",
]


class Candidate(NamedTuple):
    """One trunk a route may use."""

    trunk: str
    priority: int
    weight: float = 1.0


class TrunkHealth:
    """Trunks that asked not to be used for a while (503 + Retry-After, RFC 3261 21.5.4).

    Times are epoch (or monotonic) seconds, consistently with the ``now`` callers pass.
    ``max_rest_s`` bounds how long one response can bench a trunk."""

    def __init__(self, max_rest_s: float = 3600.0) -> None:
        self.max_rest_s = max_rest_s
        self._until: dict[str, float] = {}
        # Trunks an OPTIONS health check marked down (sipbridge.calls.probe): skipped
        # by hunting until a check marks them up.
        self._down: set[str] = set()

    def set_down(self, trunk: str, down: bool) -> None:
        if down:
            self._down.add(trunk)
        else:
            self._down.discard(trunk)

    def is_down(self, trunk: str) -> bool:
        return trunk in self._down

    def mark_unavailable(self, trunk: str, until_ts: float) -> None:
        """Skip ``trunk`` until ``until_ts``; an earlier mark that lasts longer is kept."""
        self._until[trunk] = max(until_ts, self._until.get(trunk, until_ts))

    def available(self, trunk: str, now: float) -> bool:
        """May ``trunk`` be tried at ``now``?"""
        if trunk in self._down:
            return False
        until = self._until.get(trunk)
        if until is None:
            return True
        if now >= until:
            del self._until[trunk]
            return True
        return False

    def resting_until(self, trunk: str) -> float | None:
        """When ``trunk`` may be used again, if it is marked."""
        return self._until.get(trunk)

    def earliest_available(self, trunks: Iterable[str], now: float) -> float | None:
        """The first time any of ``trunks`` is available (``now`` if one is already),
        ``None`` for an empty list. Lets the scheduler requeue when all are resting."""
        times = [
            now if self.available(t, now) else self._until[t] for t in trunks if t not in self._down
        ]  # a down trunk: no known time
        return min(times) if times else None

    def observe(
        self, trunk: str, sip_status: int | None, retry_after: str | None, now: float
    ) -> bool:
        """Record a final response: a 503 carrying a valid ``Retry-After`` rests the trunk for
        that many seconds (at most ``max_rest_s``). Returns True if the trunk was benched.

        RFC 3261 21.5.4: a 503 MAY carry Retry-After; the client should not retry this server
        before then. Other responses (and 503 without it) leave the trunk as it is."""
        if sip_status != 503:
            return False
        secs = parse_retry_after(retry_after)
        if secs is None or secs <= 0:
            return False
        self.mark_unavailable(trunk, now + min(secs, self.max_rest_s))
        return True


def weighted_order(items: Sequence[tuple[str, float]], rng: random.Random) -> list[str]:
    """Weighted random order without replacement: each pick is proportional to weight among
    those left (RFC 2782's SRV selection). Zero weights go last, in the given order."""
    pool = [(name, w) for name, w in items if w > 0]
    zero = [name for name, w in items if w <= 0]
    out: list[str] = []
    while pool:
        total = sum(w for _, w in pool)
        r = rng.random() * total
        acc = 0.0
        idx = len(pool) - 1  # float rounding: fall back to the last one
        for i, (_, w) in enumerate(pool):
            acc += w
            if r < acc:
                idx = i
                break
        out.append(pool.pop(idx)[0])
    return out + zero


def hunt_list(
    candidates: Iterable[Candidate | tuple[str, int, float]],
    rng: random.Random,
    health: TrunkHealth | None = None,
    now: float = 0.0,
) -> list[str]:
    """Ordered trunks to try for one attempt: by ascending priority, weighted random within a
    priority, without trunks resting at ``now``. May be empty (all resting: see
    :meth:`TrunkHealth.earliest_available`). ``ValueError`` on a duplicate trunk or a negative
    weight."""
    cands = [Candidate(*c) for c in candidates]
    seen: set[str] = set()
    for c in cands:
        if c.trunk in seen:
            raise ValueError(f"route: trunk {c.trunk!r} listed twice")
        if c.weight < 0:
            raise ValueError(f"route: trunk {c.trunk!r} has negative weight {c.weight}")
        seen.add(c.trunk)
    out: list[str] = []
    for prio in sorted({c.priority for c in cands}):
        group = [
            (c.trunk, float(c.weight))
            for c in cands
            if c.priority == prio and (health is None or health.available(c.trunk, now))
        ]
        out.extend(weighted_order(group, rng))
    return out


def should_failover(sip_status: int | None, cause: str | None = None) -> bool:
    """Try the next trunk after this failure?

    Yes for trouble with the trunk rather than the callee: transport errors (RFC 3261 8.1.3.1,
    treated like a 503), 408 Request Timeout (including a Timer B expiry, RFC 3261 17.1.1.2) and
    any 5xx server failure (RFC 3261 21.5; 503 per RFC 3263 4.3 means "try the next server").
    No for outcomes that describe the callee and would repeat on any trunk: other 4xx
    (404, 480, 484, 486 …), all 6xx global failures (600, 603, 604 — RFC 3261 21.6: "SHOULD
    NOT" be retried elsewhere), and no status at all (nothing reached the carrier, or the call
    was answered/canceled).
    """
    if cause == "transport_error":
        return True
    if sip_status is None:
        return False
    return sip_status == 408 or 500 <= sip_status <= 599


def _skip_comment(s: str, i: int) -> int:
    """Index just after the RFC 3261 ``comment`` starting at ``s[i] == '('``; -1 if unclosed.
    comment = LPAREN *(ctext / quoted-pair / comment) RPAREN (nested, with backslash escapes)."""
    depth = 0
    while i < len(s):
        ch = s[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a SIP ``Retry-After`` header value; ``None`` if absent or malformed.

    RFC 3261 20.33 / 25.1: ``Retry-After = delta-seconds [ comment ] *( SEMI retry-param )``,
    ``retry-param = ("duration" EQUAL delta-seconds) / generic-param``. E.g. ``"120"``,
    ``"120;duration=3600"``, ``"120 (I'm in a meeting)"``. Only the delay is returned;
    ``duration`` (how long the callee stays available) is validated but not used.
    """
    if value is None:
        return None
    s = value.strip()
    i = 0
    while i < len(s) and s[i].isascii() and s[i].isdigit():
        i += 1
    if i == 0:
        return None
    seconds = float(int(s[:i]))
    rest = s[i:].lstrip(" \t")
    if rest.startswith("("):
        end = _skip_comment(rest, 0)
        if end < 0:
            return None
        rest = rest[end:].lstrip(" \t")
    if not rest:
        return seconds
    if not rest.startswith(";"):
        return None
    for param in rest[1:].split(";"):
        name, sep, val = (p.strip() for p in param.partition("="))
        if not name or (sep and not val):
            return None
        if name.lower() == "duration" and not (val.isascii() and val.isdigit()):
            return None
    return seconds
