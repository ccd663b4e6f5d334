"""Trigger->INVITE by stage, per call: the bridge's debug lines (sipbridge.dialstages,
"dial stages ... received_at=... invited_at=...") joined with the bench's send time and
SIPp's receive time. Three stages only the bench sees: ``client`` (the bench's API client
from its send call to the request's last byte in the socket: its own scheduling and
connection pool, on a machine it shares with the node), ``http`` (from there to the call
service taking the trigger: the supervisor reading the socket, HTTP parsing, auth,
validation) and ``wire`` (makeCall returned to SIPp's log of the INVITE: loopback UDP and
SIPp itself)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from loadkit.common import pct

ORDER = ("client", "http", "api", "queue", "place", "worker_wait", "invite", "wire")
_LINE = re.compile(
    r"(OUT-[0-9a-f-]+): dial stages (?P<st>(?:\w+=[0-9.]+ms ?)+) "
    r"received_at=(?P<rx>[0-9.]+) invited_at=(?P<inv>[0-9.]+)"
)
_STAGE = re.compile(r"(\w+)=([0-9.]+)ms")


def read_stages(log: Path, offset: int = 0) -> dict[str, dict[str, float]]:
    """call_sid -> {stage: ms, "received_at": wall s, "invited_at": wall s} from the
    bridge log, reading from byte ``offset``."""
    out: dict[str, dict[str, float]] = {}
    with open(log, "rb") as f:
        f.seek(offset)
        for raw in f:
            m = _LINE.search(raw.decode(errors="replace"))
            if not m:
                continue
            d = {k: float(v) for k, v in _STAGE.findall(m.group("st"))}
            d["received_at"], d["invited_at"] = float(m.group("rx")), float(m.group("inv"))
            out[m.group(1)] = d
    return out


def breakdown(
    sent: list[tuple[str, float, float]],
    invites: dict[str, float],
    stages: dict[str, dict[str, float]],
    on_wire: dict[str, float] | None = None,
) -> dict[str, Any]:
    """p50/p99/max per stage over accepted calls, and which stages make up the slowest
    1 % (mean ms of each stage over the calls at or above the end-to-end p99)."""
    rows: list[dict[str, float]] = []
    for sid, t_send, _ in sent:
        s = stages.get(sid)
        if s is None or sid not in invites:
            continue
        row = {k: s[k] for k in ORDER if k in s}
        t_wire = (on_wire or {}).get(sid)
        if t_wire is not None:
            row["client"] = max(0.0, 1000 * (t_wire - t_send))
        row["http"] = max(0.0, 1000 * (s["received_at"] - (t_wire or t_send)))
        row["wire"] = max(0.0, 1000 * (invites[sid] - s["invited_at"]))
        row["total"] = 1000 * (invites[sid] - t_send)
        rows.append(row)
    if not rows:
        return {"calls": 0}
    out: dict[str, Any] = {"calls": len(rows)}
    for k in (*ORDER, "total"):
        xs = [r[k] for r in rows if k in r]
        out[k] = [round(pct(xs, 50), 2), round(pct(xs, 99), 2), round(max(xs), 1)] if xs else None
    p99 = pct([r["total"] for r in rows], 99)
    tail = [r for r in rows if r["total"] >= p99]
    out["tail_mean_ms"] = {
        k: round(sum(r.get(k, 0.0) for r in tail) / len(tail), 1) for k in (*ORDER, "total")
    }
    return out


def fmt(b: dict[str, Any]) -> str:
    """One line: stage p50/p99 ms, then the slowest 1 %'s mean per stage."""
    if not b.get("calls"):
        return "no stage data"
    parts = [f"{k} {b[k][0]:.1f}/{b[k][1]:.1f}" for k in (*ORDER, "total") if b.get(k)]
    tail = " ".join(f"{k}={v}" for k, v in b["tail_mean_ms"].items())
    return f"n={b['calls']} p50/p99 ms: " + ", ".join(parts) + f" | tail mean: {tail}"


__all__ = ["ORDER", "breakdown", "fmt", "read_stages"]
