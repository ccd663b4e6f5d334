"""Status callbacks: a signed POST for every status change of a call, retried with
exponential backoff, sent from background tasks so that call handling never waits.

Signature (documented in the README)::

    X-Sipbridge-Timestamp: <unix seconds>
    X-Sipbridge-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>

Targets: the URL is checked when the call is triggered (sipbridge.netpolicy), and at
every delivery attempt the host name is resolved, every address it resolves to is checked
against the same policy, and the request goes to the checked address (the URL's host
stays in ``Host`` and in TLS SNI/certificate checks), so DNS rebinding cannot redirect a
callback to an address the policy refuses. Environment proxies are not used.

Deliveries are durable: each callback is a row of the store's outbox, written in the
same transaction as the status it reports, and delivered at least once with the same
``X-Sipbridge-Delivery`` ID on every attempt, across restarts (the retry schedule is
in the row too). One call's callbacks go out in order; up to ``LANES`` calls at a time.
A callback is taken (leased) in the store for its POST, so nodes sharing a PostgreSQL
store send each one once, not once per node.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from sipbridge.aio import cancel_all
from sipbridge.config import WebhookConfig
from sipbridge.errors import StoreError, TargetRefused
from sipbridge.netpolicy import address_problem, callback_url_problem
from sipbridge.records import CallEvent, CallRecord, OutboxMessage
from sipbridge.store import CallStore

# (host, port) -> the IP addresses to try, in order.
Resolver = Callable[[str, int], Awaitable[list[str]]]

log = logging.getLogger("sipbridge.webhooks")

SIGNATURE_HEADER = "X-Sipbridge-Signature"
TIMESTAMP_HEADER = "X-Sipbridge-Timestamp"
MAX_BACKOFF_S = 60.0
LANES = 4


def sign(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Sipbridge-Signature`` value: ``v1=`` + hex HMAC-SHA256 of ``timestamp.body``."""
    key = secret.encode() if isinstance(secret, str) else secret
    mac = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(
    secret: str | bytes,
    timestamp: str,
    body: bytes,
    signature: str,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """Receiver side: the signature matches and the timestamp is recent (replay guard)."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    if age > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class PinnedTarget:
    url: httpx.URL
    host_header: str
    extensions: dict[str, Any]


# One status callback; the outbox row it is stored as (sipbridge.records).
Delivery = OutboxMessage


class WebhookDispatcher:
    """Writes each status change's callback into the store's outbox (``outbox_for``, a
    ``Journal.outbox`` hook: same transaction as the status) and delivers the outbox from
    one background task, up to ``LANES`` POSTs at a time, one call's callbacks in order."""

    def __init__(
        self,
        cfg: WebhookConfig,
        render: Callable[[CallRecord], dict[str, Any]],
        on_result: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
        resolve: Resolver = system_resolve,
        store: CallStore | None = None,
    ) -> None:
        self.cfg = cfg
        self.policy = cfg.policy()
        self.resolve = resolve
        self.render = render
        self.secret = cfg.secret.resolve() if cfg.secret is not None else None
        self.on_result = on_result or (lambda _r: None)
        self.clock = clock
        self.store = store
        self._transport = transport
        self._wake = asyncio.Event()
        self._inflight: dict[str, asyncio.Task[None]] = {}  # delivery ID -> its POST
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._client: httpx.AsyncClient | None = None

    # ---- the outbox hook and listener (on the service's loop; never block) ------------

    def outbox_for(self, rec: CallRecord, ev: CallEvent) -> list[OutboxMessage]:
        """The callback reporting this status change (none without a URL)."""
        try:
            url = rec.request.status_callback or self.cfg.url
            if not url:
                return []
            body = json.dumps(self.render(rec), separators=(",", ":")).encode()
            now = self.clock()
            return [
                OutboxMessage(
                    delivery_id=str(uuid.uuid4()),
                    call_sid=rec.call_sid,
                    status=rec.status,
                    url=str(url),
                    body=body,
                    created_at=now,
                    next_at=now,
                )
            ]
        except Exception:
            log.exception(
                "%s: cannot render the status callback",
                rec.call_sid,
                extra={"call_sid": rec.call_sid},
            )
            return []

    def on_event(self, rec: CallRecord, ev: CallEvent) -> None:
        if ev.kind == "status":
            self._wake.set()  # a callback may have been committed with it

    def pending(self) -> int:
        """Callbacks not delivered yet (in the outbox)."""
        return self.store.outbox_pending() if self.store is not None else 0

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=self.cfg.timeout_s,
            transport=self._transport,
            follow_redirects=False,
            trust_env=False,
        )
        self._stopping = False
        if self.store is not None:
            self._task = asyncio.create_task(self._run(), name="webhooks")

    async def stop(self, flush_s: float = 5.0) -> None:
        """Give due callbacks up to ``flush_s`` to go out, then stop. What is left stays
        in the outbox for the next start (with the same delivery IDs)."""
        deadline = time.monotonic() + flush_s
        while self._task is not None and time.monotonic() < deadline:
            try:
                if not self._inflight and not self._due(1):
                    break
            except StoreError:
                break
            self._wake.set()
            await asyncio.sleep(0.05)  # bounded wait for in-flight deliveries
        self._stopping = True
        await cancel_all([self._task] if self._task is not None else [])
        await cancel_all(list(self._inflight.values()))
        self._task = None
        try:
            left = self.pending()
        except StoreError:
            left = -1
        if left:
            log.warning(
                "stopping with %s status callbacks undelivered: they stay in the "
                "outbox and go out after the next start",
                left if left > 0 else "some",
            )
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ---- the outbox loop --------------------------------------------------------------

    def _due(self, limit: int) -> list[OutboxMessage]:
        assert self.store is not None
        return self.store.outbox_due(self.clock(), limit)

    def _claim(self, limit: int) -> list[OutboxMessage]:
        """Due callbacks taken for this process's POSTs; the lease outlasts a POST (its
        timeout) with room to write the outcome, after which another node may send it."""
        assert self.store is not None
        return self.store.outbox_claim(self.clock(), limit, 2 * self.cfg.timeout_s + 5.0)

    async def _run(self) -> None:
        assert self.store is not None
        while not self._stopping:
            wait_s = 1.0  # polling fallback: retries fall due without a wake-up
            started = 0
            try:
                self._wake.clear()
                free = LANES - len(self._inflight)
                # taken (leased) in the store: another node sharing it skips these
                for m in self._claim(free) if free > 0 else []:
                    task = asyncio.create_task(self._send(m), name="webhook-post")
                    self._inflight[m.delivery_id] = task
                    task.add_done_callback(functools.partial(self._done, m.delivery_id))
                    started += 1
                nxt = self.store.outbox_next_at()
                if nxt is not None:
                    wait_s = min(wait_s, nxt - self.clock())
            except StoreError as e:
                log.warning("status callbacks: store unavailable (%s); retrying", e)
            except Exception:
                log.exception("status callback loop failed; retrying")
            if not started:  # woken by a new status, a finished POST, or the next due time
                # (asyncio.wait, not wait_for: on 3.11 wait_for can swallow a cancel that
                # crosses the wake-up, and stop() would wait for this task forever)
                waiter = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({waiter}, timeout=max(wait_s, 0.05))
                finally:
                    waiter.cancel()

    def _done(self, delivery_id: str, _task: asyncio.Task[None]) -> None:
        self._inflight.pop(delivery_id, None)
        self._wake.set()

    async def _send(self, m: OutboxMessage) -> None:
        """One attempt, its outcome written back to the outbox."""
        assert self.store is not None
        try:
            result, why = await self.attempt(m, m.attempts + 1)
        except asyncio.CancelledError:  # stopping: give the claim back for the next start
            with contextlib.suppress(StoreError):
                self.store.outbox_retry(m.delivery_id, m.attempts, self.clock(), "interrupted")
            raise
        attempts = m.attempts + 1
        now = self.clock()
        try:
            if result == "retry" and attempts < self.cfg.max_attempts:
                delay = min(self.cfg.backoff_s * 2 ** (attempts - 1), MAX_BACKOFF_S)
                self.on_result("retried")
                log.info(
                    "%s: status callback %s to %s: %s; retry in %.1f s",
                    m.call_sid,
                    m.status,
                    m.url,
                    why,
                    delay,
                    extra={"call_sid": m.call_sid},
                )
                self.store.outbox_retry(m.delivery_id, attempts, now + delay, why)
                return
            if result == "retry":
                result = "failed"
                self.on_result("failed")
                log.warning(
                    "%s: status callback %s to %s failed after %d attempts (%s)",
                    m.call_sid,
                    m.status,
                    m.url,
                    attempts,
                    why,
                    extra={"call_sid": m.call_sid},
                )
            self.store.outbox_done(m.delivery_id, result, attempts, now, why)
        except StoreError as e:
            # Not recorded: the row stays due and is sent again (same delivery ID).
            log.warning(
                "%s: status callback %s: outcome not recorded (%s)",
                m.call_sid,
                m.delivery_id,
                e,
                extra={"call_sid": m.call_sid},
            )

    # ---- delivery ---------------------------------------------------------------------

    def headers(self, d: Delivery, attempt: int) -> dict[str, str]:
        ts = str(int(self.clock()))
        h = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: ts,
            "X-Sipbridge-Delivery": d.delivery_id,
            "X-Sipbridge-Attempt": str(attempt),
            "User-Agent": "sipbridge-webhooks/1",
        }
        if self.secret is not None:
            h[SIGNATURE_HEADER] = sign(self.secret, ts, d.body)
        return h

    async def pin(self, url: str) -> PinnedTarget:
        """Resolve the URL's host and check every address it resolves to; the URL to
        connect to (the first address), with ``Host`` and SNI kept for the name.
        Raises :class:`TargetRefused`, or ``OSError`` when the name does not resolve."""
        problem = callback_url_problem(url, self.policy)
        if problem:
            raise TargetRefused(problem)
        u = httpx.URL(url)
        port = u.port or (443 if u.scheme == "https" else 80)
        addrs = await self.resolve(u.host, port)
        if not addrs:
            raise OSError(f"{u.host} resolves to no address")
        for a in addrs:
            why = address_problem(ipaddress.ip_address(a), self.policy)
            if why:
                raise TargetRefused(f"{u.host} resolves to {why}")
        ext: dict[str, Any] = {"sni_hostname": u.host} if u.scheme == "https" else {}
        return PinnedTarget(
            u.copy_with(host=addrs[0].split("%", 1)[0]), u.netloc.decode("ascii"), ext
        )

    async def attempt(self, d: OutboxMessage, attempt: int) -> tuple[str, str]:
        """One POST: ("delivered", ""), ("refused", why) for a target the policy
        refuses (not retried), or ("retry", why)."""
        assert self._client is not None, "start() first"
        try:
            target = await self.pin(d.url)
            r = await self._client.post(
                target.url,
                content=d.body,
                extensions=target.extensions,
                headers={**self.headers(d, attempt), "Host": target.host_header},
            )
            if 200 <= r.status_code < 300:
                self.on_result("delivered")
                log.debug(
                    "%s: status callback %s delivered to %s (attempt %d)",
                    d.call_sid,
                    d.status,
                    d.url,
                    attempt,
                    extra={"call_sid": d.call_sid},
                )
                return "delivered", ""
            return "retry", f"HTTP {r.status_code}"
        except TargetRefused as e:
            self.on_result("refused")
            log.warning(
                "%s: status callback %s to %s refused: %s",
                d.call_sid,
                d.status,
                d.url,
                e,
                extra={"call_sid": d.call_sid},
            )
            return "refused", str(e)
        except (httpx.HTTPError, OSError) as e:
            return "retry", f"{type(e).__name__}: {e}"

    async def deliver(self, d: OutboxMessage) -> bool:
        """POST now with in-memory retries (exponential backoff from ``backoff_s``), outside
        the outbox; True if a 2xx came. A target the policy refuses is not retried."""
        delay = self.cfg.backoff_s
        for attempt in range(1, self.cfg.max_attempts + 1):
            result, _why = await self.attempt(d, attempt)
            if result != "retry":
                return result == "delivered"
            if attempt < self.cfg.max_attempts:
                self.on_result("retried")
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
        self.on_result("failed")
        return False


__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Delivery",
    "PinnedTarget",
    "TargetRefused",
    "WebhookDispatcher",
    "sign",
    "system_resolve",
    "verify",
]
