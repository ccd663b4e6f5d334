"""Dispositions from the agent's BYE: parsing (header, RFC 3326 Reason), hostile values,
the outcomes table, and the agent's view in the status and CDR."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.agentview import agent_view
from sipbridge.cdr import build_cdr
from sipbridge.disposition import (
    DISPOSITIONS,
    MAX_TEXT_CHARS,
    MAX_VALUE_CHARS,
    MAX_VALUES,
    WIRE_VALUE_CHARS,
    Disposition,
    bye_header_values,
    parse_disposition,
    parse_header_value,
    sanitize_text,
)
from sipbridge.dispositionconfig import DispositionConfig
from sipbridge.outcomes import OUTCOME_KINDS, from_disposition
from sipbridge.records import CallRecord, LegRecord
from sipbridge.sipmsg import split_message


def _one(header=(), reason=()):
    return parse_disposition(list(header), list(reason))


# ---- the disposition header ------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value", "retry", "text"),
    [
        ("voicemail", "voicemail", None, ""),
        ("VoiceMail; retry=true", "voicemail", True, ""),
        ("not_in_service;retry=FALSE", "not_in_service", False, ""),
        (
            'human ; reason="asked to call back, after 5"',
            "human",
            None,
            "asked to call back, after 5",
        ),
        ("busy;reason=line_busy;retry=true", "busy", True, "line_busy"),
        ("no_answer;", "no_answer", None, ""),
        ('ivr; reason="say \\"agent\\" failed"', "ivr", None, 'say "agent" failed'),
    ],
)
def test_header_values(raw, value, retry, text):
    p = _one([raw])
    assert p.disposition == Disposition(value, retry, text, "header")
    assert p.problems == ()


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("martian", "unknown disposition 'martian'"),
        ("", "unknown disposition ''"),
        ("human, voicemail", "unknown disposition"),
        ("x" * (MAX_VALUE_CHARS + 1), f"longer than {MAX_VALUE_CHARS}"),
        ("human\x00", "control character 0x00"),
        ("human;\rretry=true", "control character 0x0d"),
        ('human; reason="open', "unterminated quoted string"),
        ("human; retry=true; retry=false", "param 'retry' given twice"),
        ("human; a=1; b=2; c=3; d=4; e=5; f=6; g=7", "more than 6 params"),
        ("human; =x", "malformed param"),
        ("human; retry=tr ue", "malformed param"),
    ],
)
def test_hostile_header_values_give_no_disposition(raw, problem):
    p = _one([raw])
    assert p.disposition is None
    assert any(problem in msg for msg in p.problems), p.problems


def test_bad_retry_or_unknown_param_is_dropped_value_kept():
    p = _one(["voicemail; retry=maybe; colour=blue"])
    assert p.disposition == Disposition("voicemail", None, "", "header")
    assert any("retry='maybe' is not true or false" in m for m in p.problems)
    assert any("unknown param 'colour' dropped" in m for m in p.problems)


def test_duplicated_headers():
    same = _one(["busy", "BUSY"])
    assert same.disposition is not None and same.disposition.value == "busy"
    clash = _one(["busy", "human"])
    assert clash.disposition is None
    assert any("conflicting dispositions (busy, human)" in m for m in clash.problems)
    many = _one(["busy"] * (MAX_VALUES + 1))
    assert many.disposition is None and "more than" in many.problems[0]


def test_reason_text_is_sanitised_and_bounded():
    p = _one(['human; reason="a\\\x7fb\u202ec   d"'])
    # a DEL is a control character: the whole value is refused
    assert p.disposition is None
    p = _one(['human; reason="a\u202eb\u200bc   d' + "x" * 300 + '"'])
    assert p.disposition is None  # oversize value
    p = _one(['human; reason="a\u202eb\u200bc   d"'])
    assert p.disposition is not None and p.disposition.text == "a b c d"
    assert len(sanitize_text("y" * 1000)) == MAX_TEXT_CHARS


# ---- RFC 3326 Reason -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "value", "cause"),
    [
        ('SIP;cause=486;text="Busy Here"', "busy", "SIP 486"),
        ("SIP ;cause=404", "not_in_service", "SIP 404"),
        ('Q.850;cause=1;text="Unallocated number"', "not_in_service", "Q.850 1"),
        ("q.850;cause=17", "busy", "Q.850 17"),
        ("Q.850;cause=19", "no_answer", "Q.850 19"),
        ("X-Sipbridge;disposition=voicemail;retry=true", "voicemail", ""),
    ],
)
def test_reason_header(reason, value, cause):
    p = _one(reason=[reason])
    assert p.disposition is not None
    assert (p.disposition.value, p.disposition.cause, p.disposition.source) == (
        value,
        cause,
        "reason",
    )
    assert p.problems == ()


def test_reason_sipbridge_retry_and_text():
    p = _one(reason=['X-Sipbridge;disposition=busy;retry=false;text="line engaged"'])
    assert p.disposition == Disposition("busy", False, "line engaged", "reason")


@pytest.mark.parametrize(
    "reason", ["Q.850;cause=16", "SIP;cause=200", "SIP;cause=603", "preemption;cause=1", "SIP"]
)
def test_normal_or_unmapped_reason_is_no_disposition_and_no_problem(reason):
    assert _one(reason=[reason]) == parse_disposition([], [reason])
    p = _one(reason=[reason])
    assert p.disposition is None and p.problems == ()


@pytest.mark.parametrize(
    "reason",
    ["Q.850;cause=١", "Q.850;cause=99999", "X-Sipbridge;disposition=martian", "SIP;cause=\x01"],
)
def test_hostile_reason(reason):
    p = _one(reason=[reason])
    assert p.disposition is None and p.problems


def test_reason_precedence_and_header_wins():
    # RFC 3326: one reason-value per protocol; Q.850 is the more specific one
    p = _one(reason=["SIP;cause=486, Q.850;cause=1"])
    assert p.disposition is not None and p.disposition.value == "not_in_service"
    p = _one(reason=["Q.850;cause=17", "X-Sipbridge;disposition=retry"])
    assert p.disposition is not None and p.disposition.value == "retry"
    p = _one(["voicemail"], ["Q.850;cause=1"])
    assert p.disposition is not None and p.disposition.source == "header"
    # a refused header falls back to Reason, and says why
    p = _one(["martian"], ["Q.850;cause=1"])
    assert p.disposition is not None and p.disposition.value == "not_in_service"
    assert any("martian" in m for m in p.problems)


# ---- reading a BYE ---------------------------------------------------------------------


BYE = (
    "BYE sip:bridge@127.0.0.1:5080 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n"
    "Call-ID: abc\r\n"
    "x-sipbridge-disposition: voicemail;\r\n retry=true\r\n"
    "Reason: Q.850;cause=16\r\n"
    "Content-Length: 0\r\n\r\n"
)


def test_bye_header_values_reads_named_headers_folded_and_any_case():
    _start, headers, _ = split_message(BYE)
    found = bye_header_values(headers, ("X-Sipbridge-Disposition", "Reason"))
    assert found == (
        ("X-Sipbridge-Disposition", "voicemail; retry=true"),
        ("Reason", "Q.850;cause=16"),
    )
    p = parse_disposition([found[0][1]], [found[1][1]])
    assert p.disposition == Disposition("voicemail", True, "", "header")


def test_bye_header_values_is_bounded():
    headers = [("X-D", "v" * 10_000)] * 50
    found = bye_header_values(headers, ("x-d",))
    assert len(found) == MAX_VALUES + 1
    assert all(len(v) == WIRE_VALUE_CHARS for _, v in found)
    p = parse_disposition([v for _, v in found])
    assert p.disposition is None and p.problems


# ---- property tests --------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.text(max_size=300), max_size=10),
    st.lists(st.text(max_size=300), max_size=10),
)
def test_any_input_never_raises_and_stays_bounded(headers, reasons):
    p = parse_disposition(headers, reasons)
    if p.disposition is not None:
        assert p.disposition.value in DISPOSITIONS
        assert len(p.disposition.text) <= MAX_TEXT_CHARS
        assert all(ord(c) >= 32 for c in p.disposition.text)
        assert p.disposition.retry in (None, True, False)
    for problem in p.problems:
        assert len(problem) < 400


_token_chars = st.sampled_from(sorted(DISPOSITIONS))
_param_text = st.text(
    alphabet=st.characters(
        min_codepoint=32,
        max_codepoint=0x2FF,
        exclude_characters='"\\' + "".join(map(chr, range(0x7F, 0xA0))),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_token_chars, st.sampled_from([None, True, False]), _param_text, st.booleans())
def test_well_formed_values_round_trip(value, retry, text, upper):
    raw = value.upper() if upper else value
    if retry is not None:
        raw += f"; retry={'true' if retry else 'false'}"
    raw += f'; reason="{text}"'
    p = parse_header_value(raw)
    assert p.problems == ()
    assert p.disposition == Disposition(value, retry, sanitize_text(text), "header")


# ---- outcomes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "retry", "result", "reason", "kind", "retryable", "requested"),
    [
        ("human", None, "success", "ended by agent", "completed", False, False),
        ("human", True, "failure", "retry requested by agent", "agent_retry", True, True),
        ("voicemail", None, "failure", "answered by machine (agent)", "machine", False, False),
        ("voicemail", True, "failure", "answered by machine (agent)", "machine", True, True),
        ("not_in_service", None, "failure", "number not in service (agent)", "not_in_service",
         False, False),
        ("busy", None, "failure", "busy (agent)", "busy", True, False),
        ("busy", False, "failure", "busy (agent)", "busy", False, False),
        ("retry", None, "failure", "retry requested by agent", "agent_retry", True, True),
        ("retry", False, "failure", "retry requested by agent", "agent_retry", False, False),
        ("fax", None, "failure", "answered by fax (agent)", "fax", False, False),
    ],
)  # fmt: skip
def test_outcomes_table(value, retry, result, reason, kind, retryable, requested):
    t = from_disposition(value, retry, "detail")
    assert (t.result, t.reason, t.kind, t.retryable, t.retry_requested) == (
        result,
        reason,
        kind,
        retryable,
        requested,
    )
    assert t.detail == "detail"


def test_every_disposition_has_a_known_outcome_kind():
    for value in DISPOSITIONS:
        for retry in (None, True, False):
            assert from_disposition(value, retry).kind in OUTCOME_KINDS


def test_voicemail_message_left_option():
    t = from_disposition("voicemail", None, voicemail="message_left")
    assert (t.result, t.kind) == ("success", "message_left")
    t = from_disposition("machine", True, voicemail="message_left")
    assert (t.result, t.kind, t.retryable) == ("failure", "agent_retry", True)


# ---- config ----------------------------------------------------------------------------


def test_config_header_name_is_validated():
    assert DispositionConfig().policy().read_headers() == ("X-Sipbridge-Disposition", "Reason")
    assert DispositionConfig(reason_header=False).policy().read_headers() == (
        "X-Sipbridge-Disposition",
    )
    assert DispositionConfig(enabled=False).policy().read_headers() == ()
    for bad in ("X Bad", "X-Bad:", "Via", "Reason", "", "X-\u00e9"):
        with pytest.raises(ValueError):
            DispositionConfig(header=bad)


# ---- the agent's view in records -------------------------------------------------------


def _rec(attempts=1, disposition=None):
    legs = {
        "c1/b1": LegRecord(role="carrier", attempt=1, answered_at=10.0, ended_at=20.0),
        "c1/a1": LegRecord(role="agent", bridge_with="c1/b1", disposition=disposition),
    }
    return CallRecord(
        call_sid="c1",
        status="failure",
        to_number="+15551230000",
        from_number="+15551239999",
        created_at=1.0,
        last_updated=2.0,
        attempts=attempts,
        answered_by="human",
        legs=legs,
    )


def test_agent_view_status_and_cdr():
    d = Disposition("voicemail", True, "beep", "header").to_json()
    rec = _rec(disposition=d)
    assert agent_view(rec) == ("machine", d)
    cdr = build_cdr(rec, 1, "queued", "answered by machine (agent)", 21.0)
    assert (cdr["answered_by"], cdr["agent_answered_by"], cdr["disposition"]) == (
        "human",
        "machine",
        "voicemail",
    )
    # attempt 2 has no agent verdict (yet): nothing from attempt 1 is shown as its own
    assert agent_view(_rec(attempts=2, disposition=d)) == (None, None)
    none = build_cdr(_rec(), 1, "success", "", 21.0)
    assert (none["agent_answered_by"], none["disposition"]) == (None, None)
    # stored and read back
    leg = LegRecord.from_json(rec.legs["c1/a1"].to_json())
    assert leg.disposition == d
    with pytest.raises(ValueError):
        LegRecord.from_json({"role": "agent", "disposition": "voicemail"})


def test_config_error_names_the_key(monkeypatch):
    import yaml

    from sipbridge.config import parse_config
    from sipbridge.errors import ConfigError

    monkeypatch.setenv("SIPBRIDGE_API_TOKEN", "x")
    with open(Path(__file__).parents[2] / "config" / "example.yaml") as f:
        data = yaml.safe_load(f)
    assert parse_config(data).agent.disposition.header == "X-Sipbridge-Disposition"
    data["agent"]["disposition"] = {"header": "Call-ID"}
    with pytest.raises(
        ConfigError, match=r"agent\.disposition\.header: header 'Call-ID' is managed"
    ):
        parse_config(data)
