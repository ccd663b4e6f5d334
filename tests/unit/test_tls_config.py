"""TLS settings of trunks and the agent: validation, defaults, the start-up warning, and
the text a refused certificate produces."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from sipbridge.app import warn_unverified_tls
from sipbridge.config import ConfigError, parse_config
from sipbridge.routing import resolve_agent_plan, resolve_plan
from sipbridge.sipconfig import MAX_TLS_PROFILES
from sipbridge.tlsca import check_ca_file, os_ca_bundle, tls_reject_text
from tests.tlspeer import make_ca, self_signed


def _cfg(trunks: list[dict[str, Any]], agent: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "agent": agent or {"uri": "sip:agent@127.0.0.1:5070"},
        "api": {"tokens": [{"value": "secret"}]},
        "trunks": trunks,
        "routes": [{"prefix": "+1", "trunk": trunks[0]["name"]}],
    }


def _tls_trunk(name: str = "t", **tls: Any) -> dict[str, Any]:
    t: dict[str, Any] = {
        "name": name,
        "address": "127.0.0.1:5061",
        "transport": "tls",
        "encryption": "TLS/SRTP",
        "caller_id": "+14155550100",
    }
    return t | ({"tls": tls} if tls else {})


def _plan(cfg: Any) -> Any:
    return resolve_plan(
        cfg,
        call_sid="OUT-1",
        to_number="+12125550100",
        from_number="+14155550100",
        metadata={},
        polyai_call_id=None,
        attempt=1,
        bridge_host="bridge",
    )


def _problems(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    return dict(e.value.problems)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ca(tmp_path_factory.mktemp("ca"), "Unit CA")[0]


def test_tls_trunk_verifies_against_the_os_bundle_by_default() -> None:
    bundle = os_ca_bundle()
    assert bundle and Path(bundle).is_file()
    cfg = parse_config(_cfg([_tls_trunk()]))
    t = cfg.trunks[0]
    assert (t.tls.verify, t.tls.ca_file, t.tls.ca_list()) == (True, None, bundle)
    plan = _plan(cfg)
    assert (plan.transport, plan.tls_verify, plan.tls_ca_file) == ("tls", True, bundle)


def test_ca_file_and_verify_reach_the_plan(ca: Path) -> None:
    cfg = parse_config(
        _cfg(
            [_tls_trunk(ca_file=str(ca))],
            agent={"uri": "sips:agent@127.0.0.1:5071", "tls": {"verify": False}},
        )
    )
    plan = _plan(cfg)
    assert (plan.tls_verify, plan.tls_ca_file) == (True, str(ca))
    agent = resolve_agent_plan(
        cfg,
        call_sid="OUT-1",
        carrier_leg_id="OUT-1/b1",
        to_number="+12125550100",
        from_number="+14155550100",
        metadata={},
        polyai_call_id=None,
        answered_by=None,
        bridge_host="bridge",
    )
    assert (agent.transport, agent.tls_verify) == ("tls", False)


@pytest.mark.parametrize(
    ("ca_file", "words"),
    [
        ("/nonexistent/ca.pem", "is not a file"),
        ("__EMPTY__", "not a PEM list"),
        ("__GARBAGE__", "not a PEM list"),
    ],
)
def test_bad_ca_file_is_refused_naming_the_key(tmp_path: Path, ca_file: str, words: str) -> None:
    if ca_file == "__EMPTY__":
        (tmp_path / "empty.pem").write_text("")
        ca_file = str(tmp_path / "empty.pem")
    elif ca_file == "__GARBAGE__":
        (tmp_path / "bad.pem").write_text(
            "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
        )
        ca_file = str(tmp_path / "bad.pem")
    problems = _problems(_cfg([_tls_trunk(ca_file=ca_file)]))
    assert words in problems["trunks.0.tls.ca_file"], problems


def test_tls_settings_on_a_plain_trunk_are_refused() -> None:
    t = {
        "name": "u",
        "address": "127.0.0.1:5060",
        "caller_id": "+14155550100",
        "tls": {"verify": False},
    }
    problems = _problems(_cfg([t]))
    assert any("only for TLS" in v for v in problems.values()), problems


def test_self_signed_certificate_can_be_pinned(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    assert check_ca_file(str(cert)) == str(cert)


def test_too_many_tls_profiles_are_refused(tmp_path: Path) -> None:
    cas = [make_ca(tmp_path, f"CA{i}")[0] for i in range(MAX_TLS_PROFILES)]
    trunks = [_tls_trunk(f"t{i}", ca_file=str(c)) for i, c in enumerate(cas)]
    parse_config(_cfg(trunks))  # four profiles: fine
    problems = _problems(_cfg([*trunks, _tls_trunk("open", verify=False)]))
    assert any("different TLS settings" in v for v in problems.values()), problems


def test_verify_false_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    cfg = parse_config(_cfg([_tls_trunk("strict"), _tls_trunk("open", verify=False)]))
    with caplog.at_level(logging.WARNING, logger="sipbridge"):
        out = warn_unverified_tls(cfg)
    assert len(out) == 1 and out[0].startswith("trunk open: TLS certificate verification is OFF")
    assert [r.getMessage() for r in caplog.records] == out


def test_reject_text_names_the_reasons() -> None:
    assert tls_reject_text(1 << 1, "10.0.0.1:5061", "10.0.0.1", "x", []) == (
        "TLS certificate of 10.0.0.1:5061 rejected: untrusted"
    )
    text = tls_reject_text(
        (1 << 30) | (1 << 2),
        "10.0.0.1:5061",
        "sip.carrier.example",
        "other.example",
        ["DNS:other.example", "IP:10.0.0.9"],
    )
    assert "expired or not yet valid" in text
    assert (
        "host name 'sip.carrier.example' is not in the certificate "
        "(CN=other.example, DNS:other.example, IP:10.0.0.9)"
    ) in text
    assert tls_reject_text(0, "p", "h", "", []).endswith("verification failed")
