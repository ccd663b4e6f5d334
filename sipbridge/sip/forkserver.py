"""Starting SIP worker processes: a preloaded *forkserver* and the process entry point.

No pjsua2 import here: the worker module is imported by the fork server (preloaded) and
by each worker process, never by the supervisor.
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from sipbridge.sipconfig import SipConfig


def worker_context() -> Any:
    """The multiprocessing context that starts workers: *forkserver*, preloaded.

    A spawned worker starts a fresh interpreter and imports pjsua2, numpy, the DSP and
    (through ``__main__``) the supervisor's own modules: ~0.4 s of CPU and ~60 MB of
    private memory per worker, paid again for every worker an elastic pool adds under
    load. The fork server imports all of that once; each worker is a fork of it, started
    in milliseconds, sharing those pages copy-on-write. The server is a fresh interpreter
    too (no supervisor threads or event loop are forked), and pjsua2 is only imported
    there, never initialised: each worker creates its own Endpoint after the fork.
    OpenBLAS (under numpy) is kept to one thread: workers do small FFTs, never BLAS, and
    a fork server with no extra threads forks cleanly.
    """
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    ctx = multiprocessing.get_context("forkserver")
    # forkserver_init first: the server ignores SIGTERM/SIGINT from then on (a signal to
    # the whole process group must reach only the supervisor).
    ctx.set_forkserver_preload(
        [
            "sipbridge.sip.forkserver_init",
            "__main__",
            "sipbridge.sip.pool",
            "sipbridge.sip.process",
            "sipbridge.sip.promptpreload",  # the prompt library, once (media.prompt_dir)
        ]
    )
    return ctx


def start_worker_process(
    ctx: Any, cfg: SipConfig, worker_id: int, slots: int, sip_port: int
) -> tuple[BaseProcess, Connection]:
    """Start worker ``worker_id``'s process; return it and the supervisor's end of its
    pipe. ``slots``: how many workers the RTP port range is shared between."""
    parent, child = ctx.Pipe(duplex=True)
    cfg_dict = cfg.model_dump()
    # The worker takes slice ``worker_id % workers`` of the RTP range: hand each worker
    # its own slice (over max_workers, so the workers an elastic pool adds get theirs)
    # as a one-worker range.
    per = max(2, (cfg.rtp_port_max - cfg.rtp_port_min + 1) // slots)
    base = cfg.rtp_port_min + (worker_id % slots) * per
    cfg_dict.update(
        workers=1,
        min_workers=None,
        max_workers=None,
        spare_slots=None,
        rtp_port_min=base,
        rtp_port_max=min(base + per - 1, 65535),
    )
    proc = ctx.Process(
        target=worker_main,
        args=(worker_id, cfg_dict, child, sip_port),
        name=f"sipbridge-sip-{worker_id}",
        daemon=True,
    )
    proc.start()
    child.close()
    return proc, parent


def worker_main(
    worker_id: int, sip_cfg_dict: dict[str, Any], conn: Connection, sip_port: int
) -> None:
    """Process target: imports the pjsua2 worker only in the child process."""
    from sipbridge.sip.process import run_worker

    run_worker(worker_id, sip_cfg_dict, conn, sip_port)


__all__ = ["start_worker_process", "worker_context", "worker_main"]
