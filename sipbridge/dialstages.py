"""Where a dial's time goes, from the API handler to the INVITE leaving the SIP worker.

Points (``time.monotonic()``; CLOCK_MONOTONIC is one clock for every process of the
machine, so the SIP worker's readings compare with the supervisor's):

* ``received`` — the call service takes the trigger (the HTTP request is parsed,
  authorised, rate-checked and its numbers checked);
* ``stored`` — the call is stored as queued (the store's commit is done);
* ``picked`` — a scheduling pass starts the call's first attempt;
* ``sent`` — the supervisor has written the Dial command to the worker's pipe;
* ``worker_rx`` — the worker's loop has taken the Dial and found the leg's account (the
  leg's start; reported back with its ``trying`` event);
* ``invited`` — pjsua's ``makeCall`` returned: the INVITE is on the wire.

Stages are the gaps between consecutive points (:data:`STAGES`). Only a call's first
dial is measured (retries and failover hops wait on purpose). Cheap: a few floats per call
in flight, bounded by ``max_calls``. Pure: no clock is read here, callers pass the times.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("sipbridge.dialstages")

POINTS = ("received", "stored", "picked", "sent", "worker_rx", "invited")
# stage name -> (from point, to point)
STAGES: dict[str, tuple[str, str]] = {
    "api": ("received", "stored"),  # validation, policy, the store's commit
    "queue": ("stored", "picked"),  # waiting for the scheduler's pass
    "place": ("picked", "sent"),  # limits, plan, placement, the Dial's pipe write
    "worker_wait": ("sent", "worker_rx"),  # the worker's loop getting to the command
    "invite": ("worker_rx", "invited"),  # pjsua building and sending the INVITE
}


def stage_seconds(points: dict[str, float]) -> dict[str, float]:
    """Each stage whose two points are known, in seconds (never negative: clock reads on
    two processes may land within the same tick in either order)."""
    out: dict[str, float] = {}
    for name, (a, b) in STAGES.items():
        if a in points and b in points:
            out[name] = max(0.0, points[b] - points[a])
    return out


class DialStages:
    """Collects the points of calls waiting for their first INVITE. ``observe(stage,
    seconds)`` receives every stage of a finished dial (the metrics histogram)."""

    def __init__(
        self,
        observe: Callable[[str, float], None] | None = None,
        max_calls: int = 10_000,
    ) -> None:
        self.observe = observe
        self.max_calls = max_calls
        self._calls: dict[str, dict[str, float]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def start(self, call_sid: str, received: float, stored: float) -> None:
        """A new call was stored (an idempotent repeat of a known call is ignored)."""
        if call_sid in self._calls:
            return
        self._calls[call_sid] = {"received": received, "stored": stored}
        while len(self._calls) > self.max_calls:  # forget the oldest (never dialled)
            self._calls.pop(next(iter(self._calls)))

    def mark(self, call_sid: str, point: str, t: float) -> None:
        """Record ``point`` of a measured call (first time only; unknown calls ignored)."""
        pts = self._calls.get(call_sid)
        if pts is not None:
            pts.setdefault(point, t)

    def forget(self, call_sid: str) -> None:
        self._calls.pop(call_sid, None)

    def finish(
        self, call_sid: str, worker_rx: float, invited: float, wall_offset_s: float = 0.0
    ) -> dict[str, float] | None:
        """The call's first INVITE went out: its stages in seconds (None when the call
        was not measured, e.g. an agent leg or a retry). ``wall_offset_s``: wall clock
        minus monotonic clock, for the debug line's wall times (received, invited), which
        a client can set beside its own send time and the carrier's receive time."""
        pts = self._calls.pop(call_sid, None)
        if pts is None or "sent" not in pts:
            return None
        pts["worker_rx"], pts["invited"] = worker_rx, invited
        stages = stage_seconds(pts)
        if self.observe is not None:
            for name, s in stages.items():
                self.observe(name, s)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s: dial stages %s received_at=%.6f invited_at=%.6f",
                call_sid,
                " ".join(f"{k}={1000 * v:.2f}ms" for k, v in stages.items()),
                pts["received"] + wall_offset_s,
                invited + wall_offset_s,
                extra={"call_sid": call_sid},
            )
        return stages


__all__ = ["POINTS", "STAGES", "DialStages", "stage_seconds"]
