"""Supervisor side of the SIP engine: a pool of SIP worker processes (asyncio).

Each worker (see :mod:`sipbridge.sip.worker`) is a spawned process with one pjsua2
Endpoint holding at most ``calls_per_worker`` legs. The pool picks a worker per leg,
relays commands over a Pipe and turns the worker's messages back into
:class:`sipbridge.ipc.LegEvent` callbacks on the event loop thread.

Bridged calls need every leg in one worker: ``dial(plan, reserve=n)`` keeps ``n`` more
slots of the chosen worker for that ``call_sid`` (for the agent leg), consumed by a later
``dial(..., prefer_worker=w)`` of the same call, released when all the call's legs on
that worker have ended.

Guarantees:
- every dialled leg gets exactly one ``ended`` event: from its worker, or synthesised
  (``cause="worker_died"``) when the worker process dies, or (``cause="local_hangup"``)
  when the pool is stopped and the worker could not report it;
- a dead worker is restarted (same worker_id, same SIP port when possible).

No pjsua2 import here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from sipbridge import ipc
from sipbridge.config import SipConfig
from sipbridge.plan import DialPlan

log = logging.getLogger("sipbridge.sip.pool")

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
_RESTART_BACKOFF_MAX_S = 10.0


# Everything the pool hands to ``on_event``.
PoolEvent = (ipc.LegEvent | ipc.DetectionReport | ipc.DtmfReceived | ipc.DtmfSent
             | ipc.PlaybackDone | ipc.InboundCall)


class PoolFull(Exception):
    """No worker has a free slot (or the pinned worker is full / not running)."""


class PoolError(RuntimeError):
    """The pool could not start its workers."""


@dataclass
class _WorkerSlot:
    worker_id: int
    process: BaseProcess | None = None
    conn: Connection | None = None
    sip_port: int = 0
    capacity: int = 0
    ready: bool = False
    ready_future: asyncio.Future[ipc.WorkerReady] | None = None
    legs: dict[str, str] = field(default_factory=dict)  # leg_id -> call_sid
    reserved: dict[str, int] = field(default_factory=dict)  # call_sid -> reserved slots
    last_log: str = ""
    restarts: int = 0
    started_at: float = 0.0


class WorkerPool:
    """A pool of SIP worker processes. All methods must be called on the event loop thread."""

    def __init__(self, cfg: SipConfig, on_event: Callable[[PoolEvent], None]) -> None:
        self.cfg = cfg
        self.on_event = on_event
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: dict[int, _WorkerSlot] = {
            i: _WorkerSlot(worker_id=i) for i in range(cfg.workers)
        }
        self._leg_worker: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._stopping = False
        self._running = False
        # Exit code of each worker process at stop() (diagnostics, tests).
        self.exit_codes: dict[int, int | None] = {}
        self._restart_tasks: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Spawn ``cfg.workers`` processes and wait until each reports ready.

        Raises :class:`PoolError` (after cleaning up) if any worker fails to start in time.
        """
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._started = True
        futs = [self._spawn(w) for w in self._workers.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*futs), START_TIMEOUT_S)
        except (TimeoutError, PoolError) as e:
            details = "; ".join(
                f"worker {w.worker_id}: "
                + ("ready" if w.ready else (w.last_log or "no WorkerReady received"))
                for w in self._workers.values()
            )
            await self.stop()
            if isinstance(e, PoolError):
                raise
            raise PoolError(
                f"SIP workers did not start within {START_TIMEOUT_S:.0f} s ({details})"
            ) from None
        self._running = True
        log.info(
            "SIP pool started: %d workers on ports %s", len(self._workers), self.worker_ports()
        )

    def _spawn(self, w: _WorkerSlot, sip_port: int = 0) -> asyncio.Future[ipc.WorkerReady]:
        assert self._loop is not None
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=_worker_main,
            args=(w.worker_id, self.cfg.model_dump(), child, sip_port),
            name=f"sipbridge-sip-{w.worker_id}",
            daemon=True,
        )
        proc.start()
        child.close()
        w.process = proc
        w.conn = parent
        w.ready = False
        w.started_at = time.monotonic()
        w.ready_future = self._loop.create_future()
        self._loop.add_reader(parent.fileno(), self._on_readable, w.worker_id, parent)
        return w.ready_future

    async def stop(self) -> None:
        """Shut every worker down (hang up their legs), bounded; then terminate/kill. Idempotent."""
        if self._stopping or not self._started:
            return
        self._stopping = True
        for t in list(self._restart_tasks):
            t.cancel()
        for w in self._workers.values():
            if w.conn is not None:
                with contextlib.suppress(OSError, ValueError):
                    w.conn.send(ipc.encode(ipc.Shutdown()))
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for w in self._workers.values():
            proc = w.process
            if proc is None:
                continue
            while proc.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)  # polling a process exit, bounded by deadline
            if proc.is_alive():
                log.warning("SIP worker %d did not stop in time: terminating", w.worker_id)
                proc.terminate()
                proc.join(1.0)
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)
            self.exit_codes[w.worker_id] = proc.exitcode
            if proc.exitcode != 0:
                log.warning("SIP worker %d exited with code %s", w.worker_id, proc.exitcode)
        # Deliver whatever the workers sent before exiting (their legs' ended events).
        for w in self._workers.values():
            if w.conn is not None:
                self._drain(w, w.conn)
            self._close_worker(w)
            for leg_id, call_sid in list(w.legs.items()):
                self._synth_end(
                    w, leg_id, call_sid, "local_hangup", "SIP pool stopped before the leg ended"
                )
            if w.process is not None:
                with contextlib.suppress(Exception):
                    w.process.close()
                w.process = None

    # ---------------------------------------------------------------- capacity
    def capacity(self) -> int:
        """Total call slots over all workers (running or not)."""
        return self.cfg.workers * self.cfg.calls_per_worker

    def _free(self, w: _WorkerSlot) -> int:
        if not w.ready or self._stopping:
            return 0
        used = len(w.legs) + sum(w.reserved.values())
        return max(0, (w.capacity or self.cfg.calls_per_worker) - used)

    def free_slots(self) -> int:
        """Slots free right now on running workers (reserved slots are not free)."""
        return sum(self._free(w) for w in self._workers.values())

    def ready_workers(self) -> int:
        """Workers running and ready for calls (for /readyz)."""
        return 0 if self._stopping else sum(1 for w in self._workers.values() if w.ready)

    def worker_ports(self) -> list[int]:
        """SIP port of each worker, by worker_id (0 while a worker is not ready)."""
        return [self._workers[i].sip_port for i in sorted(self._workers)]

    def worker_of(self, leg_id: str) -> int | None:
        """The worker holding a live leg, or None."""
        return self._leg_worker.get(leg_id)

    def worker_pid(self, worker_id: int) -> int | None:
        """OS process id of a worker (for diagnostics and tests)."""
        p = self._workers[worker_id].process
        return p.pid if p is not None else None

    # ---------------------------------------------------------------- commands
    def _room(self, w: _WorkerSlot, call_sid: str) -> int:
        """Slots a dial for ``call_sid`` may use on ``w``: the free ones plus one of the
        call's own reservation."""
        if not w.ready or self._stopping:
            return 0
        return self._free(w) + (1 if w.reserved.get(call_sid, 0) > 0 else 0)

    def dial(self, plan: DialPlan, prefer_worker: int | None = None, reserve: int = 0) -> int:
        """Send a Dial to the least-loaded worker with a free slot; return its worker_id.

        ``prefer_worker`` pins the leg to that worker (all legs of one call must share a
        worker): if it has no room, :class:`PoolFull` is raised rather than using another
        worker. A call holding a reservation (see below) uses it: a dial for that
        ``call_sid`` consumes one reserved slot of its worker (and goes to that worker
        when no ``prefer_worker`` is given).

        ``reserve`` (>= 0): the chosen worker must have ``1 + reserve`` slots for this
        call, and ``reserve`` of them stay reserved for ``plan.call_sid`` (not offered to
        other calls, not counted by :meth:`free_slots`) until later dials of the call
        consume them or all its legs on that worker have ended.

        Raises ``ValueError`` for a leg_id that is still live or a negative ``reserve``.
        """
        if plan.leg_id in self._leg_worker:
            raise ValueError(f"leg {plan.leg_id!r} is already live")
        if reserve < 0:
            raise ValueError("reserve must be >= 0")
        need = 1 + reserve
        cs = plan.call_sid
        if prefer_worker is None:
            held = [w for w in self._workers.values() if w.reserved.get(cs, 0) > 0 and w.ready]
            if held:
                prefer_worker = held[0].worker_id
        if prefer_worker is not None:
            w = self._workers.get(prefer_worker)
            if w is None:
                raise ValueError(f"no worker {prefer_worker}")
            if self._room(w, cs) < need:
                raise PoolFull(
                    f"SIP worker {prefer_worker} has no free slot"
                    + (f" (need {need} for this call)" if need > 1 else "")
                )
        else:
            candidates = [w for w in self._workers.values() if self._room(w, cs) >= need]
            if not candidates:
                raise PoolFull(
                    f"no SIP worker has {need} free slot{'s' if need > 1 else ''} "
                    f"({self.free_slots()} of {self.capacity()} free or their workers are down)"
                )
            w = max(candidates, key=lambda c: (self._free(c), -c.worker_id))
        assert w.conn is not None
        try:
            w.conn.send(ipc.encode(ipc.Dial(plan)))
        except (OSError, ValueError) as e:
            raise PoolFull(f"SIP worker {w.worker_id} is not reachable: {e}") from None
        held_now = w.reserved.get(cs, 0)
        left = held_now - (1 if held_now > 0 else 0) + reserve
        if left > 0:
            w.reserved[cs] = left
        else:
            w.reserved.pop(cs, None)
        w.legs[plan.leg_id] = cs
        self._leg_worker[plan.leg_id] = w.worker_id
        return w.worker_id

    def reserved_slots(self, call_sid: str) -> dict[int, int]:
        """Slots reserved for a call, by worker_id (diagnostics, tests)."""
        return {
            w.worker_id: w.reserved[call_sid]
            for w in self._workers.values()
            if w.reserved.get(call_sid, 0) > 0
        }

    def _forget_leg(self, w: _WorkerSlot, leg_id: str) -> None:
        """A leg ended: free its slot, and its call's reservation with its last leg."""
        call_sid = w.legs.pop(leg_id, None)
        self._leg_worker.pop(leg_id, None)
        if call_sid is not None and call_sid not in w.legs.values():
            w.reserved.pop(call_sid, None)

    def _send_to_leg(self, leg_id: str, msg: ipc.Command) -> bool:
        wid = self._leg_worker.get(leg_id)
        if wid is None:
            return False
        w = self._workers[wid]
        if w.conn is None:
            return False
        try:
            w.conn.send(ipc.encode(msg))
        except (OSError, ValueError):
            return False
        return True

    def hangup(self, leg_id: str) -> bool:
        """Ask the leg's worker to hang up (CANCEL or BYE). False if unknown/already ended."""
        return self._send_to_leg(leg_id, ipc.Hangup(leg_id))

    def send_dtmf(
        self, leg_id: str, digits: str, duration_ms: int = 160, gap_ms: int = 80
    ) -> bool:
        """Send RFC 4733 DTMF digits on a live leg (``w`` = 0.5 s pause, ``W`` = 1 s);
        ``DtmfSent`` follows when done. False if unknown/already ended."""
        return self._send_to_leg(leg_id, ipc.SendDtmf(leg_id, digits, duration_ms, gap_ms))

    def bridge(self, carrier_leg: str, agent_leg: str) -> bool:
        """Join two legs' audio both ways in their worker; either's end ends the other and
        DTMF from ``agent_leg`` is relayed to ``carrier_leg``. Raises ``ValueError`` if
        the legs live in different workers; False if either is unknown/ended."""
        wa, wb = self._leg_worker.get(carrier_leg), self._leg_worker.get(agent_leg)
        if wa is None or wb is None:
            return False
        if wa != wb:
            raise ValueError(
                f"legs {carrier_leg!r} (worker {wa}) and {agent_leg!r} (worker {wb}) "
                "are in different workers"
            )
        return self._send_to_leg(carrier_leg, ipc.BridgeLegs(carrier_leg, agent_leg))

    def play(self, leg_id: str, path: str) -> bool:
        """Play a WAV file (8/16 kHz mono PCM) into a leg; ``PlaybackDone`` follows."""
        return self._send_to_leg(leg_id, ipc.PlayAudio(leg_id, path))

    def listen(self, leg_id: str, phase: str, config: dict[str, Any] | None = None) -> bool:
        """Analyse a leg's audio in another phase ("hold"); results come as
        ``DetectionReport(phase=phase)``."""
        return self._send_to_leg(leg_id, ipc.Listen(leg_id, phase, dict(config or {})))

    def respond(
        self, leg_id: str, status: int, reason: str = "", media_from: str | None = None
    ) -> bool:
        """Answer an inbound leg (``InboundCall``): 180/183 (``media_from``: that leg's
        audio is sent into this one as early media), 200 (bridged with ``media_from``),
        or a final error status. ``media_from`` must live in the same worker."""
        if media_from is not None:
            wm, wl = self._leg_worker.get(media_from), self._leg_worker.get(leg_id)
            if wm is not None and wl is not None and wm != wl:
                raise ValueError(f"leg {media_from!r} is in worker {wm}, not {wl}")
        return self._send_to_leg(leg_id, ipc.Respond(leg_id, status, reason, media_from))

    # ---------------------------------------------------------------- events
    def _on_readable(self, worker_id: int, conn: Connection) -> None:
        w = self._workers[worker_id]
        if w.conn is not conn:  # stale reader of a previous process
            return
        alive = self._drain(w, conn)
        if not alive:
            self._on_worker_exit(w)

    def _drain(self, w: _WorkerSlot, conn: Connection) -> bool:
        """Deliver every pending message; False on EOF (the worker process is gone)."""
        try:
            while conn.poll(0):
                raw = conn.recv()
                try:
                    msg = ipc.decode(raw)
                except ipc.ProtocolError as e:
                    log.error("SIP worker %d sent a bad message: %s", w.worker_id, e)
                    continue
                self._dispatch(w, msg)
        except (EOFError, OSError, ValueError):
            return False
        return True

    def _dispatch(self, w: _WorkerSlot, msg: ipc.Command | ipc.Event) -> None:
        if isinstance(msg, ipc.LegEvent):
            if msg.state == "ended":
                if msg.leg_id not in w.legs:
                    log.warning("ended event for unknown leg %s ignored", msg.leg_id)
                    return
                self._forget_leg(w, msg.leg_id)
            elif msg.leg_id not in w.legs:
                return
            self._emit(msg)
        elif isinstance(
            msg, ipc.DetectionReport | ipc.DtmfReceived | ipc.DtmfSent | ipc.PlaybackDone
        ):
            if msg.leg_id in w.legs:
                self._emit(msg)
        elif isinstance(msg, ipc.InboundCall):
            # The inbound leg holds a slot of its worker like a dialled leg (its call_sid
            # in LegEvents is its leg_id until the supervisor maps it).
            w.legs[msg.leg_id] = msg.leg_id
            self._leg_worker[msg.leg_id] = w.worker_id
            self._emit(msg)
        elif isinstance(msg, ipc.WorkerReady):
            w.sip_port = msg.sip_port
            w.capacity = msg.capacity
            w.ready = True
            if w.ready_future is not None and not w.ready_future.done():
                w.ready_future.set_result(msg)
            log.info("SIP worker %d ready on port %d", w.worker_id, msg.sip_port)
        elif isinstance(msg, ipc.WorkerLog):
            w.last_log = msg.message
            level = logging.getLevelName(msg.level.upper())
            log.log(
                level if isinstance(level, int) else logging.INFO,
                "worker %d: %s",
                w.worker_id,
                msg.message,
            )
        else:
            log.warning("SIP worker %d sent unexpected %r", w.worker_id, msg)

    def _emit(self, ev: PoolEvent) -> None:
        try:
            self.on_event(ev)
        except Exception:
            log.exception("on_event callback failed for %s", ev)

    def _synth_end(
        self, w: _WorkerSlot, leg_id: str, call_sid: str, cause: ipc.EndCause, detail: str
    ) -> None:
        self._forget_leg(w, leg_id)
        self._emit(
            ipc.LegEvent(
                leg_id=leg_id,
                call_sid=call_sid,
                state="ended",
                worker_id=w.worker_id,
                ts=time.time(),
                cause=cause,
                detail=detail,
            )
        )

    def _close_worker(self, w: _WorkerSlot) -> None:
        if w.conn is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(w.conn.fileno())
            with contextlib.suppress(Exception):
                w.conn.close()
            w.conn = None
        w.ready = False

    def _on_worker_exit(self, w: _WorkerSlot) -> None:
        proc = w.process
        code: int | None = None
        if proc is not None:
            proc.join(1.0)
            code = proc.exitcode
        self._close_worker(w)
        if self._stopping:
            return
        text = f"SIP worker {w.worker_id} exited with code {code}"
        if w.ready_future is not None and not w.ready_future.done():
            # Died during start-up.
            w.ready_future.set_exception(
                PoolError(
                    f"SIP worker {w.worker_id} failed to start (exit code {code}): "
                    f"{w.last_log or 'no message'}"
                )
            )
            w.ready_future.exception()  # mark retrieved
            if not self._running:
                return  # start() reports it
        log.error("%s; %d legs lost; restarting", text, len(w.legs))
        for leg_id, call_sid in list(w.legs.items()):
            self._synth_end(w, leg_id, call_sid, "worker_died", text)
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.close()
            w.process = None
        assert self._loop is not None
        task = self._loop.create_task(self._restart(w))
        self._restart_tasks.add(task)
        task.add_done_callback(self._restart_tasks.discard)

    async def _restart(self, w: _WorkerSlot) -> None:
        w.restarts += 1
        delay = min(_RESTART_BACKOFF_MAX_S, 0.2 * (2 ** min(w.restarts - 1, 6)))
        if time.monotonic() - w.started_at > 60:
            delay = 0.2  # it ran fine for a while: restart promptly
        await asyncio.sleep(delay)
        if self._stopping:
            return
        fut = self._spawn(w, w.sip_port)
        try:
            await asyncio.wait_for(asyncio.shield(fut), START_TIMEOUT_S)
            log.info("SIP worker %d restarted on port %d", w.worker_id, w.sip_port)
        except (TimeoutError, PoolError) as e:
            log.error("SIP worker %d restart failed: %s", w.worker_id, e)
            if w.process is not None and w.process.is_alive():
                w.process.kill()  # the reader sees EOF and schedules another restart


def _worker_main(
    worker_id: int, sip_cfg_dict: dict[str, Any], conn: Connection, sip_port: int
) -> None:
    """Spawn target: imports the pjsua2 worker only in the child process."""
    from sipbridge.sip.worker import run_worker

    run_worker(worker_id, sip_cfg_dict, conn, sip_port)
