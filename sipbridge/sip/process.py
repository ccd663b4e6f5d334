"""A SIP worker process's entry point: signals, crash reports, start, loop, exit."""

from __future__ import annotations

import contextlib
import faulthandler
import sys
from multiprocessing.connection import Connection
from typing import Any

from sipbridge.sip.forkserver_init import ignore_stop_signals
from sipbridge.sip.worker import Worker
from sipbridge.sipconfig import SipConfig


def run_worker(
    worker_id: int, sip_cfg_dict: dict[str, Any], conn: Connection, sip_port: int = 0
) -> None:
    """Process entry point (``multiprocessing`` target, forked from the pool's fork server).

    ``sip_port`` asks for a specific SIP port (used when the supervisor restarts a worker so
    it keeps its port); 0 uses the config's range (or a free port for 0/0).
    """
    # The supervisor decides when we stop (Shutdown, or EOF on the pipe when it is
    # gone): a SIGTERM/SIGINT sent to the whole process group by a service manager is
    # the supervisor's cue to drain, not ours to hang up (see forkserver_init).
    ignore_stop_signals()
    # A crash in native code (pjsip, pjmedia, SWIG) prints every thread's Python stack to
    # stderr, which the supervisor's log keeps.
    faulthandler.enable(all_threads=True)
    cfg = SipConfig(**sip_cfg_dict)
    worker = Worker(worker_id, cfg, conn, sip_port)
    try:
        worker.start()
    except Exception as e:
        worker.log("error", f"SIP worker {worker_id} failed to start: {e}")
        with contextlib.suppress(Exception):
            worker.shutdown()
        conn.close()
        sys.exit(3)
    try:
        worker.run()
    finally:
        with contextlib.suppress(Exception):
            conn.close()


__all__ = ["run_worker"]
