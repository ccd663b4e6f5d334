"""API and call-manager behaviour with an in-process pool double (no SIP here: the SIP
paths are covered by tests/integration against SIPp)."""

from __future__ import annotations

import time
from typing import Literal

import pytest
from fastapi.testclient import TestClient

from sipbridge.api import create_app
from sipbridge.calls import CallService
from sipbridge.config import parse_config
from sipbridge.ipc import EndCause, LegEvent, LegState
from sipbridge.store import SQLiteStore
from tests.doubles import RecordingPool

CFG = parse_config(
    {
        "agent": {"uri": "sip:agent@127.0.0.1"},
        "api": {"tokens": [{"value": "tok"}]},
        "trunks": [
            {
                "name": "t1",
                "address": "127.0.0.1:5060",
                "caller_id": "+14155550100",
                "header_templates": {"X-PolyAI-Call-SID": "{call_sid}"},
            }
        ],
        "routes": [{"prefix": "+", "trunk": "t1"}],
    }
)
AUTH = {"X-PolyAi-Auth-Token": "tok"}


@pytest.fixture
def env(tmp_path):
    pool = RecordingPool()
    svc = CallService(CFG, SQLiteStore(tmp_path / "s.db"), pool)
    with TestClient(create_app(svc, ["tok"])) as client:
        yield client, svc, pool


def _wait(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_auth_required(env):
    client, _, _ = env
    r = client.post("/v1/outbound-calling/trigger", json={"to_number": "+14155552671"})
    assert r.status_code == 401 and "X-PolyAi-Auth-Token" in r.json()["error"]
    r = client.post(
        "/v1/outbound-calling/trigger",
        json={"to_number": "+14155552671"},
        headers={"X-PolyAi-Auth-Token": "wrong"},
    )
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"to_number": "12345"}, "to_number"),
        ({"to_number": "+1415"}, "to_number"),
        ({}, "to_number"),
        ({"to_number": "+14155552671", "country_code": "ZZ"}, "country_code"),
        ({"to_number": "+14155552671", "metadata": {"k": 5}}, "metadata.k"),
        ({"to_number": "+14155552671", "metadata": {"bad key": "v"}}, "metadata"),
        ({"to_number": "+14155552671", "metadata": {"k": "x" * 30000}}, "metadata"),
        ({"to_number": "+14155552671", "metadata": {"k": "a\r\nVia: x"}}, "metadata.k"),
        ({"to_number": "+14155552671", "encryption": "ROT13"}, "encryption"),
        ({"to_number": "+14155552671", "encryption": "TLS/SRTP"}, "encryption"),
        ({"to_number": "+14155552671", "bogus": 1}, "bogus"),
    ],
)
def test_trigger_400_names_field(env, body, field):
    client, _, pool = env
    r = client.post("/v1/outbound-calling/trigger", json=body, headers=AUTH)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field, r.json()
    assert pool.plans == []


def test_not_json(env):
    client, _, _ = env
    r = client.post("/v1/outbound-calling/trigger", content=b"{nope", headers=AUTH)
    assert r.status_code == 400


def test_trigger_status_and_history(env):
    client, svc, pool = env
    r = client.post(
        "/v1/outbound-calling/trigger",
        headers=AUTH,
        json={
            "to_number": "(415) 555-2671",
            "country_code": "US",
            "metadata": {"cust": "42"},
            "polyai_call_id": "P-9",
        },
    )
    assert r.status_code == 200
    sid = r.json()["callSid"]
    assert sid.startswith("OUT-")
    assert _wait(lambda: len(pool.plans) == 1)
    plan = pool.plans[0]
    assert plan.request_uri == "sip:+14155552671@127.0.0.1:5060"
    assert ("X-PolyAI-Call-SID", sid) in plan.headers
    # metadata reaches a carrier only where the trunk opts in (metadata_to_carrier)
    assert all(name != "X-cust" for name, _ in plan.headers)
    leg = plan.leg_id
    steps: list[tuple[LegState | Literal["agent"], int, EndCause | None, bool]] = [
        ("trying", 100, None, False),
        ("ringing", 180, None, False),
        ("answered", 200, None, False),
        ("agent", 200, None, False),
        ("ended", 200, "remote_bye", True),
    ]
    for state, status, cause, answered in steps:
        if state == "agent":  # the agent answers: the call is connected
            ev = LegEvent(pool.plans[1].leg_id, sid, "answered", 0, time.time(), 200)
        else:
            ev = LegEvent(leg, sid, state, 0, time.time(), status, "", "cid@x", cause, answered)
        client.portal.call(svc.on_sip_event, ev)  # on the app's event loop thread
    body = client.get(f"/v1/outbound-calling/{sid}/status", headers=AUTH).json()
    assert body["status"] == "success" and body["reason"] == ""
    assert [e["kind"] for e in body["events"]] == [
        "status",
        "status",
        "carrier.trying",
        "carrier.ringing",
        "carrier.answered",
        "agent.dial",
        "agent.answered",
        "carrier.ended",
        "status",
    ]
    agent_plan = pool.plans[1]
    assert (agent_plan.role, agent_plan.bridge_with) == ("agent", leg)
    assert ("X-PolyAI-Call-ID", "P-9") in agent_plan.headers
    assert [e["data"]["to"] for e in body["events"] if e["kind"] == "status"] == [
        "queued",
        "calling",
        "success",
    ]
    assert body["legs"][leg]["sip_call_id"] == "cid@x"
    assert (
        client.get("/v1/outbound-calling/by-polyai-call-id/P-9", headers=AUTH).json()["callSid"]
        == sid
    )
    # terminal status never changes: hangup of an ended call leaves it as is
    r = client.post(f"/v1/outbound-calling/{sid}/hangup", headers=AUTH)
    assert r.json()["status"] == "success"


def test_busy_maps_to_failure(env):
    client, svc, pool = env
    sid = client.post(
        "/v1/outbound-calling/trigger", headers=AUTH, json={"to_number": "+14155552671"}
    ).json()["callSid"]
    assert _wait(lambda: len(pool.plans) == 1)
    client.portal.call(
        svc.on_sip_event,
        LegEvent(
            pool.plans[0].leg_id,
            sid,
            "ended",
            0,
            time.time(),
            486,
            "Busy Here",
            "",
            "remote_final",
            False,
        ),
    )
    body = client.get(f"/v1/outbound-calling/{sid}/status", headers=AUTH).json()
    assert (body["status"], body["reason"], body["sip_status"]) == ("failure", "busy", 486)


def test_hangup_queued_call_cancels_without_dialling(tmp_path):
    pool = RecordingPool(slots=0)
    svc = CallService(CFG, SQLiteStore(tmp_path / "s.db"), pool)
    with TestClient(create_app(svc, ["tok"])) as client:
        sid = client.post(
            "/v1/outbound-calling/trigger", headers=AUTH, json={"to_number": "+14155552671"}
        ).json()["callSid"]
        assert (
            client.get(f"/v1/outbound-calling/{sid}/status", headers=AUTH).json()["status"]
            == "queued"
        )
        r = client.post(f"/v1/outbound-calling/{sid}/hangup", headers=AUTH)
        assert (r.json()["status"], r.json()["reason"]) == ("failure", "canceled")
    assert pool.plans == []


def test_sid_errors(env):
    client, _, _ = env
    assert client.get("/v1/outbound-calling/nope/status", headers=AUTH).status_code == 400
    r = client.get(
        "/v1/outbound-calling/OUT-3fa85f64-5717-4562-b3fc-2c963f66afa6/status", headers=AUTH
    )
    assert r.status_code == 404


def test_restart_marks_in_flight_calls_and_keeps_queued(tmp_path):
    db = tmp_path / "s.db"
    pool = RecordingPool(slots=1)
    svc = CallService(CFG, SQLiteStore(db), pool)
    with TestClient(create_app(svc, ["tok"])) as client:
        a = client.post(
            "/v1/outbound-calling/trigger", headers=AUTH, json={"to_number": "+14155552671"}
        ).json()["callSid"]
        assert _wait(lambda: len(pool.plans) == 1)
        b = client.post(
            "/v1/outbound-calling/trigger", headers=AUTH, json={"to_number": "+14155552672"}
        ).json()["callSid"]
    pool2 = RecordingPool(slots=0)
    svc2 = CallService(CFG, SQLiteStore(db), pool2)
    with TestClient(create_app(svc2, ["tok"])) as client:
        ra = client.get(f"/v1/outbound-calling/{a}/status", headers=AUTH).json()
        rb = client.get(f"/v1/outbound-calling/{b}/status", headers=AUTH).json()
    assert (ra["status"], ra["reason"]) == ("failure", "bridge restarted")
    assert rb["status"] == "queued"


def test_openapi_published(env):
    client, _, _ = env
    spec = client.get("/openapi.json").json()
    assert "/v1/outbound-calling/trigger" in spec["paths"]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"digits": "12x"}, "digits", "'x' at position 2"),
        ({"digits": ""}, "digits", "empty"),
        ({"digits": "1", "duration_ms": 5}, "duration_ms", "greater than or equal"),
    ],
)
def test_dtmf_400_names_the_problem(env, body, field, words):
    client, _, _ = env
    sid = client.post(
        "/v1/outbound-calling/trigger", headers=AUTH, json={"to_number": "+14155552671"}
    ).json()["callSid"]
    r = client.post(f"/v1/outbound-calling/{sid}/dtmf", headers=AUTH, json=body)
    assert r.status_code == 400 and r.json()["field"] == field and words in r.json()["error"]


def test_dtmf_on_unanswered_call_is_409(env):
    client, _, _ = env
    sid = client.post(
        "/v1/outbound-calling/trigger", headers=AUTH, json={"to_number": "+14155552671"}
    ).json()["callSid"]
    r = client.post(f"/v1/outbound-calling/{sid}/dtmf", headers=AUTH, json={"digits": "1"})
    assert r.status_code == 409 and "no answered carrier leg" in r.json()["error"]


def test_trigger_shortcuts_fold_into_settings(env):
    client, svc, _ = env
    r = client.post(
        "/v1/outbound-calling/trigger",
        headers=AUTH,
        json={"to_number": "+14155552671", "send_digits": "1w2", "voicemail_action": "hangup"},
    )
    rec = svc.get(r.json()["callSid"])[0]
    assert rec.request.ivr is not None and rec.request.ivr.send_digits == "1w2"
    assert rec.request.detection is not None
    assert rec.request.detection.machine_action == "hangup"
    r = client.post(
        "/v1/outbound-calling/trigger",
        headers=AUTH,
        json={"to_number": "+14155552671", "send_digits": "9z"},
    )
    assert r.status_code == 400 and "'z'" in r.json()["error"]
    r = client.post(
        "/v1/outbound-calling/trigger",
        headers=AUTH,
        json={"to_number": "+14155552671", "voicemail_action": "leave_message"},
    )
    assert r.status_code == 400 and "connect_on" in r.json()["error"]
