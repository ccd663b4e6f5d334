"""sipbridge.calls.backlog: SIP events wait, in order, while the store is unreachable."""

from __future__ import annotations

import asyncio

from sipbridge.calls.backlog import EventBacklog
from sipbridge.errors import StoreError, StoreUnavailable


class Handler:
    """Handles events into ``done`` while ``up``; raises StoreUnavailable when parked."""

    def __init__(self) -> None:
        self.up = True
        self.done: list[tuple[str, bool]] = []

    def __call__(self, ev: str, park: bool) -> None:
        if not self.up and park:
            raise StoreUnavailable("PostgreSQL store unavailable: test")
        self.done.append((ev, park))


def test_events_wait_in_order_and_are_handled_once_the_store_answers() -> None:
    async def run() -> None:
        h = Handler()
        b = EventBacklog(h, retry_s=0.01)
        b.submit("a")
        h.up = False
        b.submit("bye-1")
        b.submit("bye-2")  # behind bye-1, even though not tried yet
        assert len(b) == 2 and h.done == [("a", True)]
        await asyncio.sleep(0.05)  # retries find the store still down
        assert len(b) == 2
        h.up = True
        for _ in range(100):
            if not len(b):
                break
            await asyncio.sleep(0.01)  # the next retry tick
        assert h.done == [("a", True), ("bye-1", True), ("bye-2", True)]
        b.submit("c")  # nothing waiting: handled at once
        assert h.done[-1] == ("c", True) and len(b) == 0

    asyncio.run(run())


def test_bounded_the_oldest_is_handled_without_parking() -> None:
    async def run() -> None:
        h = Handler()
        h.up = False
        b = EventBacklog(h, retry_s=10, max_events=2)
        for ev in ("e1", "e2", "e3"):
            b.submit(ev)
        assert h.done == [("e1", False)] and len(b) == 2

    asyncio.run(run())


def test_without_a_loop_the_event_is_handled_as_before() -> None:
    h = Handler()
    h.up = False
    EventBacklog(h).submit("x")
    assert h.done == [("x", False)]


def test_any_other_error_is_logged_and_the_next_event_is_handled() -> None:
    done: list[str] = []

    def handle(ev: str, park: bool) -> None:
        if ev == "bad":
            raise StoreError("PostgreSQL store: syntax")
        done.append(ev)

    b = EventBacklog(handle)
    b.submit("bad")
    b.submit("next")
    assert done == ["next"] and len(b) == 0
