"""Admission control's decision: signals in, verdict and reason out (pure: no I/O, no
asyncio, no clock of its own; :mod:`sipbridge.loadwatch` samples and calls it).

Two kinds of limit:

* **Pressure** (machine CPU busy, supervisor event-loop lag): noisy measurements, so
  with hysteresis. The node becomes overloaded when one signal stays at or over its
  ``max`` for ``enter_after_s``; it recovers when every signal stays under its
  ``resume`` threshold (below ``max``) for ``resume_after_s``. A signal between the two
  thresholds changes nothing: no flapping around one threshold.
* **Capacity** (carrier legs in progress vs ``max_analysed_calls``): an exact count, so
  no hysteresis: full while at the cap, open again as soon as a call ends.
* **Headroom** (``learn_capacity``): the CPU signal trips only after a load has lasted
  ``enter_after_s``, and the calls admitted meanwhile cost CPU only seconds later, once
  they are answered and analysed: a node filling up quickly takes on more calls than its
  cores can run before it notices (on a 2-core VM whose calls cost twice the rated
  figure, 138 analysed calls were let in and 125 of 126 RTP streams ran late). So the
  node learns what one call in progress costs (:class:`CallCost`: busy cores per call,
  averaged over samples taken with enough calls up, so the rest of the machine weighs
  little) and, at each sample, how many more fit under ``max_cpu_busy``
  (:class:`Headroom`); a trigger past that count is refused at once, like the cap. The
  estimate counts a neighbour's CPU as the node's, which only makes it cautious; calls
  admitted in the last few seconds count at that cost before the CPU shows them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CPU = "cpu"
LOOP_LAG = "loop_lag"
CALLS = "calls"
HEADROOM = "headroom"
SIGNALS = (CPU, LOOP_LAG, CALLS, HEADROOM)  # the metric's ``reason`` label values


@dataclass(frozen=True)
class Thresholds:
    """Limits (None: that signal is not used); see sipbridge.admissionconfig."""

    max_cpu_busy: float | None = 0.9
    resume_cpu_busy: float = 0.8
    max_loop_lag_ms: float | None = 50.0
    resume_loop_lag_ms: float = 20.0
    max_analysed_calls: int | None = None
    enter_after_s: float = 2.0
    resume_after_s: float = 5.0


@dataclass(frozen=True)
class Sample:
    """One sample of the pressure signals. ``cpu_busy``: machine-wide busy share (0-1)
    since the previous sample, None when it cannot be read; ``loop_lag_ms``: how late the
    supervisor's loop ran the sampling timer."""

    cpu_busy: float | None
    loop_lag_ms: float


@dataclass(frozen=True)
class Verdict:
    overloaded: bool
    signal: str = ""  # CPU, LOOP_LAG or CALLS when overloaded
    reason: str = ""  # for the 503 body, /readyz and the log

    @property
    def ok(self) -> bool:
        return not self.overloaded


OK = Verdict(False)


def _hot(th: Thresholds, s: Sample) -> dict[str, float]:
    """Signals at or over their ``max`` -> their value."""
    out: dict[str, float] = {}
    if th.max_cpu_busy is not None and s.cpu_busy is not None and s.cpu_busy >= th.max_cpu_busy:
        out[CPU] = s.cpu_busy
    if th.max_loop_lag_ms is not None and s.loop_lag_ms >= th.max_loop_lag_ms:
        out[LOOP_LAG] = s.loop_lag_ms
    return out


def _calm(th: Thresholds, s: Sample) -> bool:
    """Every used signal under its resume threshold (an unreadable CPU counts as calm)."""
    cpu_ok = th.max_cpu_busy is None or s.cpu_busy is None or s.cpu_busy < th.resume_cpu_busy
    lag_ok = th.max_loop_lag_ms is None or s.loop_lag_ms < th.resume_loop_lag_ms
    return cpu_ok and lag_ok


def _describe(th: Thresholds, signal: str, value: float, lasted_s: float) -> str:
    if signal == CPU:
        return (
            f"node overloaded: cpu {value * 100:.0f} % busy, over "
            f"{th.max_cpu_busy or 0:g} for {lasted_s:.1f} s"
        )
    return (
        f"node overloaded: event loop {value:.0f} ms late, over "
        f"{th.max_loop_lag_ms or 0:g} ms for {lasted_s:.1f} s"
    )


class Pressure:
    """The hysteresis state machine over pressure samples. ``observe`` takes samples in
    time order (``now_s`` from a monotonic clock) and returns the verdict after each."""

    def __init__(self, th: Thresholds) -> None:
        self.th = th
        self.verdict = OK
        self._hot_since: dict[str, float] = {}
        self._calm_since: float | None = None

    def observe(self, now_s: float, s: Sample) -> Verdict:
        hot = _hot(self.th, s)
        for sig in (CPU, LOOP_LAG):
            if sig in hot:
                self._hot_since.setdefault(sig, now_s)
            else:
                self._hot_since.pop(sig, None)
        if self.verdict.ok:
            for sig, value in hot.items():
                lasted = max(0.0, now_s - self._hot_since[sig])
                if lasted >= self.th.enter_after_s:
                    self.verdict = Verdict(True, sig, _describe(self.th, sig, value, lasted))
                    self._calm_since = None
                    break
            return self.verdict
        if not _calm(self.th, s):
            self._calm_since = None
            return self.verdict
        if self._calm_since is None:
            self._calm_since = now_s
        if now_s - self._calm_since >= self.th.resume_after_s:
            self.verdict = OK
            self._calm_since = None
        return self.verdict


def capacity(th: Thresholds, live_calls: int) -> Verdict:
    """Full at ``max_analysed_calls`` carrier legs in progress."""
    cap = th.max_analysed_calls
    if cap is None or live_calls < cap:
        return OK
    return Verdict(True, CALLS, f"node at capacity: analysed calls {live_calls}/{cap}")


# What a call is taken to cost at least (cores): 0.01 % of a core, so a nearly idle
# machine's reading cannot make the room unbounded.
_MIN_CALL_CORES = 1e-4


class CallCost:
    """What one call in progress costs in CPU on this node, and how many more fit.

    A call costs CPU only seconds after it is admitted (ringing, then answered, then
    analysed), and the busy share is an average that lags too. So each sample divides the
    busy cores by the calls that were already up ``settle_s`` ago, which are the ones
    costing now, and counts the calls admitted since as pending: projected to cost as much
    each. Only samples with at least ``min_calls`` such calls update the cost: with fewer,
    what the rest of the machine uses (the supervisor, the carrier-facing proxies) would
    read as the calls' own. An exponential average (``weight`` per sample) follows a
    change of call mix (detection running or done) within seconds. Calls that ended
    within ``settle_s`` make the cost read low by their share, so a node with many short
    calls is let a little closer to ``max_cpu_busy``."""

    def __init__(self, settle_s: float = 3.0, min_calls: int = 8, weight: float = 0.2) -> None:
        self.settle_s = settle_s
        self.min_calls = min_calls
        self.weight = weight
        self.cores_per_call: float | None = None
        self._history: list[tuple[float, int]] = []  # (time, calls up), oldest first

    def _settled_calls(self, now_s: float) -> int | None:
        """Calls up ``settle_s`` ago (the newest sample at least that old)."""
        cutoff = now_s - self.settle_s
        older = [i for i, (t, _) in enumerate(self._history) if t <= cutoff]
        if not older:
            return None
        del self._history[: older[-1]]  # keep the newest one old enough, and what follows
        return self._history[0][1]

    def observe(
        self, now_s: float, busy: float, cores: int, calls: int, max_busy: float
    ) -> Headroom | None:
        """One sample (``busy``: the machine's busy share, 0-1): the room left, or None
        while the cost of a call is not known yet."""
        self._history.append((now_s, calls))
        settled = self._settled_calls(now_s)
        if settled is None:
            return None
        if settled >= self.min_calls and busy > 0:
            x = max(_MIN_CALL_CORES, busy * cores / settled)
            c = self.cores_per_call
            self.cores_per_call = x if c is None else c + self.weight * (x - c)
        cost = self.cores_per_call
        if cost is None or cost <= 0:
            return None
        pending = max(0, calls - settled)
        spare_cores = (max_busy - busy) * cores - pending * cost
        more = max(0, math.floor(spare_cores / cost + 1e-9))  # 0.2/0.2 is 1, not 0.999
        # Slow start: at most twice the settled calls (at least min_calls). Calls cost more
        # per head as a machine nears saturation (shared caches, the scheduler), which a
        # cost learned at half the load does not know; doubling per settle_s lets the CPU
        # show each step before the next (TCP's slow start, RFC 5681 3.1, for the same
        # reason: capacity unknown until probed).
        more = min(more, max(0, max(self.min_calls, 2 * settled) - calls))
        return Headroom(calls, more, busy, cost, pending)


@dataclass(frozen=True)
class Headroom:
    """At one sample: ``calls`` in progress, of which ``pending`` admitted too recently
    to show in the CPU yet, and ``more`` calls that fit under ``max_cpu_busy`` at
    ``cores_per_call`` each. A node is full once it runs ``calls + more`` calls, until
    the next sample says otherwise."""

    calls: int
    more: int
    busy: float
    cores_per_call: float
    pending: int = 0

    @property
    def limit(self) -> int:
        return self.calls + self.more


def room(room_left: Headroom | None, live_calls: int) -> Verdict:
    """Full once the calls in progress reach what the last sample said fits."""
    if room_left is None or live_calls < room_left.limit:
        return OK
    return Verdict(
        True,
        HEADROOM,
        f"node at capacity: cpu {room_left.busy * 100:.0f} % busy, room for "
        f"{room_left.limit} calls at {room_left.cores_per_call * 100:.1f} % of a core each "
        f"({live_calls} in progress)",
    )


def decide(
    th: Thresholds, pressure: Verdict, live_calls: int, room_left: Headroom | None = None
) -> Verdict:
    """The node's verdict: pressure first (it names the worse problem), then capacity,
    then headroom."""
    if pressure.overloaded:
        return pressure
    at_cap = capacity(th, live_calls)
    return at_cap if at_cap.overloaded else room(room_left, live_calls)


__all__ = ["CALLS", "CPU", "HEADROOM", "LOOP_LAG", "OK", "SIGNALS", "CallCost", "Headroom"]
__all__ += ["Pressure", "Sample", "Thresholds", "Verdict", "capacity", "decide", "room"]
