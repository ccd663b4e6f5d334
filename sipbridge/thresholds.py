"""Bounds for the detection threshold overrides (``detection.thresholds``).

Each key is a field of :class:`sipbridge.media.detect.DetectionConfig`; its bounds keep the
detector meaningful (audio is 8 kHz, so tones are below 4000 Hz; times stay within what a
call's analysis can last) and keep the worker's arithmetic finite. NaN and +-Infinity are
refused like everywhere else in the config and the API.
"""

from __future__ import annotations

from typing import Annotated

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


__all__ = ["DetectionThresholds"]
