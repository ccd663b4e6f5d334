"""The ``nodes`` table: heartbeats (last_seen by the database clock ``now()``), the
members as seen from here, and takeover of a lost node's calls. Synchronous (called from
the node's loop like every store call); the decisions are in sipbridge.cluster.lease."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sipbridge.cluster.lease import Beat, Member, beat_outcome, takeover_action
from sipbridge.cluster.store import _LEASE, _NOTIFY, FRESH, MINE, ClusterStore
from sipbridge.sqlstore import Tx

log = logging.getLogger("sipbridge.cluster")


@dataclass
class Takeover:
    """What one takeover did: calls put back in the queue, and calls this node now holds
    that must end as "bridge node lost" (``dialing_only``: never reached ``calling``)."""

    node_id: str
    requeued: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    dialing_only: set[str] = field(default_factory=set)


_INSERT = "INSERT INTO nodes (node_id, lease_s, draining, instance) VALUES (?,?,?,?) "
# A node's unfinished calls, locked for a takeover (parameter: the node id).
_OWNED = (
    "SELECT call_sid, status, dialing FROM calls WHERE owner_node=? "
    "AND status IN ('queued','calling') ORDER BY created_at FOR UPDATE"
)


def join(store: ClusterStore, draining: bool = False) -> None:
    """Become a member at start-up, over any row with our node id (ClusterNode.claim_identity
    made sure its process is gone or its lease is over)."""
    store._one(
        _INSERT + "ON CONFLICT (node_id) DO UPDATE SET last_seen=now(), started_at=now(), "
        "lease_s=EXCLUDED.lease_s, draining=EXCLUDED.draining, instance=EXCLUDED.instance",
        (store.node_id, store.lease_s, draining, store.instance),
    )


def rejoin(store: ClusterStore, draining: bool = False) -> Takeover | None:
    """After a "lost" heartbeat (another node took us over and deleted our row): join
    again and take over what is still ours (force: our own calls), in one transaction.
    None, changing nothing, when a row with our node id exists again: another process
    joined with it meanwhile (usurped): its calls are not ours to end."""
    out = Takeover(store.node_id)
    with store._tx() as tx:
        joined = tx.run(
            _INSERT + "ON CONFLICT (node_id) DO NOTHING RETURNING 1",
            (store.node_id, store.lease_s, draining, store.instance),
        )[0]
        if not joined:
            return None
        rows = tx.run(_OWNED, (store.node_id,))[0]
        _take(store, tx, rows, out)
    _log(out)
    return out


def holder_instance(store: ClusterStore) -> str | None:
    """The instance token in the row with our node id (None: no row, or no token)."""
    rows = store._one("SELECT instance FROM nodes WHERE node_id=?", (store.node_id,))
    return rows[0][0] if rows else None


def holder(store: ClusterStore) -> tuple[str | None, float] | None:
    """Another process's fresh hold on our node id: (its instance token, seconds since its
    heartbeat); None when the id is free, stale, or ours."""
    rows = store._one(
        "SELECT instance, EXTRACT(EPOCH FROM now() - last_seen)::float8 FROM nodes "
        f"WHERE node_id=? AND {FRESH}",
        (store.node_id,),
    )
    if not rows or rows[0][0] == store.instance:
        return None
    return rows[0][0], float(rows[0][1])


def heartbeat(
    store: ClusterStore, draining: bool, renew: dict[str, int] | None = None
) -> tuple[Beat, set[str]]:
    """Renew our lease and the leases of the claims in ``renew`` (call_sid -> epoch), in
    one statement, only while the row is ours by its instance token (MINE): "ok";
    "lapsed" when our lease had expired but nobody took us over (a takeover deletes our
    row in the same transaction that re-epochs our calls); "lost" when we were taken over:
    everything this node held may belong to another node now; "usurped" when another
    process joined with our node id meanwhile (sipbridge.cluster.lease.beat_outcome):
    nothing is renewed, not even a claim. Also the claims of ``renew`` NOT renewed:
    another node took them over (their lease expired) or ended them; this node must let
    them go."""
    renew = renew or {}
    rows = store._one(
        f"WITH old AS (SELECT instance, {FRESH} AS fresh FROM nodes WHERE node_id=?), "
        f"n AS (UPDATE nodes SET last_seen=now(), draining=? WHERE {MINE} RETURNING 1), "
        f"r AS (UPDATE calls c SET lease_until={_LEASE} FROM unnest(?::text[], ?::bigint[]) "
        "AS h(sid, ep) WHERE c.call_sid=h.sid AND c.epoch=h.ep AND c.owner_node=? "
        "AND c.status IN ('queued','calling') AND EXISTS (SELECT 1 FROM n) "
        "RETURNING c.call_sid) "
        "SELECT (SELECT fresh FROM old), (SELECT count(*) FROM n), "
        "ARRAY(SELECT call_sid FROM r), EXISTS (SELECT 1 FROM old), "
        "(SELECT instance FROM old)",
        (
            store.node_id,
            draining,
            store.node_id,
            store.instance,
            store.lease_s,
            list(renew),
            list(renew.values()),
            store.node_id,
        ),
    )
    fresh, beat, renewed, found, holder = rows[0]
    lost = set(renew) - set(renewed or ())
    return beat_outcome(bool(beat), bool(fresh), bool(found), holder, store.instance), lost


def members(store: ClusterStore) -> list[Member]:
    rows = store._one(
        "SELECT node_id, EXTRACT(EPOCH FROM now()-last_seen), lease_s, draining, "
        "EXTRACT(EPOCH FROM now()-started_at) FROM nodes ORDER BY node_id"
    )
    return [Member(n, float(a), float(lease), bool(d), float(up)) for n, a, lease, d, up in rows]


def orphan_owners(store: ClusterStore) -> list[str]:
    """Nodes that own unfinished calls but have no row (left or taken over meanwhile)."""
    rows = store._one(
        "SELECT DISTINCT owner_node FROM calls WHERE owner_node IS NOT NULL AND "
        "status IN ('queued','calling') AND owner_node NOT IN (SELECT node_id FROM nodes)"
    )
    return [r[0] for r in rows]


def take_over(store: ClusterStore, node_id: str, force: bool = False) -> Takeover | None:
    """Take over the unfinished calls of ``node_id`` if its lease is over (``force``: our
    own calls from before a restart or a lost lease). None when the node is alive again.
    One transaction: the node's row goes, each of its calls is re-queued or adopted with
    a new epoch (which fences out every later write of the lost node)."""
    out = Takeover(node_id)
    with store._tx() as tx:
        if force:
            tx.run("DELETE FROM nodes WHERE node_id=?", (node_id,))
        else:
            tx.run(f"DELETE FROM nodes WHERE node_id=? AND NOT ({FRESH})", (node_id,))
            if tx.run("SELECT 1 FROM nodes WHERE node_id=?", (node_id,))[0]:
                return None
        rows = tx.run(_OWNED, (node_id,))[0]
        _take(store, tx, rows, out)
    _log(out)
    return out


def take_over_expired_claims(store: ClusterStore, limit: int = 200) -> Takeover | None:
    """Take over the calls whose claim lease expired (DB clock), whoever owns them: a
    node that is alive but stopped renewing a claim (it lost track of the call) loses
    it like a dead node. Rows another node is taking over meanwhile are skipped. None
    when no claim had expired."""
    out = Takeover("expired claims")
    with store._tx() as tx:
        rows = tx.run(
            "SELECT call_sid, status, dialing FROM calls WHERE lease_until < now() "
            "AND owner_node IS NOT NULL AND status IN ('queued','calling') "
            "ORDER BY created_at LIMIT ? FOR UPDATE SKIP LOCKED",
            (limit,),
        )[0]
        _take(store, tx, rows, out)
    _log(out)
    return out if rows else None


def _take(store: ClusterStore, tx: Tx, rows: list[tuple[Any, ...]], out: Takeover) -> None:
    """Re-queue or adopt each of ``rows`` (call_sid, status, dialing), in ``tx``."""
    for sid, status, dialing in rows:
        action = takeover_action(status, bool(dialing))
        if action == "requeue":
            tx.run(
                "UPDATE calls SET owner_node=NULL, epoch=epoch+1, dialing=false, "
                "lease_until=NULL WHERE call_sid=?",
                (sid,),
            )
            store._unclaimed(sid)
            out.requeued.append(sid)
        elif action == "end":
            got = tx.run(
                f"UPDATE calls SET owner_node=?, epoch=epoch+1, lease_until={_LEASE} "
                "WHERE call_sid=? RETURNING epoch",
                (store.node_id, store.lease_s, sid),
            )[0]
            store._claimed(sid, int(got[0][0]))
            out.adopted.append(sid)
            if status == "queued":
                out.dialing_only.add(sid)
    if out.requeued:
        tx.run(_NOTIFY)


def _log(out: Takeover) -> None:
    if out.requeued or out.adopted:
        log.warning(
            "took over %s: %d call(s) re-queued, %d in flight ending as node lost",
            out.node_id if out.node_id == "expired claims" else f"node {out.node_id}",
            len(out.requeued),
            len(out.adopted),
        )


def leave(store: ClusterStore) -> bool:
    """Leave the cluster at a clean stop: our row goes unless calls we own are still
    unfinished (then the others take them over when the lease ends). A row another
    process holds with our node id (we were usurped) is not ours to delete."""
    with store._tx() as tx:
        left = tx.run(
            "SELECT 1 FROM calls WHERE owner_node=? AND status IN ('queued','calling') LIMIT 1",
            (store.node_id,),
        )[0]
        if left:
            return False
        gone = tx.run(f"DELETE FROM nodes WHERE {MINE}", (store.node_id, store.instance))[1]
    return bool(gone)


__all__ = [
    "Takeover",
    "heartbeat",
    "holder_instance",
    "join",
    "leave",
    "members",
    "orphan_owners",
    "rejoin",
    "take_over",
    "take_over_expired_claims",
]
