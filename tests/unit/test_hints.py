"""The detection hint (operator / screening / prompt) in the CDR and as a bounded metric
label."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sipbridge.cdr import FIELDS, build_cdr
from sipbridge.hints import call_hint, hint_label
from sipbridge.media.result import Detection
from sipbridge.metrics import Metrics
from sipbridge.records import CallEvent, CallRecord, LegRecord
from tests.doubles import detection as det
from tests.unit.test_operations import _rec, samples


def _with(
    answer: Detection | None = None, hold: Detection | None = None, answered_by: str = "human"
) -> CallRecord:
    rec = _rec(answered_by=answered_by)
    leg = rec.legs["l2"]
    found = {k: v for k, v in (("answer", answer), ("hold", hold)) if v is not None}
    return replace(rec, legs={**rec.legs, "l2": replace(leg, detection=found)})


def test_cdr_carries_the_hint_of_the_result_behind_answered_by() -> None:
    assert "answered_by_hint" in FIELDS
    rec = _with(det("human", hint="operator"))
    cdr = build_cdr(rec, 1, "success", "", 126.0)
    assert (cdr["answered_by"], cdr["answered_by_hint"]) == ("human", "operator")
    # a provisional machine's hint does not stick to a call now said to be human (hold)
    rec = _with(det("machine", hint="prompt"), answered_by="human")
    assert build_cdr(rec, 1, "success", "", 126.0)["answered_by_hint"] is None
    assert call_hint(_with(det("human"))) is None
    # not answered: no hint
    unanswered = _rec(answered_by=None, legs={"l": LegRecord(trunk="t1", attempt=1, invite_at=5.0)})
    assert build_cdr(unanswered, 1, "failure", "busy", 6.0)["answered_by_hint"] is None


@pytest.mark.parametrize(
    ("hint", "label"),
    [(None, ""), ("", ""), ("operator", "operator"), ("screening", "screening"),
     ("prompt", "prompt"), ("not_in_service", "other"), ("x" * 500, "other"), (7, "other")],
)  # fmt: skip
def test_hint_label_values_are_bounded(hint: object, label: str) -> None:
    assert hint_label(hint) == label


def test_metrics_label_calls_and_detection_latency_by_hint() -> None:
    m = Metrics()
    for hint in ("screening", "a-deployer-label"):
        rec = _with(det("human", hint=hint))
        m.on_event(rec, CallEvent(130.0, "status", {"from": "calling", "to": "success"}))
        m.on_event(
            rec,
            CallEvent(
                106.0,
                "detection",
                {"phase": "answer", "kind": "decision", "answered_by": "human", "hint": hint,
                 "decided_at_ms": 2500},
            ),
        )  # fmt: skip
    s = samples(m.render().decode())
    for label in ("screening", "other"):
        key = (("answered_by", "human"), ("hint", label), ("reason", ""), ("status", "success"))
        assert s[("sipbridge_calls_total", key)] == 1
        lat = (("answered_by", "human"), ("hint", label), ("phase", "answer"))
        assert s[("sipbridge_detection_latency_seconds_sum", lat)] == pytest.approx(2.5)
