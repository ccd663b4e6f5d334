"""The scheduler: turns queued calls into carrier legs when their window, backoff and the
limits allow (global and per-trunk concurrency, per-trunk CPS buckets, trunk health),
and dials the next hop of attempts waiting in the failover queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace

from sipbridge.calls.context import CallContext
from sipbridge.calls.ending import iso
from sipbridge.calls.live import Attempt, LiveCall
from sipbridge.dialstages import DialStages
from sipbridge.errors import PoolFull
from sipbridge.flow import CallFlow
from sipbridge.headers import validate_header_value
from sipbridge.limits import Bucket, ConcurrencyLimiter, Slots, TokenBucket
from sipbridge.records import CallRecord, LegRecord
from sipbridge.routing import effective_caller_id, resolve_plan
from sipbridge.schedule import is_open, next_open
from sipbridge.throttle import CpsThrottle, is_pushback
from sipbridge.trunkselect import TrunkHealth, hunt_list

log = logging.getLogger("sipbridge.calls")

QUEUE_TIMEOUT_REASON = "call queueing: max timeout limit exceeded"
_NO_SLOT = -1.0  # a queued call found no SIP slot free: stop this scheduling pass
_RETRY_SOON_S = 0.05  # a limit that frees up when a leg ends (a slot, a trunk's cap)


class Dispatcher:
    def __init__(self, ctx: CallContext, on_error: Callable[[str, BaseException], None]):
        self.ctx = ctx
        self.on_error = on_error  # a call whose dispatch raised: end it
        cfg = ctx.cfg
        # in cluster mode, on Redis instead (sipbridge.cluster.redislimits.install)
        self.limiter: Slots = ConcurrencyLimiter(
            global_cap=cfg.limits.max_concurrent_calls,
            per_key={t.name: t.max_concurrent for t in cfg.trunks if t.max_concurrent},
        )
        self.buckets: dict[str, Bucket] = {
            t.name: TokenBucket(t.cps, t.cps_burst, ctx.clock) for t in cfg.trunks if t.cps
        }
        self.health = TrunkHealth()
        # Carrier pushback cuts a trunk's CPS bucket (README "Carrier profiles").
        self.throttles = {
            t.name: CpsThrottle(t.cps, t.throttle.factor, t.throttle.recover_s, t.throttle.min_cps)
            for t in cfg.trunks
            if t.cps and t.throttle.enabled
        }
        self._failover: list[str] = []  # calls whose next hop waits for capacity
        # Carrier pushbacks per trunk since start (metric sipbridge_trunk_throttled_total).
        self.pushbacks: dict[str, int] = {}
        # Pushback requeues per call (bounded by throttle.max_requeues; in memory).
        self._requeues: dict[str, int] = {}
        self._wake = asyncio.Event()
        # The queued calls a pass looks at: every queued call on a single node; in
        # cluster mode the ones this node claimed (sipbridge.cluster.node).
        self.queued: Callable[[], list[CallRecord]] = lambda: ctx.journal.store.by_status("queued")
        # Admission control (sipbridge.loadwatch): True = overloaded, start no new call.
        self.paused: Callable[[], bool] = lambda: False
        # Where a first dial's time goes (sipbridge.dialstages; metrics observe it).
        self.stages = DialStages()
        # Until this time (ctx.clock) a new call has nobody ahead of it and may be dialled
        # at once (dial_new): the last pass left no failover hop and no queued call
        # waiting, except calls whose not_before is later (a retry's backoff, a closed
        # calling window). 0: not clear.
        self._clear_until = 0.0

    def wake(self) -> None:
        """Something changed (a new call, a free slot, a call queued again): schedule a
        pass now; until it has looked, a new call may not be the first in line."""
        self._clear_until = 0.0
        self._wake.set()

    async def run(self, stopping: Callable[[], bool]) -> None:
        while not stopping():
            delay = 1.0
            try:
                delay = self.run_once()
            except Exception:  # never let the dispatcher die; the next wake retries
                log.exception("dispatcher error")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.005, delay))
            self._wake.clear()

    def dial_new(
        self, rec: CallRecord, received: float | None = None, admitted: bool = False
    ) -> None:
        """A call the API has just stored: dialled here and now (in the trigger's handler)
        when nothing waits ahead of it, with the checks of a pass; else, or when a limit
        makes it wait, the dispatcher task's next pass takes it. Dialling at once saves the
        loop's turn between the handler and the task (under CPU contention, the queue
        stage of the trigger->INVITE time), and a call the node accepted is never held
        back by an overload that begins after the 200. Not in cluster mode: there a
        call is dialled only by the node whose pass claimed it. ``received``: when the
        trigger came (monotonic), to time its dial by stage. ``admitted``: admission
        control let the trigger in; the handler awaited since (the API rate limit), and
        other triggers admitted meanwhile may have filled the node's headroom, which must
        not leave this accepted call in the queue (it is dialled, a little over the room;
        a call stored any other way waits while the node is paused)."""
        if received is not None:
            self.stages.start(rec.call_sid, received, time.monotonic())
        now = self.ctx.clock()
        if (
            now >= self._clear_until
            or self.ctx.node_id is not None
            or (not admitted and self.paused())
        ):
            self.wake()
            return
        ok, blocked = self._try_queued(rec, now)
        if ok and blocked is not None:
            self._clear_until = 0.0
            self.wake()

    def _try_queued(self, rec: CallRecord, now: float) -> tuple[bool, float | None]:
        """(True, what :meth:`_dispatch_queued` returned), or (False, None) when it raised:
        the call is failed, and one bad call never stops the others."""
        try:
            return True, self._dispatch_queued(rec, now)
        except Exception as e:
            log.exception(
                "%s: cannot dispatch the call", rec.call_sid, extra={"call_sid": rec.call_sid}
            )
            self.on_error(rec.call_sid, e)
            return False, None

    def run_once(self) -> float:
        """One scheduling pass; returns seconds until the next pass is useful."""
        self._clear_until = 0.0
        now = self.ctx.clock()
        wait = 1.0
        for sid in list(self._failover):
            try:
                blocked = self._dispatch_failover(sid, now)
            except Exception as e:  # one bad call never stops the others
                log.exception("%s: failover dial failed", sid, extra={"call_sid": sid})
                self.on_error(sid, e)
                continue
            if blocked is not None:
                wait = min(wait, blocked)
        if self.paused():  # queued calls stay queued (and unclaimed in cluster mode)
            return wait
        clear_until = 0.0 if self._failover else math.inf
        for rec in self.queued():
            due = rec.not_before if rec.not_before is not None and rec.not_before > now else None
            ok, blocked = self._try_queued(rec, now)
            if not ok:
                continue
            if blocked == _NO_SLOT:
                clear_until = 0.0
                break
            if blocked is not None:
                # waiting for its time: no obstacle to a new call before then
                clear_until = min(clear_until, due) if due is not None else 0.0
                wait = min(wait, blocked)
        self._clear_until = clear_until
        return wait

    # ---- failover queue --------------------------------------------------------------

    def queue_failover(self, live: LiveCall) -> None:
        """The attempt's next hop waits for capacity (dialled by the next pass)."""
        assert live.attempt is not None
        live.attempt.waiting = True
        self._failover.append(live.call_sid)
        self.wake()

    def cancel_failover(self, live: LiveCall) -> bool:
        """Take a call out of the failover queue; False if it was not waiting."""
        if live.attempt is None or not live.attempt.waiting:
            return False
        live.attempt.waiting = False
        if live.call_sid in self._failover:
            self._failover.remove(live.call_sid)
        return True

    def _dispatch_failover(self, sid: str, now: float) -> float | None:
        rec = self.ctx.journal.store.get(sid, now)
        live = self.ctx.registry.get(sid)
        if (
            rec is None
            or rec.terminal
            or live is None
            or live.attempt is None
            or not live.attempt.waiting
        ):
            self._failover.remove(sid)
            return None
        blocked = self.dial_hop(rec, live)
        if blocked is None:
            self._failover.remove(sid)
        return blocked

    # ---- queued calls ----------------------------------------------------------------

    def _dispatch_queued(self, rec: CallRecord, now: float) -> float | None:
        """One queued call in a scheduling pass: None, seconds until it is worth looking
        at again, or ``_NO_SLOT`` (the pass stops: no SIP slot is free)."""
        if rec.damaged:
            raise ValueError(f"stored call record is damaged: {rec.damaged}")
        if now - rec.created_at > self.ctx.cfg.scheduler.max_queue_time_s:
            self.ctx.journal.set_status(rec, "failure", QUEUE_TIMEOUT_REASON, kind="queue_timeout")
            return None
        if rec.not_before is not None and rec.not_before > now:
            return rec.not_before - now
        opens = self._window_opens_at(rec, now)
        if opens is not None:
            return max(opens - now, 0.005)
        if self.ctx.pool.free_slots() <= 0:
            return _NO_SLOT
        return self.start_attempt(rec, now)

    def _window_opens_at(self, rec: CallRecord, now: float) -> float | None:
        """None if the call may be dialled now; else when its window opens (the call
        is parked with not_before and a reason saying when)."""
        journal = self.ctx.journal
        try:
            policy = self.ctx.policies.of(rec)
            if policy.window_problem:
                raise ValueError(policy.window_problem)
        except ValueError as e:
            journal.set_status(
                rec, "failure", "cannot schedule", kind="window_error", detail=str(e)
            )
            return now + 3600
        window, zones = policy.window, policy.zones
        if window is None or is_open(window, zones, now):
            return None
        nxt = next_open(window, zones, now)
        if nxt is None:
            journal.set_status(
                rec,
                "failure",
                "calling window never opens",
                kind="window_error",
                detail=f"not within 8 days in {', '.join(zones)}",
            )
            return now + 3600
        at = nxt.timestamp()
        rec = journal.update(
            rec, not_before=at, reason=f"outside calling window; will be attempted at {iso(at)}"
        )
        journal.event(rec, "scheduled", {"not_before": iso(at), "zones": list(zones)})
        return at

    def start_attempt(self, rec: CallRecord, now: float) -> float | None:
        """Begin the next attempt of a call; None when dialled, else seconds to wait
        (all its trunks resting, or trunk limits)."""
        policy = self.ctx.policies.of(rec)
        hunt = hunt_list(policy.candidates, self.ctx.rng, self.health, now)
        if not hunt:
            resting = self.health.earliest_available(policy.trunks, now)
            wait = (resting - now) if resting else 1.0
            return max(wait, 0.005)
        self.stages.mark(rec.call_sid, "picked", time.monotonic())
        live = self.ctx.registry.open(rec.call_sid)
        live.attempt = Attempt(number=rec.attempts + 1, hunt=hunt, started_at=now)
        blocked = self.dial_hop(rec, live)
        if blocked is not None:
            live.end_attempt()
            self.ctx.registry.settle(rec.call_sid)
        return blocked

    # ---- dialling one hop ------------------------------------------------------------

    def _next_trunk(self, attempt: Attempt) -> str | None:
        """The hop's trunk if its limits allow a leg now (its concurrency slot taken).
        A trunk at its concurrency cap is passed over (overflow) before the first leg of
        the attempt; a trunk out of CPS tokens makes the call wait, since a carrier's
        CPS cap is per trunk and waiting a fraction of a second beats spilling traffic
        to a lower-priority carrier."""
        while attempt.hop < len(attempt.hunt):
            name = attempt.hunt[attempt.hop]
            limit = self.limiter.limit(name)
            if limit is not None and self.limiter.active(name) >= limit:
                if attempt.tried or attempt.hop + 1 >= len(attempt.hunt):
                    return None
                attempt.hop += 1
                continue
            return name if self.limiter.try_acquire(name) else None
        return None

    def dial_hop(self, rec: CallRecord, live: LiveCall) -> float | None:
        """Dial the current hop of the call's attempt if limits allow: None when
        dialled, else the seconds until it may be possible."""
        ctx = self.ctx
        attempt = live.attempt
        assert attempt is not None
        if ctx.pool.free_slots() <= 0:
            return _RETRY_SOON_S
        now = ctx.clock()
        name = self._next_trunk(attempt)
        if name is None:
            return _RETRY_SOON_S
        bucket = self.buckets.get(name)
        throttle = self.throttles.get(name)
        if bucket is not None and throttle is not None:
            bucket.set_rate(throttle.current(now))
        if bucket is not None and not bucket.try_take():
            self.limiter.release(name)
            return max(bucket.wait_time(), 0.001)
        trunk = ctx.cfg.trunk(name)
        req = rec.request
        from_number = effective_caller_id(trunk, req.from_number)
        policy = ctx.policies.of(rec)
        try:
            plan = resolve_plan(
                ctx.cfg,
                call_sid=rec.call_sid,
                to_number=rec.to_number,
                from_number=from_number,
                metadata=req.metadata,
                polyai_call_id=rec.polyai_call_id,
                attempt=attempt.number,
                bridge_host=ctx.bridge_host,
                trunk=trunk,
                hop=attempt.hop,
                encryption=req.encryption,
                detection=policy.detection_plan(),
            )
        except ValueError as e:  # config changed since the trigger: fail clearly
            self.limiter.release(name)
            live.end_attempt()
            ctx.journal.set_status(
                rec, "failure", "could not place call", kind="plan_error", detail=str(e)
            )
            return None
        if req.copy_headers:  # SIP-triggered: headers the config copies from the INVITE
            extra = tuple(
                (k, validate_header_value(v, f"header {k}")) for k, v in req.copy_headers.items()
            )
            plan = replace(plan, headers=plan.headers + extra)
        if not ctx.journal.may_dial(rec):  # cluster: this node lost the call
            self.limiter.release(name)
            live.end_attempt()
            ctx.registry.settle(rec.call_sid)
            log.warning("%s: not dialled: the call belongs to another node now", rec.call_sid)
            return None
        try:
            # One slot stays reserved on the same worker for the agent leg (an inbound
            # call's agent leg exists already: its carrier leg joins it on its worker).
            if live.inbound_worker is not None:
                worker = ctx.pool.dial(plan, prefer_worker=live.inbound_worker)
            else:
                worker = ctx.pool.dial(plan, reserve=1)
        except PoolFull:
            self.limiter.release(name)
            return _RETRY_SOON_S
        self.stages.mark(rec.call_sid, "sent", time.monotonic())
        attempt.leg_id, attempt.trunk, attempt.waiting = plan.leg_id, name, False
        ctx.registry.add_leg(live, plan.leg_id, "carrier", worker)
        if live.flow is None:  # one flow per attempt, whatever hop answers
            live.flow = CallFlow(policy.detection, policy.ivr)
        leg = LegRecord(
            role="carrier",
            trunk=name,
            worker=worker,
            attempt=attempt.number,
            request_uri=plan.request_uri,
            invite_at=now,
        )
        if rec.status == "calling":
            rec = ctx.journal.update_leg(rec, plan.leg_id, leg, trunk=name, from_number=from_number)
            ctx.journal.event(rec, "dial", {"leg": plan.leg_id, "trunk": name, "hop": attempt.hop})
        else:
            ctx.journal.set_status(
                rec,
                "calling",
                "",
                kind="dial",
                attempts=attempt.number,
                trunk=name,
                legs=rec.with_leg(plan.leg_id, leg),
                not_before=None,
                from_number=from_number,
            )
        return None

    def may_requeue(self, call_sid: str, trunk: str) -> bool:
        """Count one pushback requeue of ``call_sid``; False past the trunk's
        ``throttle.max_requeues`` (the attempt then ends as usual)."""
        n = self._requeues.pop(call_sid, 0) + 1
        if n > self.ctx.cfg.trunk(trunk).throttle.max_requeues:
            return False
        self._requeues[call_sid] = n
        while len(self._requeues) > 10_000:  # forget the oldest calls first
            self._requeues.pop(next(iter(self._requeues)))
        return True

    def leg_ended(
        self,
        trunk: str | None,
        sip_status: int | None,
        retry_after_s: float | None,
        sip_reason: str = "",
        answered: bool = False,
    ) -> bool:
        """A carrier leg on ``trunk`` ended: its concurrency slot is free again. True
        when the end was the carrier pushing back (sipbridge.throttle): the trunk's dial
        rate is cut (or, without a ``cps``, the trunk rests a moment) and the caller
        queues the call again instead of failing it."""
        if trunk and self.limiter.active(trunk) > 0:
            self.limiter.release(trunk)
        now = self.ctx.clock()
        if trunk and sip_status == 503 and retry_after_s:
            # RFC 3261 21.5.4: the trunk asked us to stay away for Retry-After seconds.
            self.health.mark_unavailable(trunk, now + retry_after_s)
        pushback = (
            trunk is not None
            and not answered
            and self.ctx.cfg.trunk(trunk).throttle.enabled
            and is_pushback(sip_status, sip_reason, retry_after_s)
        )
        if trunk and pushback:
            self.pushbacks[trunk] = self.pushbacks.get(trunk, 0) + 1
            throttle, bucket = self.throttles.get(trunk), self.buckets.get(trunk)
            if throttle is not None and bucket is not None:
                bucket.set_rate(throttle.pushback(now, retry_after_s))
                bucket.drain()
                log.warning(
                    "trunk %s pushed back (%s %s): dial rate cut to %.3g cps",
                    trunk,
                    sip_status,
                    sip_reason,
                    bucket.rate_per_s,
                )
            else:  # no CPS bucket to cut: at most one call a second while it pushes back
                self.health.mark_unavailable(trunk, now + max(retry_after_s or 0.0, 1.0))
        self.wake()
        return pushback


__all__ = ["QUEUE_TIMEOUT_REASON", "Dispatcher"]
