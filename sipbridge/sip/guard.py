"""The worker's SIP packet guard: a pjsip module, registered through ctypes, that sees
every received request before pjsip's transaction layer and pjsua do, and applies
:class:`sipbridge.rxpolicy.RxPolicy` to it (pass, drop silently, or a stateless final
response). See README "Security" for what is dropped and why.

Why it exists (issue #10): pjsua creates a call, a dialog and two media sockets for any
INVITE before the application sees it, and the PyPI wheel keeps pjlib assertions on.
Refusing inside ``onIncomingCall`` aborted the worker (pjsua2's ``on_incoming_call``
frees the cloned rdata after the callback, but the hangup already freed it:
``pjsip_rx_data_free_cloned: Assertion 'rdata'``), and sockets created and closed at a
high rate exhaust pjlib's select ioqueue (64 keys; a closed key is reusable only after
``PJ_IOQUEUE_KEY_FREE_DELAY``, 500 ms, and ``register_sock`` asserts
``!pj_list_empty(&ioqueue->free_list)`` before returning PJ_ETOOMANY).

ctypes pitfalls handled here: the ``pjsip_rx_data`` layout is the wheel's (PJSIP 2.15.1,
``PJSIP_MAX_PKT_LEN`` 4000, 64-bit), checked at start-up against a probe request the
worker sends itself (:meth:`PacketGuard.calibrate`); a mismatch fails the worker's start
(fail closed). Every callback catches everything (an exception must never unwind into
pjsip) and drops the request when anything goes wrong.
"""

from __future__ import annotations

import contextlib
import ctypes
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from sipbridge.errors import GuardError
from sipbridge.rxpolicy import Action, RxPolicy, Verdict

PJSIP_MAX_PKT_LEN = 4000  # the wheel's build setting (pjsip/sip_config.h default)
PJ_INET6_ADDRSTRLEN = 46
# Module priority: below PJSIP_MOD_PRIORITY_TSX_LAYER (16), so we see a request before a
# transaction, a dialog or a call exists for it; above the transport layer's (8).
GUARD_PRIORITY = 12
_PJ_TRUE, _PJ_FALSE = 1, 0


class _PjStr(ctypes.Structure):
    _fields_ = (("ptr", ctypes.c_char_p), ("slen", ctypes.c_ssize_t))


_RX_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)


class _PjsipModule(ctypes.Structure):
    """``struct pjsip_module`` (pjsip/sip_module.h)."""

    _fields_ = (
        ("prev", ctypes.c_void_p),
        ("next", ctypes.c_void_p),
        ("name", _PjStr),
        ("id", ctypes.c_int),
        ("priority", ctypes.c_int),
        ("load", ctypes.c_void_p),
        ("start", ctypes.c_void_p),
        ("stop", ctypes.c_void_p),
        ("unload", ctypes.c_void_p),
        ("on_rx_request", _RX_CB),
        ("on_rx_response", _RX_CB),
        ("on_tx_request", ctypes.c_void_p),
        ("on_tx_response", ctypes.c_void_p),
        ("on_tsx_state", ctypes.c_void_p),
    )


class _OpKey(ctypes.Structure):  # pjsip_rx_data_op_key (pj_ioqueue_op_key_t + rdata)
    _fields_ = (
        ("internal", ctypes.c_void_p * 32),
        ("activesock_data", ctypes.c_void_p),
        ("user_data", ctypes.c_void_p),
        ("rdata", ctypes.c_void_p),
    )


class _SockAddr(ctypes.Union):  # pj_sockaddr: the largest member is sockaddr_in6
    _fields_ = (("raw", ctypes.c_uint32 * 7),)


class _RxData(ctypes.Structure):
    """The leading part of ``struct pjsip_rx_data`` (pjsip/sip_transport.h)."""

    _fields_ = (
        ("pool", ctypes.c_void_p),
        ("transport", ctypes.c_void_p),
        ("tp_data", ctypes.c_void_p),
        ("op_key", _OpKey),
        ("timestamp", ctypes.c_long * 2),
        ("packet", ctypes.c_char * PJSIP_MAX_PKT_LEN),
        ("zero", ctypes.c_uint32),
        ("pkt_len", ctypes.c_ssize_t),
        ("src_addr", _SockAddr),
        ("src_addr_len", ctypes.c_int),
        ("src_name", ctypes.c_char * PJ_INET6_ADDRSTRLEN),
        ("src_port", ctypes.c_int),
        ("msg_buf", ctypes.c_void_p),
        ("msg_len", ctypes.c_int),
    )


_PACKET_OFFSET = _RxData.packet.offset


def _transport_kind(transport_ptr: int) -> str | None:
    """ "udp" / "tcp" / "tls" from a ``pjsip_transport``'s ``obj_name`` (its first field:
    "udp0x..", "tcps0x.." / "tcpc0x..", "tlss0x.." / "tlsc0x.." in sip_transport_*.c)."""
    if not transport_ptr:
        return None
    name = ctypes.string_at(transport_ptr, 4)
    for kind in ("udp", "tcp", "tls"):
        if name.startswith(kind.encode()):
            return kind
    return None


class _Packet:
    """What the guard reads from one ``pjsip_rx_data``, each field checked for sanity."""

    __slots__ = ("raw", "source_ip", "source_port", "transport")

    def __init__(self, rdata_ptr: int) -> None:
        rd = _RxData.from_address(rdata_ptr)
        start = rdata_ptr + _PACKET_OFFSET
        buf, n = rd.msg_buf or 0, int(rd.msg_len)
        if not (start <= buf and n > 0 and buf + n <= start + PJSIP_MAX_PKT_LEN):
            raise GuardError("rdata message buffer outside its packet")
        if not 0 < rd.src_port < 65536:
            raise GuardError("rdata source port out of range")
        name = bytes(rd.src_name).split(b"\0", 1)[0]
        self.source_ip = name.decode("ascii")
        self.source_port = int(rd.src_port)
        self.raw = ctypes.string_at(buf, n)
        self.transport = _transport_kind(rd.transport or 0)


class PacketGuard:
    """Owns the registered pjsip module. Single-threaded: pjsip calls it from the worker's
    ``libHandleEvents``. ``accepting`` tells whether a new inbound call could be taken
    (see :meth:`RxPolicy.decide`); ``log(level, message)`` reports to the supervisor."""

    def __init__(
        self,
        lib: Any,
        policy: RxPolicy,
        accepting: Callable[[], str | None],
        log: Callable[[str, str], None],
    ) -> None:
        self.lib = lib
        self.policy = policy
        self.accepting = accepting
        self.log = log
        self.endpt = 0
        self.calibrated = False
        self.probe_token = f"sipbridge-guard-probe-{uuid.uuid4().hex}"
        self.probe_source: tuple[str, int] | None = None
        self.errors = 0
        # Kept referenced for the life of the process: pjsip holds pointers to them.
        self._name = b"mod-sipbridge-guard"
        self._on_req = _RX_CB(self._on_rx_request)
        self._on_res = _RX_CB(self._on_rx_response)
        self.module = _PjsipModule()
        self.module.name = _PjStr(self._name, len(self._name))
        self.module.id = -1
        self.module.priority = GUARD_PRIORITY
        self.module.on_rx_request = self._on_req
        self.module.on_rx_response = self._on_res

    def install(self) -> None:
        lib = self.lib
        lib.pjsua_get_pjsip_endpt.restype = ctypes.c_void_p
        lib.pjsua_get_pjsip_endpt.argtypes = []
        lib.pjsip_endpt_register_module.restype = ctypes.c_int
        lib.pjsip_endpt_register_module.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.pjsip_endpt_respond_stateless.restype = ctypes.c_int
        lib.pjsip_endpt_respond_stateless.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self.endpt = int(lib.pjsua_get_pjsip_endpt() or 0)
        if not self.endpt:
            raise GuardError("no pjsip endpoint (pjsua not initialised)")
        status = int(lib.pjsip_endpt_register_module(self.endpt, ctypes.byref(self.module)))
        if status != 0:
            raise GuardError(f"pjsip_endpt_register_module failed ({status})")

    # ----------------------------------------------------------------- calibration
    def calibrate(
        self,
        udp_target: tuple[str, int] | None,
        handle_events: Callable[[int], None],
        timeout_s: float = 3.0,
    ) -> None:
        """Send ourselves an OPTIONS and check every field the guard reads (the message
        bytes, their length, the source address and port, the transport). Until this
        succeeds every request is dropped; on failure :class:`GuardError`."""
        if udp_target is None:
            raise GuardError("no UDP transport to calibrate the packet guard with")
        host, port = udp_target
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            src = s.getsockname()
            self.probe_source = (str(src[0]), int(src[1]))
            hp = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
            sp = f"[{src[0]}]:{src[1]}" if family == socket.AF_INET6 else f"{src[0]}:{src[1]}"
            probe = (
                f"OPTIONS sip:guard@{hp} SIP/2.0\r\nVia: SIP/2.0/UDP {sp};branch=z9hG4bK"
                f"{uuid.uuid4().hex}\r\nFrom: <sip:guard@{sp}>;tag=1\r\n"
                f"To: <sip:guard@{hp}>\r\nCall-ID: {self.probe_token}\r\n"
                "CSeq: 1 OPTIONS\r\nMax-Forwards: 1\r\nContent-Length: 0\r\n\r\n"
            )
            self._probe = probe.encode()
            deadline = time.monotonic() + timeout_s
            next_send = 0.0
            while not self.calibrated and time.monotonic() < deadline:
                if time.monotonic() >= next_send:
                    s.sendto(self._probe, (host, port))
                    next_send = time.monotonic() + 0.5
                handle_events(50)
        if not self.calibrated:
            raise GuardError(
                "the packet guard could not read pjsip's rx data as expected "
                "(pjsua2 wheel with another layout?): refusing to run unguarded"
            )

    def _check_probe(self, rdata_ptr: int) -> None:
        pkt = _Packet(rdata_ptr)
        rd = _RxData.from_address(rdata_ptr)
        want = (self._probe, self.probe_source, "udp", len(self._probe))
        got = (pkt.raw, (pkt.source_ip, pkt.source_port), pkt.transport, int(rd.pkt_len))
        if got == want and rd.msg_buf == rdata_ptr + _PACKET_OFFSET:
            self.calibrated = True
        else:
            self.log("error", f"packet guard calibration mismatch: {got[1:]} != {want[1:]}")

    # ----------------------------------------------------------------- callbacks
    def _on_rx_request(self, rdata_ptr: int) -> int:
        try:
            if not self.calibrated:
                if rdata_ptr and self.probe_token.encode() in ctypes.string_at(
                    rdata_ptr + _PACKET_OFFSET, PJSIP_MAX_PKT_LEN
                ):
                    self._check_probe(rdata_ptr)
                return _PJ_TRUE  # fail closed until the layout is known
            pkt = _Packet(rdata_ptr)
            if pkt.transport is None:
                return _PJ_TRUE
            verdict = self.policy.decide(pkt.raw, pkt.source_ip, pkt.transport, self.accepting)
            if verdict.action is Action.PASS:
                return _PJ_FALSE
            if verdict.action is Action.RESPOND:
                self._respond(rdata_ptr, verdict)
            return _PJ_TRUE
        except BaseException:  # never into pjsip; an unreadable request is dropped
            with contextlib.suppress(BaseException):
                self.errors += 1
                self.policy.counts["guard_error"] += 1
            return _PJ_TRUE

    def _on_rx_response(self, rdata_ptr: int) -> int:
        try:
            if not self.calibrated:
                return _PJ_TRUE
            pkt = _Packet(rdata_ptr)
            return _PJ_FALSE if self.policy.check_rate(pkt.raw, pkt.source_ip) is None else _PJ_TRUE
        except BaseException:
            with contextlib.suppress(BaseException):
                self.policy.counts["guard_error"] += 1
            return _PJ_TRUE

    def _respond(self, rdata_ptr: int, verdict: Verdict) -> None:
        # A stateless final response (RFC 3261 8.2.6, 16.7 for proxies' equivalent): no
        # transaction, dialog or call is created. The response goes where pjsip sends any
        # response: the request's source address (Via "received", RFC 3261 18.2.2),
        # maddr and foreign transports having been refused by the policy.
        status = int(
            self.lib.pjsip_endpt_respond_stateless(
                self.endpt, rdata_ptr, verdict.status, None, None, None
            )
        )
        if status != 0:
            self.policy.counts["respond_failed"] += 1

    def report(self) -> str:
        """Counts since the last report ("" when nothing was dropped)."""
        from sipbridge.rxpolicy import summary

        return summary(self.policy.take_counts().items())


__all__ = ["GUARD_PRIORITY", "GuardError", "PacketGuard"]
