"""Operations around the call service: metrics, status callbacks, CDRs, readiness and
draining. Everything listens to ``CallService.listeners``; nothing here changes call state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from sipbridge.calls import CallService
from sipbridge.cdr import CdrWriter
from sipbridge.loadwatch import AdmissionControl
from sipbridge.metrics import CONTENT_TYPE, Metrics, RequestMetrics
from sipbridge.records import CallRecord
from sipbridge.webhooks import WebhookDispatcher

log = logging.getLogger("sipbridge.ops")


class _ServiceGauges:
    def __init__(self, service: CallService) -> None:
        self.service = service

    def active_calls(self) -> dict[str, int]:
        lim = self.service.limiter
        return {t.name: lim.active(t.name) for t in self.service.cfg.trunks}

    def queued_calls(self) -> int:
        return len(self.service.store.by_status("queued"))

    def pool_slots(self) -> tuple[int, int]:
        pool = self.service.pool
        return pool.capacity(), pool.free_slots()

    def trunks_up(self) -> dict[str, bool]:
        return self.service.prober.states()

    def trunk_throttles(self) -> dict[str, tuple[int, float | None]]:
        """Trunk -> (carrier pushbacks so far, dial rate allowed now in calls/s; None for
        a trunk without ``cps``)."""
        d = self.service.dispatcher
        now = self.service.clock()
        return {
            t.name: (
                d.pushbacks.get(t.name, 0),
                d.throttles[t.name].current(now) if t.name in d.throttles else t.cps,
            )
            for t in self.service.cfg.trunks
        }


class Operations:
    """Built once per app by :func:`sipbridge.api.create_app`."""

    def __init__(
        self, service: CallService, render: Callable[[CallRecord], dict[str, Any]]
    ) -> None:
        self.service = service
        self.metrics = Metrics(_ServiceGauges(service))
        service.dispatcher.stages.observe = lambda stage, s: self.metrics.dial_stages.labels(
            stage=stage
        ).observe(s)
        self.webhooks = WebhookDispatcher(
            service.cfg.webhooks,
            render,
            on_result=lambda r: self.metrics.webhooks.labels(result=r).inc(),
            store=service.store,
        )
        service.journal.outbox.append(self.webhooks.outbox_for)
        self.cdrs = CdrWriter(service.store, on_written=self.metrics.cdrs.inc)
        service.listeners.extend(
            [self.cdrs.on_event, self.metrics.on_event, self.webhooks.on_event]
        )
        self.draining = False
        redis = service.cluster_api_limiter
        if redis is not None:
            self.metrics.registry.register(redis.limits.collector())
        # Admission control: refuse triggers, fail /readyz and stop dialling the queue
        # while the node is overloaded or full (README "Admission control").
        self.admission = AdmissionControl(
            service.cfg.admission, service.registry.carrier_legs_up, service.dispatcher.wake
        )
        service.dispatcher.paused = self.admission.overloaded
        self.admission.register(self.metrics.registry)

    # ---- lifecycle (the app's lifespan) ----------------------------------------------

    async def start(self) -> None:
        await self.webhooks.start()
        await self.admission.start()

    async def stop(self) -> None:
        await self.admission.stop()
        await self.webhooks.stop()

    def refusal(self) -> tuple[str, int] | None:
        """Why a trigger gets 503 now, with its Retry-After (s); None: accepted."""
        if self.draining:
            return "shutting down: not taking new calls", 30
        return self.admission.refuse()

    async def drain(self, grace_s: float) -> None:
        """SIGTERM: refuse new triggers (503), stop dialling queued calls, wait up to
        ``grace_s`` for live calls to end. The app's shutdown then hangs up the rest."""
        if self.draining:
            return
        self.draining = True
        log.info("draining: no new calls; waiting up to %.0f s for live calls", grace_s)
        left = await self.service.drain(grace_s)
        if left:
            log.warning("drain: grace time over with %d live call(s): hanging up", left)
        else:
            log.info("drain: no live calls left")

    # ---- readiness -------------------------------------------------------------------

    def readiness(self) -> dict[str, str]:
        """Component -> "ok" or what is wrong."""
        checks: dict[str, str] = {}
        try:
            ready = self.service.pool.ready_workers()
            checks["sip_pool"] = "ok" if ready > 0 else "no SIP worker is ready"
        except Exception as e:
            checks["sip_pool"] = f"error: {e}"
        try:
            checks["store"] = "ok" if self.service.store.ping() else "store does not answer"
        except Exception as e:
            checks["store"] = f"error: {e}"
        if self.service.cluster_api_limiter is not None:  # fail closed: no dialling
            checks["redis"] = self.service.cluster_api_limiter.limits.error or "ok"
        if self.draining:
            checks["api"] = "draining: shutting down"
        load = self.admission.verdict()
        if load.overloaded:
            checks["load"] = load.reason
        if self.service.node is not None:
            checks["cluster"] = self.service.node.readiness()
        states = self.service.prober.states()
        if states and not any(states.values()):
            checks["trunks"] = "every trunk is down (OPTIONS health checks)"
        return checks

    def trunk_detail(self) -> dict[str, str]:
        """Trunk -> "up" or "down: <last OPTIONS result>" (README "Carrier profiles")."""
        prober = self.service.prober
        out: dict[str, str] = {}
        for name, up in prober.states().items():
            last = prober.last_status.get(name, "no check yet")
            out[name] = "up" if up else f"down: OPTIONS {last or 'not answered'}"
        return out

    def install(self, app: FastAPI) -> None:
        """Add the metrics middleware and the unauthenticated /metrics and /readyz."""
        app.add_middleware(RequestMetrics, metrics=self.metrics)

        @app.get(
            "/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}}
        )
        async def metrics() -> Response:
            """Prometheus text format (no auth: keep it on the operators' network)."""
            body = await asyncio.get_running_loop().run_in_executor(None, self.metrics.render)
            return Response(body, media_type=CONTENT_TYPE)

        @app.get("/readyz", responses={503: {"description": "not ready: names what is down"}})
        async def readyz() -> JSONResponse:
            """200 when a SIP worker is ready and the store answers; else 503 naming what
            is down (also 503 while draining, and while overloaded: ``load``)."""
            checks = self.readiness()
            trunks = self.trunk_detail()
            node = self.service.node
            extra = {"cluster": node.describe()} if node is not None else {}
            down = {k: v for k, v in checks.items() if v != "ok"}
            if down:
                return JSONResponse(
                    status_code=503,
                    content={
                        "status": "unavailable",
                        "down": sorted(down),
                        "error": "; ".join(f"{k}: {v}" for k, v in sorted(down.items())),
                        "checks": checks,
                        "trunks": trunks,
                        **extra,
                    },
                )
            return JSONResponse({"status": "ok", "checks": checks, "trunks": trunks, **extra})


__all__ = ["Operations"]
