"""Prometheus metrics, fed by the call service's event listeners and an HTTP middleware.

Each app gets its own :class:`CollectorRegistry` (never the process-global one), so tests
can build several apps in one process. ``GET /metrics`` renders it in the text format.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sipbridge.bodylimit import ASGIApp, Message, Receive, Scope, Send
from sipbridge.disposition import DISPOSITIONS
from sipbridge.hints import call_hint, hint_label
from sipbridge.records import TERMINAL, CallEvent, CallRecord, LegRecord

log = logging.getLogger("sipbridge.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Post-dial delay: INVITE sent -> first 180/183. Carriers range from 0.1 s to tens of s.
PDD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0, 30.0, 60.0)
# Detection: decided at, in seconds from answer (or from the start of early media).
DETECTION_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 20.0, 30.0)
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DIAL_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class Gauges(Protocol):
    """Live values read at scrape time (the call service and pool provide them)."""

    def active_calls(self) -> dict[str, int]: ...
    def queued_calls(self) -> int: ...
    def pool_slots(self) -> tuple[int, int]: ...


class _LiveCollector(Collector):
    def __init__(self, gauges: Gauges) -> None:
        self.gauges = gauges

    def collect(self) -> Iterable[Metric]:
        active = GaugeMetricFamily(
            "sipbridge_active_calls", "Carrier legs in progress, by trunk", labels=["trunk"]
        )
        try:
            for trunk, n in sorted(self.gauges.active_calls().items()):
                active.add_metric([trunk], n)
        except Exception:
            log.exception("cannot read active calls")
        yield active
        queued = GaugeMetricFamily(
            "sipbridge_queued_calls", "Calls waiting in the scheduler queue (status queued)"
        )
        try:
            queued.add_metric([], self.gauges.queued_calls())
        except Exception:
            log.exception("cannot read the queue depth")
        yield queued
        capacity, free = self.gauges.pool_slots()
        yield GaugeMetricFamily(
            "sipbridge_sip_slots", "Call-leg slots of the SIP worker pool", value=capacity
        )
        yield GaugeMetricFamily(
            "sipbridge_sip_free_slots", "Call-leg slots free on running SIP workers", value=free
        )
        up = GaugeMetricFamily(
            "sipbridge_trunk_up",
            "1 if the trunk is up (OPTIONS health checks), else 0",
            labels=["trunk"],
        )
        trunks_up = getattr(self.gauges, "trunks_up", None)
        if trunks_up is not None:
            try:
                for trunk, ok in sorted(trunks_up().items()):
                    up.add_metric([trunk], 1 if ok else 0)
            except Exception:
                log.exception("cannot read trunk health")
        yield up
        yield from _throttle_metrics(self.gauges)


def _throttle_metrics(gauges: Gauges) -> Iterable[Metric]:
    """Carrier pushback per trunk (README "Carrier profiles", throttling): how often the
    trunk said "too fast", and the dial rate the bridge allows it now."""
    pushed = CounterMetricFamily(
        "sipbridge_trunk_throttled",
        "Carrier pushbacks (503/403 naming CPS or rate, or Retry-After) per trunk",
        labels=["trunk"],
    )
    rate = GaugeMetricFamily(
        "sipbridge_trunk_dial_rate_cps",
        "Calls per second the bridge allows the trunk now (its cps, cut while throttled)",
        labels=["trunk"],
    )
    read = getattr(gauges, "trunk_throttles", None)
    if read is not None:
        try:
            for trunk, (count, cps) in sorted(read().items()):
                pushed.add_metric([trunk], count)
                if cps is not None:
                    rate.add_metric([trunk], cps)
        except Exception:
            log.exception("cannot read trunk throttling")
    yield pushed
    yield rate


class Metrics:
    """The metric families; :meth:`on_event` is a ``CallService.listeners`` callback."""

    def __init__(self, gauges: Gauges | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls = Counter(
            "sipbridge_calls",
            "Calls that reached a terminal status",
            ["status", "reason", "answered_by", "hint"],
            registry=r,
        )
        self.dials = Counter(
            "sipbridge_dials",
            "INVITEs sent to carriers (attempts and failover hops)",
            ["trunk"],
            registry=r,
        )
        self.pdd = Histogram(
            "sipbridge_post_dial_delay_seconds",
            "INVITE sent to first 180/183 from the carrier",
            ["trunk"],
            buckets=PDD_BUCKETS,
            registry=r,
        )
        self.detection = Histogram(
            "sipbridge_detection_latency_seconds",
            "When recipient detection decided, from answer (phase=answer) or from the start "
            "of early media (phase=early)",
            ["phase", "answered_by", "hint"],
            buckets=DETECTION_BUCKETS,
            registry=r,
        )
        self.sip_responses = Counter(
            "sipbridge_sip_responses",
            "SIP responses from carriers, by trunk and code",
            ["trunk", "code"],
            registry=r,
        )
        self.failovers = Counter(
            "sipbridge_failovers",
            "Hops to the next trunk of a hunt list",
            ["from_trunk"],
            registry=r,
        )
        self.api_requests = Counter(
            "sipbridge_api_requests",
            "HTTP API requests by route template, method and code",
            ["route", "method", "code"],
            registry=r,
        )
        self.api_latency = Histogram(
            "sipbridge_api_request_duration_seconds",
            "HTTP API request handling time",
            ["route", "method"],
            buckets=API_BUCKETS,
            registry=r,
        )
        self.dial_stages = Histogram(
            "sipbridge_dial_stage_seconds",
            "A call's first dial, trigger to INVITE sent, by stage (api: validate and "
            "store; queue: wait for the scheduler; place: limits and the Dial command; "
            "worker_wait: the SIP worker taking it; invite: pjsua sending the INVITE)",
            ["stage"],
            buckets=DIAL_STAGE_BUCKETS,
            registry=r,
        )
        self.webhooks = Counter(
            "sipbridge_webhook_deliveries",
            "Status callback POSTs by result (delivered, retried, failed, dropped)",
            ["result"],
            registry=r,
        )
        self.cdrs = Counter("sipbridge_cdrs_written", "Call detail records written", registry=r)
        self.dispositions = Counter(
            "sipbridge_agent_dispositions",
            "Dispositions in agents' BYEs, by value (invalid: refused) and source",
            ["disposition", "source"],
            registry=r,
        )
        if gauges is not None:
            r.register(_LiveCollector(gauges))

    # ---- call events -------------------------------------------------------------------

    def on_event(self, rec: CallRecord, ev: CallEvent) -> None:
        try:
            self._on_event(rec, ev)
        except Exception:  # metrics never break call handling
            log.exception("metrics listener failed on %s", ev.kind)

    def _on_event(self, rec: CallRecord, ev: CallEvent) -> None:
        d = ev.data
        if ev.kind == "status":
            if d.get("to") in TERMINAL:
                self.calls.labels(
                    status=d["to"],
                    reason=d.get("reason") or "",
                    answered_by=rec.answered_by or "",
                    hint=hint_label(call_hint(rec)),
                ).inc()
            elif d.get("to") == "calling":  # an attempt's first INVITE
                self.dials.labels(trunk=rec.trunk or "").inc()
            return
        if ev.kind == "dial":  # a failover hop's INVITE
            self.dials.labels(trunk=str(d.get("trunk") or "")).inc()
            return
        if ev.kind.startswith("carrier."):
            leg = rec.leg(str(d.get("leg"))) or LegRecord()
            trunk = str(leg.trunk or rec.trunk or "")
            state = ev.kind.removeprefix("carrier.")
            code = d.get("sip_status")
            # an answered leg's end repeats the 200 already counted
            if code and (
                state in ("ringing", "early", "answered")
                or (state == "ended" and leg.answered_at is None)
            ):
                self.sip_responses.labels(trunk=trunk, code=str(code)).inc()
            if state in ("ringing", "early") and leg.ring_at is None and leg.invite_at is not None:
                self.pdd.labels(trunk=trunk).observe(max(0.0, ev.ts - float(leg.invite_at)))
            return
        if ev.kind == "agent.disposition":
            value = str(d.get("value"))
            self.dispositions.labels(
                disposition=value if value in DISPOSITIONS else "invalid",
                source=str(d.get("source")) if d.get("source") in ("header", "reason") else "",
            ).inc()
            return
        if ev.kind == "failover":
            self.failovers.labels(from_trunk=str(d.get("from_trunk") or "")).inc()
            return
        if (
            ev.kind == "detection"
            and d.get("decided_at_ms") is not None
            and d.get("kind") == "decision"
        ):
            self.detection.labels(
                phase=str(d.get("phase") or ""),
                answered_by=str(d.get("answered_by") or ""),
                hint=hint_label(d.get("hint")),
            ).observe(float(d["decided_at_ms"]) / 1000.0)

    # ---- HTTP --------------------------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_request(self, scope: Scope, code: int, seconds: float) -> None:
        """Count one request by route template (``/v1/outbound-calling/{call_sid}/status``),
        never by raw path, so call IDs do not become label values."""
        route = scope.get("route")
        path: Any = getattr(route, "path", None) if route is not None else None
        template = str(path) if path else "unmatched"
        method = str(scope.get("method", ""))
        self.api_requests.labels(route=template, method=method, code=str(code)).inc()
        self.api_latency.labels(route=template, method=method).observe(seconds)


class RequestMetrics:
    """Plain ASGI middleware feeding :meth:`Metrics.observe_request`. Not Starlette's
    ``BaseHTTPMiddleware``: that one runs every request's app in a task group of its own
    with memory streams between them, which on a busy node is supervisor CPU on every
    trigger for nothing (the status code is all this needs, read off ``send``)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        code = 500  # an exception before the response started is a 500 to the client

        async def counted(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            self.metrics.observe_request(scope, code, time.perf_counter() - start)


__all__ = ["CONTENT_TYPE", "Gauges", "Metrics", "RequestMetrics"]
