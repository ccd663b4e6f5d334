import pytest

from sipbridge.outcomes import from_leg_end, from_sip


@pytest.mark.parametrize(
    ("status", "result", "reason"),
    [
        (486, "failure", "busy"),
        (600, "failure", "busy"),
        (480, "failure", "no answer"),
        (408, "failure", "no answer"),
        (404, "failure", "number not in service"),
        (484, "failure", "number not in service (address incomplete)"),
        (403, "failure", "rejected by carrier"),
        (503, "failure", "carrier error"),
        (500, "failure", "carrier error"),
        (599, "failure", "carrier error"),
        (699, "failure", "call rejected"),
        (499, "failure", "call failed"),
        (302, "failure", "redirected (not followed)"),
        (300, "failure", "redirected (not followed)"),
        (305, "failure", "redirected (not followed)"),
    ],
)
def test_sip_table(status, result, reason):
    sip_reason = {503: "Service Unavailable", 500: "Server Error"}.get(status, "Odd")
    t = from_sip(status, sip_reason)
    assert (t.result, t.reason, t.sip_status) == (result, reason, status)
    # the carrier's own words go to detail, never into the reason
    assert t.detail == f"SIP {status} {sip_reason}"


def test_answered_then_normal_end_is_success():
    t = from_leg_end("remote_bye", True, 200)
    assert (t.result, t.reason) == ("success", "")


def test_ring_timeout_is_no_answer_and_retryable():
    t = from_leg_end("ring_timeout", False, 487)
    assert (t.result, t.reason, t.retryable) == ("failure", "no answer", True)


def test_busy_retryable_not_found_not():
    assert from_sip(486).retryable and not from_sip(404).retryable


def test_cancel_before_answer():
    assert from_leg_end("local_hangup", False, 487).reason == "canceled"


def test_worker_died_names_it():
    t = from_leg_end("worker_died", False, None, detail="SIP worker 1 exited with code -9")
    assert (t.result, t.reason) == ("failure", "SIP worker failed")
    assert t.detail == "SIP worker 1 exited with code -9"


def test_remote_final_uses_sip_table():
    assert from_leg_end("remote_final", False, 486, "Busy Here").reason == "busy"


def test_redirect_is_not_followed_and_names_the_target():
    t = from_leg_end(
        "remote_final",
        False,
        302,
        "Moved Temporarily",
        detail="redirect to <sip:x@127.0.0.1:5070> not followed",
    )
    assert (t.result, t.reason, t.kind, t.retryable) == (
        "failure",
        "redirected (not followed)",
        "redirected",
        False,
    )
    assert t.detail == (
        "SIP 302 Moved Temporarily; redirect to <sip:x@127.0.0.1:5070> not followed"
    )


def test_every_kind_in_the_code_is_a_known_outcome_kind() -> None:
    """retry_on is validated against OUTCOME_KINDS: a kind produced anywhere in the code but
    missing from the set could never be retried (or counted) by name."""
    import re
    from pathlib import Path

    import sipbridge
    from sipbridge.outcomes import OUTCOME_KINDS

    made = re.compile(r'Termination\(\s*"(?:success|failure)",\s*[^,]+,\s*"([a-z_]+)"', re.S)
    kinds: set[str] = set()
    for path in Path(sipbridge.__file__).parent.rglob("*.py"):
        kinds |= set(made.findall(path.read_text()))
    assert kinds, "the pattern found no Termination at all"
    assert kinds <= OUTCOME_KINDS, sorted(kinds - OUTCOME_KINDS)


def test_retry_on_refuses_unknown_kinds() -> None:
    import pytest
    from pydantic import ValidationError

    from sipbridge.callsettings import RetryConfig

    assert RetryConfig(retry_on=["busy", "machine", "ivr_timeout"]).retry_on
    with pytest.raises(ValidationError, match=r"unknown outcome kind.*'bussy'"):
        RetryConfig(retry_on=["bussy"])
