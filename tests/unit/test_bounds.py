"""Every number in the config and the API is bounded and finite: found by walking the JSON
schemas (so a field added later without bounds fails here), then each one is fed NaN,
+-Infinity, +-1e308 and a huge integer, which must be refused naming the field."""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.api import create_app
from sipbridge.calls import CallService
from sipbridge.config import Config, ConfigError, RetryConfig, load_config, parse_config
from sipbridge.schedule import MAX_BACKOFF_S, RetryPolicy, backoff_s, next_attempt_time
from sipbridge.store import SQLiteStore
from tests.doubles import RecordingPool
from tests.unit.test_api import AUTH, CFG

BASE: dict[str, Any] = {
    "agent": {"uri": "sip:agent@127.0.0.1:5070"},
    "api": {"tokens": [{"value": "secret"}]},
    "trunks": [{"name": "t1", "address": "127.0.0.1:5060", "caller_id": "+14155550100"}],
    "routes": [{"prefix": "+1", "trunk": "t1"}],
}
HOSTILE = [math.nan, math.inf, -math.inf, 1e308, -1e308, 10**30, -(10**30)]


def _numeric(prop: dict[str, Any]) -> dict[str, Any] | None:
    """The numeric branch of a property schema (plain, or inside anyOf with null)."""
    for branch in [prop, *prop.get("anyOf", [])]:
        if branch.get("type") in ("integer", "number"):
            return branch
    return None


def _ref(defs: dict[str, Any], prop: dict[str, Any]) -> dict[str, Any] | None:
    for branch in [prop, *prop.get("anyOf", [])]:
        if "$ref" in branch:
            return defs[branch["$ref"].rsplit("/", 1)[-1]]
        if branch.get("type") == "array" and "$ref" in branch.get("items", {}):
            return {"__list__": defs[branch["items"]["$ref"].rsplit("/", 1)[-1]]}
    return None


def numeric_leaves(
    schema: dict[str, Any], defs: dict[str, Any], path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    for name, prop in schema.get("properties", {}).items():
        num = _numeric(prop)
        if num is not None:
            yield (*path, name), num
            continue
        sub = _ref(defs, prop)
        if sub is None:
            continue
        if "__list__" in sub:
            yield from numeric_leaves(sub["__list__"], defs, (*path, name, "0"))
        else:
            yield from numeric_leaves(sub, defs, (*path, name))


CONFIG_SCHEMA = Config.model_json_schema()
CONFIG_LEAVES = list(numeric_leaves(CONFIG_SCHEMA, CONFIG_SCHEMA["$defs"]))


def test_the_walk_finds_the_numbers() -> None:
    paths = {".".join(p) for p, _ in CONFIG_LEAVES}
    # one from each kind of place: a section, a list item, a nested typed dict
    assert {
        "timers.ring_timeout_s",
        "trunks.0.cps",
        "routes.0.retry.base_s",
        "detection.thresholds.beep_min_hz",
        "api.max_body_bytes",
    } <= paths
    assert len(paths) > 50


@pytest.mark.parametrize("path", [".".join(p) for p, _ in CONFIG_LEAVES])
def test_every_config_number_has_both_bounds(path: str) -> None:
    num = dict(CONFIG_LEAVES)[tuple(path.split("."))]
    assert "minimum" in num or "exclusiveMinimum" in num, (path, num)
    assert "maximum" in num or "exclusiveMaximum" in num, (path, num)


def _set(cfg: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(cfg))
    node: Any = out
    for i, key in enumerate(path[:-1]):
        nxt_is_index = path[i + 1].isdigit()
        if isinstance(node, list):
            idx = int(key)
            while len(node) <= idx:
                node.append({})
            node = node[idx]
            continue
        node = node.setdefault(key, [] if nxt_is_index else {})
    if isinstance(node, list):
        node.append(value)
    else:
        node[path[-1]] = value
    return out


@pytest.mark.parametrize("path", [".".join(p) for p, _ in CONFIG_LEAVES])
def test_every_config_number_refuses_hostile_values(path: str) -> None:
    for value in HOSTILE:
        with pytest.raises(ConfigError) as ei:
            parse_config(_set(BASE, tuple(path.split(".")), value), "conf.yaml")
        keys = [k for k, _ in ei.value.problems]
        assert path in keys, (value, str(ei.value))


def test_yaml_infinity_and_nan_name_the_key(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(
        textwrap.dedent("""\
        agent: {uri: 'sip:a@127.0.0.1'}
        api: {tokens: [{value: t}]}
        trunks: [{name: t, address: 'h:5060', caller_id: '+14155550100'}]
        routes: [{trunk: t}]
        retry: {base_s: .inf, cap_s: 1e308}
        detection: {thresholds: {tone_purity: .nan}}
        """)
    )
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    keys = {k for k, _ in ei.value.problems}
    assert {"retry.base_s", "retry.cap_s", "detection.thresholds.tone_purity"} <= keys, ei.value


def test_unknown_threshold_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"detection\.thresholds\.nope"):
        parse_config({**BASE, "detection": {"thresholds": {"nope": 1}}}, "c")


def test_thresholds_cover_the_detector_fields() -> None:
    from dataclasses import fields

    from sipbridge.media.detect import DetectionConfig
    from sipbridge.thresholds import DetectionThresholds

    assert set(DetectionThresholds.__annotations__) == {
        f.name for f in fields(DetectionConfig) if f.name != "vad"
    }


# ---- the API ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("bounds")
    cfg = CFG.model_copy(
        update={
            "limits": CFG.limits.model_copy(
                update={"api_rate_per_s": 10_000.0, "api_burst": 100_000}
            )
        }
    )
    svc = CallService(cfg, SQLiteStore(tmp / "s.db"), RecordingPool())
    with TestClient(create_app(svc, ["tok"])) as c:
        yield c


def _api_leaves(client: TestClient, model: str) -> list[tuple[str, ...]]:
    doc = client.get("/openapi.json").json()
    defs = doc["components"]["schemas"]
    return [p for p, _ in numeric_leaves(defs[model], defs)]


def test_openapi_numbers_have_both_bounds(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    defs = doc["components"]["schemas"]
    seen = 0
    for model in ("TriggerBody", "DtmfBody"):
        for path, num in numeric_leaves(defs[model], defs):
            seen += 1
            assert "minimum" in num or "exclusiveMinimum" in num, (model, path)
            assert "maximum" in num or "exclusiveMaximum" in num, (model, path)
    assert seen > 25


def _raw(body: dict[str, Any]) -> bytes:
    # json.dumps writes NaN / Infinity literals, as a hostile client may
    return json.dumps(body, allow_nan=True).encode()


def test_every_trigger_number_refuses_hostile_values(client: TestClient) -> None:
    leaves = _api_leaves(client, "TriggerBody")
    assert ("retry", "base_s") in leaves and ("detection", "thresholds", "cp_purity") in leaves
    for path in leaves:
        for value in HOSTILE:
            body = _set({"to_number": "+14155552671"}, path, value)
            r = client.post(
                "/v1/outbound-calling/trigger",
                content=_raw(body),
                headers={**AUTH, "content-type": "application/json"},
            )
            assert r.status_code == 400, (path, value, r.text)
            assert r.json()["field"] == ".".join(path), (path, value, r.json())


def test_dtmf_numbers_refuse_hostile_values(client: TestClient) -> None:
    sid = client.post(
        "/v1/outbound-calling/trigger", json={"to_number": "+14155552671"}, headers=AUTH
    ).json()["callSid"]
    for name in ("duration_ms", "gap_ms"):
        for value in HOSTILE:
            r = client.post(
                f"/v1/outbound-calling/{sid}/dtmf",
                content=_raw({"digits": "1", name: value}),
                headers={**AUTH, "content-type": "application/json"},
            )
            assert r.status_code == 400 and r.json()["field"] == name, (name, value, r.text)


def test_huge_json_integer_literal(client: TestClient) -> None:
    body = b'{"to_number": "+14155552671", "retry": {"max_attempts": 1' + b"0" * 5000 + b"}}"
    r = client.post(
        "/v1/outbound-calling/trigger",
        content=body,
        headers={**AUTH, "content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["field"] in ("retry.max_attempts", "body"), r.text


# ---- backoff arithmetic never overflows -----------------------------------------------


def test_backoff_of_huge_and_infinite_inputs_is_clamped() -> None:
    for base, factor, cap in [
        (1e308, 10, 1e308),
        (math.inf, 2, math.inf),
        (1, 1e308, math.inf),
        (0, math.inf, math.inf),
    ]:
        d = backoff_s(20, base, factor, cap, 0, lambda: 0.0)
        assert 0 <= d <= MAX_BACKOFF_S
    with pytest.raises(ValueError):
        backoff_s(1, math.nan, 2, 10, 0, lambda: 0.0)
    with pytest.raises(ValueError):
        RetryPolicy(base_s=math.nan)


@settings(max_examples=200, deadline=None)
@given(
    base=st.floats(0, allow_nan=False),
    factor=st.floats(1, allow_nan=False),
    cap=st.floats(0, allow_nan=False),
    jitter=st.floats(0, 1),
    attempt=st.integers(1, 10_000),
    r=st.floats(0, 1, exclude_max=True),
)
def test_next_attempt_time_never_overflows(
    base: float, factor: float, cap: float, jitter: float, attempt: int, r: float
) -> None:
    """The issue's reproduction: retry {base_s: 1e308, cap_s: 1e308} overflowed timedelta."""
    policy = RetryPolicy(max_attempts=20, base_s=base, factor=factor, cap_s=cap, jitter=jitter)
    now = datetime(2030, 1, 1, tzinfo=UTC)
    when = next_attempt_time(policy, attempt, now, lambda: r)
    assert when is not None and now <= when
    assert (when - now).total_seconds() <= MAX_BACKOFF_S


def test_largest_api_retry_policy_schedules() -> None:
    cfg = RetryConfig(max_attempts=20, base_s=86400, factor=10, cap_s=604800, jitter=0)
    when = next_attempt_time(cfg.policy(), 19, 0.0, lambda: 0.0)
    assert when is not None and when.timestamp() == 604800


@pytest.mark.parametrize(
    ("section", "names"),
    [
        # the backoff is min(cap_s, base_s * ...): a cap under the base silently replaces it
        ({"retry": {"base_s": 7200}}, ("cap_s", "base_s")),
        ({"retry": {"base_s": 60, "cap_s": 30}}, ("cap_s", "base_s")),
        # the IVR escape hatch would fire before the first digit is sent
        (
            {"ivr": {"send_digits": "1", "send_digits_delay_s": 30, "max_ivr_s": 20}},
            ("max_ivr_s", "send_digits_delay_s"),
        ),
    ],
)
def test_settings_pairs_out_of_order_are_refused_naming_both(
    section: dict[str, Any], names: tuple[str, ...]
) -> None:
    """Each value within its bounds, but a pair whose order matters inverted: a config
    error naming both fields (config load and route; the API refuses it the same way)."""
    key = next(iter(section))
    cfg = {**BASE, "routes": [{"prefix": "+1", "trunk": "t1", **section}]}
    with pytest.raises(ConfigError) as ei:
        parse_config(cfg, "c")
    for name in names:
        assert f"routes.0.{key}" in str(ei.value) and name in str(ei.value), (name, ei.value)


def test_settings_pairs_in_order_are_accepted() -> None:
    parse_config(
        {
            **BASE,
            "retry": {"base_s": 7200, "cap_s": 7200},
            "routes": [
                {
                    "prefix": "+1",
                    "trunk": "t1",
                    "ivr": {"send_digits": "1", "send_digits_delay_s": 30, "max_ivr_s": 31},
                }
            ],
        },
        "c",
    )
    # without digits to send, max_ivr_s bounds the hold step alone
    parse_config(
        {
            **BASE,
            "routes": [{"prefix": "+1", "trunk": "t1", "ivr": {"hold": True, "max_ivr_s": 5}}],
        },
        "c",
    )
