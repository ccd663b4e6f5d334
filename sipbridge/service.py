"""The call manager: triggers become queued calls, queued calls become SIP legs,
leg events become statuses. Runs on the supervisor's asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from sipbridge.config import Config
from sipbridge.ipc import LegEvent
from sipbridge.outcomes import Termination, from_leg_end
from sipbridge.plan import DialPlan
from sipbridge.routing import RoutingError, choose_trunk, resolve_plan
from sipbridge.store import TERMINAL, CallEvent, CallRecord, CallStore

log = logging.getLogger("sipbridge.calls")


class Pool(Protocol):
    """What the call manager needs from the SIP engine (sipbridge.sip.pool.WorkerPool)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def free_slots(self) -> int: ...
    def dial(self, plan: DialPlan, prefer_worker: int | None = None) -> int: ...
    def hangup(self, leg_id: str) -> bool: ...


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


def new_call_sid() -> str:
    return f"OUT-{uuid.uuid4()}"


class CallService:
    """Owns every call's state machine; the only writer of call status."""

    def __init__(
        self,
        cfg: Config,
        store: CallStore,
        pool: Pool,
        clock: Callable[[], float] = time.time,
        pool_full_errors: tuple[type[Exception], ...] = (PoolFullError,),
    ):
        self.cfg = cfg
        self.store = store
        self.pool = pool
        self.clock = clock
        self._pool_full_errors = pool_full_errors
        self._active_legs: dict[str, str] = {}  # leg_id -> call_sid
        self._leg_of_call: dict[str, str] = {}  # call_sid -> current leg_id
        self._hangup_requested: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.bridge_host = cfg.sip.public_address or cfg.sip.listen_address
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
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        await self.pool.stop()

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
        dialogs died with the worker processes. Queued calls stay queued."""
        for rec in self.store.by_status("calling"):
            self._set_status(rec, "failure", "bridge restarted", kind="recovered")

    # ---- the one state setter --------------------------------------------------------

    def _set_status(
        self, rec: CallRecord, new: str, reason: str, kind: str = "status", **changes: Any
    ) -> CallRecord:
        if rec.status in TERMINAL:
            raise InvalidTransition(f"{rec.call_sid}: {rec.status} is terminal, not -> {new}")
        now = self.clock()
        updated = replace(rec, status=new, reason=reason, last_updated=now, **changes)
        if new in TERMINAL:
            updated = replace(updated, ended_at=now)
        self.store.save(updated)
        log.info("%s: %s -> %s (%s)", rec.call_sid, rec.status, new, reason or "-",
                 extra={"call_sid": rec.call_sid})
        self._event(updated, "status", {"from": rec.status, "to": new, "reason": reason,
                                        "why": kind})
        return updated

    def _event(self, rec: CallRecord, kind: str, data: dict[str, Any]) -> None:
        ev = CallEvent(self.clock(), kind, data)
        self.store.add_event(rec.call_sid, ev)
        for listener in self.listeners:
            listener(rec, ev)

    # ---- API-facing operations -------------------------------------------------------

    def trigger(self, req: TriggerInput) -> CallRecord:
        """Validate routing and headers now (so a bad value is a 400, never sent), then
        store the call as queued. Raises RoutingError / HeaderError."""
        call_sid = new_call_sid()
        trunk = choose_trunk(self.cfg, req.to_number)
        from_number = req.from_number or trunk.caller_id or ""
        if req.encryption and req.encryption != trunk.encryption:
            raise RoutingError(
                "encryption",
                f"{req.encryption} is not available on trunk {trunk.name} "
                f"(it offers {trunk.encryption})",
            )
        resolve_plan(  # dry run: refuses unsafe headers before anything is stored
            self.cfg, call_sid=call_sid, to_number=req.to_number, from_number=from_number,
            metadata=req.metadata, polyai_call_id=req.polyai_call_id, attempt=1,
            bridge_host=self.bridge_host, trunk=trunk,
        )
        now = self.clock()
        rec = CallRecord(
            call_sid=call_sid, status="queued", to_number=req.to_number,
            from_number=from_number, created_at=now, last_updated=now, trunk=trunk.name,
            polyai_call_id=req.polyai_call_id,
            request={"metadata": req.metadata, "encryption": req.encryption},
        )
        self.store.create(rec)
        self._event(rec, "status", {"from": None, "to": "queued", "reason": "", "why": "trigger"})
        log.info("%s: queued to %s via %s", call_sid, req.to_number, trunk.name,
                 extra={"call_sid": call_sid})
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
            leg = self._leg_of_call.get(call_sid)
            self._hangup_requested.add(call_sid)
            self._event(rec, "hangup_requested", {"leg": leg})
            if leg is None or not self.pool.hangup(leg):
                # The leg is already gone (its end event is on the way) or never started.
                log.warning("%s: hangup requested but no live leg", call_sid)
        return rec

    # ---- dispatch --------------------------------------------------------------------

    async def _dispatcher(self) -> None:
        while not self._stopping:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            self._wake.clear()
            try:
                self._dispatch_queued()
            except Exception:  # never let the dispatcher die; the next wake retries
                log.exception("dispatcher error")

    def _dispatch_queued(self) -> None:
        for rec in self.store.by_status("queued"):
            if self.pool.free_slots() <= 0:
                return
            self._start_attempt(rec)

    def _start_attempt(self, rec: CallRecord) -> None:
        attempt = rec.attempts + 1
        try:
            plan = resolve_plan(
                self.cfg, call_sid=rec.call_sid, to_number=rec.to_number,
                from_number=rec.from_number, metadata=rec.request.get("metadata", {}),
                polyai_call_id=rec.polyai_call_id, attempt=attempt,
                bridge_host=self.bridge_host,
            )
        except ValueError as e:  # config changed since the trigger: fail clearly
            self._set_status(rec, "failure", f"cannot dial: {e}", kind="plan_error")
            return
        try:
            worker = self.pool.dial(plan)
        except self._pool_full_errors:
            return
        self._active_legs[plan.leg_id] = rec.call_sid
        self._leg_of_call[rec.call_sid] = plan.leg_id
        legs = dict(rec.legs)
        legs[plan.leg_id] = {"role": "carrier", "trunk": plan.trunk, "worker": worker,
                             "request_uri": plan.request_uri}
        self._set_status(rec, "calling", "", kind="dial", attempts=attempt, trunk=plan.trunk,
                         legs=legs)

    # ---- events from the SIP engine --------------------------------------------------

    def on_leg_event(self, ev: LegEvent) -> None:
        call_sid = self._active_legs.get(ev.leg_id, ev.call_sid)
        rec = self.store.get(call_sid, self.clock())
        if rec is None:
            log.warning("event for unknown call %s: %s", call_sid, ev)
            return
        data: dict[str, Any] = {"leg": ev.leg_id, "sip_status": ev.sip_status}
        if ev.sip_reason:
            data["sip_reason"] = ev.sip_reason
        if ev.sip_call_id:
            data["sip_call_id"] = ev.sip_call_id
        if ev.cause:
            data["cause"] = ev.cause
        if ev.detail:
            data["detail"] = ev.detail
        self._event(rec, f"carrier.{ev.state}", data)
        legs = dict(rec.legs)
        leg = dict(legs.get(ev.leg_id, {}))
        if ev.sip_call_id:
            leg["sip_call_id"] = ev.sip_call_id
        if ev.state == "answered":
            leg["answered_at"] = ev.ts
        legs[ev.leg_id] = leg
        if ev.state != "ended":
            if legs != rec.legs or ev.sip_status != rec.sip_status:
                rec = replace(rec, legs=legs, sip_status=ev.sip_status or rec.sip_status,
                              last_updated=self.clock())
                self.store.save(rec)
            return
        self._active_legs.pop(ev.leg_id, None)
        if self._leg_of_call.get(call_sid) == ev.leg_id:
            self._leg_of_call.pop(call_sid, None)
        self._hangup_requested.discard(call_sid)
        leg["ended_at"] = ev.ts
        leg["cause"] = ev.cause
        legs[ev.leg_id] = leg
        term: Termination = from_leg_end(ev.cause, ev.answered, ev.sip_status, ev.sip_reason,
                                         ev.detail)
        if rec.status in TERMINAL:
            self.store.save(replace(rec, legs=legs))
        else:
            self._set_status(rec, term.result, term.reason, kind=term.kind,
                             sip_status=term.sip_status, legs=legs)
        self._wake.set()  # a slot is free


__all__ = ["CallNotFound", "CallService", "InvalidTransition", "TriggerInput", "new_call_sid"]
