"""The detection hint of a call (what kind of human or machine the audio showed:
``operator``, ``screening``, ``prompt``), for the CDR and as a metric label.

A hint comes with the detection result that set the call's ``answered_by``; a later result
that changed ``answered_by`` (the hold listener hearing a person after an IVR) leaves the
call without the earlier result's hint. Metric label values are bounded: a hint outside
:data:`KNOWN_HINTS` is counted as ``other`` (a prompt library's label comes from a
deployer's files).
"""

from __future__ import annotations

from sipbridge.records import CallRecord

KNOWN_HINTS = frozenset({"operator", "screening", "prompt"})


def call_hint(rec: CallRecord) -> str | None:
    """The hint of the detection behind ``rec.answered_by``, if any."""
    det = rec.latest_detection()
    if det is None or not det.hint or det.answered_by != rec.answered_by:
        return None
    return str(det.hint)


def hint_label(hint: object) -> str:
    """A bounded metric label value: "" (no hint), a known hint, or "other"."""
    if not hint:
        return ""
    return hint if isinstance(hint, str) and hint in KNOWN_HINTS else "other"


__all__ = ["KNOWN_HINTS", "call_hint", "hint_label"]
