"""A bridge node in a cluster: wires the shared queue into the call service and runs the
node's background work on the supervisor's loop.

* The dispatcher's queued calls are this node's claims (claimed as SIP slots free up);
  every dial first records "dialing" through :meth:`ClusterStore.mark_dialing`.
* Heartbeat every ``heartbeat_s``: renew the lease (DB clock). A node that finds its own
  lease over (paused, cut off) hangs up what it still has up, drops its claims and takes
  its own calls over before joining again. Each beat also takes over the calls of nodes
  whose lease ended: undialled ones go back to the queue, in-flight ones end as
  "bridge node lost" (retried if the policy allows).
* LISTEN on the queue channel wakes the dispatcher when a call is queued anywhere; the
  dispatcher still polls at least once a second, since a notification is never replayed.
* Draining (SIGTERM): no more claims; claimed, undialled calls go back to the queue.
* Usurped: another process started with our node id while this one was paused past its
  lease (its recovery ended our calls). This process hangs up what it still has up,
  dials and writes nothing more, and asks the app to stop (NodeIdTaken, :attr:`on_fatal`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import psycopg

from sipbridge.aio import cancel_all
from sipbridge.calls import CallService
from sipbridge.calls.ending import RESTARTED
from sipbridge.cluster import membership
from sipbridge.cluster.identity import predecessor_gone
from sipbridge.cluster.lease import Member, claim_budget, expired
from sipbridge.cluster.store import CHANNEL, ClusterStore
from sipbridge.clusterconfig import ClusterConfig
from sipbridge.config import Config
from sipbridge.errors import NodeIdInUse, NodeIdTaken, StoreError
from sipbridge.outcomes import Termination, node_lost
from sipbridge.records import CallRecord

log = logging.getLogger("sipbridge.cluster")

CLAIM_BATCH = 8  # calls claimed per scheduling pass at most
SLOTS_PER_CALL = 2  # a carrier leg and the agent leg it is bridged to
LISTEN_RETRY_S = 1.0
QUEUE_POLL_S = 1.0  # the queue is looked at this often without a NOTIFY


class ClusterNode:
    def __init__(self, cfg: ClusterConfig, store: ClusterStore, service: CallService, dsn: str):
        self.cfg = cfg
        self.store = store
        self.service = service
        self._dsn = dsn
        self.draining = False
        self.lease_ok = False
        self.listening = False
        self.problem = ""
        self.view: list[Member] = []
        self.view_at = 0.0
        self.takeovers = 0
        self._connected_since: float | None = None  # monotonic: beating steadily since
        self._tasks: list[asyncio.Task[None]] = []
        self._queue_down = False
        self._queue_hint = True  # look at the queue on the next pass
        self._polled_at = float("-inf")
        # Set when another process took our node id: this process must stop, and calls
        # on_fatal (the app's clean shutdown, exiting non-zero) once.
        self.fatal: NodeIdTaken | None = None
        self.on_fatal: Callable[[], None] | None = None

    # ---- hooks into the call service ---------------------------------------------------

    def queued(self) -> list[CallRecord]:
        """The dispatcher's queued calls: ours, claiming more while slots are free. With
        the store down: none (nothing can be dialled without the "dialling" write).
        Reads only what may have changed: our waiting claims if we have any, and the
        queue when a NOTIFY said something was queued, a claim filled its batch, or
        the poll fallback is due (a NOTIFY is never replayed; calls fall due)."""
        store = self.store
        try:
            mine = store.claimed() if store.waiting else []
            if not self.draining and self.lease_ok and self._queue_worth_a_look():
                free = self.service.pool.free_slots()
                n = claim_budget(free, SLOTS_PER_CALL, len(mine), CLAIM_BATCH)
                if n:  # the claim returns its records: no second read
                    self._polled_at = time.monotonic()
                    got = store.claim_records(n)
                    self._queue_hint = len(got) == n  # a full batch: maybe more
                    mine = sorted(mine + got, key=lambda r: r.created_at) if got else mine
        except StoreError as e:
            if not self._queue_down:
                log.warning("cluster: cannot read the queue (%s); retrying", e)
            self._queue_down = True
            self._queue_hint = True
            return []
        self._queue_down = False
        return mine

    def _queue_worth_a_look(self) -> bool:
        return self._queue_hint or time.monotonic() - self._polled_at >= QUEUE_POLL_S

    def _queue_changed(self) -> None:
        """A NOTIFY (or a reconnect): the next pass looks at the queue."""
        self._queue_hint = True
        self.service.dispatcher.wake()

    def may_dial(self, rec: CallRecord) -> bool:
        return self.fatal is None and self.store.mark_dialing(rec.call_sid)

    async def claim_identity(self) -> None:
        """Start-up, before :meth:`recover` (which ends the calls of our node id's earlier
        process): wait until no other live process holds our node id. A predecessor on
        this host whose process is gone is passed at once; any other holder is waited out
        for one lease and two heartbeats, and one still heartbeating then is another live
        node with our id: refuse to start (sipbridge.cluster.identity)."""
        store, cfg = self.store, self.cfg
        waited_from = time.monotonic()
        wait_s = cfg.lease_s + 2 * cfg.heartbeat_s
        while True:
            held = membership.holder(store)
            if held is None or predecessor_gone(held[0], store.instance):
                return
            waited = time.monotonic() - waited_from
            if waited >= wait_s:
                raise NodeIdInUse(store.node_id, held[1], waited)
            log.warning(
                "cluster.node_id %r is held by another process (%s, heartbeat %.1f s ago): "
                "waiting up to %.0f s for its lease to end",
                store.node_id,
                held[0] or "an older build",
                held[1],
                wait_s - waited,
            )
            await asyncio.sleep(cfg.heartbeat_s)

    def recover(self) -> None:
        """Start-up: our calls from before a restart end ("bridge restarted", retried if
        the policy allows) or go back to the queue; then join."""
        t = membership.take_over(self.store, self.store.node_id, force=True)
        if t is not None:
            self._end(t, RESTARTED)
        membership.join(self.store)
        self.lease_ok = True
        self._connected_since = time.monotonic()
        self._refresh_view()

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._beat_loop(), name="cluster-heartbeat"))
        self._tasks.append(asyncio.create_task(self._listen_loop(), name="cluster-listen"))

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        with contextlib.suppress(Exception):
            if membership.leave(self.store):
                log.info("node %s left the cluster", self.store.node_id)

    def drain(self) -> None:
        self.draining = True
        if self.fatal is not None:
            return  # nothing here is ours to hand back (and every write is fenced)
        try:
            membership.heartbeat(self.store, draining=True)
            back = self.store.release_claims()
            log.info("draining: %d claimed call(s) handed back to the queue", len(back))
        except Exception as e:
            log.error(
                "draining: cannot hand claimed calls back (%s); they return when "
                "this node's lease ends",
                e,
            )

    # ---- heartbeat and takeover ------------------------------------------------------

    async def _beat_loop(self) -> None:
        while self.fatal is None:
            try:
                self.beat()
                self.problem = ""
            except Exception as e:
                self.problem = f"{type(e).__name__}: {e}"[:300]
                self._connected_since = None
                log.warning("cluster heartbeat failed: %s", self.problem)
            await asyncio.sleep(self.cfg.heartbeat_s)

    def beat(self) -> None:
        """One heartbeat: renew our lease and our claims' leases (one statement), take
        over lost nodes and expired claims, refresh the view."""
        store = self.store
        now = time.monotonic()
        beat, lost_claims = membership.heartbeat(store, self.draining, self.renewable())
        if beat == "lost" and not self._rejoin():
            beat = "usurped"  # another process joined with our node id meanwhile
        if beat == "usurped":
            self._usurped()
            return
        if beat == "lapsed":
            log.warning(
                "node %s: heartbeat late past the lease, nobody took over: renewed", store.node_id
            )
        if beat != "lost" and lost_claims:
            log.error(
                "node %s: %d claim(s) taken over by another node (claim lease expired): "
                "hanging up their legs here",
                store.node_id,
                len(lost_claims),
            )
            self._self_fence(lost_claims)
            for sid in lost_claims:
                store._unclaimed(sid)
        if beat != "ok" or self._connected_since is None:
            self._connected_since = now
        self.lease_ok = True
        # Judge others only after beating steadily for a whole lease ourselves: after a
        # database outage every node's heartbeat is old, and each must get the chance to
        # renew before anyone counts it lost.
        if now - self._connected_since >= self.cfg.lease_s:
            self._take_over_lost()
        self._refresh_view()

    def _let_go(self) -> None:
        """Our lease is gone: no more dialling; hang up every leg still up here and drop
        every claim (their calls may be another node's now)."""
        self.lease_ok = False
        self._self_fence()
        self.store.claims.clear()
        self.store.waiting.clear()

    def _rejoin(self) -> bool:
        """A "lost" beat (another node took us over): let go, then join again and end
        what is left of ours. False when another process holds our node id by now."""
        store = self.store
        log.error(
            "node %s: lease lost (no heartbeat for %.0f s, another node took over): "
            "hanging up what is still up here",
            store.node_id,
            self.cfg.lease_s,
        )
        self._let_go()
        t = membership.rejoin(store, self.draining)
        if t is None:
            return False
        self._end(t, node_lost(store.node_id))
        return True

    def _usurped(self) -> None:
        """Another process started with our node id while we were paused past the lease:
        its recovery ended our calls ("bridge restarted") and the row is its own. Let go
        of everything and stop for good: never take our own id over, never join again
        (the two would take turns ending each other's calls). The app then shuts down
        cleanly with a non-zero exit code; a restart meets the other process in
        :meth:`claim_identity` (it waits, or refuses with NodeIdInUse)."""
        self._let_go()
        holder = None
        with contextlib.suppress(Exception):  # for the message only
            holder = membership.holder_instance(self.store)
        self.fatal = NodeIdTaken(self.store.node_id, holder)
        log.error("%s", self.fatal)
        if self.on_fatal is not None:
            self.on_fatal()

    def renewable(self) -> dict[str, int]:
        """The claims whose leases this beat renews: those waiting to be dialled and
        those of calls this node has live. A claim on a call the node lost track of is
        not renewed: it expires and is taken over (ended as "bridge node lost")."""
        reg = self.service.registry
        return {
            sid: epoch
            for sid, epoch in self.store.claims.items()
            if sid in self.store.waiting or sid in reg
        }

    def _take_over_lost(self) -> None:
        store = self.store
        lost = set(expired(membership.members(store))) | set(membership.orphan_owners(store))
        for node_id in sorted(lost - {store.node_id}):
            t = membership.take_over(store, node_id)
            if t is not None:
                self.takeovers += 1
                self._end(t, node_lost(node_id))
        t = membership.take_over_expired_claims(store)
        if t is not None:
            self.takeovers += 1
            why = "its claim lease expired (not renewed by the node that held it)"
            self._end(t, replace(node_lost(""), detail=why))

    def _self_fence(self, calls: set[str] | None = None) -> None:
        """Our lease ended (or the claims on ``calls`` did): whatever we still hold may
        be another node's. Hang up every leg we have up (of those calls); what we write
        about them stays fenced by our old epochs."""
        pool = self.service.pool
        for live in self.service.registry:
            if calls is not None and live.call_sid not in calls:
                continue
            for leg_id in list(live.legs):
                with contextlib.suppress(Exception):
                    pool.hangup(leg_id)

    def _end(self, t: membership.Takeover, term: Termination) -> None:
        """End the adopted in-flight attempts of a takeover (the retry policy decides)."""
        endings = self.service.endings
        for sid in t.adopted:
            try:
                rec = self.store.get(sid)
                if rec is None or rec.terminal:
                    continue
                if sid in t.dialing_only:  # its INVITE may be out: that attempt counts
                    rec = replace(rec, attempts=rec.attempts + 1)
                endings.finish_attempt(rec, term, tried=[])
            except Exception as e:
                log.exception("%s: cannot end the call of a lost node", sid)
                endings.fail_call(sid, e)
        if t.requeued or t.adopted:
            self._queue_changed()

    def _refresh_view(self) -> None:
        self.view = membership.members(self.store)
        self.view_at = time.monotonic()

    # ---- wake-ups --------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True, connect_timeout=5, application_name="sipbridge"
                )
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening = True
                    self._queue_changed()  # anything queued while we were away
                    async for _ in conn.notifies():
                        self._queue_changed()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if self.listening:
                    log.warning("cluster: LISTEN connection lost (%s); polling meanwhile", e)
            self.listening = False
            await asyncio.sleep(LISTEN_RETRY_S)

    # ---- readiness -------------------------------------------------------------------

    def readiness(self) -> str:
        """ "ok" or why this node should take no traffic."""
        if self.fatal is not None:
            return str(self.fatal)
        if self.problem:
            return f"cluster heartbeat failing: {self.problem}"
        if not self.lease_ok:
            return "cluster lease not held"
        return "ok"

    def describe(self) -> dict[str, Any]:
        """This node's view of the cluster (for /readyz)."""
        return {
            "node_id": self.store.node_id,
            "lease_s": self.cfg.lease_s,
            "heartbeat_s": self.cfg.heartbeat_s,
            "lease_held": self.lease_ok,
            "draining": self.draining,
            "listening": self.listening,
            "view_age_s": round(time.monotonic() - self.view_at, 3),
            "members": [m.to_json() for m in self.view],
            "claims_held": len(self.store.claims),
            "stale_writes_dropped": self.store.stale_writes,
            "takeovers": self.takeovers,
            "limits": "per node" if self.cfg.redis is None else "cluster-wide (Redis)",
        }


def open_cluster_store(cfg: Config) -> tuple[ClusterStore, str]:
    """The cluster's store (the config requires store.backend postgresql) and its DSN."""
    assert cfg.cluster is not None and cfg.store.dsn is not None
    dsn = cfg.store.dsn.resolve()
    store = ClusterStore(dsn, cfg.cluster.node_id, cfg.cluster.lease_s, cfg.store.retention_s)
    return store, dsn


def attach(cfg: ClusterConfig, store: ClusterStore, service: CallService, dsn: str) -> ClusterNode:
    """Make ``service`` a member of the cluster ``store`` is the queue of."""
    node = ClusterNode(cfg, store, service, dsn)
    service.node = node
    service.dispatcher.queued = node.queued
    service.journal.dial_guard = node.may_dial
    service.triggers.ctx.node_id = store.node_id  # the context every part shares
    return node


__all__ = ["ClusterNode", "attach", "open_cluster_store"]
