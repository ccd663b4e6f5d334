"""Supervisor side of the SIP engine: a pool of SIP worker processes (asyncio).

Each worker (see :mod:`sipbridge.sip.worker`) is a process (forked from a preloaded
fork server, see :mod:`sipbridge.sip.forkserver`) with one pjsua2 Endpoint holding at
most ``calls_per_worker`` legs; the supervisor's handle on it is a
:class:`~sipbridge.sip.workerproc.WorkerProc`, the only record of the legs it holds.
The pool picks a worker per leg, relays commands over a Pipe and turns the worker's
messages back into :class:`sipbridge.ipc.LegEvent` callbacks on the event loop thread.

Bridged calls need every leg in one worker: ``dial(plan, reserve=n)`` keeps ``n`` more
slots of the chosen worker for that ``call_sid`` (for the agent leg), consumed by a later
``dial(..., prefer_worker=w)`` of the same call, released when all the call's legs on
that worker have ended.

Guarantees:
- every dialled leg gets exactly one ``ended`` event: from its worker, or synthesised
  (``cause="worker_died"``) when the worker process dies, or (``cause="local_hangup"``)
  when the pool is stopped and the worker could not report it;
- a dead worker is restarted (same worker_id, same SIP port when possible).

Elastic pool (``min_workers`` < ``max_workers``, :mod:`sipbridge.sip.scaling`): workers
are added as calls eat into ``spare_slots`` and idle ones retired after
``idle_worker_ttl_s``. :class:`PoolFull` is raised only when every worker up to
``max_workers`` is full (or still starting).

No pjsua2 import here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from sipbridge import ipc
from sipbridge.errors import PoolError, PoolFull
from sipbridge.plan import DialPlan
from sipbridge.sip.forkserver import start_worker_process, worker_context
from sipbridge.sip.scaling import Scaler, worker_bounds
from sipbridge.sip.workerproc import START_TIMEOUT_S, STOP_TIMEOUT_S, WorkerProc
from sipbridge.sipconfig import SipConfig

log = logging.getLogger("sipbridge.sip.pool")

_RESTART_BACKOFF_MAX_S = 10.0
_REAP_WAIT_S = 1.0  # from a worker's pipe closing to its exit status (see _after_exit)


# Everything the pool hands to ``on_event``.
PoolEvent = (
    ipc.LegEvent
    | ipc.DetectionReport
    | ipc.DtmfReceived
    | ipc.DtmfSent
    | ipc.PlaybackDone
    | ipc.AgentHoldEvent
    | ipc.InboundCall
    | ipc.ByeHeaders
)


class WorkerPool:
    """A pool of SIP worker processes. All methods must be called on the event loop thread.

    Why 30 methods: 18 are the public API the call manager, ``ops`` and the tests use
    (lifecycle, capacity, placement, one per command); ``spawn``, ``track`` and ``free``
    serve the :class:`~sipbridge.sip.scaling.Scaler`; the rest are the event path and the
    restart of dead workers, which share the worker table with placement.
    """

    def __init__(self, cfg: SipConfig, on_event: Callable[[PoolEvent], None]) -> None:
        self.cfg = cfg
        self.on_event = on_event
        self._ctx = worker_context()
        self.min_workers, self.max_workers, self.spare_slots = worker_bounds(cfg)
        self.elastic = self.max_workers > self.min_workers
        self.workers: dict[int, WorkerProc] = {
            i: WorkerProc(worker_id=i) for i in range(self.min_workers)
        }
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self.stopping = False
        self.running = False
        # Exit code of each worker process at stop() (diagnostics, tests).
        self.exit_codes: dict[int, int | None] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # restarts, start watchers
        # Elastic pool: exit codes of retired workers, spawn/retire counters.
        self.retired_exit_codes: list[int | None] = []
        self.spawned_total = 0
        self.retired_total = 0
        self._scaler = Scaler(self)
        # One thread that asks the fork server for worker processes (see spawn), and the
        # requests it has not finished.
        self._spawner: ThreadPoolExecutor | None = None
        self._spawning: set[asyncio.Future[tuple[Any, Connection]]] = set()

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Spawn ``cfg.workers`` processes and wait until each reports ready.

        Raises :class:`PoolError` (after cleaning up) if any worker fails to start in time.
        """
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._started = True
        futs = [self.spawn(w) for w in self.workers.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*futs), START_TIMEOUT_S)
        except (TimeoutError, PoolError) as e:
            details = "; ".join(
                f"worker {w.worker_id}: "
                + ("ready" if w.ready else (w.last_log or "no WorkerReady received"))
                for w in self.workers.values()
            )
            await self.stop()
            if isinstance(e, PoolError):
                raise
            raise PoolError(
                f"SIP workers did not start within {START_TIMEOUT_S:.0f} s ({details})"
            ) from None
        self.running = True
        log.info("SIP pool started: %d workers on ports %s", len(self.workers), self.worker_ports())
        if self.elastic:
            self._scaler.start()

    def spawn(self, w: WorkerProc, sip_port: int = 0) -> asyncio.Future[ipc.WorkerReady]:
        """Start ``w``'s process; the future resolves with its WorkerReady.

        The process is requested from the fork server on the spawner thread, not on the
        event loop: the request blocks until the fork server has forked and sent the
        child's pid, which on a busy machine (an elastic pool grows exactly then) took up
        to ~0.4 s, and held every API request and dial on this loop that long.
        """
        assert self._loop is not None
        if self._spawner is None:
            self._spawner = ThreadPoolExecutor(1, thread_name_prefix="sip-spawn")
        w.ready = False
        w.started_at = time.monotonic()
        w.retiring_since = 0.0
        self.spawned_total += 1
        ready = w.ready_future = self._loop.create_future()
        slots = max(self.cfg.workers, self.max_workers)
        started = self._loop.run_in_executor(
            self._spawner, start_worker_process, self._ctx, self.cfg, w.worker_id, slots, sip_port
        )
        self._spawning.add(started)
        started.add_done_callback(lambda f: self._process_started(w, ready, f))
        return ready

    def _process_started(
        self,
        w: WorkerProc,
        ready: asyncio.Future[ipc.WorkerReady],
        started: asyncio.Future[tuple[Any, Connection]],
    ) -> None:
        """The fork server answered: read the new worker's pipe, or handle the failure
        as the worker's death during start-up (retried or dropped as for any worker)."""
        assert self._loop is not None
        self._spawning.discard(started)
        exc = None if started.cancelled() else started.exception()
        if started.cancelled() or exc is not None:
            w.last_log = f"could not start a worker process: {exc or 'cancelled'}"
            log.error("SIP worker %d: %s", w.worker_id, w.last_log)
            if w.ready_future is ready and self.workers.get(w.worker_id) is w:
                self._on_worker_exit(w)
            return
        proc, parent = started.result()
        w.process = proc
        w.conn = parent
        self._loop.add_reader(parent.fileno(), self._on_readable, w.worker_id, parent)

    def track(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a background task of the pool (cancelled by :meth:`stop`)."""
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Shut every worker down (hang up their legs), bounded; then kill. Idempotent.

        A worker has finished when its end of the pipe closes (EOF: it has sent the
        ``ended`` event of every leg and exited). The process handle is not asked: a
        forkserver child's liveness is read from the fork server, and a fork server that
        died (a signal to the whole process group) makes every live worker look dead
        (exit code 255); the pool would then stop waiting at once and report their
        answered legs as unanswered.
        """
        if self.stopping or not self._started:
            return
        self.stopping = True
        for t in list(self._tasks):
            t.cancel()
        if self._spawning:  # processes being started are stopped like the others
            await asyncio.wait(set(self._spawning), timeout=START_TIMEOUT_S)
        self._scaler.stop()
        for w in list(self.workers.values()):
            w.send(ipc.Shutdown())
        deadline = time.monotonic() + STOP_TIMEOUT_S
        # The reader (_on_readable) delivers the workers' last events and closes each
        # pipe at EOF.
        while (
            any(w.conn is not None for w in self.workers.values()) and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.02)  # waiting on the readers, bounded by deadline
        for w in list(self.workers.values()):
            proc = w.process
            if proc is None:
                continue
            if w.conn is not None and proc.pid is not None:
                # Its pipe is still open, so it still runs. Workers ignore SIGTERM (they
                # follow the supervisor over the pipe): SIGKILL, by pid (the handle's
                # own kill() is skipped when the fork server is gone).
                log.warning("SIP worker %d did not stop in time: killing", w.worker_id)
                w.drain(w.conn, self._dispatch)  # whatever it sent before
                with contextlib.suppress(OSError):
                    os.kill(proc.pid, signal.SIGKILL)
            proc.join(1.0)
            self.exit_codes[w.worker_id] = proc.exitcode
            if proc.exitcode != 0:
                log.warning("SIP worker %d exited with code %s", w.worker_id, proc.exitcode)
        for w in list(self.workers.values()):
            w.close(self._loop)
            for leg_id, call_sid in list(w.legs.items()):
                self._synth_end(
                    w, leg_id, call_sid, "local_hangup", "SIP pool stopped before the leg ended"
                )
            w.release_process()
        if self._spawner is not None:
            self._spawner.shutdown(wait=False)

    # ---------------------------------------------------------------- capacity
    def capacity(self) -> int:
        """Total call slots over all workers (running or not); for an elastic pool, over
        ``max_workers``."""
        return self.max_workers * self.cfg.calls_per_worker

    def worker_count(self) -> int:
        """Worker processes running or starting (not counting those being retired)."""
        return sum(1 for w in self.workers.values() if not w.retiring_since)

    def worker_pids(self) -> dict[int, int]:
        """OS process id of every worker process (retiring ones included), by worker_id."""
        return {
            w.worker_id: w.process.pid
            for w in self.workers.values()
            if w.process is not None and w.process.pid is not None
        }

    def free(self, w: WorkerProc) -> int:
        """Slots free on one worker right now (none while the pool stops)."""
        return 0 if self.stopping else w.free(self.cfg.calls_per_worker)

    def free_slots(self) -> int:
        """Slots free right now on running workers (reserved slots are not free)."""
        return sum(self.free(w) for w in self.workers.values())

    def ready_workers(self) -> int:
        """Workers running and ready for calls (for /readyz)."""
        return 0 if self.stopping else sum(1 for w in self.workers.values() if w.ready)

    def worker_ports(self) -> list[int]:
        """SIP port of each worker, by worker_id (0 while a worker is not ready)."""
        return [self.workers[i].sip_port for i in sorted(self.workers)]

    def _holder(self, leg_id: str) -> WorkerProc | None:
        """The worker holding a live leg."""
        return next((w for w in self.workers.values() if leg_id in w.legs), None)

    def worker_of(self, leg_id: str) -> int | None:
        """The worker holding a live leg, or None."""
        w = self._holder(leg_id)
        return w.worker_id if w is not None else None

    def worker_pid(self, worker_id: int) -> int | None:
        """OS process id of a worker (for diagnostics and tests)."""
        w = self.workers.get(worker_id)
        p = w.process if w is not None else None
        return p.pid if p is not None else None

    # ---------------------------------------------------------------- commands
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
        if self._holder(plan.leg_id) is not None:
            raise ValueError(f"leg {plan.leg_id!r} is already live")
        if reserve < 0:
            raise ValueError("reserve must be >= 0")
        need = 1 + reserve
        cs = plan.call_sid
        cpw = self.cfg.calls_per_worker

        def room(w: WorkerProc) -> int:
            return 0 if self.stopping else w.room(cs, cpw)

        if prefer_worker is None:
            held = [w for w in self.workers.values() if w.reserved.get(cs, 0) > 0 and w.ready]
            if held:
                prefer_worker = held[0].worker_id
        if prefer_worker is not None:
            w = self.workers.get(prefer_worker)
            if w is None:
                raise ValueError(f"no worker {prefer_worker}")
            if room(w) < need:
                raise PoolFull(
                    f"SIP worker {prefer_worker} has no free slot"
                    + (f" (need {need} for this call)" if need > 1 else "")
                )
        else:
            candidates = [w for w in self.workers.values() if room(w) >= need]
            if not candidates:
                self._scaler.scale_up()
                raise PoolFull(
                    f"no SIP worker has {need} free slot{'s' if need > 1 else ''} "
                    f"({self.free_slots()} of {self.capacity()} free or their workers are down)"
                )
            w = max(candidates, key=lambda c: (self.free(c), -c.worker_id))
        assert w.conn is not None
        try:
            w.conn.send(ipc.encode(ipc.Dial(plan)))
        except (OSError, ValueError) as e:
            raise PoolFull(f"SIP worker {w.worker_id} is not reachable: {e}") from None
        w.take_slot(plan.leg_id, cs, reserve)
        if self.elastic:
            self._scaler.scale_up()
        return w.worker_id

    def reserved_slots(self, call_sid: str) -> dict[int, int]:
        """Slots reserved for a call, by worker_id (diagnostics, tests)."""
        return {
            w.worker_id: w.reserved[call_sid]
            for w in self.workers.values()
            if w.reserved.get(call_sid, 0) > 0
        }

    def _send_to_leg(self, leg_id: str, msg: ipc.Command) -> bool:
        w = self._holder(leg_id)
        return w is not None and w.send(msg)

    def hangup(self, leg_id: str) -> bool:
        """Ask the leg's worker to hang up (CANCEL or BYE). False if unknown/already ended."""
        return self._send_to_leg(leg_id, ipc.Hangup(leg_id))

    def send_dtmf(self, leg_id: str, digits: str, duration_ms: int = 160, gap_ms: int = 80) -> bool:
        """Send RFC 4733 DTMF digits on a live leg (``w`` = 0.5 s pause, ``W`` = 1 s);
        ``DtmfSent`` follows when done. False if unknown/already ended."""
        return self._send_to_leg(leg_id, ipc.SendDtmf(leg_id, digits, duration_ms, gap_ms))

    def bridge(self, carrier_leg: str, agent_leg: str) -> bool:
        """Join two legs' audio both ways in their worker; either's end ends the other and
        DTMF from ``agent_leg`` is relayed to ``carrier_leg``. Raises ``ValueError`` if
        the legs live in different workers; False if either is unknown/ended."""
        wa, wb = self.worker_of(carrier_leg), self.worker_of(agent_leg)
        if wa is None or wb is None:
            return False
        if wa != wb:
            raise ValueError(
                f"legs {carrier_leg!r} (worker {wa}) and {agent_leg!r} (worker {wb}) "
                "are in different workers"
            )
        return self._send_to_leg(carrier_leg, ipc.BridgeLegs(carrier_leg, agent_leg))

    def send_info(
        self, leg_id: str, content_type: str, body: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> bool:
        """Send a SIP INFO in an answered leg's dialog."""
        return self._send_to_leg(leg_id, ipc.SendInfo(leg_id, content_type, body, headers))

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
            wm, wl = self.worker_of(media_from), self.worker_of(leg_id)
            if wm is not None and wl is not None and wm != wl:
                raise ValueError(f"leg {media_from!r} is in worker {wm}, not {wl}")
        return self._send_to_leg(leg_id, ipc.Respond(leg_id, status, reason, media_from))

    # ---------------------------------------------------------------- events
    def _on_readable(self, worker_id: int, conn: Connection) -> None:
        w = self.workers.get(worker_id)
        if w is None or w.conn is not conn:  # stale reader of a previous process
            return
        alive = w.drain(conn, self._dispatch)
        if not alive:
            self._after_exit(w)

    def _after_exit(self, w: WorkerProc) -> None:
        """The worker's pipe closed: handle its exit once its exit status is known,
        without blocking the loop. The status comes from the fork server, which reaps
        the child and then writes it to the process's sentinel: a ``join`` here waited
        for that, up to ~0.1 s on a busy machine. Bounded: after ``_REAP_WAIT_S`` the exit
        is handled with the status unknown (None), as ``join(timeout)`` did."""
        assert self._loop is not None
        w.close(self._loop)  # its pipe is at EOF: stop reading it
        proc = w.process
        if proc is None or proc.exitcode is not None:  # exitcode polls without waiting
            self._on_worker_exit(w)
            return
        loop, sentinel = self._loop, proc.sentinel

        def reaped() -> None:
            timer.cancel()
            if w.process is not proc:
                return  # released meanwhile (the pool stopped): its sentinel is closed
            loop.remove_reader(sentinel)
            self._on_worker_exit(w)

        timer = loop.call_later(_REAP_WAIT_S, reaped)
        loop.add_reader(sentinel, reaped)

    def _dispatch(self, w: WorkerProc, msg: ipc.Command | ipc.Event) -> None:
        if isinstance(msg, ipc.LegEvent):
            if msg.state == "ended":
                if msg.leg_id not in w.legs:
                    log.warning("ended event for unknown leg %s ignored", msg.leg_id)
                    return
                w.forget_leg(msg.leg_id)
            elif msg.leg_id not in w.legs:
                return
            elif msg.state == "answered":
                w.answered.add(msg.leg_id)
            self._emit(msg)
        elif isinstance(
            msg,
            ipc.DetectionReport
            | ipc.DtmfReceived
            | ipc.DtmfSent
            | ipc.PlaybackDone
            | ipc.ByeHeaders
            | ipc.AgentHoldEvent,
        ):
            if msg.leg_id in w.legs:
                self._emit(msg)
        elif isinstance(msg, ipc.InboundCall):
            # The inbound leg holds a slot of its worker like a dialled leg (its call_sid
            # in LegEvents is its leg_id until the supervisor maps it).
            w.legs[msg.leg_id] = msg.leg_id
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
        self, w: WorkerProc, leg_id: str, call_sid: str, cause: ipc.EndCause, detail: str
    ) -> None:
        answered = leg_id in w.answered
        w.forget_leg(leg_id)
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

    def _on_worker_exit(self, w: WorkerProc) -> None:
        proc = w.process
        code = proc.exitcode if proc is not None else None  # reaped: see _after_exit
        w.close(self._loop)
        if self.stopping:
            return
        text = f"SIP worker {w.worker_id} exited with code {code}"
        starting = w.ready_future if w.starting else None
        if (
            self.running
            and self.elastic
            and (
                w.retiring_since
                or (starting is not None and not w.legs and self.worker_count() > self.min_workers)
            )
        ):
            # Retired (or a worker added for load that failed to start): not restarted.
            if starting is not None:
                log.error("%s while starting; not restarted", text)
                self._scaler.grow_blocked_until = time.monotonic() + 1.0
                starting.set_exception(PoolError(text))
                starting.exception()  # mark retrieved
            else:
                self.retired_exit_codes.append(code)
                self.retired_total += 1
                log.info("SIP worker %d retired (exit code %s)", w.worker_id, code)
            for leg_id, call_sid in list(w.legs.items()):
                self._synth_end(w, leg_id, call_sid, "worker_died", text)
            w.release_process()
            self.workers.pop(w.worker_id, None)
            self._scaler.scale_up()
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
            if not self.running:
                return  # start() reports it
        log.error("%s; %d legs lost; restarting", text, len(w.legs))
        for leg_id, call_sid in list(w.legs.items()):
            self._synth_end(w, leg_id, call_sid, "worker_died", text)
        w.release_process()
        self.track(self._restart(w))

    async def _restart(self, w: WorkerProc) -> None:
        w.restarts += 1
        delay = min(_RESTART_BACKOFF_MAX_S, 0.2 * (2 ** min(w.restarts - 1, 6)))
        if time.monotonic() - w.started_at > 60:
            delay = 0.2  # it ran fine for a while: restart promptly
        await asyncio.sleep(delay)
        if self.stopping or self.workers.get(w.worker_id) is not w:
            return
        fut = self.spawn(w, w.sip_port)
        try:
            await asyncio.wait_for(asyncio.shield(fut), START_TIMEOUT_S)
            log.info("SIP worker %d restarted on port %d", w.worker_id, w.sip_port)
        except (TimeoutError, PoolError) as e:
            log.error("SIP worker %d restart failed: %s", w.worker_id, e)
            if w.process is not None and w.process.is_alive():
                w.process.kill()  # the reader sees EOF and schedules another restart
