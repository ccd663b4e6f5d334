"""The call manager's scheduling decisions with an injectable clock and a recording pool
double: windows, retries, failover, limits, idempotency, queue timeout. (The SIP side
of the same paths runs against SIPp in tests/integration.)"""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.config import parse_config
from sipbridge.ipc import LegEvent
from sipbridge.routing import RoutingError
from sipbridge.service import QUEUE_TIMEOUT_REASON, CallService, PoolFullError, TriggerInput
from sipbridge.store import SQLiteStore


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


class RecordingPool:
    def __init__(self, slots: int = 8):
        self.slots = slots
        self.live: dict[str, object] = {}
        self.plans: list = []
        self.dial_times: list[float] = []
        self.clock: Clock | None = None

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    def free_slots(self) -> int:
        return self.slots - len(self.live)

    def dial(self, plan, prefer_worker=None, reserve=0) -> int:
        if self.free_slots() <= 0:
            raise PoolFullError()
        assert plan.leg_id not in self.live, "a leg dialled twice"
        self.live[plan.leg_id] = plan
        self.plans.append(plan)
        if self.clock:
            self.dial_times.append(self.clock())
        return 0

    def hangup(self, leg_id: str) -> bool:
        return leg_id in self.live


def cfg(**over):
    base = {
        "agent": {"uri": "sip:agent@127.0.0.1"},
        "api": {"tokens": [{"value": "tok"}]},
        "trunks": [
            {"name": "a", "address": "127.0.0.1:5061", "caller_id": "+14155550100"},
            {"name": "b", "address": "127.0.0.1:5062", "caller_id": "+14155550101"},
        ],
        "routes": [{"prefix": "+1", "trunks": [{"name": "a", "priority": 0},
                                               {"name": "b", "priority": 1}]}],
    }
    base.update(over)
    return parse_config(base)


# 2026-11-23 is a Monday. 15:00 UTC = 10:00 in New York.
MON_15_UTC = datetime(2026, 11, 23, 15, 0, tzinfo=UTC).timestamp()


def make(tmp_path, config, t=MON_15_UTC, slots=8):
    clock = Clock(t)
    pool = RecordingPool(slots)
    pool.clock = clock
    svc = CallService(config, SQLiteStore(tmp_path / "s.db"), pool, clock=clock,
                      rng=random.Random(7))
    return svc, pool, clock


def end(svc, plan, status, cause="remote_final", answered=False, retry_after=None):
    svc.pool.live.pop(plan.leg_id, None)
    svc.on_leg_event(LegEvent(plan.leg_id, plan.call_sid, "ended", 0, svc.clock(), status, "",
                              "", cause, answered, retry_after_s=retry_after))


def connect(svc, plan):
    """The carrier answers and the agent leg the flow dialled answers: connected."""
    svc.on_sip_event(LegEvent(plan.leg_id, plan.call_sid, "answered", 0, svc.clock(), 200))
    agent = next(p for p in reversed(svc.pool.plans) if p.bridge_with == plan.leg_id)
    svc.on_sip_event(LegEvent(agent.leg_id, plan.call_sid, "answered", 0, svc.clock(), 200))


def statuses(svc, sid):
    return [(e.data["to"], e.data["reason"]) for e in svc.store.events(sid) if e.kind == "status"]


def test_failover_on_503_to_next_priority_then_success(tmp_path):
    svc, pool, clock = make(tmp_path, cfg())
    sid = svc.trigger(TriggerInput("+12125550123")).call_sid
    svc._dispatch()
    assert [p.trunk for p in pool.plans] == ["a"]
    end(svc, pool.plans[0], 503, retry_after=30)
    svc._dispatch()
    assert [p.trunk for p in pool.plans] == ["a", "b"]
    assert pool.plans[1].leg_id == f"{sid}/b1.2"
    connect(svc, pool.plans[1])
    end(svc, pool.plans[1], 200, "remote_bye", answered=True)
    rec, events = svc.get(sid)
    assert (rec.status, rec.attempts) == ("success", 1)
    assert [e.kind for e in events].count("failover") == 1
    assert rec.attempt_history[0]["trunks"] == ["a", "b"]
    # trunk a asked for 30 s of rest: the next call goes straight to b
    sid2 = svc.trigger(TriggerInput("+12125550124")).call_sid
    svc._dispatch()
    assert pool.plans[-1].trunk == "b" and pool.plans[-1].call_sid == sid2
    clock.t += 31
    sid3 = svc.trigger(TriggerInput("+12125550125")).call_sid
    svc._dispatch()
    assert pool.plans[-1].trunk == "a" and pool.plans[-1].call_sid == sid3


@pytest.mark.parametrize("status", [404, 486, 603])
def test_user_outcomes_stop_the_hunt(tmp_path, status):
    svc, pool, _ = make(tmp_path, cfg())
    sid = svc.trigger(TriggerInput("+12125550123")).call_sid
    svc._dispatch()
    end(svc, pool.plans[0], status)
    svc._dispatch()
    assert len(pool.plans) == 1 and svc.get(sid)[0].status == "failure"


def test_busy_retried_with_backoff_until_success(tmp_path):
    config = cfg(retry={"max_attempts": 3, "base_s": 10, "factor": 2, "jitter": 0,
                        "retry_on": ["busy"]})
    svc, pool, clock = make(tmp_path, config)
    sid = svc.trigger(TriggerInput("+12125550123")).call_sid
    svc._dispatch()
    end(svc, pool.plans[0], 486)
    rec = svc.get(sid)[0]
    assert rec.status == "queued" and rec.reason.startswith("busy; attempt 2 of 3 at")
    assert rec.not_before == pytest.approx(clock.t + 10)
    clock.t += 9.9
    svc._dispatch()
    assert len(pool.plans) == 1  # backoff not elapsed
    clock.t += 0.2
    svc._dispatch()
    assert len(pool.plans) == 2
    end(svc, pool.plans[1], 486)
    assert svc.get(sid)[0].not_before == pytest.approx(clock.t + 20)
    clock.t += 20.1
    svc._dispatch()
    connect(svc, pool.plans[2])
    end(svc, pool.plans[2], 200, "remote_bye", answered=True)
    rec = svc.get(sid)[0]
    assert (rec.status, rec.attempts) == ("success", 3)
    assert [h["reason"] for h in rec.attempt_history] == ["busy", "busy", ""]
    assert [s for s, _ in statuses(svc, sid)] == [
        "queued", "calling", "queued", "calling", "queued", "calling", "success"]


def test_retries_stop_at_max_attempts(tmp_path):
    svc, pool, clock = make(tmp_path, cfg(retry={"max_attempts": 2, "base_s": 1,
                                                 "jitter": 0}))
    sid = svc.trigger(TriggerInput("+12125550123")).call_sid
    for _ in range(2):
        svc._dispatch()
        end(svc, pool.plans[-1], 480)
        clock.t += 5
    svc._dispatch()
    rec = svc.get(sid)[0]
    assert (rec.status, rec.reason, rec.attempts) == ("failure", "no answer", 2)
    assert len(pool.plans) == 2


def test_outside_window_stays_queued_with_reason_then_dials(tmp_path):
    config = cfg(routes=[{"prefix": "+1", "trunk": "a",
                          "window": {"days": "mon-fri", "hours": "09:00-17:00"}}])
    # 03:00 New York time on Monday
    svc, pool, clock = make(tmp_path, config, t=datetime(2026, 11, 23, 8, 0,
                                                         tzinfo=UTC).timestamp())
    sid = svc.trigger(TriggerInput("+12125550123")).call_sid
    svc._dispatch()
    rec = svc.get(sid)[0]
    assert pool.plans == [] and rec.status == "queued"
    assert rec.reason == "outside calling window; will be attempted at 2026-11-23T14:00:00Z"
    clock.t = datetime(2026, 11, 23, 14, 0, 1, tzinfo=UTC).timestamp()
    svc._dispatch()
    assert len(pool.plans) == 1


def test_several_zones_need_all_open(tmp_path):
    config = cfg(routes=[{"prefix": "+1", "trunk": "a",
                          "window": {"days": "mon-sun", "hours": "09:00-17:00"}}])
    # 14:30 UTC = 09:30 New York but 06:30 Los Angeles: a per-call zone list decides
    svc, pool, _ = make(tmp_path, config, t=datetime(2026, 11, 23, 14, 30,
                                                     tzinfo=UTC).timestamp())
    ny = svc.trigger(TriggerInput("+12125550123")).call_sid
    la = svc.trigger(TriggerInput("+12125550124", timezone="America/Los_Angeles")).call_sid
    svc._dispatch()
    assert [p.call_sid for p in pool.plans] == [ny]
    assert "17:00:00Z" in svc.get(la)[0].reason  # 09:00 in Los Angeles


def test_toll_free_needs_timezone(tmp_path):
    config = cfg(routes=[{"prefix": "+1", "trunk": "a",
                          "window": {"days": "mon-fri", "hours": "09:00-17:00"}}])
    svc, _, _ = make(tmp_path, config)
    with pytest.raises(RoutingError) as ei:
        svc.trigger(TriggerInput("+18005550199"))
    assert ei.value.field == "calling_window"
    assert svc.trigger(TriggerInput("+18005550199", timezone="America/Chicago"))


def test_queue_timeout(tmp_path):
    svc, _, clock = make(tmp_path, cfg(scheduler={"max_queue_time_s": 60}), slots=0)
    sid = svc.trigger(TriggerInput("+12125550123")).call_sid
    svc._dispatch()
    clock.t += 61
    svc._dispatch()
    assert svc.get(sid)[0].reason == QUEUE_TIMEOUT_REASON


def test_idempotency_key_returns_same_call(tmp_path):
    svc, pool, _ = make(tmp_path, cfg())
    a = svc.trigger(TriggerInput("+12125550123", idempotency_key="k1")).call_sid
    b = svc.trigger(TriggerInput("+12125550123", idempotency_key="k1")).call_sid
    c = svc.trigger(TriggerInput("+12125550123", idempotency_key="k2")).call_sid
    svc._dispatch()
    assert a == b != c
    assert sorted(p.call_sid for p in pool.plans) == sorted([a, c])


def test_trunk_concurrency_overflows_to_next_trunk_and_global_cap(tmp_path):
    config = cfg(trunks=[
        {"name": "a", "address": "127.0.0.1:5061", "max_concurrent": 2,
         "caller_id": "+14155550100"},
        {"name": "b", "address": "127.0.0.1:5062", "max_concurrent": 1,
         "caller_id": "+14155550100"},
    ], limits={"max_concurrent_calls": 3})
    svc, pool, _ = make(tmp_path, config)
    for i in range(5):
        svc.trigger(TriggerInput(f"+1212555012{i}"))
    svc._dispatch()
    assert [p.trunk for p in pool.plans] == ["a", "a", "b"]
    end(svc, pool.plans[0], 486)
    svc._dispatch()
    assert [p.trunk for p in pool.plans] == ["a", "a", "b", "a"]


def test_shutdown_before_answer_requeues_without_losing_the_call(tmp_path):
    svc, pool, _ = make(tmp_path, cfg())
    sid = svc.trigger(TriggerInput("+12125550123")).call_sid
    svc._dispatch()
    svc._stopping = True
    end(svc, pool.plans[0], 487, cause="local_hangup")
    rec = svc.get(sid)[0]
    assert (rec.status, rec.attempts) == ("queued", 0)


@settings(max_examples=30, deadline=None)
@given(cps=st.sampled_from([1.0, 2.0, 5.0]), burst=st.integers(1, 3),
       steps=st.lists(st.floats(0.001, 0.7), min_size=20, max_size=60))
def test_cps_cap_never_exceeded(tmp_path_factory, cps, burst, steps):
    """However the scheduler is woken, INVITEs on a trunk never exceed burst + cps*T in
    any window T; no call is dialled twice (RecordingPool asserts that)."""
    config = cfg(trunks=[{"name": "a", "address": "127.0.0.1:5061", "cps": cps,
                          "cps_burst": burst, "caller_id": "+14155550100"}],
                 routes=[{"prefix": "+1", "trunk": "a"}])
    svc, pool, clock = make(tmp_path_factory.mktemp("cps"), config, slots=1000)
    for i in range(30):
        svc.trigger(TriggerInput(f"+1212555{1000 + i:04d}"))
    for dt in steps:
        svc._dispatch()
        clock.t += dt
    times = pool.dial_times
    for i, t0 in enumerate(times):
        for j in range(i, len(times)):
            window = times[j] - t0
            assert j - i + 1 <= burst + cps * window + 1e-6
    assert len({p.call_sid for p in pool.plans}) == len(pool.plans)


@settings(max_examples=25, deadline=None)
@given(start_h=st.integers(0, 23), length_h=st.integers(1, 12),
       offsets=st.lists(st.integers(0, 7 * 24 * 60), min_size=5, max_size=15))
def test_no_call_started_outside_its_window(tmp_path_factory, start_h, length_h, offsets):
    end_h = (start_h + length_h) % 24
    hours = f"{start_h:02d}:00-{end_h:02d}:00" if end_h else f"{start_h:02d}:00-24:00"
    config = cfg(routes=[{"prefix": "+1", "trunk": "a",
                          "window": {"days": "mon-fri", "hours": hours}}])
    svc, pool, clock = make(tmp_path_factory.mktemp("win"), config)
    from sipbridge.schedule import CallingWindow, is_open

    window = CallingWindow.parse("mon-fri", hours)
    for i, off in enumerate(sorted(offsets)):
        clock.t = MON_15_UTC + off * 60
        svc.trigger(TriggerInput(f"+1212555{2000 + i:04d}"))
        svc._dispatch()
    for t in pool.dial_times:
        assert is_open(window, ("America/New_York",), t)


def report(svc, plan, phase, kind, **det):
    from sipbridge.ipc import DetectionReport

    svc.on_sip_event(DetectionReport(plan.leg_id, plan.call_sid, 0, svc.clock(), phase, kind,
                                     det))


class HangupPool(RecordingPool):
    def __init__(self):
        super().__init__()
        self.hung: list[str] = []

    def hangup(self, leg_id):
        self.hung.append(leg_id)
        return True


def make_h(tmp_path, config):
    svc, _, clock = make(tmp_path, config)
    pool = HangupPool()
    pool.clock = clock
    svc.pool = pool
    return svc, pool


def test_sit_in_early_media_ends_call_with_code(tmp_path):
    svc, pool = make_h(tmp_path, cfg())
    sid = svc.trigger(TriggerInput("+12125550123")).call_sid
    svc._dispatch()
    plan = pool.plans[0]
    assert plan.detection == {"early": True, "answer": True, "config": {}}
    report(svc, plan, "early", "decision", answered_by="sit", sit_code="IC", decided_at_ms=480)
    assert pool.hung == [plan.leg_id]
    end(svc, plan, 487, cause="local_hangup")
    rec = svc.get(sid)[0]
    assert (rec.status, rec.reason) == ("failure", "number not in service (SIT IC)")
    assert len(pool.plans) == 1  # no failover to trunk b on a SIT


def test_busy_tone_in_early_media(tmp_path):
    svc, pool = make_h(tmp_path, cfg())
    sid = svc.trigger(TriggerInput("+12125550123")).call_sid
    svc._dispatch()
    report(svc, pool.plans[0], "early", "progress", answered_by="unknown", progress="busy")
    end(svc, pool.plans[0], 487, cause="local_hangup")
    assert svc.get(sid)[0].reason == "busy"


def test_machine_hangup_waits_for_beep_when_configured(tmp_path):
    config = cfg(detection={"machine_action": "hangup", "wait_for_beep": True})
    svc, pool = make_h(tmp_path, config)
    sid = svc.trigger(TriggerInput("+12125550123")).call_sid
    svc._dispatch()
    plan = pool.plans[0]
    svc.on_leg_event(LegEvent(plan.leg_id, sid, "answered", 0, svc.clock(), 200))
    report(svc, plan, "answer", "decision", answered_by="machine", final=False)
    assert pool.hung == []
    report(svc, plan, "answer", "update", answered_by="machine", final=True, beep_ms=5200)
    # connected on answer (the default): both the carrier and the agent leg are hung up
    assert pool.hung == [plan.leg_id, f"{sid}/a1"]
    end(svc, plan, 200, cause="local_hangup", answered=True)
    rec, _ = svc.get(sid)
    assert (rec.status, rec.reason, rec.answered_by) == ("failure", "answered by machine",
                                                          "machine")


def test_human_is_recorded_and_call_continues(tmp_path):
    svc, pool = make_h(tmp_path, cfg(detection={"machine_action": "hangup"}))
    sid = svc.trigger(TriggerInput("+12125550123")).call_sid
    svc._dispatch()
    plan = pool.plans[0]
    report(svc, plan, "answer", "decision", answered_by="human", decided_at_ms=1400)
    assert pool.hung == []
    connect(svc, plan)
    end(svc, plan, 200, cause="remote_bye", answered=True)
    rec = svc.get(sid)[0]
    assert (rec.status, rec.answered_by) == ("success", "human")


def test_machine_retry_action_requeues(tmp_path):
    svc, pool = make_h(tmp_path, cfg(retry={"max_attempts": 2, "base_s": 5, "jitter": 0}))
    from sipbridge.config import DetectionSettings

    sid = svc.trigger(TriggerInput(
        "+12125550123", detection=DetectionSettings(machine_action="retry"))).call_sid
    svc._dispatch()
    report(svc, pool.plans[0], "answer", "decision", answered_by="machine")
    end(svc, pool.plans[0], 200, cause="local_hangup", answered=True)
    rec = svc.get(sid)[0]
    assert rec.status == "queued" and rec.reason.startswith("answered by machine; attempt 2")
