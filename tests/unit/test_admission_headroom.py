"""Admission control's headroom (``learn_capacity``): what one call costs in CPU, learned
from samples, and how many more calls fit under ``max_cpu_busy``; what an API client sees
when the node is full by it (503 naming the room, metrics), and that room coming back
dials what waited in the queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipbridge.admission import (
    CALLS,
    CPU,
    HEADROOM,
    CallCost,
    Headroom,
    Sample,
    Thresholds,
    Verdict,
    decide,
    room,
)
from tests.unit.test_admission import _app, _input, _trigger
from tests.unit.test_api import _wait
from tests.unit.test_operations import _on_loop, samples

# ---- the pure parts ------------------------------------------------------------------


def test_cost_counts_the_calls_that_were_up_settle_s_ago() -> None:
    c = CallCost(settle_s=3.0, min_calls=8, weight=0.5)
    assert c.observe(0.0, 0.1, 2, 8, 0.9) is None  # nothing settled yet
    assert c.observe(2.0, 0.4, 2, 8, 0.9) is None
    h = c.observe(3.0, 0.4, 2, 8, 0.9)  # the 8 calls up at 0 s cost 0.8 cores now
    assert h is not None and c.cores_per_call == pytest.approx(0.1)
    assert (h.calls, h.pending, h.more) == (8, 0, 8)  # 10 by CPU, 16 by slow start
    # a burst of 10 admitted calls, not costing yet: pending, each counted at the cost
    h = c.observe(4.0, 0.4, 2, 18, 0.9)
    assert h is not None and (h.pending, h.more, h.limit) == (10, 0, 18)


def test_cost_ignores_samples_with_few_settled_calls() -> None:
    c = CallCost(settle_s=1.0, min_calls=8, weight=0.5)
    c.observe(0.0, 0.7, 2, 7, 0.9)
    assert c.observe(1.0, 0.7, 2, 7, 0.9) is None  # the machine would count as the calls'
    assert c.observe(2.0, 0.4, 2, 8, 0.9) is None  # 7 settled: still too few
    c.observe(3.0, 0.4, 2, 8, 0.9)
    assert c.cores_per_call == pytest.approx(0.1)
    c.observe(4.0, 0.9, 2, 4, 0.9)  # 8 settled: averaged toward 0.225
    assert c.cores_per_call == pytest.approx(0.1625)
    c.observe(5.0, 0.9, 2, 4, 0.9)  # 4 settled: kept
    assert c.cores_per_call == pytest.approx(0.1625)


@given(
    busy=st.floats(0, 1),
    cores=st.integers(1, 64),
    settled=st.integers(8, 5_000),
    new=st.integers(0, 5_000),
)
def test_what_fits_really_fits(busy: float, cores: int, settled: int, new: int) -> None:
    c = CallCost(settle_s=1.0)
    c.observe(0.0, busy, cores, settled, 0.9)
    h = c.observe(1.0, busy, cores, settled + new, 0.9)
    if busy == 0:
        assert h is None  # an idle machine says nothing about what a call costs
        return
    assert h is not None and h.limit >= settled + new and h.pending == new
    assert h.limit <= max(2 * settled, settled + new)  # slow start: at most doubling
    per_call = h.cores_per_call
    # the calls let in, the pending ones counted, keep the machine under the threshold
    if (busy * cores + new * per_call) <= 0.9 * cores:
        assert busy * cores + (new + h.more) * per_call <= 0.9 * cores + 1e-6
    else:
        assert h.more == 0 and room(h, settled + new).signal == HEADROOM


def test_slow_start_at_most_doubles_the_settled_calls() -> None:
    c = CallCost(settle_s=1.0, min_calls=8)
    c.observe(0.0, 0.1, 2, 10, 0.9)
    h = c.observe(1.0, 0.1, 2, 10, 0.9)  # 0.02 cores a call: room for 80 more by CPU
    assert h is not None and h.limit == 20
    c.observe(2.0, 0.2, 2, 20, 0.9)
    h = c.observe(3.0, 0.2, 2, 20, 0.9)
    assert h is not None and h.limit == 40


def test_no_room_limit_before_a_cost_is_known() -> None:
    assert CallCost().observe(0.0, 0.99, 2, 50, 0.9) is None
    assert room(None, 10_000).ok


def test_room_reason_names_cpu_room_and_cost() -> None:
    h = Headroom(calls=8, more=1, busy=0.8, cores_per_call=0.2)
    assert room(h, 8).ok
    v = room(h, 9)
    assert v.overloaded and v.signal == HEADROOM
    assert v.reason == (
        "node at capacity: cpu 80 % busy, room for 9 calls at 20.0 % of a core each (9 in progress)"
    )


def test_pressure_then_cap_then_room() -> None:
    th = Thresholds(max_analysed_calls=9)
    h = Headroom(calls=8, more=1, busy=0.8, cores_per_call=0.2)
    hot = Verdict(True, CPU, "hot")
    assert decide(th, hot, 9, h).signal == CPU
    assert decide(th, Verdict(False), 9, h).signal == CALLS
    assert decide(Thresholds(), Verdict(False), 9, h).signal == HEADROOM
    assert decide(Thresholds(), Verdict(False), 8, h).ok


def _room(ac: Any) -> Headroom:
    """The admission control's last room (a sample with a known cost has set it)."""
    assert ac.room is not None
    return ac.room


# ---- what the API client sees --------------------------------------------------------


def test_node_full_by_headroom_refuses_then_dials_the_queue(tmp_path: Path) -> None:
    client, svc, pool = _app(
        tmp_path, {"sample_interval_s": 10, "enter_after_s": 0, "retry_after_s": 3}
    )
    pool.slots = 64  # room in the SIP pool: only admission limits here
    with client:
        ac = client.app.state.ops.admission  # type: ignore[attr-defined]
        ac.cores = 2
        on_loop = _on_loop(client)

        t = [0.0]

        def feed(cpu: float) -> None:  # on the app's loop, as the sampler does, 3 s apart
            on_loop.call(ac.observe, t[0], Sample(cpu, 0.0))
            t[0] += 3.0

        for _ in range(8):
            assert _trigger(client).status_code == 200
        assert _wait(lambda: len(pool.plans) == 8)
        # 8 calls keep 1.6 of 2 cores busy: 0.2 each; 0.2 cores spare under 0.9 -> one more
        feed(0.8)
        assert ac.room is None  # first sample: nothing settled yet
        feed(0.8)
        assert (_room(ac).limit, round(_room(ac).cores_per_call, 3)) == (9, 0.2)
        assert _trigger(client).status_code == 200
        assert _wait(lambda: len(pool.plans) == 9)
        r = _trigger(client)
        assert r.status_code == 503 and r.headers["Retry-After"] == "3"
        assert r.json()["error"].startswith("node at capacity: cpu 80 % busy, room for 9 calls")
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "load" in ready.json()["down"]
        # a call queued meanwhile (through the service: the API refuses) waits ...
        on_loop.call(svc.trigger, _input())
        on_loop.call(svc.dispatch_once)
        assert len(pool.plans) == 9
        m = samples(client.get("/metrics").text)
        assert m[("sipbridge_admission_refused_total", (("reason", "headroom"),))] == 1
        assert m[("sipbridge_node_call_room", ())] == 9
        assert round(m[("sipbridge_node_call_cost_cores", ())], 3) == 0.2
        # ... until a sample shows room again (no call ended): dialled at once
        feed(0.3)
        assert _room(ac).limit == 10  # the 9th call, admitted since, counted as pending
        assert _wait(lambda: len(pool.plans) == 10)
        feed(0.3)
        assert _room(ac).limit > 10
        assert _trigger(client).status_code == 200


def test_learn_capacity_off_never_limits(tmp_path: Path) -> None:
    client, _svc, pool = _app(
        tmp_path, {"sample_interval_s": 10, "enter_after_s": 0, "learn_capacity": False}
    )
    pool.slots = 64
    with client:
        ac = client.app.state.ops.admission  # type: ignore[attr-defined]
        for _ in range(9):
            assert _trigger(client).status_code == 200
        assert _wait(lambda: len(pool.plans) == 9)
        for t in (0.0, 3.0, 6.0):
            _on_loop(client).call(ac.observe, t, Sample(0.85, 0.0))
        assert ac.room is None
        assert _trigger(client).status_code == 200
