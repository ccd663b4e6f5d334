"""Operations: metrics, status callbacks (against a real local HTTP receiver), CDRs and
their export, JSON logs, readiness and draining. The SIP side is an in-process double;
tests/integration/test_operations.py does the same against SIPp."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from anyio.from_thread import BlockingPortal
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sipbridge.api import create_app
from sipbridge.calls import CallService
from sipbridge.cdr import build_cdr, export, parse_time
from sipbridge.cli import main
from sipbridge.config import WebhookConfig, parse_config
from sipbridge.ipc import DetectionReport, EndCause, LegEvent, LegState
from sipbridge.logfmt import JsonFormatter
from sipbridge.media.result import AnsweredBy
from sipbridge.records import CallRecord, LegRecord, OutboxMessage
from sipbridge.store import SQLiteStore
from sipbridge.webhooks import WebhookDispatcher, sign, verify
from tests.doubles import RecordingPool, detection
from tests.unit.test_api import AUTH, _wait
from tests.webhook_receiver import Receiver

BASE: dict[str, Any] = {
    "agent": {"uri": "sip:agent@127.0.0.1"},
    "api": {"tokens": [{"value": "tok"}]},
    "trunks": [{"name": "t1", "address": "127.0.0.1:5060", "caller_id": "+14155550100"}],
    "routes": [{"prefix": "+", "trunk": "t1"}],
}
SECRET = "whsec-test"


def _cfg(**extra: Any) -> Any:
    return parse_config({**BASE, **extra})


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _trigger(client: TestClient, **body: Any) -> str:
    r = client.post(
        "/v1/outbound-calling/trigger", headers=AUTH, json={"to_number": "+14155552671", **body}
    )
    assert r.status_code == 200, r.text
    sid: str = r.json()["callSid"]
    return sid


def _on_loop(client: TestClient) -> BlockingPortal:
    """The portal to the app's event loop (set while the client is open)."""
    assert client.portal is not None
    return client.portal


def _answer_then_bye(
    client: TestClient,
    svc: CallService,
    leg: str,
    sid: str,
    answered_by: AnsweredBy | None = "human",
) -> None:
    t0 = time.time()
    steps: list[tuple[LegState, int, EndCause | None, bool]] = [
        ("trying", 100, None, False),
        ("ringing", 180, None, False),
        ("answered", 200, None, False),
    ]
    for state, code, cause, answered in steps:
        _on_loop(client).call(
            svc.on_sip_event, LegEvent(leg, sid, state, 0, t0, code, "", "cid-1@x", cause, answered)
        )
    if answered_by:
        det = detection(answered_by, decided_at_ms=900, final=True)
        _on_loop(client).call(
            svc.on_sip_event, DetectionReport(leg, sid, 0, t0, "answer", "decision", det)
        )
    # the agent answers (a success needs the agent connected)
    assert isinstance(svc.pool, RecordingPool)
    agent = next(p for p in reversed(svc.pool.plans) if p.bridge_with == leg)
    _on_loop(client).call(svc.on_sip_event, LegEvent(agent.leg_id, sid, "answered", 0, t0, 200))
    _on_loop(client).call(
        svc.on_sip_event,
        LegEvent(leg, sid, "ended", 0, time.time(), 200, "", "cid-1@x", "remote_bye", True),
    )


@pytest.fixture
def app_env(tmp_path: Path) -> Any:
    pool = RecordingPool()
    svc = CallService(_cfg(), SQLiteStore(tmp_path / "s.db"), pool)
    with TestClient(create_app(svc, ["tok"])) as client:
        yield client, svc, pool


# ---- metrics ------------------------------------------------------------------------


def test_metrics_after_a_call(app_env: Any) -> None:
    client, svc, pool = app_env
    sid = _trigger(client)
    assert _wait(lambda: len(pool.plans) == 1)
    _answer_then_bye(client, svc, pool.plans[0].leg_id, sid)
    client.get(f"/v1/outbound-calling/{sid}/status", headers=AUTH)
    r = client.get("/metrics")  # no auth
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    s = samples(r.text)
    assert (
        s[
            (
                "sipbridge_calls_total",
                (("answered_by", "human"), ("hint", ""), ("reason", ""), ("status", "success")),
            )
        ]
        == 1
    )
    assert s[("sipbridge_sip_responses_total", (("code", "180"), ("trunk", "t1")))] == 1
    # the 200 of the answer, not again for the BYE-ended leg
    assert s[("sipbridge_sip_responses_total", (("code", "200"), ("trunk", "t1")))] == 1
    assert s[("sipbridge_dials_total", (("trunk", "t1"),))] == 1
    assert s[("sipbridge_post_dial_delay_seconds_count", (("trunk", "t1"),))] == 1
    assert s[
        (
            "sipbridge_detection_latency_seconds_sum",
            (("answered_by", "human"), ("hint", ""), ("phase", "answer")),
        )
    ] == pytest.approx(0.9)
    assert s[("sipbridge_active_calls", (("trunk", "t1"),))] == 0
    assert s[("sipbridge_queued_calls", ())] == 0
    assert ("sipbridge_sip_free_slots", ()) in s  # the double never frees its slots
    assert (
        s[
            (
                "sipbridge_api_requests_total",
                (
                    ("code", "200"),
                    ("method", "GET"),
                    ("route", "/v1/outbound-calling/{call_sid}/status"),
                ),
            )
        ]
        == 1
    )
    assert (
        s[
            (
                "sipbridge_api_requests_total",
                (("code", "200"), ("method", "POST"), ("route", "/v1/outbound-calling/trigger")),
            )
        ]
        == 1
    )
    assert s[("sipbridge_cdrs_written_total", ())] == 1
    assert not any(sid in str(k) for k in s)  # no call IDs as label values


def test_trunk_throttling_metrics(tmp_path: Path) -> None:
    """A carrier pushback counts once per trunk and the allowed rate drops by the
    trunk's throttle factor (README "Carrier profiles")."""
    trunks = [
        {**BASE["trunks"][0], "cps": 4, "throttle": {"factor": 0.5, "recover_s": 600}},
        {"name": "t2", "address": "127.0.0.2:5060", "caller_id": "+14155550100"},
    ]
    svc = CallService(_cfg(trunks=trunks), SQLiteStore(tmp_path / "s.db"), RecordingPool())
    with TestClient(create_app(svc, ["tok"])) as client:
        s = samples(client.get("/metrics").text)
        assert s[("sipbridge_trunk_throttled_total", (("trunk", "t1"),))] == 0
        assert s[("sipbridge_trunk_dial_rate_cps", (("trunk", "t1"),))] == 4
        assert ("sipbridge_trunk_dial_rate_cps", (("trunk", "t2"),)) not in s  # no cps
        # the edge's own CPS backstop answer, then the callee refusing (not pushback)
        assert svc.dispatcher.leg_ended("t1", 503, 1.0, "Trunk CPS limit at the edge")
        assert not svc.dispatcher.leg_ended("t1", 486, None, "Busy Here")
        s = samples(client.get("/metrics").text)
    assert s[("sipbridge_trunk_throttled_total", (("trunk", "t1"),))] == 1
    assert s[("sipbridge_trunk_dial_rate_cps", (("trunk", "t1"),))] == 2
    assert s[("sipbridge_trunk_throttled_total", (("trunk", "t2"),))] == 0


def test_metrics_count_failures_queue_and_bad_requests(tmp_path: Path) -> None:
    pool = RecordingPool(slots=0)  # nothing dials: calls stay queued
    svc = CallService(_cfg(), SQLiteStore(tmp_path / "s.db"), pool)
    # two apps in one process: each has its own registry
    create_app(CallService(_cfg(), SQLiteStore(tmp_path / "o.db"), RecordingPool()), ["tok"])
    with TestClient(create_app(svc, ["tok"])) as client:
        a, _b = _trigger(client), _trigger(client)
        client.post(f"/v1/outbound-calling/{a}/hangup", headers=AUTH)
        client.post("/v1/outbound-calling/trigger", headers=AUTH, json={"to_number": "x"})
        client.get("/nope")
        s = samples(client.get("/metrics").text)
    assert s[("sipbridge_queued_calls", ())] == 1
    assert (
        s[
            (
                "sipbridge_calls_total",
                (("answered_by", ""), ("hint", ""), ("reason", "canceled"), ("status", "failure")),
            )
        ]
        == 1
    )
    assert (
        s[
            (
                "sipbridge_api_requests_total",
                (("code", "400"), ("method", "POST"), ("route", "/v1/outbound-calling/trigger")),
            )
        ]
        == 1
    )
    assert (
        s[
            (
                "sipbridge_api_requests_total",
                (("code", "404"), ("method", "GET"), ("route", "unmatched")),
            )
        ]
        == 1
    )


# ---- status callbacks ---------------------------------------------------------------


def test_sign_and_verify() -> None:
    body = b'{"callSid":"OUT-1","status":"queued"}'
    sig = sign(SECRET, "1700000000", body)
    assert sig.startswith("v1=") and len(sig) == 3 + 64
    assert verify(SECRET, "1700000000", body, sig, now=1700000010)
    assert not verify(SECRET, "1700000000", body + b" ", sig, now=1700000010)
    assert not verify("other", "1700000000", body, sig, now=1700000010)
    assert not verify(SECRET, "1700000000", body, sig, now=1700009999)  # too old
    assert not verify(SECRET, "nan", body, sig)


def test_webhook_retried_after_500_and_signed() -> None:
    # the receiver is on 127.0.0.1: loopback targets must be allowed explicitly
    cfg = WebhookConfig(
        secret={"value": SECRET},  # type: ignore[arg-type]
        backoff_s=0.2,
        max_attempts=3,
        allow_private=True,
    )
    results: list[str] = []

    async def run(url: str) -> bool:
        wh = WebhookDispatcher(cfg, lambda rec: {}, on_result=results.append)
        await wh.start()
        try:
            return await wh.deliver(
                OutboxMessage("d-1", "OUT-x", "calling", url, b'{"status":"calling"}', 0.0)
            )
        finally:
            await wh.stop()

    with Receiver(fail_first=[500]) as rx:
        assert asyncio.run(run(rx.url)) is True
        first, second = rx.requests
    assert (first.answered, second.answered) == (500, 200)
    assert second.at - first.at >= 0.2  # backoff
    for r in (first, second):
        assert r.headers["content-type"] == "application/json"
        assert verify(
            SECRET, r.headers["x-sipbridge-timestamp"], r.body, r.headers["x-sipbridge-signature"]
        )
    assert second.headers["x-sipbridge-attempt"] == "2"
    assert first.headers["x-sipbridge-delivery"] == second.headers["x-sipbridge-delivery"]
    assert results == ["retried", "delivered"]


def test_webhook_gives_up_on_connection_errors() -> None:
    import socket

    from sipbridge.devtools.ports import free_port

    port = free_port(socket.SOCK_STREAM)  # nothing listens there
    cfg = WebhookConfig(backoff_s=0.05, max_attempts=3, allow_cidrs=["127.0.0.0/8"])
    results: list[str] = []

    async def run() -> bool:
        wh = WebhookDispatcher(cfg, lambda rec: {}, on_result=results.append)
        await wh.start()
        try:
            return await wh.deliver(
                OutboxMessage("d", "OUT-x", "queued", f"http://127.0.0.1:{port}/", b"{}", 0.0)
            )
        finally:
            await wh.stop(flush_s=0)

    assert asyncio.run(run()) is False
    assert results == ["retried", "retried", "failed"]


def test_status_callbacks_from_the_app(tmp_path: Path) -> None:
    with Receiver(fail_first=[500]) as rx:
        cfg = _cfg(webhooks={"secret": {"value": SECRET}, "backoff_s": 0.1, "allow_private": True})
        pool = RecordingPool()
        svc = CallService(cfg, SQLiteStore(tmp_path / "s.db"), pool)
        with TestClient(create_app(svc, ["tok"])) as client:
            sid = _trigger(client, status_callback=rx.url)
            assert _wait(lambda: len(pool.plans) == 1)
            _answer_then_bye(client, svc, pool.plans[0].leg_id, sid)
            got = rx.wait(lambda rs: len(rs) == 3)
        assert rx.requests[0].answered == 500  # the first try of "queued", then retried
    bodies = [r.json() for r in got]
    assert [b["status"] for b in bodies] == ["queued", "calling", "success"]
    assert all(b["callSid"] == sid and "events" not in b for b in bodies)
    for r in got:
        assert verify(
            SECRET, r.headers["x-sipbridge-timestamp"], r.body, r.headers["x-sipbridge-signature"]
        )


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "not a url", "http://", "https://exa mple.com/"]
)
def test_bad_status_callback_is_400(app_env: Any, url: str) -> None:
    client, _, _ = app_env
    r = client.post(
        "/v1/outbound-calling/trigger",
        headers=AUTH,
        json={"to_number": "+14155552671", "status_callback": url},
    )
    assert r.status_code == 400 and r.json()["field"] == "status_callback", r.text


def test_webhook_config_url_checked() -> None:
    from sipbridge.config import ConfigError

    with pytest.raises(ConfigError, match=r"webhooks\.url"):
        _cfg(webhooks={"url": "ftp://x"})


# ---- CDRs ---------------------------------------------------------------------------


def _rec(**kw: Any) -> CallRecord:
    base: dict[str, Any] = dict(
        call_sid="OUT-a",
        status="success",
        to_number="+14155552671",
        from_number="+14155550100",
        created_at=100.0,
        last_updated=130.0,
        trunk="t2",
        attempts=1,
        answered_by="machine",
        polyai_call_id="P-1",
        legs={
            "l1": LegRecord(
                trunk="t1",
                attempt=1,
                invite_at=101.0,
                sip_call_id="c1@x",
                ended_at=101.5,
                sip_status=503,
                cause="remote_final",
            ),
            "l2": LegRecord(
                trunk="t2",
                attempt=1,
                invite_at=102.0,
                ring_at=103.25,
                answered_at=105.0,
                ended_at=125.5,
                sip_call_id="c2@x",
                sip_status=200,
                cause="remote_bye",
            ),
            "l0": LegRecord(trunk="t1", attempt=0, invite_at=1.0),
        },
    )
    base.update(kw)
    return CallRecord(**base)


def test_build_cdr_covers_the_attempts_legs() -> None:
    cdr = build_cdr(_rec(), 1, "success", "", 126.0)
    assert cdr["trunk"] == "t2" and cdr["trunks"] == ["t1", "t2"]
    assert cdr["sip_call_ids"] == ["c1@x", "c2@x"]
    assert (cdr["invite_at"], cdr["ring_at"], cdr["answered_at"], cdr["ended_at"]) == (
        102.0,
        103.25,
        105.0,
        125.5,
    )
    assert (cdr["pdd_ms"], cdr["duration_s"], cdr["sip_status"]) == (1250, 20.5, 200)
    assert (cdr["answered_by"], cdr["result"], cdr["polyai_call_id"]) == (
        "machine",
        "success",
        "P-1",
    )
    busy = build_cdr(
        _rec(
            legs={
                "l": LegRecord(trunk="t1", attempt=1, invite_at=5.0, ended_at=5.2, sip_status=486)
            }
        ),
        1,
        "failure",
        "busy",
        6.0,
    )
    assert (busy["duration_s"], busy["pdd_ms"], busy["answered_by"], busy["reason"]) == (
        0.0,
        None,
        None,
        "busy",
    )


def test_cdr_store_and_export(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    store.add_cdr(build_cdr(_rec(), 1, "success", "", 126.0))
    store.add_cdr(build_cdr(_rec(call_sid="OUT-b", legs={}), 1, "failure", "busy", 500.0))
    assert [c["call_sid"] for c in store.cdrs(0)] == ["OUT-a", "OUT-b"]
    assert [c["call_sid"] for c in store.cdrs(200.0)] == ["OUT-b"]
    assert store.cdrs(0, 125.5) == []
    rows = list(csv.DictReader(io.StringIO(export(store.cdrs(0), "csv"))))
    assert rows[0]["trunks"] == "t1 t2" and rows[0]["pdd_ms"] == "1250"
    assert rows[0]["answered_at"] == "1970-01-01T00:01:45.000Z"
    assert rows[1]["invite_at"] == "" and rows[1]["reason"] == "busy"
    lines = [json.loads(x) for x in export(store.cdrs(0), "jsonl").splitlines()]
    assert lines[0]["sip_call_ids"] == ["c1@x", "c2@x"] and lines[1]["ring_at"] is None
    store.close()


def test_cdrs_written_per_attempt_and_cli_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "s.db"
    pool = RecordingPool()
    cfg_data = {
        **BASE,
        "store": {"path": str(db)},
        "retry": {"max_attempts": 2, "retry_on": ["busy"], "base_s": 0.01, "jitter": 0.0},
    }
    svc = CallService(parse_config(cfg_data), SQLiteStore(db), pool)
    with TestClient(create_app(svc, ["tok"])) as client:
        sid = _trigger(client)
        assert _wait(lambda: len(pool.plans) == 1)
        _on_loop(client).call(
            svc.on_sip_event,
            LegEvent(
                pool.plans[0].leg_id,
                sid,
                "ended",
                0,
                time.time(),
                486,
                "Busy Here",
                "b@x",
                "remote_final",
                False,
            ),
        )
        assert _wait(lambda: len(pool.plans) == 2)
        _answer_then_bye(client, svc, pool.plans[1].leg_id, sid)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg_data))
    rc = main(["cdr", "-c", str(cfg_file), "--since", "2000-01-01", "--format", "jsonl"])
    out = capsys.readouterr()
    assert rc == 0 and "2 CDRs" in out.err
    cdrs = [json.loads(x) for x in out.out.splitlines()]
    assert [(c["attempt"], c["result"], c["reason"], c["sip_status"]) for c in cdrs] == [
        (1, "queued", "busy; attempt 2 of 2 at " + cdrs[0]["reason"].split(" at ")[1], 486),
        (2, "success", "", 200),
    ]
    assert cdrs[0]["sip_call_ids"] == ["b@x"] and cdrs[1]["answered_by"] == "human"
    out_file = tmp_path / "cdr.csv"
    assert (
        main(
            [
                "cdr",
                "-c",
                str(cfg_file),
                "--since",
                "2000-01-01T00:00:00Z",
                "--until",
                "2999-01-01",
                "-o",
                str(out_file),
            ]
        )
        == 0
    )
    assert len(list(csv.DictReader(out_file.open()))) == 2
    assert main(["cdr", "-c", str(cfg_file), "--since", "yesterday"]) == 2
    assert "not an ISO 8601" in capsys.readouterr().err


def test_parse_time() -> None:
    assert parse_time("1970-01-01T00:01:00Z") == 60.0
    assert parse_time("1970-01-01T01:01:00+01:00") == 60.0
    assert parse_time("1970-01-02") == 86400.0


# ---- logs ---------------------------------------------------------------------------


def test_json_log_lines() -> None:
    fmt = JsonFormatter()
    rec = logging.LogRecord(
        "sipbridge.calls",
        logging.INFO,
        __file__,
        1,
        "%s: %s -> %s",
        ("OUT-1", "queued", "calling"),
        None,
    )
    rec.call_sid = "OUT-1"
    line = json.loads(fmt.format(rec))
    assert line["level"] == "INFO" and line["logger"] == "sipbridge.calls"
    assert line["msg"] == "OUT-1: queued -> calling" and line["call_sid"] == "OUT-1"
    assert line["ts"].endswith("Z")
    try:
        raise ValueError("boom\nline 2")
    except ValueError:
        err = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    out = fmt.format(err)
    assert "\n" not in out and "boom" in json.loads(out)["exc"]
    assert "call_sid" not in json.loads(out)


# ---- readiness and draining ---------------------------------------------------------


def test_readyz(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    svc = CallService(_cfg(), store, RecordingPool(slots=0))
    with TestClient(create_app(svc, ["tok"])) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["down"] == ["sip_pool"]
    svc2 = CallService(_cfg(), SQLiteStore(tmp_path / "t.db"), RecordingPool())
    with TestClient(create_app(svc2, ["tok"])) as client:
        r = client.get("/readyz")
        assert r.status_code == 200 and r.json()["status"] == "ok"
        svc2.store.close()
        r = client.get("/readyz")
        assert r.status_code == 503 and "store" in r.json()["error"]
        svc2.store = SQLiteStore(tmp_path / "t.db")


def test_drain_refuses_triggers_and_waits_for_live_calls(tmp_path: Path) -> None:
    pool = RecordingPool()
    svc = CallService(_cfg(), SQLiteStore(tmp_path / "s.db"), pool)
    app = create_app(svc, ["tok"])
    with TestClient(app) as client:
        sid = _trigger(client)
        assert _wait(lambda: len(pool.plans) == 1)
        ops = app.state.ops
        t0 = time.monotonic()
        left = _on_loop(client).call(ops.drain, 0.3)  # the call is still up: grace runs out
        assert left is None and time.monotonic() - t0 >= 0.3
        r = client.post(
            "/v1/outbound-calling/trigger", headers=AUTH, json={"to_number": "+14155552672"}
        )
        assert r.status_code == 503 and r.headers["Retry-After"] == "30"
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200
        _answer_then_bye(client, svc, pool.plans[0].leg_id, sid)
        assert _on_loop(client).call(svc.drain, 5.0) == 0
        assert (
            client.get(f"/v1/outbound-calling/{sid}/status", headers=AUTH).json()["status"]
            == "success"
        )


def test_drain_keeps_queued_calls_queued(tmp_path: Path) -> None:
    pool = RecordingPool(slots=1)
    svc = CallService(_cfg(), SQLiteStore(tmp_path / "s.db"), pool)
    with TestClient(create_app(svc, ["tok"])) as client:
        first = _trigger(client)
        assert _wait(lambda: len(pool.plans) == 1)
        second = _trigger(client)

        async def drain_then_end() -> int:
            task = asyncio.create_task(svc.drain(5.0))
            await asyncio.sleep(0.1)
            svc.on_sip_event(
                LegEvent(
                    pool.plans[0].leg_id,
                    first,
                    "ended",
                    0,
                    time.time(),
                    486,
                    "Busy",
                    "",
                    "remote_final",
                    False,
                )
            )
            return await task

        assert _on_loop(client).call(drain_then_end) == 0
        time.sleep(0.2)
        assert len(pool.plans) == 1  # the freed slot was not used
        assert (
            client.get(f"/v1/outbound-calling/{second}/status", headers=AUTH).json()["status"]
            == "queued"
        )
