"""How an attempt ends: its outcome goes to the attempt history, then the call is retried
(back to ``queued`` with a not-before time) or ends. Also the way out for a call whose
handling raised ("internal error"), and start-up recovery of calls cut by a restart."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from sipbridge.calls.context import CallContext
from sipbridge.calls.live import TriedLeg
from sipbridge.outcomes import Termination, internal_error
from sipbridge.records import AttemptRecord, CallRecord
from sipbridge.schedule import next_attempt_time

log = logging.getLogger("sipbridge.calls")

RESTARTED = Termination("failure", "bridge restarted", "bridge_error", True)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Endings:
    def __init__(self, ctx: CallContext, wake: Callable[[], None]) -> None:
        self.ctx = ctx
        self.wake = wake

    def finish_attempt(
        self,
        rec: CallRecord,
        term: Termination,
        tried: list[TriedLeg],
        no_retry: bool = False,
        inbound: bool = False,
    ) -> None:
        """Record the attempt's outcome, then retry or end the call. An inbound
        (SIP-triggered) call is never retried: the agent was on the line."""
        ctx = self.ctx
        now = ctx.clock()
        history = (
            *rec.attempt_history,
            AttemptRecord(
                attempt=rec.attempts,
                result=term.result,
                reason=term.reason,
                detail=term.detail,
                kind=term.kind,
                sip_status=term.sip_status,
                ended_at=iso(now),
                trunks=tuple(t.trunk for t in tried if t.trunk),
            ),
        )
        policy = ctx.policies.of(rec)
        retry = policy.retry
        # A "retry" machine (operator, screening) action asks for a retry whatever
        # retry_on lists (its Termination is retryable only then).
        wants_retry = retry.should_retry(term.kind, rec.attempts) or (
            (term.kind in ("machine", "operator", "screening") or term.retry_requested)
            and rec.attempts < retry.max_attempts
        )
        if (
            term.result == "failure"
            and not (no_retry or inbound)
            and term.retryable
            and wants_retry
        ):
            if policy.window_problem:
                raise ValueError(policy.window_problem)
            when = next_attempt_time(
                retry, rec.attempts, now, ctx.rng.random, policy.window, policy.zones
            )
            if when is not None:
                at = when.timestamp()
                ctx.journal.set_status(
                    rec,
                    "queued",
                    f"{term.reason}; attempt {rec.attempts + 1} of {retry.max_attempts} "
                    f"at {iso(at)}",
                    kind="retry",
                    detail=term.detail,
                    not_before=at,
                    attempt_history=history,
                    sip_status=term.sip_status,
                )
                self.wake()
                return
        ctx.journal.set_status(
            rec,
            term.result,
            term.reason,
            kind=term.kind,
            detail=term.detail,
            sip_status=term.sip_status,
            attempt_history=history,
        )

    def fail_call(self, call_sid: str, exc: BaseException) -> None:
        """End a call after an unexpected error: hang up every leg it has, end its
        attempt, and record ``failure`` "internal error". Never raises."""
        ctx = self.ctx
        try:
            live = ctx.registry.get(call_sid)
            if live is not None:
                for leg_id in list(live.legs):
                    with contextlib.suppress(Exception):
                        ctx.pool.hangup(leg_id)
                live.end_attempt()
            rec = ctx.journal.store.get(call_sid, ctx.clock())
            if rec is not None and not rec.terminal:
                term = internal_error(f"{type(exc).__name__}: {exc}"[:500])
                ctx.journal.set_status(
                    rec, term.result, term.reason, kind=term.kind, detail=term.detail
                )
            ctx.registry.settle(call_sid)
        except Exception:
            log.exception(
                "%s: cannot end the call after an internal error",
                call_sid,
                extra={"call_sid": call_sid},
            )

    def recover(self) -> None:
        """Calls that were in flight when the process died cannot be resumed: their SIP
        dialogs died with the worker processes. They end as 'bridge restarted' (and are
        retried if their policy allows). Queued calls stay queued."""
        for rec in self.ctx.journal.store.by_status("calling"):
            try:
                if rec.damaged:
                    raise ValueError(rec.damaged)
                self.finish_attempt(rec, RESTARTED, tried=[])
            except Exception as e:  # a poisoned record fails alone; start-up goes on
                log.exception(
                    "%s: cannot recover the call", rec.call_sid, extra={"call_sid": rec.call_sid}
                )
                self.fail_call(rec.call_sid, e)


__all__ = ["Endings", "iso"]
