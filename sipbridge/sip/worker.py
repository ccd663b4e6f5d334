"""A SIP worker process: one pjsua2 Endpoint, a few call legs, driven over a Pipe.

This is the only module in sipbridge that imports pjsua2. It runs as a
``multiprocessing`` target (:func:`run_worker`, forked from the pool's fork server). The
process main thread owns the Endpoint (``threadCnt = 0``, ``mainThreadOnly = True``): it
alternates ``libHandleEvents`` with draining commands from the supervisor and checking the
per-leg timers, so every pjsua2 callback and every Python reference to a pj object lives
on one thread.

Idle cost: the loop sleeps in ``libHandleEvents`` until a SIP or RTP packet arrives or
the earliest timer it owns is due (up to 250 ms with nothing to do; 100 ms while a
detection tap is fed: frames are analysed in batches). RTP sockets live on the SIP
ioqueue (``medConfig.hasIoqueue = False``), so there is no media thread polling every
10 ms; a small waker thread turns a command from the supervisor into a CRLF keep-alive
datagram to the worker's own UDP port (:class:`_Waker`). Wake-ups that only carried RTP
skip the loop's chores.

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
  at once with ``dial_error`` naming the missing transport. TLS legs use one more TLS
  transport per TLS profile (verify, CA file; created on first use), since pjsip keeps TLS
  settings per transport: the carrier's certificate and host name are verified (RFC 5922)
  unless the plan opts out, and a refusal ends the leg (``transport_error``) with a
  detail naming why (:meth:`Worker.on_transport_state`).
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

The agent side (all on the same loop thread; callbacks only set state, the loop acts):

- Bridge (``BridgeLegs``, or a plan's ``bridge_with`` once both legs are CONFIRMED): the
  two calls' ``AudioMedia`` transmit to each other on the conference bridge (kept as
  "edges", re-connected on every media change). A plan with ``bridge_with`` is paired at
  dial time, so either leg's end ends the other (``bridged_bye``: BYE, or CANCEL before
  answer) even before the audio is joined. DTMF received on the agent leg is relayed to
  the carrier leg as RFC 4733 with the received duration (``DtmfReceived.relayed_to``).
- Every call gets the null sound device's capture port (silence) as a transmitter:
  without any transmitter the conference bridge clocks a stream only now and then, and
  RFC 4733 digits queued after the stream went quiet were never sent.
- ``SendDtmf``: digits are sent one by one (``CallSendDtmfParam``, RFC 2833 method, the
  given duration) from the loop against monotonic deadlines (``gap_ms``; ``w`` 0.5 s,
  ``W`` 1 s); ``DtmfSent`` when the string is done. Invalid characters are logged and
  skipped.
- DTMF in: RFC 4733 events (reported once, at their end, with their duration) and SIP
  INFO ``application/dtmf-relay`` come from pjsua's ``onDtmfEvent``; INFO
  ``application/dtmf`` is parsed here and answered 200 through pjsip's C API (ctypes),
  since pjsua2 cannot answer an in-dialog request.
- ``PlayAudio``: an ``AudioMediaPlayer`` (no loop) into the leg; ``onEof2`` sets a flag,
  the loop reports ``PlaybackDone`` and drops the player (never inside the callback).
- ``Listen``: a :class:`~sipbridge.sip.tap.PhaseListener` ("hold":
  ``sipbridge.media.hold.HoldListener``) on the leg's tap; reports
  ``DetectionReport(phase=...)``.
- Packet guard (:mod:`sipbridge.sip.guard`, :mod:`sipbridge.sip.listengate`): every
  received request is checked before pjsip's transaction layer (rate per source, malformed,
  hostile Via, unknown dialogs, out-of-dialog INVITEs from sources outside
  ``sip.inbound_allow`` answered 403 statelessly); inbound TCP connections are bounded.
- Inbound INVITEs (SIP-triggered mode): ``onIncomingCall`` on every account. Sources
  outside ``sip.inbound_allow`` get 403 (from the guard; re-checked here); others become
  a leg ``in-<uuid4>`` announced with ``InboundCall`` and answered by ``Respond`` (18x:
  ``media_from`` audio is sent into it as early media; 200: bridged with ``media_from``;
  >= 300: rejected). No Respond within 30 s (120 s after a provisional one) ends it with
  408 (480).
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import gc
import math
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import pjsua2 as pj

from sipbridge import ipc
from sipbridge.config import MAX_TLS_PROFILES, SipConfig
from sipbridge.plan import DialPlan
from sipbridge.rxpolicy import RxPolicy, SourceLimiter
from sipbridge.sip.agentleg import (
    dtmf_steps,
    event_digit,
    header,
    parse_info_dtmf,
    source_allowed,
    split_message,
)
from sipbridge.sip.forkserver_init import ignore_stop_signals
from sipbridge.sip.guard import PacketGuard
from sipbridge.sip.listengate import ListenGate
from sipbridge.sip.sdp import negotiation_detail, sdp_of
from sipbridge.sip.tap import CLOCK_RATE_HZ, FrameTap, LegAnalysis, PhaseListener
from sipbridge.tlsca import os_ca_bundle, tls_reject_text
from sipbridge.trunkselect import parse_retry_after

_SHUTDOWN_DRAIN_S = 3.0
# libHandleEvents waits: the longest sleep with nothing due (commands, SIP and RTP wake
# it; a closed pipe to the supervisor wakes it too), while detection or listening
# taps are fed, and with deferred work (or without a waker). Taps are drained in batches
# of ~5 frames: a decision reaches the supervisor at most 100 ms after the frame that
# made it (+50 ms on average, against ~700 ms of speech timing), and a worker with two
# detecting calls spends ~0.6 % of a core less than when woken every 20 ms.
_IDLE_WAIT_MS = 250
_TAP_WAIT_MS = 100
_BUSY_WAIT_MS = 10
# How long a disconnected audio port is kept before it is destroyed: the bridge applies
# queued operations on its next 20 ms tick; 0.5 s leaves a wide margin.
_PORT_COOLING_S = 0.5
_SLOT_RETRY_S = 2.0
_LINGER_RETRY_S = 34.0  # Timer B (64 * T1 = 32 s) and a margin
# The status pjsua gives a call it ends because the answer's SDP was unusable (488 "Unable
# to create media session"; 415/406/606 from other SDP failures).
_MEDIA_REFUSED = frozenset({406, 415, 488, 606})
_PJ_ETOOMANY = 70010  # PJ_ETOOMANY: more calls than PJSUA_MAX_CALLS / maxCalls
_MAX_ACCOUNTS = 8  # PJSUA_MAX_ACC in the PyPI wheel (PJSIP default)
_DTMF_IS_END = 2  # PJMEDIA_STREAM_DTMF_IS_END (OnDtmfEventParam.flags)
_TRANSPORT_TYPES = {
    "udp": pj.PJSIP_TRANSPORT_UDP,
    "tcp": pj.PJSIP_TRANSPORT_TCP,
    "tls": pj.PJSIP_TRANSPORT_TLS,
}
_SRTP_USE = {"off": pj.PJMEDIA_SRTP_DISABLED, "mandatory": pj.PJMEDIA_SRTP_MANDATORY}
# Inbound INVITEs (SIP-triggered mode): the supervisor must Respond within this time,
# and after a provisional Respond (180/183) send the final one within the ring time.
_INBOUND_RESPOND_S = 30.0
_INBOUND_RING_S = 120.0
_INBOUND_MAX_DURATION_S = 4 * 3600.0
# Media timeout: an answered leg's RTP receive counter is read this many times per
# media_timeout_s (a stream-statistics read, ~1 µs), so silence is noticed within
# 1.25 x media_timeout_s at worst.
_MEDIA_CHECKS_PER_TIMEOUT = 4
_GUARD_REPORT_S = 10.0  # how often the packet guard's drop counts are logged

# An account is shared by every leg with the same transport, SRTP use and credentials.
AccountKey = tuple[str, str, tuple[str, str, str] | None]


_PJ_LIB: Any = None


def _pj_lib() -> Any:
    """The pjsua2 extension as a ctypes library: it exports the pjsip/pjsua C symbols,
    for the few things pjsua2 does not expose."""
    global _PJ_LIB
    if _PJ_LIB is None:
        lib = ctypes.CDLL(pj._pjsua2.__file__)
        lib.pjsip_rdata_get_dlg.restype = ctypes.c_void_p
        lib.pjsip_rdata_get_dlg.argtypes = [ctypes.c_void_p]
        lib.pjsip_dlg_respond.restype = ctypes.c_int
        lib.pjsip_dlg_respond.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                          ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.pjsua_call_get_count.restype = ctypes.c_uint
        lib.pjsua_call_get_count.argtypes = []
        _PJ_LIB = lib
    return _PJ_LIB


def respond_in_dialog(rdata: Any, status: int) -> bool:
    """Answer an in-dialog request from ``onCallTsxState`` (pjsua2 has no API for it):
    ``pjsip_dlg_respond(pjsip_rdata_get_dlg(rdata), rdata, status, ...)`` through ctypes.
    Only valid inside the callback that carries ``rdata``. False if it could not be done."""
    try:
        lib = _pj_lib()
        ptr = int(rdata.pjRxData)
        if not ptr:
            return False
        dlg = lib.pjsip_rdata_get_dlg(ptr)
        if not dlg:
            return False
        return int(lib.pjsip_dlg_respond(dlg, ptr, status, None, None, None)) == 0
    except Exception:
        return False


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
    end_detail: str = ""  # the ended event's detail for a locally decided cause
    rx_any: bool = False  # did we ever receive a response from the peer
    sip_call_id: str = ""  # known to the packet guard while the leg lives
    retry_after_s: float | None = None  # Retry-After of the last final non-2xx response
    ended: bool = False
    sent_states: set[str] = field(default_factory=set)
    # Recipient detection: the audio tap on the conference bridge and its analysis.
    tap: Any = None  # FrameTap
    tap_connected: bool = False
    analysis: LegAnalysis | None = None
    # Listen: a later analysis phase ("hold") on the same tap.
    listener: PhaseListener | None = None
    # Agent side / bridge.
    inbound: bool = False  # an INVITE we received (SIP-triggered mode)
    deadline: float | None = None  # inbound: monotonic time by which a Respond is due
    provisional_sent: bool = False  # inbound: a 18x went out
    final_sent: bool = False  # inbound: a final response went out
    partner: str | None = None  # the other leg of the bridge: its end ends this leg
    relay_to: str | None = None  # DTMF received here is relayed to this leg (RFC 4733)
    dtmf_jobs: deque[_DtmfJob] = field(default_factory=deque)
    # Media timeout: the answered leg's audio is sendrecv (not on hold), the stream's RX
    # packet count at the last check, when it last changed, when to check next.
    media_live: bool = False
    audio_idx: int = -1
    rx_pkts: int = -1
    rx_seen_at: float = 0.0
    rx_check_at: float = 0.0
    remote_sdp: str = ""  # the last SDP the peer sent (for a negotiation failure text)


@dataclass
class _DtmfJob:
    digits: str
    steps: list[tuple[str | None, float]]
    duration_ms: int
    index: int = 0
    next_at: float = 0.0


class _LegCall(pj.Call):
    """pj.Call subclass forwarding callbacks to the worker (same thread)."""

    def __init__(self, worker: Worker, acc: Any, leg_id: str, call_id: int | None = None) -> None:
        if call_id is None:
            pj.Call.__init__(self, acc)
        else:  # an incoming call (onIncomingCall)
            pj.Call.__init__(self, acc, call_id)
        self._worker = worker
        self._leg_id = leg_id

    # pjsua2 pitfall: a Python exception must never leave a director callback — SWIG turns
    # it into a C++ exception thrown through pjsip's C frames, which aborts the process
    # (SIGSEGV). Each callback catches everything, and its error path touches nothing
    # that can itself fail (``_worker`` is None once the leg was force-ended).

    def _dispatch(self, name: str, fn: Callable[[Worker], None]) -> None:
        worker = getattr(self, "_worker", None)
        if worker is None:
            return
        worker.kicked = True
        try:
            fn(worker)
        except BaseException as e:
            with contextlib.suppress(BaseException):
                worker.log("error", f"{name} failed: {e!r}")

    def onCallState(self, prm: Any) -> None:
        self._dispatch("onCallState", lambda w: w.on_call_state(self._leg_id, self, prm))

    def onCallMediaState(self, prm: Any) -> None:
        self._dispatch("onCallMediaState", lambda w: w.on_call_media_state(self._leg_id, self))

    def onCallTsxState(self, prm: Any) -> None:
        self._dispatch("onCallTsxState", lambda w: w.on_call_tsx_state(self._leg_id, prm))

    def onDtmfEvent(self, prm: Any) -> None:
        self._dispatch("onDtmfEvent", lambda w: w.on_dtmf_event(self._leg_id, prm))


class _WorkerAccount(pj.Account):
    """A local account; receives inbound INVITEs for the worker."""

    def __init__(self, worker: Worker) -> None:
        pj.Account.__init__(self)
        self._worker: Worker | None = worker

    def onIncomingCall(self, prm: Any) -> None:
        w = getattr(self, "_worker", None)
        if w is None:
            return
        w.kicked = True
        try:
            w.on_incoming_call(self, prm)
        except BaseException as e:  # never into pjsua2 (see _LegCall)
            with contextlib.suppress(BaseException):
                w.log("error", f"onIncomingCall failed: {e!r}")


class _WorkerEndpoint(pj.Endpoint):
    """The worker's Endpoint: remembers why TLS peers were refused (a leg's detail)."""

    def __init__(self, worker: Worker) -> None:
        pj.Endpoint.__init__(self)
        self._worker: Worker | None = worker

    def onTransportState(self, prm: Any) -> None:
        w = getattr(self, "_worker", None)
        if w is None:
            return
        try:
            w.on_transport_state(prm)
        except BaseException as e:  # never into pjsua2 (see _LegCall)
            with contextlib.suppress(BaseException):
                w.log("error", f"onTransportState failed: {e!r}")


class _Player(pj.AudioMediaPlayer):
    """A WAV player into one leg; ``onEof2`` only sets a flag (the loop reports it)."""

    def __init__(self, leg_id: str, call_sid: str, path: str) -> None:
        pj.AudioMediaPlayer.__init__(self)
        self.leg_id = leg_id
        self.call_sid = call_sid
        self.path = path
        self.eof = False

    def onEof2(self) -> None:
        # Media clock thread, possibly while this object is being torn down: never raise.
        with contextlib.suppress(BaseException):
            self.eof = True


class _Waker:
    """Wakes the loop's ``libHandleEvents`` when the supervisor sends a command.

    The loop sleeps in pjsip's ioqueue (up to ``_IDLE_WAIT_MS``), which knows nothing of
    the command pipe. This thread blocks on the pipe and, when it becomes readable, sends
    a CRLF keep-alive datagram to the worker's own UDP transport: pjsip discards a packet
    of only CR/LF (the RFC 5626 4.4.1 keep-alive) without parsing it, but the ioqueue
    returns. It never reads the pipe: after a wake it waits for the loop to drain it
    (``drained``), so one burst of commands costs one datagram. Pipe EOF (supervisor gone)
    wakes the loop the same way, and the loop notices the EOF itself.
    """

    def __init__(self, conn: Connection, target: tuple[str, int], family: int) -> None:
        self.conn = conn
        self.target = target
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.drained = threading.Event()
        self.pending = False  # a wake-up was sent and the loop has not read the pipe since
        self.thread = threading.Thread(target=self._run, name="sip-waker", daemon=True)

    @classmethod
    def start_for(cls, worker: Worker) -> _Waker | None:
        """A waker aimed at the worker's UDP transport, or None (the loop then polls)."""
        port = worker.transport_ports.get("udp")
        if not port:
            return None
        addr = worker.cfg.listen_address or "0.0.0.0"
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        if addr in ("0.0.0.0", "::"):
            addr = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        try:
            waker = cls(worker.conn, (addr, port), family)
        except OSError as e:
            worker.log("warning", f"no waker, polling every {_BUSY_WAIT_MS} ms: {e}")
            return None
        waker.thread.start()
        return waker

    def _run(self) -> None:
        try:
            while True:
                self.conn.poll(None)
                self.pending = True
                self.sock.sendto(b"\r\n\r\n", self.target)
                self.drained.wait()
                self.drained.clear()
        except Exception:  # pipe closed at exit, socket gone: the loop polls on its own
            return


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
        # TLS peers refused by certificate verification, latest last (see
        # on_transport_state): (monotonic time, remote address, pj verify bits, subject CN,
        # alt names).
        self.tls_rejects: deque[tuple[float, str, int, str, list[str]]] = deque(maxlen=16)
        self.sip_port = 0
        self.capacity = cfg.calls_per_worker
        self.legs: dict[str, _Leg] = {}
        self.graveyard: list[Any] = []  # Call objects to drop outside pj callbacks
        # Dials waiting for pjsua to release a call slot: leg_id -> (plan, retry deadline).
        self.pending: dict[str, tuple[DialPlan, float]] = {}
        self.stopping = False
        # The account that must exist to receive INVITEs (never evicted).
        self.default_acc_key: AccountKey | None = None
        # Inbound calls refused in onIncomingCall, kept until DISCONNECTED.
        self.rejected: dict[str, Any] = {}
        # Audio connections between legs: (source leg, destination leg).
        self.edges: set[tuple[str, str]] = set()
        self.players: list[_Player] = []
        # pjsua2 pitfall (PJSIP 2.14+): the conference bridge applies connect, disconnect
        # and remove-port operations later, on its clock thread. Destroying an audio port
        # frees its pjmedia port at once, so the bridge can still call into freed memory
        # (seen as SIGSEGV under load). Detection taps are therefore pooled and reused,
        # never destroyed while the worker runs; players are disconnected first and
        # destroyed only after the bridge has had time to apply that.
        self.spare_taps: list[FrameTap] = []
        self.all_taps: list[FrameTap] = []
        self.cooling: list[tuple[float, Any]] = []  # (destroy after, pj object)
        # Work deferred out of pjsua2 callbacks to the loop (hang up the bridge partner,
        # relay a DTMF digit): run right after libHandleEvents.
        self.soon: list[Callable[[], None]] = []
        self.waker: _Waker | None = None
        # A pjsua2 callback ran since the loop last did its chores (see run()).
        self.kicked = False
        # The audio codecs pjsua offers (for a negotiation failure's detail).
        self.offered_codecs: list[str] = []
        # The SIP packet guard (sipbridge.sip.guard): sees every request before pjsip.
        self.guard: PacketGuard | None = None
        self.listen_gate: ListenGate | None = None  # bounds inbound TCP/TLS connections
        self.guard_report_at = 0.0

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
        ep = _WorkerEndpoint(self)
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
        # No nameserver: pjsip's own DNS resolver (SRV/NAPTR, its own packet parser,
        # with a history of advisories) is never created; host names are resolved by
        # the OS (getaddrinfo, A/AAAA). No STUN servers either.
        epcfg.uaConfig.nameserver.clear()
        epcfg.uaConfig.stunServer.clear()
        epcfg.logConfig.level = self.cfg.log_level
        epcfg.logConfig.consoleLevel = self.cfg.log_level
        # Telephony audio: run the conference bridge at 8 kHz mono, so G.711 needs no
        # resampling and the detection tap gets 20 ms frames of 160 samples.
        epcfg.medConfig.clockRate = CLOCK_RATE_HZ
        epcfg.medConfig.sndClockRate = CLOCK_RATE_HZ
        epcfg.medConfig.channelCount = 1
        epcfg.medConfig.audioFramePtime = 20
        # Media (RTP/RTCP sockets) on the SIP ioqueue, polled by this loop, instead of a
        # media thread of its own: pjmedia's worker thread polls its ioqueue every 10 ms
        # whether or not a call exists (~0.3 % of a core per idle worker), while this
        # loop sleeps until a packet, a timer or a command arrives. Outgoing RTP is
        # clocked by the conference bridge's thread (the null sound device), not here.
        epcfg.medConfig.hasIoqueue = False
        epcfg.medConfig.threadCnt = 0
        ep.libInit(epcfg)
        ep.audDevManager().setNullDev()
        with contextlib.suppress(Exception):
            self.offered_codecs = [str(c.codecId).rsplit("/1", 1)[0]
                                   for c in ep.codecEnum2() if int(c.priority) > 0]

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
        self._install_guard()
        # SIP-triggered mode: pjsua hands inbound INVITEs to an account (onIncomingCall),
        # so one must exist before any dial: a default account on the primary transport,
        # never evicted (it takes one of the PJSUA_MAX_ACC slots, so only when inbound
        # calls are allowed at all; otherwise any dial account refuses them with 403).
        if self.cfg.inbound_allow:
            key: AccountKey = (primary, "off", None)
            acc = _WorkerAccount(self)
            acc.create(self._account_config(primary, "off", None), True)
            self.accounts[key] = acc
            self.default_acc_key = key
        self.waker = _Waker.start_for(self)
        self.send(ipc.WorkerReady(self.worker_id, self.sip_port, self.cfg.calls_per_worker))

    def _install_guard(self) -> None:
        """Register the packet guard and check its view of pjsip's rx data (fail closed:
        a worker that cannot be guarded does not start)."""
        policy = RxPolicy(
            inbound_allow=list(self.cfg.inbound_allow),
            limiter=SourceLimiter(self.cfg.source_rate_limit_per_s, self.cfg.source_rate_burst),
        )
        guard = PacketGuard(_pj_lib(), policy, self._accepting,
                            lambda level, msg: self.log(level, msg))
        guard.install()
        self.guard = guard
        port = self.transport_ports.get("udp")
        addr = self.cfg.listen_address or "0.0.0.0"
        if addr in ("0.0.0.0", "::"):
            addr = "::1" if addr == "::" else "127.0.0.1"
        guard.calibrate((addr, port) if port else None, self.ep.libHandleEvents)
        gate = ListenGate(_pj_lib(), lambda level, msg: self.log(level, msg))
        gate.install(self.transport_ports.get("tcp"), self.transport_ports.get("tls"))
        self.listen_gate = gate

    def _accepting(self) -> str | None:
        """None if a new inbound call could be taken now, else why not (packet guard)."""
        if self.stopping:
            return "stopping"
        if len(self.legs) >= self.capacity:
            return "full"
        return None

    def _dialog_known(self, leg: _Leg, call_id: str) -> None:
        """In-dialog requests with this Call-ID now reach pjsip (packet guard)."""
        if call_id and not leg.sip_call_id and self.guard is not None:
            leg.sip_call_id = call_id
            self.guard.policy.dialogs.add(call_id)

    def _dialog_ended(self, leg: _Leg) -> None:
        if leg.sip_call_id and self.guard is not None:
            self.guard.policy.dialogs.end(leg.sip_call_id)

    def _guard_tick(self) -> None:
        if self.listen_gate is not None:
            self.listen_gate.tick()
        now = time.monotonic()
        if self.guard is None or now < self.guard_report_at:
            return
        self.guard_report_at = now + _GUARD_REPORT_S
        gate = self.listen_gate.take_report() if self.listen_gate is not None else ""
        dropped = " ".join(x for x in (self.guard.report(), gate) if x)
        if dropped:
            self.log("warning", f"SIP packet guard dropped or refused: {dropped}")

    def _create_transport(self, kind: str, port: int, key: str = "", verify: bool = True,
                          ca_file: str = "") -> int:
        """Create a transport, known as ``key`` (default: ``kind``)."""
        tcfg = pj.TransportConfig()
        tcfg.port = port
        tcfg.boundAddress = self.cfg.listen_address
        if self.cfg.public_address:
            tcfg.publicAddress = self.cfg.public_address
        if kind == "tls":
            # Client use (outbound legs): no certificate of our own. pjsip's TLS settings
            # belong to a transport (listener), so legs get one per TLS profile
            # (_tls_transport); this one (start-up) verifies against the OS bundle.
            # verifyServer: pjsip checks the chain against CaListFile (it loads no default
            # CA store) and that the certificate names the host of the request's
            # destination (SAN DNS/IP/URI or CN, exact), and closes the connection on
            # failure; the host name is also sent as SNI unless it is an IP address.
            tcfg.tlsConfig.verifyServer = verify
            tcfg.tlsConfig.CaListFile = ca_file if key else (os_ca_bundle() or "")
        tid = int(self.ep.transportCreate(_TRANSPORT_TYPES[kind], tcfg))
        info = self.ep.transportGetInfo(tid)
        self.transports[key or kind] = tid
        self.transport_ports[key or kind] = int(str(info.localName).rsplit(":", 1)[1])
        return tid

    def _tls_transport(self, plan: DialPlan) -> str:
        """The key of the TLS transport for this plan's TLS profile (created on first
        use): legs with other CA files or verification settings never share one."""
        ca_file = plan.tls_ca_file or os_ca_bundle() or ""
        if plan.tls_verify and not ca_file:
            raise _DialRefused("TLS: no CA list to verify the peer with (no OS CA bundle; "
                               "set tls.ca_file, or tls.verify: false)")
        key = f"tls|{'verify' if plan.tls_verify else 'noverify'}|{ca_file}"
        if key in self.transports:
            return key
        if sum(1 for k in self.transports if k.startswith("tls|")) >= MAX_TLS_PROFILES:
            raise _DialRefused(f"more than {MAX_TLS_PROFILES} TLS profiles (CA file, verify) "
                               "in use: share CA files between trunks")
        try:
            self._create_transport("tls", 0, key, plan.tls_verify, ca_file)
        except pj.Error as e:
            raise _DialRefused(f"cannot create a TLS transport: {_pj_error_text(e)}") from None
        return key

    def on_transport_state(self, prm: Any) -> None:
        """pjsua2 callback: a TLS connection that failed verification is kept as
        (remote address, verify bits, certificate names) for the leg it fails."""
        info = prm.tlsInfo
        if info.isEmpty() or not info.verifyStatus:
            return
        cert = info.remoteCertInfo
        kinds = {pj.PJ_SSL_CERT_NAME_DNS: "DNS", pj.PJ_SSL_CERT_NAME_IP: "IP",
                 pj.PJ_SSL_CERT_NAME_URI: "URI"}
        names = [f"{kinds[n.type]}:{n.name}" for n in cert.subjectAltName if n.type in kinds]
        self.tls_rejects.append((time.monotonic(), str(info.remoteAddr),
                                 int(info.verifyStatus), str(cert.subjectCn), names))

    def _tls_reject_detail(self, leg: _Leg) -> str:
        """Why this TLS leg's connection was refused ("" if not for its certificate): the
        latest refusal since the leg started of a peer on its port (its exact address
        first; a host name resolves to an address we don't see here)."""
        m = re.search(r"@(\[[^\]]+\]|[^:;>]+)(?::(\d+))?", leg.plan.request_uri)
        if m is None:
            return ""
        host, port = m.group(1), m.group(2) or "5061"
        recent = [r for r in self.tls_rejects
                  if r[0] >= leg.started and r[1].rsplit(":", 1)[-1] == port]
        exact = [r for r in recent if r[1] == f"{host}:{port}"]
        for _, peer, status, cn, names in (exact or recent)[-1:]:
            return tls_reject_text(status, peer, host, cn, names)
        return ""

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
        if kind == "tls":
            kind = self._tls_transport(plan)
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
            busy = {leg.acc_key for leg in self.legs.values()} | {self.default_acc_key}
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
        acc = _WorkerAccount(self)
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
            # trunk's transport (RFC 3261 8.1.1.8, 12.2.1.1). (kind: "tls|<profile>".)
            acfg.sipConfig.contactForced = (
                f"<sip:sipbridge@{host}:{self.transport_ports[kind]}"
                f";transport={kind.split('|', 1)[0]}>"
            )
        if auth is not None:
            username, password, realm = auth
            # pjsua answers 401 WWW-Authenticate / 407 Proxy-Authenticate challenges whose
            # realm matches ("*" = any realm); dataType 0 = plain-text password.
            acfg.sipConfig.authCreds.append(
                pj.AuthCredInfo("digest", realm or "*", username, 0, password)
            )
        # Attack surface off (see README "Security"): no ICE, TURN or STUN. PJSIP's
        # ICE code has had memory-safety advisories (a long ufrag overflowed a buffer);
        # with ICE disabled the media transport is plain UDP and the peer's ICE
        # attributes are never parsed. Set explicitly, not left to library defaults.
        acfg.natConfig.iceEnabled = False
        acfg.natConfig.turnEnabled = False
        acfg.natConfig.sipStunUse = pj.PJSUA_STUN_USE_DISABLED
        acfg.natConfig.mediaStunUse = pj.PJSUA_STUN_USE_DISABLED
        # RFC 4028 session timers: refreshes (re-INVITE/UPDATE with Session-Expires) from
        # the peer are answered; when the peer asks for timers, pjsua ends a session that
        # is not refreshed in time (BYE), and a refresh of ours that fails ends it too.
        acfg.callConfig.timerUse = pj.PJSUA_SIP_TIMER_OPTIONAL
        acfg.callConfig.timerSessExpiresSec = self.cfg.session_expires_s
        acfg.callConfig.timerMinSESec = self.cfg.session_min_se_s
        # SRTP only where the trunk asks for it: "off" is PJMEDIA_SRTP_DISABLED (no
        # optional SRTP offer, SDES a=crypto lines are never processed), never OPTIONAL.
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
        acc._worker = None
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
            self.dtmf(msg.leg_id, msg.digits, msg.duration_ms, msg.gap_ms)
        elif isinstance(msg, ipc.BridgeLegs):
            self.bridge(msg.carrier_leg, msg.agent_leg)
        elif isinstance(msg, ipc.PlayAudio):
            self.play(msg.leg_id, msg.path)
        elif isinstance(msg, ipc.Listen):
            self.listen(msg.leg_id, msg.phase, msg.config)
        elif isinstance(msg, ipc.Respond):
            self.respond(msg.leg_id, msg.status, msg.reason, msg.media_from)
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
        if plan.bridge_with:
            # An agent leg whose carrier leg is already gone (the carrier hung up, or
            # refused the media, between its answer and this Dial): never send it.
            partner = self.legs.get(plan.bridge_with)
            if partner is None or partner.ended or partner.end_cause is not None:
                self._end_without_call(plan, "bridged_bye",
                                       f"leg {plan.bridge_with} ended before this INVITE")
                return
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
                # Worse, a leg hung up before any response (e.g. an agent URI that does
                # not answer) is reported DISCONNECTED at once, but its INVITE
                # transaction cannot be CANCELled (RFC 3261 9.1) and keeps the pjsua slot
                # until Timer B (32 s): wait for those slots too.
                window = _SLOT_RETRY_S
                if self._lingering_slots() > 0:
                    window = _LINGER_RETRY_S
                    if retry_until is None:
                        self.log("warning", f"{plan.leg_id}: waiting for a pjsua call slot "
                                 "held by a hung-up unanswered INVITE (Timer B)")
                deadline = retry_until or time.monotonic() + window
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
        if plan.bridge_with:
            self._pair(plan.leg_id, plan.bridge_with, connect=False)
        if "trying" not in leg.sent_states and not leg.ended:
            leg.sent_states.add("trying")
            call_id = ""
            with contextlib.suppress(Exception):
                call_id = str(call.getInfo().callIdString)
            self._dialog_known(leg, call_id)
            self._event(leg, "trying", sip_call_id=call_id)

    def _lingering_slots(self) -> int:
        """pjsua call slots busy without a live leg (see :meth:`dial`)."""
        try:
            used = int(_pj_lib().pjsua_call_get_count())
        except Exception:
            return 0
        return max(0, used - len(self.legs) - len(self.rejected))

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
        if leg.inbound and leg.answered_at is None and not leg.final_sent:
            # An INVITE we have not answered: end it with a final response.
            prm.statusCode = status or (480 if leg.provisional_sent else 408)
            leg.final_sent = True
        try:
            # Before answer pjsua sends CANCEL (RFC 3261 9.1; deferred until a provisional
            # response arrives), after answer BYE (RFC 3261 15.1.1).
            leg.call.hangup(prm)
        except pj.Error as e:
            self.log("warning", f"hangup {leg_id}: {_pj_error_text(e)}")

    # ----------------------------------------------------------------- DTMF
    def dtmf(self, leg_id: str, digits: str, duration_ms: int = 160, gap_ms: int = 80) -> None:
        """Queue a DTMF string; :meth:`run_dtmf` sends it digit by digit (RFC 4733)."""
        leg = self.legs.get(leg_id)
        if leg is None or leg.ended:
            self.log("warning", f"DTMF for unknown leg {leg_id!r}")
            return
        steps, invalid = dtmf_steps(digits, duration_ms, gap_ms)
        if invalid:
            self.log("warning", f"DTMF {leg_id}: invalid characters {invalid!r} ignored")
        job = _DtmfJob(digits, steps, int(duration_ms), next_at=time.monotonic())
        leg.dtmf_jobs.append(job)

    def _send_digit(self, leg: _Leg, digit: str, duration_ms: int) -> None:
        if leg.ended:
            return
        prm = pj.CallSendDtmfParam()
        prm.method = pj.PJSUA_DTMF_METHOD_RFC2833
        prm.duration = int(duration_ms)
        prm.digits = digit
        try:
            leg.call.sendDtmf(prm)
        except pj.Error as e:
            self.log("warning", f"DTMF {leg.plan.leg_id}: {_pj_error_text(e)}")

    def run_dtmf(self) -> None:
        """Send the digits whose time has come (never waits: monotonic deadlines)."""
        now = time.monotonic()
        for leg in list(self.legs.values()):
            while leg.dtmf_jobs and not leg.ended:
                job = leg.dtmf_jobs[0]
                if now < job.next_at:
                    break
                if job.index >= len(job.steps):
                    leg.dtmf_jobs.popleft()
                    self.send(ipc.DtmfSent(
                        leg_id=leg.plan.leg_id, call_sid=leg.plan.call_sid,
                        worker_id=self.worker_id, ts=time.time(), digits=job.digits,
                    ))
                    continue
                digit, wait_s = job.steps[job.index]
                job.index += 1
                floor = now
                if digit is not None:
                    self._send_digit(leg, digit, job.duration_ms)
                    # A late loop must not squash the tone: the next step (or DtmfSent,
                    # after which the call may be hung up) waits for its end at least.
                    floor = now + job.duration_ms / 1000
                # From the previous deadline, so steps do not drift with loop latency.
                job.next_at = max(job.next_at + wait_s, floor)

    def on_dtmf_event(self, leg_id: str, prm: Any) -> None:
        """A digit received on a leg (RFC 4733 or SIP INFO dtmf-relay, parsed by pjsua)."""
        leg = self.legs.get(leg_id)
        if leg is None or leg.ended:
            return
        flags = int(getattr(prm, "flags", 0) or 0)
        method = "info" if prm.method == pj.PJSUA_DTMF_METHOD_SIP_INFO else "rfc2833"
        # RFC 4733 events are reported at their start (flags 0), while updating
        # (IS_UPDATE) and at their end (IS_END, with the full duration): report the end.
        if method == "rfc2833" and not flags & _DTMF_IS_END:
            return
        digit = event_digit(str(prm.digit))
        if not digit:
            return
        self._dtmf_received(leg, digit, int(prm.duration), method)

    def _dtmf_received(self, leg: _Leg, digit: str, duration_ms: int, method: str) -> None:
        relay = leg.relay_to
        target = self.legs.get(relay) if relay else None
        if target is not None and not target.ended:
            dur = max(40, duration_ms or 160)
            self.soon.append(lambda: self._send_digit(target, digit, dur))
        else:
            relay = None
        self.send(ipc.DtmfReceived(
            leg_id=leg.plan.leg_id, call_sid=leg.plan.call_sid, worker_id=self.worker_id,
            ts=time.time(), digit=digit, duration_ms=int(duration_ms), method=method,
            relayed_to=relay,
        ))

    # ----------------------------------------------------------------- bridge
    def _pair(self, a_id: str, b_id: str, connect: bool) -> None:
        """Make two legs a bridge: each one's end ends the other; the agent leg's DTMF is
        relayed to the carrier leg; with ``connect`` their audio is joined both ways."""
        a, b = self.legs.get(a_id), self.legs.get(b_id)
        if a is None or b is None:
            return
        a.partner, b.partner = b_id, a_id
        agent, carrier = (a, b) if a.plan.role == "agent" or a.inbound else (b, a)
        if agent.plan.role == "agent" or agent.inbound:
            agent.relay_to = carrier.plan.leg_id
        if connect:
            self.edges.add((a_id, b_id))
            self.edges.add((b_id, a_id))
            self._connect_edges(a_id)

    def bridge(self, carrier_id: str, agent_id: str) -> None:
        carrier, agent = self.legs.get(carrier_id), self.legs.get(agent_id)
        if carrier is None or agent is None or carrier.ended or agent.ended:
            self.log("warning", f"bridge {carrier_id!r} <-> {agent_id!r}: leg not live")
            return
        self._pair(carrier_id, agent_id, connect=True)
        agent.relay_to = carrier_id
        carrier.relay_to = None

    def _maybe_auto_bridge(self, leg: _Leg) -> None:
        """``bridge_with``: join the audio once both legs are answered."""
        other_id = leg.plan.bridge_with or leg.partner
        other = self.legs.get(other_id) if other_id else None
        if other is None or other.answered_at is None or leg.answered_at is None:
            return
        if not (leg.plan.bridge_with or other.plan.bridge_with):
            return
        if (leg.plan.leg_id, other.plan.leg_id) not in self.edges:
            self._pair(leg.plan.leg_id, other.plan.leg_id, connect=True)

    def _connect_edges(self, leg_id: str) -> None:
        """(Re)connect every audio connection touching this leg whose two ends have
        active audio (called on media changes; connecting twice is harmless)."""
        for src_id, dst_id in list(self.edges):
            if leg_id not in (src_id, dst_id):
                continue
            src, dst = self.legs.get(src_id), self.legs.get(dst_id)
            if src is None or dst is None or src.ended or dst.ended:
                continue
            # No active audio on one side yet: retried on its media state.
            with contextlib.suppress(pj.Error):
                src.call.getAudioMedia(-1).startTransmit(dst.call.getAudioMedia(-1))

    def _unlink(self, leg: _Leg) -> None:
        """A leg ended: drop its audio connections and end its bridge partner."""
        leg_id = leg.plan.leg_id
        self.edges = {e for e in self.edges if leg_id not in e}
        partner_id, leg.partner = leg.partner, None
        if not partner_id:
            return
        partner = self.legs.get(partner_id)
        if partner is None or partner.ended:
            return
        partner.partner = None
        if partner.relay_to == leg_id:
            partner.relay_to = None
        self.soon.append(lambda: self.hangup(partner_id, "bridged_bye"))

    # ----------------------------------------------------------------- playback
    def play(self, leg_id: str, path: str) -> None:
        leg = self.legs.get(leg_id)
        call_sid = leg.plan.call_sid if leg is not None else ""
        if leg is None or leg.ended:
            self._play_done(leg_id, call_sid, path, "leg is not live")
            return
        try:
            aud = leg.call.getAudioMedia(-1)
        except pj.Error as e:
            self._play_done(leg_id, call_sid, path, f"no active audio: {_pj_error_text(e)}")
            return
        player = _Player(leg_id, call_sid, path)
        try:
            player.createPlayer(path, pj.PJMEDIA_FILE_NO_LOOP)
            player.startTransmit(aud)
        except pj.Error as e:
            self._cool(player)
            self._play_done(leg_id, call_sid, path, f"cannot play: {_pj_error_text(e)}")
            return
        self.players.append(player)

    def _play_done(self, leg_id: str, call_sid: str, path: str, error: str = "") -> None:
        self.send(ipc.PlaybackDone(
            leg_id=leg_id, call_sid=call_sid, worker_id=self.worker_id, ts=time.time(),
            path=path, error=error,
        ))

    def _drop_player(self, player: _Player) -> None:
        self.players.remove(player)
        leg = self.legs.get(player.leg_id)
        if leg is not None and not leg.ended:
            with contextlib.suppress(pj.Error):
                player.stopTransmit(leg.call.getAudioMedia(-1))
        self._cool(player)  # destroyed later, outside callbacks (never in onEof2)

    def check_players(self) -> None:
        for player in list(self.players):
            if player.eof:
                self._drop_player(player)
                self._play_done(player.leg_id, player.call_sid, player.path)

    def _end_players(self, leg_id: str) -> None:
        for player in list(self.players):
            if player.leg_id == leg_id:
                self._drop_player(player)
                self._play_done(player.leg_id, player.call_sid, player.path,
                                "leg ended before the end of the file")

    # ----------------------------------------------------------------- listen
    def listen(self, leg_id: str, phase: str, config: dict[str, Any]) -> None:
        leg = self.legs.get(leg_id)
        if leg is None or leg.ended:
            self.log("warning", f"Listen for unknown leg {leg_id!r}")
            return
        try:
            leg.listener = PhaseListener(phase, config)
        except Exception as e:
            self.log("error", f"Listen {leg_id} phase {phase!r}: {e!r}")
            return
        if leg.tap is not None:
            leg.tap.frames.clear()  # the new phase starts now
        if not leg.tap_connected:
            self._connect_tap(leg, leg.call)

    # ----------------------------------------------------------------- inbound
    def on_incoming_call(self, acc: Any, prm: Any) -> None:
        """An INVITE (SIP-triggered mode) that passed the packet guard: a leg waiting for
        the supervisor's Respond. pjsua has already sent 100 Trying.

        The guard already refused disallowed sources (403), a full worker (486) and a
        stopping one (503) statelessly, before pjsua created a call; this re-checks them
        (defence in depth) and refuses from the loop, never here: pjsua2 frees the
        INVITE's cloned rdata after this callback returns, and a hangup from inside it
        has already freed it (``pjsip_rx_data_free_cloned: Assertion 'rdata'``, abort)."""
        whole = str(prm.rdata.wholeMsg)
        src = str(prm.rdata.srcAddress)
        start, headers, _body = split_message(whole)
        leg_id = f"in-{uuid.uuid4()}"
        call = _LegCall(self, acc, leg_id, int(prm.callId))
        status, why = 0, ""
        if not source_allowed(src, self.cfg.inbound_allow):
            status, why = 403, f"source {src} is not in sip.inbound_allow"
        elif self.stopping:
            status, why = 503, "worker is shutting down"
        elif len(self.legs) >= self.capacity:
            status, why = 486, "no free call slot in this worker"
        if status:
            self.log("warning", f"inbound INVITE refused with {status}: {why}",
                     call_id=header(headers, "call-id"))
            self.rejected[leg_id] = call
            self.soon.append(lambda: self._refuse(leg_id, status))
            if self.guard is not None:  # the ACK of the refusal reaches pjsip's transaction
                self.guard.policy.dialogs.add(header(headers, "call-id"))
                self.guard.policy.dialogs.end(header(headers, "call-id"))
            return
        parts = start.split(" ")
        ruri = parts[1] if len(parts) > 1 else ""
        acc_key = next((k for k, a in self.accounts.items() if a is acc), None)
        plan = DialPlan(
            call_sid=leg_id, leg_id=leg_id, trunk="inbound", request_uri=ruri,
            from_uri=header(headers, "from"), to_uri=header(headers, "to"), headers=(),
            ring_timeout_s=_INBOUND_RESPOND_S, max_duration_s=_INBOUND_MAX_DURATION_S,
            transport=acc_key[0] if acc_key else self.cfg.transport, role="agent",
        )
        now = time.monotonic()
        leg = _Leg(plan=plan, call=call, started=now, acc_key=acc_key, inbound=True,
                   deadline=now + _INBOUND_RESPOND_S, rx_any=True)
        self.legs[leg_id] = leg
        self._dialog_known(leg, header(headers, "call-id"))
        self.send(ipc.InboundCall(
            leg_id=leg_id, worker_id=self.worker_id, ts=time.time(), request_uri=ruri,
            from_uri=plan.from_uri, to_uri=plan.to_uri,
            sip_call_id=header(headers, "call-id"), source=src, headers=tuple(headers),
        ))

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
            self.log("warning", f"refusing inbound INVITE: {_pj_error_text(e)}")

    def respond(self, leg_id: str, status: int, reason: str, media_from: str | None) -> None:
        leg = self.legs.get(leg_id)
        if leg is None or leg.ended or not leg.inbound:
            self.log("warning", f"Respond for unknown inbound leg {leg_id!r}")
            return
        if leg.final_sent or leg.answered_at is not None:
            self.log("warning", f"Respond {status} for {leg_id}: already answered")
            return
        if not 180 <= status <= 699:
            self.log("warning", f"Respond {status} for {leg_id}: not a valid status")
            return
        source = self.legs.get(media_from) if media_from else None
        if media_from and source is None:
            self.log("warning", f"Respond {leg_id}: media_from leg {media_from!r} is not live")
        if status >= 300:
            self.hangup(leg_id, "local_hangup", status)
            return
        prm = pj.CallOpParam(True)
        prm.statusCode = status
        if reason:
            prm.reason = reason
        if status >= 200:
            leg.final_sent = True
            leg.deadline = None
            if source is not None:
                self._pair(media_from or "", leg_id, connect=True)
                source.relay_to = None
                leg.relay_to = media_from
        else:
            leg.provisional_sent = True
            leg.deadline = time.monotonic() + _INBOUND_RING_S
            if source is not None:  # early media: the agent hears the carrier's ringback
                self.edges.add((media_from or "", leg_id))
        try:
            leg.call.answer(prm)
        except pj.Error as e:
            self.log("warning", f"Respond {status} for {leg_id}: {_pj_error_text(e)}")
            return
        self._connect_edges(leg_id)

    # ----------------------------------------------------------------- callbacks
    def on_call_state(self, leg_id: str, call: Any, prm: Any) -> None:
        if leg_id in self.rejected:
            if call.getInfo().state == pj.PJSIP_INV_STATE_DISCONNECTED:
                self.graveyard.append(self.rejected.pop(leg_id))
            return
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
        if whole:
            leg.remote_sdp = sdp_of(whole) or leg.remote_sdp
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
                # The media timeout counts from the answer (early media may be silent).
                leg.rx_pkts = self._rx_packets(leg)
                leg.rx_seen_at = leg.answered_at
                leg.rx_check_at = leg.answered_at + self._media_check_s()
                leg.sent_states.add("answered")
                self._event(leg, "answered", **common)
                self._begin_answer_analysis(leg)
                self._maybe_auto_bridge(leg)
                self._connect_edges(leg_id)
        elif st == pj.PJSIP_INV_STATE_DISCONNECTED:
            leg.ended = True
            status = int(ci.lastStatusCode) if ci.lastStatusCode else None
            answered = leg.answered_at is not None
            detail = ""
            cause: ipc.EndCause
            if leg.end_cause is not None:
                cause = leg.end_cause  # type: ignore[assignment]
                detail = leg.end_detail
            elif leg.inbound:
                # The agent platform hung up (BYE, or CANCEL before our answer), or our
                # 200 was never ACKed (Timer H).
                cause = "remote_bye"
                if src_type in (pj.PJSIP_EVENT_TIMER, pj.PJSIP_EVENT_TRANSPORT_ERROR):
                    cause = "transport_error"
            elif src_type in (pj.PJSIP_EVENT_TIMER, pj.PJSIP_EVENT_TRANSPORT_ERROR):
                cause = "transport_error"
                detail = f"{status} {ci.lastReason} (locally generated)"
                if leg.plan.transport == "tls":
                    detail = self._tls_reject_detail(leg) or detail
            elif answered and whole.startswith("SIP/2.0 ") and status in _MEDIA_REFUSED:
                # pjsua hung up by itself (it sent the BYE) right after the answer: the
                # carrier's SDP answer is unusable (RFC 3264 6: no codec we offered, or
                # plain RTP/AVP to a mandatory-SRTP offer). pjsua ACKs the 200, then sends
                # BYE with "Reason: SIP ;cause=488" ("Unable to create media session");
                # the disconnect comes with the response to that BYE (or the INVITE's 2xx).
                cause = "media_error"
                detail = (f"{negotiation_detail(self.offered_codecs, leg.remote_sdp)} "
                          f"({status} {ci.lastReason})")
            elif answered and whole.startswith("SIP/2.0 "):
                # The SIP stack ended the session itself (it sent the BYE), or a failed
                # in-dialog request ended it: a session refresh (RFC 4028 10: the
                # re-INVITE/UPDATE answered 408/481, or not refreshed in time).
                cause = "transport_error"
                first = whole.split("\n", 1)[0].strip()
                detail = (f"session ended by the SIP stack: {status} {ci.lastReason}"
                          if whole.startswith("SIP/2.0 2")
                          else f"in-dialog request failed: {first}")
            elif answered:
                cause = "remote_bye"
            elif status in (408, 503) and not leg.rx_any:
                cause = "transport_error"
                detail = f"{status} {ci.lastReason} (no response from peer)"
            else:
                cause = "remote_final"
            # Anything still running on the leg is reported before its end.
            self._end_players(leg_id)
            if leg.listener is not None and leg.listener.active:
                self._pump_leg(leg)
            self._event(
                leg,
                "ended",
                cause=cause,
                answered=answered,
                detail=detail,
                retry_after_s=leg.retry_after_s if not answered else None,
                **common,
            )
            self._unlink(leg)
            # Drop the Call object later, outside this callback (pjsua2 is still using it).
            self._dialog_ended(leg)
            del self.legs[leg_id]
            self.graveyard.append(call)
            self._release_tap(leg)
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
        if whole.startswith("INFO "):
            self._on_info(leg, e.body.tsxState.src.rdata, whole)
            return
        if whole.startswith("SIP/2.0"):
            leg.rx_any = True
            is_final, retry_after = _final_response_retry_after(whole)
            if is_final:
                leg.retry_after_s = retry_after

    def _on_info(self, leg: _Leg, rdata: Any, whole: str) -> None:
        """An in-dialog INFO. pjsua itself parses ``application/dtmf-relay`` (answers it
        200 and reports it through onDtmfEvent); ``application/dtmf`` is parsed and
        answered here (else pjsip answers 500 "Unhandled by dialog usages")."""
        _start, headers, body = split_message(whole)
        ctype = header(headers, "content-type")
        if ctype.split(";", 1)[0].strip().lower() != "application/dtmf":
            return
        parsed = parse_info_dtmf(ctype, body)
        ok = respond_in_dialog(rdata, 200 if parsed is not None else 400)
        if not ok:
            self.log("warning", f"could not answer an INFO on {leg.plan.leg_id}")
        if parsed is not None:
            self._dtmf_received(leg, parsed[0], parsed[1], "info")

    def on_call_media_state(self, leg_id: str, call: Any) -> None:
        """Media became active (183 early media or the answer): connect the detection
        tap to the leg's audio. With the null audio device nothing else needs connecting:
        the stream sends RTP on its own."""
        leg = self.legs.get(leg_id)
        if leg is None or leg.ended:
            return
        self._track_media(leg, call)
        self._feed_silence(call)
        self._connect_edges(leg_id)
        if leg.listener is not None and leg.listener.active:
            self._connect_tap(leg, call)
        if not leg.plan.detection:
            return
        if leg.analysis is None:
            leg.analysis = LegAnalysis(leg.plan.detection, leg.plan.leg_id)
            phase = "answer" if leg.answered_at is not None else "early"
            started = leg.analysis.start_phase(phase)
            # No analysis wanted now: still tap if an answer phase will follow.
            if not started and (phase == "answer" or not leg.plan.detection.get("answer")):
                return
        self._connect_tap(leg, call)

    def _track_media(self, leg: _Leg, call: Any) -> None:
        """Note whether the peer should be sending RTP now: the audio stream is active
        and sendrecv. A peer that holds the call (RFC 3264 8.4: ``a=sendonly`` or
        ``a=inactive``; pjsua then has the stream recvonly / inactive) or that only
        receives is exempt from the media timeout; the clock restarts on every change."""
        live, idx = False, -1
        with contextlib.suppress(Exception):
            # pjsua2 pitfall: keep the CallInfo referenced while reading its media
            # vector (``call.getInfo().media`` reads freed memory).
            ci = call.getInfo()
            for m in ci.media:
                if m.type == pj.PJMEDIA_TYPE_AUDIO:
                    idx = int(m.index)
                    live = (m.status == pj.PJSUA_CALL_MEDIA_ACTIVE
                            and m.dir == pj.PJMEDIA_DIR_ENCODING_DECODING)
                    break
        if live != leg.media_live or idx != leg.audio_idx:
            leg.media_live, leg.audio_idx = live, idx
            leg.rx_pkts = self._rx_packets(leg)
            leg.rx_seen_at = time.monotonic()
            leg.rx_check_at = leg.rx_seen_at + self._media_check_s()

    def _media_check_s(self) -> float:
        return self.cfg.media_timeout_s / _MEDIA_CHECKS_PER_TIMEOUT

    @staticmethod
    def _rx_packets(leg: _Leg) -> int:
        """RTP packets received on the leg's audio stream so far (-1: no stream)."""
        if leg.audio_idx < 0:
            return -1
        try:
            return int(leg.call.getStreamStat(leg.audio_idx).rtcp.rxStat.pkt)
        except Exception:
            return -1

    def _check_media(self, leg: _Leg) -> None:
        """A media check is due: RTP since the last one restarts the clock; none for
        media_timeout_s ends the leg (its partner follows, ``bridged_bye``)."""
        now = time.monotonic()
        pkts = self._rx_packets(leg)
        if pkts != leg.rx_pkts:
            leg.rx_pkts, leg.rx_seen_at = pkts, now
        if now - leg.rx_seen_at >= self.cfg.media_timeout_s:
            leg.end_detail = f"no RTP received for {now - leg.rx_seen_at:.0f} s"
            self.log("warning", f"{leg.plan.leg_id}: {leg.end_detail}: media timeout")
            self.hangup(leg.plan.leg_id, "media_timeout")
            return
        leg.rx_check_at = min(now + self._media_check_s(),
                              leg.rx_seen_at + self.cfg.media_timeout_s)

    def _feed_silence(self, call: Any) -> None:
        """Connect the null sound device's capture port (silence) to the call.

        pjsua2 pitfall: the conference bridge only calls a port's put_frame every tick
        while something transmits to it; with no transmitter it sends NULL frames only
        now and then, so RFC 4733 digits queued by ``sendDtmf`` after the stream went
        quiet (VAD) are not sent (seen: digits after a 0.5 s pause never left). A
        permanent transmitter keeps the stream clocked.
        """
        with contextlib.suppress(pj.Error):
            self.ep.audDevManager().getCaptureDevMedia().startTransmit(call.getAudioMedia(-1))

    def _connect_tap(self, leg: _Leg, call: Any) -> None:
        try:
            aud = call.getAudioMedia(-1)
        except pj.Error:
            return  # no active audio yet
        if leg.tap is None:
            leg.tap = self._take_tap()
        try:
            aud.startTransmit(leg.tap)
            leg.tap_connected = True
        except pj.Error as e:
            self.log("warning", f"detection tap for {leg.plan.leg_id}: {_pj_error_text(e)}")

    def _take_tap(self) -> FrameTap:
        if self.spare_taps:
            tap = self.spare_taps.pop()
            tap.frames.clear()
            return tap
        tap = FrameTap(f"tap-{self.worker_id}-{len(self.all_taps)}")
        self.all_taps.append(tap)
        return tap

    def _release_tap(self, leg: _Leg) -> None:
        """Give the leg's tap back to the pool (disconnected; see ``spare_taps``)."""
        tap = leg.tap
        if tap is None:
            return
        if leg.tap_connected and not leg.ended:
            # (an ended call's stream port left the bridge with its connections)
            with contextlib.suppress(pj.Error):
                leg.call.getAudioMedia(-1).stopTransmit(tap)
        leg.tap_connected = False
        leg.tap = None
        tap.frames.clear()
        self.spare_taps.append(tap)

    def _cool(self, obj: Any) -> None:
        """Destroy a disconnected audio port once the bridge has applied the disconnect."""
        self.cooling.append((time.monotonic() + _PORT_COOLING_S, obj))

    def _drop_cooled(self) -> None:
        now = time.monotonic()
        if self.cooling and self.cooling[0][0] <= now:
            self.cooling = [(t, o) for t, o in self.cooling if t > now]

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
        if not leg.analysis.start_phase("answer") and self._tap_idle(leg):
            self._disconnect_tap(leg)

    @staticmethod
    def _tap_idle(leg: _Leg) -> bool:
        """Nothing needs the tap any more (an early phase keeps it for the answer)."""
        if leg.listener is not None and leg.listener.active:
            return False
        a = leg.analysis
        return a is None or (not a.active and a.phase != "early")

    def _pump_leg(self, leg: _Leg) -> None:
        """Feed a leg's queued frames to its detector/listener and report what they find."""
        tap = leg.tap
        if tap is None:
            return
        frames: list[bytes] = []
        while tap.frames:
            frames.append(tap.frames.popleft())
        if not frames:
            return
        found: list[tuple[str, Any]] = []
        analysis = leg.analysis
        if analysis is not None:
            found += [(analysis.phase or "", ev) for ev in analysis.feed(frames)]
        listener = leg.listener
        if listener is not None and listener.active:
            found += [(listener.phase, ev) for ev in listener.feed(frames)]
        for phase, ev in found:
            self.send(ipc.DetectionReport(
                leg_id=leg.plan.leg_id, call_sid=leg.plan.call_sid, worker_id=self.worker_id,
                ts=time.time(), phase=phase, kind=ev.kind, detection=ev.detection,
            ))
        if self._tap_idle(leg):
            self._disconnect_tap(leg)  # decided: stop paying for the tap

    def pump_media(self) -> None:
        for leg in list(self.legs.values()):
            if leg.tap_connected and not leg.ended:
                self._pump_leg(leg)

    # ----------------------------------------------------------------- timers
    @staticmethod
    def _timer(leg: _Leg, media_timeout_s: float) -> tuple[float, ipc.EndCause] | None:
        """The leg's next own deadline and the cause it ends with then (None: none);
        for "media_timeout" the deadline is the next media check, which may end it."""
        if leg.ended or leg.end_cause is not None:
            return None
        if leg.inbound and leg.answered_at is None:
            return None if leg.deadline is None else (leg.deadline, "ring_timeout")
        if leg.answered_at is None:
            return leg.started + leg.plan.ring_timeout_s, "ring_timeout"
        ends = leg.answered_at + leg.plan.max_duration_s
        if leg.media_live and media_timeout_s > 0 and leg.rx_check_at < ends:
            return leg.rx_check_at, "media_timeout"
        return ends, "max_duration"

    def check_timers(self) -> None:
        now = time.monotonic()
        for leg_id, leg in list(self.legs.items()):
            timer = self._timer(leg, self.cfg.media_timeout_s)
            if timer is None or now < timer[0]:
                continue
            if timer[1] == "media_timeout":
                self._check_media(leg)
                continue
            if leg.inbound and leg.answered_at is None:
                self.log("warning", f"inbound {leg_id}: no Respond in time")
            self.hangup(leg_id, timer[1])

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

    def wait_ms(self) -> int:
        """How long the next ``libHandleEvents`` may sleep: until the earliest thing this
        loop must do by itself (SIP and RTP packets, and commands through the waker, cut
        the sleep short anyway)."""
        if self.soon or self.pending or self.players or self.cooling:
            return _BUSY_WAIT_MS
        if self.waker is None:
            return _BUSY_WAIT_MS
        now = time.monotonic()
        due = now + _IDLE_WAIT_MS / 1000
        for leg in self.legs.values():
            if leg.ended or leg.end_cause is not None:
                continue
            if leg.tap_connected:
                return _TAP_WAIT_MS
            if leg.dtmf_jobs:
                due = min(due, leg.dtmf_jobs[0].next_at)
            timer = self._timer(leg, self.cfg.media_timeout_s)
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
            self.pump_media()
            if self.players:
                self.check_players()
            if self.cooling:
                self._drop_cooled()
            self.graveyard.clear()
            if self.pending:
                self.retry_pending()
            if self.waker is not None:
                self.waker.pending = False
            self.poll_commands()
            if self.waker is not None:
                self.waker.drained.set()  # a command arriving from now on wakes again
            self.run_dtmf()
            self.check_timers()
            self._guard_tick()
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
        self._end_players(leg_id)
        leg.call._worker = None
        self.graveyard.append(leg.call)
        self._release_tap(leg)

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
        while (self.legs or self.rejected) and time.monotonic() < deadline:
            self.ep.libHandleEvents(10)
        # Legs that never reached DISCONNECTED (e.g. CANCEL pending a provisional response).
        for leg_id in list(self.legs):
            self._force_end(leg_id)
        for player in list(self.players):
            self._drop_player(player)
        for call in self.rejected.values():
            call._worker = None
        self.graveyard.extend(self.rejected.values())
        self.rejected.clear()
        self.soon.clear()
        self.graveyard.clear()
        # Audio ports last, once the bridge has applied the disconnects of the calls that
        # just ended (no loop variable may keep a port alive past libDestroy).
        deadline = time.monotonic() + _PORT_COOLING_S
        while time.monotonic() < deadline:
            self.ep.libHandleEvents(10)
        self.spare_taps.clear()
        self.all_taps.clear()
        self.cooling.clear()
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
    """Process entry point (``multiprocessing`` target, forked from the pool's fork server).

    ``sip_port`` asks for a specific SIP port (used when the supervisor restarts a worker so
    it keeps its port); 0 uses the config's range (or a free port for 0/0).
    """
    # The supervisor decides when we stop (Shutdown, or EOF on the pipe when it is
    # gone): a SIGTERM/SIGINT sent to the whole process group by a service manager is
    # the supervisor's cue to drain, not ours to hang up (see forkserver_init).
    ignore_stop_signals()
    # A crash in native code (pjsip, pjmedia, SWIG) prints every thread's Python stack to
    # stderr, which the supervisor's log keeps.
    faulthandler.enable(all_threads=True)
    cfg = SipConfig(**sip_cfg_dict)
    worker = Worker(worker_id, cfg, conn, sip_port)
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
