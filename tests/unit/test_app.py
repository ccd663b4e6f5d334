"""sipbridge.app's uvicorn server: what it does once started."""

from __future__ import annotations

import asyncio
import gc

import uvicorn
from fastapi import FastAPI

from sipbridge.app import _Server


def test_objects_alive_at_start_are_frozen_out_of_full_collections() -> None:
    # Everything that exists once the node has started lives as long as the process:
    # a full collection must not scan it again and again (it held the event loop
    # ~40 ms at a time under load).
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    server = _Server(
        uvicorn.Config(FastAPI(), host="127.0.0.1", port=0, log_config=None),
        None,  # type: ignore[arg-type]  # no drain in this test
        1.0,
    )

    async def main() -> None:
        serving = asyncio.create_task(server.serve())
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while not server.started and not serving.done():
                assert asyncio.get_running_loop().time() < deadline, "server did not start"
                await asyncio.sleep(0.01)  # uvicorn has no start event: its flag, bounded
            assert gc.get_freeze_count() > 1000
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 10)

    try:
        asyncio.run(main())
    finally:
        gc.unfreeze()
