"""The PostgreSQL store of a cluster node: the shared queries plus the queue across nodes.

* **Claims.** A node claims due queued calls with ``SELECT … FOR UPDATE SKIP LOCKED``: the
  claim writes its node id as ``owner_node`` and bumps the call's attempt ``epoch``. Two
  claimers never get the same row (the second skips the first one's locked rows).
* **Fencing.** Every write about a call this node holds a claim on carries the epoch of
  that claim (``WHERE epoch = held``); when another node took the call over (the epoch
  moved on) the write matches no row and raises :class:`StaleClaim`: nothing is written.
  Writes about calls the node holds no claim on (API hangup of a queued call, a late leg
  report) are optimistic: fenced by the epoch they read, and a status change bumps the
  epoch so a claimer's later writes are fenced out.
* **Dialling once.** :meth:`mark_dialing` records "the INVITE is about to go out" (fenced
  by the epoch, and only while this node's heartbeat lease is fresh by the DB clock); the
  dispatcher dials only when it returns True. A call taken over with ``dialing`` set is
  treated as in flight (ended as "bridge node lost"), never silently dialled again.
* **Wake-ups.** A newly queued or re-queued call sends ``NOTIFY`` on :data:`CHANNEL`.

Membership (the ``nodes`` table, heartbeats, takeovers) is in sipbridge.cluster.membership.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from sipbridge.cluster.identity import new_instance
from sipbridge.errors import StaleClaim
from sipbridge.pgstore import PostgresStore
from sipbridge.records import CallEvent, CallRecord
from sipbridge.sqlstore import COLS, Tx

CHANNEL = "sipbridge_queue"
_NOTIFY_EXPR = f"pg_notify('{CHANNEL}', '')"
_NOTIFY = f"SELECT {_NOTIFY_EXPR}"
# A claim's lease from now (DB clock); the parameter is the lease in seconds.
_LEASE = "now() + make_interval(secs => ?)"
# A node's lease is fresh while its heartbeat (DB clock) is younger than its lease_s.
FRESH = "last_seen > now() - make_interval(secs => lease_s)"
# The nodes row is this process's: our node id AND our instance token (parameters: node id,
# instance). Another process started with our node id after our lease ran out (we were
# paused) rewrote the token: from then on nothing of ours matches (heartbeat, claims, the
# "dialling" mark, hand-backs, leaving). A NULL token (a row an older build wrote) never
# matches: every join of this build writes its token (sipbridge.cluster.lease.beat_outcome).
MINE = "node_id=? AND instance=?"
_HELD_MAX = 20_000  # claims remembered (terminal calls' claims are forgotten oldest first)


class ClusterStore(PostgresStore):
    def __init__(
        self, dsn: str, node_id: str, lease_s: float, retention_s: float = 7200.0, **kw: Any
    ) -> None:
        super().__init__(dsn, retention_s, **kw)
        self.node_id = node_id
        self.lease_s = lease_s
        # this process's token in the nodes row (sipbridge.cluster.identity)
        self.instance = new_instance()
        # call_sid -> the epoch of this node's claim on it (after a release: the released
        # epoch, so late reports about the attempt are fenced once another node claims).
        self.held: OrderedDict[str, int] = OrderedDict()
        self.stale_writes = 0  # writes fenced out (logged by the journal)
        # The claims this node holds now (call_sid -> epoch), whose leases its heartbeat
        # renews; ``waiting``: those claimed from the queue and not dialled yet.
        self.claims: dict[str, int] = {}
        self.waiting: set[str] = set()

    def __repr__(self) -> str:  # never the DSN
        return f"ClusterStore({self.node_id})"

    def _hold(self, call_sid: str, epoch: int) -> None:
        self.held[call_sid] = epoch
        self.held.move_to_end(call_sid)
        while len(self.held) > _HELD_MAX:
            self.held.popitem(last=False)

    def fence_of(self, call_sid: str) -> int | None:
        """The epoch this node's writes about the call are fenced by (None: it never
        claimed the call; its writes are then fenced by the epoch they read)."""
        return self.held.get(call_sid)

    def _claimed(self, call_sid: str, epoch: int, waiting: bool = False) -> None:
        """This node holds a claim on the call (``waiting``: claimed, not dialled yet)."""
        self._hold(call_sid, epoch)
        self.claims[call_sid] = epoch
        if waiting:
            self.waiting.add(call_sid)

    def _unclaimed(self, call_sid: str) -> None:
        self.claims.pop(call_sid, None)
        self.waiting.discard(call_sid)

    # ---- fenced writes (overrides of the shared queries) ------------------------------

    def create(self, rec: CallRecord, event: CallEvent | None = None, outbox: Any = ()) -> None:
        if rec.owner_node != self.node_id:
            self._create_one(rec, event, outbox, tail=_NOTIFY_EXPR)
            return
        # Created claimed by this node (a SIP-triggered call it dials itself).
        self._create_one(
            rec,
            event,
            outbox,
            {"owner_node": "?", "epoch": "1", "claimed_at": "now()", "lease_until": _LEASE},
            (self.node_id, self.lease_s),
        )
        self._claimed(rec.call_sid, 1, waiting=True)

    def _write(self, rec: CallRecord, event: CallEvent | None, outbox: Any) -> None:
        """The record (with its event and callbacks), fenced by the epoch held."""
        held = self.held.get(rec.call_sid)
        sets = [f"{c}=?" for c in COLS[1:]]
        vals = list(self._values(rec)[1:])
        release = rec.status == "queued"
        if release:  # back in the queue: any node may claim it (the next claim's epoch)
            sets += ["owner_node=NULL", "dialing=false", "epoch=epoch+1", "lease_until=NULL"]
        elif held is None:  # not ours: a status change takes the call from its claimer
            sets.append("epoch=CASE WHEN status=? THEN epoch ELSE epoch+1 END")
            vals.append(rec.status)
        fence = held if held is not None else rec.epoch
        head = f"UPDATE calls SET {','.join(sets)} WHERE call_sid=? AND epoch=?"
        n = self._chain(
            head, (*vals, rec.call_sid, fence), event, outbox, _NOTIFY_EXPR if release else "1"
        )
        if n != 1:
            self.stale_writes += 1
            self._unclaimed(rec.call_sid)
            raise StaleClaim(
                f"call {rec.call_sid}: epoch {fence} is stale (another node owns the call)"
            )
        if release or rec.terminal:
            self._unclaimed(rec.call_sid)
        if release:
            # Late reports about the attempt just ended stay fenced: by the released
            # epoch, which the next claim (by any node) moves on.
            self._hold(rec.call_sid, fence + 1)

    def _add_event(self, tx: Tx, call_sid: str, event: CallEvent) -> None:
        held = self.held.get(call_sid)
        if held is None:
            super()._add_event(tx, call_sid, event)
            return
        n = tx.run(
            "INSERT INTO events (call_sid, ts, kind, data) SELECT ?,?,?,? "
            "WHERE EXISTS (SELECT 1 FROM calls WHERE call_sid=? AND epoch=?)",
            (call_sid, event.ts, event.kind, self._event_data(event), call_sid, held),
        )[1]
        if n != 1:
            self.stale_writes += 1
            raise StaleClaim(f"call {call_sid}: epoch {held} is stale (event {event.kind})")

    # ---- the queue -------------------------------------------------------------------

    def claim(self, limit: int, now: float | None = None) -> list[str]:
        """Claim up to ``limit`` due unclaimed queued calls (oldest first) for this node,
        only while its lease is fresh and it is not draining; their callSids."""
        return [r.call_sid for r in self.claim_records(limit, now)]

    def claim_records(self, limit: int, now: float | None = None) -> list[CallRecord]:
        """:meth:`claim`, returning the claimed records (no second read). Each claim
        gets its own lease (``lease_until``), renewed by :meth:`renew`."""
        if limit <= 0:
            return []
        now = time.time() if now is None else now
        cols = ",".join(f"calls.{c}" for c in COLS + self.EXTRA_COLS)
        rows = self._one(
            "WITH c AS (SELECT call_sid FROM calls WHERE status='queued' "
            "AND owner_node IS NULL AND (not_before IS NULL OR not_before <= ?) "
            f"AND EXISTS (SELECT 1 FROM nodes WHERE {MINE} AND NOT draining AND "
            f"{FRESH}) ORDER BY created_at LIMIT ? FOR UPDATE SKIP LOCKED) "
            "UPDATE calls SET owner_node=?, epoch=calls.epoch+1, claimed_at=now(), "
            f"lease_until={_LEASE}, dialing=false FROM c WHERE calls.call_sid=c.call_sid "
            f"RETURNING {cols}",
            (now, self.node_id, self.instance, limit, self.node_id, self.lease_s),
        )
        recs = sorted((self._row(r) for r in rows), key=lambda r: r.created_at)
        for r in recs:
            self._claimed(r.call_sid, r.epoch, waiting=True)
        return recs

    def claimed(self) -> list[CallRecord]:
        """This node's claimed queued calls (not dialled yet), oldest first; a claim the
        node no longer holds in memory (a restart) is not its to dial."""
        recs = self._select("status='queued' AND owner_node=? ORDER BY created_at", (self.node_id,))
        return [r for r in recs if self.held.get(r.call_sid) == r.epoch]

    def mark_dialing(self, call_sid: str) -> bool:
        """Record that the attempt's INVITE is about to go out. False (dial nothing) when
        this node no longer holds the call's epoch, or the claim's lease or the node's
        own lease has expired (DB clock)."""
        held = self.held.get(call_sid)
        if held is None:
            return False
        with self._auto() as tx:
            n = tx.run(
                "UPDATE calls SET dialing=true WHERE call_sid=? AND epoch=? AND owner_node=? "
                "AND status IN ('queued','calling') AND lease_until > now() "
                f"AND EXISTS (SELECT 1 FROM nodes WHERE {MINE} AND {FRESH})",
                (call_sid, held, self.node_id, self.node_id, self.instance),
            )[1]
        if n == 1:
            self.waiting.discard(call_sid)
        return n == 1

    def release_claims(self) -> list[str]:
        """Draining: hand this node's claimed, never dialled calls back to the queue
        (none while our row is gone or another process's: those are not ours to hand)."""
        with self._tx() as tx:
            rows = tx.run(
                "UPDATE calls SET owner_node=NULL, epoch=epoch+1, dialing=false, "
                "lease_until=NULL WHERE owner_node=? AND status='queued' AND NOT dialing "
                f"AND EXISTS (SELECT 1 FROM nodes WHERE {MINE}) RETURNING call_sid, epoch",
                (self.node_id, self.node_id, self.instance),
            )[0]
            if rows:
                tx.run(_NOTIFY)
        for sid, epoch in rows:
            self._unclaimed(sid)
            self._hold(sid, int(epoch))
        return [sid for sid, _ in rows]


__all__ = ["CHANNEL", "FRESH", "MINE", "ClusterStore"]
