import textwrap
from pathlib import Path

import pytest

from sipbridge.config import ConfigError, load_config, parse_config

BASE = {
    "agent": {"uri": "sip:agent@127.0.0.1:5070"},
    "api": {"tokens": [{"value": "secret"}]},
    "trunks": [{"name": "t1", "address": "127.0.0.1:5060", "caller_id": "+14155550100"}],
    "routes": [{"prefix": "+1", "trunk": "t1"}],
}


def _with(**over):
    d = {k: v for k, v in BASE.items()}
    d.update(over)
    return d


def test_example_config_is_valid(monkeypatch):
    monkeypatch.setenv("SIPBRIDGE_API_TOKEN", "t")
    cfg = load_config(Path(__file__).parents[2] / "config" / "example.yaml")
    assert cfg.trunks[0].name == "local-carrier"
    assert cfg.api.tokens[0].resolve() == "t"
    assert cfg.sip.calls_per_worker == 4


def test_defaults():
    cfg = parse_config(BASE)
    assert cfg.timers.ring_timeout_s == 60
    assert cfg.store.retention_s == 7200
    assert cfg.sip.workers == 2


@pytest.mark.parametrize(
    ("over", "key", "words"),
    [
        ({"routes": [{"prefix": "+1", "trunk": "nope"}]}, "routes.0.trunk", "unknown trunk"),
        ({"trunks": [{"name": "t1", "address": "bad host:x"}]}, "trunks.0.address", "host"),
        (
            {"trunks": [{"name": "t1", "address": "h", "headers": {"Bad Name": "v"}}]},
            "trunks.0.headers",
            "not a SIP token",
        ),
        (
            {"trunks": [{"name": "t1", "address": "h", "headers": {"Via": "v"}}]},
            "trunks.0.headers",
            "managed by the SIP stack",
        ),
        (
            {"trunks": [{"name": "t1", "address": "h", "header_templates": {"X-A": "{nope}"}}]},
            "trunks.0.header_templates",
            "unknown template field {nope}",
        ),
        (
            {"trunks": [{"name": "t1", "address": "h", "transport": "sctp"}]},
            "trunks.0.transport",
            "udp",
        ),
        ({"sip": {"workers": 0}}, "sip.workers", "greater than or equal to 1"),
        ({"sip": {"port_min": 5090, "port_max": 5080}}, "sip", "port_min"),
        (
            {"sip": {"source_rate_limit_per_s": float("nan")}},
            "sip.source_rate_limit_per_s",
            "finite",
        ),
        ({"sip": {"source_rate_limit_per_s": 0}}, "sip.source_rate_limit_per_s", "greater than"),
        ({"sip": {"source_rate_burst": 0}}, "sip.source_rate_burst", "greater than or equal"),
        ({"api": {"tokens": []}}, "api.tokens", "at least one"),
        ({"api": {"tokens": [{"env": "SB_TEST_UNSET_VAR"}]}}, "api.tokens.0", "SB_TEST_UNSET_VAR"),
        ({"agent": {"uri": "http://x"}}, "agent.uri", "SIP URI"),
        ({"timers": {"ring_timeout_s": -1}}, "timers.ring_timeout_s", "greater than 0"),
        ({"surprise": 1}, "surprise", "Extra inputs"),
    ],
)
def test_bad_config_names_key_and_reason(over, key, words):
    with pytest.raises(ConfigError) as ei:
        parse_config(_with(**over), "conf.yaml")
    msg = str(ei.value)
    assert f"conf.yaml: {key}" in msg, msg
    assert words in msg, msg


def test_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        textwrap.dedent("""\
        agent:
          uri: sip:a@b
        api: [unclosed
        """)
    )
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert str(p) in str(ei.value) and "line" in str(ei.value) and "YAML" in str(ei.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_config(tmp_path / "none.yaml")
    assert "cannot read" in str(ei.value)


def test_not_a_mapping(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(p)


def test_check_config_cli(tmp_path, capsys):
    from sipbridge.cli import main

    p = tmp_path / "c.yaml"
    p.write_text("agent: {uri: 'sip:a@b'}\napi: {tokens: []}\ntrunks: []\nroutes: []\n")
    assert main(["check-config", str(p)]) == 2
    err = capsys.readouterr().err
    assert "api.tokens" in err and str(p) in err


def test_check_config_prints_resolved_without_secrets(tmp_path, capsys):
    from sipbridge.cli import main

    p = tmp_path / "c.yaml"
    p.write_text(
        "agent: {uri: 'sip:a@b'}\napi: {tokens: [{value: s3cr3t}]}\n"
        "trunks: [{name: t, address: 'h:5060'}]\nroutes: [{trunk: t}]\n"
    )
    assert main(["check-config", str(p)]) == 0
    out = capsys.readouterr().out
    assert '"ring_timeout_s": 60.0' in out and "s3cr3t" not in out and "***" in out
