"""Bounds inbound TCP/TLS connections to a SIP worker (issue #10).

pjlib's select ioqueue in the pjsua2 wheel has 64 keys for every socket of the worker
(SIP transports, each TCP/TLS connection, RTP/RTCP). An unregistered key is reusable only
after ``PJ_IOQUEUE_KEY_FREE_DELAY`` (500 ms), and ``pj_ioqueue_register_sock2`` asserts
``!pj_list_empty(&ioqueue->free_list)`` before it would return PJ_ETOOMANY: about 64
connections opened and closed within half a second (no data needed) abort the worker.
pjsip accepts every connection its listener gets, so the gate acts before accept():

- the TCP listener gets a classic BPF filter that drops every packet (SO_ATTACH_FILTER;
  the kernel then drops SYNs to it, connections already accepted are other sockets and
  are unaffected) while this worker has ``max_live`` inbound connections or has accepted
  more than its token bucket allows (``rate_per_s``, ``burst``); the loop removes it once
  both are below their limits again. A peer whose SYN was dropped retries it (TCP SYN
  retransmission), so a legitimate carrier gets in when the flood stops.
- the TLS listener is closed the same way for good: the worker has no certificate of its
  own (TLS is for outbound calls only), so no inbound TLS handshake could succeed.

Accepted connections are counted from pjsip's transport state callback (chained in front
of pjsua's own, through ctypes), by the transport's object name ("tcps..": server side).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from sipbridge.limits import TokenBucket

_SO_ATTACH_FILTER = 26  # asm-generic/socket.h
_SO_DETACH_FILTER = 27
_BPF_RET_K = 0x06  # BPF_RET | BPF_K: "return k" (0 = drop the packet)
_TP_CONNECTED, _TP_DISCONNECTED, _TP_SHUTDOWN, _TP_DESTROY = 0, 1, 2, 3
_STATE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)

MAX_LIVE_INBOUND = 16
ACCEPT_RATE_PER_S = 10.0
ACCEPT_BURST = 10


class _SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


_DROP_ALL = (_SockFilter * 1)(_SockFilter(_BPF_RET_K, 0, 0, 0))


def _drop_all_prog() -> bytes:
    """``struct sock_fprog`` {unsigned short len; struct sock_filter *filter;} bytes."""
    return struct.pack("HL", 1, ctypes.addressof(_DROP_ALL))


def find_listeners(port: int) -> list[socket.socket]:
    """Duplicates of this process's listening TCP sockets bound to ``port`` (a filter set
    on a duplicate applies to the socket itself)."""
    found: list[socket.socket] = []
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = os.dup(int(name))
        except (OSError, ValueError):
            continue
        try:
            s = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            continue
        try:
            ok = (
                s.type == socket.SOCK_STREAM
                and s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
                and s.getsockname()[1] == port
            )
        except OSError:
            ok = False
        if ok:
            found.append(s)
        else:
            s.detach()
            os.close(fd)
    return found


def _server_kind(tp: int) -> str | None:
    """ "tcp" / "tls" for a server-side (accepted) transport, from its obj_name."""
    if not tp:
        return None
    name = ctypes.string_at(tp, 4)
    return {b"tcps": "tcp", b"tlss": "tls"}.get(name)


class ListenGate:
    def __init__(
        self,
        lib: Any,
        log: Callable[[str, str], None],
        max_live: int = MAX_LIVE_INBOUND,
        rate_per_s: float = ACCEPT_RATE_PER_S,
        burst: int = ACCEPT_BURST,
    ) -> None:
        self.lib = lib
        self.log = log
        self.max_live = max_live
        self.bucket = TokenBucket(rate_per_s, burst, time.monotonic)
        self.live: set[int] = set()
        self.tcp: list[socket.socket] = []
        self.tls: list[socket.socket] = []
        self.closed = False
        self.refused_bursts = 0
        self._prev: Any = None
        self._cb = _STATE_CB(self._on_state)

    def install(self, tcp_port: int | None, tls_port: int | None) -> None:
        lib = self.lib
        lib.pjsua_get_pjsip_endpt.restype = ctypes.c_void_p
        lib.pjsip_endpt_get_tpmgr.restype = ctypes.c_void_p
        lib.pjsip_endpt_get_tpmgr.argtypes = [ctypes.c_void_p]
        lib.pjsip_tpmgr_get_state_cb.restype = ctypes.c_void_p
        lib.pjsip_tpmgr_get_state_cb.argtypes = [ctypes.c_void_p]
        lib.pjsip_tpmgr_set_state_cb.restype = ctypes.c_int
        lib.pjsip_tpmgr_set_state_cb.argtypes = [ctypes.c_void_p, _STATE_CB]
        tpmgr = lib.pjsip_endpt_get_tpmgr(lib.pjsua_get_pjsip_endpt())
        prev = lib.pjsip_tpmgr_get_state_cb(tpmgr)
        self._prev = _STATE_CB(prev) if prev else None
        if tcp_port:
            self.tcp = find_listeners(tcp_port)
        if tls_port:
            self.tls = find_listeners(tls_port)
            for s in self.tls:
                s.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, _drop_all_prog())
        if int(lib.pjsip_tpmgr_set_state_cb(tpmgr, self._cb)) != 0:
            raise RuntimeError("pjsip_tpmgr_set_state_cb failed")
        if tcp_port and not self.tcp:
            raise RuntimeError(f"TCP listener on port {tcp_port} not found")

    def _on_state(self, tp: int, state: int, info: int) -> None:
        try:
            if self._prev is not None:
                self._prev(tp, state, info)
        except BaseException:  # pjsua's own callback: never unwind into pjsip
            pass
        try:
            if _server_kind(tp) is None:
                return
            if state == _TP_CONNECTED:
                self.live.add(tp)
                if len(self.live) >= self.max_live or not self.bucket.try_take():
                    self._close()
            elif state in (_TP_DISCONNECTED, _TP_SHUTDOWN, _TP_DESTROY):
                self.live.discard(tp)
        except BaseException:
            with contextlib.suppress(BaseException):
                self._close()

    def _close(self) -> None:
        if self.closed:
            return
        for s in self.tcp:
            s.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, _drop_all_prog())
        self.closed = True
        self.refused_bursts += 1

    def tick(self) -> None:
        """From the worker loop: reopen the TCP listener once below both limits."""
        if not self.closed or len(self.live) >= self.max_live or self.bucket.tokens < 1:
            return
        for s in self.tcp:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, _SO_DETACH_FILTER, 0)
        self.closed = False

    def take_report(self) -> str:
        n, self.refused_bursts = self.refused_bursts, 0
        return f"tcp_gate_closed={n}" if n else ""


__all__ = ["ListenGate", "find_listeners"]
