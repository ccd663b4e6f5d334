"""Carrier pushback: when a trunk says "too fast", dial it more slowly (pure).

Carriers enforce calls-per-second caps and answer the excess with 503 Service
Unavailable or 403 Forbidden whose reason phrase names the cap ("CPS limit exceeded",
"Rate limited"), or with a Retry-After (RFC 3261 20.33) on any failure. Failing those
calls would punish the callee for our pace: the call is queued again and the trunk's
token bucket runs at a cut rate that recovers step by step.
"""

from __future__ import annotations

import re

_PUSHBACK_REASON = re.compile(r"\bcps\b|\brate\b|rate[- ]?limit", re.IGNORECASE)


def is_pushback(
    sip_status: int | None, sip_reason: str | None, retry_after_s: float | None
) -> bool:
    """Is this final response the carrier slowing us down (not the callee refusing)?"""
    if sip_status is None or sip_status < 400:
        return False
    if retry_after_s is not None and retry_after_s > 0:
        return True
    return sip_status in (403, 503) and bool(_PUSHBACK_REASON.search(sip_reason or ""))


class CpsThrottle:
    """A trunk's allowed dial rate: ``base_cps`` until pushed back, then cut by
    ``factor`` per pushback (not below ``min_cps``), recovering one step (divided by
    ``factor``) every ``recover_s`` without a new pushback. Times are ``now`` seconds
    of one clock."""

    def __init__(self, base_cps: float, factor: float, recover_s: float, min_cps: float) -> None:
        if not (base_cps > 0 and 0 < factor < 1 and recover_s > 0 and min_cps > 0):
            raise ValueError("base_cps, recover_s, min_cps > 0 and 0 < factor < 1")
        self.base_cps = base_cps
        self.factor = factor
        self.recover_s = recover_s
        self.min_cps = min(min_cps, base_cps)
        self.rate = base_cps
        self.recover_at: float | None = None

    def pushback(self, now: float, retry_after_s: float | None = None) -> float:
        """The carrier pushed back: the new (cut) rate."""
        self.current(now)
        self.rate = max(self.min_cps, self.rate * self.factor)
        self.recover_at = now + max(self.recover_s, retry_after_s or 0.0)
        return self.rate

    def current(self, now: float) -> float:
        """The rate allowed at ``now`` (recovering steps that are due)."""
        while self.recover_at is not None and now >= self.recover_at:
            self.rate = min(self.base_cps, self.rate / self.factor)
            if self.rate >= self.base_cps:
                self.recover_at = None
            else:
                self.recover_at += self.recover_s
        return self.rate

    @property
    def throttled(self) -> bool:
        return self.rate < self.base_cps


__all__ = ["CpsThrottle", "is_pushback"]
