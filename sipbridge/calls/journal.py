"""The one writer of call records: status changes (logged ``old -> new``, with an event),
other field updates, and events with their listeners (CDRs, metrics, callbacks)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sipbridge.errors import InvalidTransition, StaleClaim
from sipbridge.records import (
    TERMINAL,
    CallEvent,
    CallRecord,
    CallStatus,
    LegRecord,
    OutboxMessage,
)
from sipbridge.store import CallStore

log = logging.getLogger("sipbridge.calls")

Listener = Callable[[CallRecord, CallEvent], None]


class Journal:
    def __init__(self, store: CallStore, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        # Listeners see every (record, event) pair; tests record whole histories.
        self.listeners: list[Listener] = []
        # Called with each status change before it is written: the status callbacks to
        # write with it (the webhook outbox, sipbridge.webhooks).
        self.outbox: list[Callable[[CallRecord, CallEvent], list[OutboxMessage]]] = []
        # Called with the callSid when a call reaches a terminal status.
        self.on_terminal: list[Callable[[str], None]] = []
        # Cluster mode: called with the callSid when a write about it was refused because
        # another node took the call over (StaleClaim): it is no longer this node's.
        self.on_fenced: list[Callable[[str], None]] = []
        # Cluster mode: records "the INVITE is about to go out" and says whether this node
        # may still send it (sipbridge.cluster). None: a single node always may.
        self.dial_guard: Callable[[CallRecord], bool] | None = None

    def may_dial(self, rec: CallRecord) -> bool:
        """Called right before an INVITE is sent for ``rec``'s attempt."""
        return self.dial_guard is None or self.dial_guard(rec)

    def _stale(self, rec: CallRecord, what: str, e: StaleClaim) -> None:
        """Cluster mode: another node took the call over; this write was dropped."""
        log.warning("%s: %s dropped: %s", rec.call_sid, what, e, extra={"call_sid": rec.call_sid})
        for hook in self.on_fenced:
            hook(rec.call_sid)

    def create(self, rec: CallRecord, data: dict[str, Any]) -> None:
        """Store a new call with its first ``status`` event and the callbacks reporting
        it, in one transaction; DuplicateCall if its callSid or key exists."""
        ev = CallEvent(self.clock(), "status", data)
        self.store.create(rec, ev, self._callbacks(rec, ev))
        self._notify(rec, ev)

    def _callbacks(self, rec: CallRecord, ev: CallEvent) -> list[OutboxMessage]:
        return [m for hook in self.outbox for m in hook(rec, ev)]

    def set_status(
        self,
        rec: CallRecord,
        new: CallStatus,
        reason: str,
        kind: str = "status",
        detail: str = "",
        **changes: Any,
    ) -> CallRecord:
        """The state setter: ``rec`` -> ``new`` with ``reason`` (and other fields)."""
        if rec.terminal:
            raise InvalidTransition(f"{rec.call_sid}: {rec.status} is terminal, not -> {new}")
        now = self.clock()
        updated = replace(
            rec, status=new, reason=reason, detail=detail, last_updated=now, **changes
        )
        if new in TERMINAL:
            updated = replace(updated, ended_at=now, not_before=None)
        data = {"from": rec.status, "to": new, "reason": reason, "why": kind}
        if detail:
            data["detail"] = detail
        ev = CallEvent(now, "status", data)
        # The record, its event and the callbacks reporting it: one transaction.
        try:
            self.store.save_status(updated, ev, self._callbacks(updated, ev))
        except StaleClaim as e:
            self._stale(rec, f"status {rec.status} -> {new}", e)
            return rec
        log.info(
            "%s: %s -> %s (%s)%s",
            rec.call_sid,
            rec.status,
            new,
            reason or "-",
            f" [{detail}]" if detail else "",
            extra={"call_sid": rec.call_sid},
        )
        self._notify(updated, ev)
        if new in TERMINAL:
            for hook in self.on_terminal:
                hook(rec.call_sid)
        return updated

    def update(self, rec: CallRecord, *, touch: bool = True, **changes: Any) -> CallRecord:
        """Save other fields of ``rec`` (never its status); ``touch`` sets last_updated."""
        if "status" in changes:
            raise ValueError("a status changes through set_status")
        if touch:
            changes["last_updated"] = self.clock()
        updated = replace(rec, **changes)
        try:
            self.store.save(updated)
        except StaleClaim as e:
            self._stale(rec, "update", e)
            return rec
        return updated

    def update_leg(
        self, rec: CallRecord, leg_id: str, leg: LegRecord, *, touch: bool = True, **changes: Any
    ) -> CallRecord:
        return self.update(rec, touch=touch, legs=rec.with_leg(leg_id, leg), **changes)

    def event(self, rec: CallRecord, kind: str, data: dict[str, Any]) -> None:
        ev = CallEvent(self.clock(), kind, data)
        try:
            self.store.add_event(rec.call_sid, ev)
        except StaleClaim as e:
            self._stale(rec, f"event {kind}", e)
            return
        self._notify(rec, ev)

    def _notify(self, rec: CallRecord, ev: CallEvent) -> None:
        for listener in self.listeners:
            listener(rec, ev)


__all__ = ["Journal", "Listener"]
