"""Admission control's sampling, on the supervisor's event loop: machine CPU from
/proc/stat and the loop's own lag, fed to the pure decision in :mod:`sipbridge.admission`.

Why these signals (all cheap: one small file read and one timer per sample):

* **Machine CPU busy** (/proc/stat, every process counted): the leading signal. A
  neighbour burning CPU or our own workers analysing too many calls both leave the
  20 ms media ticks and the API without headroom before anything is measurably late.
* **Event-loop lag** (how late the sampling timer fires): the supervisor serves the API
  and starts every dial, so its lag is directly the latency a client and the carrier see;
  it also catches CPU quotas (containers) that /proc/stat cannot show.
* **Calls in progress** vs ``max_analysed_calls``: the node's rated capacity, exact.
* **Headroom** (``learn_capacity``): calls in progress vs how many fit under
  ``max_cpu_busy`` at what one call has cost here (:class:`sipbridge.admission.CallCost`):
  a capacity learned on the machine the node runs on, checked at every trigger.

Worker-side frame lateness is not sampled: it would need a new report from every SIP
worker, and the machine CPU signal trips before frames are late (README "Admission
control", bench/load --phases mixed).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sipbridge.admission import (
    HEADROOM,
    OK,
    SIGNALS,
    CallCost,
    Headroom,
    Pressure,
    Sample,
    Thresholds,
    Verdict,
    decide,
)
from sipbridge.admissionconfig import AdmissionConfig

log = logging.getLogger("sipbridge.admission")

PROC_STAT = Path("/proc/stat")
# Sampling starts this long after the node starts: until then CPU and loop lag measure the
# node's own start-up (forking the SIP workers, loading prompts), not its load.
WARMUP_S = 5.0
# Headroom uses the machine's busy share averaged over samples (weight of the newest):
# 0.3 at 0.5 s samples follows a change within ~2 s and ignores one sample's spike.
_BUSY_WEIGHT = 0.3


def cpu_times(text: str) -> tuple[int, int] | None:
    """(busy, total) clock ticks of the machine from /proc/stat's aggregate ``cpu`` line;
    idle and iowait are not busy. None when the line is missing or malformed."""
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] != "cpu":
            continue
        try:
            ticks = [int(x) for x in parts[1:9]]  # user nice system idle iowait irq softirq steal
        except ValueError:
            return None
        if len(ticks) < 5 or any(t < 0 for t in ticks):
            return None
        total = sum(ticks)
        return total - ticks[3] - ticks[4], total
    return None


class CpuMeter:
    """Machine-wide busy share between two reads of /proc/stat."""

    def __init__(self, path: Path = PROC_STAT) -> None:
        self.path = path
        self._last: tuple[int, int] | None = None

    def read(self) -> float | None:
        try:
            now = cpu_times(self.path.read_text())
        except OSError:
            now = None
        last, self._last = self._last, now
        if now is None or last is None or now[1] <= last[1]:
            return None
        return min(1.0, max(0.0, (now[0] - last[0]) / (now[1] - last[1])))


def thresholds(cfg: AdmissionConfig) -> Thresholds:
    return Thresholds(
        max_cpu_busy=cfg.max_cpu_busy,
        resume_cpu_busy=cfg.resume_cpu_busy,
        max_loop_lag_ms=cfg.max_loop_lag_ms,
        resume_loop_lag_ms=cfg.resume_loop_lag_ms,
        max_analysed_calls=cfg.max_analysed_calls,
        enter_after_s=cfg.enter_after_s,
        resume_after_s=cfg.resume_after_s,
    )


class AdmissionControl:
    """Samples the signals every ``sample_interval_s`` and answers "may the node take new
    work?" for the trigger handler, ``/readyz`` and the scheduler. ``live_calls`` counts
    carrier legs in progress; ``on_resume`` runs when the node accepts work again (the
    scheduler's wake-up, so queued calls are dialled at once)."""

    def __init__(
        self,
        cfg: AdmissionConfig,
        live_calls: Callable[[], int],
        on_resume: Callable[[], None],
        cpu: CpuMeter | None = None,
    ) -> None:
        self.cfg = cfg
        self.th = thresholds(cfg)
        self.live_calls = live_calls
        self.on_resume = on_resume
        self.cpu = cpu or CpuMeter()
        self.pressure = Pressure(self.th)
        self.last = Sample(None, 0.0)
        self.cores = os.cpu_count() or 1  # /proc/stat's busy share is over all of them
        self.cost = CallCost()
        self.room: Headroom | None = None
        self._busy_avg: float | None = None
        self.refused = Counter(
            "sipbridge_admission_refused_total",
            "Triggers refused with 503 by admission control, by the signal that refused",
            ["reason"],
            registry=None,
        )
        for sig in SIGNALS:
            self.refused.labels(reason=sig)
        self._task: asyncio.Task[None] | None = None

    # ---- what the node asks ----------------------------------------------------------

    def verdict(self) -> Verdict:
        if not self.cfg.enabled:
            return OK
        counted = self.th.max_analysed_calls is not None or self.room is not None
        return decide(
            self.th, self.pressure.verdict, self.live_calls() if counted else 0, self.room
        )

    def overloaded(self) -> bool:
        """The scheduler's gate: True = start no new call now."""
        return self.verdict().overloaded

    def refuse(self) -> tuple[str, int] | None:
        """For a trigger: (reason, Retry-After s) when refused (and counted), else None."""
        v = self.verdict()
        if v.ok:
            return None
        self.refused.labels(reason=v.signal).inc()
        return v.reason, self.cfg.retry_after_s

    # ---- sampling --------------------------------------------------------------------

    async def start(self) -> None:
        if self.cfg.enabled and (self.th.max_cpu_busy or self.th.max_loop_lag_ms):
            self._task = asyncio.create_task(self._run(), name="admission-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def observe(self, now_s: float, sample: Sample) -> Verdict:
        """Feed one sample (the sampler's loop, or a test); logs and wakes on changes."""
        before = self.pressure.verdict
        was_full = self.verdict().signal == HEADROOM
        self.last = sample
        self._learn(now_s, sample)
        if was_full and not self.verdict().overloaded:
            self.on_resume()  # room again without a call ending: dial what is queued
        after = self.pressure.observe(now_s, sample)
        if after != before:
            if after.overloaded:
                log.warning("admission: refusing new calls: %s", after.reason)
            else:
                log.info("admission: load is back under the resume thresholds; accepting calls")
                self.on_resume()
        return after

    def _learn(self, now_s: float, sample: Sample) -> None:
        """Headroom: what a call costs here and how many more fit (learn_capacity)."""
        max_busy = self.th.max_cpu_busy
        if not self.cfg.learn_capacity or max_busy is None or sample.cpu_busy is None:
            return
        avg = self._busy_avg
        avg = sample.cpu_busy if avg is None else avg + _BUSY_WEIGHT * (sample.cpu_busy - avg)
        self._busy_avg = avg
        self.room = room = self.cost.observe(now_s, avg, self.cores, self.live_calls(), max_busy)
        if room is not None:
            log.debug(
                "admission: headroom: %d calls (%d pending), cpu %.0f %%, %.2f %% of a core "
                "each, room for %d",
                room.calls,
                room.pending,
                room.busy * 100,
                room.cores_per_call * 100,
                room.limit,
            )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.cfg.sample_interval_s
        self.cpu.read()  # the first read only sets the baseline
        warm_at = loop.time() + WARMUP_S
        while True:
            due = loop.time() + interval
            await asyncio.sleep(interval)
            now = loop.time()
            try:
                sample = Sample(self.cpu.read(), max(0.0, now - due) * 1000.0)
                if now >= warm_at:
                    self.observe(now, sample)
                else:
                    # start-up CPU is no pressure, but calls taken meanwhile (a campaign
                    # waiting for the node) are already learned from: headroom only
                    self._learn(now, sample)
            except Exception:  # never let the sampler die: the node would stay as it is
                log.exception("admission sampler failed")

    # ---- metrics ---------------------------------------------------------------------

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self.refused)
        registry.register(_Gauges(self))


class _Gauges(Collector):
    def __init__(self, ac: AdmissionControl) -> None:
        self.ac = ac

    def collect(self) -> Iterable[Metric]:
        v = self.ac.verdict()
        yield GaugeMetricFamily(
            "sipbridge_node_overloaded",
            "1 while admission control refuses new calls (README 'Admission control')",
            value=1 if v.overloaded else 0,
        )
        if self.ac.last.cpu_busy is not None:
            yield GaugeMetricFamily(
                "sipbridge_node_cpu_busy_ratio",
                "Machine-wide CPU busy share over the last admission sample (0-1)",
                value=self.ac.last.cpu_busy,
            )
        room = self.ac.room
        if room is not None:
            yield GaugeMetricFamily(
                "sipbridge_node_call_cost_cores",
                "CPU one call in progress has cost on this node (cores, learned: "
                "admission.learn_capacity)",
                value=room.cores_per_call,
            )
            yield GaugeMetricFamily(
                "sipbridge_node_call_room",
                "Calls in progress that fit under admission.max_cpu_busy at the last sample",
                value=room.limit,
            )
        yield GaugeMetricFamily(
            "sipbridge_event_loop_lag_seconds",
            "How late the supervisor's event loop ran the last admission sample",
            value=self.ac.last.loop_lag_ms / 1000.0,
        )


__all__ = ["AdmissionControl", "CpuMeter", "cpu_times", "thresholds"]
