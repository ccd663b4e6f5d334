"""OPTIONS health checks of the trunks that ask for them (``health_check``).

Sent from the supervisor by a small asyncio client, not by a SIP worker: a probe must
not take one of a worker's few pjsua call slots or accounts, must go on while workers
restart or scale, and pjsua2 has no out-of-dialog request API. The carrier sees the
bridge's address (the same host as the workers, another source port: IP allow-lists
match it); UDP replies come back by ``;rport`` (RFC 3581). TCP/TLS trunks are probed
over a fresh connection (TLS verified as the trunk's ``tls`` settings say).

Behind an edge proxy (``edge:``) every probe goes, like the trunk's calls, over UDP to the
edge's inside port with ``X-Sipbridge-Trunk``: the edge sends it to the carrier on the
trunk's transport (TLS verified there) and relays the answer, or answers 408 itself when
the carrier is silent (README "Edge proxy"). The carrier sees the edge's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
from collections.abc import Callable

from sipbridge.config import Config, TrunkConfig
from sipbridge.edge.generate import TRUNK_HEADER
from sipbridge.optionsping import (
    ProbeCounter,
    answered_alive,
    options_request,
    reply_status,
    split_hostport,
)
from sipbridge.trunkselect import TrunkHealth

log = logging.getLogger("sipbridge.probe")


class _Replies(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future[int]] = {}

    def datagram_received(self, data: bytes, addr: object) -> None:
        for call_id, fut in list(self.waiting.items()):
            status = reply_status(data, call_id)
            if status is not None and not fut.done():
                fut.set_result(status)


class TrunkProber:
    """One probe loop per trunk with ``health_check``; flips :class:`TrunkHealth`."""

    def __init__(
        self, cfg: Config, health: TrunkHealth, on_change: Callable[[str, bool], None] | None = None
    ) -> None:
        self.cfg = cfg
        self.health = health
        self.on_change = on_change
        self.trunks = [t for t in cfg.trunks if t.health_check is not None]
        self.counters = {
            t.name: ProbeCounter(t.health_check.failures_to_down, t.health_check.successes_to_up)
            for t in self.trunks
            if t.health_check is not None
        }
        self.last_status: dict[str, int | None] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._replies = _Replies()

    def states(self) -> dict[str, bool]:
        """Trunk -> up (every trunk; one without health checks is always up)."""
        return {
            t.name: (self.counters[t.name].up if t.name in self.counters else True)
            for t in self.cfg.trunks
        }

    async def run(self, stopping: Callable[[], bool]) -> None:
        if not self.trunks:
            return
        loop = asyncio.get_running_loop()
        if self.cfg.edge is not None or any(t.transport == "udp" for t in self.trunks):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: self._replies, local_addr=(self.cfg.sip.listen_address, 0)
            )
            self._udp = transport
        try:
            await asyncio.gather(*(self._loop(t, stopping) for t in self.trunks))
        finally:
            if self._udp is not None:
                self._udp.close()

    async def _loop(self, trunk: TrunkConfig, stopping: Callable[[], bool]) -> None:
        hc = trunk.health_check
        assert hc is not None
        while not stopping():
            status: int | None = None
            try:
                status = await asyncio.wait_for(self.ping(trunk), hc.timeout_s)
            except (TimeoutError, OSError, ssl.SSLError, ValueError) as e:
                log.debug("OPTIONS to trunk %s: %r", trunk.name, e)
            except Exception:  # never let one trunk's probe end the loop
                log.exception("OPTIONS to trunk %s failed", trunk.name)
            self.record(trunk.name, status)
            await asyncio.sleep(hc.interval_s)  # the probe schedule

    def record(self, name: str, status: int | None) -> None:
        self.last_status[name] = status
        counter = self.counters[name]
        if counter.record(answered_alive(status)):
            self.health.set_down(name, not counter.up)
            log.warning(
                "trunk %s is %s (OPTIONS: %s)",
                name,
                "up" if counter.up else "DOWN",
                status or "no answer",
            )
            if self.on_change is not None:
                self.on_change(name, counter.up)

    async def ping(self, trunk: TrunkConfig) -> int:
        """Send one OPTIONS; the final status of the reply."""
        port0 = 5061 if trunk.transport == "tls" else 5060
        host, port = split_hostport(trunk.address, port0)
        call_id = secrets.token_hex(12) + "@sipbridge"
        args = dict(
            host=host,
            port=port,
            transport=trunk.transport,
            call_id=call_id,
            branch=secrets.token_hex(8),
            tag=secrets.token_hex(4),
            user_agent=self.cfg.sip.user_agent,
        )
        edge = self.cfg.edge
        if edge is not None:  # to the edge over UDP; the edge picks the trunk's transport
            args["transport"] = "udp"
            via_public = ""  # the edge's inside address reaches us; it hides ours
            dest = (edge.inside_address, edge.inside_port)
            extra: tuple[tuple[str, str], ...] = ((TRUNK_HEADER, trunk.name),)
            from_host = edge.public_address  # the carrier sees the edge only
        else:
            via_public, dest, extra = self.cfg.sip.public_address or "", (host, port), ()
            from_host = ""
        if edge is not None or trunk.transport == "udp":
            assert self._udp is not None
            via_host, via_port = self._udp.get_extra_info("sockname")[:2]
            req = options_request(
                via_host=via_public or via_host,
                via_port=via_port,
                extra_headers=extra,
                from_host=from_host,
                **args,  # type: ignore[arg-type]
            )
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._replies.waiting[call_id] = fut
            try:
                self._udp.sendto(req, dest)
                return await fut
            finally:
                self._replies.waiting.pop(call_id, None)
        ctx = None
        if trunk.transport == "tls":
            ctx = ssl.create_default_context(cafile=trunk.tls.ca_list() or None)
            if not trunk.tls.verify:
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ctx, server_hostname=host if ctx else None
        )
        try:
            via_host, via_port = writer.get_extra_info("sockname")[:2]
            writer.write(
                options_request(
                    via_host=self.cfg.sip.public_address or via_host,
                    via_port=via_port,
                    **args,  # type: ignore[arg-type]
                )
            )
            while True:  # replies until the final one (bounded by the caller's timeout)
                head = await reader.readuntil(b"\r\n\r\n")
                status = reply_status(head, call_id)
                if status is not None:
                    return status
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


__all__ = ["TrunkProber"]
