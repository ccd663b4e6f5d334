"""Metadata reaches the agent, and a carrier only for the keys its trunk opts in to
(``metadata_to_carrier``): a real `sipbridge run`, a SIPp carrier and a SIPp agent on
loopback; asserts the headers of the INVITEs each peer received."""

from __future__ import annotations

import pytest

from sipbridge.devtools.bridge import Stack, bridge_config

pytestmark = pytest.mark.integration


def test_carrier_gets_only_opted_in_metadata_and_the_agent_gets_all(stack: Stack) -> None:
    carrier = stack.sipp("uas_answer_then_bye_3s.xml")
    agent = stack.sipp("uas_answer_wait_bye.xml")
    bridge = stack.bridge(
        bridge_config(
            stack.tmp,
            trunks=[
                {
                    "name": "carrier",
                    "address": carrier.uri_hostport,
                    "caller_id": "+14155550100",
                    "header_templates": {"X-PolyAI-Call-SID": "{call_sid}"},
                    "metadata_to_carrier": {"keys": ["campaign"], "prefix": "X-Meta-"},
                }
            ],
            routes=[{"prefix": "+1", "trunk": "carrier"}],
            agent={"uri": f"sip:agent@{agent.uri_hostport}"},
        )
    )
    sid = bridge.trigger(
        to_number="+12125550123",
        polyai_call_id="agent-7",
        metadata={"campaign": "spring", "customer_ssn": "123-45-6789"},
    )
    to_carrier = carrier.wait_for(
        lambda m: (
            m.direction == "received"
            and m.is_request
            and m.method == "INVITE"
            and m.header("X-PolyAI-Call-SID") == sid
        )
    )
    to_agent = agent.wait_for(
        lambda m: (
            m.direction == "received"
            and m.is_request
            and m.method == "INVITE"
            and m.header("X-Sipbridge-Call-SID") == sid
        ),
        timeout=15,
    )
    assert to_carrier.header("X-Meta-campaign") == "spring"
    assert to_carrier.header("X-Meta-customer_ssn") is None
    assert to_carrier.header("X-customer_ssn") is None
    assert all("123-45-6789" not in v for _, v in to_carrier.headers)
    assert "123-45-6789" not in to_carrier.body
    assert to_agent.header("X-campaign") == "spring"
    assert to_agent.header("X-customer_ssn") == "123-45-6789"
    assert to_agent.header("X-PolyAI-Call-ID") == "agent-7"
    body = bridge.wait_terminal(sid, timeout=20)
    assert body["status"] == "success", body
