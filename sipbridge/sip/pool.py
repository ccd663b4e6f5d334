"""Supervisor side of the SIP engine: a pool of SIP worker processes (asyncio).

Each worker (see :mod:`sipbridge.sip.worker`) is a process (forked from a preloaded
fork server, see :func:`_worker_context`) with one pjsua2
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

Elastic pool (``min_workers`` < ``max_workers``): the pool starts ``min_workers``
processes and keeps ``spare_slots`` slots (default: one worker's worth) free or starting,
spawning another worker (up to ``max_workers``) as soon as calls eat into that headroom,
since a worker takes ~60 ms to start (~0.4 s for the first, which starts the fork
server). A worker above ``min_workers`` with no legs and no
reservations for ``idle_worker_ttl_s`` is retired (``Shutdown``, then its process is
reaped; it takes no new dials meanwhile). :class:`PoolFull` is raised only when every
worker up to ``max_workers`` is full (or still starting).

No pjsua2 import here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from sipbridge import ipc
from sipbridge.config import SipConfig
from sipbridge.errors import PoolError, PoolFull
from sipbridge.plan import DialPlan

log = logging.getLogger("sipbridge.sip.pool")

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
_RESTART_BACKOFF_MAX_S = 10.0


# Everything the pool hands to ``on_event``.
PoolEvent = (ipc.LegEvent | ipc.DetectionReport | ipc.DtmfReceived | ipc.DtmfSent
             | ipc.PlaybackDone | ipc.InboundCall)


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


def worker_bounds(cfg: SipConfig) -> tuple[int, int, int]:
    """(min_workers, max_workers, spare_slots) with the config's defaults applied."""
    lo = cfg.min_workers if cfg.min_workers is not None else cfg.workers
    hi = cfg.max_workers if cfg.max_workers is not None else max(cfg.workers, lo)
    spare = cfg.spare_slots if cfg.spare_slots is not None else cfg.calls_per_worker
    return lo, max(lo, hi), spare


class WorkerPool:
    """A pool of SIP worker processes. All methods must be called on the event loop thread."""

    def __init__(self, cfg: SipConfig, on_event: Callable[[PoolEvent], None]) -> None:
        self.cfg = cfg
        self.on_event = on_event
        self._ctx = _worker_context()
        self.min_workers, self.max_workers, self.spare_slots = worker_bounds(cfg)
        self.elastic = self.max_workers > self.min_workers
        self._workers: dict[int, _WorkerSlot] = {
            i: _WorkerSlot(worker_id=i) for i in range(self.min_workers)
        }
        self._leg_worker: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._stopping = False
        self._running = False
        # Exit code of each worker process at stop() (diagnostics, tests).
        self.exit_codes: dict[int, int | None] = {}
        self._restart_tasks: set[asyncio.Task[None]] = set()
        # Elastic pool: exit codes of retired workers, spawn/retire counters, the
        # maintenance task, and a pause on growing after a failed start.
        self.retired_exit_codes: list[int | None] = []
        self.spawned_total = 0
        self.retired_total = 0
        self._maint_task: asyncio.Task[None] | None = None
        self._grow_blocked_until = 0.0

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
        if self.elastic:
            log.info(
                "SIP pool is elastic: %d-%d workers, %d spare slots, idle TTL %.1f s",
                self.min_workers, self.max_workers, self.spare_slots,
                self.cfg.idle_worker_ttl_s,
            )
            self._scale_up()
            self._maint_task = asyncio.get_running_loop().create_task(self._maintain())

    def _spawn(self, w: _WorkerSlot, sip_port: int = 0) -> asyncio.Future[ipc.WorkerReady]:
        assert self._loop is not None
        parent, child = self._ctx.Pipe(duplex=True)
        cfg = self.cfg.model_dump()
        # The worker takes slice ``worker_id % workers`` of the RTP range: hand each worker
        # its own slice (over max_workers, so the workers an elastic pool adds get theirs)
        # as a one-worker range.
        slots = max(self.cfg.workers, self.max_workers)
        per = max(2, (self.cfg.rtp_port_max - self.cfg.rtp_port_min + 1) // slots)
        base = self.cfg.rtp_port_min + (w.worker_id % slots) * per
        cfg.update(workers=1, min_workers=None, max_workers=None, spare_slots=None,
                   rtp_port_min=base, rtp_port_max=min(base + per - 1, 65535))
        proc = self._ctx.Process(
            target=_worker_main,
            args=(w.worker_id, cfg, child, sip_port),
            name=f"sipbridge-sip-{w.worker_id}",
            daemon=True,
        )
        proc.start()
        child.close()
        w.process = proc
        w.conn = parent
        w.ready = False
        w.started_at = time.monotonic()
        w.retiring_since = 0.0
        self.spawned_total += 1
        w.ready_future = self._loop.create_future()
        self._loop.add_reader(parent.fileno(), self._on_readable, w.worker_id, parent)
        return w.ready_future

    async def stop(self) -> None:
        """Shut every worker down (hang up their legs), bounded; then kill. Idempotent.

        A worker has finished when its end of the pipe closes (EOF: it has sent the
        ``ended`` event of every leg and exited). The process handle is not asked: a
        forkserver child's liveness is read from the fork server, and a fork server that
        died (a signal to the whole process group) makes every live worker look dead
        (exit code 255); the pool would then stop waiting at once and report their
        answered legs as unanswered.
        """
        if self._stopping or not self._started:
            return
        self._stopping = True
        for t in list(self._restart_tasks):
            t.cancel()
        if self._maint_task is not None:
            self._maint_task.cancel()
        for w in list(self._workers.values()):
            if w.conn is not None:
                with contextlib.suppress(OSError, ValueError):
                    w.conn.send(ipc.encode(ipc.Shutdown()))
        deadline = time.monotonic() + STOP_TIMEOUT_S
        # The reader (_on_readable) delivers the workers' last events and closes each
        # pipe at EOF.
        while (any(w.conn is not None for w in self._workers.values())
               and time.monotonic() < deadline):
            await asyncio.sleep(0.02)  # waiting on the readers, bounded by deadline
        for w in list(self._workers.values()):
            proc = w.process
            if proc is None:
                continue
            if w.conn is not None and proc.pid is not None:
                # Its pipe is still open, so it still runs. Workers ignore SIGTERM (they
                # follow the supervisor over the pipe): SIGKILL, by pid (the handle's
                # own kill() is skipped when the fork server is gone).
                log.warning("SIP worker %d did not stop in time: killing", w.worker_id)
                self._drain(w, w.conn)  # whatever it sent before
                with contextlib.suppress(OSError):
                    os.kill(proc.pid, signal.SIGKILL)
            proc.join(1.0)
            self.exit_codes[w.worker_id] = proc.exitcode
            if proc.exitcode != 0:
                log.warning("SIP worker %d exited with code %s", w.worker_id, proc.exitcode)
        for w in list(self._workers.values()):
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
        """Total call slots over all workers (running or not); for an elastic pool, over
        ``max_workers``."""
        return self.max_workers * self.cfg.calls_per_worker

    def worker_count(self) -> int:
        """Worker processes running or starting (not counting those being retired)."""
        return sum(1 for w in self._workers.values() if not w.retiring_since)

    def worker_pids(self) -> dict[int, int]:
        """OS process id of every worker process (retiring ones included), by worker_id."""
        return {
            w.worker_id: w.process.pid
            for w in self._workers.values()
            if w.process is not None and w.process.pid is not None
        }

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
        w = self._workers.get(worker_id)
        p = w.process if w is not None else None
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
                self._scale_up()
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
        if self.elastic:
            self._scale_up()
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
        w.answered.discard(leg_id)
        self._leg_worker.pop(leg_id, None)
        if call_sid is not None and call_sid not in w.legs.values():
            w.reserved.pop(call_sid, None)
        if not w.legs and not w.reserved:
            w.idle_since = time.monotonic()

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
        w = self._workers.get(worker_id)
        if w is None or w.conn is not conn:  # stale reader of a previous process
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
            elif msg.state == "answered":
                w.answered.add(msg.leg_id)
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
            w.ready = not w.retiring_since
            w.idle_since = time.monotonic()
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
        answered = leg_id in w.answered
        self._forget_leg(w, leg_id)
        self._emit(
            ipc.LegEvent(
                leg_id=leg_id,
                call_sid=call_sid,
                state="ended",
                worker_id=w.worker_id,
                ts=time.time(),
                cause=cause,
                answered=answered,
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
        starting = w.ready_future if (
            w.ready_future is not None and not w.ready_future.done()) else None
        if self._running and self.elastic and (
            w.retiring_since
            or (starting is not None and not w.legs and self.worker_count() > self.min_workers)
        ):
            # Retired (or a worker added for load that failed to start): not restarted.
            if starting is not None:
                log.error("%s while starting; not restarted", text)
                self._grow_blocked_until = time.monotonic() + 1.0
                starting.set_exception(PoolError(text))
                starting.exception()  # mark retrieved
            else:
                self.retired_exit_codes.append(code)
                self.retired_total += 1
                log.info("SIP worker %d retired (exit code %s)", w.worker_id, code)
            for leg_id, call_sid in list(w.legs.items()):
                self._synth_end(w, leg_id, call_sid, "worker_died", text)
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.close()
            w.process = None
            self._workers.pop(w.worker_id, None)
            self._scale_up()
            return
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
        if self._stopping or self._workers.get(w.worker_id) is not w:
            return
        fut = self._spawn(w, w.sip_port)
        try:
            await asyncio.wait_for(asyncio.shield(fut), START_TIMEOUT_S)
            log.info("SIP worker %d restarted on port %d", w.worker_id, w.sip_port)
        except (TimeoutError, PoolError) as e:
            log.error("SIP worker %d restart failed: %s", w.worker_id, e)
            if w.process is not None and w.process.is_alive():
                w.process.kill()  # the reader sees EOF and schedules another restart


    # ---------------------------------------------------------------- elastic pool
    def _headroom(self) -> int:
        """Free slots on ready workers plus the slots of workers still starting."""
        n = 0
        for w in self._workers.values():
            if w.retiring_since:
                continue
            if w.ready:
                n += self._free(w)
            elif w.process is not None:
                n += self.cfg.calls_per_worker
        return n

    def _scale_up(self) -> None:
        """Spawn workers (up to max_workers) until ``spare_slots`` slots are free or
        starting, and at least min_workers exist."""
        if not self._running or self._stopping:
            return
        if time.monotonic() < self._grow_blocked_until:
            return
        n = self.worker_count()
        headroom = self._headroom()
        while n < self.max_workers and (n < self.min_workers or headroom < self.spare_slots):
            wid = next(i for i in range(self.max_workers + len(self._workers) + 1)
                       if i not in self._workers)
            w = _WorkerSlot(worker_id=wid)
            self._workers[wid] = w
            fut = self._spawn(w)
            fut.add_done_callback(_consume_exception)
            assert self._loop is not None
            task = self._loop.create_task(self._watch_start(w, fut))
            self._restart_tasks.add(task)
            task.add_done_callback(self._restart_tasks.discard)
            n += 1
            headroom += self.cfg.calls_per_worker
            log.info("SIP pool growing: worker %d starting (%d workers)", wid, n)

    async def _watch_start(self, w: _WorkerSlot, fut: asyncio.Future[ipc.WorkerReady]) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(fut), START_TIMEOUT_S)
        except (TimeoutError, PoolError) as e:
            log.error("SIP worker %d did not start: %s", w.worker_id, e or "timeout")
            if w.process is not None and w.process.is_alive():
                w.process.kill()  # the reader sees EOF: the slot is dropped

    def _retire_idle(self, now: float) -> None:
        ttl = self.cfg.idle_worker_ttl_s
        n = self.worker_count()
        headroom = self._headroom()
        for w in sorted(self._workers.values(), key=lambda x: -x.worker_id):
            if n <= self.min_workers:
                break
            if (w.retiring_since or not w.ready or w.legs or w.reserved
                    or now - w.idle_since < ttl):
                continue
            free = self._free(w)
            if headroom - free < self.spare_slots:
                continue
            w.retiring_since = now
            w.ready = False
            n -= 1
            headroom -= free
            log.info("SIP pool shrinking: retiring idle worker %d (%d workers)", w.worker_id, n)
            if w.conn is not None:
                with contextlib.suppress(OSError, ValueError):
                    w.conn.send(ipc.encode(ipc.Shutdown()))
        # A retiring worker that does not exit in time is terminated (its EOF reaps it).
        for w in list(self._workers.values()):
            p = w.process
            if (w.retiring_since and p is not None and p.is_alive()
                    and now - w.retiring_since > STOP_TIMEOUT_S):
                log.warning("SIP worker %d did not retire in time: killing", w.worker_id)
                p.kill()

    async def _maintain(self) -> None:
        period = min(1.0, max(0.05, self.cfg.idle_worker_ttl_s / 4))
        while not self._stopping:
            await asyncio.sleep(period)
            try:
                self._retire_idle(time.monotonic())
                self._scale_up()
            except Exception:
                log.exception("SIP pool maintenance failed")


def _consume_exception(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _worker_context() -> Any:
    """The multiprocessing context that starts workers: *forkserver*, preloaded.

    A spawned worker starts a fresh interpreter and imports pjsua2, numpy, the DSP and
    (through ``__main__``) the supervisor's own modules: ~0.4 s of CPU and ~60 MB of
    private memory per worker, paid again for every worker an elastic pool adds under
    load. The fork server imports all of that once; each worker is a fork of it, started
    in milliseconds, sharing those pages copy-on-write. The server is a fresh interpreter
    too (no supervisor threads or event loop are forked), and pjsua2 is only imported
    there, never initialised: each worker creates its own Endpoint after the fork.
    OpenBLAS (under numpy) is kept to one thread: workers do small FFTs, never BLAS, and
    a fork server with no extra threads forks cleanly.
    """
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    ctx = multiprocessing.get_context("forkserver")
    # forkserver_init first: the server ignores SIGTERM/SIGINT from then on (a signal to
    # the whole process group must reach only the supervisor).
    ctx.set_forkserver_preload(["sipbridge.sip.forkserver_init", "__main__",
                                "sipbridge.sip.pool", "sipbridge.sip.worker"])
    return ctx


def _worker_main(
    worker_id: int, sip_cfg_dict: dict[str, Any], conn: Connection, sip_port: int
) -> None:
    """Spawn target: imports the pjsua2 worker only in the child process."""
    from sipbridge.sip.worker import run_worker

    run_worker(worker_id, sip_cfg_dict, conn, sip_port)
