"""Who holds a ``cluster.node_id``: one process at a time.

Two processes started with the same node id (a copied config, or the default node id, the
host name, on two machines with the same name) would share one ``nodes`` row and its claims:
the second one's start-up recovery would end the first one's live calls as "bridge
restarted", and both would renew and dial the same claims. So each process writes an
instance token into the row it joins with, and a process finding the row held by another
token whose heartbeat is still fresh does not start until that lease ends.

A quick restart must not wait a lease: the token names the kernel boot and the process id,
so a predecessor on this host whose process is gone is recognised at once. Anything else
(another host, another container's pid namespace, a row from an older build without a
token) waits out one lease and two heartbeats; a holder still heartbeating after that is a
live node with the same id, and the new process refuses to start (NodeIdInUse).

No database and no asyncio here (only /proc and a signal-0 probe): the database reads
and the waiting are in sipbridge.cluster.node.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """This kernel boot's id (shared by the containers on one host); '' when unknown."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def new_instance(boot: str | None = None, pid: int | None = None) -> str:
    """An instance token: ``boot_id/pid/random``."""
    return (
        f"{boot_id() if boot is None else boot}/{os.getpid() if pid is None else pid}/"
        + (uuid.uuid4().hex[:12])
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def predecessor_gone(
    holder: str | None, ours: str, alive: Callable[[int], bool] = _pid_alive
) -> bool:
    """Whether ``holder`` (the token in a fresh row with our node id) is certainly a process
    that no longer runs: same boot as ``ours``, another pid than ours, and that pid is not
    alive. Same pid (another container's namespace, or this very process) or another boot
    (another host) cannot be told: False, so the caller waits a lease."""
    if holder == ours:
        return True  # our own row
    if not holder:
        return False  # a row from an older build: no token to judge by
    try:
        h_boot, h_pid, _ = holder.split("/", 2)
        o_boot, o_pid, _ = ours.split("/", 2)
        pid = int(h_pid)
    except ValueError:
        return False
    if not h_boot or h_boot != o_boot or h_pid == o_pid or pid <= 0:
        return False
    return not alive(pid)


__all__ = ["boot_id", "new_instance", "predecessor_gone"]
