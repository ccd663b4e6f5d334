"""Wiring: config -> store, SIP worker pool, call service, HTTP API; run until stopped."""

from __future__ import annotations

import asyncio
import gc
import logging
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from sipbridge.api import create_app
from sipbridge.calls import CallService
from sipbridge.calls.policy import prompt_folder, prompt_limits
from sipbridge.config import Config
from sipbridge.ops import Operations
from sipbridge.priority import set_process_nice, set_session_nice
from sipbridge.store import CallStore, open_store

log = logging.getLogger("sipbridge")

# The exit code of a node that stopped itself because another process took its
# cluster.node_id while it was paused (sipbridge.errors.NodeIdTaken). uvicorn exits
# with 3 when start-up fails (e.g. NodeIdInUse).
EXIT_NODE_ID_TAKEN = 4
# a start that failed (the store cannot be opened; uvicorn uses 3 for a failed lifespan too)
EXIT_START_FAILED = 3


def warn_unverified_tls(cfg: Config) -> list[str]:
    """Log (and return) a warning for every TLS leg whose peer certificate is not
    verified (``tls.verify: false``): anyone on the path can take those calls."""
    legs: list[tuple[str, str, str, bool]] = [
        (f"trunk {t.name}", t.address, t.transport, t.tls.verify) for t in cfg.trunks
    ]
    legs.append(("agent", cfg.agent.uri, cfg.agent.transport(), cfg.agent.tls.verify))
    out = []
    for name, where, transport, verify in legs:
        if transport == "tls" and not verify:
            out.append(
                f"{name}: TLS certificate verification is OFF (tls.verify: false): "
                f"anyone on the path to {where} can pose as it and take the calls"
            )
            log.warning("%s", out[-1])
    return out


def build(cfg: Config) -> tuple[FastAPI, CallService]:
    """Create the service and its ASGI app; the app's lifespan starts and stops the service."""
    from sipbridge.sip.pool import WorkerPool
    from sipbridge.sip.promptpreload import request_preload

    warn_unverified_tls(cfg)

    store: CallStore
    if cfg.cluster is not None:  # several nodes on one PostgreSQL (sipbridge.cluster)
        from sipbridge.cluster.node import attach, open_cluster_store

        cstore, dsn = open_cluster_store(cfg)
        store = cstore
    else:
        store = open_store(cfg.store)
    service: CallService
    # the workers' fork server loads the prompt library once (sipbridge.sip.promptpreload)
    request_preload(prompt_folder(cfg), prompt_limits(cfg))
    pool = WorkerPool(cfg.sip, lambda ev: service.on_sip_event(ev))
    service = CallService(cfg, store, pool)
    if cfg.cluster is not None:
        attach(cfg.cluster, cstore, service, dsn)
    app = create_app(service, [t.resolve() for t in cfg.api.tokens], on_shutdown=store.close)
    return app, service


class _Server(uvicorn.Server):
    """uvicorn, except that the first SIGTERM/SIGINT drains (see Operations.drain) before
    exiting; a second signal exits at once."""

    def __init__(self, config: uvicorn.Config, ops: Operations, grace_s: float) -> None:
        super().__init__(config)
        self.ops = ops
        self.grace_s = grace_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self.exit_code = 0

    def fail(self, code: int) -> None:
        """The process must not run on (called on the loop): shut down now, then exit
        with ``code``. The shutdown a drain ends in (the app's lifespan stops the call
        service and the SIP workers), without the drain's wait for live calls: the
        caller has hung up every call here already, and none is its to finish."""
        log.error("stopping now (exit code %d)", code)
        self.exit_code = code
        self.should_exit = True

    async def serve(self, sockets: list[Any] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        # Started: what exists now (modules, the app, config, ~100k objects) lives as
        # long as the process. A full collection scanned all of it every time, ~40 ms
        # of the loop's time while 150 analysed calls ran (a trigger arriving then
        # waited that long); frozen, a full collection scans only what came after.
        gc.freeze()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the signal handler: hand over to the loop. A signal is not re-raised
        # after shutdown (uvicorn's default), so a drained exit is exit code 0.
        if self._loop is not None and self._drain_task is None and not self.should_exit:
            self._loop.call_soon_threadsafe(self._start_drain, sig)
            return
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True

    def _start_drain(self, sig: int) -> None:
        if self._drain_task is not None:
            return
        log.info("signal %d: draining (grace %.0f s; send it again to exit now)", sig, self.grace_s)
        self._drain_task = asyncio.create_task(self._drain(), name="drain")

    async def _drain(self) -> None:
        try:
            await self.ops.drain(self.grace_s)
        except Exception:
            log.exception("drain failed")
        finally:
            self.should_exit = True


async def serve(cfg: Config) -> int:
    """Run until stopped; the process's exit code."""
    set_process_nice(cfg.admission.process_nice)  # before the SIP workers start: inherited
    set_session_nice(cfg.admission.process_nice)  # the session's CPU group, if it leads one
    app, service = build(cfg)
    config = uvicorn.Config(
        app,
        host=cfg.api.listen_address,
        port=cfg.api.port,
        log_level="warning",
        lifespan="on",
        log_config=None,
    )
    # uvicorn installs SIGINT/SIGTERM handlers (signal.signal) that call handle_exit.
    server = _Server(config, app.state.ops, cfg.shutdown.grace_s)
    if service.node is not None:
        service.node.on_fatal = lambda: server.fail(EXIT_NODE_ID_TAKEN)
    await server.serve()
    return server.exit_code
