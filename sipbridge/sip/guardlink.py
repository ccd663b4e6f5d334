"""The worker's side of the packet guard (:mod:`sipbridge.sip.guard`) and the listen gate
(:mod:`sipbridge.sip.listengate`).

Every received request is checked before pjsip's transaction layer (rate per source,
malformed, hostile Via, unknown dialogs, out-of-dialog INVITEs from sources outside
``sip.inbound_allow`` answered 403 statelessly); inbound TCP connections are bounded. This
module installs both at start-up (fail closed: a worker that cannot be guarded does not
start), tells the guard which dialogs (Call-IDs) are live, and logs the drop counts.

Owns: the guard, the gate, and the Call-ID each leg registered with the guard.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sipbridge.rxpolicy import RxPolicy, SourceLimiter
from sipbridge.sip.guard import PacketGuard
from sipbridge.sip.leg import Leg
from sipbridge.sip.listengate import ListenGate
from sipbridge.sip.pjbind import pj_lib

if TYPE_CHECKING:
    from sipbridge.sip.worker import Worker

_REPORT_S = 10.0  # how often the packet guard's drop counts are logged


class GuardLink:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.guard: PacketGuard | None = None
        self.listen_gate: ListenGate | None = None  # bounds inbound TCP/TLS connections
        self.report_at = 0.0

    def install(self, ports: dict[str, int], handle_events: Callable[[int], None]) -> None:
        """Register the packet guard and check its view of pjsip's rx data (fail closed:
        a worker that cannot be guarded does not start)."""
        w = self.worker
        cfg = w.cfg
        policy = RxPolicy(
            inbound_allow=list(cfg.inbound_allow),
            limiter=SourceLimiter(cfg.source_rate_limit_per_s, cfg.source_rate_burst),
            dialog_limiter=SourceLimiter(cfg.source_rate_limit_per_s, cfg.source_rate_burst),
        )
        guard = PacketGuard(pj_lib(), policy, self._accepting, lambda level, msg: w.log(level, msg))
        guard.install()
        self.guard = guard
        port = ports.get("udp")
        addr = cfg.listen_address or "0.0.0.0"
        if addr in ("0.0.0.0", "::"):
            addr = "::1" if addr == "::" else "127.0.0.1"
        guard.calibrate((addr, port) if port else None, handle_events)
        gate = ListenGate(pj_lib(), lambda level, msg: w.log(level, msg))
        gate.install(ports.get("tcp"), ports.get("tls"))
        self.listen_gate = gate

    def _accepting(self) -> str | None:
        """None if a new inbound call could be taken now, else why not (packet guard)."""
        w = self.worker
        if w.stopping:
            return "stopping"
        if len(w.legs) >= w.capacity:
            return "full"
        return None

    def dialog_known(self, leg: Leg, call_id: str) -> None:
        """In-dialog requests with this Call-ID now reach pjsip (packet guard)."""
        if call_id and not leg.sip_call_id and self.guard is not None:
            leg.sip_call_id = call_id
            self.guard.policy.dialogs.add(call_id)

    def dialog_ended(self, leg: Leg) -> None:
        if leg.sip_call_id and self.guard is not None:
            self.guard.policy.dialogs.end(leg.sip_call_id)

    def pass_refusal(self, call_id: str) -> None:
        """A refused inbound INVITE: the ACK of the refusal reaches pjsip's transaction."""
        if self.guard is not None:
            self.guard.policy.dialogs.add(call_id)
            self.guard.policy.dialogs.end(call_id)

    def tick(self) -> None:
        if self.listen_gate is not None:
            self.listen_gate.tick()
        now = time.monotonic()
        if self.guard is None or now < self.report_at:
            return
        self.report_at = now + _REPORT_S
        gate = self.listen_gate.take_report() if self.listen_gate is not None else ""
        dropped = " ".join(x for x in (self.guard.report(), gate) if x)
        if dropped:
            self.worker.log("warning", f"SIP packet guard dropped or refused: {dropped}")


__all__ = ["GuardLink"]
