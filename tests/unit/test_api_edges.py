"""The API's edges with hostile input: header values checked for every leg they reach,
caller ID, the error shape for anything unparseable, the body size limit, non-ASCII
digits, media file names. In-process app with the project's pool double and a real
SQLite store."""

from __future__ import annotations

import json
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipbridge.api import create_app
from sipbridge.bodylimit import BodyLimit
from sipbridge.calls import CallService
from sipbridge.config import ConfigError, parse_config
from sipbridge.store import SQLiteStore
from tests.doubles import RecordingPool
from tests.unit.test_api import AUTH

TRIGGER = "/v1/outbound-calling/trigger"
BASE: dict[str, Any] = {
    "agent": {
        "uri": "sip:agent@127.0.0.1",
        # a custom agent template over a metadata key no trunk sends
        "header_templates": {
            "X-PolyAI-Call-ID": "{polyai_call_id}",
            "X-Ticket": "T-{metadata.ticket}",
        },
    },
    "api": {"tokens": [{"value": "tok"}], "max_body_bytes": 4096},
    "limits": {"api_rate_per_s": 10000, "api_burst": 100000},
    "trunks": [
        {
            "name": "t1",
            "address": "127.0.0.1:5060",
            "caller_id": "+14155550100",
            "metadata_to_carrier": {"keys": ["campaign"], "prefix": "X-"},
        },
        {"name": "nocid", "address": "127.0.0.1:5061"},
        {"name": "hunt2", "address": "127.0.0.1:5062", "caller_id": "+14155550100"},
    ],
    "routes": [
        {"prefix": "+1", "trunk": "t1"},
        {"prefix": "+44", "trunk": "nocid"},
        {
            "prefix": "+33",
            "trunks": [{"name": "hunt2", "priority": 0}, {"name": "nocid", "priority": 1}],
        },
    ],
}


def make_client(tmp: Path, **over: Any) -> tuple[TestClient, RecordingPool]:
    cfg = parse_config({**BASE, **over})
    pool = RecordingPool()
    svc = CallService(cfg, SQLiteStore(tmp / "s.db"), pool)
    return TestClient(create_app(svc, ["tok"])), pool


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[TestClient, RecordingPool]]:
    client, pool = make_client(tmp_path)
    with client:
        yield client, pool


def _post(client: TestClient, body: Any) -> Any:
    return client.post(TRIGGER, json=body, headers=AUTH)


def _shape(r: Any) -> dict[str, Any]:
    body: dict[str, Any] = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert "field" in body and (body["field"] is None or isinstance(body["field"], str)), body
    assert "detail" not in body, body
    return body


# ---- values that become headers: checked at trigger time for every leg ---------------


@pytest.mark.parametrize("bad", ["a\r\nVia: x", "a\nb", "nul\x00", "bell\x07", "x" * 300])
def test_polyai_call_id_unsafe_for_the_agent_header_is_400(env: Any, bad: str) -> None:
    client, pool = env
    r = _post(client, {"to_number": "+14155552671", "polyai_call_id": bad})
    assert r.status_code == 400 and _shape(r)["field"] == "polyai_call_id", r.text
    assert pool.plans == []


def test_metadata_reaching_only_the_agent_is_checked(env: Any) -> None:
    client, pool = env
    # "ticket" goes to no carrier, but the agent template X-Ticket renders it
    r = _post(client, {"to_number": "+14155552671", "metadata": {"ticket": "1\r\nX-Evil: 1"}})
    assert r.status_code == 400 and _shape(r)["field"] == "metadata.ticket", r.text
    assert pool.plans == []


def test_metadata_goes_to_the_carrier_only_for_opted_in_keys(env: Any) -> None:
    import time

    client, pool = env
    r = _post(
        client,
        {"to_number": "+14155552671", "metadata": {"campaign": "spring", "ssn": "123-45-6789"}},
    )
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 5
    while not pool.plans:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    headers = dict(pool.plans[0].headers)
    assert headers.get("X-campaign") == "spring"
    assert "X-ssn" not in headers and "123-45-6789" not in repr(pool.plans[0])


def test_agent_gets_every_metadata_key() -> None:
    from sipbridge.routing import resolve_agent_plan

    cfg = parse_config(BASE)
    plan = resolve_agent_plan(
        cfg,
        call_sid="OUT-x",
        carrier_leg_id="OUT-x/b1",
        to_number="+14155552671",
        from_number="+14155550100",
        metadata={"campaign": "spring", "ssn": "1"},
        polyai_call_id="p",
        answered_by=None,
        bridge_host="h",
    )
    h = dict(plan.headers)
    assert (h["X-campaign"], h["X-ssn"], h["X-PolyAI-Call-ID"]) == ("spring", "1", "p")


@pytest.mark.parametrize("hint", ["operator", "screening"])
def test_agent_dialled_for_an_operator_or_screener_is_told_in_its_invite(hint: str) -> None:
    """connect_on: human dials the agent for a receptionist or a screening assistant: its
    INVITE names the hint (the agent's first words depend on it), not only a later INFO."""
    from sipbridge.routing import resolve_agent_plan

    def headers(hint: str | None = None) -> dict[str, str]:
        plan = resolve_agent_plan(
            parse_config({**BASE, "agent": {"uri": "sip:agent@127.0.0.1"}}),  # default headers
            call_sid="OUT-x",
            carrier_leg_id="OUT-x/b1",
            to_number="+14155552671",
            from_number="+14155550100",
            metadata={},
            polyai_call_id=None,
            answered_by="human",
            bridge_host="h",
            answered_by_hint=hint,
        )
        return dict(plan.headers)

    h = headers(hint)
    assert (h["X-Sipbridge-Answered-By"], h["X-Sipbridge-Answered-By-Hint"]) == ("human", hint)
    plain = headers()
    assert "X-Sipbridge-Answered-By-Hint" not in plain  # no hint: not sent


@pytest.mark.parametrize(
    "mtc",
    [
        {"keys": []},
        {"keys": ["bad key"]},
        {"keys": ["Via"], "prefix": ""},
        {"keys": ["k"], "prefix": "X Y"},
        {"keys": ["k"], "extra": 1},
        {"prefix": "X-"},
    ],
)
def test_metadata_to_carrier_config_is_validated(mtc: dict[str, Any]) -> None:
    trunks = [{**BASE["trunks"][0], "metadata_to_carrier": mtc}, *BASE["trunks"][1:]]
    with pytest.raises(ConfigError) as ei:
        parse_config({**BASE, "trunks": trunks}, "c.yaml")
    (key,) = {k for k, _ in ei.value.problems}
    assert key.startswith("trunks.0.metadata_to_carrier") and ".keys.keys" not in key, key


def test_old_metadata_prefix_key_says_what_replaced_it() -> None:
    trunks = [{**BASE["trunks"][0], "metadata_header_prefix": "X-"}, *BASE["trunks"][1:]]
    with pytest.raises(ConfigError, match="replaced by metadata_to_carrier"):
        parse_config({**BASE, "trunks": trunks}, "c.yaml")


# ---- caller ID -------------------------------------------------------------------------


def test_trunk_without_caller_id_needs_from_number(env: Any) -> None:
    client, _ = env
    r = _post(client, {"to_number": "+442079460958"})
    assert r.status_code == 400 and _shape(r)["field"] == "from_number", r.text
    assert "caller_id" in r.json()["error"]
    assert (
        _post(client, {"to_number": "+442079460958", "from_number": "+14155550111"}).status_code
        == 200
    )


def test_hunt_group_with_one_trunk_without_caller_id_needs_from_number(env: Any) -> None:
    client, _ = env
    r = _post(client, {"to_number": "+33142685300"})
    assert r.status_code == 400 and r.json()["field"] == "from_number", r.text


def test_inbound_mode_refuses_trunks_without_caller_id() -> None:
    with pytest.raises(ConfigError, match=r"trunks\.1\.caller_id"):
        parse_config({**BASE, "inbound": {"enabled": True}}, "c.yaml")


@pytest.mark.parametrize("cid", ["+1 415", "<sip:x@y>", "a@b", "x\r\n", "", "9" * 65])
def test_caller_id_config_must_be_a_user_part(cid: str) -> None:
    trunks = [{**BASE["trunks"][0], "caller_id": cid}, *BASE["trunks"][1:]]
    with pytest.raises(ConfigError, match=r"trunks\.0\.caller_id"):
        parse_config({**BASE, "trunks": trunks}, "c.yaml")


# ---- numbers: ASCII digits only --------------------------------------------------------


@pytest.mark.parametrize(
    "number",
    [
        "+１4155552671",  # fullwidth digit one
        "+1415555267\u0661",  # Arabic-Indic one
        "+1415555267\u0967",  # Devanagari one
        "+1415555267\u00b9",  # superscript one
        "+1-800-FLOWERS",  # vanity letters
        "+14155552671;ext=1",
        "+1415\u200b5552671",  # zero-width space
        "+1415\x005552671",
    ],
)
@pytest.mark.parametrize("field", ["to_number", "from_number"])
def test_non_ascii_digits_and_letters_are_refused(env: Any, number: str, field: str) -> None:
    client, pool = env
    body = {"to_number": "+14155552671", field: number}
    r = _post(client, body)
    assert r.status_code == 400 and _shape(r)["field"] == field, r.text
    assert pool.plans == []


# ---- error shape -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "ctype"),
    [
        (b'{"to_number": "+14155552671"', "application/json"),  # truncated
        (b'{"to_number": "\xff\xfe"}', "application/json"),  # not UTF-8
        (b"\x00\x01\x02", "application/json"),
        (b"to_number=+14155552671", "application/x-www-form-urlencoded"),
        (b"hello", "text/plain"),
        (b"", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'"just a string"', "application/json"),
        (b"null", "application/json"),
    ],
)
def test_unparseable_bodies_answer_400_in_the_error_shape(
    env: Any, content: bytes, ctype: str
) -> None:
    client, pool = env
    r = client.post(TRIGGER, content=content, headers={**AUTH, "content-type": ctype})
    assert r.status_code == 400, r.text
    assert _shape(r)["field"] in ("body", "to_number"), r.text
    assert pool.plans == []


def test_invalid_json_names_the_body_not_an_offset(env: Any) -> None:
    client, _ = env
    r = client.post(
        TRIGGER, content=b'{"to_number": ', headers={**AUTH, "content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["field"] == "body", r.text
    assert "not valid JSON" in r.json()["error"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cut=st.integers(0, 200))
def test_truncated_json_never_breaks_the_shape(env: Any, cut: int) -> None:
    client, _ = env
    full = json.dumps(
        {
            "to_number": "+14155552671",
            "metadata": {"a": "b"},
            "retry": {"max_attempts": 3, "base_s": 1.5},
            "detection": {"thresholds": {"tone_purity": 0.8}},
        }
    ).encode()
    r = client.post(
        TRIGGER, content=full[:cut], headers={**AUTH, "content-type": "application/json"}
    )
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        _shape(r)


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/nope", 404),
        ("DELETE", TRIGGER, 405),
        ("GET", TRIGGER, 405),
        ("GET", "/v1/outbound-calling/OUT-nope/status", 400),
        ("GET", "/v1/outbound-calling/OUT-00000000-0000-4000-8000-000000000000/status", 404),
    ],
)
def test_other_errors_have_the_shape(env: Any, method: str, path: str, code: int) -> None:
    client, _ = env
    r = client.request(method, path, headers=AUTH)
    assert r.status_code == code
    _shape(r)


def test_unauthenticated_error_has_the_shape(env: Any) -> None:
    client, _ = env
    r = client.post(TRIGGER, json={"to_number": "+14155552671"})
    assert r.status_code == 401 and _shape(r)["error"]


def test_openapi_declares_the_error_responses(env: Any) -> None:
    client, _ = env
    doc = client.get("/openapi.json").json()
    trigger = doc["paths"][TRIGGER]["post"]["responses"]
    assert {"200", "400", "401", "413", "429", "503"} <= set(trigger) and "422" not in trigger
    dtmf = doc["paths"]["/v1/outbound-calling/{call_sid}/dtmf"]["post"]["responses"]
    assert {"400", "401", "404", "409", "413"} <= set(dtmf)
    err = doc["components"]["schemas"]["ErrorBody"]
    assert {"error", "field"} <= set(err["properties"]) and err["required"] == ["error"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]


# ---- body size limit -----------------------------------------------------------------


def test_body_over_the_limit_is_413_in_the_shape(env: Any) -> None:
    client, pool = env
    big = {"to_number": "+14155552671", "metadata": {"k": "x" * 5000}}
    r = _post(client, big)
    assert r.status_code == 413 and _shape(r)["field"] == "body", r.text
    assert "api.max_body_bytes" in r.json()["error"]
    assert pool.plans == []


def test_chunked_body_over_the_limit_is_413(env: Any) -> None:
    client, _ = env

    def chunks() -> Iterator[bytes]:
        yield b'{"to_number": "+14155552671", "metadata": {"k": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}}'

    r = client.post(TRIGGER, content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413, r.text
    _shape(r)


class _Feed:
    """ASGI receive() over a list of body chunks; counts what the app pulled."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.pulled = 0

    async def __call__(self) -> dict[str, Any]:
        i = self.pulled
        self.pulled += 1
        if i >= len(self.chunks):
            return {"type": "http.disconnect"}
        return {
            "type": "http.request",
            "body": self.chunks[i],
            "more_body": i < len(self.chunks) - 1,
        }


def _run_limit(
    headers: list[tuple[bytes, bytes]], feed: _Feed, limit: int = 1000
) -> tuple[list[dict[str, Any]], bytes | None]:
    import asyncio

    sent: list[dict[str, Any]] = []
    seen: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        msg = await receive()
        seen.append(msg["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(msg: MutableMapping[str, Any]) -> None:
        sent.append(dict(msg))

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    asyncio.run(BodyLimit(app, limit)(scope, feed, send))
    return sent, (seen[0] if seen else None)


def test_content_length_over_the_limit_is_refused_before_reading() -> None:
    feed = _Feed([b"x" * 5000])
    sent, seen = _run_limit([(b"content-length", b"5000000")], feed)
    assert sent[0]["status"] == 413 and feed.pulled == 0 and seen is None


def test_chunked_body_is_refused_as_soon_as_it_passes_the_limit() -> None:
    feed = _Feed([b"x" * 300] * 100)  # 30 kB in 100 chunks, no Content-Length
    sent, seen = _run_limit([(b"transfer-encoding", b"chunked")], feed)
    assert sent[0]["status"] == 413 and seen is None
    assert feed.pulled == 4  # 1200 bytes > 1000: stopped reading there


def test_body_within_the_limit_is_replayed_whole() -> None:
    feed = _Feed([b"ab", b"cd", b"ef"])
    sent, seen = _run_limit([], feed)
    assert sent[0]["status"] == 200 and seen == b"abcdef"


def test_bad_content_length_is_400() -> None:
    sent, _ = _run_limit([(b"content-length", b"-5")], _Feed([b""]))
    assert sent[0]["status"] == 400


def test_body_limit_is_bounded_in_config() -> None:
    for bad in (0, 10, 10**12):
        with pytest.raises(ConfigError, match=r"api\.max_body_bytes"):
            parse_config({**BASE, "api": {**BASE["api"], "max_body_bytes": bad}}, "c.yaml")


# ---- message_wav: a file in media.dir, never a path -------------------------------------


def _media(tmp_path: Path) -> Path:
    d = tmp_path / "media"
    d.mkdir()
    (d / "vm.wav").write_bytes(b"RIFF")
    (d / "sub").mkdir()
    (tmp_path / "secret.wav").write_bytes(b"RIFF")
    (d / "escape.wav").symlink_to(tmp_path / "secret.wav")
    (d / "inside.wav").symlink_to(d / "vm.wav")
    return d


def _leave(name: str) -> dict[str, Any]:
    return {
        "to_number": "+14155552671",
        "detection": {
            "connect_on": "human",
            "machine_action": "leave_message",
            "message_wav": name,
        },
    }


@pytest.mark.parametrize(
    "name",
    [
        "../secret.wav",
        "/etc/passwd",
        "sub/../vm.wav",
        "escape.wav",
        "sub",
        "nope.wav",
        ".hidden.wav",
        "..",
        "vm.wav\x00",
        "a b.wav",
        "vm.wav/",
        "C:\\x.wav",
    ],
)
def test_message_wav_must_name_a_file_in_the_media_folder(tmp_path: Path, name: str) -> None:
    client, pool = make_client(tmp_path, media={"dir": str(_media(tmp_path))})
    with client:
        r = _post(client, _leave(name))
        assert r.status_code == 400 and _shape(r)["field"] == "detection.message_wav", r.text
        assert pool.plans == []


@pytest.mark.parametrize("name", ["vm.wav", "inside.wav"])
def test_message_wav_in_the_media_folder_is_accepted(tmp_path: Path, name: str) -> None:
    client, _ = make_client(tmp_path, media={"dir": str(_media(tmp_path))})
    with client:
        assert _post(client, _leave(name)).status_code == 200


def test_message_wav_without_media_dir_is_400(env: Any) -> None:
    client, _ = env
    r = _post(client, _leave("vm.wav"))
    assert r.status_code == 400 and "media.dir" in r.json()["error"], r.text


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("../secret.wav", "not a file name"),
        ("escape.wav", "outside the media folder"),
        ("nope.wav", "does not exist"),
    ],
)
def test_message_wav_in_config_is_checked_at_start_up(
    tmp_path: Path, name: str, words: str
) -> None:
    media = _media(tmp_path)
    routes = [{**BASE["routes"][0], "detection": _leave(name)["detection"]}, *BASE["routes"][1:]]
    with pytest.raises(ConfigError) as ei:
        parse_config({**BASE, "routes": routes, "media": {"dir": str(media)}}, "c.yaml")
    assert "routes.0.detection.message_wav" in str(ei.value) and words in str(ei.value)


# ---- booleans are not numbers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"ivr": {"send_digits_delay_s": False}}, "ivr.send_digits_delay_s"),
        ({"retry": {"max_attempts": True}}, "retry.max_attempts"),
        (
            {"detection": {"thresholds": {"initial_silence_ms": True}}},
            "detection.thresholds.initial_silence_ms",
        ),
        # (accepted as 1.0 until refused by name: its bounds allow 1)
        ({"detection": {"thresholds": {"tone_purity": True}}}, "detection.thresholds.tone_purity"),
    ],
)
def test_a_boolean_for_a_number_is_400_naming_it(
    env: Any, body: dict[str, Any], field: str
) -> None:
    """pydantic's lax mode would read true/false as 1/0: a client's mistake, refused."""
    client, pool = env
    r = _post(client, {"to_number": "+14155552671", **body})
    assert r.status_code == 400, r.text
    assert _shape(r)["field"].startswith(field.rsplit(".", 1)[0]), r.text
    assert field.rsplit(".", 1)[1] in r.text
    assert pool.plans == []


def test_dtmf_duration_must_be_a_number(env: Any) -> None:
    client, _pool = env
    sid = _post(client, {"to_number": "+14155552671"}).json()["callSid"]
    r = client.post(
        f"/v1/outbound-calling/{sid}/dtmf", json={"digits": "1", "duration_ms": True}, headers=AUTH
    )
    assert r.status_code == 400 and "duration_ms" in r.text, r.text


# ---- pairs out of order ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "names"),
    [
        (
            {"detection": {"thresholds": {"beep_end_max_ms": 100}}},
            "detection.thresholds",
            ("beep_min_ms", "beep_end_max_ms"),
        ),
        ({"retry": {"base_s": 60, "cap_s": 10}}, "retry", ("cap_s", "base_s")),
        (
            {"ivr": {"send_digits": "1", "send_digits_delay_s": 10, "max_ivr_s": 5}},
            "ivr",
            ("max_ivr_s", "send_digits_delay_s"),
        ),
    ],
)
def test_a_pair_out_of_order_is_400_naming_both(
    env: Any, body: dict[str, Any], field: str, names: tuple[str, str]
) -> None:
    client, pool = env
    r = _post(client, {"to_number": "+14155552671", **body})
    assert r.status_code == 400, r.text
    assert _shape(r)["field"] == field, r.text
    assert all(n in _shape(r)["error"] for n in names), r.text
    assert pool.plans == []
