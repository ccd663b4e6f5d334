"""The agent's disposition (README "Dispositions from the agent"), applied to its call.

The worker reports the disposition headers of the BYE that ended an agent leg
(:class:`~sipbridge.ipc.ByeHeaders`, sent before that leg's ``ended`` event and so before
the end of the carrier leg it was bridged with). Here they are parsed
(:mod:`sipbridge.disposition`), recorded on the agent leg (status ``legs``, CDR, status
``agent_answered_by`` / ``disposition``), journalled as an ``agent.disposition`` event
(metrics), and mapped to the attempt's outcome (:func:`sipbridge.outcomes.from_disposition`)
as the call's pending termination: the carrier leg's end then finishes the attempt with
it (retry, failure, success) instead of "ended by agent". Hostile or unknown values are
logged and change nothing: the call ends as an agent hang-up always did.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from sipbridge.calls.context import CallContext
from sipbridge.disposition import REASON_HEADER, Disposition, parse_disposition, values_of
from sipbridge.ipc import ByeHeaders
from sipbridge.outcomes import from_disposition
from sipbridge.records import LegRecord

log = logging.getLogger("sipbridge.calls")


def _detail(d: Disposition) -> str:
    parts = [f"agent disposition {d.value}"]
    if d.cause:
        parts.append(f"Reason {d.cause}")
    if d.text:
        parts.append(d.text)
    return "; ".join(parts)


def on_bye_headers(ctx: CallContext, ev: ByeHeaders) -> None:
    live = ctx.registry.of_leg(ev.leg_id)
    sid = live.call_sid if live is not None else ev.call_sid
    rec = ctx.journal.store.get(sid, ctx.clock())
    if rec is None or rec.terminal:
        return
    policy = ctx.policies.of(rec).disposition
    parsed = parse_disposition(
        values_of(ev.headers, policy.header) if policy.enabled else [],
        values_of(ev.headers, REASON_HEADER) if policy.enabled and policy.reason_header else [],
    )
    extra = {"call_sid": sid}
    for problem in parsed.problems:
        log.warning("%s: agent leg %s BYE: %s", sid, ev.leg_id, problem, extra=extra)
    d = parsed.disposition
    if d is None:
        if parsed.problems:
            ctx.journal.event(
                rec,
                "agent.disposition",
                {"leg": ev.leg_id, "value": "invalid", "problems": list(parsed.problems[:4])},
            )
        return
    term = from_disposition(d.value, d.retry, _detail(d), policy.voicemail)
    leg = replace(rec.leg(ev.leg_id) or LegRecord(role="agent"), disposition=d.to_json())
    rec = ctx.journal.update_leg(rec, ev.leg_id, leg)
    data: dict[str, Any] = {"leg": ev.leg_id, **d.to_json(), "outcome": term.reason}
    if parsed.problems:
        data["problems"] = list(parsed.problems[:4])
    ctx.journal.event(rec, "agent.disposition", data)
    log.info(
        "%s: agent disposition %s -> %s %s",
        sid,
        d.value,
        term.result,
        term.reason,
        extra=extra,
    )
    if live is not None and live.flow is not None and live.pending_term is None:
        # The bridge's own reason to end the call (SIT, machine policy) stays first.
        live.pending_term = term


__all__ = ["on_bye_headers"]
