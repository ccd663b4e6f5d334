"""Where a call lives while it has SIP legs or an attempt in progress: one :class:`LiveCall`
per call, in a :class:`CallRegistry` indexed by callSid and by leg id.

A LiveCall holds everything about the call that is not in its stored record: the attempt
(hunt list, hop, the legs it tried), the flow deciding what to do with the answered
call, its timers, its legs (role, worker), why the bridge is ending it, whether the API
asked for a hang-up, and whether it came in as a SIP INVITE. The registry forgets a call
in one place, :meth:`CallRegistry.drop`, called when the call is idle (no attempt, no
leg): nothing about a finished call stays behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field

from sipbridge.flow import CallFlow
from sipbridge.outcomes import Termination
from sipbridge.records import LegRole


@dataclass(frozen=True)
class TriedLeg:
    """A carrier leg of the attempt that ended (a failover hop or the last one)."""

    trunk: str | None
    leg_id: str
    sip_status: int | None
    cause: str | None


@dataclass
class Attempt:
    """The attempt in progress: its hunt list and where it is in it."""

    number: int  # 1 for the first attempt of the call
    hunt: list[str]  # trunk names in the order they are tried
    started_at: float
    hop: int = 0  # index in ``hunt`` of the trunk dialled (or to dial next)
    leg_id: str | None = None  # the carrier leg of the current hop, while it is up
    trunk: str | None = None
    tried: list[TriedLeg] = field(default_factory=list)
    # Between two hops, waiting in the failover queue for capacity: nothing on the wire.
    waiting: bool = False


@dataclass
class LiveLeg:
    leg_id: str
    role: LegRole
    worker: int | None


@dataclass
class LiveCall:
    """One call's in-memory state (its stored record is the rest)."""

    call_sid: str
    attempt: Attempt | None = None
    flow: CallFlow | None = None  # decisions of the current attempt
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    carrier_leg: str | None = None  # the current attempt's carrier leg
    agent_leg: str | None = None  # the agent leg (dialled, or the inbound INVITE)
    legs: dict[str, LiveLeg] = field(default_factory=dict)  # legs up, by id
    # Why the bridge itself is ending the call (SIT, machine policy): applied when the
    # carrier leg's end arrives, instead of what the end alone would mean.
    pending_term: Termination | None = None
    hangup_requested: bool = False  # by the API; no retry, no failover
    inbound: bool = False  # started by an INVITE from the agent platform
    inbound_worker: int | None = None  # that INVITE's worker: its carrier legs go there

    @property
    def idle(self) -> bool:
        """Nothing left to wait for: no attempt, no flow, no timer, no leg up."""
        return self.attempt is None and self.flow is None and not self.timers and not self.legs

    def end_attempt(self) -> None:
        """The attempt is over: its flow, timers, pending end and hang-up request go."""
        for handle in self.timers:
            handle.cancel()
        self.timers.clear()
        self.flow = None
        self.attempt = None
        self.pending_term = None
        self.hangup_requested = False

    def leg_worker(self, leg_id: str | None) -> int | None:
        leg = self.legs.get(leg_id or "")
        return leg.worker if leg else None


class CallRegistry:
    """Every live call, by callSid and by leg id. The only owner of LiveCall objects."""

    def __init__(self) -> None:
        self._calls: dict[str, LiveCall] = {}
        self._by_leg: dict[str, LiveCall] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def __iter__(self) -> Iterator[LiveCall]:
        return iter(list(self._calls.values()))

    def __contains__(self, call_sid: object) -> bool:
        return call_sid in self._calls

    def get(self, call_sid: str) -> LiveCall | None:
        return self._calls.get(call_sid)

    def open(self, call_sid: str) -> LiveCall:
        """The call's LiveCall, created if it has none."""
        live = self._calls.get(call_sid)
        if live is None:
            live = self._calls[call_sid] = LiveCall(call_sid)
        return live

    def of_leg(self, leg_id: str) -> LiveCall | None:
        return self._by_leg.get(leg_id)

    def call_sid_of(self, leg_id: str, default: str) -> str:
        live = self._by_leg.get(leg_id)
        return live.call_sid if live else default

    def role_of(self, leg_id: str) -> LegRole | None:
        live = self._by_leg.get(leg_id)
        leg = live.legs.get(leg_id) if live else None
        return leg.role if leg else None

    def add_leg(self, live: LiveCall, leg_id: str, role: LegRole, worker: int | None) -> None:
        live.legs[leg_id] = LiveLeg(leg_id, role, worker)
        self._by_leg[leg_id] = live
        if role == "carrier":
            live.carrier_leg = leg_id
        else:
            live.agent_leg = leg_id

    def end_leg(self, leg_id: str) -> None:
        """The leg is down: it is no longer found by its id, nor as its call's carrier
        or agent leg."""
        live = self._by_leg.pop(leg_id, None)
        if live is None:
            return
        live.legs.pop(leg_id, None)
        if live.carrier_leg == leg_id:
            live.carrier_leg = None
        if live.agent_leg == leg_id:
            live.agent_leg = None

    def settle(self, call_sid: str) -> None:
        """Drop the call if nothing about it is live any more."""
        live = self._calls.get(call_sid)
        if live is not None and live.idle:
            self.drop(call_sid)

    def drop(self, call_sid: str) -> None:
        """Forget the call: the one place a LiveCall ends."""
        live = self._calls.pop(call_sid, None)
        if live is None:
            return
        live.end_attempt()
        for leg_id in live.legs:
            if self._by_leg.get(leg_id) is live:
                del self._by_leg[leg_id]
        live.legs.clear()

    def carrier_legs_up(self) -> int:
        """Calls whose current attempt has a carrier leg up (what draining waits for)."""
        return sum(
            1
            for live in self._calls.values()
            if live.attempt is not None and live.attempt.leg_id is not None
        )


__all__ = ["Attempt", "CallRegistry", "LiveCall", "LiveLeg", "TriedLeg"]
