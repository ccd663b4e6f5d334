"""A trigger becomes a queued call: routing, encryption, every header of every leg it can
reach and its calling window are checked now (a bad value is a 400, never sent), its
policy is resolved once, and the call is stored. Idempotent on ``idempotency_key``."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from sipbridge.calls.context import CallContext
from sipbridge.calls.policy import resolve_policy
from sipbridge.callsettings import DetectionSettings, IvrSettings, RetryConfig, WindowConfig
from sipbridge.errors import DuplicateCall, RoutingError
from sipbridge.records import CallRecord, CallRequest
from sipbridge.routing import check_trigger, effective_caller_id
from sipbridge.schedule import next_open

log = logging.getLogger("sipbridge.calls")


@dataclass(frozen=True)
class TriggerInput:
    """A validated trigger: numbers already E.164, metadata already checked."""

    to_number: str
    from_number: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    polyai_call_id: str | None = None
    encryption: str | None = None
    idempotency_key: str | None = None
    timezone: str | None = None
    calling_window: WindowConfig | None = None
    retry: RetryConfig | None = None
    detection: DetectionSettings | None = None
    status_callback: str | None = None
    ivr: IvrSettings | None = None


def new_call_sid() -> str:
    return f"OUT-{uuid.uuid4()}"


class Triggers:
    def __init__(
        self, ctx: CallContext, on_queued: Callable[[CallRecord, float | None, bool], None]
    ) -> None:
        self.ctx = ctx
        self.on_queued = on_queued  # the scheduler: dial it now or on its next pass

    def trigger(
        self,
        req: TriggerInput,
        start: bool = True,
        received: float | None = None,
        admitted: bool = False,
    ) -> CallRecord:
        """Store the call as queued (``start``: and hand it to the scheduler). Raises
        RoutingError / HeaderError naming the field. ``received``: time.monotonic() when
        the trigger came (its dial is then timed by stage, sipbridge.dialstages)."""
        ctx = self.ctx
        store = ctx.journal.store
        if req.idempotency_key:
            prior = store.find_by_idempotency_key(req.idempotency_key)
            if prior is not None:
                return prior
        call_sid = new_call_sid()
        request = CallRequest(
            metadata=req.metadata,
            encryption=req.encryption,
            from_number=req.from_number,
            timezone=req.timezone,
            calling_window=req.calling_window,
            retry=req.retry,
            detection=req.detection,
            ivr=req.ivr,
            status_callback=req.status_callback,
        )
        policy = resolve_policy(ctx.cfg, req.to_number, request)
        names = policy.trunks
        if not names:
            offered = sorted(
                {e for c in policy.route.candidates() for e in ctx.cfg.trunk(c[0]).encryptions()}
            )
            raise RoutingError(
                "encryption",
                f"{req.encryption} is not available on the "
                f"trunks for {req.to_number} (they offer {', '.join(offered)})",
            )
        first = ctx.cfg.trunk(names[0])
        # dry run of every leg (each trunk, the agent): refuses unsafe values before storing
        check_trigger(
            ctx.cfg,
            [ctx.cfg.trunk(n) for n in names],
            call_sid=call_sid,
            to_number=req.to_number,
            from_number=req.from_number,
            metadata=req.metadata,
            polyai_call_id=req.polyai_call_id,
            bridge_host=ctx.bridge_host,
            encryption=req.encryption,
        )
        now = ctx.clock()
        if policy.window is not None:
            if policy.window_problem:
                raise RoutingError(
                    "timezone",
                    f"the time zone of {req.to_number} is unknown: "
                    "give 'timezone' or set the route's timezone",
                )
            if next_open(policy.window, policy.zones, now) is None:
                raise RoutingError(
                    "calling_window",
                    "the calling window never opens in all of "
                    f"the number's time zones ({', '.join(policy.zones)}) "
                    "within 8 days; give 'timezone'",
                )
        rec = CallRecord(
            call_sid=call_sid,
            status="queued",
            to_number=req.to_number,
            from_number=effective_caller_id(first, req.from_number),
            created_at=now,
            last_updated=now,
            trunk=first.name,
            polyai_call_id=req.polyai_call_id,
            request=request,
            idempotency_key=req.idempotency_key,
            # Not started by the scheduler (a SIP-triggered call, dialled here at once):
            # in cluster mode it is created claimed by this node.
            owner_node=None if start else ctx.node_id,
        )
        try:
            ctx.journal.create(rec, {"from": None, "to": "queued", "reason": "", "why": "trigger"})
        except DuplicateCall:
            if req.idempotency_key:
                prior = store.find_by_idempotency_key(req.idempotency_key)
                if prior is not None:
                    return prior
            raise
        ctx.policies.keep(call_sid, policy)
        log.info(
            "%s: queued to %s via %s",
            call_sid,
            req.to_number,
            first.name,
            extra={"call_sid": call_sid},
        )
        if start:
            self.on_queued(rec, received, admitted)
        return rec


__all__ = ["TriggerInput", "Triggers", "new_call_sid"]
