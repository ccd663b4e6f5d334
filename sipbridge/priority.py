"""The node's CPU scheduling priority (``admission.process_nice``).

A SIP worker must run its 20 ms media tick on time and the supervisor must start dials
and answer the API on time, whatever else the machine runs. Admission control refuses new
work when the machine is busy, but it cannot protect the calls already up from a
CPU-hungry neighbour: on 2 cores, a burner at the default priority took every held call's
RTP past a 60 ms gap (bench/load --phases mixed). A lower nice value gives the node the
larger share of a contended core. Asterisk (``asterisk -p``) and FreeSWITCH (``-hp``/``-rp``)
raise their own priority for the same reason.

``admission.supervisor_nice`` (optional) sets the supervisor's own value once the
workers' fork server runs (the workers keep ``process_nice``): the supervisor uses
a few % of a core but every trigger and dial waits for it, so a lower value makes the
kernel run it first when it wakes, at little cost to the workers' share.

The supervisor sets its own nice value before it starts the SIP workers' fork server, so
every worker inherits it.

Linux with ``kernel.sched_autogroup_enabled`` (Debian's default) puts every session in a CPU
group of its own and shares a core between groups first: a nice value then ranks processes
only inside their session, and a busy neighbour in another session (another service, a
shell) gets the same share as the whole node, workers included. A node that leads its own
session (a service manager's ``setsid``, a container's init) therefore also gives its
session's group the same value (``/proc/self/autogroup``, :func:`set_session_nice`). A node
started inside somebody's shell session does not: that group is not the node's alone.

Lowering nice below 0 needs CAP_SYS_NICE (root, or ``cap_add: [SYS_NICE]`` in a container,
or ``LimitNICE=``/``Nice=`` in a systemd unit): without it the node logs why and runs at
its current priority; nothing else changes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("sipbridge.priority")


def set_process_nice(nice: int | None, key: str = "admission.process_nice") -> str | None:
    """Set this process's nice value to ``nice`` (None: leave it). Returns a warning line
    when the system refused it (also logged, naming the config ``key``), else None.
    On Linux the nice value is per thread: this sets the calling thread's (the event
    loop's), and threads it starts later inherit it."""
    if nice is None:
        return None
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current == nice:
        return None
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as e:  # PermissionError without CAP_SYS_NICE / RLIMIT_NICE
        msg = (
            f"{key}: cannot set nice {nice} ({e.strerror}; lowering it "
            f"needs CAP_SYS_NICE or RLIMIT_NICE): running at nice {current}"
        )
        log.warning(msg)
        return msg
    log.info("%s: nice %d -> %d", key, current, nice)
    return None


AUTOGROUP = Path("/proc/self/autogroup")


def set_session_nice(
    nice: int | None, key: str = "admission.process_nice", autogroup: Path = AUTOGROUP
) -> str | None:
    """Give this process's autogroup the nice value ``nice`` when the process leads its
    session and the kernel has autogroups; None when done or not applicable, else the
    warning line (also logged)."""
    if nice is None or os.getsid(0) != os.getpid():
        return None
    try:
        current = autogroup.read_text()  # "/autogroup-42 nice 0"
    except OSError:
        return None  # no autogroups here (or scheduling by cgroup): nothing to do
    if current.split()[-1:] == [str(nice)]:
        return None
    try:
        autogroup.write_text(f"{nice}\n")
    except OSError as e:
        msg = (
            f"{key}: cannot give this session's CPU group nice {nice} ({e.strerror}); "
            "a busy process in another session gets as much CPU as this whole node"
        )
        log.warning(msg)
        return msg
    log.info("%s: session CPU group (%s) -> nice %d", key, current.strip(), nice)
    return None


__all__ = ["AUTOGROUP", "set_process_nice", "set_session_nice"]
