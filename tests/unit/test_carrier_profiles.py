"""Carrier profiles (sipbridge.carrier): the shipped examples pass check-config, the
identity headers and URI forms each setting produces, and the bounds a bad profile hits."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipbridge.carrier import CallerIdentity, dialled_user, identity_headers
from sipbridge.cli import main
from sipbridge.config import ConfigError, parse_config
from sipbridge.routing import resolve_plan

CARRIERS = Path(__file__).parents[2] / "config" / "carriers"
SECRETS = (
    "SIPBRIDGE_API_TOKEN",
    "TWILIO_SIP_PASSWORD",
    "TELNYX_SIP_PASSWORD",
    "VONAGE_API_SECRET",
    "PLIVO_SIP_PASSWORD",
)


def _cfg(**trunk):
    return parse_config(
        {
            "agent": {"uri": "sip:agent@127.0.0.1:5070"},
            "api": {"tokens": [{"value": "secret"}]},
            "trunks": [
                {
                    "name": "t1",
                    "address": "carrier.example:5060",
                    "caller_id": "+14155550100",
                    **trunk,
                }
            ],
            "routes": [{"prefix": "+1", "trunk": "t1"}],
        }
    )


def _plan(**trunk):
    return resolve_plan(
        _cfg(**trunk),
        call_sid="CA1",
        to_number="+12125550123",
        from_number="+14155550100",
        metadata={},
        polyai_call_id=None,
        attempt=1,
        bridge_host="198.51.100.1",
    )


@pytest.mark.parametrize("carrier", ["twilio", "telnyx", "vonage", "bandwidth", "plivo"])
def test_shipped_carrier_profile_passes_check_config(carrier, monkeypatch, capsys):
    for name in SECRETS:
        monkeypatch.setenv(name, "x")
    path = CARRIERS / f"{carrier}.yaml"
    assert main(["check-config", str(path)]) == 0, capsys.readouterr().err
    text = path.read_text()
    # Each profile documents what the carrier requires.
    for topic in ("Request-URI", "Caller ID", "Authentication", "Ports", "CPS", "Codecs"):
        assert topic in text, (carrier, topic)


def test_twilio_profile_dials_one_call_per_second(monkeypatch):
    from sipbridge.config import load_config

    for name in SECRETS:
        monkeypatch.setenv(name, "x")
    trunk = load_config(CARRIERS / "twilio.yaml").trunks[0]
    assert (trunk.cps, trunk.cps_burst) == (1, 1)


def test_default_trunk_keeps_the_plain_invite():
    plan = _plan()
    assert plan.request_uri == "sip:+12125550123@carrier.example:5060"
    assert plan.from_uri == "<sip:+14155550100@198.51.100.1>"
    assert plan.headers == ()
    assert plan.codecs == () and plan.session_timers is None
    assert plan.telephone_event_pt == 101


def test_full_identity_profile():
    plan = _plan(
        from_domain="pbx.example",
        identity={
            "display_name": "Clinic",
            "user_phone": True,
            "tech_prefix": "99#",
            "p_asserted_identity": True,
            "p_preferred_identity": True,
            "remote_party_id": True,
            "privacy_id": True,
            "diversion": "+14155550199",
            "diversion_reason": "no-answer",
        },
    )
    assert plan.request_uri == "sip:99%23+12125550123@carrier.example:5060;user=phone"
    assert plan.to_uri == "<sip:99%23+12125550123@carrier.example:5060;user=phone>"
    me = '"Clinic" <sip:+14155550100@pbx.example;user=phone>'
    assert plan.from_uri == me
    assert dict(plan.headers) == {
        "P-Asserted-Identity": me,
        "P-Preferred-Identity": me,
        "Remote-Party-ID": me + ";party=calling;screen=yes;privacy=full",
        "Privacy": "id",
        "Diversion": "<sip:+14155550199@pbx.example;user=phone>;reason=no-answer;counters=1",
    }


def test_digits_format_and_tls_transport_param_after_user_phone():
    plan = _plan(transport="tcp", identity={"number_format": "digits", "user_phone": True})
    assert plan.request_uri == "sip:12125550123@carrier.example:5060;user=phone;transport=tcp"
    assert plan.from_uri == "<sip:14155550100@198.51.100.1;user=phone>"


def test_codecs_and_session_timers_reach_the_plan():
    plan = _plan(codecs=["G722", "PCMA"], telephone_event_pt=96, session_expires_s=300)
    assert plan.codecs == ("G722/16000", "PCMA/8000")
    assert plan.telephone_event_pt == 96
    assert plan.session_timers == (300, 90)


@pytest.mark.parametrize(
    ("trunk", "words"),
    [
        ({"codecs": ["PCMU", "PCMU"]}, "listed twice"),
        ({"codecs": ["G729"]}, "codecs.0"),
        ({"codecs": []}, "codecs"),
        ({"telephone_event_pt": 95}, "telephone_event_pt"),
        ({"telephone_event_pt": 128}, "telephone_event_pt"),
        ({"session_expires_s": 100, "min_se_s": 200}, "min_se_s"),
        ({"session_expires_s": 30}, "session_expires_s"),
        ({"identity": {"tech_prefix": "12a"}}, "tech_prefix"),
        ({"identity": {"display_name": 'A "quoted" name'}}, "display_name"),
        ({"identity": {"display_name": "line\r\nX-Evil: 1"}}, "display_name"),
        ({"identity": {"diversion": "sip:x@y"}}, "diversion"),
        ({"identity": {"diversion_reason": "because"}}, "diversion_reason"),
        ({"identity": {"pai": True}}, "pai"),
        ({"headers": {"P-Asserted-Identity": "<sip:x@y>"}}, "identity"),
        ({"health_check": {"interval_s": 5, "timeout_s": 5}}, "timeout_s"),
        ({"health_check": {"failures_to_down": 0}}, "failures_to_down"),
        ({"throttle": {"factor": 1.5}}, "factor"),
    ],
)
def test_bad_profile_is_refused_naming_the_key(trunk, words):
    with pytest.raises(ConfigError) as e:
        _cfg(**trunk)
    assert "trunks.0" in str(e.value) and words in str(e.value), str(e.value)


@given(
    prefix=st.from_regex(r"[0-9*#]{1,16}", fullmatch=True),
    number=st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True),
    digits=st.booleans(),
)
def test_dialled_user_is_a_safe_uri_user_part(prefix, number, digits):
    ident = CallerIdentity(tech_prefix=prefix, number_format="digits" if digits else "e164")
    user = dialled_user(ident, number)
    assert "#" not in user  # RFC 3261 25.1: escaped
    assert user.replace("%23", "#") == prefix + (number[1:] if digits else number)
    assert re.fullmatch(r"[0-9+*%]+", user)


def test_no_identity_headers_unless_asked():
    assert identity_headers(CallerIdentity(), "sip:+1@h", "sip", "h") == ()
