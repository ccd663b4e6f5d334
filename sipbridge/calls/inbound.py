"""SIP-triggered mode: an INVITE from the agent platform becomes a call. The destination
comes from the Request-URI or a header; the carrier leg is dialled on the INVITE's worker
and its progress is relayed back as the INVITE's responses (RFC 3261 13.3.1)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from sipbridge.calls.context import CallContext
from sipbridge.calls.dispatch import Dispatcher
from sipbridge.calls.live import Attempt, LiveCall
from sipbridge.calls.trigger import TriggerInput
from sipbridge.errors import NumberError
from sipbridge.ipc import InboundCall, LegEvent
from sipbridge.numbers import to_e164
from sipbridge.outcomes import Termination
from sipbridge.records import CallRecord, LegRecord
from sipbridge.trunkselect import hunt_list

log = logging.getLogger("sipbridge.calls")

NO_TRUNK = Termination("failure", "no trunk available", "carrier_error", False, 503)
TRUNKS_BUSY = Termination("failure", "trunk limits reached", "carrier_error", True, 503)


def inbound_status(ev: LegEvent, term: Termination | None) -> tuple[int, str]:
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


class InboundCalls:
    def __init__(
        self,
        ctx: CallContext,
        dispatcher: Dispatcher,
        trigger: Callable[[TriggerInput, bool], CallRecord],
    ) -> None:
        self.ctx = ctx
        self.dispatcher = dispatcher
        self.trigger = trigger  # CallService.trigger(req, start)

    def on_invite(self, ev: InboundCall) -> None:
        """An INVITE from the agent platform: find the destination, create the call,
        dial the carrier on the same worker."""
        ctx = self.ctx
        icfg = ctx.cfg.inbound
        if not icfg.enabled:
            ctx.pool.respond(ev.leg_id, 403, "SIP-triggered calls are disabled")
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
            ctx.pool.respond(ev.leg_id, 484, "Address Incomplete")
            return
        copied = {
            name: headers[name.lower()] for name in icfg.copy_headers if name.lower() in headers
        }
        try:
            rec = self.trigger(
                TriggerInput(to_number=to, polyai_call_id=polyai, metadata={}), False
            )
        except ValueError as e:  # RoutingError, HeaderError: no route, unsafe value
            log.warning("inbound INVITE %s refused: %s", ev.sip_call_id, e)
            ctx.pool.respond(ev.leg_id, 404, "Not Found")
            return
        live = ctx.registry.open(rec.call_sid)
        live.inbound, live.inbound_worker = True, ev.worker_id
        ctx.registry.add_leg(live, ev.leg_id, "agent", ev.worker_id)
        leg = LegRecord(
            role="agent",
            direction="inbound",
            worker=ev.worker_id,
            sip_call_id=ev.sip_call_id,
            source=ev.source,
        )
        rec = ctx.journal.update(
            rec,
            touch=False,
            legs={ev.leg_id: leg},
            request=replace(rec.request, copy_headers=copied, inbound_leg=ev.leg_id),
        )
        ctx.journal.event(
            rec,
            "agent.inbound",
            {"leg": ev.leg_id, "source": ev.source, "request_uri": ev.request_uri},
        )
        self._start_attempt(rec, live)

    def _start_attempt(self, rec: CallRecord, live: LiveCall) -> None:
        now = self.ctx.clock()
        policy = self.ctx.policies.of(rec)
        hunt = hunt_list(policy.candidates, self.ctx.rng, self.dispatcher.health, now)
        if not hunt:
            self.finish_without_carrier(rec, live, NO_TRUNK)
            return
        live.attempt = Attempt(number=rec.attempts + 1, hunt=hunt, started_at=now)
        if self.dispatcher.dial_hop(rec, live) is not None:
            live.end_attempt()
            self.finish_without_carrier(rec, live, TRUNKS_BUSY)

    def finish_without_carrier(self, rec: CallRecord, live: LiveCall, term: Termination) -> None:
        """End an inbound call that has no carrier leg up: the INVITE gets a final
        error response, the call ``term``."""
        if live.agent_leg is not None:
            self.ctx.pool.respond(live.agent_leg, term.sip_status or 503, term.reason)
        if not rec.terminal:
            self.ctx.journal.set_status(
                rec,
                term.result,
                term.reason,
                kind=term.kind,
                detail=term.detail,
                sip_status=term.sip_status,
            )

    def relay(self, live: LiveCall, ev: LegEvent) -> None:
        """The carrier leg's progress, as the inbound INVITE's responses."""
        inbound = live.agent_leg
        if inbound is None:
            return
        if ev.state == "ringing":
            self.ctx.pool.respond(inbound, 180, "Ringing")
        elif ev.state == "early":
            self.ctx.pool.respond(inbound, 183, "Session Progress", media_from=ev.leg_id)
        elif ev.state == "answered":
            self.ctx.pool.respond(inbound, 200, "OK", media_from=ev.leg_id)

    def carrier_ended(self, live: LiveCall, ev: LegEvent) -> None:
        """The carrier leg ended: an INVITE still waiting gets its final response."""
        inbound = live.agent_leg
        if inbound is not None and not ev.answered:
            status, reason = inbound_status(ev, live.pending_term)
            self.ctx.pool.respond(inbound, status, reason)


__all__ = ["InboundCalls", "inbound_status"]
