"""WorkerPool.spawn asks the fork server for a process off the event loop (a request that
blocks until the fork server has forked, up to ~0.4 s on a busy machine), and a request
that fails is handled as a worker that died while starting. The fork server is stood in
for by a function in the spawner thread; the real one is in tests/integration/test_sip_pool."""

from __future__ import annotations

import asyncio
import threading

import pytest

from sipbridge.errors import PoolError
from sipbridge.sip import pool as pool_mod
from sipbridge.sip.pool import WorkerPool
from sipbridge.sipconfig import SipConfig


def _pool() -> WorkerPool:
    return WorkerPool(SipConfig(workers=1, port_min=0, port_max=0), lambda ev: None)


def test_a_slow_fork_server_does_not_hold_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    loop_ran = threading.Event()

    def fork_server_waits_for_the_loop(*args: object) -> object:
        # The request returns only once the loop has run a callback scheduled after
        # spawn() returned: if spawn() blocked the loop on it, this never happens.
        if not loop_ran.wait(10):
            raise OSError("the event loop was blocked while a worker was requested")
        raise OSError("fork server gone")

    monkeypatch.setattr(pool_mod, "start_worker_process", fork_server_waits_for_the_loop)

    async def main() -> None:
        pool = _pool()
        start = asyncio.create_task(pool.start())
        await asyncio.sleep(0)  # start() has called spawn()
        asyncio.get_running_loop().call_soon(loop_ran.set)
        with pytest.raises(PoolError) as e:
            await asyncio.wait_for(start, 15)
        # the failure is the fork server's, not the blocked-loop one
        assert "fork server gone" in str(e.value)

    asyncio.run(main())


def test_a_failed_request_fails_the_start_naming_the_cause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuses(*args: object) -> object:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(pool_mod, "start_worker_process", refuses)

    async def main() -> None:
        pool = _pool()
        with pytest.raises(PoolError) as e:
            await asyncio.wait_for(pool.start(), 15)
        assert "worker 0" in str(e.value)
        assert "Too many open files" in str(e.value)
        assert pool.workers[0].process is None  # nothing half-started is kept

    asyncio.run(main())


class _ExitingProcess:
    """Stands for a fork-server child whose pipe has closed: its exit status arrives
    later, when the fork server writes it to the sentinel."""

    pid = 4242

    def __init__(self, sentinel: int) -> None:
        self.sentinel = sentinel
        self.exitcode: int | None = None

    def is_alive(self) -> bool:
        return self.exitcode is None

    def close(self) -> None:
        pass


def test_a_worker_exit_is_handled_when_its_status_arrives_without_waiting_for_it() -> None:
    import os

    from sipbridge import ipc

    events: list[object] = []
    ended = asyncio.Event()

    def on_event(ev: object) -> None:
        events.append(ev)
        ended.set()

    async def main() -> None:
        pool = WorkerPool(SipConfig(workers=1, port_min=0, port_max=0), on_event)
        pool._loop = asyncio.get_running_loop()
        pool.running = True
        r, w_fd = os.pipe()
        proc = _ExitingProcess(r)
        worker = pool.workers[0]
        worker.process = proc  # type: ignore[assignment]
        worker.legs["leg-1"] = "OUT-1"
        pool._after_exit(worker)  # returns at once: the status is not known yet
        assert events == [] and worker.legs == {"leg-1": "OUT-1"}
        proc.exitcode = -9
        os.write(w_fd, b"\0")
        await asyncio.wait_for(ended.wait(), 5)
        ev = events[0]
        assert isinstance(ev, ipc.LegEvent) and ev.state == "ended"
        assert ev.cause == "worker_died" and "exited with code -9" in ev.detail
        for t in list(pool._tasks):  # its restart
            t.cancel()
        os.close(r)
        os.close(w_fd)

    asyncio.run(main())
