"""Bounds for the detection threshold overrides (``detection.thresholds``).

Each key is a field of :class:`sipbridge.media.detect.DetectionConfig`; its bounds keep the
detector meaningful (audio is 8 kHz, so tones are below 4000 Hz; times stay within what a
call's analysis can last) and keep the worker's arithmetic finite. NaN and +-Infinity are
refused like everywhere else in the config and the API. Pairs whose order matters (a band's
ends, a rule that only runs after another's threshold) are checked by :func:`order_problems`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict


def _ms(lo: int, hi: int) -> object:
    return Field(ge=lo, le=hi, description=f"milliseconds, {lo}..{hi}")


@with_config(ConfigDict(extra="forbid", allow_inf_nan=False))
class DetectionThresholds(TypedDict, total=False):
    """Overrides of the detector's thresholds; a key left out keeps its default."""

    initial_silence_ms: Annotated[int, _ms(100, 60_000)]
    max_greeting_ms: Annotated[int, _ms(100, 60_000)]
    after_greeting_silence_ms: Annotated[int, _ms(50, 10_000)]
    max_words: Annotated[int, Field(ge=1, le=100)]
    total_analysis_ms: Annotated[int, _ms(500, 120_000)]
    beep_min_ms: Annotated[int, _ms(20, 5_000)]
    beep_min_hz: Annotated[float, Field(ge=100, le=4000)]
    beep_max_hz: Annotated[float, Field(ge=100, le=4000)]
    beep_timeout_ms: Annotated[int, _ms(100, 60_000)]
    max_beep_wait_ms: Annotated[int, _ms(1_000, 300_000)]
    ivr_resume_gap_ms: Annotated[int, _ms(100, 30_000)]
    tone_purity: Annotated[float, Field(ge=0, le=1)]
    tone_min_dbfs: Annotated[float, Field(ge=-120, le=0)]
    cp_purity: Annotated[float, Field(ge=0, le=1)]
    cp_max_twist_db: Annotated[float, Field(ge=0, le=40)]
    sit_confirm_ms: Annotated[int, _ms(10, 5_000)]
    ced_min_ms: Annotated[int, _ms(50, 10_000)]
    operator_silence_ms: Annotated[int, _ms(100, 10_000)]
    operator_masked_silence_ms: Annotated[int, _ms(100, 10_000)]
    operator_clear_db: Annotated[float, Field(ge=0, le=120)]
    operator_max_greeting_ms: Annotated[int, _ms(500, 60_000)]
    screening_silence_ms: Annotated[int, _ms(100, 30_000)]
    screening_min_greeting_ms: Annotated[int, _ms(0, 30_000)]
    beep_end_max_ms: Annotated[int, _ms(100, 10_000)]
    recorded_line_dbfs: Annotated[float, Field(ge=-120, le=0)]
    room_tilt_db: Annotated[float, Field(ge=0, le=120)]


# (low key, high key, strict, why): thresholds whose order the detector relies on. Each
# inverted pair leaves a rule that can never fire or fires wrongly, silently, on every call.
_ORDER: tuple[tuple[str, str, bool, str], ...] = (
    ("beep_min_hz", "beep_max_hz", True, "an empty beep band never hears a beep"),
    (
        "beep_min_ms",
        "beep_end_max_ms",
        True,
        "a beep is followed to its end only once beep_min_ms of it was heard: its end "
        "would be reported while it still sounds (leave_message would talk over it)",
    ),
    (
        "max_greeting_ms",
        "operator_max_greeting_ms",
        True,
        "a live voice is judged an operator only past max_greeting_ms: the operator rule "
        "could never fire",
    ),
    (
        "operator_silence_ms",
        "operator_masked_silence_ms",
        False,
        "the wait on a line whose noise hides a recording's bed is the longer one (a late "
        "beep must still win)",
    ),
    (
        "screening_silence_ms",
        "beep_timeout_ms",
        False,
        "a beep-less machine is settled at beep_timeout_ms: a screening assistant could "
        "never be heard",
    ),
    (
        "beep_timeout_ms",
        "max_beep_wait_ms",
        True,
        "max_beep_wait_ms counts from the start, beep_timeout_ms from the greeting's end: "
        "the per-greeting wait could never run out",
    ),
)


def order_problems(overrides: Mapping[str, Any]) -> list[str]:
    """Inverted pairs among ``overrides`` (each key not given read as its default), one
    message each naming both keys (and which of them is the default); empty if none."""
    from sipbridge.media.thresholds import DetectionConfig

    base = DetectionConfig()

    def value(key: str) -> tuple[float, str]:
        if key in overrides:
            return float(overrides[key]), ""
        return float(getattr(base, key)), ", the default"

    out: list[str] = []
    for lo_key, hi_key, strict, why in _ORDER:
        (lo, lo_d), (hi, hi_d) = value(lo_key), value(hi_key)
        if lo > hi or (strict and lo == hi):
            word = "below" if strict else "at most"
            out.append(f"{lo_key} ({lo:g}{lo_d}) must be {word} {hi_key} ({hi:g}{hi_d}): {why}")
    # A greeting max_greeting_ms long is a person only after after_greeting_silence_ms of
    # silence; total_analysis_ms ends the human/machine decision (as machine) before that.
    (total, total_d), (greet, greet_d), (after, after_d) = (
        value("total_analysis_ms"),
        value("max_greeting_ms"),
        value("after_greeting_silence_ms"),
    )
    if total < greet + after:
        out.append(
            f"total_analysis_ms ({total:g}{total_d}) must be at least max_greeting_ms "
            f"({greet:g}{greet_d}) + after_greeting_silence_ms ({after:g}{after_d}): a "
            "greeting up to max_greeting_ms long could not be decided human in time"
        )
    return out


__all__ = ["DetectionThresholds", "order_problems"]
