"""The call manager's scheduling decisions with an injectable clock and the recording
pool double (tests/doubles.py): windows, retries, failover, limits, idempotency, queue
timeout, detection outcomes. Driven through CallService's public API (trigger,
dispatch_once, on_sip_event). The SIP side of the same paths runs against SIPp in
tests/integration."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.calls import QUEUE_TIMEOUT_REASON
from sipbridge.callsettings import DetectionSettings
from sipbridge.errors import RoutingError
from sipbridge.schedule import CallingWindow, is_open
from tests.doubles import MON_15_UTC, CallHarness
from tests.doubles import call_config as cfg


def make(tmp_path, config, t=MON_15_UTC, slots=8) -> CallHarness:
    return CallHarness(tmp_path, config, t=t, slots=slots)


def test_failover_on_503_to_next_priority_then_success(tmp_path):
    h = make(tmp_path, cfg())
    sid = h.trigger("+12125550123")
    h.svc.dispatch_once()
    assert [p.trunk for p in h.pool.plans] == ["a"]
    h.end(h.pool.plans[0], 503, retry_after_s=30)
    h.svc.dispatch_once()
    assert [p.trunk for p in h.pool.plans] == ["a", "b"]
    assert h.pool.plans[1].leg_id == f"{sid}/b1.2"
    h.connect(h.pool.plans[1])
    h.end(h.pool.plans[1], 200, "remote_bye", answered=True)
    rec, events = h.svc.get(sid)
    assert (rec.status, rec.attempts) == ("success", 1)
    assert [e.kind for e in events].count("failover") == 1
    assert rec.attempt_history[0].trunks == ("a", "b")
    # trunk a asked for 30 s of rest: the next call goes straight to b
    sid2 = h.trigger("+12125550124")
    h.svc.dispatch_once()
    assert h.pool.plans[-1].trunk == "b" and h.pool.plans[-1].call_sid == sid2
    h.clock.t += 31
    sid3 = h.trigger("+12125550125")
    h.svc.dispatch_once()
    assert h.pool.plans[-1].trunk == "a" and h.pool.plans[-1].call_sid == sid3


@pytest.mark.parametrize("status", [404, 486, 603])
def test_user_outcomes_stop_the_hunt(tmp_path, status):
    h = make(tmp_path, cfg())
    sid = h.trigger("+12125550123")
    h.svc.dispatch_once()
    h.end(h.pool.plans[0], status)
    h.svc.dispatch_once()
    assert len(h.pool.plans) == 1 and h.svc.get(sid)[0].status == "failure"


def test_busy_retried_with_backoff_until_success(tmp_path):
    config = cfg(
        retry={"max_attempts": 3, "base_s": 10, "factor": 2, "jitter": 0, "retry_on": ["busy"]}
    )
    h = make(tmp_path, config)
    sid = h.trigger("+12125550123")
    h.svc.dispatch_once()
    h.end(h.pool.plans[0], 486)
    rec = h.svc.get(sid)[0]
    assert rec.status == "queued" and rec.reason.startswith("busy; attempt 2 of 3 at")
    assert rec.not_before == pytest.approx(h.clock.t + 10)
    h.clock.t += 9.9
    h.svc.dispatch_once()
    assert len(h.pool.plans) == 1  # backoff not elapsed
    h.clock.t += 0.2
    h.svc.dispatch_once()
    assert len(h.pool.plans) == 2
    h.end(h.pool.plans[1], 486)
    assert h.svc.get(sid)[0].not_before == pytest.approx(h.clock.t + 20)
    h.clock.t += 20.1
    h.svc.dispatch_once()
    h.connect(h.pool.plans[2])
    h.end(h.pool.plans[2], 200, "remote_bye", answered=True)
    rec = h.svc.get(sid)[0]
    assert (rec.status, rec.attempts) == ("success", 3)
    assert [a.reason for a in rec.attempt_history] == ["busy", "busy", ""]
    assert [s for s, _ in h.statuses(sid)] == [
        "queued",
        "calling",
        "queued",
        "calling",
        "queued",
        "calling",
        "success",
    ]


def test_retries_stop_at_max_attempts(tmp_path):
    h = make(tmp_path, cfg(retry={"max_attempts": 2, "base_s": 1, "jitter": 0}))
    sid = h.trigger("+12125550123")
    for _ in range(2):
        h.svc.dispatch_once()
        h.end(h.pool.plans[-1], 480)
        h.clock.t += 5
    h.svc.dispatch_once()
    rec = h.svc.get(sid)[0]
    assert (rec.status, rec.reason, rec.attempts) == ("failure", "no answer", 2)
    assert len(h.pool.plans) == 2


def test_outside_window_stays_queued_with_reason_then_dials(tmp_path):
    config = cfg(
        routes=[
            {"prefix": "+1", "trunk": "a", "window": {"days": "mon-fri", "hours": "09:00-17:00"}}
        ]
    )
    # 03:00 New York time on Monday
    h = make(tmp_path, config, t=datetime(2026, 11, 23, 8, 0, tzinfo=UTC).timestamp())
    sid = h.trigger("+12125550123")
    h.svc.dispatch_once()
    rec = h.svc.get(sid)[0]
    assert h.pool.plans == [] and rec.status == "queued"
    assert rec.reason == "outside calling window; will be attempted at 2026-11-23T14:00:00Z"
    h.clock.t = datetime(2026, 11, 23, 14, 0, 1, tzinfo=UTC).timestamp()
    h.svc.dispatch_once()
    assert len(h.pool.plans) == 1


def test_several_zones_need_all_open(tmp_path):
    config = cfg(
        routes=[
            {"prefix": "+1", "trunk": "a", "window": {"days": "mon-sun", "hours": "09:00-17:00"}}
        ]
    )
    # 14:30 UTC = 09:30 New York but 06:30 Los Angeles: a per-call zone list decides
    h = make(tmp_path, config, t=datetime(2026, 11, 23, 14, 30, tzinfo=UTC).timestamp())
    ny = h.trigger("+12125550123")
    la = h.trigger("+12125550124", timezone="America/Los_Angeles")
    h.svc.dispatch_once()
    assert [p.call_sid for p in h.pool.plans] == [ny]
    assert "17:00:00Z" in h.svc.get(la)[0].reason  # 09:00 in Los Angeles


def test_toll_free_needs_timezone(tmp_path):
    config = cfg(
        routes=[
            {"prefix": "+1", "trunk": "a", "window": {"days": "mon-fri", "hours": "09:00-17:00"}}
        ]
    )
    h = make(tmp_path, config)
    with pytest.raises(RoutingError) as ei:
        h.trigger("+18005550199")
    assert ei.value.field == "calling_window"
    assert h.trigger("+18005550199", timezone="America/Chicago")


def test_queue_timeout(tmp_path):
    h = make(tmp_path, cfg(scheduler={"max_queue_time_s": 60}), slots=0)
    sid = h.trigger("+12125550123")
    h.svc.dispatch_once()
    h.clock.t += 61
    h.svc.dispatch_once()
    assert h.svc.get(sid)[0].reason == QUEUE_TIMEOUT_REASON


def test_idempotency_key_returns_same_call(tmp_path):
    h = make(tmp_path, cfg())
    a = h.trigger("+12125550123", idempotency_key="k1")
    b = h.trigger("+12125550123", idempotency_key="k1")
    c = h.trigger("+12125550123", idempotency_key="k2")
    h.svc.dispatch_once()
    assert a == b != c
    assert sorted(p.call_sid for p in h.pool.plans) == sorted([a, c])


def test_idempotency_key_stored_by_another_node_meanwhile_returns_its_call(tmp_path):
    """The race behind "unique across the cluster": another node stores the key between
    this node's look-up and its insert; the unique index refuses the insert and the
    trigger answers with the other node's call (one call, no error)."""
    h = make(tmp_path, cfg())
    look_up = h.store.find_by_idempotency_key
    other: list[str] = []
    raced: list[str] = []

    def racing(key: str):
        if not raced:
            raced.append(key)
            other.append(h.trigger("+12125550123", idempotency_key=key))  # the other node
            return None  # what this node's look-up saw just before
        return look_up(key)

    h.store.find_by_idempotency_key = racing  # type: ignore[method-assign]
    assert h.trigger("+12125550123", idempotency_key="k1") == other[0]
    h.svc.dispatch_once()
    assert [p.call_sid for p in h.pool.plans] == other


def test_trunk_concurrency_overflows_to_next_trunk_and_global_cap(tmp_path):
    config = cfg(
        trunks=[
            {
                "name": "a",
                "address": "127.0.0.1:5061",
                "max_concurrent": 2,
                "caller_id": "+14155550100",
            },
            {
                "name": "b",
                "address": "127.0.0.1:5062",
                "max_concurrent": 1,
                "caller_id": "+14155550100",
            },
        ],
        limits={"max_concurrent_calls": 3},
    )
    h = make(tmp_path, config)
    for i in range(5):
        h.trigger(f"+1212555012{i}")
    h.svc.dispatch_once()
    assert [p.trunk for p in h.pool.plans] == ["a", "a", "b"]
    h.end(h.pool.plans[0], 486)
    h.svc.dispatch_once()
    assert [p.trunk for p in h.pool.plans] == ["a", "a", "b", "a"]


def test_shutdown_before_answer_requeues_without_losing_the_call(tmp_path):
    h = make(tmp_path, cfg())
    sid = h.trigger("+12125550123")
    h.svc.dispatch_once()
    asyncio.run(h.svc.stop())  # shutting down: the pool hangs up the leg
    h.end(h.pool.plans[0], 487, cause="local_hangup")
    rec = h.svc.get(sid)[0]
    assert (rec.status, rec.attempts) == ("queued", 0)


@settings(max_examples=30, deadline=None)
@given(
    cps=st.sampled_from([1.0, 2.0, 5.0]),
    burst=st.integers(1, 3),
    steps=st.lists(st.floats(0.001, 0.7), min_size=20, max_size=60),
)
def test_cps_cap_never_exceeded(tmp_path_factory, cps, burst, steps):
    """However the scheduler is woken, INVITEs on a trunk never exceed burst + cps*T in
    any window T; no call is dialled twice (RecordingPool asserts that)."""
    config = cfg(
        trunks=[
            {
                "name": "a",
                "address": "127.0.0.1:5061",
                "cps": cps,
                "cps_burst": burst,
                "caller_id": "+14155550100",
            }
        ],
        routes=[{"prefix": "+1", "trunk": "a"}],
    )
    h = make(tmp_path_factory.mktemp("cps"), config, slots=1000)
    for i in range(30):
        h.trigger(f"+1212555{1000 + i:04d}")
    for dt in steps:
        h.svc.dispatch_once()
        h.clock.t += dt
    times = h.pool.dial_times
    for i, t0 in enumerate(times):
        for j in range(i, len(times)):
            window = times[j] - t0
            assert j - i + 1 <= burst + cps * window + 1e-6
    assert len({p.call_sid for p in h.pool.plans}) == len(h.pool.plans)


@settings(max_examples=25, deadline=None)
@given(
    start_h=st.integers(0, 23),
    length_h=st.integers(1, 12),
    offsets=st.lists(st.integers(0, 7 * 24 * 60), min_size=5, max_size=15),
)
def test_no_call_started_outside_its_window(tmp_path_factory, start_h, length_h, offsets):
    end_h = (start_h + length_h) % 24
    hours = f"{start_h:02d}:00-{end_h:02d}:00" if end_h else f"{start_h:02d}:00-24:00"
    config = cfg(
        routes=[{"prefix": "+1", "trunk": "a", "window": {"days": "mon-fri", "hours": hours}}]
    )
    h = make(tmp_path_factory.mktemp("win"), config)
    window = CallingWindow.parse("mon-fri", hours)
    for i, off in enumerate(sorted(offsets)):
        h.clock.t = MON_15_UTC + off * 60
        h.trigger(f"+1212555{2000 + i:04d}")
        h.svc.dispatch_once()
    for t in h.pool.dial_times:
        assert is_open(window, ("America/New_York",), t)


def test_sit_in_early_media_ends_call_with_code(tmp_path):
    h = make(tmp_path, cfg())
    sid = h.trigger("+12125550123")
    h.svc.dispatch_once()
    plan = h.pool.plans[0]
    assert plan.detection == {"early": True, "answer": True, "config": {}}
    h.report(plan, "early", "decision", answered_by="sit", sit_code="IC", decided_at_ms=480)
    assert h.pool.hung == [plan.leg_id]
    h.end(plan, 487, cause="local_hangup")
    rec = h.svc.get(sid)[0]
    assert (rec.status, rec.reason) == ("failure", "number not in service (SIT IC)")
    assert len(h.pool.plans) == 1  # no failover to trunk b on a SIT


def test_busy_tone_in_early_media(tmp_path):
    h = make(tmp_path, cfg())
    sid = h.trigger("+12125550123")
    h.svc.dispatch_once()
    h.report(h.pool.plans[0], "early", "progress", answered_by="unknown", progress="busy")
    h.end(h.pool.plans[0], 487, cause="local_hangup")
    assert h.svc.get(sid)[0].reason == "busy"


def test_machine_hangup_waits_for_beep_when_configured(tmp_path):
    config = cfg(detection={"machine_action": "hangup", "wait_for_beep": True})
    h = make(tmp_path, config)
    sid = h.trigger("+12125550123")
    h.svc.dispatch_once()
    plan = h.pool.plans[0]
    h.answer(plan)
    h.report(plan, "answer", "decision", answered_by="machine", final=False)
    assert h.pool.hung == []
    h.report(plan, "answer", "update", answered_by="machine", final=True, beep_ms=5200)
    # connected on answer (the default): both the carrier and the agent leg are hung up
    assert h.pool.hung == [plan.leg_id, f"{sid}/a1"]
    h.end(plan, 200, cause="local_hangup", answered=True)
    rec, _ = h.svc.get(sid)
    assert (rec.status, rec.reason, rec.answered_by) == (
        "failure",
        "answered by machine",
        "machine",
    )


def test_human_is_recorded_and_call_continues(tmp_path):
    h = make(tmp_path, cfg(detection={"machine_action": "hangup"}))
    sid = h.trigger("+12125550123")
    h.svc.dispatch_once()
    plan = h.pool.plans[0]
    h.report(plan, "answer", "decision", answered_by="human", decided_at_ms=1400)
    assert h.pool.hung == []
    h.connect(plan)
    h.end(plan, 200, cause="remote_bye", answered=True)
    rec = h.svc.get(sid)[0]
    assert (rec.status, rec.answered_by) == ("success", "human")


def test_machine_retry_action_requeues(tmp_path):
    h = make(tmp_path, cfg(retry={"max_attempts": 2, "base_s": 5, "jitter": 0}))
    sid = h.trigger("+12125550123", detection=DetectionSettings(machine_action="retry"))
    h.svc.dispatch_once()
    h.report(h.pool.plans[0], "answer", "decision", answered_by="machine")
    h.end(h.pool.plans[0], 200, cause="local_hangup", answered=True)
    rec = h.svc.get(sid)[0]
    assert rec.status == "queued" and rec.reason.startswith("answered by machine; attempt 2")
