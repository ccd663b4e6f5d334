"""Admission control settings (``admission:`` in the config): when the node refuses new
calls (503 + Retry-After on trigger, ``/readyz`` 503, no new dials from the queue) because
it is overloaded or full. The decision is :mod:`sipbridge.admission`; the sampling
:mod:`sipbridge.loadwatch`. README "Admission control" explains both to users.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from sipbridge.callsettings import StrictModel


class AdmissionConfig(StrictModel):
    enabled: bool = True
    # Machine-wide CPU busy share (0-1, from /proc/stat: every process counts, a noisy
    # neighbour included) above which the node is overloaded once it lasts enter_after_s.
    # 0.9: 200 analysed calls take ~82 % of 2 cores (bench/load conc phase), so a node
    # alone stays under it at its rated load; past 90 % what suffers first is the timing
    # of the workers' 20 ms media ticks and the supervisor's latency. null: not used.
    max_cpu_busy: Annotated[float, Field(gt=0, le=1)] | None = 0.9
    # Overloaded ends only once CPU is under this (hysteresis band 0.8-0.9: a node near
    # the threshold does not flap between refusing and accepting).
    resume_cpu_busy: Annotated[float, Field(ge=0, lt=1)] = 0.8
    # How late the supervisor's event loop runs a timer (ms). It serves the API and
    # starts every dial, so a late loop is a late INVITE: 50 ms sustained means a
    # trigger-to-INVITE p99 well past 50 ms. null: not used.
    max_loop_lag_ms: Annotated[float, Field(gt=0, le=60_000)] | None = 50.0
    resume_loop_lag_ms: Annotated[float, Field(ge=0, le=60_000)] = 20.0
    # Carrier legs in progress (ringing or answered: both are analysed in the workers)
    # this node takes at most; at the cap a trigger gets 503 at once and resumes as soon
    # as a call ends. null (default): only the SIP pool's capacity. Rate it from
    # bench/load (e.g. 150 on 2 cores, where 200 analysed calls take ~82 % CPU).
    max_analysed_calls: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    # Learn what one call in progress costs in CPU on this machine (busy cores / calls,
    # from samples with 8 calls or more) and refuse a trigger once the calls in progress
    # reach what fits under max_cpu_busy (README "Admission control"): the CPU signal
    # alone trips enter_after_s late, and calls admitted meanwhile cost CPU only once
    # answered, so a node filling up fast overshoots its cores. Needs max_cpu_busy.
    learn_capacity: bool = True
    # A signal must stay over its threshold this long before the node refuses work
    # (one GC pause or a scrape burst does not trip it), and every signal must stay under
    # its resume threshold resume_after_s before it accepts work again.
    enter_after_s: Annotated[float, Field(ge=0, le=600)] = 2.0
    resume_after_s: Annotated[float, Field(ge=0, le=3600)] = 5.0
    # How often CPU and loop lag are sampled: 0.5 s reads /proc/stat twice a second
    # (~20 µs each) and resolves CPU to 1 % on 2 cores (100 clock ticks per core-second).
    sample_interval_s: Annotated[float, Field(ge=0.05, le=10)] = 0.5
    # Retry-After (s) on a refused trigger: about resume_after_s, when the earliest
    # resumption can come.
    retry_after_s: Annotated[int, Field(ge=1, le=3600)] = 5
    # The node's nice value (-20..19), set by the supervisor before it starts the SIP
    # workers, which inherit it (sipbridge/priority.py). -5: a neighbour at the default
    # priority (0) gets the smaller share of a contended core, so live calls' media ticks
    # stay on time while admission refuses new work; not so low that the node starves
    # the kernel's and the carrier-facing proxies' own threads. Needs CAP_SYS_NICE below 0;
    # without it a warning is logged and the node runs at its current priority. null:
    # leave the priority alone. Applies with enabled: false too.
    process_nice: Annotated[int, Field(ge=-20, le=19)] | None = -5
    # The supervisor's own nice value, set once its SIP workers' fork server runs (the
    # workers keep process_nice). The supervisor uses ~10 % of a core, but every trigger
    # and dial waits for it, and at the workers' value it is one of ~80 equal processes
    # under load: in bench/load --mixed (150 analysed calls, 20 CPS) it waited up to
    # 620 ms runnable and not run (its schedstat run-queue wait), at -15 at most ~150 ms.
    # -20 cut that further but made a few agent RTP streams late (gaps over 60 ms) beside
    # a CPU burner; so 10 below the workers. null: the same as the workers. When
    # process_nice is null and this key is not given, it is null too (no change at all).
    supervisor_nice: Annotated[int, Field(ge=-20, le=19)] | None = -15

    @model_validator(mode="before")
    @classmethod
    def _no_priority_change(cls, data: Any) -> Any:
        # process_nice: null ("leave the priority alone") leaves the supervisor's too,
        # unless supervisor_nice is given
        if isinstance(data, dict) and "process_nice" in data and data["process_nice"] is None:
            data = {"supervisor_nice": None, **data}
        return data

    @model_validator(mode="after")
    def _bands(self) -> AdmissionConfig:
        if self.max_cpu_busy is not None and self.resume_cpu_busy >= self.max_cpu_busy:
            raise ValueError(
                f"resume_cpu_busy ({self.resume_cpu_busy:g}) must be below max_cpu_busy "
                f"({self.max_cpu_busy:g}): the node resumes under the band it refuses above"
            )
        if self.max_loop_lag_ms is not None and self.resume_loop_lag_ms >= self.max_loop_lag_ms:
            raise ValueError(
                f"resume_loop_lag_ms ({self.resume_loop_lag_ms:g}) must be below "
                f"max_loop_lag_ms ({self.max_loop_lag_ms:g})"
            )
        if self.enter_after_s and self.enter_after_s < self.sample_interval_s:
            raise ValueError(
                f"enter_after_s ({self.enter_after_s:g}) is shorter than sample_interval_s "
                f"({self.sample_interval_s:g}): it cannot be measured"
            )
        return self


__all__ = ["AdmissionConfig"]
