"""sipbridge.cluster.identity and ClusterNode.claim_identity: one process per node id.
The pure token rules, then two nodes with the same id on one real PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipbridge.cluster import membership
from sipbridge.cluster.identity import new_instance, predecessor_gone
from sipbridge.devtools.pgserver import available
from sipbridge.errors import NodeIdInUse
from tests.unit.test_cluster_node import _age, _node, _service

BOOT = "6f1c2d3e-0000-4000-8000-000000000001"


def _dead(pid: int) -> bool:
    return False


def _alive(pid: int) -> bool:
    return True


def test_token_names_boot_and_pid() -> None:
    boot, pid, rand = new_instance(BOOT, 4242).split("/")
    assert (boot, pid, len(rand)) == (BOOT, "4242", 12)
    assert new_instance(BOOT, 1) != new_instance(BOOT, 1)


def test_a_gone_predecessor_on_this_host_is_passed_at_once() -> None:
    ours = new_instance(BOOT, 200)
    assert predecessor_gone(new_instance(BOOT, 100), ours, alive=_dead)


@pytest.mark.parametrize(
    ("holder", "alive"),
    [
        (new_instance(BOOT, 100), _alive),  # the other process still runs
        (new_instance(BOOT, 200), _dead),  # same pid: another container's namespace
        (new_instance("another-boot", 100), _dead),  # another host
        (None, _dead),  # a row written by an older build
        ("garbage", _dead),
        (f"{BOOT}/x/1", _dead),
        ("/100/abc", _dead),  # boot unknown
    ],
)
def test_anything_else_is_waited_out(holder: str | None, alive: Callable[[int], bool]) -> None:
    assert not predecessor_gone(holder, new_instance(BOOT, 200), alive=alive)


@given(st.text(max_size=40), st.text(max_size=40), st.integers(1, 10**6), st.integers(1, 10**6))
def test_never_passes_a_holder_on_another_boot(b1: str, b2: str, p1: int, p2: int) -> None:
    if b1 != b2:
        assert not predecessor_gone(new_instance(b1, p1), new_instance(b2, p2), alive=_dead)


pg = pytest.mark.skipif(available() is not None, reason=str(available()))


@pg
def test_a_second_live_process_with_the_same_node_id_is_refused(pg_server: Any) -> None:
    dsn = pg_server.new_database()
    _a, node_a = _node(dsn, "same")
    # B must not run recover() before claim_identity (it would end A's calls)
    _b, node_b = _service(dsn, "same")

    async def run() -> float:
        async def beat_a() -> None:
            while True:  # A stays alive: it keeps heartbeating while B waits
                membership.heartbeat(node_a.store, False)
                await asyncio.sleep(0.5)

        beating = asyncio.create_task(beat_a())
        t0 = time.monotonic()
        try:
            with pytest.raises(NodeIdInUse, match=r"cluster\.node_id 'same' is in use"):
                await node_b.claim_identity()
        finally:
            beating.cancel()
        return time.monotonic() - t0

    waited = asyncio.run(run())
    assert waited >= 4.0 + 2 * 1.0  # one lease and two heartbeats
    # A's row is still A's
    held = membership.holder(node_b.store)
    assert held is not None and held[0] == node_a.store.instance


@pg
def test_a_dead_predecessor_or_a_stale_row_is_passed_at_once(pg_server: Any) -> None:
    dsn = pg_server.new_database()
    _a, node_a = _node(dsn, "re")
    _b, node_b = _service(dsn, "re")
    # the row's holder: a process on this host that has exited
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    dead = new_instance(pid=int(child.stdout))
    node_a.store._one("UPDATE nodes SET instance=? WHERE node_id='re'", (dead,))
    t0 = time.monotonic()
    asyncio.run(node_b.claim_identity())
    assert time.monotonic() - t0 < 1.0
    # a stale row (lease over) of a process that may still run elsewhere: free too
    node_a.store._one("UPDATE nodes SET instance='another-boot/1/x' WHERE node_id='re'")
    _age(node_a.store, "re", 10.0)
    t0 = time.monotonic()
    asyncio.run(node_b.claim_identity())
    assert time.monotonic() - t0 < 1.0
