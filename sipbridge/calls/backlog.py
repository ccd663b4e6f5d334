"""SIP events that arrive while the call store cannot be reached (PostgreSQL restarting
or failing over): held in arrival order and handled again once it answers, so that a
carrier's BYE during the outage still ends its call instead of being dropped (the call
would stay "calling" for ever). While events wait, newer ones queue behind them: a call's
events are never handled out of order."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from sipbridge.errors import StoreUnavailable

log = logging.getLogger("sipbridge.calls")

RETRY_S = 0.5
# Beyond this many waiting events the oldest is handled as if the store had failed for
# good (its call ends "internal error"), so memory stays bounded in a long outage.
MAX_EVENTS = 20_000


class EventBacklog:
    """``handle(ev, park)`` raises StoreUnavailable with ``park`` to leave ``ev`` waiting."""

    def __init__(
        self,
        handle: Callable[[Any, bool], None],
        retry_s: float = RETRY_S,
        max_events: int = MAX_EVENTS,
    ) -> None:
        self._handle = handle
        self.retry_s = retry_s
        self.max_events = max_events
        self._events: deque[Any] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._events)

    def submit(self, ev: Any) -> None:
        self._events.append(ev)
        while len(self._events) > self.max_events:
            log.error("store unreachable: %d SIP events waiting; handling the oldest", len(self))
            self._handle(self._events.popleft(), False)
        if len(self._events) == 1 and self._timer is None:
            self.drain()

    def drain(self) -> None:
        """Handle the waiting events in order until one finds the store unreachable."""
        self._timer = None
        while self._events:
            ev = self._events[0]
            try:
                self._handle(ev, True)
            except StoreUnavailable as e:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:  # no loop to wait on (a synchronous caller)
                    self._events.popleft()
                    self._handle(ev, False)
                    continue
                log.warning(
                    "%s; %d SIP event(s) wait for the store, retrying in %.1f s",
                    e,
                    len(self),
                    self.retry_s,
                )
                self._timer = loop.call_later(self.retry_s, self.drain)
                return
            except Exception:  # never let one event block the ones behind it
                log.exception("handling %s failed", type(ev).__name__)
            self._events.popleft()


__all__ = ["EventBacklog"]
