"""Start-up of a worker's pjsua2 Endpoint and its SIP transports (one per kind, and one
per TLS profile).

- :func:`create_endpoint`: ``libCreate``/``libInit`` with the worker's settings: no
  threads of its own (the loop thread polls), 8 kHz mono conference bridge, null sound
  device, no DNS resolver, no STUN.
- :class:`Transports`: the worker creates UDP and TCP transports (same port number when it
  can) and a TLS transport at start. A plan whose transport the worker could not create
  ends at once with ``dial_error`` naming the missing transport. TLS legs use one more TLS
  transport per TLS profile (verify, CA file; created on first use), since pjsip keeps TLS
  settings per transport: the carrier's certificate and host name are verified (RFC 5922)
  unless the plan opts out, and a refusal ends the leg (``transport_error``) with a detail
  naming why (:meth:`Transports.on_transport_state`,
  :func:`sipbridge.sip.endcause.tls_reject_detail`).

Owns: the transport ids, ports and start-up errors, and the recent TLS refusals.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import pjsua2 as pj

from sipbridge.plan import DialPlan
from sipbridge.sip.endcause import TlsReject
from sipbridge.sip.pjbind import WorkerEndpoint, pj_error_text
from sipbridge.sip.tap import CLOCK_RATE_HZ
from sipbridge.sipconfig import MAX_TLS_PROFILES, SipConfig
from sipbridge.tlsca import os_ca_bundle

if TYPE_CHECKING:
    from sipbridge.sip.worker import Worker

TRANSPORT_TYPES = {
    "udp": pj.PJSIP_TRANSPORT_UDP,
    "tcp": pj.PJSIP_TRANSPORT_TCP,
    "tls": pj.PJSIP_TRANSPORT_TLS,
}


class DialRefused(Exception):
    """The worker cannot place this leg (missing transport, no account slot, bad plan)."""


def create_endpoint(worker: Worker) -> Any:
    """The worker's Endpoint, created and initialised (not started: transports first)."""
    cfg = worker.cfg
    ep = WorkerEndpoint(worker)
    # pjlib logs a start-up banner (level 4, to stdout) before libInit applies our
    # log level: hide stdout during libCreate unless verbose logging was asked for.
    quiet = cfg.log_level < 4
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
    epcfg.uaConfig.maxCalls = cfg.calls_per_worker
    epcfg.uaConfig.userAgent = cfg.user_agent
    # No nameserver: pjsip's own DNS resolver (SRV/NAPTR, its own packet parser,
    # with a history of advisories) is never created; host names are resolved by
    # the OS (getaddrinfo, A/AAAA). No STUN servers either.
    epcfg.uaConfig.nameserver.clear()
    epcfg.uaConfig.stunServer.clear()
    epcfg.logConfig.level = cfg.log_level
    epcfg.logConfig.consoleLevel = cfg.log_level
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
    return ep


def offered_codecs(ep: Any) -> list[str]:
    """The audio codecs pjsua offers (for a negotiation failure's detail)."""
    with contextlib.suppress(Exception):
        return [str(c.codecId).rsplit("/1", 1)[0] for c in ep.codecEnum2() if int(c.priority) > 0]
    return []


class Transports:
    """The worker's SIP transports, by key: "udp", "tcp", "tls", "tls|<profile>"."""

    def __init__(self, cfg: SipConfig, worker_id: int, want_port: int) -> None:
        self.cfg = cfg
        self.worker_id = worker_id
        self.want_port = want_port
        self.ep: Any = None
        self.primary_id: int | None = None  # the primary transport (cfg.transport)
        self.ids: dict[str, int] = {}  # key -> pjsua transport id
        self.ports: dict[str, int] = {}
        self.errors: dict[str, str] = {}  # why a transport could not be created
        # TLS peers refused by certificate verification, latest last (see
        # on_transport_state).
        self.tls_rejects: deque[TlsReject] = deque(maxlen=16)

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

    def rtp_range(self) -> tuple[int, int]:
        """(first RTP port, port count) of this worker's slice of the RTP range."""
        total = self.cfg.rtp_port_max - self.cfg.rtp_port_min + 1
        per = max(2, total // self.cfg.workers)
        base = self.cfg.rtp_port_min + (self.worker_id % self.cfg.workers) * per
        return base, per

    def create_all(self, ep: Any, log: Any) -> int:
        """Create the primary transport (on the first port that binds) and the others;
        return the primary's SIP port. ``log(level, message)`` reports missing ones."""
        self.ep = ep
        primary = self.cfg.transport
        last_err = ""
        for port in self._candidate_ports():
            try:
                self.primary_id = self.create(primary, port)
                break
            except pj.Error as e:
                last_err = f"port {port}: {pj_error_text(e)}"
        if self.primary_id is None:
            raise RuntimeError(f"cannot bind a SIP {primary} port: {last_err}")
        sip_port = self.ports[primary]
        # The other transports, for trunks that ask for them. UDP and TCP share the port
        # number when possible; TLS (a TCP port too) takes any free port. A transport that
        # cannot be created only fails the legs that need it.
        for kind in ("udp", "tcp", "tls"):
            if kind == primary:
                continue
            ports = [sip_port, 0] if kind != "tls" and primary != "tls" else [0]
            for port in ports:
                try:
                    self.create(kind, port)
                    self.errors.pop(kind, None)
                    break
                except pj.Error as e:
                    self.errors[kind] = pj_error_text(e)
            if kind in self.errors:
                log("warning", f"no SIP {kind} transport: {self.errors[kind]}")
        return sip_port

    def create(
        self, kind: str, port: int, key: str = "", verify: bool = True, ca_file: str = ""
    ) -> int:
        """Create a transport, known as ``key`` (default: ``kind``)."""
        tcfg = pj.TransportConfig()
        tcfg.port = port
        tcfg.boundAddress = self.cfg.listen_address
        if self.cfg.public_address:
            tcfg.publicAddress = self.cfg.public_address
        if kind == "tls":
            # Client use (outbound legs): no certificate of our own. pjsip's TLS settings
            # belong to a transport (listener), so legs get one per TLS profile
            # (for_plan); this one (start-up) verifies against the OS bundle.
            # verifyServer: pjsip checks the chain against CaListFile (it loads no default
            # CA store) and that the certificate names the host of the request's
            # destination (SAN DNS/IP/URI or CN, exact), and closes the connection on
            # failure; the host name is also sent as SNI unless it is an IP address.
            tcfg.tlsConfig.verifyServer = verify
            tcfg.tlsConfig.CaListFile = ca_file if key else (os_ca_bundle() or "")
        tid = int(self.ep.transportCreate(TRANSPORT_TYPES[kind], tcfg))
        info = self.ep.transportGetInfo(tid)
        self.ids[key or kind] = tid
        self.ports[key or kind] = int(str(info.localName).rsplit(":", 1)[1])
        return tid

    def for_plan(self, plan: DialPlan) -> str:
        """The key of the transport a plan's legs use (:class:`DialRefused` if none)."""
        kind = plan.transport
        if kind not in TRANSPORT_TYPES:
            raise DialRefused(f"unknown SIP transport {kind!r}")
        if kind not in self.ids:
            why = self.errors.get(kind, "not created")
            raise DialRefused(f"SIP transport {kind!r} is not available in this worker: {why}")
        return self._tls_profile(plan) if kind == "tls" else kind

    def _tls_profile(self, plan: DialPlan) -> str:
        """The key of the TLS transport for this plan's TLS profile (created on first
        use): legs with other CA files or verification settings never share one."""
        ca_file = plan.tls_ca_file or os_ca_bundle() or ""
        if plan.tls_verify and not ca_file:
            raise DialRefused(
                "TLS: no CA list to verify the peer with (no OS CA bundle; "
                "set tls.ca_file, or tls.verify: false)"
            )
        key = f"tls|{'verify' if plan.tls_verify else 'noverify'}|{ca_file}"
        if key in self.ids:
            return key
        if sum(1 for k in self.ids if k.startswith("tls|")) >= MAX_TLS_PROFILES:
            raise DialRefused(
                f"more than {MAX_TLS_PROFILES} TLS profiles (CA file, verify) "
                "in use: share CA files between trunks"
            )
        try:
            self.create("tls", 0, key, plan.tls_verify, ca_file)
        except pj.Error as e:
            raise DialRefused(f"cannot create a TLS transport: {pj_error_text(e)}") from None
        return key

    def on_transport_state(self, prm: Any) -> None:
        """pjsua2 callback: a TLS connection that failed verification is kept as
        (remote address, verify bits, certificate names) for the leg it fails."""
        info = prm.tlsInfo
        if info.isEmpty() or not info.verifyStatus:
            return
        cert = info.remoteCertInfo
        kinds = {
            pj.PJ_SSL_CERT_NAME_DNS: "DNS",
            pj.PJ_SSL_CERT_NAME_IP: "IP",
            pj.PJ_SSL_CERT_NAME_URI: "URI",
        }
        names = tuple(f"{kinds[n.type]}:{n.name}" for n in cert.subjectAltName if n.type in kinds)
        self.tls_rejects.append(
            TlsReject(
                time.monotonic(),
                str(info.remoteAddr),
                int(info.verifyStatus),
                str(cert.subjectCn),
                names,
            )
        )


__all__ = ["TRANSPORT_TYPES", "DialRefused", "Transports", "create_endpoint", "offered_codecs"]
