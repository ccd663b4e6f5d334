"""OPTIONS health checks, the pure part (sipbridge.optionsping) and TrunkHealth's down
marks: the request, which replies count, the up/down hysteresis, hostile replies."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipbridge.optionsping import (
    ProbeCounter,
    answered_alive,
    options_request,
    reply_status,
    split_hostport,
)
from sipbridge.trunkselect import TrunkHealth, hunt_list


def _req(**kw: Any) -> str:
    args: dict[str, Any] = dict(
        host="sip.carrier.example",
        port=5060,
        transport="udp",
        via_host="10.0.0.1",
        via_port=40000,
        call_id="abc@sipbridge",
        branch="b1",
        tag="t1",
        user_agent="sipbridge",
    )
    args.update(kw)
    return options_request(**args).decode()


def test_request_form():
    text = _req()
    assert text.startswith("OPTIONS sip:sip.carrier.example:5060 SIP/2.0\r\n")
    assert "Via: SIP/2.0/UDP 10.0.0.1:40000;branch=z9hG4bKb1;rport\r\n" in text
    assert "Call-ID: abc@sipbridge\r\n" in text and text.endswith("Content-Length: 0\r\n\r\n")
    assert _req(transport="tls", host="::1").startswith("OPTIONS sips:[::1]:5060 SIP/2.0")
    assert "OPTIONS sip:h:5060;transport=tcp" in _req(transport="tcp", host="h")
    assert "From: <sip:sipbridge@10.0.0.1>;tag=t1\r\n" in text


def test_request_through_the_edge():
    """Behind the edge proxy: the trunk header for the edge, the edge's public address as
    the From host (the node's own stays in the Via only, which the edge masks)."""
    text = _req(extra_headers=(("X-Sipbridge-Trunk", "twilio"),), from_host="203.0.113.10")
    head, _, _ = text.partition("\r\n\r\n")
    assert "X-Sipbridge-Trunk: twilio" in head.split("\r\n")
    assert "From: <sip:sipbridge@203.0.113.10>;tag=t1\r\n" in text
    assert "From: <sip:sipbridge@[2001:db8::1]>" in _req(from_host="2001:db8::1")


@pytest.mark.parametrize(
    ("address", "want"),
    [
        ("h", ("h", 5060)),
        ("h:5080", ("h", 5080)),
        ("[::1]", ("::1", 5060)),
        ("[::1]:7000", ("::1", 7000)),
    ],
)
def test_split_hostport(address, want):
    assert split_hostport(address, 5060) == want


def test_reply_matching():
    ok = b"SIP/2.0 200 OK\r\nCall-ID: abc@sipbridge\r\nCSeq: 1 OPTIONS\r\n\r\n"
    assert reply_status(ok, "abc@sipbridge") == 200
    assert reply_status(ok, "other") is None
    assert reply_status(ok.replace(b"200 OK", b"100 Trying"), "abc@sipbridge") is None
    assert (
        reply_status(b"OPTIONS sip:x SIP/2.0\r\nCall-ID: abc@sipbridge\r\n\r\n", "abc@sipbridge")
        is None
    )
    assert reply_status(b"i: abc@sipbridge", "abc@sipbridge") is None


@given(st.binary(max_size=300))
def test_garbage_reply_never_raises(data):
    assert reply_status(data, "abc@sipbridge") in (None, *range(200, 1000))


@pytest.mark.parametrize(
    ("status", "alive"),
    [
        (200, True),
        (404, True),
        (405, True),
        (403, True),
        (408, False),
        (500, False),
        (503, False),
        (None, False),
        (603, True),
    ],
)
def test_answered_alive(status, alive):
    assert answered_alive(status) is alive


def test_counter_hysteresis():
    c = ProbeCounter(failures_to_down=3, successes_to_up=2)
    assert [c.record(False) for _ in range(3)] == [False, False, True] and not c.up
    assert c.record(True) is False and c.record(False) is False  # run broken: restart
    assert [c.record(True) for _ in range(2)] == [False, True] and c.up


def test_down_trunk_is_skipped_and_has_no_rest_time():
    h = TrunkHealth()
    h.set_down("a", True)
    assert hunt_list([("a", 0, 1.0), ("b", 1, 1.0)], random.Random(1), h) == ["b"]
    assert h.earliest_available(["a"], 10.0) is None
    assert h.earliest_available(["a", "b"], 10.0) == 10.0
    h.set_down("a", False)
    assert h.available("a", 0.0)
