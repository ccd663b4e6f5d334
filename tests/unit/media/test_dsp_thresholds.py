"""Detection thresholds from a config file or an API request are hostile input: unknown names,
NaN, infinities and out-of-range values are refused with the key named."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from sipbridge.config import DetectionSettings
from sipbridge.media.detect import DetectionConfig, config_from_overrides


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0, 1e12])
def test_bad_values_refused_naming_the_key(value: float) -> None:
    with pytest.raises(ValidationError, match="initial_silence_ms"):
        # the values are deliberately out of range (NaN, inf, floats where an int is typed)
        DetectionSettings(thresholds={"initial_silence_ms": value})  # type: ignore[typeddict-item]


def test_levels_may_be_negative() -> None:
    s = DetectionSettings(thresholds={"tone_min_dbfs": -45.0, "operator_silence_ms": 1200})
    cfg = config_from_overrides(dict(s.thresholds))
    assert cfg.tone_min_dbfs == -45.0 and cfg.operator_silence_ms == 1200


def test_unknown_key_refused() -> None:
    with pytest.raises(ValidationError, match=r"thresholds\.initial_silence\b"):
        # a deliberately unknown key
        DetectionSettings(thresholds={"initial_silence": 3000})  # type: ignore[typeddict-unknown-key]


def test_new_thresholds_are_settable() -> None:
    names = {
        "initial_silence_ms",
        "beep_timeout_ms",
        "beep_end_max_ms",
        "operator_silence_ms",
        "operator_max_greeting_ms",
        "screening_silence_ms",
    }
    assert names <= set(DetectionConfig.__dataclass_fields__)
    DetectionSettings.model_validate({"thresholds": dict.fromkeys(names, 1000.0)})


@pytest.mark.parametrize(
    "thresholds",
    [
        {"beep_min_hz": 3000.0, "beep_max_hz": 500.0},
        {"beep_max_hz": 350.0},
        {"beep_min_hz": 2050.0},
    ],
)
def test_an_empty_beep_band_is_refused(thresholds: dict[str, float]) -> None:
    """Each end within its bounds but the band empty (against the other end's default too):
    no beep could ever be heard, so it is refused naming both keys."""
    with pytest.raises(ValidationError, match=r"beep_min_hz \(\d+\) must be below beep_max_hz"):
        DetectionSettings.model_validate({"thresholds": thresholds})
    DetectionSettings.model_validate({"thresholds": {"beep_min_hz": 300.0, "beep_max_hz": 2100.0}})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("tone_purity", True),  # 1.0: no tone is ever that pure, no beep or SIT heard
        ("cp_purity", False),
        ("operator_clear_db", True),
        ("room_tilt_db", False),
        ("screening_min_greeting_ms", False),
        ("max_words", True),
    ],
)
def test_a_boolean_threshold_is_refused_naming_the_key(key: str, value: bool) -> None:
    """A YAML/JSON boolean where a threshold is a number is a mistake, refused by name as it
    is for every other number in the config and the API (pydantic's lax mode read true as 1,
    false as 0: only the bounds of some keys caught it)."""
    with pytest.raises(ValidationError, match=rf"thresholds\n.*{key}: a number is required, not"):
        DetectionSettings.model_validate({"thresholds": {key: value}})
