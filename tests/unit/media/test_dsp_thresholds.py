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
    # (operator_max_greeting_ms must stay above max_greeting_ms: see the order checks below)
    values = {**dict.fromkeys(names, 1000.0), "operator_max_greeting_ms": 2000.0}
    DetectionSettings.model_validate({"thresholds": values})


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
    with pytest.raises(
        ValidationError, match=r"beep_min_hz \(\d+(, the default)?\) must be below beep_max_hz"
    ):
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


@pytest.mark.parametrize(
    ("thresholds", "names"),
    [
        # followed to its end for less time than it takes to be heard: the end is reported
        # on the next frame, while the beep sounds, and leave_message talks over it
        ({"beep_end_max_ms": 100}, ("beep_end_max_ms", "beep_min_ms")),
        ({"beep_min_ms": 3000, "beep_end_max_ms": 2500}, ("beep_end_max_ms", "beep_min_ms")),
        ({"beep_min_ms": 2500}, ("beep_end_max_ms", "beep_min_ms")),
        # a live voice is judged only past max_greeting_ms: the operator rule would be dead
        ({"operator_max_greeting_ms": 1500}, ("operator_max_greeting_ms", "max_greeting_ms")),
        ({"max_greeting_ms": 7000}, ("operator_max_greeting_ms", "max_greeting_ms")),
        # the masked-line wait exists to be the longer one
        ({"operator_silence_ms": 2000}, ("operator_masked_silence_ms", "operator_silence_ms")),
        # the beep-less machine is settled before a screener could be heard
        ({"screening_silence_ms": 7000}, ("screening_silence_ms", "beep_timeout_ms")),
        # the overall cap fires before any greeting's own beep wait
        ({"max_beep_wait_ms": 5000}, ("max_beep_wait_ms", "beep_timeout_ms")),
        # a greeting max_greeting_ms long could never be decided human
        (
            {"total_analysis_ms": 2000},
            ("total_analysis_ms", "max_greeting_ms", "after_greeting_silence_ms"),
        ),
    ],
)
def test_thresholds_out_of_order_are_refused_naming_both(
    thresholds: dict[str, int], names: tuple[str, ...]
) -> None:
    """Each threshold within its own bounds, but a pair whose order matters inverted (against
    the other's default too): one rule of the detector could never fire, or fires wrongly.
    Refused at config load / trigger naming every key of the pair."""
    with pytest.raises(ValidationError) as ei:
        DetectionSettings.model_validate({"thresholds": thresholds})
    msg = str(ei.value)
    for name in names:
        assert name in msg, (name, msg)


def test_thresholds_in_order_are_accepted() -> None:
    for thresholds in (
        {"beep_min_ms": 200, "beep_end_max_ms": 1000},
        {"max_greeting_ms": 2500, "operator_max_greeting_ms": 5000, "total_analysis_ms": 3500},
        {"operator_silence_ms": 1500, "operator_masked_silence_ms": 1500},
        {"screening_silence_ms": 6000, "beep_timeout_ms": 6000, "max_beep_wait_ms": 6500},
    ):
        DetectionSettings.model_validate({"thresholds": thresholds})


def test_every_violation_is_reported_with_the_defaults_named() -> None:
    with pytest.raises(ValidationError) as ei:
        DetectionSettings.model_validate(
            {"thresholds": {"beep_end_max_ms": 100, "max_beep_wait_ms": 5000}}
        )
    msg = str(ei.value)
    assert "beep_min_ms (150, the default) must be below beep_end_max_ms (100)" in msg, msg
    assert "beep_timeout_ms (6000, the default) must be below max_beep_wait_ms (5000)" in msg
