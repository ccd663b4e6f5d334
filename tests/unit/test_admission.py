"""Admission control: the pure decision (property tests on the hysteresis), the
/proc/stat parsing, the config's checks, and what an API client sees (trigger 503 with
Retry-After, /readyz 503 naming the load, the metrics, no dial while overloaded)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.admission import (
    CALLS,
    CPU,
    LOOP_LAG,
    Pressure,
    Sample,
    Thresholds,
    capacity,
    decide,
)
from sipbridge.api import create_app
from sipbridge.calls import CallService
from sipbridge.config import parse_config
from sipbridge.errors import ConfigError
from sipbridge.loadwatch import CpuMeter, cpu_times
from sipbridge.store import SQLiteStore
from tests.doubles import RecordingPool
from tests.unit.test_api import AUTH, _wait
from tests.unit.test_operations import BASE, _on_loop, samples

TH = Thresholds(
    max_cpu_busy=0.9,
    resume_cpu_busy=0.8,
    max_loop_lag_ms=50,
    resume_loop_lag_ms=20,
    max_analysed_calls=10,
    enter_after_s=2.0,
    resume_after_s=5.0,
)
STEP_S = 0.5

cpu_values = st.one_of(st.none(), st.floats(0, 1))
lag_values = st.floats(0, 5000)
samples_st = st.lists(st.tuples(cpu_values, lag_values), min_size=1, max_size=80)


def _run(p: Pressure, seq: list[tuple[float | None, float]], t0: float = 0.0) -> list[bool]:
    return [p.observe(t0 + i * STEP_S, Sample(c, lag)).overloaded for i, (c, lag) in enumerate(seq)]


# ---- the pure decision -------------------------------------------------------------


@given(st.lists(st.tuples(st.floats(0, 0.8999), st.floats(0, 49.99)), max_size=80))
def test_never_overloaded_under_the_thresholds(seq: list[tuple[float, float]]) -> None:
    assert not any(_run(Pressure(TH), list(seq)))


@given(st.floats(0.9, 1), st.floats(0, 5000), st.integers(0, 40))
def test_sustained_cpu_trips_after_enter_after_s(cpu: float, lag: float, calm_first: int) -> None:
    p = Pressure(TH)
    _run(p, [(0.1, 0.0)] * calm_first)
    t0 = calm_first * STEP_S
    hot = _run(p, [(cpu, lag)] * 5, t0)  # 0, 0.5, ... 2.0 s into the hot run
    assert hot == [False, False, False, False, True]
    assert p.verdict.signal in (CPU, LOOP_LAG)
    if lag < TH.resume_loop_lag_ms:
        assert p.verdict.signal == CPU and "cpu" in p.verdict.reason
        assert "for 2.0 s" in p.verdict.reason


def test_reason_names_the_loop_lag() -> None:
    p = Pressure(TH)
    _run(p, [(0.2, 300.0)] * 5)
    assert p.verdict.signal == LOOP_LAG
    assert p.verdict.reason == "node overloaded: event loop 300 ms late, over 50 ms for 2.0 s"


@given(samples_st)
def test_a_dip_restarts_the_enter_clock(seq: list[tuple[float | None, float]]) -> None:
    """Overloaded only after some signal was hot in every sample of the last 2 s."""
    p = Pressure(TH)
    for i, (c, lag) in enumerate(seq):
        was_ok = p.verdict.ok
        now = p.observe(i * STEP_S, Sample(c, lag)).overloaded
        if was_ok and now:
            run = seq[max(0, i - 4) : i + 1]
            assert i >= 4
            assert all(c2 is not None and c2 >= 0.9 for c2, _ in run) or all(
                lag2 >= 50 for _, lag2 in run
            )


@given(samples_st)
def test_recovers_only_after_resume_after_s_calm(seq: list[tuple[float | None, float]]) -> None:
    p = Pressure(TH)
    _run(p, [(0.95, 0.0)] * 5)
    assert p.verdict.overloaded
    start = 5
    calm_run = 0
    for i, (c, lag) in enumerate(seq):
        now = p.observe((start + i) * STEP_S, Sample(c, lag)).overloaded
        calm = (c is None or c < 0.8) and lag < 20
        if not now:  # it recovered: the last 5 s (11 samples) were all calm
            assert calm_run + 1 >= 11 and calm
            return
        calm_run = calm_run + 1 if calm else 0
        assert calm_run < 11


@given(st.floats(0.8, 0.8999), st.floats(20, 49.99), st.integers(1, 60))
def test_no_flapping_inside_the_band(cpu: float, lag: float, n: int) -> None:
    """Between resume and max nothing changes, whichever state the node is in."""
    p = Pressure(TH)
    assert not any(_run(p, [(cpu, lag)] * n))
    _run(p, [(1.0, 0.0)] * 5, n * STEP_S)
    assert all(_run(p, [(cpu, lag)] * n, (n + 5) * STEP_S))


@settings(max_examples=50)
@given(samples_st)
def test_transitions_are_spaced(seq: list[tuple[float | None, float]]) -> None:
    """Two state changes are at least min(enter_after_s, resume_after_s) apart."""
    states = _run(Pressure(TH), seq)
    changes = [i for i in range(1, len(states)) if states[i] != states[i - 1]]
    assert all((b - a) * STEP_S >= TH.enter_after_s for a, b in itertools.pairwise(changes))


@given(st.integers(0, 100))
def test_capacity_is_exact(live: int) -> None:
    v = capacity(TH, live)
    assert v.overloaded == (live >= 10)
    if v.overloaded:
        assert v.signal == CALLS and v.reason == f"node at capacity: analysed calls {live}/10"
    assert capacity(Thresholds(max_analysed_calls=None), live).ok


def test_pressure_reason_comes_first() -> None:
    p = Pressure(TH)
    _run(p, [(1.0, 0.0)] * 5)
    assert decide(TH, p.verdict, 99).signal == CPU
    assert decide(TH, Pressure(TH).verdict, 99).signal == CALLS


def test_unused_signals_never_trip() -> None:
    th = Thresholds(max_cpu_busy=None, max_loop_lag_ms=None)
    assert not any(_run(Pressure(th), [(1.0, 10_000.0)] * 50))


# ---- sampling ----------------------------------------------------------------------


def test_cpu_times_from_proc_stat() -> None:
    text = "cpu  100 5 50 800 20 1 2 3 0 0\ncpu0 1 2 3 4 5 6 7 8\nintr 1 2\n"
    assert cpu_times(text) == (100 + 5 + 50 + 1 + 2 + 3, 100 + 5 + 50 + 800 + 20 + 1 + 2 + 3)
    for bad in ("", "cpu0 1 2 3 4 5", "cpu a b c d e", "cpu 1 2", "cpu -1 2 3 4 5 6"):
        assert cpu_times(bad) is None


@given(st.text(max_size=200))
def test_cpu_times_never_raises(text: str) -> None:
    r = cpu_times(text)
    assert r is None or 0 <= r[0] <= r[1]


def test_cpu_meter_busy_share(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    meter = CpuMeter(stat)
    assert meter.read() is None  # missing file
    stat.write_text("cpu 100 0 0 100 0 0 0 0\n")
    assert meter.read() is None  # first read: the baseline
    stat.write_text("cpu 190 0 0 110 0 0 0 0\n")
    assert meter.read() == pytest.approx(0.9)
    assert meter.read() is None  # no time passed
    assert CpuMeter().read() is None and isinstance(CpuMeter().read(), type(None))


# ---- config ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("admission", "message"),
    [
        ({"max_cpu_busy": 1.5}, "admission.max_cpu_busy"),
        ({"max_cpu_busy": 0.7}, "resume_cpu_busy (0.8) must be below max_cpu_busy (0.7)"),
        ({"max_loop_lag_ms": 10}, "resume_loop_lag_ms (20) must be below max_loop_lag_ms (10)"),
        ({"max_analysed_calls": 0}, "admission.max_analysed_calls"),
        ({"retry_after_s": 0}, "admission.retry_after_s"),
        ({"enter_after_s": 0.1}, "shorter than sample_interval_s"),
        ({"sample_interval_s": ".nan"}, "admission.sample_interval_s"),
        ({"resume_after_s": -1}, "admission.resume_after_s"),
        ({"max_cpu": 0.9}, "admission.max_cpu"),
        ({"learn_capacity": None}, "admission.learn_capacity"),
        ({"learn_capacity": "maybe"}, "admission.learn_capacity"),
        ({"learn_capacity": [True]}, "admission.learn_capacity"),
    ],
)
def test_hostile_config_is_refused(admission: dict[str, Any], message: str) -> None:
    if admission.get("sample_interval_s") == ".nan":
        admission = {"sample_interval_s": float("nan")}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config({**BASE, "admission": admission})


def test_defaults() -> None:
    a = parse_config(BASE).admission
    assert a.enabled and a.max_cpu_busy == 0.9 and a.max_analysed_calls is None
    assert (
        parse_config({**BASE, "admission": {"max_cpu_busy": None}}).admission.max_cpu_busy is None
    )


# ---- what the API client sees ------------------------------------------------------


def _app(
    tmp_path: Path, admission: dict[str, Any]
) -> tuple[TestClient, CallService, RecordingPool]:
    pool = RecordingPool()
    cfg = parse_config({**BASE, "admission": admission})
    svc = CallService(cfg, SQLiteStore(tmp_path / "s.db"), pool)
    return TestClient(create_app(svc, ["tok"])), svc, pool


def _trigger(client: TestClient) -> Any:
    return client.post(
        "/v1/outbound-calling/trigger", json={"to_number": "+14155550123"}, headers=AUTH
    )


def test_overloaded_node_refuses_and_resumes(tmp_path: Path) -> None:
    """CPU over the threshold (fed as samples): 503 + Retry-After, /readyz 503 naming the
    load, a call queued before is not dialled; calm again: it is dialled, 200s again."""
    client, svc, pool = _app(
        tmp_path,
        # samples are fed by the test: the node's own sampler's first one is 10 s away
        {"retry_after_s": 7, "resume_after_s": 1.0, "enter_after_s": 0, "sample_interval_s": 10},
    )
    with client:
        ac = client.app.state.ops.admission  # type: ignore[attr-defined]

        def feed(t: float, cpu: float) -> None:  # on the app's loop, as the sampler does
            _on_loop(client).call(ac.observe, t, Sample(cpu, 0.0))

        feed(0.0, 0.97)
        assert ac.verdict().overloaded
        r = _trigger(client)
        assert r.status_code == 503 and r.headers["Retry-After"] == "7"
        assert r.json()["error"] == "node overloaded: cpu 97 % busy, over 0.9 for 0.0 s"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "load" in ready.json()["down"]
        assert ready.json()["checks"]["load"].startswith("node overloaded: cpu 97 %")
        # a call queued while overloaded (through the service: the API refuses) waits
        _on_loop(client).call(svc.trigger, _input())
        _on_loop(client).call(svc.dispatch_once)
        assert pool.plans == []
        s = samples(client.get("/metrics").text)
        assert s[("sipbridge_node_overloaded", ())] == 1
        assert s[("sipbridge_admission_refused_total", (("reason", "cpu"),))] == 1
        # calm for resume_after_s: accepted again, and the queued call is dialled
        feed(1.0, 0.85)
        feed(2.0, 0.5)
        assert ac.verdict().overloaded  # in the band, then calm but not for long enough
        feed(3.0, 0.5)
        assert _wait(lambda: len(pool.plans) == 1)
        assert client.get("/readyz").status_code == 200
        assert _trigger(client).status_code == 200
        assert samples(client.get("/metrics").text)[("sipbridge_node_overloaded", ())] == 0


def test_full_node_refuses_at_capacity(tmp_path: Path) -> None:
    client, _svc, pool = _app(tmp_path, {"max_analysed_calls": 1})
    with client:
        assert _trigger(client).status_code == 200
        assert _wait(lambda: len(pool.plans) == 1)  # one carrier leg up: full
        r = _trigger(client)
        assert r.status_code == 503 and r.headers["Retry-After"] == "5"
        assert r.json()["error"] == "node at capacity: analysed calls 1/1"


def test_disabled_never_refuses(tmp_path: Path) -> None:
    client, _svc, _pool = _app(tmp_path, {"enabled": False, "max_analysed_calls": 1})
    with client:
        ac = client.app.state.ops.admission  # type: ignore[attr-defined]
        for i in range(10):
            ac.observe(float(i), Sample(1.0, 10_000.0))
        assert _trigger(client).status_code == 200
        assert _trigger(client).status_code == 200


def _input() -> Any:
    from sipbridge.calls.trigger import TriggerInput

    return TriggerInput(to_number="+14155550124", from_number=None, metadata={})
