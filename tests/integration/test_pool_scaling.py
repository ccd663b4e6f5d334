"""The elastic SIP worker pool against SIPp: it grows with concurrent legs up to
max_workers (PoolFull only beyond) and shrinks back to min_workers after the idle TTL."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from sipbridge.devtools.sipp import SippUas
from sipbridge.sip.pool import PoolFull, WorkerPool
from tests.doubles import EventRecorder as Recorder
from tests.integration.harness import run, sip_cfg
from tests.integration.test_sip_pool import plan

pytestmark = pytest.mark.integration


async def _until(pred: object, timeout: float, what: str) -> None:
    assert callable(pred)
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)  # polling the pool's state, bounded by the deadline


def test_pool_grows_to_max_and_shrinks_after_ttl(tmp_path: Path) -> None:
    uas = SippUas("uas_answer_wait_bye.xml", tmp_path).start()
    cfg = sip_cfg(workers=1).model_copy(
        update={"min_workers": 1, "max_workers": 3, "idle_worker_ttl_s": 1.0}
    )

    async def go() -> None:
        rec = Recorder()
        pool = WorkerPool(cfg, rec)
        await pool.start()
        try:
            assert pool.elastic and pool.capacity() == 12
            # One spare worker's worth of slots (4) is kept: one worker suffices idle.
            assert pool.worker_count() == 1
            legs = [f"g{i}/b1" for i in range(10)]
            dialled: list[str] = []
            deadline = time.monotonic() + 20
            while len(dialled) < len(legs):
                assert time.monotonic() < deadline, f"only {len(dialled)} legs dialled"
                try:
                    pool.dial(plan(uas, legs[len(dialled)]))
                    dialled.append(legs[len(dialled)])
                except PoolFull:
                    await asyncio.sleep(0.05)  # the pool is spawning a worker
            assert pool.worker_count() == 3
            await asyncio.gather(*(rec.state(leg, "answered", 10) for leg in legs))
            used = {e.worker_id for e in rec.events if e.state == "answered"}
            assert len(used) == 3, used
            # Two more fit (12 slots); beyond that PoolFull, and the pool stays at max.
            pool.dial(plan(uas, "g10/b1"))
            pool.dial(plan(uas, "g11/b1"))
            with pytest.raises(PoolFull):
                pool.dial(plan(uas, "g12/b1"))
            assert pool.worker_count() == 3
            for leg in [*legs, "g10/b1", "g11/b1"]:
                await rec.state(leg, "trying", 5)
            pids = set(pool.worker_pids().values())
            for leg in [*legs, "g10/b1", "g11/b1"]:
                assert pool.hangup(leg)
            ends = await asyncio.gather(
                *(rec.state(leg, "ended", 10) for leg in [*legs, "g10/b1", "g11/b1"])
            )
            assert {e.cause for e in ends} == {"local_hangup"}
            # Idle for the TTL: back to min_workers, the retired ones exited cleanly.
            await _until(
                lambda: pool.worker_count() == 1 and len(pool.worker_pids()) == 1,
                15,
                "the pool to shrink to 1 worker",
            )
            assert pool.retired_exit_codes == [0, 0], pool.retired_exit_codes
            (left,) = pool.worker_pids().values()
            assert left in pids
            assert pool.free_slots() == 4
            # It grows again on demand.
            pool.dial(plan(uas, "h1/b1"))
            pool.dial(plan(uas, "h2/b1"))
            await rec.state("h2/b1", "answered", 10)
            await _until(
                lambda: pool.worker_count() == 2 and pool.free_slots() >= 4, 15, "a spare worker"
            )
        finally:
            await pool.stop()
        assert all(c == 0 for c in pool.exit_codes.values()), pool.exit_codes

    try:
        run(go(), timeout=90)
    finally:
        uas.stop()


def test_fixed_pool_does_not_scale(tmp_path: Path) -> None:
    """min = max = workers (the default): no spawn, no retire, PoolFull at capacity."""
    uas = SippUas("uas_answer_wait_bye.xml", tmp_path).start()
    cfg = sip_cfg(workers=1).model_copy(update={"idle_worker_ttl_s": 0.2})

    async def go() -> None:
        rec = Recorder()
        pool = WorkerPool(cfg, rec)
        await pool.start()
        try:
            assert not pool.elastic
            for i in range(4):
                pool.dial(plan(uas, f"f{i}/b1"))
            with pytest.raises(PoolFull):
                pool.dial(plan(uas, "f4/b1"))
            await asyncio.sleep(1.0)
            assert pool.worker_count() == 1 and pool.spawned_total == 1
        finally:
            await pool.stop()
        assert pool.exit_codes == {0: 0}

    try:
        run(go(), timeout=40)
    finally:
        uas.stop()
