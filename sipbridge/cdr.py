"""Call detail records: one per attempt, written to the store when the attempt ends,
exported with ``sipbridge cdr --since ... --format csv|jsonl``.

An attempt ends when a call leaves ``calling`` (to ``success``, ``failure``, or back to
``queued`` for a retry). The CDR covers every carrier leg of the attempt (failover hops):
``trunk`` and the times are those of the last leg, ``trunks`` and ``sip_call_ids`` list all.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

from sipbridge.agentview import agent_view
from sipbridge.hints import call_hint
from sipbridge.records import CallEvent, CallRecord, LegRecord
from sipbridge.store import CallStore

log = logging.getLogger("sipbridge.cdr")

FIELDS = (
    "call_sid",
    "attempt",
    "polyai_call_id",
    "to_number",
    "from_number",
    "trunk",
    "trunks",
    "sip_call_ids",
    "invite_at",
    "ring_at",
    "answered_at",
    "ended_at",
    "pdd_ms",
    "duration_s",
    "sip_status",
    "result",
    "answered_by",
    "answered_by_hint",
    "agent_answered_by",
    "disposition",
    "reason",
    "cause",
    "detail",
)
_TIME_FIELDS = ("invite_at", "ring_at", "answered_at", "ended_at")


def _f(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) else None


def build_cdr(
    rec: CallRecord, attempt: int, result: str, reason: str, ended_at: float, detail: str = ""
) -> dict[str, Any]:
    """The CDR of attempt ``attempt`` of ``rec`` (``rec`` as of the attempt's end)."""
    legs = [leg for leg in rec.legs.values() if leg.role == "carrier" and leg.attempt == attempt]
    legs.sort(key=lambda leg: _f(leg.invite_at) or 0.0)
    last = legs[-1] if legs else LegRecord()
    invite_at = _f(last.invite_at)
    ring_at = _f(last.ring_at)
    answered_at = _f(last.answered_at)
    leg_end = _f(last.ended_at)
    end = leg_end if leg_end is not None else ended_at
    pdd_ms = round((ring_at - invite_at) * 1000) if ring_at and invite_at else None
    duration = round(max(0.0, end - answered_at), 3) if answered_at else 0.0
    agent_answered_by, disposition = agent_view(rec, attempt)
    return {
        "call_sid": rec.call_sid,
        "attempt": attempt,
        "polyai_call_id": rec.polyai_call_id,
        "to_number": rec.to_number,
        "from_number": rec.from_number,
        "trunk": last.trunk or rec.trunk or None,
        "trunks": [leg.trunk for leg in legs if leg.trunk],
        "sip_call_ids": [leg.sip_call_id for leg in legs if leg.sip_call_id],
        "invite_at": invite_at,
        "ring_at": ring_at,
        "answered_at": answered_at,
        "ended_at": end,
        "pdd_ms": pdd_ms,
        "duration_s": duration,
        "sip_status": last.sip_status if last.ended_at is not None else rec.sip_status,
        "result": result,
        "answered_by": rec.answered_by if answered_at else None,
        "answered_by_hint": call_hint(rec) if answered_at else None,
        "agent_answered_by": agent_answered_by,
        # the agent's verdict: its value only (the full record is in the call's legs)
        "disposition": disposition.get("value") if disposition else None,
        "reason": reason,
        "cause": last.cause,
        "detail": detail,
    }


class CdrWriter:
    """A ``CallService.listeners`` callback writing one CDR per finished attempt."""

    def __init__(self, store: CallStore, on_written: Callable[[], None] | None = None) -> None:
        self.store = store
        self.on_written = on_written or (lambda: None)
        # call_sid -> attempt number while calling (a shutdown requeue decrements
        # rec.attempts in the same status change that ends the attempt)
        self._attempt: dict[str, int] = {}

    def on_event(self, rec: CallRecord, ev: CallEvent) -> None:
        if ev.kind != "status":
            return
        try:
            if ev.data.get("to") == "calling":
                self._attempt[rec.call_sid] = rec.attempts
                return
            if ev.data.get("from") != "calling":
                return
            attempt = self._attempt.pop(rec.call_sid, rec.attempts)
            cdr = build_cdr(
                rec,
                attempt,
                str(ev.data.get("to")),
                str(ev.data.get("reason") or ""),
                ev.ts,
                str(ev.data.get("detail") or ""),
            )
            self.store.add_cdr(cdr)
            self.on_written()
        except Exception:  # a CDR problem never breaks call handling
            log.exception("%s: cannot write CDR", rec.call_sid, extra={"call_sid": rec.call_sid})


# ---- export --------------------------------------------------------------------------


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """ISO 8601 (``2024-05-01``, ``2024-05-01T10:00:00Z``, with offset) -> epoch seconds;
    a time without a zone is UTC."""
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 date/time: {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def for_export(cdr: dict[str, Any]) -> dict[str, Any]:
    """Times as ISO 8601 UTC strings, every field present."""
    out = {k: cdr.get(k) for k in FIELDS}
    for k in _TIME_FIELDS:
        out[k] = iso(_f(out[k]))
    return out


def write_jsonl(cdrs: Iterable[dict[str, Any]], out: TextIO) -> int:
    n = 0
    for c in cdrs:
        out.write(json.dumps(for_export(c), separators=(",", ":")) + "\n")
        n += 1
    return n


def write_csv(cdrs: Iterable[dict[str, Any]], out: TextIO) -> int:
    w = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    n = 0
    for c in cdrs:
        row = for_export(c)
        for k in ("trunks", "sip_call_ids"):
            row[k] = " ".join(str(x) for x in row[k] or [])
        w.writerow({k: "" if v is None else v for k, v in row.items()})
        n += 1
    return n


def export(cdrs: Iterable[dict[str, Any]], fmt: str) -> str:
    buf = io.StringIO()
    (write_csv if fmt == "csv" else write_jsonl)(cdrs, buf)
    return buf.getvalue()


__all__ = ["FIELDS", "CdrWriter", "build_cdr", "export", "parse_time", "write_csv", "write_jsonl"]
