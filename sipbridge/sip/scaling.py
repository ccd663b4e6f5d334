"""Elastic SIP pool (``min_workers`` < ``max_workers``), supervisor side.

The pool starts ``min_workers`` processes and keeps ``spare_slots`` slots (default: one
worker's worth) free or starting, spawning another worker (up to ``max_workers``) as soon
as calls eat into that headroom, since a worker takes ~60 ms to start (~0.4 s for the
first, which starts the fork server). A worker above ``min_workers`` with no legs and no
reservations for ``idle_worker_ttl_s`` is retired (``Shutdown``, then its process is
reaped; it takes no new dials meanwhile).

Owns: the maintenance task and the pause on growing after a failed start. The workers
themselves stay the pool's (:class:`sipbridge.sip.pool.WorkerPool`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from sipbridge import ipc
from sipbridge.sip.workerproc import START_TIMEOUT_S, STOP_TIMEOUT_S, WorkerProc
from sipbridge.sipconfig import SipConfig

if TYPE_CHECKING:
    from sipbridge.sip.pool import WorkerPool

log = logging.getLogger("sipbridge.sip.pool")


def worker_bounds(cfg: SipConfig) -> tuple[int, int, int]:
    """(min_workers, max_workers, spare_slots) with the config's defaults applied."""
    lo = cfg.min_workers if cfg.min_workers is not None else cfg.workers
    hi = cfg.max_workers if cfg.max_workers is not None else max(cfg.workers, lo)
    spare = cfg.spare_slots if cfg.spare_slots is not None else cfg.calls_per_worker
    return lo, max(lo, hi), spare


class Scaler:
    """Grows and shrinks a :class:`~sipbridge.sip.pool.WorkerPool` (event loop thread)."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.cfg = pool.cfg
        self.maint_task: asyncio.Task[None] | None = None
        self.grow_blocked_until = 0.0  # a pause on growing after a failed start

    def start(self) -> None:
        p = self.pool
        log.info(
            "SIP pool is elastic: %d-%d workers, %d spare slots, idle TTL %.1f s",
            p.min_workers,
            p.max_workers,
            p.spare_slots,
            self.cfg.idle_worker_ttl_s,
        )
        self.scale_up()
        self.maint_task = asyncio.get_running_loop().create_task(self._maintain())

    def stop(self) -> None:
        if self.maint_task is not None:
            self.maint_task.cancel()

    def headroom(self) -> int:
        """Free slots on ready workers plus the slots of workers still starting."""
        n = 0
        for w in self.pool.workers.values():
            if w.retiring_since:
                continue
            if w.ready:
                n += self.pool.free(w)
            elif w.process is not None or w.starting:
                n += self.cfg.calls_per_worker
        return n

    def scale_up(self) -> None:
        """Spawn workers (up to max_workers) until ``spare_slots`` slots are free or
        starting, and at least min_workers exist."""
        p = self.pool
        if not p.running or p.stopping:
            return
        if time.monotonic() < self.grow_blocked_until:
            return
        n = p.worker_count()
        headroom = self.headroom()
        while n < p.max_workers and (n < p.min_workers or headroom < p.spare_slots):
            wid = next(i for i in range(p.max_workers + len(p.workers) + 1) if i not in p.workers)
            w = WorkerProc(worker_id=wid)
            p.workers[wid] = w
            fut = p.spawn(w)
            fut.add_done_callback(_consume_exception)
            p.track(self._watch_start(w, fut))
            n += 1
            headroom += self.cfg.calls_per_worker
            log.info("SIP pool growing: worker %d starting (%d workers)", wid, n)

    async def _watch_start(self, w: WorkerProc, fut: asyncio.Future[ipc.WorkerReady]) -> None:
        from sipbridge.sip.pool import PoolError  # (the pool module imports this one)

        try:
            await asyncio.wait_for(asyncio.shield(fut), START_TIMEOUT_S)
        except (TimeoutError, PoolError) as e:
            log.error("SIP worker %d did not start: %s", w.worker_id, e or "timeout")
            if w.process is not None and w.process.is_alive():
                w.process.kill()  # the reader sees EOF: the slot is dropped

    def retire_idle(self, now: float) -> None:
        p = self.pool
        ttl = self.cfg.idle_worker_ttl_s
        n = p.worker_count()
        headroom = self.headroom()
        for w in sorted(p.workers.values(), key=lambda x: -x.worker_id):
            if n <= p.min_workers:
                break
            if w.retiring_since or not w.ready or w.legs or w.reserved or now - w.idle_since < ttl:
                continue
            free = p.free(w)
            if headroom - free < p.spare_slots:
                continue
            w.retiring_since = now
            w.ready = False
            n -= 1
            headroom -= free
            log.info("SIP pool shrinking: retiring idle worker %d (%d workers)", w.worker_id, n)
            w.send(ipc.Shutdown())
        # A retiring worker that does not exit in time is terminated (its EOF reaps it).
        for w in list(p.workers.values()):
            proc = w.process
            if (
                w.retiring_since
                and proc is not None
                and proc.is_alive()
                and now - w.retiring_since > STOP_TIMEOUT_S
            ):
                log.warning("SIP worker %d did not retire in time: killing", w.worker_id)
                proc.kill()

    async def _maintain(self) -> None:
        period = min(1.0, max(0.05, self.cfg.idle_worker_ttl_s / 4))
        while not self.pool.stopping:
            await asyncio.sleep(period)
            try:
                self.retire_idle(time.monotonic())
                self.scale_up()
            except Exception:
                log.exception("SIP pool maintenance failed")


def _consume_exception(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


__all__ = ["Scaler", "worker_bounds"]
