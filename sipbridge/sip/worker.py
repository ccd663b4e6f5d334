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

Carrier routing (per-leg settings of a :class:`~sipbridge.plan.DialPlan`):

- Transports: the worker creates UDP and TCP transports (same port number when it can)
  and a TLS transport at start. A plan whose transport the worker could not create ends
  at once with ``dial_error`` naming the missing transport.
- Accounts: pjsua answers digest challenges (RFC 3261 22.2/22.3) from an account's
  credentials and binds requests to the account's transport, and SRTP is an account media
  setting. So legs use local accounts (no registration) created on demand and cached, keyed
  by ``(transport, srtp, auth)``. pjsua allows ``PJSUA_MAX_ACC`` (8) accounts: the least
  recently used account without a live leg is deleted to make room; if all 8 have live
  legs the dial fails with ``dial_error``.
- Digest auth: pjsua retries a challenged INVITE once with the credentials; a second
  challenge (wrong password) disconnects the call with that 401/407 (``remote_final``).
- SRTP "mandatory": SDES (RFC 4568) ``RTP/SAVP`` offer with ``a=crypto`` lines, also over
  UDP/TCP signalling (``srtpSecureSignaling = 0``, the "UDP/SRTP" encryption choice).
- ``Retry-After`` (RFC 3261 20.33) of the final non-2xx INVITE response is reported in the
  ``ended`` event's ``retry_after_s``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import pjsua2 as pj

from sipbridge import ipc
from sipbridge.config import SipConfig
from sipbridge.plan import DialPlan
from sipbridge.sip.tap import CLOCK_RATE_HZ, FrameTap, LegAnalysis
from sipbridge.trunkselect import parse_retry_after

_SHUTDOWN_DRAIN_S = 3.0
_SLOT_RETRY_S = 2.0
_PJ_ETOOMANY = 70010  # PJ_ETOOMANY: more calls than PJSUA_MAX_CALLS / maxCalls
_MAX_ACCOUNTS = 8  # PJSUA_MAX_ACC in the PyPI wheel (PJSIP default)
_TRANSPORT_TYPES = {
    "udp": pj.PJSIP_TRANSPORT_UDP,
    "tcp": pj.PJSIP_TRANSPORT_TCP,
    "tls": pj.PJSIP_TRANSPORT_TLS,
}
_SRTP_USE = {"off": pj.PJMEDIA_SRTP_DISABLED, "mandatory": pj.PJMEDIA_SRTP_MANDATORY}

# An account is shared by every leg with the same transport, SRTP use and credentials.
AccountKey = tuple[str, str, tuple[str, str, str] | None]


class _DialRefused(Exception):
    """The worker cannot place this leg (missing transport, no account slot, bad plan)."""


def _header_value(whole_msg: str, name: str) -> str | None:
    """First value of header ``name`` (case-insensitive) in a raw SIP message, or None."""
    head = whole_msg.replace("\r\n", "\n").split("\n\n", 1)[0]
    want = name.lower()
    value: str | None = None
    for line in head.split("\n")[1:]:
        if line[:1] in (" ", "\t"):
            if value is not None:  # folded continuation of the header we found
                value += " " + line.strip()
            continue
        if value is not None:
            break
        n, sep, v = line.partition(":")
        if sep and n.strip().lower() == want:
            value = v.strip()
    return value


def _final_response_retry_after(whole_msg: str) -> tuple[bool, float | None]:
    """(is a final non-2xx INVITE response, its Retry-After seconds or None)."""
    if not whole_msg.startswith("SIP/2.0 "):
        return False, None
    try:
        code = int(whole_msg.split(" ", 2)[1])
    except (IndexError, ValueError):
        return False, None
    cseq = _header_value(whole_msg, "CSeq") or ""
    if code < 300 or not cseq.upper().endswith("INVITE"):
        return False, None
    return True, parse_retry_after(_header_value(whole_msg, "Retry-After"))


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
    acc_key: AccountKey | None = None
    answered_at: float | None = None
    state: str = "new"
    end_cause: str | None = None  # cause decided locally before DISCONNECTED (timers, hangup)
    rx_any: bool = False  # did we ever receive a response from the peer
    retry_after_s: float | None = None  # Retry-After of the last final non-2xx response
    ended: bool = False
    sent_states: set[str] = field(default_factory=set)
    # Recipient detection: the audio tap on the conference bridge and its analysis.
    tap: Any = None  # FrameTap
    tap_connected: bool = False
    analysis: LegAnalysis | None = None


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

    def onCallTsxState(self, prm: Any) -> None:
        try:
            self._worker.on_call_tsx_state(self._leg_id, prm)
        except Exception as e:
            self._worker.log("error", f"onCallTsxState failed: {e!r}")


class Worker:
    """Owns the pjsua2 Endpoint of one worker process. Single-threaded by design."""

    def __init__(self, worker_id: int, cfg: SipConfig, conn: Connection, sip_port: int) -> None:
        self.worker_id = worker_id
        self.cfg = cfg
        self.conn = conn
        self.want_port = sip_port
        self.ep: Any = None
        # Local accounts by (transport, srtp, auth), least recently used first.
        self.accounts: OrderedDict[AccountKey, Any] = OrderedDict()
        self.transport_id: int | None = None  # the primary transport (cfg.transport)
        self.transports: dict[str, int] = {}  # "udp"/"tcp"/"tls" -> pjsua transport id
        self.transport_ports: dict[str, int] = {}
        self.transport_errors: dict[str, str] = {}  # why a transport could not be created
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
        # Telephony audio: run the conference bridge at 8 kHz mono, so G.711 needs no
        # resampling and the detection tap gets 20 ms frames of 160 samples.
        epcfg.medConfig.clockRate = CLOCK_RATE_HZ
        epcfg.medConfig.sndClockRate = CLOCK_RATE_HZ
        epcfg.medConfig.channelCount = 1
        epcfg.medConfig.audioFramePtime = 20
        ep.libInit(epcfg)
        ep.audDevManager().setNullDev()

        primary = self.cfg.transport
        last_err = ""
        for port in self._candidate_ports():
            try:
                self.transport_id = self._create_transport(primary, port)
                break
            except pj.Error as e:
                last_err = f"port {port}: {_pj_error_text(e)}"
        if self.transport_id is None:
            raise RuntimeError(f"cannot bind a SIP {primary} port: {last_err}")
        self.sip_port = self.transport_ports[primary]
        # The other transports, for trunks that ask for them. UDP and TCP share the port
        # number when possible; TLS (a TCP port too) takes any free port. A transport that
        # cannot be created only fails the legs that need it.
        for kind in ("udp", "tcp", "tls"):
            if kind == primary:
                continue
            ports = [self.sip_port, 0] if kind != "tls" and primary != "tls" else [0]
            for port in ports:
                try:
                    self._create_transport(kind, port)
                    self.transport_errors.pop(kind, None)
                    break
                except pj.Error as e:
                    self.transport_errors[kind] = _pj_error_text(e)
            if kind in self.transport_errors:
                self.log("warning", f"no SIP {kind} transport: {self.transport_errors[kind]}")
        ep.libStart()
        self.send(ipc.WorkerReady(self.worker_id, self.sip_port, self.cfg.calls_per_worker))

    def _create_transport(self, kind: str, port: int) -> int:
        tcfg = pj.TransportConfig()
        tcfg.port = port
        tcfg.boundAddress = self.cfg.listen_address
        if self.cfg.public_address:
            tcfg.publicAddress = self.cfg.public_address
        if kind == "tls":
            # Client use only (outbound calls): no certificate of our own. The carrier's
            # certificate is not verified (self-signed carriers and loopback tests);
            # TODO: make verifyServer / CA list configurable per trunk.
            tcfg.tlsConfig.verifyServer = False
        tid = int(self.ep.transportCreate(_TRANSPORT_TYPES[kind], tcfg))
        info = self.ep.transportGetInfo(tid)
        self.transports[kind] = tid
        self.transport_ports[kind] = int(str(info.localName).rsplit(":", 1)[1])
        return tid

    # ----------------------------------------------------------------- accounts
    def _account_for(self, plan: DialPlan) -> tuple[AccountKey, Any]:
        """The cached local account for this plan's settings (created on demand).

        Called outside pjsua2 callbacks only (account deletion is not callback-safe).
        """
        kind = plan.transport
        if kind not in _TRANSPORT_TYPES:
            raise _DialRefused(f"unknown SIP transport {kind!r}")
        if kind not in self.transports:
            why = self.transport_errors.get(kind, "not created")
            raise _DialRefused(f"SIP transport {kind!r} is not available in this worker: {why}")
        if plan.srtp not in _SRTP_USE:
            raise _DialRefused(f"unknown SRTP mode {plan.srtp!r} (want 'off' or 'mandatory')")
        auth: tuple[str, str, str] | None = None
        if plan.auth is not None:
            if len(plan.auth) != 3 or not all(isinstance(x, str) for x in plan.auth):
                raise _DialRefused("auth must be (username, password, realm) strings")
            auth = (plan.auth[0], plan.auth[1], plan.auth[2])
        key: AccountKey = (kind, plan.srtp, auth)
        acc = self.accounts.get(key)
        if acc is not None:
            self.accounts.move_to_end(key)
            return key, acc
        while len(self.accounts) >= _MAX_ACCOUNTS:
            busy = {leg.acc_key for leg in self.legs.values()}
            victim = next((k for k in self.accounts if k not in busy), None)
            if victim is None:
                raise _DialRefused(
                    f"all {_MAX_ACCOUNTS} pjsua accounts (PJSUA_MAX_ACC) have live calls; "
                    "no account for this transport/SRTP/credentials combination"
                )
            self._delete_account(victim)
            user = victim[2][0] if victim[2] else ""
            realm = victim[2][2] if victim[2] else ""
            self.log(  # never log the password
                "debug",
                f"evicted idle pjsua account transport={victim[0]} srtp={victim[1]} "
                f"user={user!r} realm={realm!r}",
            )
        acc = pj.Account()
        try:
            acc.create(self._account_config(kind, plan.srtp, auth), False)
        except pj.Error as e:
            raise _DialRefused(f"cannot create a pjsua account: {_pj_error_text(e)}") from None
        self.accounts[key] = acc
        return key, acc

    def _account_config(self, kind: str, srtp: str, auth: tuple[str, ...] | None) -> Any:
        acfg = pj.AccountConfig()
        host = self.cfg.public_address or self.cfg.listen_address
        acfg.idUri = f"sip:sipbridge@{host}:{self.transport_ports[kind]}"
        acfg.regConfig.registerOnAdd = False
        acfg.sipConfig.transportId = self.transports[kind]
        if kind != "udp":
            # pjsua derives the Contact's transport from the To URI, which carries no
            # ;transport= parameter: name it, so in-dialog requests come back over the
            # trunk's transport (RFC 3261 8.1.1.8, 12.2.1.1).
            acfg.sipConfig.contactForced = (
                f"<sip:sipbridge@{host}:{self.transport_ports[kind]};transport={kind}>"
            )
        if auth is not None:
            username, password, realm = auth
            # pjsua answers 401 WWW-Authenticate / 407 Proxy-Authenticate challenges whose
            # realm matches ("*" = any realm); dataType 0 = plain-text password.
            acfg.sipConfig.authCreds.append(
                pj.AuthCredInfo("digest", realm or "*", username, 0, password)
            )
        acfg.mediaConfig.srtpUse = _SRTP_USE[srtp]
        # 0: SRTP is allowed over any signalling transport ("UDP/SRTP" as well as
        # "TLS/SRTP"); pjsua's default (1) would demand TLS for SRTP.
        acfg.mediaConfig.srtpSecureSignaling = 0
        rtp_base, rtp_count = self._rtp_range()
        acfg.mediaConfig.transportConfig.port = rtp_base
        acfg.mediaConfig.transportConfig.portRange = rtp_count
        acfg.mediaConfig.transportConfig.boundAddress = self.cfg.listen_address
        if self.cfg.public_address:
            acfg.mediaConfig.transportConfig.publicAddress = self.cfg.public_address
        return acfg

    def _delete_account(self, key: AccountKey) -> None:
        acc = self.accounts.pop(key)
        with contextlib.suppress(Exception):
            acc.shutdown()
        del acc

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
        try:
            acc_key, acc = self._account_for(plan)
        except _DialRefused as e:
            self._end_without_call(plan, "dial_error", str(e))
            return
        call = _LegCall(self, acc, plan.leg_id)
        leg = _Leg(plan=plan, call=call, started=time.monotonic(), acc_key=acc_key)
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
            is_final, retry_after = _final_response_retry_after(whole)
            if is_final:
                leg.retry_after_s = retry_after
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
                self._begin_answer_analysis(leg)
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
            elif answered and whole and not whole.startswith("BYE "):
                # pjsua hung up by itself (it sent the BYE). Seen when the carrier's
                # answer is unusable, e.g. plain RTP/AVP to a mandatory-SRTP offer: pjsua
                # ACKs the 200, then sends BYE with "Reason: SIP ;cause=488" ("Unable to
                # create media session"), and the disconnect comes with the INVITE's 2xx.
                cause = "dial_error"
                detail = f"call set-up failed after answer: {status} {ci.lastReason}"
            elif answered:
                cause = "remote_bye"
            elif status in (408, 503) and not leg.rx_any:
                cause = "transport_error"
                detail = f"{status} {ci.lastReason} (no response from peer)"
            else:
                cause = "remote_final"
            self._event(
                leg,
                "ended",
                cause=cause,
                answered=answered,
                detail=detail,
                retry_after_s=leg.retry_after_s if not answered else None,
                **common,
            )
            # Drop the Call object later, outside this callback (pjsua2 is still using it).
            del self.legs[leg_id]
            self.graveyard.append(call)
            if leg.tap is not None:
                leg.tap_connected = False
                self.graveyard.append(leg.tap)
                leg.tap = None
            if leg.analysis is not None:
                leg.analysis.close()

    def on_call_tsx_state(self, leg_id: str, prm: Any) -> None:
        """Remember the Retry-After of each final non-2xx INVITE response received.

        pjsua reports a challenged INVITE (401/407 answered with credentials) only here;
        the response that disconnects the call is also seen in :meth:`on_call_state`.
        """
        leg = self.legs.get(leg_id)
        if leg is None or leg.ended:
            return
        e = prm.e
        if e.type != pj.PJSIP_EVENT_TSX_STATE or e.body.tsxState.type != pj.PJSIP_EVENT_RX_MSG:
            return
        whole = str(e.body.tsxState.src.rdata.wholeMsg)
        if whole.startswith("SIP/2.0"):
            leg.rx_any = True
            is_final, retry_after = _final_response_retry_after(whole)
            if is_final:
                leg.retry_after_s = retry_after

    def on_call_media_state(self, leg_id: str, call: Any) -> None:
        """Media became active (183 early media or the answer): connect the detection
        tap to the leg's audio. With the null audio device nothing else needs connecting:
        the stream sends RTP on its own."""
        leg = self.legs.get(leg_id)
        if leg is None or leg.ended or not leg.plan.detection:
            return
        if leg.analysis is None:
            leg.analysis = LegAnalysis(leg.plan.detection, leg.plan.leg_id)
            phase = "answer" if leg.answered_at is not None else "early"
            started = leg.analysis.start_phase(phase)
            # No analysis wanted now: still tap if an answer phase will follow.
            if not started and (phase == "answer" or not leg.plan.detection.get("answer")):
                return
        self._connect_tap(leg, call)

    def _connect_tap(self, leg: _Leg, call: Any) -> None:
        try:
            aud = call.getAudioMedia(-1)
        except pj.Error:
            return  # no active audio yet
        if leg.tap is None:
            leg.tap = FrameTap(f"tap-{leg.plan.leg_id}")
        try:
            aud.startTransmit(leg.tap)
            leg.tap_connected = True
        except pj.Error as e:
            self.log("warning", f"detection tap for {leg.plan.leg_id}: {_pj_error_text(e)}")

    def _disconnect_tap(self, leg: _Leg) -> None:
        if not leg.tap_connected:
            return
        leg.tap_connected = False
        with contextlib.suppress(pj.Error):
            leg.call.getAudioMedia(-1).stopTransmit(leg.tap)
        leg.tap.frames.clear()

    def _begin_answer_analysis(self, leg: _Leg) -> None:
        """At answer: finish the early phase with the frames already queued, then start
        the answer phase (t = 0 at the 200 OK)."""
        if leg.analysis is None:
            if not (leg.plan.detection and leg.plan.detection.get("answer")):
                return
            leg.analysis = LegAnalysis(leg.plan.detection, leg.plan.leg_id)
        self._pump_leg(leg)
        if leg.tap is not None:
            leg.tap.frames.clear()
        if not leg.analysis.start_phase("answer"):
            self._disconnect_tap(leg)

    def _pump_leg(self, leg: _Leg) -> None:
        """Feed a leg's queued frames to its detector and report what it decides."""
        analysis, tap = leg.analysis, leg.tap
        if analysis is None or tap is None:
            return
        frames: list[bytes] = []
        while tap.frames:
            frames.append(tap.frames.popleft())
        if not frames:
            return
        phase = analysis.phase or ""
        for ev in analysis.feed(frames):
            self.send(ipc.DetectionReport(
                leg_id=leg.plan.leg_id, call_sid=leg.plan.call_sid, worker_id=self.worker_id,
                ts=time.time(), phase=phase, kind=ev.kind, detection=ev.detection.to_dict(),
            ))
        if not analysis.active and phase == "answer":
            self._disconnect_tap(leg)  # decided: stop paying for the tap

    def pump_media(self) -> None:
        for leg in list(self.legs.values()):
            if leg.tap_connected and not leg.ended:
                self._pump_leg(leg)

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
            self.pump_media()
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
        if leg.tap is not None:
            self.graveyard.append(leg.tap)
            leg.tap = None

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
        # Accounts go after every Call and before libDestroy.
        for key in list(self.accounts):
            self._delete_account(key)
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
