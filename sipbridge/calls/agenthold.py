"""Hold on request, in the call manager: the REST ``/hold`` action, the record of what the
worker's hold did (events ``agent.hold.<state>``), and the escape hatch.

The worker runs the hold itself (sipbridge.sip.agenthold: the resume must not wait for a
round trip through here). This side starts a timer when a hold starts: a hold that lasts
longer than the call's ``ivr.max_ivr_s`` (600 s without an ``ivr`` section: the same limit
as the scripted IVR/hold step) ends the call as the retryable failure "IVR/hold time limit
exceeded" (``ivr_timeout``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sipbridge.calls.actions import Actions
from sipbridge.calls.context import CallContext
from sipbridge.callsettings import IvrSettings
from sipbridge.errors import CallNotFound, InvalidTransition
from sipbridge.flow import IVR_TIMEOUT, EndCall
from sipbridge.holdcontrol import AGENT_HOLD_PHASE
from sipbridge.ipc import AgentHoldEvent
from sipbridge.records import CallRecord

log = logging.getLogger("sipbridge.calls")

DEFAULT_MAX_HOLD_S = float(IvrSettings.model_fields["max_ivr_s"].default)


@dataclass(frozen=True)
class _Hold:
    """One hold of one call (the timer checks it is still the current one)."""

    carrier_leg: str


class AgentHolds:
    def __init__(self, ctx: CallContext, actions: Actions) -> None:
        self.ctx = ctx
        self.actions = actions
        self.current: dict[str, _Hold] = {}  # call_sid -> the hold in progress

    def request(self, call_sid: str) -> CallRecord:
        """``POST /hold``: put the bridged call's agent on hold. CallNotFound, or
        InvalidTransition when the call has no bridged agent (or is on hold already)."""
        ctx = self.ctx
        rec = ctx.journal.store.get(call_sid, ctx.clock())
        if rec is None:
            raise CallNotFound(call_sid)
        live = ctx.registry.get(call_sid)
        carrier = rec.leg(live.carrier_leg) if live and live.carrier_leg else None
        agent = rec.leg(live.agent_leg) if live and live.agent_leg else None
        if (
            rec.terminal
            or live is None
            or live.carrier_leg is None
            or carrier is None
            or carrier.answered_at is None
            or agent is None
            or agent.answered_at is None
        ):
            raise InvalidTransition(
                f"call {call_sid} is not bridged to an agent (status {rec.status})"
            )
        if call_sid in self.current:
            raise InvalidTransition(f"call {call_sid} is on hold already")
        ctx.journal.event(rec, "agent.hold.requested", {"leg": live.carrier_leg, "by": "api"})
        if not ctx.pool.listen(live.carrier_leg, AGENT_HOLD_PHASE, {}):
            raise InvalidTransition(f"call {call_sid}: its carrier leg is gone")
        return rec

    def on_event(self, ev: AgentHoldEvent) -> None:
        ctx = self.ctx
        live = ctx.registry.of_leg(ev.leg_id)
        sid = live.call_sid if live is not None else ev.call_sid
        rec = ctx.journal.store.get(sid, ctx.clock())
        if rec is None or rec.terminal:
            return
        data: dict[str, object] = {"leg": ev.leg_id, "via": ev.via}
        if ev.detail:
            data["detail"] = ev.detail
        data.update(ev.timings)
        ctx.journal.event(rec, f"agent.hold.{ev.state}", data)
        log.info(
            "%s: agent hold %s (%s) %s",
            sid,
            ev.state,
            ev.via,
            ev.detail,
            extra={"call_sid": sid},
        )
        for gone in [k for k in self.current if k not in ctx.registry]:
            del self.current[gone]  # calls that ended while on hold
        if ev.state == "holding" and live is not None and live.flow is not None:
            hold = self.current[sid] = _Hold(ev.leg_id)
            ivr = live.flow.ivr
            limit_s = ivr.max_ivr_s if ivr is not None else DEFAULT_MAX_HOLD_S
            loop = asyncio.get_running_loop()
            live.timers.append(loop.call_later(limit_s, self._expired, sid, hold, live.flow))
        elif ev.state in ("resumed", "refused"):
            self.current.pop(sid, None)
            if ev.state == "resumed" and ev.via == "person" and rec.answered_by != "human":
                # the hold listener heard a person: status, CDR and metrics say what the
                # agent's re-INVITE header says
                ctx.journal.update(rec, answered_by="human")
            if ev.state == "resumed" and ev.via == "person" and live and live.flow:
                # and stays so: the answer-phase detector's later verdicts are events only
                live.flow.answered_by, live.flow.hold_heard_person = "human", True

    def _expired(self, call_sid: str, hold: _Hold, flow: object) -> None:
        if self.current.get(call_sid) is not hold:
            return  # resumed since
        del self.current[call_sid]
        live = self.ctx.registry.get(call_sid)
        if live is None or live.flow is not flow:
            return  # that attempt is over
        log.info("%s: agent hold too long", call_sid, extra={"call_sid": call_sid})
        self.actions.execute(call_sid, [EndCall(IVR_TIMEOUT)])


__all__ = ["DEFAULT_MAX_HOLD_S", "AgentHolds"]
