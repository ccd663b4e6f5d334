"""The call manager: triggers become queued calls, the scheduler turns queued calls into
SIP legs when their window, limits and backoff allow, leg events become statuses.
Runs on the supervisor's asyncio loop, the only thread that touches call state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from sipbridge.aio import cancel_all
from sipbridge.config import (
    Config,
    DetectionSettings,
    IvrSettings,
    RetryConfig,
    RouteConfig,
    TrunkConfig,
    WindowConfig,
    check_dtmf,
)
from sipbridge.flow import (
    Action,
    CallFlow,
    DialAgent,
    EndCall,
    PlayMessage,
    SendDigits,
    StartHold,
    StartTimer,
    agent_failure,
)
from sipbridge.headers import validate_header_value
from sipbridge.ipc import (
    DetectionReport,
    DtmfReceived,
    DtmfSent,
    InboundCall,
    LegEvent,
    PlaybackDone,
)
from sipbridge.limits import ConcurrencyLimiter, RateLimiter, TokenBucket
from sipbridge.mediafiles import media_path
from sipbridge.numbers import NumberError, to_e164
from sipbridge.outcomes import (
    MEDIA_TIMEOUT,
    Termination,
    from_leg_end,
    internal_error,
)
from sipbridge.plan import DialPlan
from sipbridge.routing import (
    RoutingError,
    check_trigger,
    choose_route,
    effective_caller_id,
    resolve_agent_plan,
    resolve_plan,
)
from sipbridge.schedule import (
    CallingWindow,
    RetryPolicy,
    is_open,
    next_attempt_time,
    next_open,
    resolve_zones,
)
from sipbridge.store import TERMINAL, CallEvent, CallRecord, CallStore, DuplicateCall
from sipbridge.trunkselect import TrunkHealth, hunt_list, should_failover

log = logging.getLogger("sipbridge.calls")

QUEUE_TIMEOUT_REASON = "call queueing: max timeout limit exceeded"
_NO_SLOT = -1.0  # _dispatch_queued: no SIP slot free, stop this scheduling pass


class Pool(Protocol):
    """What the call manager needs from the SIP engine (sipbridge.sip.pool.WorkerPool)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def free_slots(self) -> int: ...
    def dial(self, plan: DialPlan, prefer_worker: int | None = None,
             reserve: int = 0) -> int: ...
    def hangup(self, leg_id: str) -> bool: ...
    def send_dtmf(self, leg_id: str, digits: str, duration_ms: int = 160,
                  gap_ms: int = 80) -> bool: ...
    def play(self, leg_id: str, path: str) -> bool: ...
    def listen(self, leg_id: str, phase: str, config: dict[str, Any]) -> bool: ...
    def respond(self, leg_id: str, status: int, reason: str = "",
                media_from: str | None = None) -> bool: ...


class PoolFullError(Exception):
    pass


class CallNotFound(KeyError):
    pass


class InvalidTransition(RuntimeError):
    pass


@dataclass(frozen=True)
class TriggerInput:
    """A validated trigger: numbers already E.164, metadata already checked."""

    to_number: str
    from_number: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    polyai_call_id: str | None = None
    encryption: str | None = None
    idempotency_key: str | None = None
    timezone: str | None = None
    calling_window: WindowConfig | None = None
    retry: RetryConfig | None = None
    detection: DetectionSettings | None = None
    status_callback: str | None = None
    ivr: IvrSettings | None = None


@dataclass
class LiveAttempt:
    """The attempt in progress for one call: its hunt list and where it is in it."""

    attempt: int
    hunt: list[str]
    hop: int = 0
    leg_id: str | None = None
    trunk: str | None = None
    started_at: float = 0.0
    tried: list[dict[str, Any]] = field(default_factory=list)


def _inbound_status(ev: LegEvent, term: Termination | None) -> tuple[int, str]:
    """The final response for a waiting inbound INVITE when the carrier leg failed:
    the carrier's own status where it means something to the caller, else 480/503."""
    if term is not None and term.kind in ("busy",):
        return 486, "Busy Here"
    if term is not None and term.kind == "not_in_service":
        return 404, "Not Found"
    if ev.cause == "ring_timeout":
        return 480, "Temporarily Unavailable"
    if ev.sip_status and 400 <= ev.sip_status < 700 and ev.sip_status not in (401, 407, 487):
        return ev.sip_status, ev.sip_reason or "Carrier Error"
    return 503, "Service Unavailable"


def new_call_sid() -> str:
    return f"OUT-{uuid.uuid4()}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class CallService:
    """Owns every call's state machine; the only writer of call status."""

    def __init__(
        self,
        cfg: Config,
        store: CallStore,
        pool: Pool,
        clock: Callable[[], float] = time.time,
        pool_full_errors: tuple[type[Exception], ...] = (PoolFullError,),
        rng: random.Random | None = None,
    ):
        self.cfg = cfg
        self.store = store
        self.pool = pool
        self.clock = clock
        self.rng = rng or random.Random()
        self._pool_full_errors = pool_full_errors
        self._live: dict[str, LiveAttempt] = {}  # call_sid -> attempt in progress
        self._leg_call: dict[str, str] = {}  # leg_id -> call_sid
        self._failover: list[str] = []  # call_sids whose next hop waits for capacity
        self._hangup_requested: set[str] = set()
        # Why the bridge itself is ending a call (SIT, machine policy): applied when the
        # leg's end arrives, instead of "hung up by API".
        self._pending_term: dict[str, Termination] = {}
        # The agent side of each live call: flow decisions, timers, leg ids and roles.
        self._flows: dict[str, CallFlow] = {}
        self._timers: dict[str, list[asyncio.TimerHandle]] = {}
        self._carrier_leg: dict[str, str] = {}  # call_sid -> live carrier leg
        self._agent_leg: dict[str, str] = {}  # call_sid -> agent leg (dialled or inbound)
        self._leg_role: dict[str, str] = {}  # leg_id -> "carrier" | "agent"
        self._leg_worker: dict[str, int] = {}
        self._inbound: set[str] = set()  # call_sids started by an inbound INVITE
        self._inbound_worker: dict[str, int] = {}  # their carrier legs go to this worker
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.bridge_host = cfg.sip.public_address or cfg.sip.listen_address
        self.limiter = ConcurrencyLimiter(
            global_cap=cfg.limits.max_concurrent_calls,
            per_key={t.name: t.max_concurrent for t in cfg.trunks if t.max_concurrent},
        )
        self.buckets = {t.name: TokenBucket(t.cps, t.cps_burst, clock)
                        for t in cfg.trunks if t.cps}
        self.health = TrunkHealth()
        self.api_limiter = RateLimiter(cfg.limits.api_rate_per_s, cfg.limits.api_burst, clock)
        # Listeners see every (record, event) pair; tests record whole histories.
        self.listeners: list[Callable[[CallRecord, CallEvent], None]] = []

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._recover()
        await self.pool.start()
        self._tasks.append(asyncio.create_task(self._dispatcher(), name="dispatcher"))
        self._tasks.append(asyncio.create_task(self._purger(), name="purger"))
        self._wake.set()

    async def stop(self) -> None:
        """Stop dialling, end live legs (the pool hangs them up), keep queued calls."""
        self._stopping = True
        await cancel_all(self._tasks)
        await self.pool.stop()

    async def drain(self, grace_s: float) -> int:
        """Stop dialling (queued calls stay queued) and wait up to ``grace_s`` for the
        live carrier legs to end; returns how many are left for ``stop()`` to hang up."""
        for t in self._tasks:  # no new dials; live calls keep their normal handling
            if t.get_name() == "dispatcher":
                t.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while True:
            left = sum(1 for live in self._live.values() if live.leg_id is not None)
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

    def _recover(self) -> None:
        """Calls that were in flight when the process died cannot be resumed: their SIP
        dialogs died with the worker processes. They end as 'bridge restarted' (and are
        retried if their policy allows). Queued calls stay queued."""
        for rec in self.store.by_status("calling"):
            term = Termination("failure", "bridge restarted", "bridge_error", True)
            try:
                if rec.damaged:
                    raise ValueError(rec.damaged)
                self._finish_attempt(rec, term, tried=[])
            except Exception as e:  # a poisoned record fails alone; start-up goes on
                log.exception("%s: cannot recover the call", rec.call_sid,
                              extra={"call_sid": rec.call_sid})
                self._fail_call(rec.call_sid, e)

    # ---- the one state setter --------------------------------------------------------

    def _set_status(
        self, rec: CallRecord, new: str, reason: str, kind: str = "status", detail: str = "",
        **changes: Any
    ) -> CallRecord:
        if rec.status in TERMINAL:
            raise InvalidTransition(f"{rec.call_sid}: {rec.status} is terminal, not -> {new}")
        now = self.clock()
        updated = replace(rec, status=new, reason=reason, detail=detail, last_updated=now,
                          **changes)
        if new in TERMINAL:
            updated = replace(updated, ended_at=now, not_before=None)
            self._inbound.discard(rec.call_sid)
            self._inbound_worker.pop(rec.call_sid, None)
        self.store.save(updated)
        log.info("%s: %s -> %s (%s)%s", rec.call_sid, rec.status, new, reason or "-",
                 f" [{detail}]" if detail else "", extra={"call_sid": rec.call_sid})
        data = {"from": rec.status, "to": new, "reason": reason, "why": kind}
        if detail:
            data["detail"] = detail
        self._event(updated, "status", data)
        return updated

    def _event(self, rec: CallRecord, kind: str, data: dict[str, Any]) -> None:
        ev = CallEvent(self.clock(), kind, data)
        self.store.add_event(rec.call_sid, ev)
        for listener in self.listeners:
            listener(rec, ev)

    # ---- policy look-ups -------------------------------------------------------------

    def _route(self, rec: CallRecord) -> RouteConfig:
        return choose_route(self.cfg, rec.to_number)

    def _policy(self, rec: CallRecord) -> RetryPolicy:
        over = rec.request.get("retry")
        if over is not None:
            return RetryConfig.model_validate(over).policy()
        route = self._route(rec)
        return (route.retry or self.cfg.retry).policy()

    def _detection(self, rec: CallRecord) -> DetectionSettings:
        over = rec.request.get("detection")
        if over is not None:
            return DetectionSettings.model_validate(over)
        return self._route(rec).detection or self.cfg.detection

    def _ivr(self, rec: CallRecord) -> IvrSettings | None:
        over = rec.request.get("ivr")
        if over is not None:
            return IvrSettings.model_validate(over)
        return self._route(rec).ivr

    def _detection_plan(self, rec: CallRecord) -> dict[str, Any] | None:
        d = self._detection(rec)
        if not (d.early_media or d.answer):
            return None
        return {"early": d.early_media, "answer": d.answer, "config": dict(d.thresholds)}

    def _window(self, rec: CallRecord) -> tuple[CallingWindow | None, tuple[str, ...]]:
        route = self._route(rec)
        over = rec.request.get("calling_window")
        wcfg = WindowConfig.model_validate(over) if over else route.window
        if wcfg is None:
            return None, ()
        zones = resolve_zones(rec.to_number, rec.request.get("timezone"),
                              route.timezone or self.cfg.scheduler.default_timezone)
        return wcfg.window(), zones

    def _trunks_for(self, route: RouteConfig, encryption: str | None) -> list[str]:
        names = [c[0] for c in route.candidates()]
        if encryption:
            names = [n for n in names if encryption in self.cfg.trunk(n).encryptions()]
        return names

    # ---- API-facing operations -------------------------------------------------------

    def check_api_rate(self, token: str) -> float | None:
        """None if this token may trigger now, else the Retry-After seconds."""
        return self.api_limiter.check(token)

    def trigger(self, req: TriggerInput, start: bool = True) -> CallRecord:
        """Validate routing, encryption, window and headers now (a bad value is a 400,
        never sent), then store the call as queued. Idempotent on ``idempotency_key``.
        Raises RoutingError / HeaderError / ValueError naming the field."""
        if req.idempotency_key:
            prior = self.store.find_by_idempotency_key(req.idempotency_key)
            if prior is not None:
                return prior
        call_sid = new_call_sid()
        route = choose_route(self.cfg, req.to_number)
        names = self._trunks_for(route, req.encryption)
        if not names:
            offered = sorted({e for c in route.candidates()
                              for e in self.cfg.trunk(c[0]).encryptions()})
            raise RoutingError("encryption", f"{req.encryption} is not available on the "
                               f"trunks for {req.to_number} (they offer {', '.join(offered)})")
        first: TrunkConfig = self.cfg.trunk(names[0])
        # dry run of every leg (each trunk, the agent): refuses unsafe values before storing
        check_trigger(self.cfg, [self.cfg.trunk(n) for n in names], call_sid=call_sid,
                      to_number=req.to_number, from_number=req.from_number,
                      metadata=req.metadata, polyai_call_id=req.polyai_call_id,
                      bridge_host=self.bridge_host, encryption=req.encryption)
        request: dict[str, Any] = {"metadata": req.metadata, "encryption": req.encryption,
                                   "from_number": req.from_number}
        if req.timezone:
            request["timezone"] = req.timezone
        if req.calling_window:
            request["calling_window"] = req.calling_window.model_dump()
        if req.retry:
            request["retry"] = req.retry.model_dump()
        if req.detection:
            request["detection"] = req.detection.model_dump()
        if req.ivr:
            request["ivr"] = req.ivr.model_dump()
        if req.status_callback:
            request["status_callback"] = req.status_callback
        now = self.clock()
        rec = CallRecord(
            call_sid=call_sid, status="queued", to_number=req.to_number,
            from_number=effective_caller_id(first, req.from_number), created_at=now,
            last_updated=now, trunk=first.name, polyai_call_id=req.polyai_call_id,
            request=request, idempotency_key=req.idempotency_key,
        )
        window, zones = self._window(rec)
        if window is not None:
            if not zones:
                raise RoutingError("timezone", f"the time zone of {req.to_number} is unknown: "
                                   "give 'timezone' or set the route's timezone")
            if next_open(window, zones, now) is None:
                raise RoutingError("calling_window", "the calling window never opens in all of "
                                   f"the number's time zones ({', '.join(zones)}) within 8 "
                                   "days; give 'timezone'")
        try:
            self.store.create(rec)
        except DuplicateCall:
            if req.idempotency_key:
                prior = self.store.find_by_idempotency_key(req.idempotency_key)
                if prior is not None:
                    return prior
            raise
        self._event(rec, "status", {"from": None, "to": "queued", "reason": "", "why": "trigger"})
        log.info("%s: queued to %s via %s", call_sid, req.to_number, first.name,
                 extra={"call_sid": call_sid})
        if start:
            self._wake.set()
        return rec

    def get(self, call_sid: str) -> tuple[CallRecord, list[CallEvent]]:
        rec = self.store.get(call_sid, self.clock())
        if rec is None:
            raise CallNotFound(call_sid)
        return rec, self.store.events(call_sid)

    def find_by_polyai_call_id(self, polyai_call_id: str) -> CallRecord | None:
        return self.store.find_by_polyai_call_id(polyai_call_id)

    def hangup(self, call_sid: str) -> CallRecord:
        """Cancel a queued call, or CANCEL/BYE a live one. Terminal calls are unchanged."""
        rec = self.store.get(call_sid, self.clock())
        if rec is None:
            raise CallNotFound(call_sid)
        if rec.status == "queued":
            return self._set_status(rec, "failure", "canceled", kind="api_hangup")
        if rec.status == "calling":
            self._hangup_requested.add(call_sid)
            live = self._live.get(call_sid)
            leg = live.leg_id if live else None
            self._event(rec, "hangup_requested", {"leg": leg})
            if call_sid in self._failover:  # between two hops: nothing on the wire
                self._failover.remove(call_sid)
                self._live.pop(call_sid, None)
                return self._set_status(rec, "failure", "canceled", kind="api_hangup")
            if leg is None or not self.pool.hangup(leg):
                log.warning("%s: hangup requested but no live leg", call_sid)
        return rec

    # ---- scheduling and dispatch -----------------------------------------------------

    async def _dispatcher(self) -> None:
        while not self._stopping:
            delay = 1.0
            try:
                delay = self._dispatch()
            except Exception:  # never let the dispatcher die; the next wake retries
                log.exception("dispatcher error")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.005, delay))
            self._wake.clear()

    def _dispatch(self) -> float:
        """One scheduling pass; returns seconds until the next pass is useful."""
        now = self.clock()
        wait = 1.0
        for sid in list(self._failover):
            try:
                blocked = self._dispatch_failover(sid, now)
            except Exception as e:  # one bad call never stops the others
                log.exception("%s: failover dial failed", sid, extra={"call_sid": sid})
                self._fail_call(sid, e)
                continue
            if blocked is not None:
                wait = min(wait, blocked)
        for rec in self.store.by_status("queued"):
            try:
                blocked = self._dispatch_queued(rec, now)
            except Exception as e:
                log.exception("%s: cannot dispatch the call", rec.call_sid,
                              extra={"call_sid": rec.call_sid})
                self._fail_call(rec.call_sid, e)
                continue
            if blocked == _NO_SLOT:
                break
            if blocked is not None:
                wait = min(wait, blocked)
        return wait

    def _dispatch_failover(self, sid: str, now: float) -> float | None:
        rec = self.store.get(sid, now)
        live = self._live.get(sid)
        if rec is None or live is None:
            self._failover.remove(sid)
            return None
        blocked = self._dial_hop(rec, live)
        if blocked is None:
            self._failover.remove(sid)
        return blocked

    def _dispatch_queued(self, rec: CallRecord, now: float) -> float | None:
        """One queued call in a scheduling pass: None, seconds until it is worth looking
        at again, or ``_NO_SLOT`` (the pass stops: no SIP slot is free)."""
        if rec.damaged:
            raise ValueError(f"stored call record is damaged: {rec.damaged}")
        if now - rec.created_at > self.cfg.scheduler.max_queue_time_s:
            self._set_status(rec, "failure", QUEUE_TIMEOUT_REASON, kind="queue_timeout")
            return None
        if rec.not_before is not None and rec.not_before > now:
            return rec.not_before - now
        opens = self._window_opens_at(rec, now)
        if opens is not None:
            return max(opens - now, 0.005)
        if self.pool.free_slots() <= 0:
            return _NO_SLOT
        return self._start_attempt(rec, now)

    def _window_opens_at(self, rec: CallRecord, now: float) -> float | None:
        """None if the call may be dialled now; else when its window opens (the call
        is parked with not_before and a reason saying when)."""
        try:
            window, zones = self._window(rec)
        except ValueError as e:
            self._set_status(rec, "failure", "cannot schedule", kind="window_error",
                             detail=str(e))
            return now + 3600
        if window is None or is_open(window, zones, now):
            return None
        nxt = next_open(window, zones, now)
        if nxt is None:
            self._set_status(rec, "failure", "calling window never opens", kind="window_error",
                             detail=f"not within 8 days in {', '.join(zones)}")
            return now + 3600
        at = nxt.timestamp()
        reason = f"outside calling window; will be attempted at {_iso(at)}"
        rec = replace(rec, not_before=at, reason=reason, last_updated=now)
        self.store.save(rec)
        self._event(rec, "scheduled", {"not_before": _iso(at), "zones": list(zones)})
        return at

    def _start_attempt(self, rec: CallRecord, now: float) -> float | None:
        """Begin the next attempt of a queued call; None when dialled, else seconds to
        wait (trunk limits)."""
        route = self._route(rec)
        names = self._trunks_for(route, rec.request.get("encryption"))
        cands = [c for c in route.candidates() if c[0] in names]
        hunt = hunt_list(cands, self.rng, self.health, now)
        if not hunt:
            resting = self.health.earliest_available(names, now)
            wait = (resting - now) if resting else 1.0
            return max(wait, 0.005)
        live = LiveAttempt(attempt=rec.attempts + 1, hunt=hunt, started_at=now)
        self._live[rec.call_sid] = live
        blocked = self._dial_hop(rec, live)
        if blocked is not None:
            self._live.pop(rec.call_sid, None)
        return blocked

    def _dial_hop(self, rec: CallRecord, live: LiveAttempt) -> float | None:
        """Dial the current hop of an attempt if limits allow: None when dialled, else
        the seconds until it may be possible."""
        if self.pool.free_slots() <= 0:
            return 0.05
        now = self.clock()
        # Try the hunt list from the current hop: a trunk at its concurrency cap is
        # passed over (overflow); a trunk out of CPS tokens makes the call wait, since a
        # carrier's CPS cap is per trunk and waiting a fraction of a second beats
        # spilling traffic to a lower-priority carrier.
        while live.hop < len(live.hunt):
            name = live.hunt[live.hop]
            limit = self.limiter.limit(name)
            if limit is not None and self.limiter.active(name) >= limit:
                if live.tried or live.hop + 1 >= len(live.hunt):
                    return 0.05
                live.hop += 1
                continue
            break
        else:
            return 0.05
        if not self.limiter.try_acquire(name):
            return 0.05
        bucket = self.buckets.get(name)
        if bucket is not None and not bucket.try_take():
            self.limiter.release(name)
            return max(bucket.wait_time(), 0.001)
        trunk = self.cfg.trunk(name)
        from_number = effective_caller_id(trunk, rec.request.get("from_number"))
        try:
            plan = resolve_plan(
                self.cfg, call_sid=rec.call_sid, to_number=rec.to_number,
                from_number=from_number,
                metadata=rec.request.get("metadata", {}), polyai_call_id=rec.polyai_call_id,
                attempt=live.attempt, bridge_host=self.bridge_host, trunk=trunk,
                hop=live.hop, encryption=rec.request.get("encryption"),
                detection=self._detection_plan(rec),
            )
        except ValueError as e:  # config changed since the trigger: fail clearly
            self.limiter.release(name)
            self._live.pop(rec.call_sid, None)
            self._set_status(rec, "failure", "could not place call", kind="plan_error",
                             detail=str(e))
            return None
        copied = rec.request.get("copy_headers")
        if copied:  # SIP-triggered: headers the config copies from the agent's INVITE
            extra = tuple((k, validate_header_value(v, f"header {k}"))
                          for k, v in copied.items())
            plan = replace(plan, headers=plan.headers + extra)
        inbound_worker = self._inbound_worker.get(rec.call_sid)
        try:
            # One slot stays reserved on the same worker for the agent leg (an inbound
            # call's agent leg exists already: its carrier leg joins it on its worker).
            if inbound_worker is not None:
                worker = self.pool.dial(plan, prefer_worker=inbound_worker)
            else:
                worker = self.pool.dial(plan, reserve=1)
        except self._pool_full_errors:
            self.limiter.release(name)
            return 0.05
        live.leg_id, live.trunk = plan.leg_id, name
        self._leg_call[plan.leg_id] = rec.call_sid
        self._leg_role[plan.leg_id] = "carrier"
        self._leg_worker[plan.leg_id] = worker
        self._carrier_leg[rec.call_sid] = plan.leg_id
        if rec.call_sid not in self._flows:
            self._flows[rec.call_sid] = CallFlow(self._detection(rec), self._ivr(rec))
        legs = dict(rec.legs)
        legs[plan.leg_id] = {"role": "carrier", "trunk": name, "worker": worker,
                             "attempt": live.attempt, "request_uri": plan.request_uri,
                             "invite_at": now}
        if rec.status == "calling":
            rec = replace(rec, legs=legs, trunk=name, from_number=from_number,
                          last_updated=now)
            self.store.save(rec)
            self._event(rec, "dial", {"leg": plan.leg_id, "trunk": name, "hop": live.hop})
        else:
            self._set_status(rec, "calling", "", kind="dial", attempts=live.attempt,
                             trunk=name, legs=legs, not_before=None, from_number=from_number)
        return None

    # ---- events from the SIP engine --------------------------------------------------

    def on_sip_event(self, ev: Any) -> None:
        """Entry point for everything the worker pool reports. A handler that raises
        ends that call as ``failure`` "internal error" (the exception goes to the log and
        ``detail``): no event leaves a call half-handled and non-terminal."""
        try:
            self._on_sip_event(ev)
        except Exception as e:
            leg_id = getattr(ev, "leg_id", None)
            sid = self._leg_call.get(leg_id or "") or getattr(ev, "call_sid", None)
            log.exception("%s: handling %s failed", sid or "-", type(ev).__name__,
                          extra={"call_sid": sid} if sid else {})
            if sid:
                self._fail_call(sid, e)
            elif isinstance(ev, InboundCall):
                with contextlib.suppress(Exception):
                    self.pool.respond(ev.leg_id, 500, "Server Internal Error")

    def _fail_call(self, call_sid: str, exc: BaseException) -> None:
        """End a call after an unexpected error: hang up every leg it has, drop its
        attempt state, and record ``failure`` "internal error". Never raises."""
        try:
            for leg_id, sid in list(self._leg_call.items()):
                if sid == call_sid:
                    with contextlib.suppress(Exception):
                        self.pool.hangup(leg_id)
            for handle in self._timers.pop(call_sid, []):
                handle.cancel()
            self._flows.pop(call_sid, None)
            self._live.pop(call_sid, None)
            self._pending_term.pop(call_sid, None)
            self._hangup_requested.discard(call_sid)
            if call_sid in self._failover:
                self._failover.remove(call_sid)
            rec = self.store.get(call_sid, self.clock())
            if rec is not None and not rec.terminal:
                term = internal_error(f"{type(exc).__name__}: {exc}"[:500])
                self._set_status(rec, term.result, term.reason, kind=term.kind,
                                 detail=term.detail)
        except Exception:
            log.exception("%s: cannot end the call after an internal error", call_sid,
                          extra={"call_sid": call_sid})

    def _on_sip_event(self, ev: Any) -> None:
        if isinstance(ev, DetectionReport):
            self.on_detection(ev)
        elif isinstance(ev, LegEvent):
            if self._leg_role.get(ev.leg_id) == "agent":
                self._on_agent_event(ev)
            else:
                self.on_leg_event(ev)
        elif isinstance(ev, DtmfSent):
            self._on_flow_event(ev.leg_id, ev.call_sid, "dtmf.sent", {"digits": ev.digits},
                                lambda f: f.on_digits_sent())
        elif isinstance(ev, PlaybackDone):
            self._on_flow_event(ev.leg_id, ev.call_sid, "voicemail.played",
                                {"path": ev.path, "error": ev.error},
                                lambda f: f.on_playback_done(ev.error))
        elif isinstance(ev, DtmfReceived):
            self._on_flow_event(ev.leg_id, ev.call_sid, "dtmf.received",
                                {"digit": ev.digit, "duration_ms": ev.duration_ms,
                                 "method": ev.method, "relayed_to": ev.relayed_to},
                                lambda f: [])
        elif isinstance(ev, InboundCall):
            self.on_inbound(ev)
        else:
            log.warning("unexpected event from the SIP engine: %r", ev)

    def _on_flow_event(self, leg_id: str, call_sid: str, kind: str, data: dict[str, Any],
                       step: Callable[[CallFlow], list[Action]]) -> None:
        sid = self._leg_call.get(leg_id, call_sid)
        rec = self.store.get(sid, self.clock())
        if rec is None or rec.terminal:
            return
        self._event(rec, kind, {"leg": leg_id, **data})
        flow = self._flows.get(sid)
        if flow is not None:
            self._execute(sid, step(flow))

    # ---- flow actions ----------------------------------------------------------------

    def _execute(self, call_sid: str, actions: list[Action]) -> None:
        for action in actions:
            try:
                self._execute_one(call_sid, action)
            except Exception as e:
                log.exception("%s: action %r failed", call_sid, action,
                              extra={"call_sid": call_sid})
                self._fail_call(call_sid, e)
                return

    def _execute_one(self, call_sid: str, action: Action) -> None:
        rec = self.store.get(call_sid, self.clock())
        carrier = self._carrier_leg.get(call_sid)
        if rec is None or rec.terminal:
            return
        if isinstance(action, EndCall):
            self._pending_term.setdefault(call_sid, action.term)
            log.info("%s: ending call: %s", call_sid, action.term.reason,
                     extra={"call_sid": call_sid})
            hung = carrier is not None and self.pool.hangup(carrier)
            agent = self._agent_leg.get(call_sid)
            if agent is not None:
                self.pool.hangup(agent)
            if not hung and call_sid in self._inbound and carrier is None:
                self._finish_inbound_without_carrier(rec, action.term)
        elif isinstance(action, DialAgent):
            self._dial_agent(rec, carrier, action.answered_by)
        elif isinstance(action, SendDigits) and carrier is not None:
            self._event(rec, "dtmf.send", {"leg": carrier, "digits": action.digits})
            self.pool.send_dtmf(carrier, action.digits, action.duration_ms, action.gap_ms)
        elif isinstance(action, StartHold) and carrier is not None:
            self._event(rec, "hold", {"leg": carrier})
            self.pool.listen(carrier, "hold", {})
        elif isinstance(action, PlayMessage) and carrier is not None:
            path = str(media_path(self.cfg.media.dir, action.path))  # re-checked now
            self._event(rec, "voicemail.play", {"leg": carrier, "path": action.path})
            self.pool.play(carrier, path)
        elif isinstance(action, StartTimer):
            loop = asyncio.get_running_loop()
            handle = loop.call_later(action.delay_s, self._on_timer, call_sid, action.name,
                                     self._flows.get(call_sid))
            self._timers.setdefault(call_sid, []).append(handle)

    def _on_timer(self, call_sid: str, name: str, flow: CallFlow | None) -> None:
        if flow is None or self._flows.get(call_sid) is not flow:
            return  # a timer of an attempt that is over
        try:
            actions = flow.on_timer(name)
        except Exception as e:
            log.exception("%s: timer %s failed", call_sid, name, extra={"call_sid": call_sid})
            self._fail_call(call_sid, e)
            return
        self._execute(call_sid, actions)

    def _dial_agent(self, rec: CallRecord, carrier: str | None,
                    answered_by: str | None) -> None:
        if carrier is None:
            return
        if rec.call_sid in self._inbound:
            # SIP-triggered: the agent is already on the line (the inbound leg).
            return
        try:
            plan = resolve_agent_plan(
                self.cfg, call_sid=rec.call_sid, carrier_leg_id=carrier,
                to_number=rec.to_number, from_number=rec.from_number,
                metadata=rec.request.get("metadata", {}), polyai_call_id=rec.polyai_call_id,
                answered_by=answered_by, bridge_host=self.bridge_host, index=rec.attempts,
            )
        except ValueError as e:  # e.g. a header value the agent leg must not carry
            log.warning("%s: cannot dial the agent: %s", rec.call_sid, e,
                        extra={"call_sid": rec.call_sid})
            term = replace(agent_failure(None, "", f"cannot dial the agent: {e}"),
                           retryable=False)
            self._execute(rec.call_sid, [EndCall(term)])
            return
        worker = self._leg_worker.get(carrier)
        try:
            self.pool.dial(plan, prefer_worker=worker)
        except self._pool_full_errors:
            self._execute(rec.call_sid, [EndCall(Termination(
                "failure", "agent leg failed", "bridge_error", True, None,
                "no SIP worker capacity for the agent leg"))])
            return
        self._leg_call[plan.leg_id] = rec.call_sid
        self._leg_role[plan.leg_id] = "agent"
        self._agent_leg[rec.call_sid] = plan.leg_id
        legs = dict(rec.legs)
        legs[plan.leg_id] = {"role": "agent", "worker": worker, "request_uri": plan.request_uri,
                             "invite_at": self.clock(), "bridge_with": carrier}
        rec = replace(rec, legs=legs, last_updated=self.clock())
        self.store.save(rec)
        self._event(rec, "agent.dial", {"leg": plan.leg_id, "answered_by": answered_by})

    def _agent_failure(self, rec: CallRecord) -> Termination | None:
        """The carrier leg was ended because its agent leg ended: if the agent never
        answered, that is an agent failure, whatever order the two ends arrived in."""
        for leg in rec.legs.values():
            if leg.get("role") == "agent" and leg.get("ended_at") and not leg.get(
                    "answered_at") and leg.get("direction") != "inbound":
                return agent_failure(leg.get("sip_status"), leg.get("sip_reason", ""))
        return None

    def _on_agent_event(self, ev: LegEvent) -> None:
        sid = self._leg_call.get(ev.leg_id, ev.call_sid)
        rec = self.store.get(sid, self.clock())
        if rec is None:
            return
        data: dict[str, Any] = {"leg": ev.leg_id, "sip_status": ev.sip_status}
        for key in ("sip_reason", "sip_call_id", "cause", "detail"):
            if getattr(ev, key):
                data[key] = getattr(ev, key)
        self._event(rec, f"agent.{ev.state}", data)
        legs = dict(rec.legs)
        leg = dict(legs.get(ev.leg_id, {"role": "agent"}))
        if ev.sip_call_id:
            leg["sip_call_id"] = ev.sip_call_id
        if ev.state == "answered":
            leg["answered_at"] = ev.ts
        if ev.state == "ended":
            leg.update(ended_at=ev.ts, cause=ev.cause, sip_status=ev.sip_status,
                       sip_reason=ev.sip_reason)
        legs[ev.leg_id] = leg
        rec = replace(rec, legs=legs, last_updated=self.clock())
        self.store.save(rec)
        flow = self._flows.get(sid)
        if ev.state != "ended" and (rec.terminal or flow is None):
            # The call (or this attempt's carrier leg) is over already: an agent leg
            # that is still ringing or answered must not outlive it (CANCEL / BYE).
            log.info("%s: agent leg %s %s after its call ended: hanging it up", sid,
                     ev.leg_id, ev.state, extra={"call_sid": sid})
            self.pool.hangup(ev.leg_id)
            return
        if ev.state == "answered" and flow is not None:
            self._execute(sid, flow.on_agent_answered())
        if ev.state == "ended":
            self._leg_call.pop(ev.leg_id, None)
            self._leg_role.pop(ev.leg_id, None)
            if self._agent_leg.get(sid) == ev.leg_id:
                self._agent_leg.pop(sid, None)
            if rec.terminal or flow is None:
                return
            if ev.cause == "media_timeout":
                # No RTP from the agent: the worker ends the carrier leg with it.
                self._execute(sid, [EndCall(Termination(
                    "failure", MEDIA_TIMEOUT, "media_timeout", False, None,
                    f"no RTP from the agent leg: {ev.detail}".rstrip(": ")))])
                return
            if sid in self._inbound:
                # The agent platform hung up (or cancelled) its INVITE: end the carrier leg.
                if not ev.answered:
                    self._execute(sid, [EndCall(Termination(
                        "failure", "canceled by agent platform", "canceled", False))])
                return
            if not ev.answered and ev.cause != "bridged_bye":
                self._execute(sid, flow.on_agent_failed(ev.sip_status, ev.sip_reason))

    def on_leg_event(self, ev: LegEvent) -> None:
        call_sid = self._leg_call.get(ev.leg_id, ev.call_sid)
        rec = self.store.get(call_sid, self.clock())
        if rec is None:
            log.warning("event for unknown call %s: %s", call_sid, ev)
            return
        data: dict[str, Any] = {"leg": ev.leg_id, "sip_status": ev.sip_status}
        for key in ("sip_reason", "sip_call_id", "cause", "detail", "retry_after_s"):
            if getattr(ev, key):
                data[key] = getattr(ev, key)
        self._event(rec, f"carrier.{ev.state}", data)
        legs = dict(rec.legs)
        leg = dict(legs.get(ev.leg_id, {}))
        if ev.sip_call_id:
            leg["sip_call_id"] = ev.sip_call_id
        if ev.state in ("ringing", "early") and "ring_at" not in leg:
            leg["ring_at"] = ev.ts
        if ev.state == "answered":
            leg["answered_at"] = ev.ts
        legs[ev.leg_id] = leg
        if ev.state != "ended":
            rec = replace(rec, legs=legs, sip_status=ev.sip_status or rec.sip_status,
                          last_updated=self.clock())
            self.store.save(rec)
            if call_sid in self._inbound:
                self._relay_to_inbound(call_sid, ev)
            flow = self._flows.get(call_sid)
            if ev.state == "answered" and flow is not None:
                self._execute(call_sid, flow.on_answered())
            return
        self._leg_call.pop(ev.leg_id, None)
        leg.update(ended_at=ev.ts, cause=ev.cause, sip_status=ev.sip_status)
        legs[ev.leg_id] = leg
        rec = replace(rec, legs=legs)
        live = self._live.get(call_sid)
        trunk = leg.get("trunk") or (live.trunk if live else None)
        if trunk and self.limiter.active(trunk) > 0:
            self.limiter.release(trunk)
        now = self.clock()
        if trunk and ev.sip_status == 503 and ev.retry_after_s:
            # RFC 3261 21.5.4: the trunk asked us to stay away for Retry-After seconds.
            self.health.mark_unavailable(trunk, now + ev.retry_after_s)
        self._wake.set()  # a slot is free
        if rec.status in TERMINAL:
            self.store.save(rec)
            return
        tried = [*(live.tried if live else []),
                 {"trunk": trunk, "leg": ev.leg_id, "sip_status": ev.sip_status,
                  "cause": ev.cause}]
        hangup = call_sid in self._hangup_requested
        # Answered per the worker's end event, or per the record (an end the pool had to
        # synthesise cannot always know): an answered leg is never requeued or failed over.
        answered = ev.answered or "answered_at" in leg
        if (live is not None and not answered and not hangup and not self._stopping
                and call_sid not in self._pending_term
                and should_failover(ev.sip_status, ev.cause)
                and live.hop + 1 < len(live.hunt)):
            live.tried = tried
            live.hop += 1
            live.leg_id = None
            self.store.save(rec)
            self._event(rec, "failover", {"from_trunk": trunk, "to_trunk": live.hunt[live.hop],
                                          "sip_status": ev.sip_status, "cause": ev.cause})
            self._failover.append(call_sid)
            return
        self._hangup_requested.discard(call_sid)
        self._live.pop(call_sid, None)
        flow = self._flows.get(call_sid)
        connected = flow is not None and flow.agent_connected
        agent = self._agent_leg.get(call_sid)
        if agent is not None and call_sid not in self._inbound:
            # The carrier leg is gone: its agent leg goes too, whatever state it is in
            # (the worker does the same for a paired leg; this covers the races).
            self.pool.hangup(agent)
        self._end_flow(call_sid, ev)
        if (self._stopping and ev.cause == "local_hangup" and not answered
                and call_sid not in self._pending_term):
            # Shut down before answer: the call is not lost, it waits for the next start.
            self._set_status(rec, "queued", "requeued: bridge shut down before answer",
                             kind="requeued", attempts=max(rec.attempts - 1, 0))
            return
        pending = self._pending_term.pop(call_sid, None)
        term = from_leg_end(ev.cause, answered, ev.sip_status, ev.sip_reason, ev.detail,
                            connected=connected)
        if pending is None and ev.cause == "bridged_bye":
            pending = self._agent_failure(rec)
        if pending is not None and ev.cause in ("local_hangup", "remote_bye", "remote_final",
                                                "bridged_bye"):
            # We hung up because of what we heard (or the carrier beat us to it).
            term = replace(pending, sip_status=ev.sip_status)
            hangup = False
        elif self._stopping and ev.cause == "local_hangup" and answered:
            term = replace(term, reason="ended by bridge shutdown")
        self._finish_attempt(rec, term, tried, no_retry=hangup)

    def on_detection(self, rep: DetectionReport) -> None:
        """A detection result from the worker: record it, and let the call's flow decide
        (SIT, busy/reorder tone, fax, machine policy, connect the agent, hold result)."""
        call_sid = self._leg_call.get(rep.leg_id, rep.call_sid)
        rec = self.store.get(call_sid, self.clock())
        if rec is None or rec.terminal:
            return
        det = rep.detection
        answered_by = det.get("answered_by")
        self._event(rec, "detection", {"leg": rep.leg_id, "phase": rep.phase,
                                       "kind": rep.kind, **det})
        legs = dict(rec.legs)
        leg = dict(legs.get(rep.leg_id, {}))
        leg.setdefault("detection", {})[rep.phase] = det
        legs[rep.leg_id] = leg
        changes: dict[str, Any] = {"legs": legs, "last_updated": self.clock()}
        if rep.phase == "answer" and answered_by and answered_by != "sit":
            changes["answered_by"] = answered_by
        rec = replace(rec, **changes)
        self.store.save(rec)
        flow = self._flows.get(call_sid)
        if flow is not None:
            self._execute(call_sid, flow.on_detection(rep.phase, det))

    def _end_flow(self, call_sid: str, ev: LegEvent) -> None:
        """The carrier leg of an attempt is over: drop its flow and timers; tell an
        inbound agent leg that is still waiting."""
        for handle in self._timers.pop(call_sid, []):
            handle.cancel()
        self._flows.pop(call_sid, None)
        if self._carrier_leg.get(call_sid) == ev.leg_id:
            self._carrier_leg.pop(call_sid, None)
        self._leg_role.pop(ev.leg_id, None)
        self._leg_worker.pop(ev.leg_id, None)
        if call_sid in self._inbound:
            inbound = self._agent_leg.get(call_sid)
            if inbound is not None and not ev.answered:
                pending = self._pending_term.get(call_sid)
                status, reason = _inbound_status(ev, pending)
                self.pool.respond(inbound, status, reason)

    # ---- SIP-triggered mode ----------------------------------------------------------

    def on_inbound(self, ev: InboundCall) -> None:
        """An INVITE from the agent platform: find the destination, create the call,
        dial the carrier on the same worker, relay progress back (RFC 3261 13.3.1)."""
        icfg = self.cfg.inbound
        if not icfg.enabled:
            self.pool.respond(ev.leg_id, 403, "SIP-triggered calls are disabled")
            return
        headers = {k.lower(): v for k, v in ev.headers}
        if icfg.number_source == "header":
            raw = headers.get(icfg.number_header.lower(), "")
        else:
            user = ev.request_uri.split(":", 1)[-1].split("@", 1)[0]
            raw = user.split(";", 1)[0]
        polyai = headers.get(icfg.call_id_header.lower()) if icfg.call_id_header else None
        try:
            to = to_e164(raw, icfg.default_country, "destination")
        except NumberError as e:
            log.warning("inbound INVITE %s refused: %s", ev.sip_call_id, e)
            self.pool.respond(ev.leg_id, 484, "Address Incomplete")
            return
        copied = {name: headers[name.lower()] for name in icfg.copy_headers
                  if name.lower() in headers}
        try:
            rec = self.trigger(TriggerInput(to_number=to, polyai_call_id=polyai,
                                            metadata={}), start=False)
        except (RoutingError, ValueError) as e:
            log.warning("inbound INVITE %s refused: %s", ev.sip_call_id, e)
            self.pool.respond(ev.leg_id, 404, "Not Found")
            return
        call_sid = rec.call_sid
        self._inbound.add(call_sid)
        self._leg_call[ev.leg_id] = call_sid
        self._leg_role[ev.leg_id] = "agent"
        self._leg_worker[ev.leg_id] = ev.worker_id
        self._agent_leg[call_sid] = ev.leg_id
        legs = {ev.leg_id: {"role": "agent", "direction": "inbound", "worker": ev.worker_id,
                            "sip_call_id": ev.sip_call_id, "source": ev.source}}
        rec = replace(rec, legs=legs, request={**rec.request, "copy_headers": copied,
                                               "inbound_leg": ev.leg_id})
        self.store.save(rec)
        self._event(rec, "agent.inbound", {"leg": ev.leg_id, "source": ev.source,
                                           "request_uri": ev.request_uri})
        self._start_inbound_attempt(rec, ev.worker_id)

    def _start_inbound_attempt(self, rec: CallRecord, worker: int) -> None:
        now = self.clock()
        route = self._route(rec)
        names = self._trunks_for(route, None)
        cands = [c for c in route.candidates() if c[0] in names]
        hunt = hunt_list(cands, self.rng, self.health, now)
        if not hunt:
            self._finish_inbound_without_carrier(rec, Termination(
                "failure", "no trunk available", "carrier_error", False, 503))
            return
        live = LiveAttempt(attempt=rec.attempts + 1, hunt=hunt, started_at=now)
        self._live[rec.call_sid] = live
        self._inbound_worker[rec.call_sid] = worker
        if self._dial_hop(rec, live) is not None:
            self._live.pop(rec.call_sid, None)
            self._finish_inbound_without_carrier(rec, Termination(
                "failure", "trunk limits reached", "carrier_error", True, 503))

    def _finish_inbound_without_carrier(self, rec: CallRecord, term: Termination) -> None:
        inbound = self._agent_leg.get(rec.call_sid)
        if inbound is not None:
            self.pool.respond(inbound, term.sip_status or 503, term.reason)
        if not rec.terminal:
            self._set_status(rec, term.result, term.reason, kind=term.kind,
                             detail=term.detail, sip_status=term.sip_status)

    def _relay_to_inbound(self, call_sid: str, ev: LegEvent) -> None:
        inbound = self._agent_leg.get(call_sid)
        if inbound is None:
            return
        if ev.state == "ringing":
            self.pool.respond(inbound, 180, "Ringing")
        elif ev.state == "early":
            self.pool.respond(inbound, 183, "Session Progress", media_from=ev.leg_id)
        elif ev.state == "answered":
            self.pool.respond(inbound, 200, "OK", media_from=ev.leg_id)

    # ---- live-call operations --------------------------------------------------------

    def send_dtmf(self, call_sid: str, digits: str, duration_ms: int = 160,
                  gap_ms: int = 80) -> CallRecord:
        """Send DTMF (RFC 4733) on the answered carrier leg. ValueError on bad digits,
        CallNotFound, or InvalidTransition when the call has no answered carrier leg."""
        check_dtmf(digits)
        rec = self.store.get(call_sid, self.clock())
        if rec is None:
            raise CallNotFound(call_sid)
        carrier = self._carrier_leg.get(call_sid)
        answered = carrier is not None and "answered_at" in rec.legs.get(carrier, {})
        if rec.terminal or not answered:
            raise InvalidTransition(f"call {call_sid} has no answered carrier leg "
                                    f"(status {rec.status})")
        assert carrier is not None
        self._event(rec, "dtmf.send", {"leg": carrier, "digits": digits, "by": "api"})
        self.pool.send_dtmf(carrier, digits, duration_ms, gap_ms)
        return rec

    def _finish_attempt(self, rec: CallRecord, term: Termination, tried: list[dict[str, Any]],
                        no_retry: bool = False) -> None:
        """Record the attempt's outcome, then retry (back to queued with a not-before
        time) or end the call."""
        now = self.clock()
        history = [*rec.attempt_history, {
            "attempt": rec.attempts, "result": term.result, "reason": term.reason,
            "detail": term.detail,
            "kind": term.kind, "sip_status": term.sip_status, "ended_at": _iso(now),
            "trunks": [t["trunk"] for t in tried if t.get("trunk")],
        }]
        policy = self._policy(rec)
        # An inbound (SIP-triggered) call is never retried: the agent is on the line now.
        no_retry = no_retry or rec.call_sid in self._inbound
        # A "retry" machine action asks for a retry whatever retry_on lists.
        wants_retry = policy.should_retry(term.kind, rec.attempts) or (
            term.kind == "machine" and rec.attempts < policy.max_attempts)
        if term.result == "failure" and not no_retry and term.retryable and wants_retry:
            window, zones = self._window(rec)
            when = next_attempt_time(policy, rec.attempts, now, self.rng.random, window,
                                     zones or ())
            if when is not None:
                at = when.timestamp()
                self._set_status(
                    rec, "queued",
                    f"{term.reason}; attempt {rec.attempts + 1} of {policy.max_attempts} "
                    f"at {_iso(at)}",
                    kind="retry", detail=term.detail, not_before=at,
                    attempt_history=history, sip_status=term.sip_status,
                )
                self._wake.set()
                return
        self._set_status(rec, term.result, term.reason, kind=term.kind, detail=term.detail,
                         sip_status=term.sip_status, attempt_history=history)


__all__ = ["CallNotFound", "CallService", "InvalidTransition", "TriggerInput", "new_call_sid"]
