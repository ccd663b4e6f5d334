"""Wakes the worker loop's ``libHandleEvents`` when the supervisor sends a command.

Idle cost: the loop sleeps in ``libHandleEvents`` until a SIP or RTP packet arrives or the
earliest timer it owns is due. RTP sockets live on the SIP ioqueue, so there is no media
thread polling every 10 ms; this small thread turns a command from the supervisor into a
CRLF keep-alive datagram to the worker's own UDP port.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection


class Waker:
    """Wakes the loop's ``libHandleEvents`` when the supervisor sends a command.

    The loop sleeps in pjsip's ioqueue, which knows nothing of the command pipe. This
    thread blocks on the pipe and, when it becomes readable, sends a CRLF keep-alive
    datagram to the worker's own UDP transport: pjsip discards a packet of only CR/LF (the
    RFC 5626 4.4.1 keep-alive) without parsing it, but the ioqueue returns. It never reads
    the pipe: after a wake it waits for the loop to drain it (``drained``), so one burst of
    commands costs one datagram. Pipe EOF (supervisor gone) wakes the loop the same way,
    and the loop notices the EOF itself.
    """

    def __init__(self, conn: Connection, target: tuple[str, int], family: int) -> None:
        self.conn = conn
        self.target = target
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.drained = threading.Event()
        self.pending = False  # a wake-up was sent and the loop has not read the pipe since
        self.thread = threading.Thread(target=self._run, name="sip-waker", daemon=True)

    @classmethod
    def start_for(
        cls,
        conn: Connection,
        listen_address: str,
        udp_port: int | None,
        poll_ms: int,
        log: Callable[[str, str], None],
    ) -> Waker | None:
        """A waker aimed at the worker's UDP transport, or None (the loop then polls)."""
        if not udp_port:
            return None
        addr = listen_address or "0.0.0.0"
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        if addr in ("0.0.0.0", "::"):
            addr = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        try:
            waker = cls(conn, (addr, udp_port), family)
        except OSError as e:
            log("warning", f"no waker, polling every {poll_ms} ms: {e}")
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


__all__ = ["Waker"]
