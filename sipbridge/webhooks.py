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

Deliveries live in memory: bounded lanes (per call, so one call's statuses arrive in
order), the oldest dropped with a log line when a lane is full; undelivered callbacks
are lost when the process exits.
"""

from __future__ import annotations

import asyncio
import collections
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
from sipbridge.errors import TargetRefused
from sipbridge.netpolicy import address_problem, callback_url_problem
from sipbridge.records import CallEvent, CallRecord

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


def verify(secret: str | bytes, timestamp: str, body: bytes, signature: str,
           tolerance_s: float = 300.0, now: float | None = None) -> bool:
    """Receiver side: the signature matches and the timestamp is recent (replay guard)."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    if age > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port,
                                                         type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class PinnedTarget:
    url: httpx.URL
    host_header: str
    extensions: dict[str, Any]


@dataclass
class Delivery:
    url: str
    body: bytes
    call_sid: str
    status: str
    delivery_id: str


class WebhookDispatcher:
    """A ``CallService.listeners`` callback plus the tasks that POST the callbacks."""

    def __init__(
        self,
        cfg: WebhookConfig,
        render: Callable[[CallRecord], dict[str, Any]],
        on_result: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
        resolve: Resolver = system_resolve,
    ) -> None:
        self.cfg = cfg
        self.policy = cfg.policy()
        self.resolve = resolve
        self.render = render
        self.secret = cfg.secret.resolve() if cfg.secret is not None else None
        self.on_result = on_result or (lambda _r: None)
        self.clock = clock
        self._transport = transport
        per_lane = max(1, cfg.queue_size // LANES)
        self._lanes: list[collections.deque[Delivery]] = [
            collections.deque(maxlen=per_lane) for _ in range(LANES)]
        self._ready = [asyncio.Event() for _ in range(LANES)]
        self._busy = [False] * LANES
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self.dropped = 0

    # ---- the listener (runs on the service's loop; never blocks) ----------------------

    def on_event(self, rec: CallRecord, ev: CallEvent) -> None:
        if ev.kind != "status":
            return
        try:
            url = rec.request.status_callback or self.cfg.url
            if not url:
                return
            body = json.dumps(self.render(rec), separators=(",", ":")).encode()
            self.enqueue(Delivery(url=str(url), body=body, call_sid=rec.call_sid,
                                  status=rec.status, delivery_id=str(uuid.uuid4())))
        except Exception:
            log.exception("%s: cannot queue status callback", rec.call_sid,
                          extra={"call_sid": rec.call_sid})

    def enqueue(self, d: Delivery) -> None:
        lane = int(hashlib.blake2s(d.call_sid.encode(), digest_size=2).hexdigest(), 16) % LANES
        q = self._lanes[lane]
        if q.maxlen is not None and len(q) >= q.maxlen:
            old = q.popleft()
            self.dropped += 1
            self.on_result("dropped")
            log.warning("%s: status callback queue full: dropped the oldest (%s, status %s)",
                        old.call_sid, old.delivery_id, old.status,
                        extra={"call_sid": old.call_sid})
        q.append(d)
        self._ready[lane].set()

    def pending(self) -> int:
        return sum(len(q) for q in self._lanes) + sum(self._busy)

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self.cfg.timeout_s, transport=self._transport,
                                         follow_redirects=False, trust_env=False)
        self._tasks = [asyncio.create_task(self._lane(i), name=f"webhooks-{i}")
                       for i in range(LANES)]

    async def stop(self, flush_s: float = 5.0) -> None:
        """Give queued callbacks up to ``flush_s`` to go out, then stop."""
        deadline = time.monotonic() + flush_s
        while self._tasks and self.pending() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # bounded wait for in-flight deliveries
        if self.pending():
            log.warning("exiting with %d status callbacks undelivered", self.pending())
        await cancel_all(self._tasks)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ---- delivery ---------------------------------------------------------------------

    async def _lane(self, i: int) -> None:
        q, ready = self._lanes[i], self._ready[i]
        while True:
            if not q:
                ready.clear()
                await ready.wait()
                continue
            d = q.popleft()
            self._busy[i] = True
            try:
                await self.deliver(d)
            except Exception:
                log.exception("%s: status callback failed", d.call_sid,
                              extra={"call_sid": d.call_sid})
            finally:
                self._busy[i] = False

    def headers(self, d: Delivery, attempt: int) -> dict[str, str]:
        ts = str(int(self.clock()))
        h = {"Content-Type": "application/json", TIMESTAMP_HEADER: ts,
             "X-Sipbridge-Delivery": d.delivery_id, "X-Sipbridge-Attempt": str(attempt),
             "User-Agent": "sipbridge-webhooks/1"}
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
        return PinnedTarget(u.copy_with(host=addrs[0].split("%", 1)[0]),
                            u.netloc.decode("ascii"), ext)

    async def deliver(self, d: Delivery) -> bool:
        """POST with retries (exponential backoff from ``backoff_s``); True if a 2xx came.
        A target the policy refuses is not retried."""
        assert self._client is not None, "start() first"
        delay = self.cfg.backoff_s
        for attempt in range(1, self.cfg.max_attempts + 1):
            why: str
            try:
                target = await self.pin(d.url)
                r = await self._client.post(
                    target.url, content=d.body, extensions=target.extensions,
                    headers={**self.headers(d, attempt), "Host": target.host_header})
                if 200 <= r.status_code < 300:
                    self.on_result("delivered")
                    log.debug("%s: status callback %s delivered to %s (attempt %d)",
                              d.call_sid, d.status, d.url, attempt,
                              extra={"call_sid": d.call_sid})
                    return True
                why = f"HTTP {r.status_code}"
            except TargetRefused as e:
                self.on_result("refused")
                log.warning("%s: status callback %s to %s refused: %s", d.call_sid, d.status,
                            d.url, e, extra={"call_sid": d.call_sid})
                return False
            except (httpx.HTTPError, OSError) as e:
                why = f"{type(e).__name__}: {e}"
            if attempt == self.cfg.max_attempts:
                self.on_result("failed")
                log.warning("%s: status callback %s to %s failed after %d attempts (%s)",
                            d.call_sid, d.status, d.url, attempt, why,
                            extra={"call_sid": d.call_sid})
                return False
            self.on_result("retried")
            log.info("%s: status callback %s to %s: %s; retry in %.1f s", d.call_sid,
                     d.status, d.url, why, delay, extra={"call_sid": d.call_sid})
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
        return False


__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "Delivery", "PinnedTarget", "TargetRefused",
           "WebhookDispatcher", "sign", "system_resolve", "verify"]
