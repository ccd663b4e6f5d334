"""What the SIP engine reports, applied to calls: carrier and agent leg progress and ends,
detection results, DTMF and playback. A carrier leg's end ends the attempt: failover to
the next trunk of the hunt list, requeue at shutdown, or the attempt's outcome."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sipbridge.calls.actions import Actions
from sipbridge.calls.agenthold import AgentHolds
from sipbridge.calls.context import CallContext
from sipbridge.calls.dispatch import Dispatcher
from sipbridge.calls.dispositions import on_bye_headers
from sipbridge.calls.ending import Endings
from sipbridge.calls.inbound import InboundCalls
from sipbridge.calls.live import LiveCall, TriedLeg
from sipbridge.errors import StoreUnavailable
from sipbridge.flow import Action, CallFlow, EndCall, agent_failure
from sipbridge.ipc import (
    AgentHoldEvent,
    ByeHeaders,
    CallReport,
    DetectionReport,
    DtmfReceived,
    DtmfSent,
    InboundCall,
    LegEvent,
    PlaybackDone,
)
from sipbridge.outcomes import MEDIA_TIMEOUT, Termination, agent_dialog_lost, from_leg_end
from sipbridge.records import CallRecord, LegRecord
from sipbridge.trunkselect import should_failover

log = logging.getLogger("sipbridge.calls")

SipEvent = CallReport
CANCELED_BY_AGENT = Termination("failure", "canceled by agent platform", "canceled", False)
# Ends after which a pending termination (why the bridge ended the call) applies.
_OUR_END_CAUSES = ("local_hangup", "remote_bye", "remote_final", "bridged_bye")


def _sip_data(ev: LegEvent, keys: tuple[str, ...]) -> dict[str, Any]:
    data: dict[str, Any] = {"leg": ev.leg_id, "sip_status": ev.sip_status}
    for key in keys:
        if getattr(ev, key):
            data[key] = getattr(ev, key)
    return data


def _agent_failure(rec: CallRecord) -> Termination | None:
    """The carrier leg was ended because its agent leg ended: if the agent never
    answered, that is an agent failure, whatever order the two ends arrived in."""
    for leg in rec.legs.values():
        if (
            leg.role == "agent"
            and leg.ended_at
            and leg.answered_at is None
            and leg.direction != "inbound"
        ):
            return agent_failure(leg.sip_status, leg.sip_reason or "")
    return None


class SipEvents:
    def __init__(
        self,
        ctx: CallContext,
        dispatcher: Dispatcher,
        endings: Endings,
        actions: Actions,
        inbound: InboundCalls,
        stopping: Callable[[], bool],
    ):
        self.ctx = ctx
        self.dispatcher = dispatcher
        self.endings = endings
        self.actions = actions
        self.inbound = inbound
        self.stopping = stopping
        self.agent_holds = AgentHolds(ctx, actions)

    def handle(self, ev: SipEvent, park: bool = False) -> None:
        """A handler that raises ends that call as ``failure`` "internal error" (the
        exception goes to the log and ``detail``): no event leaves a call half-handled
        and non-terminal. Then the call is forgotten if nothing about it is live.
        ``park``: a store that cannot be reached now raises StoreUnavailable instead, for
        the caller to handle the event again later (sipbridge.calls.backlog)."""
        registry = self.ctx.registry
        leg_id = getattr(ev, "leg_id", None)
        sid = registry.call_sid_of(leg_id or "", "") or getattr(ev, "call_sid", None)
        try:
            self._handle(ev)
        except Exception as e:
            if park and isinstance(e, StoreUnavailable):
                raise
            log.exception(
                "%s: handling %s failed",
                sid or "-",
                type(ev).__name__,
                extra={"call_sid": sid} if sid else {},
            )
            if sid:
                self.endings.fail_call(sid, e)
            elif isinstance(ev, InboundCall):
                with contextlib.suppress(Exception):
                    self.ctx.pool.respond(ev.leg_id, 500, "Server Internal Error")
        if sid:
            registry.settle(sid)

    def _handle(self, ev: SipEvent) -> None:
        if isinstance(ev, DetectionReport):
            self.on_detection(ev)
        elif isinstance(ev, LegEvent):
            if self.ctx.registry.role_of(ev.leg_id) == "agent":
                self.on_agent(ev)
            else:
                self.on_carrier(ev)
        elif isinstance(ev, DtmfSent):
            self._on_flow_event(
                ev.leg_id,
                ev.call_sid,
                "dtmf.sent",
                {"digits": ev.digits},
                lambda f: f.on_digits_sent(),
            )
        elif isinstance(ev, PlaybackDone):
            live = self.ctx.registry.get(ev.call_sid)
            ivr = live is not None and live.flow is not None and live.flow.awaiting == "say"
            self._on_flow_event(
                ev.leg_id,
                ev.call_sid,
                "ivr.said" if ivr else "voicemail.played",
                {"path": ev.path, "error": ev.error},
                lambda f: f.on_playback_done(ev.error),
            )
        elif isinstance(ev, DtmfReceived):
            self._on_flow_event(
                ev.leg_id,
                ev.call_sid,
                "dtmf.received",
                {
                    "digit": ev.digit,
                    "duration_ms": ev.duration_ms,
                    "method": ev.method,
                    "relayed_to": ev.relayed_to,
                },
                lambda f: [],
            )
        elif isinstance(ev, InboundCall):
            self.inbound.on_invite(ev)
        elif isinstance(ev, ByeHeaders):
            on_bye_headers(self.ctx, ev)
        elif isinstance(ev, AgentHoldEvent):
            self.agent_holds.on_event(ev)
        else:
            log.warning("unexpected event from the SIP engine: %r", ev)

    def _call(self, leg_id: str, call_sid: str) -> tuple[str, LiveCall | None, CallRecord | None]:
        live = self.ctx.registry.of_leg(leg_id)
        sid = live.call_sid if live else call_sid
        live = live or self.ctx.registry.get(sid)
        return sid, live, self.ctx.journal.store.get(sid, self.ctx.clock())

    def _on_flow_event(
        self,
        leg_id: str,
        call_sid: str,
        kind: str,
        data: dict[str, Any],
        step: Callable[[CallFlow], list[Action]],
    ) -> None:
        sid, live, rec = self._call(leg_id, call_sid)
        if rec is None or rec.terminal:
            return
        self.ctx.journal.event(rec, kind, {"leg": leg_id, **data})
        if live is not None and live.flow is not None:
            self.actions.execute(sid, step(live.flow))

    def on_detection(self, rep: DetectionReport) -> None:
        """A detection result from the worker: record it, and let the call's flow decide
        (SIT, busy/reorder tone, fax, machine policy, connect the agent, hold result)."""
        sid, live, rec = self._call(rep.leg_id, rep.call_sid)
        if rec is None or rec.terminal:
            return
        det = rep.detection
        answered_by = det.answered_by
        self.ctx.journal.event(
            rec,
            "detection",
            {"leg": rep.leg_id, "phase": rep.phase, "kind": rep.kind, **det.to_dict()},
        )
        leg = rec.leg(rep.leg_id) or LegRecord()
        leg = replace(leg, detection={**leg.detection, rep.phase: det})
        changes: dict[str, Any] = {}
        if (
            rep.phase == "answer"
            and answered_by
            and answered_by != "sit"
            and not (live is not None and live.flow is not None and live.flow.hold_heard_person)
        ):
            changes["answered_by"] = answered_by
        elif (
            rep.phase == "hold"
            and answered_by == "human"
            and live is not None
            and live.flow is not None
            and live.flow.state == "holding"
        ):
            # The hold listener heard the person after the IVR: the call was answered by
            # a human (status, CDR and metrics say what the agent's header says).
            changes["answered_by"] = "human"
        self.ctx.journal.update_leg(rec, rep.leg_id, leg, **changes)
        if live is not None and live.flow is not None:
            self.actions.execute(sid, live.flow.on_detection(rep.phase, det))

    def on_agent(self, ev: LegEvent) -> None:
        ctx = self.ctx
        sid, live, rec = self._call(ev.leg_id, ev.call_sid)
        if rec is None:
            return
        ctx.journal.event(
            rec,
            f"agent.{ev.state}",
            _sip_data(ev, ("sip_reason", "sip_call_id", "cause", "detail")),
        )
        leg = rec.leg(ev.leg_id) or LegRecord(role="agent")
        if ev.sip_call_id:
            leg = replace(leg, sip_call_id=ev.sip_call_id)
        if ev.state == "answered":
            leg = replace(leg, answered_at=ev.ts)
        if ev.state == "ended":
            leg = replace(
                leg,
                ended_at=ev.ts,
                cause=ev.cause,
                sip_status=ev.sip_status,
                sip_reason=ev.sip_reason,
            )
        rec = ctx.journal.update_leg(rec, ev.leg_id, leg)
        flow = live.flow if live is not None else None
        if ev.state != "ended" and (rec.terminal or flow is None):
            # The call (or this attempt's carrier leg) is over already: an agent leg
            # that is still ringing or answered must not outlive it (CANCEL / BYE).
            log.info(
                "%s: agent leg %s %s after its call ended: hanging it up",
                sid,
                ev.leg_id,
                ev.state,
                extra={"call_sid": sid},
            )
            ctx.pool.hangup(ev.leg_id)
            return
        if ev.state == "answered" and flow is not None:
            self.actions.execute(sid, flow.on_agent_answered())
        if ev.state != "ended":
            return
        ctx.registry.end_leg(ev.leg_id)
        if rec.terminal or flow is None or live is None:
            return
        if ev.cause == "media_timeout":
            # No RTP from the agent: the worker ends the carrier leg with it.
            self.actions.execute(
                sid,
                [
                    EndCall(
                        Termination(
                            "failure",
                            MEDIA_TIMEOUT,
                            "media_timeout",
                            False,
                            None,
                            f"no RTP from the agent leg: {ev.detail}".rstrip(": "),
                        )
                    )
                ],
            )
        elif live.inbound:
            # The agent platform hung up (or cancelled) its INVITE: end the carrier leg.
            if not ev.answered:
                self.actions.execute(sid, [EndCall(CANCELED_BY_AGENT)])
        elif not ev.answered and ev.cause != "bridged_bye":
            self.actions.execute(sid, flow.on_agent_failed(ev.sip_status, ev.sip_reason))
        elif ev.cause == "transport_error":
            # The agent's dialog died under the answered call (a 481 to the detection
            # INFO: RFC 3261 12.2.1.2); the worker ends the carrier leg with it
            # ("bridged_bye", always reported after this end), and this outcome applies.
            self.actions.execute(
                sid, [EndCall(agent_dialog_lost(ev.sip_status, ev.detail or ev.sip_reason))]
            )

    def on_carrier(self, ev: LegEvent) -> None:
        ctx = self.ctx
        sid, live, rec = self._call(ev.leg_id, ev.call_sid)
        if rec is None:
            log.warning("event for unknown call %s: %s", sid, ev)
            return
        ctx.journal.event(
            rec,
            f"carrier.{ev.state}",
            _sip_data(ev, ("sip_reason", "sip_call_id", "cause", "detail", "retry_after_s")),
        )
        leg = rec.leg(ev.leg_id) or LegRecord()
        if ev.sip_call_id:
            leg = replace(leg, sip_call_id=ev.sip_call_id)
        if ev.state in ("ringing", "early") and leg.ring_at is None:
            leg = replace(leg, ring_at=ev.ts)
        if ev.state == "answered":
            leg = replace(leg, answered_at=ev.ts)
        if ev.state != "ended":
            rec = ctx.journal.update_leg(
                rec, ev.leg_id, leg, sip_status=ev.sip_status or rec.sip_status
            )
            if live is not None and live.inbound and not rec.terminal:
                self.inbound.relay(live, ev)
            if ev.state == "answered" and live is not None and live.flow is not None:
                self.actions.execute(sid, live.flow.on_answered())
            return
        ctx.registry.end_leg(ev.leg_id)
        leg = replace(leg, ended_at=ev.ts, cause=ev.cause, sip_status=ev.sip_status)
        attempt = live.attempt if live is not None else None
        trunk = leg.trunk or (attempt.trunk if attempt else None)
        pushback = self.dispatcher.leg_ended(
            trunk, ev.sip_status, ev.retry_after_s, ev.sip_reason or "", ev.answered
        )
        if rec.terminal:
            ctx.journal.update_leg(rec, ev.leg_id, leg, touch=False)
            return
        # (no LiveCall: a late end of a call whose attempt is over; it ends as recorded)
        self._end_attempt(
            live or LiveCall(sid),
            replace(rec, legs=rec.with_leg(ev.leg_id, leg)),
            ev,
            trunk,
            pushback,
        )

    def _end_attempt(
        self,
        live: LiveCall,
        rec: CallRecord,
        ev: LegEvent,
        trunk: str | None,
        pushback: bool = False,
    ) -> None:
        """The carrier leg of the attempt ended (``rec`` has its end): fail over, requeue
        or finish the attempt."""
        ctx = self.ctx
        attempt = live.attempt
        tried = [
            *(attempt.tried if attempt else []),
            TriedLeg(trunk, ev.leg_id, ev.sip_status, ev.cause),
        ]
        hangup = live.hangup_requested
        # Answered per the worker's end event, or per the record (an end the pool had to
        # synthesise cannot always know): an answered leg is never requeued or failed over.
        leg = rec.leg(ev.leg_id)
        answered = ev.answered or (leg is not None and leg.answered_at is not None)
        if (
            attempt is not None
            and not answered
            and not hangup
            and not self.stopping()
            and live.pending_term is None
            and should_failover(ev.sip_status, ev.cause)
            and attempt.hop + 1 < len(attempt.hunt)
        ):
            attempt.tried = tried
            attempt.hop += 1
            attempt.leg_id = None
            rec = ctx.journal.update(rec, touch=False)
            ctx.journal.event(
                rec,
                "failover",
                {
                    "from_trunk": trunk,
                    "to_trunk": attempt.hunt[attempt.hop],
                    "sip_status": ev.sip_status,
                    "cause": ev.cause,
                },
            )
            self.dispatcher.queue_failover(live)
            return
        connected = live.flow is not None and live.flow.agent_connected
        if live.agent_leg is not None and not live.inbound:
            # The carrier leg is gone: its agent leg goes too, whatever state it is in
            # (the worker does the same for a paired leg; this covers the races).
            ctx.pool.hangup(live.agent_leg)
        if live.inbound:
            self.inbound.carrier_ended(live, ev)
        pending, inbound = live.pending_term, live.inbound
        live.end_attempt()
        if self.stopping() and ev.cause == "local_hangup" and not answered and pending is None:
            # Shut down before answer: the call is not lost, it waits for the next start.
            ctx.journal.set_status(
                rec,
                "queued",
                "requeued: bridge shut down before answer",
                kind="requeued",
                attempts=max(rec.attempts - 1, 0),
            )
            return
        if (
            pushback
            and trunk
            and not answered
            and not hangup
            and pending is None
            and not inbound
            and not self.stopping()
            and self.dispatcher.may_requeue(rec.call_sid, trunk)
        ):
            # The carrier asked us to slow down (503/403 naming CPS or rate, or a
            # Retry-After): the trunk's rate is cut and the call waits its turn again;
            # the attempt does not count (max_queue_time_s still bounds the wait).
            ctx.journal.set_status(
                rec,
                "queued",
                f"requeued: trunk {trunk} pushed back "
                f"({ev.sip_status} {ev.sip_reason or ''}".rstrip()
                + "); dialling it slower",
                kind="requeued",
                attempts=max(rec.attempts - 1, 0),
                sip_status=ev.sip_status,
            )
            self.dispatcher.wake()
            return
        term = from_leg_end(
            ev.cause, answered, ev.sip_status, ev.sip_reason, ev.detail, connected=connected
        )
        if pending is None and ev.cause == "bridged_bye":
            pending = _agent_failure(rec)
        if pending is not None and ev.cause in _OUR_END_CAUSES:
            # We hung up because of what we heard (or the carrier beat us to it).
            term = replace(pending, sip_status=ev.sip_status)
            hangup = False
        elif self.stopping() and ev.cause == "local_hangup" and answered:
            term = replace(term, reason="ended by bridge shutdown")
        self.endings.finish_attempt(rec, term, tried, no_retry=hangup, inbound=inbound)


__all__ = ["SipEvent", "SipEvents"]
