"""Pure cluster logic, no I/O: who is alive, what a takeover does with each call of a lost
node, and how many calls a node claims in one pass. Every age here is measured by the
database clock (``now() - last_seen``), never by a node's own clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TakeoverAction = Literal["requeue", "end", "keep"]
# A heartbeat's outcome (sipbridge.cluster.membership.heartbeat).
Beat = Literal["ok", "lapsed", "lost", "usurped"]


@dataclass(frozen=True)
class Member:
    """One row of the ``nodes`` table as the database saw it."""

    node_id: str
    age_s: float  # DB now() - last heartbeat
    lease_s: float
    draining: bool = False
    up_s: float = 0.0  # DB now() - started_at

    @property
    def alive(self) -> bool:
        return self.age_s < self.lease_s

    @property
    def lease_left_s(self) -> float:
        return max(0.0, self.lease_s - self.age_s)

    def to_json(self) -> dict[str, object]:
        return {
            "node_id": self.node_id,
            "alive": self.alive,
            "draining": self.draining,
            "last_seen_s": round(self.age_s, 3),
            "lease_s": self.lease_s,
            "lease_left_s": round(self.lease_left_s, 3),
            "up_s": round(self.up_s, 1),
        }


def takeover_action(status: str, dialing: bool) -> TakeoverAction:
    """What a surviving node does with a call the lost node owned.

    * queued and never marked dialling: nothing went out; back to the queue ("requeue").
    * calling, or queued with the INVITE possibly out (marked dialling before the send):
      the attempt may be live at the carrier and its dialog died with the node (or will be
      hung up when a paused node resumes): it ends as "bridge node lost" ("end"), and the
      retry policy decides about the next attempt. Never dialled again under this epoch.
    * terminal: nothing to do ("keep")."""
    if status == "queued":
        return "end" if dialing else "requeue"
    if status == "calling":
        return "end"
    return "keep"


def claim_budget(free_slots: int, slots_per_call: int, claimed_undialled: int, batch: int) -> int:
    """How many more calls to claim now: what the free SIP slots can dial, less the calls
    already claimed and waiting, at most ``batch`` per pass (so one node does not take
    the whole queue while others have room)."""
    can_dial = free_slots // max(1, slots_per_call)
    return max(0, min(batch, can_dial - claimed_undialled))


def beat_outcome(
    renewed: bool, was_fresh: bool, row_found: bool, holder: str | None, ours: str
) -> Beat:
    """What one heartbeat found, from its statement's answer: ``renewed`` (our row, ours
    by its instance token, was renewed), whether that row's lease was still fresh, and
    the row with our node id as it was before the beat (found or not, its token).

    * renewed: "ok", or "lapsed" when the lease had run out but nobody took us over;
    * no row: "lost" -- another node took us over (a takeover deletes the row);
    * a row holding another token: "usurped" -- another process started with our node id
      while we were paused past the lease, and its recovery ended our calls. A row with no
      token (NULL) was written by an older build: every join of this build writes its
      token, so a NULL row is never ours (and an older build's recovery deleted ours).
    * a row with our token that was still not renewed: it changed under the beat (a
      takeover deleting it, or a process joining over it): "lost"; the rejoin that follows
      tells the two apart (sipbridge.cluster.membership.rejoin)."""
    if renewed:
        return "ok" if was_fresh else "lapsed"
    if row_found and holder != ours:
        return "usurped"
    return "lost"


def expired(members: list[Member]) -> list[str]:
    """The nodes whose lease is over."""
    return [m.node_id for m in members if not m.alive]


__all__ = [
    "Beat",
    "Member",
    "TakeoverAction",
    "beat_outcome",
    "claim_budget",
    "expired",
    "takeover_action",
]
