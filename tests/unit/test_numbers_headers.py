import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipbridge.config import parse_config
from sipbridge.headers import (
    HeaderError,
    render_template,
    validate_header_name,
    validate_header_value,
)
from sipbridge.numbers import NumberError, to_e164
from sipbridge.routing import RoutingError, carrier_headers, choose_trunk, resolve_plan


@pytest.mark.parametrize(
    ("raw", "cc", "want"),
    [
        ("+14155552671", None, "+14155552671"),
        ("+1 (415) 555-2671", None, "+14155552671"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("(415) 555-2671", "us", "+14155552671"),
        ("+442079460958", "US", "+442079460958"),
    ],
)
def test_e164_ok(raw, cc, want):
    assert to_e164(raw, cc) == want


@pytest.mark.parametrize(
    ("raw", "cc", "words"),
    [
        ("4155552671", None, "E.164"),
        ("+1415", None, "not a valid"),
        ("hello", "US", "not a phone number"),
        ("+99912345678", None, "country calling code"),
        ("", None, "required"),
        ("020 7946 0958", "XX", "ISO 3166-1"),
    ],
)
def test_e164_bad(raw, cc, words):
    with pytest.raises(NumberError) as ei:
        to_e164(raw, cc)
    assert words in str(ei.value)


@pytest.mark.parametrize("value", ["a\r\nVia: evil", "x\ny", "nul\x00", "bell\x07", "del\x7f"])
def test_header_values_with_controls_refused(value):
    with pytest.raises(HeaderError):
        validate_header_value(value, "metadata.k")


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=200))
def test_printable_values_accepted(value):
    assert validate_header_value(value) == value


@given(st.text(max_size=50))
def test_values_with_cr_or_lf_never_pass(value):
    if "\r" in value or "\n" in value:
        with pytest.raises(HeaderError):
            validate_header_value(value)


@pytest.mark.parametrize("name", ["Bad Name", "X:Y", "", "Ä", "X-A\r\n"])
def test_bad_header_names(name):
    with pytest.raises(HeaderError):
        validate_header_name(name)


def test_template_rendering():
    out = render_template(
        "{call_sid}/{metadata.k}/{metadata.missing}", {"call_sid": "S"}, {"k": "v"}
    )
    assert out == "S/v/"


CFG = parse_config(
    {
        "agent": {"uri": "sip:agent@127.0.0.1"},
        "api": {"tokens": [{"value": "t"}]},
        "trunks": [
            {
                "name": "us",
                "address": "10.0.0.1:5060",
                "caller_id": "+14155550100",
                "headers": {"X-Static": "s"},
                "header_templates": {
                    "X-PolyAI-Call-SID": "{call_sid}",
                    "X-Cust": "{metadata.cust}",
                },
                "metadata_to_carrier": {"keys": ["cust", "Tier"]},
            },
            {"name": "uk", "address": "uk.example", "transport": "tcp"},
            {"name": "any", "address": "any.example"},
        ],
        "routes": [
            {"prefix": "+1", "trunk": "us"},
            {"prefix": "+44", "trunk": "uk"},
            {"prefix": "", "trunk": "any"},
        ],
    }
)


def test_longest_prefix_routing():
    assert choose_trunk(CFG, "+14155552671").name == "us"
    assert choose_trunk(CFG, "+442079460958").name == "uk"
    assert choose_trunk(CFG, "+33142685300").name == "any"


def test_no_route():
    cfg = CFG.model_copy(update={"routes": CFG.routes[:1]})
    with pytest.raises(RoutingError, match="no route"):
        choose_trunk(cfg, "+33142685300")


def test_dial_plan_resolution():
    plan = resolve_plan(
        CFG,
        call_sid="OUT-x",
        to_number="+14155552671",
        from_number="+14155550100",
        metadata={"cust": "42", "Tier": "gold"},
        polyai_call_id="p1",
        attempt=1,
        bridge_host="192.0.2.1",
    )
    assert plan.request_uri == "sip:+14155552671@10.0.0.1:5060"
    assert plan.from_uri == "<sip:+14155550100@192.0.2.1>"
    h = dict(plan.headers)
    # metadata "cust" would be X-cust, but the template already set X-Cust (names are
    # case-insensitive, RFC 3261 7.3.1): the template wins and no duplicate is sent.
    assert h == {"X-Static": "s", "X-PolyAI-Call-SID": "OUT-x", "X-Cust": "42", "X-Tier": "gold"}
    assert plan.leg_id == "OUT-x/b1"
    uk = resolve_plan(
        CFG,
        call_sid="OUT-y",
        to_number="+442079460958",
        from_number="+1",
        metadata={},
        polyai_call_id=None,
        attempt=2,
        bridge_host="h",
    )
    assert uk.request_uri == "sip:+442079460958@uk.example;transport=tcp"
    assert uk.leg_id == "OUT-y/b2"


def test_unsafe_metadata_value_names_the_key():
    trunk = CFG.trunk("us")
    with pytest.raises(HeaderError) as ei:
        carrier_headers(trunk, {}, {"cust": "a\r\nBYE sip:x SIP/2.0"})
    assert ei.value.field == "metadata.cust"


def test_caller_id_policy_per_trunk():
    from sipbridge.routing import effective_caller_id

    cfg = parse_config(
        {
            "agent": {"uri": "sip:agent@127.0.0.1"},
            "api": {"tokens": [{"value": "t"}]},
            "trunks": [
                {
                    "name": "own-dids",
                    "address": "a.example",
                    "caller_id": "+14155550100",
                    "caller_id_policy": "trunk",
                },
                {"name": "any", "address": "b.example", "caller_id": "+14155550101"},
            ],
            "routes": [{"trunk": "any"}],
        }
    )
    strict, free = cfg.trunk("own-dids"), cfg.trunk("any")
    # a carrier that only accepts its own DIDs always gets the trunk's caller ID
    assert effective_caller_id(strict, "+12125550199") == "+14155550100"
    assert effective_caller_id(free, "+12125550199") == "+12125550199"
    assert effective_caller_id(free, None) == "+14155550101"
    plan = resolve_plan(
        cfg,
        call_sid="OUT-z",
        to_number="+12125550123",
        from_number=effective_caller_id(strict, "+12125550199"),
        metadata={},
        polyai_call_id=None,
        attempt=1,
        bridge_host="h",
        trunk=strict,
    )
    assert plan.from_uri == "<sip:+14155550100@h>"


def test_detection_info_for_an_agent_dialled_before_the_result() -> None:
    """The INFO that tells a ``connect_on: answer`` agent the result: JSON body and headers,
    the hint header only when there is a hint (README, "The agent leg")."""
    from sipbridge.routing import DETECTION_INFO_TYPE, detection_info

    ctype, body, headers = detection_info("CA1", "human", "screening", True)
    assert ctype == DETECTION_INFO_TYPE == "application/vnd.sipbridge.detection+json"
    assert json.loads(body) == {
        "call_sid": "CA1",
        "answered_by": "human",
        "hint": "screening",
        "final": True,
    }
    assert headers == (
        ("X-Sipbridge-Answered-By", "human"),
        ("X-Sipbridge-Answered-By-Hint", "screening"),
    )
    _, body, headers = detection_info("CA1", "machine", None, False)
    assert json.loads(body)["hint"] is None and headers == (("X-Sipbridge-Answered-By", "machine"),)
