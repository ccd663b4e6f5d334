"""Inbound INVITEs in a worker (SIP-triggered mode).

``onIncomingCall`` fires on every account (see :mod:`sipbridge.sip.accounts`). Sources
outside ``sip.inbound_allow`` get 403 (from the packet guard; re-checked here); others
become a leg ``in-<uuid4>`` announced with ``InboundCall`` and answered by ``Respond``
(18x: ``media_from`` audio is sent into it as early media; 200: bridged with
``media_from``; >= 300: rejected). No Respond within 30 s (120 s after a provisional one)
ends it with 408 (480).

pjsua2 pitfall: never answer from inside ``onIncomingCall``. pjsua2 frees the INVITE's
cloned rdata after the callback returns, and a hangup from inside it has already freed it
(``pjsip_rx_data_free_cloned: Assertion 'rdata'``, abort): refusals are deferred to the
loop (``Worker.soon``) and the Call kept in :attr:`Inbound.rejected` until DISCONNECTED.

Owns: the refused calls, and every inbound leg's :class:`~sipbridge.sip.leg.InboundState`.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import pjsua2 as pj

from sipbridge import ipc
from sipbridge.plan import DialPlan
from sipbridge.sip.agentleg import source_allowed
from sipbridge.sip.leg import InboundState, Leg, PeerReplies
from sipbridge.sip.pjbind import LegCall, pj_error_text
from sipbridge.sipmsg import header, split_message

if TYPE_CHECKING:
    from sipbridge.sip.worker import Worker

# The supervisor must Respond within this time, and after a provisional Respond (180/183)
# send the final one within the ring time.
RESPOND_S = 30.0
RING_S = 120.0
_MAX_DURATION_S = 4 * 3600.0


class Inbound:
    """Inbound calls of one worker (loop thread; ``on_incoming_call`` is a callback)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.legs = worker.legs
        # Inbound calls refused in onIncomingCall (not legs), kept until DISCONNECTED.
        self.rejected: dict[str, Any] = {}

    def on_incoming_call(self, acc: Any, prm: Any) -> None:
        """An INVITE (SIP-triggered mode) that passed the packet guard: a leg waiting for
        the supervisor's Respond. pjsua has already sent 100 Trying.

        The guard already refused disallowed sources (403), a full worker (486) and a
        stopping one (503) statelessly, before pjsua created a call; this re-checks them
        (defence in depth) and refuses from the loop, never here (see the module doc)."""
        w = self.worker
        whole = str(prm.rdata.wholeMsg)
        src = str(prm.rdata.srcAddress)
        start, headers, _body = split_message(whole)
        call_id = header(headers, "call-id")
        leg_id = f"in-{uuid.uuid4()}"
        call = LegCall(w, acc, leg_id, int(prm.callId))
        status, why = 0, ""
        if not source_allowed(src, w.cfg.inbound_allow):
            status, why = 403, f"source {src} is not in sip.inbound_allow"
        elif w.stopping:
            status, why = 503, "worker is shutting down"
        elif len(self.legs) >= w.capacity:
            status, why = 486, "no free call slot in this worker"
        if status:
            w.log("warning", f"inbound INVITE refused with {status}: {why}", call_id=call_id)
            self.rejected[leg_id] = call
            w.soon.append(lambda: self._refuse(leg_id, status))
            w.guard.pass_refusal(call_id)
            return
        parts = start.split(" ")
        ruri = parts[1] if len(parts) > 1 else ""
        acc_key = w.accounts.key_of(acc)
        plan = DialPlan(
            call_sid=leg_id,
            leg_id=leg_id,
            trunk="inbound",
            request_uri=ruri,
            from_uri=header(headers, "from"),
            to_uri=header(headers, "to"),
            headers=(),
            ring_timeout_s=RESPOND_S,
            max_duration_s=_MAX_DURATION_S,
            transport=acc_key[0] if acc_key else w.cfg.transport,
            role="agent",
        )
        now = time.monotonic()
        leg = Leg(
            plan=plan,
            call=call,
            started=now,
            acc_key=acc_key,
            inbound=InboundState(deadline=now + RESPOND_S),
            peer=PeerReplies(rx_any=True),
        )
        self.legs[leg_id] = leg
        w.guard.dialog_known(leg, call_id)
        w.send(
            ipc.InboundCall(
                leg_id=leg_id,
                worker_id=w.worker_id,
                ts=time.time(),
                request_uri=ruri,
                from_uri=plan.from_uri,
                to_uri=plan.to_uri,
                sip_call_id=call_id,
                source=src,
                headers=tuple(headers),
            )
        )

    def _refuse(self, leg_id: str, status: int) -> None:
        """Answer a refused inbound INVITE (from the loop, see :meth:`on_incoming_call`)."""
        call = self.rejected.get(leg_id)
        if call is None:
            return
        op = pj.CallOpParam(True)
        op.statusCode = status
        try:
            call.hangup(op)
        except pj.Error as e:
            self.worker.log("warning", f"refusing inbound INVITE: {pj_error_text(e)}")

    def on_rejected_state(self, leg_id: str, call: Any) -> bool:
        """onCallState of a refused call: True if it was one (dropped once DISCONNECTED)."""
        if leg_id not in self.rejected:
            return False
        if call.getInfo().state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.worker.graveyard.append(self.rejected.pop(leg_id))
        return True

    def respond(self, leg_id: str, status: int, reason: str, media_from: str | None) -> None:
        """``Respond``: answer an inbound leg (18x, 200, or a final error)."""
        w = self.worker
        leg = self.legs.get(leg_id)
        state = leg.inbound if leg is not None else None
        if leg is None or leg.ended or state is None:
            w.log("warning", f"Respond for unknown inbound leg {leg_id!r}")
            return
        if state.final_sent or leg.answered_at is not None:
            w.log("warning", f"Respond {status} for {leg_id}: already answered")
            return
        if not 180 <= status <= 699:
            w.log("warning", f"Respond {status} for {leg_id}: not a valid status")
            return
        source = self.legs.get(media_from) if media_from else None
        if media_from and source is None:
            w.log("warning", f"Respond {leg_id}: media_from leg {media_from!r} is not live")
        if status >= 300:
            w.hangup(leg_id, "local_hangup", status)
            return
        prm = pj.CallOpParam(True)
        prm.statusCode = status
        if reason:
            prm.reason = reason
        if status >= 200:
            state.final_sent = True
            state.deadline = None
            if source is not None:
                w.mixer.answer_bridge(media_from or "", leg_id)
        else:
            state.provisional_sent = True
            state.deadline = time.monotonic() + RING_S
            if source is not None:  # early media: the agent hears the carrier's ringback
                w.mixer.early_media(media_from or "", leg_id)
        try:
            leg.call.answer(prm)
        except pj.Error as e:
            w.log("warning", f"Respond {status} for {leg_id}: {pj_error_text(e)}")
            return
        w.mixer.connect_edges(leg_id)

    @staticmethod
    def final_status(leg: Leg, status: int) -> int:
        """The status ending an inbound INVITE we have not answered (0: none to send,
        pjsua's hangup sends BYE or nothing): ``status`` or 480 after a provisional
        response, 408 before one."""
        state = leg.inbound
        if state is None or leg.answered_at is not None or state.final_sent:
            return 0
        state.final_sent = True
        return status or (480 if state.provisional_sent else 408)

    def drop_rejected(self) -> None:
        """At shutdown: refused calls that never reached DISCONNECTED."""
        for call in self.rejected.values():
            call._worker = None
        self.worker.graveyard.extend(self.rejected.values())
        self.rejected.clear()


__all__ = ["RESPOND_S", "RING_S", "Inbound"]
