"""Wiring: config -> store, SIP worker pool, call service, HTTP API; run until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import uvicorn
from fastapi import FastAPI

from sipbridge.api import create_app
from sipbridge.config import Config
from sipbridge.service import CallService
from sipbridge.store import open_store

log = logging.getLogger("sipbridge")


def build(cfg: Config) -> tuple[FastAPI, CallService]:
    """Create the service and its ASGI app; the app's lifespan starts and stops the service."""
    from sipbridge.sip.pool import PoolFull, WorkerPool

    store = open_store(cfg.store.kind, cfg.store.path, cfg.store.retention_s)
    service: CallService
    pool = WorkerPool(cfg.sip, lambda ev: service.on_sip_event(ev))
    service = CallService(cfg, store, pool, pool_full_errors=(PoolFull,))
    app = create_app(service, [t.resolve() for t in cfg.api.tokens], on_shutdown=store.close)
    return app, service


async def serve(cfg: Config) -> None:
    app, _ = build(cfg)
    config = uvicorn.Config(app, host=cfg.api.listen_address, port=cfg.api.port,
                            log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    await server.serve()
