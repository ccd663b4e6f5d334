"""Stage accounting of a first dial (sipbridge.dialstages): pure, times passed in."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipbridge.dialstages import POINTS, STAGES, DialStages, stage_seconds


def _run(stages: DialStages, sid: str, t: list[float]) -> dict[str, float] | None:
    stages.start(sid, t[0], t[1])
    stages.mark(sid, "picked", t[2])
    stages.mark(sid, "sent", t[3])
    return stages.finish(sid, t[4], t[5])


def test_each_stage_is_the_gap_between_its_points() -> None:
    seen: list[tuple[str, float]] = []
    stages = DialStages(observe=lambda name, s: seen.append((name, s)))
    out = _run(stages, "OUT-1", [10.0, 10.002, 10.010, 10.011, 10.031, 10.032])
    assert out == pytest.approx(
        {"api": 0.002, "queue": 0.008, "place": 0.001, "worker_wait": 0.020, "invite": 0.001}
    )
    assert dict(seen) == out
    assert len(stages) == 0  # finished calls are dropped


def test_only_the_first_time_of_a_point_counts() -> None:
    stages = DialStages()
    stages.start("OUT-1", 0.0, 1.0)
    stages.start("OUT-1", 5.0, 6.0)  # an idempotent repeat of the trigger
    stages.mark("OUT-1", "picked", 2.0)
    stages.mark("OUT-1", "picked", 3.0)  # a later pass (the first waited for a slot)
    stages.mark("OUT-1", "sent", 4.0)
    out = stages.finish("OUT-1", 4.0, 4.5)
    assert out is not None
    assert out["api"] == 1.0 and out["queue"] == 1.0 and out["place"] == 2.0


def test_unmeasured_legs_and_undialled_calls_give_nothing() -> None:
    seen: list[tuple[str, float]] = []
    stages = DialStages(observe=lambda name, s: seen.append((name, s)))
    assert stages.finish("OUT-agent-leg", 1.0, 2.0) is None  # never started
    stages.start("OUT-2", 0.0, 1.0)
    assert stages.finish("OUT-2", 1.0, 2.0) is None  # no Dial was sent for it
    stages.mark("OUT-unknown", "picked", 1.0)  # ignored, not created
    assert len(stages) == 0 and seen == []


def test_forget_and_bound() -> None:
    stages = DialStages(max_calls=3)
    for i in range(5):
        stages.start(f"OUT-{i}", float(i), float(i))
    assert len(stages) == 3
    stages.mark("OUT-0", "sent", 9.0)  # dropped as the oldest: ignored
    assert stages.finish("OUT-0", 9.0, 9.0) is None
    stages.forget("OUT-4")
    assert len(stages) == 2


def test_debug_line_carries_wall_times(caplog: pytest.LogCaptureFixture) -> None:
    stages = DialStages()
    with caplog.at_level(logging.DEBUG, logger="sipbridge.dialstages"):
        _run(stages, "OUT-9", [1.0, 1.001, 1.002, 1.003, 1.004, 1.005])
    (msg,) = [r.getMessage() for r in caplog.records]
    assert msg.startswith("OUT-9: dial stages api=1.00ms queue=1.00ms")
    assert "received_at=1.000000 invited_at=1.005000" in msg


@given(st.dictionaries(st.sampled_from(POINTS), st.floats(-1e6, 1e6)))
def test_stages_never_negative_and_only_when_both_points_known(pts: dict[str, float]) -> None:
    out = stage_seconds(pts)
    for name, (a, b) in STAGES.items():
        assert (name in out) == (a in pts and b in pts)
        if name in out:
            assert out[name] >= 0.0
