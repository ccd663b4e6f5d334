"""A SIP worker process: one pjsua2 Endpoint, a few call legs, driven over a Pipe.

It runs as a ``multiprocessing`` target (:func:`run_worker`, forked from the pool's fork
server, :mod:`sipbridge.sip.forkserver`). The process main thread owns the Endpoint
(``threadCnt = 0``, ``mainThreadOnly = True``): it alternates ``libHandleEvents`` with
draining commands from the supervisor and checking the per-leg timers, so every pjsua2
callback and every Python reference to a pj object lives on one thread. Callbacks
(:mod:`sipbridge.sip.pjbind`) only record state; work that must not run inside pjsua (a
hangup, a relayed digit) is deferred to the loop (:attr:`Worker.soon`).

Idle cost: the loop sleeps in ``libHandleEvents`` until a SIP or RTP packet arrives or
the earliest timer it owns is due (up to 250 ms with nothing to do; 100 ms while a
detection tap is fed: frames are analysed in batches). RTP sockets live on the SIP
ioqueue (``medConfig.hasIoqueue = False``), so there is no media thread polling every
10 ms; a small waker thread turns a command from the supervisor into a CRLF keep-alive
datagram to the worker's own UDP port (:class:`~sipbridge.sip.waker.Waker`). Wake-ups that
only carried RTP skip the loop's chores.

Leg lifecycle (events sent to the supervisor as :class:`sipbridge.ipc.LegEvent`):
``trying`` -> [``ringing``] -> [``early``] -> [``answered``] -> ``ended`` — exactly one
``ended`` per leg, whatever happens (makeCall failure, shutdown, timers). Its cause: the
worker's own decision (timers, hangup), else :func:`sipbridge.sip.endcause.classify_end`.
``Retry-After`` (RFC 3261 20.33) of the final non-2xx INVITE response is reported in the
``ended`` event's ``retry_after_s``.

The :class:`Worker` keeps the loop, the command dispatch, the leg table
(:class:`~sipbridge.sip.leg.Leg`), dialling, hangups and the timers; it owns one of each:

- :class:`~sipbridge.sip.endpoint.Transports`: SIP transports and TLS profiles;
- :class:`~sipbridge.sip.accounts.AccountCache`: local accounts (auth, SRTP), LRU;
- :class:`~sipbridge.sip.mixer.Mixer`: bridges, players, taps, port cooling;
- :class:`~sipbridge.sip.detection.Detection`: recipient detection and Listen phases;
- :class:`~sipbridge.sip.dtmf.Dtmf`: DTMF out, in and relayed;
- :class:`~sipbridge.sip.inbound.Inbound`: INVITEs we receive (SIP-triggered mode);
- :class:`~sipbridge.sip.mediawatch.MediaWatch`: the media timeout;
- :class:`~sipbridge.sip.guardlink.GuardLink`: the packet guard and listen gate.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import pjsua2 as pj

from sipbridge import ipc
from sipbridge.plan import DialPlan
from sipbridge.sip.accounts import AccountCache
from sipbridge.sip.agenthold import AgentHold
from sipbridge.sip.byeheaders import report_bye
from sipbridge.sip.codecs import CodecOrder
from sipbridge.sip.detection import Detection
from sipbridge.sip.dtmf import Dtmf
from sipbridge.sip.endcause import (
    Disconnect,
    EventSource,
    classify_end,
    redirect_report,
    tls_reject_detail,
)
from sipbridge.sip.endpoint import DialRefused, Transports, create_endpoint, offered_codecs
from sipbridge.sip.guardlink import GuardLink
from sipbridge.sip.inbound import Inbound
from sipbridge.sip.info import send_info
from sipbridge.sip.leg import AccountKey, Leg, next_deadline
from sipbridge.sip.mediawatch import MediaWatch
from sipbridge.sip.mixer import Mixer
from sipbridge.sip.pjbind import LegCall, pj_error_text, pj_lib, respond_in_dialog
from sipbridge.sip.sdp import carries_sdp, sdp_of
from sipbridge.sip.sdpoffer import set_event_pt
from sipbridge.sip.teardown import shutdown
from sipbridge.sip.waker import Waker
from sipbridge.sipconfig import SipConfig
from sipbridge.sipmsg import final_response_retry_after, is_invite_2xx

# libHandleEvents waits: the longest sleep with nothing due (commands, SIP and RTP wake
# it; a closed pipe to the supervisor wakes it too), while detection or listening
# taps are fed, and with deferred work (or without a waker). Taps are drained in batches
# of ~5 frames: a decision reaches the supervisor at most 100 ms after the frame that
# made it (+50 ms on average, against ~700 ms of speech timing), and a worker with two
# detecting calls spends ~0.6 % of a core less than when woken every 20 ms.
_IDLE_WAIT_MS = 250
_TAP_WAIT_MS = 100
_BUSY_WAIT_MS = 10
_SLOT_RETRY_S = 2.0
_LINGER_RETRY_S = 34.0  # Timer B (64 * T1 = 32 s) and a margin
_PJ_ETOOMANY = 70010  # PJ_ETOOMANY: more calls than PJSUA_MAX_CALLS / maxCalls
# In-dialog requests pjsua leaves unhandled (pjsip would answer 500 "Unhandled by dialog
# usages"), answered from onCallTsxState like INFO: OPTIONS as an INVITE would be (RFC
# 3261 11.2: 200; carriers send it as a dialog keep-alive and may end the call on a 5xx),
# a NOTIFY that matches no subscription of ours with 481 (RFC 6665 4.1.3).
_IN_DIALOG_ANSWERS = {"OPTIONS": 200, "NOTIFY": 481}
# pjsip's source of a transaction event, as endcause sees it.
_EVENT_SOURCES: dict[int, EventSource] = {
    pj.PJSIP_EVENT_TIMER: "timer",
    pj.PJSIP_EVENT_TRANSPORT_ERROR: "transport_error",
    pj.PJSIP_EVENT_RX_MSG: "rx_msg",
}


class Worker:
    """Owns the pjsua2 Endpoint of one worker process. Single-threaded by design."""

    def __init__(self, worker_id: int, cfg: SipConfig, conn: Connection, sip_port: int) -> None:
        self.worker_id = worker_id
        self.cfg = cfg
        self.conn = conn
        self.ep: Any = None
        self.sip_port = 0
        self.capacity = cfg.calls_per_worker
        self.legs: dict[str, Leg] = {}  # the only table of live legs
        self.graveyard: list[Any] = []  # Call objects to drop outside pj callbacks
        # Dials waiting for pjsua to release a call slot (no Call yet, so not legs):
        # leg_id -> (plan, retry deadline).
        self.pending: dict[str, tuple[DialPlan, float]] = {}
        self.stopping = False
        # Work deferred out of pjsua2 callbacks to the loop (hang up the bridge partner,
        # relay a DTMF digit, refuse an INVITE): run right after libHandleEvents.
        self.soon: list[Callable[[], None]] = []
        self.waker: Waker | None = None
        # A pjsua2 callback ran since the loop last did its chores (see run()).
        self.kicked = False
        # The audio codecs pjsua offers (for a negotiation failure's detail).
        self.offered_codecs: list[str] = []
        self.codecs: CodecOrder | None = None  # per-trunk codec order (after start)
        self.transports = Transports(cfg, worker_id, sip_port)
        self.accounts = AccountCache(self, self.transports, self._busy_accounts)
        self.mixer = Mixer(self)
        self.detection = Detection(self)
        self.dtmf = Dtmf(self)
        self.inbound = Inbound(self)
        self.media = MediaWatch(self)
        self.guard = GuardLink(self)
        self.agent_hold = AgentHold(self)

    # ----------------------------------------------------------------- plumbing
    def send(self, msg: ipc.Event) -> None:
        try:
            self.conn.send(ipc.encode(msg))
        except (OSError, EOFError, BrokenPipeError):
            self.stopping = True

    def log(self, level: str, message: str, **extra: Any) -> None:
        self.send(ipc.WorkerLog(self.worker_id, level, message, dict(extra)))

    def _busy_accounts(self) -> set[AccountKey | None]:
        return {leg.acc_key for leg in self.legs.values()}

    def start(self) -> None:
        self.ep = create_endpoint(self)
        self.offered_codecs = offered_codecs(self.ep)
        self.codecs = CodecOrder(self.ep)
        self.sip_port = self.transports.create_all(self.ep, self.log)
        self.ep.libStart()
        self.guard.install(self.transports.ports, self.ep.libHandleEvents)
        # SIP-triggered mode: pjsua hands inbound INVITEs to an account (onIncomingCall),
        # so one must exist before any dial.
        if self.cfg.inbound_allow:
            self.accounts.create_default()
        self.waker = Waker.start_for(
            self.conn,
            self.cfg.listen_address,
            self.transports.ports.get("udp"),
            _BUSY_WAIT_MS,
            self.log,
        )
        self.send(ipc.WorkerReady(self.worker_id, self.sip_port, self.cfg.calls_per_worker))

    # ----------------------------------------------------------------- commands
    def handle(self, msg: ipc.Command | ipc.Event) -> None:
        if isinstance(msg, ipc.Dial):
            self.dial(msg.plan)
        elif isinstance(msg, ipc.Hangup):
            self.hangup(msg.leg_id, "local_hangup")
        elif isinstance(msg, ipc.SendDtmf):
            self.dtmf.queue(msg.leg_id, msg.digits, msg.duration_ms, msg.gap_ms)
        elif isinstance(msg, ipc.BridgeLegs):
            self.mixer.bridge(msg.carrier_leg, msg.agent_leg)
        elif isinstance(msg, ipc.PlayAudio):
            self.mixer.play(msg.leg_id, msg.path)
        elif isinstance(msg, ipc.Listen):
            self.detection.listen(msg.leg_id, msg.phase, msg.config)
        elif isinstance(msg, ipc.SendInfo):
            send_info(self, msg)
        elif isinstance(msg, ipc.Respond):
            self.inbound.respond(msg.leg_id, msg.status, msg.reason, msg.media_from)
        elif isinstance(msg, ipc.Shutdown):
            self.stopping = True
        else:
            self.log("warning", f"unexpected message {msg!r}")

    def _event(self, leg: Leg, state: ipc.LegState, **kw: Any) -> None:
        self._leg_event(leg.plan, state, **kw)

    def _leg_event(self, plan: DialPlan, state: ipc.LegState, **kw: Any) -> None:
        self.send(
            ipc.LegEvent(
                leg_id=plan.leg_id,
                call_sid=plan.call_sid,
                state=state,
                worker_id=self.worker_id,
                ts=time.time(),
                **kw,
            )
        )

    def _end_without_call(self, plan: DialPlan, cause: ipc.EndCause, detail: str) -> None:
        self._leg_event(plan, "ended", cause=cause, detail=detail)

    def dial(self, plan: DialPlan, retry_until: float | None = None) -> None:
        """Start a leg. Ends it at once (``dial_error``) if pjsua refuses the call."""
        if self.stopping:
            self._end_without_call(plan, "local_hangup", "worker is shutting down")
            return
        if plan.leg_id in self.legs or (retry_until is None and plan.leg_id in self.pending):
            # Not our leg's end: a duplicate Dial for a live leg is rejected on its own.
            self.log("error", f"duplicate Dial for live leg {plan.leg_id!r} ignored")
            return
        # pjsua2 pitfall: a dead Call's destructor calls pjsua_call_set_user_data() and
        # pjsua_call_hangup() on its old call id, which a new call may reuse: destroy dead
        # Call objects before making a new call.
        self.graveyard.clear()
        if plan.bridge_with:
            # An agent leg whose carrier leg is already gone (the carrier hung up, or
            # refused the media, between its answer and this Dial): never send it.
            partner = self.legs.get(plan.bridge_with)
            if partner is None or not partner.live:
                self._end_without_call(
                    plan, "bridged_bye", f"leg {plan.bridge_with} ended before this INVITE"
                )
                return
        try:
            acc_key, acc = self.accounts.for_plan(plan)
        except DialRefused as e:
            self._end_without_call(plan, "dial_error", str(e))
            return
        call = LegCall(self, acc, plan.leg_id)
        leg = Leg(plan=plan, call=call, started=time.monotonic(), acc_key=acc_key)
        self.legs[plan.leg_id] = leg
        prm = pj.CallOpParam(True)
        prm.txOption.localUri = plan.from_uri
        # Request-URI may differ from the To URI (RFC 3261 8.1.1.1).
        prm.txOption.targetUri = plan.request_uri
        for name, value in plan.headers:
            h = pj.SipHeader()
            h.hName = name
            h.hValue = value
            prm.txOption.headers.append(h)
        try:
            if self.codecs is not None:
                self.codecs.apply(plan.codecs)
            call.makeCall(plan.to_uri or plan.request_uri, prm)
        except pj.Error as e:
            del self.legs[plan.leg_id]
            self.graveyard.append(call)
            if getattr(e, "status", None) == _PJ_ETOOMANY and len(self.legs) < self.capacity:
                # pjsua2 pitfall: a disconnected call's slot is released a little after
                # DISCONNECTED is reported (media teardown), so a Dial sent as soon as the
                # supervisor saw "ended" can hit PJ_ETOOMANY: retry it for a short while.
                # Worse, a leg hung up before any response (e.g. an agent URI that does
                # not answer) is reported DISCONNECTED at once, but its INVITE
                # transaction cannot be CANCELled (RFC 3261 9.1) and keeps the pjsua slot
                # until Timer B (32 s): wait for those slots too.
                window = _SLOT_RETRY_S
                if self._lingering_slots() > 0:
                    window = _LINGER_RETRY_S
                    if retry_until is None:
                        self.log(
                            "warning",
                            f"{plan.leg_id}: waiting for a pjsua call slot "
                            "held by a hung-up unanswered INVITE (Timer B)",
                        )
                deadline = retry_until or time.monotonic() + window
                if time.monotonic() < deadline:
                    self.pending[plan.leg_id] = (plan, deadline)
                    return
            self._end_without_call(plan, "dial_error", pj_error_text(e))
            return
        except DialRefused as e:  # a codec this pjsua build lacks
            del self.legs[plan.leg_id]
            self.graveyard.append(call)
            self._end_without_call(plan, "dial_error", str(e))
            return
        except Exception as e:  # e.g. SWIG type errors on odd input
            del self.legs[plan.leg_id]
            self.graveyard.append(call)
            self._end_without_call(plan, "dial_error", repr(e))
            return
        finally:
            if self.codecs is not None:  # the offer is built: pjsua's defaults again
                self.codecs.apply(())
        if plan.bridge_with:
            self.mixer.pair(plan.leg_id, plan.bridge_with, connect=False)
        if "trying" not in leg.sent_states and not leg.ended:
            leg.sent_states.add("trying")
            call_id = ""
            with contextlib.suppress(Exception):
                call_id = str(call.getInfo().callIdString)
            self.guard.dialog_known(leg, call_id)
            self._event(leg, "trying", sip_call_id=call_id, dial_mono=leg.dial_times())

    def _lingering_slots(self) -> int:
        """pjsua call slots busy without a live leg (see :meth:`dial`)."""
        try:
            used = int(pj_lib().pjsua_call_get_count())
        except Exception:
            return 0
        return max(0, used - len(self.legs) - len(self.inbound.rejected))

    def retry_pending(self) -> None:
        for leg_id, (plan, deadline) in list(self.pending.items()):
            del self.pending[leg_id]
            self.dial(plan, deadline)

    def hangup(self, leg_id: str, cause: ipc.EndCause, status: int = 0) -> None:
        if leg_id in self.pending:
            plan, _ = self.pending.pop(leg_id)
            self._end_without_call(plan, cause, "hung up before the INVITE was sent")
            return
        leg = self.legs.get(leg_id)
        if leg is None or leg.ended:
            return
        if leg.end_cause is None:
            leg.end_cause = cause
        prm = pj.CallOpParam(True)
        # An INVITE we have not answered: end it with a final response.
        final = self.inbound.final_status(leg, status)
        if final:
            prm.statusCode = final
        try:
            # Before answer pjsua sends CANCEL (RFC 3261 9.1; deferred until a provisional
            # response arrives), after answer BYE (RFC 3261 15.1.1).
            leg.call.hangup(prm)
        except pj.Error as e:
            self.log("warning", f"hangup {leg_id}: {pj_error_text(e)}")

    # ----------------------------------------------------------------- callbacks
    @staticmethod
    def _note_reply(leg: Leg, whole: str) -> None:
        """A message received on the leg: remember whether the peer ever responded and
        the Retry-After of each final non-2xx INVITE response."""
        if whole.startswith("SIP/2.0"):
            leg.peer.rx_any = True
            leg.peer.answer_received = leg.peer.answer_received or is_invite_2xx(whole)
            is_final, retry_after = final_response_retry_after(whole)
            if is_final:
                leg.peer.retry_after_s = retry_after

    def on_call_state(self, leg_id: str, call: Any, prm: Any) -> None:
        if self.inbound.on_rejected_state(leg_id, call):
            return
        leg = self.legs.get(leg_id)
        if leg is None or leg.ended:
            return
        ci = call.getInfo()
        source: EventSource = "other"
        whole = ""
        try:
            e = prm.e
            if e.type == pj.PJSIP_EVENT_TSX_STATE:
                ts = e.body.tsxState
                source = _EVENT_SOURCES.get(ts.type, "other")
                if ts.type == pj.PJSIP_EVENT_RX_MSG:
                    whole = str(ts.src.rdata.wholeMsg)
        except Exception:
            pass
        self._note_reply(leg, whole)
        if whole:
            leg.peer.remote_sdp = sdp_of(whole) or leg.peer.remote_sdp
        st = ci.state
        common = {
            "sip_status": int(ci.lastStatusCode) if ci.lastStatusCode else None,
            "sip_reason": str(ci.lastReason),
            "sip_call_id": str(ci.callIdString),
        }
        if st == pj.PJSIP_INV_STATE_EARLY:
            state: ipc.LegState = "early" if carries_sdp(whole) else "ringing"
            if state not in leg.sent_states:
                leg.sent_states.add(state)
                self._event(leg, state, **common)
        elif st == pj.PJSIP_INV_STATE_CONFIRMED:
            if leg.answered_at is None:
                leg.answered_at = time.monotonic()
                self.media.on_answer(leg)
                leg.sent_states.add("answered")
                self._event(leg, "answered", **common)
                self.detection.on_answer(leg)
                self.mixer.maybe_auto_bridge(leg)
                self.mixer.connect_edges(leg_id)
        elif st == pj.PJSIP_INV_STATE_DISCONNECTED:
            self._on_disconnected(leg, call, ci, source, whole, common)

    def _on_disconnected(
        self, leg: Leg, call: Any, ci: Any, source: EventSource, whole: str, common: dict[str, Any]
    ) -> None:
        leg.ended = True
        answered = leg.answered_at is not None
        cause: ipc.EndCause
        if leg.end_cause is not None:
            cause, detail = leg.end_cause, leg.end_detail
        else:
            by_stack = source in ("timer", "transport_error")
            tls = leg.plan.transport == "tls" and by_stack
            cause, detail = classify_end(
                Disconnect(
                    source=source,
                    status=common["sip_status"],
                    reason=common["sip_reason"],
                    received=whole,
                    answered=answered,
                    inbound=leg.inbound is not None,
                    any_response=leg.peer.rx_any,
                    transport=leg.plan.transport,
                    tls_reject=(
                        tls_reject_detail(
                            leg.plan.request_uri, leg.started, self.transports.tls_rejects
                        )
                        if tls
                        else ""
                    ),
                    offered_codecs=tuple(leg.plan.codecs or self.offered_codecs),
                    remote_sdp=leg.peer.remote_sdp,
                    answer_received=leg.peer.answer_received,
                )
            )
            redirect = redirect_report(whole) if cause == "remote_final" else None
            if redirect is not None:
                common["sip_status"], common["sip_reason"], detail = redirect
        # Anything still running on the leg is reported before its end.
        self.mixer.end_players(leg.leg_id)
        self.detection.on_end(leg)
        report_bye(self, leg, whole)
        self._event(
            leg,
            "ended",
            cause=cause,
            answered=answered,
            detail=detail,
            retry_after_s=leg.peer.retry_after_s if not answered else None,
            **common,
        )
        self.mixer.unlink(leg)
        # Drop the Call object later, outside this callback (pjsua2 is still using it).
        self.guard.dialog_ended(leg)
        del self.legs[leg.leg_id]
        self.graveyard.append(call)
        self.detection.finish(leg)

    def on_call_tsx_state(self, leg_id: str, prm: Any) -> None:
        """Remember the Retry-After of each final non-2xx INVITE response received.

        pjsua reports a challenged INVITE (401/407 answered with credentials) only here;
        the response that disconnects the call is also seen in :meth:`on_call_state`.
        In-dialog INFO requests go to :meth:`Dtmf.on_info <sipbridge.sip.dtmf.Dtmf.on_info>`.
        """
        leg = self.legs.get(leg_id)
        if leg is None or leg.ended:
            return
        e = prm.e
        if e.type != pj.PJSIP_EVENT_TSX_STATE or e.body.tsxState.type != pj.PJSIP_EVENT_RX_MSG:
            return
        whole = str(e.body.tsxState.src.rdata.wholeMsg)
        if self.agent_hold.on_request(leg, e.body.tsxState.src.rdata, whole):
            return
        if whole.startswith("INFO "):
            self.dtmf.on_info(leg, e.body.tsxState.src.rdata, whole)
            return
        method = whole.split(" ", 1)[0]
        if method in _IN_DIALOG_ANSWERS:
            if not respond_in_dialog(e.body.tsxState.src.rdata, _IN_DIALOG_ANSWERS[method]):
                self.log("warning", f"could not answer an in-dialog {method} on {leg_id}")
            return
        self._note_reply(leg, whole)

    def on_sdp_created(self, leg_id: str, prm: Any) -> None:
        """Our SDP, before pjsua sends it: an offer (no remote SDP) gets the trunk's
        telephone-event payload type. An answer keeps the offerer's (RFC 3264 6.1)."""
        leg = self.legs.get(leg_id)
        if leg is None or not leg.plan.telephone_event_pt or str(prm.remSdp.wholeSdp):
            return
        sdp = str(prm.sdp.wholeSdp)
        new = set_event_pt(sdp, leg.plan.telephone_event_pt)
        if new != sdp:
            prm.sdp.wholeSdp = new

    def on_call_media_state(self, leg_id: str, call: Any) -> None:
        """Media became active (183 early media or the answer): connect the detection
        tap to the leg's audio. With the null audio device nothing else needs connecting:
        the stream sends RTP on its own."""
        leg = self.legs.get(leg_id)
        if leg is None or leg.ended:
            return
        self.media.on_media(leg, call)
        self.mixer.feed_silence(call)
        self.mixer.connect_edges(leg_id)
        self.detection.on_media(leg, call)
        self.agent_hold.on_media(leg)

    # ----------------------------------------------------------------- loop
    def check_timers(self) -> None:
        now = time.monotonic()
        for leg_id, leg in list(self.legs.items()):
            timer = next_deadline(leg, self.cfg.media_timeout_s)
            if timer is None or now < timer[0]:
                continue
            if timer[1] == "media_timeout":
                self.media.check(leg)
                continue
            if leg.inbound is not None and leg.answered_at is None:
                self.log("warning", f"inbound {leg_id}: no Respond in time")
            self.hangup(leg_id, timer[1])

    def poll_commands(self) -> None:
        try:
            while self.conn.poll(0):
                raw = self.conn.recv()
                try:
                    msg = ipc.decode(raw)
                except ipc.ProtocolError as e:
                    self.log("error", f"bad command: {e}")
                    continue
                self.handle(msg)
        except (EOFError, OSError):
            self.stopping = True  # supervisor gone

    def wait_ms(self) -> int:
        """How long the next ``libHandleEvents`` may sleep: until the earliest thing this
        loop must do by itself (SIP and RTP packets, and commands through the waker, cut
        the sleep short anyway)."""
        if self.soon or self.pending or self.mixer.busy or self.agent_hold.active:
            return _BUSY_WAIT_MS
        if self.waker is None:
            return _BUSY_WAIT_MS
        now = time.monotonic()
        due = now + _IDLE_WAIT_MS / 1000
        for leg in self.legs.values():
            if not leg.live:
                continue
            if leg.listening.tap_connected:
                return _TAP_WAIT_MS
            if leg.dtmf_jobs:
                due = min(due, leg.dtmf_jobs[0].next_at)
            timer = next_deadline(leg, self.cfg.media_timeout_s)
            if timer is not None:
                due = min(due, timer[0])
        return max(0, math.ceil((due - now) * 1000))

    def run(self) -> None:
        wait_ms = 0
        due = 0.0  # monotonic time of the next chores nobody will wake us for
        while not self.stopping:
            self.ep.libHandleEvents(wait_ms)
            # Under load most wake-ups are RTP packets, which pjmedia has already handled
            # inside libHandleEvents: skip the chores unless a callback ran, a command
            # came or something is due (a few µs instead of a full pass, 200 times a
            # second for a worker with 4 legs).
            now = time.monotonic()
            if now < due and not self.kicked and not (self.waker and self.waker.pending):
                wait_ms = math.ceil((due - now) * 1000)
                continue
            self.kicked = False
            self.run_soon()
            self.detection.pump_all()
            if self.mixer.players:
                self.mixer.check_players()
            if self.mixer.cooling:
                self.mixer.drop_cooled()
            self.graveyard.clear()
            if self.pending:
                self.retry_pending()
            if self.waker is not None:
                self.waker.pending = False
            self.poll_commands()
            if self.waker is not None:
                self.waker.drained.set()  # a command arriving from now on wakes again
            self.dtmf.run()
            self.check_timers()
            self.guard.tick()
            wait_ms = 0 if self.kicked else self.wait_ms()
            due = time.monotonic() + wait_ms / 1000
        self.shutdown()

    def run_soon(self) -> None:
        while self.soon:
            job = self.soon.pop(0)
            try:
                job()
            except Exception as e:
                self.log("error", f"deferred work failed: {e!r}")

    # ----------------------------------------------------------------- shutdown
    def shutdown(self) -> None:
        """Hang up every leg, wait (bounded), drop pj objects, libDestroy
        (:func:`sipbridge.sip.teardown.shutdown`)."""
        shutdown(self)
