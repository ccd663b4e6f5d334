"""What the call manager (and sipbridge.ops) needs from the SIP engine: the protocol
:class:`sipbridge.sip.pool.WorkerPool` implements, and tests' doubles (tests/doubles.py)."""

from __future__ import annotations

from typing import Any, Protocol

from sipbridge.plan import DialPlan


class Pool(Protocol):
    """Legs are named by ``DialPlan.leg_id``; what happens to them comes back as events
    (sipbridge.ipc) through the callback the pool was built with. Commands on a leg
    return False when the leg is unknown (already ended) or its worker is gone."""

    async def start(self) -> None: ...
    async def stop(self) -> None:
        """Hang up every live leg and stop the workers."""

    def capacity(self) -> int:
        """Call slots over all workers."""

    def free_slots(self) -> int: ...

    def ready_workers(self) -> int:
        """Workers that can take a dial now."""

    def dial(self, plan: DialPlan, prefer_worker: int | None = None, reserve: int = 0) -> int:
        """Start the leg; returns its worker. ``prefer_worker`` pins the leg to that
        worker; ``reserve`` keeps that many more slots free on it (the agent leg).
        Raises :class:`sipbridge.errors.PoolFull` when no slot fits."""

    def hangup(self, leg_id: str) -> bool: ...
    def send_dtmf(
        self, leg_id: str, digits: str, duration_ms: int = 160, gap_ms: int = 80
    ) -> bool: ...
    def play(self, leg_id: str, path: str) -> bool: ...
    def send_info(
        self, leg_id: str, content_type: str, body: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> bool:
        """A SIP INFO in an answered leg's dialog."""

    def listen(self, leg_id: str, phase: str, config: dict[str, Any]) -> bool: ...
    def respond(
        self, leg_id: str, status: int, reason: str = "", media_from: str | None = None
    ) -> bool:
        """Answer an inbound INVITE (provisional, 200 or final error)."""


__all__ = ["Pool"]
