"""sipbridge.priority: the node's nice value, and its config key."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sipbridge.admissionconfig import AdmissionConfig
from sipbridge.config import ConfigError, parse_config
from tests.unit.test_admission import BASE


def _in_child(code: str) -> str:
    """Run in a child process: a nice value set here would stick to the test process."""
    out = subprocess.run(
        [sys.executable, "-c", "from sipbridge.priority import set_process_nice\n" + code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


def test_sets_the_nice_value_of_the_process() -> None:
    now = os.getpriority(os.PRIO_PROCESS, 0)
    target = min(now + 2, 19)  # raising nice needs no privilege
    got = _in_child(
        f"import os\nw = set_process_nice({target})\nprint(w, os.getpriority(os.PRIO_PROCESS, 0))"
    )
    assert got == f"None {target}"


def test_none_leaves_it_alone() -> None:
    now = os.getpriority(os.PRIO_PROCESS, 0)
    got = _in_child("import os\nprint(set_process_nice(None), os.getpriority(os.PRIO_PROCESS, 0))")
    assert got == f"None {now}"


def test_refused_priority_is_a_warning_not_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    from sipbridge import priority

    def refuse(which: int, who: int, value: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(priority.os, "setpriority", refuse)
    now = os.getpriority(os.PRIO_PROCESS, 0)
    msg = priority.set_process_nice(now - 5)
    assert msg is not None
    assert "admission.process_nice" in msg and "CAP_SYS_NICE" in msg
    assert f"running at nice {now}" in msg
    assert os.getpriority(os.PRIO_PROCESS, 0) == now


def test_default_and_bounds() -> None:
    assert AdmissionConfig().process_nice == -5
    assert AdmissionConfig(process_nice=None).process_nice is None
    bad: object
    for bad in (-21, 20, "high", 1.5):
        with pytest.raises(ValueError, match="process_nice"):
            AdmissionConfig.model_validate({"process_nice": bad})


def test_config_error_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"admission\.process_nice"):
        parse_config({**BASE, "admission": {"process_nice": -40}})


def test_supervisor_nice_is_optional_and_bounded() -> None:
    assert AdmissionConfig().supervisor_nice == -15  # 10 below the workers' -5
    assert AdmissionConfig(process_nice=None).supervisor_nice is None  # no change at all
    assert AdmissionConfig(process_nice=None, supervisor_nice=-3).supervisor_nice == -3
    assert AdmissionConfig(supervisor_nice=-10).supervisor_nice == -10
    with pytest.raises(ValueError, match="supervisor_nice"):
        AdmissionConfig(supervisor_nice=20)


def test_a_refusal_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from sipbridge import priority

    def refuse(which: int, who: int, value: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(priority.os, "setpriority", refuse)
    now = os.getpriority(os.PRIO_PROCESS, 0)
    msg = priority.set_process_nice(now - 5, "admission.supervisor_nice")
    assert msg is not None and msg.startswith("admission.supervisor_nice: cannot set nice")


def test_a_session_leader_gives_its_cpu_group_the_value() -> None:
    """Under autogroup scheduling a nice value only ranks processes inside their session:
    a node that leads its session sets the group's value too (raising it needs no
    privilege, so the test raises it, in a child of its own session)."""
    from sipbridge.priority import AUTOGROUP

    if not AUTOGROUP.exists():
        pytest.skip("no autogroup scheduling on this kernel")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from sipbridge.priority import AUTOGROUP, set_session_nice\n"
            "print(set_session_nice(7), AUTOGROUP.read_text().split()[-1])",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        start_new_session=True,
    )
    assert out.stdout.split() == ["None", "7"]


def test_not_a_session_leader_leaves_the_group_alone(tmp_path) -> None:
    from sipbridge.priority import set_session_nice

    group = tmp_path / "autogroup"
    group.write_text("/autogroup-9 nice 0\n")
    assert os.getsid(0) != os.getpid()  # pytest runs inside someone's session
    assert set_session_nice(-5, autogroup=group) is None
    assert group.read_text() == "/autogroup-9 nice 0\n"


def test_session_group_refused_or_absent(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sipbridge import priority

    monkeypatch.setattr(priority.os, "getsid", lambda _pid: os.getpid())
    assert priority.set_session_nice(-5, autogroup=tmp_path / "none") is None  # no autogroups
    group = tmp_path / "autogroup"
    group.write_text("/autogroup-9 nice 0\n")
    assert priority.set_session_nice(-5, autogroup=group) is None
    assert group.read_text() == "-5\n"  # what the kernel's file takes

    def refuse(self, data: str) -> int:
        raise PermissionError(1, "Operation not permitted")

    group.write_text("/autogroup-9 nice 0\n")
    monkeypatch.setattr(priority.Path, "write_text", refuse)
    msg = priority.set_session_nice(-5, autogroup=group)
    assert msg is not None and "admission.process_nice" in msg and "another session" in msg
