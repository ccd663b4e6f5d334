"""Carrying out what a call's flow decided (sipbridge.flow actions): end the call, dial
and bridge the agent, send IVR digits, listen on hold, play a voicemail message, start
timers. An action that raises ends its call as "internal error"."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from sipbridge.calls.context import CallContext
from sipbridge.calls.ending import Endings
from sipbridge.calls.inbound import InboundCalls
from sipbridge.calls.live import LiveCall
from sipbridge.errors import InputError, PoolFull
from sipbridge.flow import (
    Action,
    CallFlow,
    DialAgent,
    EndCall,
    PlayMessage,
    SayPrompt,
    SendDigits,
    StartHold,
    StartTimer,
    TellAgent,
    WatchRepeat,
    agent_failure,
)
from sipbridge.mediafiles import media_path
from sipbridge.outcomes import Termination
from sipbridge.records import CallRecord, LegRecord
from sipbridge.routing import detection_info, resolve_agent_plan

log = logging.getLogger("sipbridge.calls")

NO_AGENT_SLOT = Termination(
    "failure",
    "agent leg failed",
    "bridge_error",
    True,
    None,
    "no SIP worker capacity for the agent leg",
)


class Actions:
    def __init__(self, ctx: CallContext, endings: Endings, inbound: InboundCalls) -> None:
        self.ctx = ctx
        self.endings = endings
        self.inbound = inbound

    def execute(self, call_sid: str, actions: list[Action]) -> None:
        for action in actions:
            try:
                self.execute_one(call_sid, action)
            except Exception as e:
                log.exception(
                    "%s: action %r failed", call_sid, action, extra={"call_sid": call_sid}
                )
                self.endings.fail_call(call_sid, e)
                return

    def execute_one(self, call_sid: str, action: Action) -> None:
        ctx = self.ctx
        rec = ctx.journal.store.get(call_sid, ctx.clock())
        live = ctx.registry.get(call_sid)
        if rec is None or rec.terminal or live is None:
            return
        carrier = live.carrier_leg
        if isinstance(action, EndCall):
            if live.pending_term is None:
                live.pending_term = action.term
            log.info(
                "%s: ending call: %s", call_sid, action.term.reason, extra={"call_sid": call_sid}
            )
            hung = carrier is not None and ctx.pool.hangup(carrier)
            if live.agent_leg is not None:
                ctx.pool.hangup(live.agent_leg)
            if not hung and live.inbound and carrier is None:
                self.inbound.finish_without_carrier(rec, live, action.term)
        elif isinstance(action, DialAgent):
            self.dial_agent(rec, live, action.answered_by, action.hint)
        elif isinstance(action, SendDigits) and carrier is not None:
            ctx.journal.event(rec, "dtmf.send", {"leg": carrier, "digits": action.digits})
            ctx.pool.send_dtmf(carrier, action.digits, action.duration_ms, action.gap_ms)
        elif isinstance(action, WatchRepeat) and carrier is not None:
            ctx.pool.listen(carrier, "repeat", {})
        elif isinstance(action, StartHold) and carrier is not None:
            ctx.journal.event(rec, "hold", {"leg": carrier})
            ctx.pool.listen(carrier, "hold", {})
        elif isinstance(action, PlayMessage) and carrier is not None:
            path = str(media_path(ctx.cfg.media.dir, action.path))  # re-checked now
            ctx.journal.event(rec, "voicemail.play", {"leg": carrier, "path": action.path})
            ctx.pool.play(carrier, path)
        elif isinstance(action, SayPrompt) and carrier is not None:
            ctx.journal.event(rec, "ivr.say", {"leg": carrier, "path": action.path})
            try:
                path = str(media_path(ctx.cfg.media.dir, action.path, "say"))  # re-checked now
            except InputError as e:  # gone since the trigger: the step fails, not the bridge
                if live.flow is not None:
                    self.execute(call_sid, live.flow.on_playback_done(str(e)))
                return
            if action.mark_menu:
                ctx.pool.listen(carrier, "repeat", {"mark": True})
            ctx.pool.play(carrier, path)
        elif isinstance(action, TellAgent) and live.agent_leg is not None:
            ctype, body, headers = detection_info(
                call_sid, action.answered_by, action.hint, action.final
            )
            ctx.journal.event(
                rec,
                "agent.info",
                {"leg": live.agent_leg, "answered_by": action.answered_by, "hint": action.hint},
            )
            ctx.pool.send_info(live.agent_leg, ctype, body, headers)
        elif isinstance(action, StartTimer):
            loop = asyncio.get_running_loop()
            live.timers.append(
                loop.call_later(action.delay_s, self.on_timer, call_sid, action.name, live.flow)
            )

    def on_timer(self, call_sid: str, name: str, flow: CallFlow | None) -> None:
        live = self.ctx.registry.get(call_sid)
        if flow is None or live is None or live.flow is not flow:
            return  # a timer of an attempt that is over
        try:
            actions = flow.on_timer(name)
        except Exception as e:
            log.exception("%s: timer %s failed", call_sid, name, extra={"call_sid": call_sid})
            self.endings.fail_call(call_sid, e)
            return
        self.execute(call_sid, actions)

    def dial_agent(
        self, rec: CallRecord, live: LiveCall, answered_by: str | None, hint: str | None = None
    ) -> None:
        """The agent leg (a-leg), bridged with the carrier leg once both are answered."""
        ctx = self.ctx
        carrier = live.carrier_leg
        if carrier is None or live.inbound:
            return  # SIP-triggered: the agent is already on the line (the inbound leg)
        try:
            plan = resolve_agent_plan(
                ctx.cfg,
                call_sid=rec.call_sid,
                carrier_leg_id=carrier,
                to_number=rec.to_number,
                from_number=rec.from_number,
                metadata=rec.request.metadata,
                polyai_call_id=rec.polyai_call_id,
                answered_by=answered_by,
                answered_by_hint=hint,
                bridge_host=ctx.bridge_host,
                index=rec.attempts,
            )
        except ValueError as e:  # e.g. a header value the agent leg must not carry
            log.warning(
                "%s: cannot dial the agent: %s", rec.call_sid, e, extra={"call_sid": rec.call_sid}
            )
            term = replace(agent_failure(None, "", f"cannot dial the agent: {e}"), retryable=False)
            self.execute(rec.call_sid, [EndCall(term)])
            return
        try:
            worker = ctx.pool.dial(plan, prefer_worker=live.leg_worker(carrier))
        except PoolFull:
            self.execute(rec.call_sid, [EndCall(NO_AGENT_SLOT)])
            return
        ctx.registry.add_leg(live, plan.leg_id, "agent", worker)
        leg = LegRecord(
            role="agent",
            worker=worker,
            request_uri=plan.request_uri,
            invite_at=ctx.clock(),
            bridge_with=carrier,
        )
        rec = ctx.journal.update_leg(rec, plan.leg_id, leg)
        dial = {"leg": plan.leg_id, "answered_by": answered_by}
        ctx.journal.event(rec, "agent.dial", {**dial, "hint": hint} if hint else dial)


__all__ = ["Actions"]
