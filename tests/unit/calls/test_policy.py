"""A call's policy (sipbridge/calls/policy.py) is resolved once per call and kept typed:
the route is chosen once however many hops, answers and retries follow; per-call
settings win over the route's, the route's over the global ones; a window whose time
zone cannot be known is refused at trigger time with a 400 naming ``timezone``."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from sipbridge import routing
from sipbridge.api import create_app
from sipbridge.calls import policy as policy_module
from sipbridge.calls.policy import resolve_policy
from sipbridge.callsettings import DetectionSettings, RetryConfig
from sipbridge.errors import RoutingError
from sipbridge.records import CallRequest
from tests.doubles import CallHarness
from tests.doubles import call_config as cfg

WINDOWED = {
    "routes": [{"prefix": "+", "trunk": "a", "window": {"days": "mon-fri", "hours": "09:00-17:00"}}]
}


def test_route_chosen_once_per_call(tmp_path, monkeypatch):
    calls: list[str] = []

    def counting(config, e164):
        calls.append(e164)
        return routing.choose_route(config, e164)

    monkeypatch.setattr(policy_module, "choose_route", counting)
    h = CallHarness(tmp_path, cfg(retry={"max_attempts": 2, "base_s": 1, "jitter": 0}))
    sid, plan = h.dial()
    h.end(plan, 503)  # failover hop
    h.svc.dispatch_once()
    hop2 = h.pool.plans[-1]
    h.end(hop2, 486)  # busy: retried
    h.clock.advance(2)
    h.svc.dispatch_once()
    retry = h.pool.plans[-1]
    h.connect(retry)
    h.end(retry, 200, "remote_bye", answered=True)
    assert h.rec(sid).status == "success" and len(h.pool.plans) == 4
    assert calls == ["+12125550123"]


def test_per_call_settings_win():
    config = cfg(retry={"max_attempts": 2}, detection={"connect_on": "human"})
    base = resolve_policy(config, "+12125550123", CallRequest())
    assert (base.retry.max_attempts, base.detection.connect_on) == (2, "human")
    assert base.trunks == ["a", "b"] and base.window is None
    own = resolve_policy(
        config,
        "+12125550123",
        CallRequest(
            retry=RetryConfig(max_attempts=5),
            detection=DetectionSettings(early_media=False, answer=False),
        ),
    )
    assert own.retry.max_attempts == 5 and own.detection_plan() is None


def test_encryption_filters_the_trunks():
    config = cfg(
        trunks=[
            {"name": "a", "address": "127.0.0.1:5061", "caller_id": "+14155550100"},
            {
                "name": "b",
                "address": "127.0.0.1:5062",
                "caller_id": "+14155550101",
                "transport": "tls",
                "encryption": "TLS/SRTP",
            },
        ]
    )
    pol = resolve_policy(config, "+12125550123", CallRequest(encryption="TLS/SRTP"))
    assert pol.trunks == ["b"]


def test_unknown_zone_under_a_window_is_a_400(tmp_path):
    """+800 (international freephone) has no time zone: the trigger used to answer 500."""
    h = CallHarness(tmp_path, cfg(**WINDOWED))
    with pytest.raises(RoutingError) as ei:
        h.trigger("+80012345678")
    assert ei.value.field == "timezone"
    assert h.trigger("+80012345678", timezone="Europe/Paris")
    with TestClient(create_app(h.svc, ["tok"])) as client:
        r = client.post(
            "/v1/outbound-calling/trigger",
            headers={"X-PolyAi-Auth-Token": "tok"},
            json={"to_number": "+80012345678"},
        )
    assert r.status_code == 400 and r.json()["field"] == "timezone", r.text
    assert "time zone of +80012345678 is unknown" in r.json()["error"]
