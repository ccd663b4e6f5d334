"""Stopping the bridge the way a service manager does: a signal to the whole process
group (systemd's default ``KillMode=control-group``), and a supervisor that dies.

The bridge runs in its own session, as under systemd, so the test can signal the group:
supervisor, fork server and SIP workers all receive the SIGTERM. Only the supervisor may
act on it (the documented drain); the others follow it over their pipes.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from sipbridge.devtools.bridge import Bridge, Stack, bridge_config
from sipbridge.devtools.sipp import SippUas

pytestmark = pytest.mark.integration

GRACE_S = 2.0


def _group(pgid: int) -> dict[int, str]:
    """Live (non-zombie) processes of a process group: pid -> /proc status text."""
    out: dict[int, str] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            status = Path(f"/proc/{d}/status").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            out[int(d)] = status
    return out


def _ignores(status: str, sig: int) -> bool:
    mask = next(int(ln.split()[1], 16) for ln in status.splitlines() if ln.startswith("SigIgn:"))
    return bool(mask >> (sig - 1) & 1)


def _wait_group_empty(pgid: int, timeout_s: float) -> dict[int, str]:
    deadline = time.monotonic() + timeout_s
    while (left := _group(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling other processes' exit, bounded
    return left


def _requests(uas: SippUas, method: str) -> list[Any]:
    return [
        m
        for m in uas.messages()
        if m.direction == "received" and m.is_request and m.method == method
    ]


def _rows(db_path: Path) -> dict[str, tuple[str, str, int]]:
    db = sqlite3.connect(db_path)
    try:
        return {
            sid: (st, reason, attempts)
            for sid, st, reason, attempts in db.execute(
                "SELECT call_sid, status, reason, attempts FROM calls"
            )
        }
    finally:
        db.close()


def _config(tmp_path: Path, answer: SippUas, ring: SippUas) -> dict[str, Any]:
    return bridge_config(
        tmp_path,
        trunks=[
            {"name": "answer", "address": answer.uri_hostport, "caller_id": "+14155550100"},
            {"name": "ring", "address": ring.uri_hostport, "caller_id": "+14155550100"},
        ],
        routes=[{"prefix": "+1212", "trunk": "answer"}, {"prefix": "+1313", "trunk": "ring"}],
        shutdown={"grace_s": GRACE_S},
    )


def _start_calls(bridge: Bridge) -> tuple[list[str], str]:
    answered = [bridge.trigger(to_number=f"+121255501{i:02d}") for i in range(2)]
    for sid in answered:
        bridge.wait_event(sid, "carrier.answered")
    ringing = bridge.trigger(to_number="+13135550100")
    bridge.wait_event(ringing, "carrier.ringing")
    return answered, ringing


def test_sigterm_to_the_process_group_drains_and_nothing_is_dialled_twice(
    tmp_path: Path, stack: Stack
) -> None:
    answer = stack.sipp("uas_answer_wait_bye.xml")  # never hangs up itself
    ring = stack.sipp("uas_ring_no_answer.xml")  # rings until CANCEL
    cfg = _config(tmp_path, answer, ring)
    bridge = stack.bridge(cfg, own_session=True)
    pgid = bridge.proc.pid
    answered, ringing = _start_calls(bridge)

    group = _group(pgid)
    others = {pid: st for pid, st in group.items() if pid != pgid}
    assert len(others) >= 3, group  # fork server and two workers (and resource tracker)
    for pid, st in others.items():  # only the supervisor acts on the signals
        assert _ignores(st, signal.SIGTERM) and _ignores(st, signal.SIGINT), (pid, st)
    assert not _ignores(group[pgid], signal.SIGTERM)

    t_sig = time.time()
    os.killpg(pgid, signal.SIGTERM)
    assert bridge.proc.wait(30) == 0
    t_exit = time.time()
    assert _wait_group_empty(pgid, 10) == {}  # no worker or fork server left behind

    # The documented drain: calls stay up for the grace time, then we hang up.
    byes = _requests(answer, "BYE")
    cancels = _requests(ring, "CANCEL")
    assert len(byes) == 2 and len(cancels) == 1, (byes, cancels)
    for m in [*byes, *cancels]:
        assert m.ts is not None and t_sig + GRACE_S - 0.05 <= m.ts <= t_exit, (m, m.ts - t_sig)
    rows = _rows(tmp_path / "calls.db")
    for sid in answered:
        assert rows[sid] == ("success", "ended by bridge shutdown", 1), rows[sid]
    assert rows[ringing][:2] == ("queued", "requeued: bridge shut down before answer")
    assert len(_requests(answer, "INVITE")) == 2

    # Restart on the same store: only the call that was never answered is dialled again.
    bridge2 = stack.bridge(cfg, own_session=True)
    bridge2.wait_status(
        ringing,
        lambda b: (
            b["attempts"] == 1 and any(e["kind"] == "carrier.ringing" for e in b["events"][-3:])
        ),
        timeout=20,
    )
    assert len(_requests(ring, "INVITE")) == 2
    for sid in answered:
        body = bridge2.status(sid)
        assert (body["status"], body["attempts"]) == ("success", 1), body
    assert len(_requests(answer, "INVITE")) == 2  # no answered call dialled again
    assert bridge2.stop() == 0


def test_supervisor_killed_workers_hang_up_and_exit(tmp_path: Path, stack: Stack) -> None:
    """SIGKILL to the supervisor alone (OOM killer, crash): its pipes close; every worker
    ends its legs with BYE/CANCEL and exits, and the fork server goes too."""
    answer = stack.sipp("uas_answer_wait_bye.xml")
    ring = stack.sipp("uas_ring_no_answer.xml")
    bridge = stack.bridge(_config(tmp_path, answer, ring), own_session=True)
    pgid = bridge.proc.pid
    _start_calls(bridge)

    t_kill = time.time()
    bridge.proc.kill()
    bridge.proc.wait(5)
    assert _wait_group_empty(pgid, 15) == {}
    byes = _requests(answer, "BYE")
    cancels = _requests(ring, "CANCEL")
    assert len(byes) == 2 and len(cancels) == 1, (byes, cancels)
    assert all(m.ts is not None and m.ts - t_kill < 5 for m in [*byes, *cancels])


def _ppid(status: str) -> int:
    return next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("PPid:"))


def test_fork_server_death_does_not_requeue_answered_calls(tmp_path: Path, stack: Stack) -> None:
    """The pool reads its workers' exit status through the fork server: once that is
    gone every live worker looks dead. A later stop must still wait for the workers' own
    reports, so answered calls end "ended by bridge shutdown", never requeued."""
    answer = stack.sipp("uas_answer_wait_bye.xml")
    ring = stack.sipp("uas_ring_no_answer.xml")
    cfg = _config(tmp_path, answer, ring)
    bridge = stack.bridge(cfg, own_session=True)
    answered, ringing = _start_calls(bridge)
    group = _group(bridge.proc.pid)
    parents = {_ppid(st) for st in group.values()}
    (fork_server,) = [pid for pid in parents if pid in group and pid != bridge.proc.pid]
    os.kill(fork_server, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while fork_server in _group(bridge.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling its exit, bounded
    assert fork_server not in _group(bridge.proc.pid)

    assert bridge.stop() == 0  # SIGTERM to the supervisor alone
    rows = _rows(tmp_path / "calls.db")
    for sid in answered:
        assert rows[sid] == ("success", "ended by bridge shutdown", 1), rows[sid]
    assert rows[ringing][:2] == ("queued", "requeued: bridge shut down before answer")
    assert len(_requests(answer, "BYE")) == 2
