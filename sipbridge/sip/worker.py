"""A SIP worker process: one pjsua2 Endpoint, a few call legs, driven over a Pipe.

This is the only module in sipbridge that imports pjsua2. It runs as a
``multiprocessing`` *spawn* target (:func:`run_worker`). The process main thread owns
the Endpoint (``threadCnt = 0``, ``mainThreadOnly = True``): it alternates
``libHandleEvents`` with draining commands from the supervisor and checking the per-leg
timers, so every pjsua2 callback and every Python reference to a pj object lives on one
thread.

Leg lifecycle (events sent to the supervisor as :class:`sipbridge.ipc.LegEvent`):
``trying`` -> [``ringing``] -> [``early``] -> [``answered``] -> ``ended`` — exactly one
``ended`` per leg, whatever happens (makeCall failure, shutdown, timers).

Transport errors (``cause="transport_error"``) are recognised from the event that
disconnected the INVITE transaction: a timer (RFC 3261 17.1.1.2 Timer B, 32 s on UDP,
pjsip reports a locally generated 408) or a transport failure (pjsip reports a locally
generated 503/408 with the transport error text). As a fallback a 408/503 on a leg that
never received any response from the peer is also classified as a transport error.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import pjsua2 as pj

from sipbridge import ipc
from sipbridge.config import SipConfig
from sipbridge.plan import DialPlan

_SHUTDOWN_DRAIN_S = 3.0
_SLOT_RETRY_S = 2.0
_PJ_ETOOMANY = 70010  # PJ_ETOOMANY: more calls than PJSUA_MAX_CALLS / maxCalls


def _pj_error_text(e: Exception) -> str:
    info = getattr(e, "info", None)
    if callable(info):
        try:
            return str(info()).strip()
        except Exception:  # pragma: no cover - defensive
            pass
    reason = getattr(e, "reason", None)
    return str(reason or e)


@dataclass
class _Leg:
    plan: DialPlan
    call: Any  # _LegCall; Any because pj.Call is untyped
    started: float  # monotonic time of makeCall
    answered_at: float | None = None
    state: str = "new"
    end_cause: str | None = None  # cause decided locally before DISCONNECTED (timers, hangup)
    rx_any: bool = False  # did we ever receive a response from the peer
    ended: bool = False
    sent_states: set[str] = field(default_factory=set)


class _LegCall(pj.Call):
    """pj.Call subclass forwarding callbacks to the worker (same thread)."""

    def __init__(self, worker: Worker, acc: Any, leg_id: str) -> None:
        pj.Call.__init__(self, acc)
        self._worker = worker
        self._leg_id = leg_id

    def onCallState(self, prm: Any) -> None:
        try:
            self._worker.on_call_state(self._leg_id, self, prm)
        except Exception as e:  # never let an exception escape into pjsua2
            self._worker.log("error", f"onCallState failed: {e!r}")

    def onCallMediaState(self, prm: Any) -> None:
        try:
            self._worker.on_call_media_state(self._leg_id, self)
        except Exception as e:
            self._worker.log("error", f"onCallMediaState failed: {e!r}")


class Worker:
    """Owns the pjsua2 Endpoint of one worker process. Single-threaded by design."""

    def __init__(self, worker_id: int, cfg: SipConfig, conn: Connection, sip_port: int) -> None:
        self.worker_id = worker_id
        self.cfg = cfg
        self.conn = conn
        self.want_port = sip_port
        self.ep: Any = None
        self.acc: Any = None
        self.transport_id: int | None = None
        self.sip_port = 0
        self.capacity = cfg.calls_per_worker
        self.legs: dict[str, _Leg] = {}
        self.graveyard: list[Any] = []  # Call objects to drop outside pj callbacks
        # Dials waiting for pjsua to release a call slot: leg_id -> (plan, retry deadline).
        self.pending: dict[str, tuple[DialPlan, float]] = {}
        self.stopping = False
        self.parent_pid = os.getppid()

    # ----------------------------------------------------------------- plumbing
    def send(self, msg: ipc.Event) -> None:
        try:
            self.conn.send(ipc.encode(msg))
        except (OSError, EOFError, BrokenPipeError):
            self.stopping = True

    def log(self, level: str, message: str, **extra: Any) -> None:
        self.send(ipc.WorkerLog(self.worker_id, level, message, dict(extra)))

    # ----------------------------------------------------------------- start-up
    def _rtp_range(self) -> tuple[int, int]:
        total = self.cfg.rtp_port_max - self.cfg.rtp_port_min + 1
        per = max(2, total // self.cfg.workers)
        base = self.cfg.rtp_port_min + (self.worker_id % self.cfg.workers) * per
        return base, per

    def _candidate_ports(self) -> list[int]:
        """Ports to try, in order: the requested one, then the config range (or any)."""
        if self.cfg.port_min == 0:
            rest = [0]
        else:
            preferred = self.cfg.port_min + self.worker_id
            rng = range(self.cfg.port_min, self.cfg.port_max + 1)
            rest = ([preferred] if preferred in rng else []) + [p for p in rng if p != preferred]
        first = [self.want_port] if self.want_port else []
        return first + [p for p in rest if p not in first]

    def start(self) -> None:
        ep = pj.Endpoint()
        self.ep = ep
        # pjlib logs a start-up banner (level 4, to stdout) before libInit applies our
        # log level: hide stdout during libCreate unless verbose logging was asked for.
        quiet = self.cfg.log_level < 4
        saved = os.dup(1) if quiet else -1
        if quiet:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)
        try:
            ep.libCreate()
        finally:
            if quiet:
                sys.stdout.flush()
                os.dup2(saved, 1)
                os.close(saved)
        epcfg = pj.EpConfig()
        epcfg.uaConfig.threadCnt = 0
        epcfg.uaConfig.mainThreadOnly = True
        epcfg.uaConfig.maxCalls = self.cfg.calls_per_worker
        epcfg.uaConfig.userAgent = self.cfg.user_agent
        epcfg.logConfig.level = self.cfg.log_level
        epcfg.logConfig.consoleLevel = self.cfg.log_level
        ep.libInit(epcfg)
        ep.audDevManager().setNullDev()

        ttype = {
            "udp": pj.PJSIP_TRANSPORT_UDP,
            "tcp": pj.PJSIP_TRANSPORT_TCP,
            "tls": pj.PJSIP_TRANSPORT_TLS,
        }[self.cfg.transport]
        last_err = ""
        for port in self._candidate_ports():
            tcfg = pj.TransportConfig()
            tcfg.port = port
            tcfg.boundAddress = self.cfg.listen_address
            if self.cfg.public_address:
                tcfg.publicAddress = self.cfg.public_address
            try:
                self.transport_id = ep.transportCreate(ttype, tcfg)
                break
            except pj.Error as e:
                last_err = f"port {port}: {_pj_error_text(e)}"
        if self.transport_id is None:
            raise RuntimeError(f"cannot bind a SIP {self.cfg.transport} port: {last_err}")
        info = ep.transportGetInfo(self.transport_id)
        self.sip_port = int(str(info.localName).rsplit(":", 1)[1])
        ep.libStart()

        acfg = pj.AccountConfig()
        host = self.cfg.public_address or self.cfg.listen_address
        acfg.idUri = f"sip:sipbridge@{host}:{self.sip_port}"
        acfg.regConfig.registerOnAdd = False
        acfg.sipConfig.transportId = self.transport_id
        rtp_base, rtp_count = self._rtp_range()
        acfg.mediaConfig.transportConfig.port = rtp_base
        acfg.mediaConfig.transportConfig.portRange = rtp_count
        acfg.mediaConfig.transportConfig.boundAddress = self.cfg.listen_address
        if self.cfg.public_address:
            acfg.mediaConfig.transportConfig.publicAddress = self.cfg.public_address
        acc = pj.Account()
        acc.create(acfg, True)
        self.acc = acc
        self.send(ipc.WorkerReady(self.worker_id, self.sip_port, self.cfg.calls_per_worker))

    # ----------------------------------------------------------------- commands
    def handle(self, msg: ipc.Command | ipc.Event) -> None:
        if isinstance(msg, ipc.Dial):
            self.dial(msg.plan)
        elif isinstance(msg, ipc.Hangup):
            self.hangup(msg.leg_id, "local_hangup")
        elif isinstance(msg, ipc.SendDtmf):
            self.dtmf(msg.leg_id, msg.digits)
        elif isinstance(msg, ipc.Shutdown):
            self.stopping = True
        else:
            self.log("warning", f"unexpected message {msg!r}")

    def _event(self, leg: _Leg, state: ipc.LegState, **kw: Any) -> None:
        self.send(
            ipc.LegEvent(
                leg_id=leg.plan.leg_id,
                call_sid=leg.plan.call_sid,
                state=state,
                worker_id=self.worker_id,
                ts=time.time(),
                **kw,
            )
        )

    def _end_without_call(self, plan: DialPlan, cause: ipc.EndCause, detail: str) -> None:
        self.send(
            ipc.LegEvent(
                leg_id=plan.leg_id,
                call_sid=plan.call_sid,
                state="ended",
                worker_id=self.worker_id,
                ts=time.time(),
                cause=cause,
                detail=detail,
            )
        )

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
        call = _LegCall(self, self.acc, plan.leg_id)
        leg = _Leg(plan=plan, call=call, started=time.monotonic())
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
            call.makeCall(plan.to_uri or plan.request_uri, prm)
        except pj.Error as e:
            del self.legs[plan.leg_id]
            self.graveyard.append(call)
            if getattr(e, "status", None) == _PJ_ETOOMANY and len(self.legs) < self.capacity:
                # pjsua2 pitfall: a disconnected call's slot is released a little after
                # DISCONNECTED is reported (media teardown), so a Dial sent as soon as the
                # supervisor saw "ended" can hit PJ_ETOOMANY: retry it for a short while.
                deadline = retry_until or time.monotonic() + _SLOT_RETRY_S
                if time.monotonic() < deadline:
                    self.pending[plan.leg_id] = (plan, deadline)
                    return
            self._end_without_call(plan, "dial_error", _pj_error_text(e))
            return
        except Exception as e:  # e.g. SWIG type errors on odd input
            del self.legs[plan.leg_id]
            self.graveyard.append(call)
            self._end_without_call(plan, "dial_error", repr(e))
            return
        if "trying" not in leg.sent_states and not leg.ended:
            leg.sent_states.add("trying")
            call_id = ""
            with contextlib.suppress(Exception):
                call_id = str(call.getInfo().callIdString)
            self._event(leg, "trying", sip_call_id=call_id)

    def retry_pending(self) -> None:
        for leg_id, (plan, deadline) in list(self.pending.items()):
            del self.pending[leg_id]
            self.dial(plan, deadline)

    def hangup(self, leg_id: str, cause: ipc.EndCause) -> None:
        if leg_id in self.pending:
            plan, _ = self.pending.pop(leg_id)
            self._end_without_call(plan, cause, "hung up before the INVITE was sent")
            return
        leg = self.legs.get(leg_id)
        if leg is None or leg.ended:
            return
        if leg.end_cause is None:
            leg.end_cause = cause
        try:
            # Before answer pjsua sends CANCEL (RFC 3261 9.1; deferred until a provisional
            # response arrives), after answer BYE (RFC 3261 15.1.1).
            leg.call.hangup(pj.CallOpParam(True))
        except pj.Error as e:
            self.log("warning", f"hangup {leg_id}: {_pj_error_text(e)}")

    def dtmf(self, leg_id: str, digits: str) -> None:
        leg = self.legs.get(leg_id)
        if leg is None or leg.ended:
            self.log("warning", f"DTMF for unknown leg {leg_id!r}")
            return
        try:
            leg.call.dialDtmf(digits)  # RFC 4733 telephone-event by default
        except pj.Error as e:
            self.log("warning", f"DTMF {leg_id}: {_pj_error_text(e)}")

    # ----------------------------------------------------------------- callbacks
    def on_call_state(self, leg_id: str, call: Any, prm: Any) -> None:
        leg = self.legs.get(leg_id)
        if leg is None or leg.ended:
            return
        ci = call.getInfo()
        etype = None
        src_type = None
        whole = ""
        try:
            e = prm.e
            etype = e.type
            if etype == pj.PJSIP_EVENT_TSX_STATE:
                ts = e.body.tsxState
                src_type = ts.type
                if src_type == pj.PJSIP_EVENT_RX_MSG:
                    whole = str(ts.src.rdata.wholeMsg)
        except Exception:
            pass
        if whole.startswith("SIP/2.0"):
            leg.rx_any = True
        st = ci.state
        common = {
            "sip_status": int(ci.lastStatusCode) if ci.lastStatusCode else None,
            "sip_reason": str(ci.lastReason),
            "sip_call_id": str(ci.callIdString),
        }
        if st == pj.PJSIP_INV_STATE_EARLY:
            has_sdp = "\r\n\r\nv=0" in whole or "application/sdp" in whole.lower()
            state: ipc.LegState = "early" if has_sdp else "ringing"
            if state not in leg.sent_states:
                leg.sent_states.add(state)
                self._event(leg, state, **common)
        elif st == pj.PJSIP_INV_STATE_CONFIRMED:
            if leg.answered_at is None:
                leg.answered_at = time.monotonic()
                leg.sent_states.add("answered")
                self._event(leg, "answered", **common)
        elif st == pj.PJSIP_INV_STATE_DISCONNECTED:
            leg.ended = True
            status = int(ci.lastStatusCode) if ci.lastStatusCode else None
            answered = leg.answered_at is not None
            detail = ""
            cause: ipc.EndCause
            if leg.end_cause is not None:
                cause = leg.end_cause  # type: ignore[assignment]
            elif src_type in (pj.PJSIP_EVENT_TIMER, pj.PJSIP_EVENT_TRANSPORT_ERROR):
                cause = "transport_error"
                detail = f"{status} {ci.lastReason} (locally generated)"
            elif answered:
                cause = "remote_bye"
            elif status in (408, 503) and not leg.rx_any:
                cause = "transport_error"
                detail = f"{status} {ci.lastReason} (no response from peer)"
            else:
                cause = "remote_final"
            self._event(leg, "ended", cause=cause, answered=answered, detail=detail, **common)
            # Drop the Call object later, outside this callback (pjsua2 is still using it).
            del self.legs[leg_id]
            self.graveyard.append(call)

    def on_call_media_state(self, leg_id: str, call: Any) -> None:
        # With the null audio device nothing must be connected: the stream sends RTP on its
        # own. Detection/bridging (later issues) will connect AudioMedia here.
        return

    # ----------------------------------------------------------------- timers
    def check_timers(self) -> None:
        now = time.monotonic()
        for leg_id, leg in list(self.legs.items()):
            if leg.ended or leg.end_cause is not None:
                continue
            if leg.answered_at is None:
                if now - leg.started >= leg.plan.ring_timeout_s:
                    self.hangup(leg_id, "ring_timeout")
            elif now - leg.answered_at >= leg.plan.max_duration_s:
                self.hangup(leg_id, "max_duration")

    # ----------------------------------------------------------------- loop
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

    def run(self) -> None:
        while not self.stopping:
            self.ep.libHandleEvents(10)
            self.graveyard.clear()
            if self.pending:
                self.retry_pending()
            self.poll_commands()
            self.check_timers()
            if os.getppid() != self.parent_pid:
                self.stopping = True
        self.shutdown()

    def _force_end(self, leg_id: str) -> None:
        leg = self.legs.pop(leg_id)
        if not leg.ended:
            leg.ended = True
            self._event(
                leg,
                "ended",
                cause="local_hangup",
                answered=leg.answered_at is not None,
                detail="worker shut down before the leg was disconnected",
            )
        leg.call._worker = None
        self.graveyard.append(leg.call)

    def shutdown(self) -> None:
        """Hang up every leg, wait (bounded) for DISCONNECTED, drop pj objects, libDestroy.

        pjsua2 pitfall: a Call whose C++ destructor runs after libDestroy asserts
        (``pjsua_call_set_user_data``), so no local variable here may keep a Call alive
        across ``libDestroy`` — per-leg work is done in helper methods.
        """
        if self.ep is None:
            return
        for leg_id in list(self.pending):
            self.hangup(leg_id, "local_hangup")
        for leg_id in list(self.legs):
            self.hangup(leg_id, "local_hangup")
        deadline = time.monotonic() + _SHUTDOWN_DRAIN_S
        while self.legs and time.monotonic() < deadline:
            self.ep.libHandleEvents(10)
        # Legs that never reached DISCONNECTED (e.g. CANCEL pending a provisional response).
        for leg_id in list(self.legs):
            self._force_end(leg_id)
        self.graveyard.clear()
        gc.collect()
        if self.acc is not None:
            with contextlib.suppress(Exception):
                self.acc.shutdown()
            self.acc = None
            gc.collect()
        with contextlib.suppress(Exception):
            self.ep.libDestroy()
        self.ep = None
        gc.collect()


def run_worker(
    worker_id: int, sip_cfg_dict: dict[str, Any], conn: Connection, sip_port: int = 0
) -> None:
    """Process entry point (``multiprocessing`` spawn target).

    ``sip_port`` asks for a specific SIP port (used when the supervisor restarts a worker so
    it keeps its port); 0 uses the config's range (or a free port for 0/0).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    cfg = SipConfig(**sip_cfg_dict)
    worker = Worker(worker_id, cfg, conn, sip_port)

    def _term(signum: int, frame: Any) -> None:
        worker.stopping = True

    signal.signal(signal.SIGTERM, _term)
    try:
        worker.start()
    except Exception as e:
        worker.log("error", f"SIP worker {worker_id} failed to start: {e}")
        with contextlib.suppress(Exception):
            worker.shutdown()
        conn.close()
        sys.exit(3)
    try:
        worker.run()
    finally:
        with contextlib.suppress(Exception):
            conn.close()
