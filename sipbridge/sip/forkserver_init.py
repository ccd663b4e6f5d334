"""Preloaded by the SIP workers' fork server only (see ``forkserver.worker_context``).

A service manager stops a service by signalling its whole process group (systemd's
default ``KillMode=control-group``; a terminal's Ctrl-C does the same with SIGINT). The
supervisor answers SIGTERM/SIGINT with the documented drain; the fork server and the
workers forked from it must not act on those signals at all: they follow the supervisor
over their pipes (a worker ends its legs and exits on ``Shutdown`` or when its pipe to
the supervisor closes). A fork server killed by the signal also broke the pool's view of
its workers (their exit status is read through the fork server).

Importing this module ignores SIGTERM and SIGINT, but only inside a fork server
process, so an accidental import elsewhere changes nothing. Workers inherit the
dispositions at fork, and :func:`sipbridge.sip.process.run_worker` sets them again.
"""

from __future__ import annotations

import signal
import sys


def in_fork_server() -> bool:
    """True in a ``multiprocessing`` fork server while it preloads modules: it runs as
    ``python -c 'from multiprocessing.forkserver import main; main(...)'``."""
    return sys.argv[:1] == ["-c"] and "multiprocessing.forkserver" in sys.modules


def ignore_stop_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


if in_fork_server():
    ignore_stop_signals()
