"""Score a detection result against a corpus label (generated or real corpora).

:func:`check` returns the problems found (empty when the file is right): wrong class, SIT
code or call-progress kind, latencies over target, beep or greeting end misplaced, wrong hint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sipbridge.corpus.synth import speech_end
from sipbridge.media.analyze import analyze_wav, load_audio
from sipbridge.media.detect import Detection, DetectionConfig

SIT_MAX_LATENCY_MS = 700  # decided within 700 ms of the SIT's start
HUMAN_MAX_LATENCY_MS = 1000  # decided within 1 s after the greeting ends
BEEP_TOL_MS = 100  # beep onset located within ±100 ms
GREETING_END_TOL_MS = 300
# A person decided before the labelled end of their speech (a transcript's last word) is still
# right when the audio shows they had stopped: no speech (30 ms or more within 35 dB of the
# loudest, as synth.speech_end) for at least this long before the decision. Any AMD hears
# such a pause as a person waiting; the latency is then measured from where it began.
MID_PAUSE_MIN_MS = 500


def speech_end_ms(path: Path, lab: dict[str, Any], det: Detection) -> int:
    """Where the speech a human decision followed ended: the label's greeting end, or, for a
    decision made before it, the start of the pause it was made in (when that pause is at
    least ``MID_PAUSE_MIN_MS`` long in the audio; otherwise the label's end stands)."""
    end = int(lab["greeting_end_ms"])
    if det.decided_at_ms >= end:
        return end
    x = load_audio(path)
    pause = round(speech_end(x, until=det.decided_at_ms * 8, min_windows=3) / 8)
    return pause if det.decided_at_ms - pause >= MID_PAUSE_MIN_MS else end


def class_of(label: dict[str, Any]) -> str:
    """The class a label counts under: ``progress`` for call-progress tones, else
    ``answered_by``."""
    return "progress" if label["progress"] else str(label["answered_by"])


def check(path: Path, lab: dict[str, Any], det: Detection | None = None) -> list[str]:
    """Problems with the detection of ``path`` (analysed unless ``det`` is given)."""
    if det is None:
        det, _ = analyze_wav(path, mode=lab.get("mode", "answer"))
    errs: list[str] = []
    got = (det.answered_by, det.sit_code, det.progress)
    exp = (lab["answered_by"], lab["sit_code"], lab["progress"])
    if got != exp:
        return [f"{path.name}: expected {exp}, got {got} ({det.reason})"]
    if (
        lab["progress"]
        and lab.get("progress_region")
        and det.progress_region != lab["progress_region"]
    ):
        errs.append(f"{path.name}: region {det.progress_region} != {lab['progress_region']}")
    if lab["sit_start_ms"] is not None:
        lat = det.decided_at_ms - lab["sit_start_ms"]
        if not 0 < lat <= SIT_MAX_LATENCY_MS:
            errs.append(f"{path.name}: SIT decided {lat} ms after its start")
    if lab["answered_by"] == "human":
        end = speech_end_ms(path, lab, det)
        lat = det.decided_at_ms - end
        cfg = DetectionConfig()
        limit = {
            None: HUMAN_MAX_LATENCY_MS,
            "operator": max(cfg.operator_silence_ms, cfg.operator_masked_silence_ms) + 300,
            "screening": cfg.screening_silence_ms + 300,
        }.get(lab.get("hint"), HUMAN_MAX_LATENCY_MS)
        if not 0 <= lat <= limit:
            errs.append(f"{path.name}: human decided {lat} ms after greeting end")
        if det.greeting_end_ms is None or abs(det.greeting_end_ms - end) > GREETING_END_TOL_MS:
            errs.append(f"{path.name}: greeting end {det.greeting_end_ms} vs {end}")
    if lab["answered_by"] == "machine":
        if not det.final:
            errs.append(f"{path.name}: machine result not final")
        if lab["beep_ms"] is not None:
            if det.beep_ms is None or abs(det.beep_ms - lab["beep_ms"]) > BEEP_TOL_MS:
                errs.append(f"{path.name}: beep at {det.beep_ms}, expected {lab['beep_ms']}")
            if (
                det.greeting_end_ms is None
                or abs(det.greeting_end_ms - lab["greeting_end_ms"]) > GREETING_END_TOL_MS
            ):
                errs.append(
                    f"{path.name}: greeting end {det.greeting_end_ms} vs {lab['greeting_end_ms']}"
                )
        else:
            if det.beep_ms is not None:
                errs.append(f"{path.name}: false beep at {det.beep_ms}")
            if det.ivr_hint != lab["ivr_hint"]:
                errs.append(f"{path.name}: ivr_hint {det.ivr_hint}")
    if lab.get("hint") is not None and det.hint != lab["hint"]:
        errs.append(f"{path.name}: hint {det.hint} != {lab['hint']}")
    if (
        lab["answered_by"] in ("human", "silence", "fax", "sit", "unknown", "ivr")
        and det.beep_ms is not None
    ):
        errs.append(f"{path.name}: unexpected beep at {det.beep_ms}")
    return errs
