"""The node's CPU scheduling priority (``admission.process_nice``).

A SIP worker must run its 20 ms media tick on time and the supervisor must start dials
and answer the API on time, whatever else the machine runs. Admission control refuses new
work when the machine is busy, but it cannot protect the calls already up from a
CPU-hungry neighbour: on 2 cores, a burner at the default priority took every held call's
RTP past a 60 ms gap (bench/load --phases mixed). A lower nice value gives the node the
larger share of a contended core. Asterisk (``asterisk -p``) and FreeSWITCH (``-hp``/``-rp``)
raise their own priority for the same reason.

The supervisor sets its own nice value before it starts the SIP workers' fork server, so
every worker inherits it. Lowering nice below 0 needs CAP_SYS_NICE (root, or
``cap_add: [SYS_NICE]`` in a container, or ``LimitNICE=``/``Nice=`` in a systemd unit):
without it the node logs why and runs at its current priority; nothing else changes.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("sipbridge.priority")


def set_process_nice(nice: int | None) -> str | None:
    """Set this process's nice value to ``nice`` (None: leave it). Returns a warning line
    when the system refused it (also logged), else None."""
    if nice is None:
        return None
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current == nice:
        return None
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as e:  # PermissionError without CAP_SYS_NICE / RLIMIT_NICE
        msg = (
            f"admission.process_nice: cannot set nice {nice} ({e.strerror}; lowering it "
            f"needs CAP_SYS_NICE or RLIMIT_NICE): running at nice {current}"
        )
        log.warning(msg)
        return msg
    log.info("process nice %d -> %d (the SIP workers inherit it)", current, nice)
    return None


__all__ = ["set_process_nice"]
