"""The project's test doubles, in one place. Each implements a real protocol in full:

* :class:`Clock` — an injectable ``time.time`` (``sipbridge.limits``, the call manager);
* :class:`RecordingPool` — the whole :class:`sipbridge.calls.Pool` protocol, recording
  every command; a leg stays up (holding its slot) until :meth:`RecordingPool.end`;
* :class:`EventRecorder` — the ``on_event`` callback of a real WorkerPool: keeps every
  event and lets a test await one;
* :class:`CallHarness` — a CallService over a real SQLite store, a RecordingPool and a
  Clock, with helpers that play the SIP engine's side (answer, end, detection).

No SIP here: the SIP paths run against SIPp in tests/integration.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sipbridge.calls import CallService, TriggerInput
from sipbridge.config import Config, parse_config
from sipbridge.errors import PoolFull
from sipbridge.ipc import DetectionReport, LegEvent, LegState
from sipbridge.media.detect import Detection
from sipbridge.media.result import AnsweredBy
from sipbridge.plan import DialPlan
from sipbridge.records import CallRecord
from sipbridge.store import SQLiteStore

# 2026-11-23 is a Monday. 15:00 UTC = 10:00 in New York.
MON_15_UTC = datetime(2026, 11, 23, 15, 0, tzinfo=UTC).timestamp()


def call_config(**over: Any) -> Config:
    """A bridge config with an agent and two trunks hunting +1 numbers: ``a`` first,
    ``b`` on failover. ``over`` replaces top-level keys."""
    base: dict[str, Any] = {
        "agent": {"uri": "sip:agent@127.0.0.1"},
        "api": {"tokens": [{"value": "tok"}]},
        "trunks": [
            {"name": "a", "address": "127.0.0.1:5061", "caller_id": "+14155550100"},
            {"name": "b", "address": "127.0.0.1:5062", "caller_id": "+14155550101"},
        ],
        "routes": [
            {"prefix": "+1", "trunks": [{"name": "a", "priority": 0}, {"name": "b", "priority": 1}]}
        ],
    }
    base.update(over)
    return parse_config(base)


class Clock:
    """A clock the test moves: ``clock()`` is the time, ``advance(dt)`` moves it."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


@dataclass
class RecordingPool:
    """The SIP engine's protocol, in memory: dials fill slots (PoolFull when none is
    free); every command is recorded; no events are sent (tests send them)."""

    slots: int = 8
    ready: int | None = None  # ready workers; None: 1 when there are slots
    clock: Callable[[], float] | None = None  # when set, dial times are recorded
    plans: list[DialPlan] = field(default_factory=list)
    live: dict[str, DialPlan] = field(default_factory=dict)
    hung: list[str] = field(default_factory=list)
    dtmf: list[tuple[str, str]] = field(default_factory=list)
    plays: list[tuple[str, str]] = field(default_factory=list)
    listens: list[tuple[str, str]] = field(default_factory=list)
    infos: list[tuple[str, str, str]] = field(default_factory=list)
    responses: list[tuple[str, int, str]] = field(default_factory=list)
    dial_times: list[float] = field(default_factory=list)
    started: bool = False
    fail_dial: Exception | None = None  # raised by the next dial (then cleared)

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    def capacity(self) -> int:
        return self.slots

    def free_slots(self) -> int:
        return self.slots - len(self.live)

    def ready_workers(self) -> int:
        if self.ready is not None:
            return self.ready
        return 1 if self.slots > 0 else 0

    def dial(self, plan: DialPlan, prefer_worker: int | None = None, reserve: int = 0) -> int:
        if self.fail_dial is not None:
            exc, self.fail_dial = self.fail_dial, None
            raise exc
        if self.free_slots() <= 0:
            raise PoolFull("no free slot")
        assert plan.leg_id not in self.live, "a leg dialled twice"
        self.live[plan.leg_id] = plan
        self.plans.append(plan)
        if self.clock is not None:
            self.dial_times.append(self.clock())
        return prefer_worker or 0

    def end(self, leg_id: str) -> None:
        """The leg is down: its slot is free again."""
        self.live.pop(leg_id, None)

    def hangup(self, leg_id: str) -> bool:
        self.hung.append(leg_id)
        return leg_id in self.live

    def send_dtmf(self, leg_id: str, digits: str, duration_ms: int = 160, gap_ms: int = 80) -> bool:
        self.dtmf.append((leg_id, digits))
        return leg_id in self.live

    def play(self, leg_id: str, path: str) -> bool:
        self.plays.append((leg_id, path))
        return leg_id in self.live

    def send_info(
        self, leg_id: str, content_type: str, body: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> bool:
        self.infos.append((leg_id, content_type, body))
        return leg_id in self.live

    def listen(self, leg_id: str, phase: str, config: dict[str, Any]) -> bool:
        self.listens.append((leg_id, phase))
        return leg_id in self.live

    def respond(
        self, leg_id: str, status: int, reason: str = "", media_from: str | None = None
    ) -> bool:
        self.responses.append((leg_id, status, reason))
        return True

    def agent_of(self, carrier: DialPlan) -> DialPlan:
        """The newest agent leg dialled for ``carrier``."""
        return next(p for p in reversed(self.plans) if p.bridge_with == carrier.leg_id)


class EventRecorder:
    """Every event a WorkerPool reports; tests await one matching a predicate."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._waiters: list[tuple[Callable[[Any], bool], asyncio.Future[Any]]] = []

    def __call__(self, ev: Any) -> None:
        self.events.append(ev)
        for pred, fut in list(self._waiters):
            if not fut.done() and pred(ev):
                fut.set_result(ev)

    async def wait(self, pred: Callable[[Any], bool], timeout: float = 5.0) -> Any:
        for ev in self.events:
            if pred(ev):
                return ev
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise AssertionError(
                f"no matching event within {timeout} s; got: {self.events}"
            ) from None

    async def state(self, leg_id: str, state: str, timeout: float = 5.0) -> LegEvent:
        ev: LegEvent = await self.wait(
            lambda e: isinstance(e, LegEvent) and e.leg_id == leg_id and e.state == state, timeout
        )
        return ev

    def states(self, leg_id: str) -> list[str]:
        return [e.state for e in self.of(LegEvent) if e.leg_id == leg_id]

    def ended(self, leg_id: str) -> list[LegEvent]:
        return [e for e in self.of(LegEvent) if e.leg_id == leg_id and e.state == "ended"]

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def detection(answered_by: AnsweredBy = "human", **fields: Any) -> Detection:
    """A detection result (decided at 0 ms unless given)."""
    fields.setdefault("decided_at_ms", 0)
    return Detection(answered_by=answered_by, **fields)


class CallHarness:
    """A CallService with a recording pool, a test clock and a SQLite store in ``tmp``;
    the helpers send what the SIP engine would."""

    def __init__(
        self,
        tmp: Path,
        cfg: Config,
        t: float = MON_15_UTC,
        slots: int = 8,
        seed: int = 7,
        db: str = "s.db",
    ) -> None:
        self.clock = Clock(t)
        self.pool = RecordingPool(slots, clock=self.clock)
        self.store = SQLiteStore(tmp / db)
        self.svc = CallService(
            cfg, self.store, self.pool, clock=self.clock, rng=random.Random(seed)
        )

    # ---- calls -----------------------------------------------------------------------

    def trigger(self, to: str = "+12125550123", **kw: Any) -> str:
        return self.svc.trigger(TriggerInput(to, **kw)).call_sid

    def dial(self, to: str = "+12125550123", **kw: Any) -> tuple[str, DialPlan]:
        """Trigger a call and run a scheduling pass: its carrier leg's plan."""
        sid = self.trigger(to, **kw)
        self.svc.dispatch_once()
        return sid, self.pool.plans[-1]

    def rec(self, sid: str) -> CallRecord:
        return self.svc.get(sid)[0]

    def statuses(self, sid: str) -> list[tuple[str, str]]:
        return [
            (e.data["to"], e.data["reason"]) for e in self.store.events(sid) if e.kind == "status"
        ]

    # ---- the SIP engine's side -------------------------------------------------------

    def leg(
        self, plan: DialPlan | str, state: LegState, sip_status: int | None = None, **kw: Any
    ) -> None:
        leg_id = plan if isinstance(plan, str) else plan.leg_id
        call_sid = kw.pop("call_sid", plan.call_sid if isinstance(plan, DialPlan) else "")
        self.svc.on_sip_event(LegEvent(leg_id, call_sid, state, 0, self.clock(), sip_status, **kw))

    def answer(self, plan: DialPlan | str) -> None:
        self.leg(plan, "answered", 200)

    def end(
        self,
        plan: DialPlan | str,
        sip_status: int | None,
        cause: str = "remote_final",
        answered: bool = False,
        **kw: Any,
    ) -> None:
        """The leg ended (its slot is free again)."""
        self.pool.end(plan if isinstance(plan, str) else plan.leg_id)
        self.leg(plan, "ended", sip_status, cause=cause, answered=answered, **kw)

    def connect(self, plan: DialPlan) -> DialPlan:
        """The carrier answers and the agent leg the flow dialled answers: connected."""
        self.answer(plan)
        agent = self.pool.agent_of(plan)
        self.answer(agent)
        return agent

    def report(
        self,
        plan: DialPlan,
        phase: str,
        kind: str = "decision",
        answered_by: AnsweredBy = "human",
        **fields: Any,
    ) -> None:
        self.svc.on_sip_event(
            DetectionReport(
                plan.leg_id,
                plan.call_sid,
                0,
                self.clock(),
                phase,
                kind,
                detection(answered_by, **fields),
            )
        )


__all__ = [
    "MON_15_UTC",
    "CallHarness",
    "Clock",
    "EventRecorder",
    "RecordingPool",
    "call_config",
    "detection",
]
