"""The supervisor's handle on one SIP worker process (asyncio side, no pjsua2).

A :class:`WorkerProc` is the only record of which legs live in that worker (``legs``:
leg_id -> call_sid), which of them were answered, and which calls hold reserved slots
there. The pool (:mod:`sipbridge.sip.pool`) asks it for room, sends commands through it
and reads the worker's messages off its pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from sipbridge import ipc

log = logging.getLogger("sipbridge.sip.pool")

START_TIMEOUT_S = 20.0  # from the process start to its WorkerReady
STOP_TIMEOUT_S = 5.0  # from Shutdown to the end of its pipe (EOF), before SIGKILL


@dataclass
class WorkerProc:
    worker_id: int
    process: BaseProcess | None = None
    conn: Connection | None = None
    sip_port: int = 0
    capacity: int = 0
    ready: bool = False
    ready_future: asyncio.Future[ipc.WorkerReady] | None = None
    legs: dict[str, str] = field(default_factory=dict)  # leg_id -> call_sid
    # Live legs the worker reported answered: a synthesised end says so too (a call
    # answered and then cut by a shutdown must never look unanswered, i.e. requeued).
    answered: set[str] = field(default_factory=set)
    reserved: dict[str, int] = field(default_factory=dict)  # call_sid -> reserved slots
    last_log: str = ""
    restarts: int = 0
    started_at: float = 0.0
    # Elastic pool: idle (no legs, no reservations) since; being retired since (0: no).
    idle_since: float = 0.0
    retiring_since: float = 0.0

    @property
    def starting(self) -> bool:
        """Started and not ready yet (its process may not exist yet: WorkerPool.spawn)."""
        return self.ready_future is not None and not self.ready_future.done()

    def free(self, default_capacity: int) -> int:
        """Slots neither used nor reserved (0 while not ready)."""
        if not self.ready:
            return 0
        used = len(self.legs) + sum(self.reserved.values())
        return max(0, (self.capacity or default_capacity) - used)

    def room(self, call_sid: str, default_capacity: int) -> int:
        """Slots a dial for ``call_sid`` may use: the free ones plus one of the call's own
        reservation."""
        if not self.ready:
            return 0
        return self.free(default_capacity) + (1 if self.reserved.get(call_sid, 0) > 0 else 0)

    def take_slot(self, leg_id: str, call_sid: str, reserve: int) -> None:
        """A leg was sent here: it takes a slot (one of its call's reserved ones first),
        and ``reserve`` more are kept for the call."""
        held_now = self.reserved.get(call_sid, 0)
        left = held_now - (1 if held_now > 0 else 0) + reserve
        if left > 0:
            self.reserved[call_sid] = left
        else:
            self.reserved.pop(call_sid, None)
        self.legs[leg_id] = call_sid

    def forget_leg(self, leg_id: str) -> None:
        """A leg ended: free its slot, and its call's reservation with its last leg."""
        call_sid = self.legs.pop(leg_id, None)
        self.answered.discard(leg_id)
        if call_sid is not None and call_sid not in self.legs.values():
            self.reserved.pop(call_sid, None)
        if not self.legs and not self.reserved:
            self.idle_since = time.monotonic()

    def send(self, msg: ipc.Command) -> bool:
        """Send a command; False if the pipe is closed or broken."""
        if self.conn is None:
            return False
        try:
            self.conn.send(ipc.encode(msg))
        except (OSError, ValueError):
            return False
        return True

    def drain(
        self, conn: Connection, dispatch: Callable[[WorkerProc, ipc.Command | ipc.Event], None]
    ) -> bool:
        """Deliver every pending message; False on EOF (the worker process is gone)."""
        try:
            while conn.poll(0):
                raw = conn.recv()
                try:
                    msg = ipc.decode(raw)
                except ipc.ProtocolError as e:
                    log.error("SIP worker %d sent a bad message: %s", self.worker_id, e)
                    continue
                dispatch(self, msg)
        except (EOFError, OSError, ValueError):
            return False
        return True

    def close(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Stop reading the pipe and close it; the worker is not ready any more."""
        if self.conn is not None:
            if loop is not None:
                with contextlib.suppress(Exception):
                    loop.remove_reader(self.conn.fileno())
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None
        self.ready = False

    def release_process(self) -> None:
        """Drop the (exited) process handle."""
        if self.process is not None:
            with contextlib.suppress(Exception):
                self.process.close()
        self.process = None


__all__ = ["START_TIMEOUT_S", "STOP_TIMEOUT_S", "WorkerProc"]
