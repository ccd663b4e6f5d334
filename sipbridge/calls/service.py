"""The call manager's public face: the API triggers, looks up, hangs up and sends DTMF
through :class:`CallService`; the SIP engine reports into :meth:`CallService.on_sip_event`.
It wires the parts together and owns nothing else; all of it runs on the supervisor's
asyncio loop, the only thread that touches call state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from sipbridge.aio import cancel_all
from sipbridge.calls.actions import Actions
from sipbridge.calls.backlog import EventBacklog
from sipbridge.calls.context import CallContext
from sipbridge.calls.dispatch import Dispatcher
from sipbridge.calls.ending import Endings
from sipbridge.calls.engine import Pool
from sipbridge.calls.events import SipEvent, SipEvents
from sipbridge.calls.inbound import InboundCalls
from sipbridge.calls.journal import Journal, Listener
from sipbridge.calls.live import CallRegistry
from sipbridge.calls.policy import PolicyBook, resolve_policy
from sipbridge.calls.probe import TrunkProber
from sipbridge.calls.trigger import TriggerInput, Triggers
from sipbridge.cluster import redislimits
from sipbridge.cluster.bus import CommandBus, start_node_bus
from sipbridge.config import Config, check_dtmf
from sipbridge.errors import ApiError, CallNotFound, InvalidTransition
from sipbridge.ipc import LegEvent
from sipbridge.limits import RateLimiter, Slots
from sipbridge.priority import set_process_nice
from sipbridge.records import CallEvent, CallRecord
from sipbridge.store import CallStore

log = logging.getLogger("sipbridge.calls")


class NodeHooks(Protocol):
    """Cluster mode (sipbridge.cluster.node.ClusterNode): replaces start-up recovery, runs
    beside the service, and hands claimed calls back when the node drains. ``on_fatal``
    (set by the app): called once when the node must stop the process (NodeIdTaken)."""

    on_fatal: Callable[[], None] | None

    async def claim_identity(self) -> None: ...

    def recover(self) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def drain(self) -> None: ...

    def readiness(self) -> str: ...

    def describe(self) -> dict[str, Any]: ...


class CallService:
    """Owns every call's state machine; the only writer of call status (through its
    :class:`Journal`). Where the state lives:

    * ``store`` — the records (status, request, legs, attempt history) and events;
    * ``registry`` — the live calls (attempt, flow, timers, legs), see calls/live.py;
    * ``policies`` — each unfinished call's resolved policy;
    * ``dispatcher`` — limits, CPS buckets, trunk health and the failover queue.
    """

    def __init__(
        self,
        cfg: Config,
        store: CallStore,
        pool: Pool,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ):
        self.cfg = cfg
        self.store = store
        self.pool = pool
        self.clock = clock
        self.journal = Journal(store, clock)
        self.registry = CallRegistry()
        self.policies = PolicyBook(lambda to, req: resolve_policy(cfg, to, req))
        ctx = CallContext(
            cfg=cfg,
            pool=pool,
            journal=self.journal,
            registry=self.registry,
            policies=self.policies,
            clock=clock,
            rng=rng or random.Random(),
            bridge_host=cfg.sip.public_address or cfg.sip.listen_address,
        )
        self.endings = Endings(ctx, wake=lambda: self.dispatcher.wake())
        self.dispatcher = Dispatcher(ctx, on_error=self.endings.fail_call)
        # OPTIONS health checks: a trunk marked up again may take queued calls at once.
        self.prober = TrunkProber(
            ctx.cfg, self.dispatcher.health, on_change=lambda _trunk, _up: self.dispatcher.wake()
        )
        self.triggers = Triggers(ctx, on_queued=self.dispatcher.dial_new)
        self.inbound = InboundCalls(ctx, self.dispatcher, self.triggers.trigger)
        self.actions = Actions(ctx, self.endings, self.inbound)
        self.events = SipEvents(
            ctx,
            self.dispatcher,
            self.endings,
            self.actions,
            self.inbound,
            stopping=lambda: self._stopping,
        )
        self.backlog = EventBacklog(self.events.handle)
        self.journal.on_terminal.append(self._ended)
        self.journal.on_fenced.append(self._fenced)
        self.api_limiter = RateLimiter(cfg.limits.api_rate_per_s, cfg.limits.api_burst, clock)
        # cluster.redis: CPS, concurrency and the API rate shared by the nodes (fail closed)
        self.cluster_api_limiter = redislimits.install(cfg, self.dispatcher, self.api_limiter)
        # cluster.redis: hangup/DTMF for calls other nodes own go through bus.send(owner, ...)
        self.bus: CommandBus | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.node: NodeHooks | None = None  # set by sipbridge.cluster.node.attach

    @property
    def limiter(self) -> Slots:
        return self.dispatcher.limiter

    @property
    def listeners(self) -> list[Listener]:
        """Called with every (record, event) pair: CDRs, metrics, callbacks, tests."""
        return self.journal.listeners

    def _ended(self, call_sid: str) -> None:
        """A call reached a terminal status: its attempt and policy are over."""
        self.policies.forget(call_sid)
        self.dispatcher.stages.forget(call_sid)
        live = self.registry.get(call_sid)
        if live is not None:
            live.end_attempt()
            self.registry.settle(call_sid)

    def _fenced(self, call_sid: str) -> None:
        """Another node owns the call now (a write about it was fenced out): hang up what
        is still up of it here and end its attempt, so that the LiveCall goes once its legs
        have ended instead of holding a drain, and memory, for good."""
        self.policies.forget(call_sid)
        live = self.registry.get(call_sid)
        if live is None:
            return
        for leg_id in list(live.legs):
            with contextlib.suppress(Exception):
                self.pool.hangup(leg_id)
        live.end_attempt()
        self.registry.settle(call_sid)

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self.node is not None:
            await self.node.claim_identity()
            self.node.recover()
        else:
            self.endings.recover()
        await self.pool.start()
        # the workers' fork server runs: a supervisor_nice is the supervisor's own
        set_process_nice(self.cfg.admission.supervisor_nice, "admission.supervisor_nice")
        if self.node is not None:
            await self.node.start()
        self._tasks.append(
            asyncio.create_task(self.dispatcher.run(lambda: self._stopping), name="dispatcher")
        )
        self._tasks.append(asyncio.create_task(self._purger(), name="purger"))
        self._tasks.append(
            asyncio.create_task(self.prober.run(lambda: self._stopping), name="trunk-probe")
        )
        if self.cluster_api_limiter is not None:
            hb = self.cluster_api_limiter.limits.run(lambda: self._stopping)
            self._tasks.append(asyncio.create_task(hb, name="redis-heartbeat"))
            limits = self.cluster_api_limiter.limits
            self.bus = await start_node_bus(limits, self.hangup, self.send_dtmf)
        self.dispatcher.wake()

    async def stop(self) -> None:
        """Stop dialling, end live legs (the pool hangs them up), keep queued calls."""
        self._stopping = True
        await cancel_all(self._tasks)
        await self.pool.stop()
        if self.node is not None:
            await self.node.stop()
        if self.bus is not None:
            await self.bus.stop()
        if self.cluster_api_limiter is not None:
            await self.cluster_api_limiter.limits.close()

    async def drain(self, grace_s: float) -> int:
        """Stop dialling (queued calls stay queued) and wait up to ``grace_s`` for the
        live carrier legs to end; returns how many are left for ``stop()`` to hang up."""
        for t in self._tasks:  # no new dials; live calls keep their normal handling
            if t.get_name() == "dispatcher":
                t.cancel()
        if self.node is not None:  # cluster: claimed, undialled calls go back to the queue
            self.node.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while True:
            left = self.registry.carrier_legs_up()
            if not left or loop.time() >= deadline:
                return left
            await asyncio.sleep(0.05)  # polling our own state, bounded by grace_s

    async def _purger(self) -> None:
        while not self._stopping:
            try:
                n = self.store.purge_expired(self.clock())
                if n:
                    log.info("purged %d calls past the retention window", n)
            except Exception:
                log.exception("purge failed")
            await asyncio.sleep(60.0)

    def dispatch_once(self) -> float:
        """One scheduling pass now (the dispatcher task runs these when woken); returns
        the seconds until the next pass is useful."""
        return self.dispatcher.run_once()

    # ---- API-facing operations -------------------------------------------------------

    async def check_api_rate(self, token: str) -> float | None:
        """None if this token may trigger now, else the Retry-After seconds."""
        if self.cluster_api_limiter is not None:
            return await self.cluster_api_limiter.check(token)
        return self.api_limiter.check(token)

    def trigger(self, req: TriggerInput, start: bool = True, admitted: bool = False) -> CallRecord:
        """Validate routing, encryption, window and headers now, then store the call as
        queued. Idempotent on ``idempotency_key``. Raises RoutingError / HeaderError.
        Its first dial is measured by stage (sipbridge.dialstages). ``admitted``: admission
        control let this trigger in (the API): it is dialled now even if the node became
        full or overloaded since (see Dispatcher.dial_new)."""
        return self.triggers.trigger(req, start, received=time.monotonic(), admitted=admitted)

    def _record(self, call_sid: str) -> CallRecord:
        rec = self.store.get(call_sid, self.clock())
        if rec is None:
            raise CallNotFound(call_sid)
        return rec

    def get(self, call_sid: str) -> tuple[CallRecord, list[CallEvent]]:
        """The call and its events; CallNotFound."""
        return self._record(call_sid), self.store.events(call_sid)

    def find_by_polyai_call_id(self, polyai_call_id: str) -> CallRecord | None:
        return self.store.find_by_polyai_call_id(polyai_call_id)

    def hangup(self, call_sid: str) -> CallRecord:
        """Cancel a queued call, or CANCEL/BYE a live one. Terminal calls are unchanged."""
        rec = self._record(call_sid)
        if rec.status == "queued":
            return self.journal.set_status(rec, "failure", "canceled", kind="api_hangup")
        if rec.status == "calling":
            live = self.registry.get(call_sid)
            attempt = live.attempt if live is not None else None
            leg = attempt.leg_id if attempt is not None else None
            if live is not None:
                live.hangup_requested = True
            self.journal.event(rec, "hangup_requested", {"leg": leg})
            if live is not None and self.dispatcher.cancel_failover(live):
                # between two hops: nothing on the wire
                return self.journal.set_status(rec, "failure", "canceled", kind="api_hangup")
            if leg is None or not self.pool.hangup(leg):
                log.warning("%s: hangup requested but no live leg", call_sid)
        return rec

    def send_dtmf(
        self, call_sid: str, digits: str, duration_ms: int = 160, gap_ms: int = 80
    ) -> CallRecord:
        """Send DTMF (RFC 4733) on the answered carrier leg. ValueError on bad digits,
        CallNotFound, or InvalidTransition when the call has no answered carrier leg."""
        check_dtmf(digits)
        rec = self._record(call_sid)
        live = self.registry.get(call_sid)
        carrier = live.carrier_leg if live is not None else None
        leg = rec.leg(carrier) if carrier is not None else None
        if rec.terminal or carrier is None or leg is None or leg.answered_at is None:
            raise InvalidTransition(
                f"call {call_sid} has no answered carrier leg (status {rec.status})"
            )
        self.journal.event(rec, "dtmf.send", {"leg": carrier, "digits": digits, "by": "api"})
        self.pool.send_dtmf(carrier, digits, duration_ms, gap_ms)
        return rec

    # ---- cluster: the API on any node ------------------------------------------------

    def _remote_owner(self, rec: CallRecord) -> str | None:
        """The other node that holds this live call's legs, when the command must be
        forwarded there (cluster mode with the Redis bus); None: carry it out here.
        Queued calls are changed here: the store's epoch fence stops their claimer.
        Without the bus (no cluster.redis) a live call of another node is a 409 naming
        it: this node has none of its legs to hang up or send digits on."""
        here = self.cfg.cluster.node_id if self.cfg.cluster is not None else None
        if here is None or rec.status != "calling" or rec.owner_node in (None, "", here):
            return None
        if self.bus is None:
            raise ApiError(
                409,
                f"call {rec.call_sid} is live on node {rec.owner_node}: without "
                "cluster.redis, hangup and DTMF must be sent to that node's API",
            )
        return rec.owner_node

    async def hangup_anywhere(self, call_sid: str) -> CallRecord:
        """:meth:`hangup`, forwarded to the owning node when another node holds the call
        (ForwardError 503/504 naming it when that node does not acknowledge)."""
        rec = self._record(call_sid)
        owner = self._remote_owner(rec)
        if owner is None:
            return self.hangup(call_sid)
        assert self.bus is not None  # _remote_owner found one
        await self.bus.send(owner, "hangup", call_sid, {})
        return self._record(call_sid)

    async def send_dtmf_anywhere(
        self, call_sid: str, digits: str, duration_ms: int = 160, gap_ms: int = 80
    ) -> CallRecord:
        """:meth:`send_dtmf`, forwarded to the owning node like :meth:`hangup_anywhere`."""
        check_dtmf(digits)
        rec = self._record(call_sid)
        owner = self._remote_owner(rec)
        if owner is None:
            return self.send_dtmf(call_sid, digits, duration_ms, gap_ms)
        args = {"digits": digits, "duration_ms": duration_ms, "gap_ms": gap_ms}
        assert self.bus is not None
        await self.bus.send(owner, "dtmf", call_sid, args)
        return self._record(call_sid)

    def hold(self, call_sid: str) -> CallRecord:
        """Put the bridged call's agent on hold (sipbridge.calls.agenthold)."""
        return self.events.agent_holds.request(call_sid)

    # ---- the SIP engine --------------------------------------------------------------

    def on_sip_event(self, ev: SipEvent) -> None:
        """Entry point for everything the worker pool reports (in arrival order; held
        while the store cannot be reached, see sipbridge.calls.backlog)."""
        if isinstance(ev, LegEvent) and ev.dial_mono is not None:
            offset = time.time() - time.monotonic()
            try:  # diagnostics never stop the event
                self.dispatcher.stages.finish(ev.call_sid, *ev.dial_mono, wall_offset_s=offset)
            except (TypeError, ValueError):
                log.warning("%s: malformed dial times %r", ev.call_sid, ev.dial_mono)
        self.backlog.submit(ev)


__all__ = ["CallService"]
