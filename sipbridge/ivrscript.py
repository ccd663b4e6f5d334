"""Scripted IVR steps: DTMF digits, pauses and spoken prompts.

An IVR script is either a DTMF string (``"1w2#"``: 0-9 * # A-D, ``w`` = 0.5 s pause,
``W`` = 1 s) or a list of steps, each a DTMF string or ``{say: FILE}``::

    ["1", "w", {"say": "agent.wav"}, "w2"]

``FILE`` names a WAV in ``media.dir`` (never a path, see :mod:`sipbridge.mediafiles`):
16-bit PCM, mono, 8 or 16 kHz, :data:`SAY_MIN_S`..:data:`SAY_MAX_S` long, at most
:data:`SAY_MAX_BYTES`. The bridge plays it into the carrier leg in order with the digits:
the step after a ``say`` starts when its playback ends.

Pure logic plus reading a WAV header; no SIP stack.
"""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from sipbridge.errors import MediaFileError
from sipbridge.mediafiles import check_media_name, media_path

DTMF_DIGITS = "0123456789*#ABCDabcd"
DTMF_PAUSES = "wW"
MAX_SCRIPT_STEPS = 32
MAX_DIGITS_LEN = 256
SAY_MIN_S = 0.1
SAY_MAX_S = 30.0
SAY_MAX_BYTES = 2 * 1024 * 1024  # 30 s of 16 kHz 16-bit mono is ~0.96 MB
SAY_RATES_HZ = (8000, 16000)


def check_dtmf(digits: str, field: str = "digits") -> str:
    """0-9 * # A-D, and pauses w (0.5 s) / W (1 s); ValueError names a bad character."""
    prefix = f"{field}: " if field else ""
    if not digits:
        raise ValueError(f"{prefix}empty")
    for i, c in enumerate(digits):
        if c not in DTMF_DIGITS and c not in DTMF_PAUSES:
            raise ValueError(
                f"{prefix}character {c!r} at position {i} is not a DTMF digit "
                "(0-9 * # A-D, w = 0.5 s pause, W = 1 s pause)"
            )
    return digits


def _say_name(v: str) -> str:
    # The file itself is checked against media.dir by the config / the trigger.
    return check_media_name(v, "")


class SayStep(BaseModel):
    """Play a WAV from ``media.dir`` into the carrier leg (an IVR that wants speech)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    say: Annotated[str, Field(max_length=255), AfterValidator(_say_name)]


Step = str | SayStep


def _check_script(v: str | list[Step]) -> str | list[Step]:
    if isinstance(v, str):
        return check_dtmf(v, "")
    for i, step in enumerate(v):
        if isinstance(step, str):
            check_dtmf(step, f"step {i}")
    return v


DigitString = Annotated[str, Field(max_length=MAX_DIGITS_LEN)]
# A DTMF string, or a list of DTMF strings and {say: FILE} steps (bounded).
IvrScript = Annotated[
    DigitString
    | Annotated[list[DigitString | SayStep], Field(min_length=1, max_length=MAX_SCRIPT_STEPS)],
    AfterValidator(_check_script),
]


def segments(script: str | list[Step]) -> list[Step]:
    """The steps the flow runs one after the other: adjacent DTMF strings joined into one
    SendDtmf string (``["1", "w", {say}, "w2"]`` -> ``["1w", {say}, "w2"]``)."""
    steps = [script] if isinstance(script, str) else list(script)
    out: list[Step] = []
    for step in steps:
        if isinstance(step, str) and out and isinstance(out[-1], str):
            out[-1] = out[-1] + step
        else:
            out.append(step)
    return out


def say_files(script: str | list[Step] | None) -> list[tuple[int, str]]:
    """(index in the list, file name) of each ``say`` step."""
    if script is None or isinstance(script, str):
        return []
    return [(i, s.say) for i, s in enumerate(script) if isinstance(s, SayStep)]


def check_say_wav(path: Path, field: str) -> float:
    """The WAV's duration in seconds; :class:`MediaFileError` naming ``field`` when it is
    not 16-bit PCM mono at 8/16 kHz, too big, too short or too long."""
    size = path.stat().st_size
    if size > SAY_MAX_BYTES:
        raise MediaFileError(field, f"{path.name!r} is {size} bytes (at most {SAY_MAX_BYTES})")
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, frames = (
                w.getnchannels(),
                w.getsampwidth(),
                w.getframerate(),
                w.getnframes(),
            )
    except (wave.Error, EOFError, OSError) as e:
        raise MediaFileError(field, f"{path.name!r} is not a PCM WAV file ({e})") from None
    if channels != 1 or width != 2 or rate not in SAY_RATES_HZ:
        raise MediaFileError(
            field,
            f"{path.name!r} is {channels} channel(s), {8 * width}-bit, {rate} Hz: "
            "16-bit PCM mono at 8000 or 16000 Hz is required",
        )
    seconds = frames / rate
    if not SAY_MIN_S <= seconds <= SAY_MAX_S:
        raise MediaFileError(
            field,
            f"{path.name!r} lasts {seconds:.2f} s (between {SAY_MIN_S} and {SAY_MAX_S} s)",
        )
    return seconds


def check_ivr_media(media_dir: str | None, ivr: Any, key: str) -> None:
    """Every ``say`` file of an :class:`~sipbridge.callsettings.IvrSettings` (its
    ``send_digits`` and ``alternative_digits``) exists in ``media_dir`` and is a usable
    WAV; :class:`MediaFileError` names the field (``key.send_digits.2.say``)."""
    if ivr is None:
        return
    scripts = [("send_digits", ivr.send_digits)] + [
        (f"alternative_digits.{j}", alt) for j, alt in enumerate(ivr.alternative_digits)
    ]
    for name, script in scripts:
        for i, file in say_files(script):
            field = f"{key}.{name}.{i}.say" if key else f"{name}.{i}.say"
            check_say_wav(media_path(media_dir, file, field), field)


__all__ = [
    "DTMF_DIGITS",
    "DTMF_PAUSES",
    "IvrScript",
    "SayStep",
    "Step",
    "check_dtmf",
    "check_ivr_media",
    "check_say_wav",
    "say_files",
    "segments",
]
