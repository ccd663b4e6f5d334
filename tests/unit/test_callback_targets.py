"""Status callback targets: global addresses only unless the config allows more; checked
on the URL at trigger time and again after DNS at delivery, and the request goes to the
address that was checked (a real HTTP receiver on 127.0.0.1 stands in for the target)."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sipbridge.api import create_app
from sipbridge.calls import CallService
from sipbridge.config import ConfigError, WebhookConfig, parse_config
from sipbridge.netpolicy import TargetPolicy, address_problem, callback_url_problem
from sipbridge.records import OutboxMessage
from sipbridge.store import SQLiteStore
from sipbridge.webhooks import WebhookDispatcher
from tests.doubles import RecordingPool
from tests.unit.test_api import AUTH, CFG
from tests.unit.test_config import BASE
from tests.webhook_receiver import Receiver

STRICT = TargetPolicy()
PRIVATE_OK = TargetPolicy.of(True, [])

REFUSED = [
    "127.0.0.1",
    "127.8.9.10",
    "::1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "100.64.0.1",
    "0.0.0.0",
    "::",
    "224.0.0.1",
    "ff02::1",
    "240.0.0.1",
    "255.255.255.255",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "64:ff9b::a00:1",
    "2002:7f00:1::1",
]
GLOBAL = ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("addr", REFUSED)
def test_non_global_addresses_are_refused_by_default(addr: str) -> None:
    assert address_problem(ipaddress.ip_address(addr), STRICT) is not None


@pytest.mark.parametrize("addr", GLOBAL)
def test_global_addresses_are_allowed(addr: str) -> None:
    assert address_problem(ipaddress.ip_address(addr), STRICT) is None


@pytest.mark.parametrize(
    ("addr", "allowed"),
    [
        ("127.0.0.1", True),
        ("10.0.0.1", True),
        ("169.254.1.1", True),
        ("100.64.0.1", True),
        ("fd00::1", True),
        ("224.0.0.1", False),
        ("0.0.0.0", False),
        ("240.0.0.1", False),
    ],
)
def test_allow_private_opens_private_ranges_not_multicast_or_unspecified(
    addr: str, allowed: bool
) -> None:
    assert (address_problem(ipaddress.ip_address(addr), PRIVATE_OK) is None) is allowed


def test_allow_cidrs_opens_exactly_those_networks() -> None:
    pol = TargetPolicy.of(False, ["10.20.0.0/16", "fd00:1::/32"])
    assert address_problem(ipaddress.ip_address("10.20.3.4"), pol) is None
    assert address_problem(ipaddress.ip_address("::ffff:10.20.3.4"), pol) is None
    assert address_problem(ipaddress.ip_address("fd00:1::5"), pol) is None
    assert address_problem(ipaddress.ip_address("10.21.0.1"), pol) is not None
    assert address_problem(ipaddress.ip_address("127.0.0.1"), pol) is not None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://127.1/x",
        "http://2130706433/x",
        "http://0x7f.0.0.1/x",
        "http://[::1]:8080/",
        "http://[::ffff:127.0.0.1]/",
        "http://localhost/",
        "http://api.localhost/",
        "http://localhost./",
        "https://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://0.0.0.0:80/",
        "http://[fe80::1%25eth0]/",
        "ftp://example.com/",
        "http://",
        "https://exa mple.com/",
        "http://u:p@example.com/",
        "http://example.com/\r\nX: y",
        "http://example.com:0/",
        "http://example.com:99999/",
    ],
)
def test_callback_urls_refused_before_dns(url: str) -> None:
    assert callback_url_problem(url, STRICT) is not None


@pytest.mark.parametrize(
    "url",
    ["https://hooks.example.com/sipbridge", "http://8.8.8.8:8080/cb", "https://[2001:4860::8888]/"],
)
def test_callback_urls_accepted_before_dns(url: str) -> None:
    assert callback_url_problem(url, STRICT) is None


def test_trigger_with_a_private_callback_is_400(tmp_path: Path) -> None:
    svc = CallService(CFG, SQLiteStore(tmp_path / "s.db"), RecordingPool())
    with TestClient(create_app(svc, ["tok"])) as client:
        for url in (
            "http://127.0.0.1:9/cb",
            "http://localhost/cb",
            "http://[::1]/",
            "http://169.254.169.254/",
        ):
            r = client.post(
                "/v1/outbound-calling/trigger",
                headers=AUTH,
                json={"to_number": "+14155552671", "status_callback": url},
            )
            assert r.status_code == 400, r.text
            assert r.json()["field"] == "status_callback" and "webhooks." in r.json()["error"]
        r = client.post(
            "/v1/outbound-calling/trigger",
            headers=AUTH,
            json={"to_number": "+14155552671", "status_callback": "https://hooks.example.com/x"},
        )
        assert r.status_code == 200, r.text


def test_config_webhook_url_follows_the_same_policy() -> None:
    base = {
        "agent": {"uri": "sip:a@127.0.0.1"},
        "api": {"tokens": [{"value": "t"}]},
        "trunks": [{"name": "t", "address": "h", "caller_id": "+14155550100"}],
        "routes": [{"trunk": "t"}],
    }
    with pytest.raises(ConfigError, match=r"webhooks\.url"):
        parse_config({**base, "webhooks": {"url": "http://127.0.0.1:8000/"}}, "c")
    with pytest.raises(ConfigError, match=r"webhooks\.allow_cidrs\.0"):
        parse_config({**base, "webhooks": {"allow_cidrs": ["not-a-net"]}}, "c")
    cfg = parse_config(
        {**base, "webhooks": {"url": "http://127.0.0.1:8000/", "allow_private": True}}, "c"
    )
    assert cfg.webhooks.url == "http://127.0.0.1:8000/"


# ---- at delivery: resolve, check every address, connect to the checked one ------------


def _deliver(cfg: WebhookConfig, url: str, names: dict[str, list[str]]) -> tuple[bool, list[str]]:
    results: list[str] = []
    lookups: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        lookups.append(host)
        return names.get(host, [host])

    async def run() -> bool:
        wh = WebhookDispatcher(cfg, lambda rec: {}, on_result=results.append, resolve=resolve)
        await wh.start()
        try:
            return await wh.deliver(OutboxMessage("d-1", "OUT-x", "queued", url, b"{}", 0.0))
        finally:
            await wh.stop(flush_s=0)

    ok = asyncio.run(run())
    assert lookups, "the name was not resolved at delivery"
    return ok, results


def test_name_resolving_to_a_private_address_is_refused_at_delivery() -> None:
    with Receiver() as rx:
        port = rx.url.rsplit(":", 1)[1].split("/", 1)[0]
        ok, results = _deliver(
            WebhookConfig(max_attempts=3, backoff_s=0.05),
            f"http://hooks.example.test:{port}/cb",
            {"hooks.example.test": ["127.0.0.1"]},
        )
        assert (ok, results) == (False, ["refused"])  # not retried
        assert rx.requests == []


def test_one_private_address_among_public_ones_is_refused() -> None:
    ok, results = _deliver(
        WebhookConfig(max_attempts=2, backoff_s=0.05),
        "http://mixed.example.test/cb",
        {"mixed.example.test": ["8.8.8.8", "10.0.0.7"]},
    )
    assert (ok, results) == (False, ["refused"])


def test_delivery_connects_to_the_checked_address_with_the_name_as_host() -> None:
    """The name does not exist in DNS: the POST can only reach the receiver through the
    address the resolver gave and the policy checked (no second lookup by the client)."""
    with Receiver() as rx:
        port = rx.url.rsplit(":", 1)[1].split("/", 1)[0]
        cfg = WebhookConfig(allow_cidrs=["127.0.0.0/8"], max_attempts=1)
        ok, results = _deliver(
            cfg, f"http://hooks.example.test:{port}/cb", {"hooks.example.test": ["127.0.0.1"]}
        )
        assert (ok, results) == (True, ["delivered"])
        (req,) = rx.requests
        assert req.headers["host"] == f"hooks.example.test:{port}" and req.path == "/cb"


def test_unresolvable_name_is_retried_then_failed() -> None:
    ok, results = _deliver(
        WebhookConfig(max_attempts=2, backoff_s=0.05),
        "http://nowhere.example.test/cb",
        {"nowhere.example.test": []},
    )
    assert (ok, results) == (False, ["retried", "failed"])


def test_callbacks_from_the_app_are_refused_when_the_target_turns_private(tmp_path: Path) -> None:
    """A trigger's callback host passes the URL check, then resolves to loopback."""
    import time

    from tests.unit.test_operations import _cfg

    with Receiver() as rx:
        port = rx.url.rsplit(":", 1)[1].split("/", 1)[0]
        svc = CallService(
            _cfg(webhooks={"max_attempts": 1}), SQLiteStore(tmp_path / "s.db"), RecordingPool()
        )
        app = create_app(svc, ["tok"])

        async def rebinding(host: str, port: int) -> list[str]:
            return ["127.0.0.1"]  # what a rebinding DNS answers after the URL check

        app.state.ops.webhooks.resolve = rebinding
        with TestClient(app) as client:
            r = client.post(
                "/v1/outbound-calling/trigger",
                headers=AUTH,
                json={
                    "to_number": "+14155552671",
                    "status_callback": f"http://hooks.example.test:{port}/cb",
                },
            )
            assert r.status_code == 200, r.text
            deadline = time.monotonic() + 5
            while (
                'sipbridge_webhook_deliveries_total{result="refused"}'
                not in client.get("/metrics").text
            ):
                assert time.monotonic() < deadline, "no refused delivery"
                time.sleep(0.02)
        assert rx.requests == []


def test_first_bad_network_names_the_first_entry_that_is_not_a_network():
    from sipbridge.netpolicy import first_bad_network

    assert first_bad_network(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]) is None
    assert first_bad_network(["10.0.0.0/8", "10.0.1.0/33", "x"]) == (1, "10.0.1.0/33")
    assert first_bad_network(["10.0.0.0/8\r\n", "1.2.3.4"]) == (0, "10.0.0.0/8\r\n")
    assert first_bad_network([]) is None
    for key, section in (
        ("sip.inbound_allow: item 1,", {"sip": {"inbound_allow": ["127.0.0.0/8", "nan"]}}),
        ("webhooks.allow_cidrs.0", {"webhooks": {"allow_cidrs": ["300.0.0.0/8"]}}),
    ):
        with pytest.raises(ConfigError) as ei:
            parse_config({**BASE, **section}, "conf.yaml")
        assert f"conf.yaml: {key}" in str(ei.value) and "is not an IP network" in str(ei.value)
