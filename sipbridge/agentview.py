"""The agent's view of a call, read off its stored record: the disposition its BYE carried
(README "Dispositions from the agent") and who answered as the agent saw it. Shown in the
status body and the webhook (``agent_answered_by``, ``disposition``) and in the CDR. Pure."""

from __future__ import annotations

from typing import Any

from sipbridge.disposition import AGENT_ANSWERED_BY
from sipbridge.records import CallRecord


def attempt_disposition(rec: CallRecord, attempt: int) -> dict[str, Any] | None:
    """The disposition of attempt ``attempt``'s agent leg (``<callSid>/a<attempt>``)."""
    suffix = f"/a{attempt}"
    found = [
        leg
        for leg_id, leg in rec.legs.items()
        if leg.role == "agent" and leg.disposition and leg_id.endswith(suffix)
    ]
    return dict(found[-1].disposition or {}) if found else None


def agent_view(
    rec: CallRecord, attempt: int | None = None
) -> tuple[str | None, dict[str, Any] | None]:
    """(``agent_answered_by``, ``disposition``) of an attempt (default: the latest)."""
    d = attempt_disposition(rec, rec.attempts if attempt is None else attempt)
    return (AGENT_ANSWERED_BY.get(str(d.get("value"))) if d else None), d


__all__ = ["agent_view", "attempt_disposition"]
