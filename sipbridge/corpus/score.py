"""Score a detection result against a corpus label (generated or real corpora).

:func:`check` returns the problems found (empty when the file is right): wrong class, SIT
code or call-progress kind, latencies over target, beep or greeting end misplaced, wrong hint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sipbridge.media.analyze import analyze_wav
from sipbridge.media.detect import Detection, DetectionConfig

SIT_MAX_LATENCY_MS = 700  # decided within 700 ms of the SIT's start
HUMAN_MAX_LATENCY_MS = 1000  # decided within 1 s after the greeting ends
BEEP_TOL_MS = 100  # beep onset located within ±100 ms
GREETING_END_TOL_MS = 300


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
        lat = det.decided_at_ms - lab["greeting_end_ms"]
        cfg = DetectionConfig()
        limit = {
            None: HUMAN_MAX_LATENCY_MS,
            "operator": cfg.operator_silence_ms * 5 // 3 + 300,
            "screening": cfg.screening_silence_ms + 300,
        }.get(lab.get("hint"), HUMAN_MAX_LATENCY_MS)
        if not 0 <= lat <= limit:
            errs.append(f"{path.name}: human decided {lat} ms after greeting end")
        if (
            det.greeting_end_ms is None
            or abs(det.greeting_end_ms - lab["greeting_end_ms"]) > GREETING_END_TOL_MS
        ):
            errs.append(
                f"{path.name}: greeting end {det.greeting_end_ms} vs {lab['greeting_end_ms']}"
            )
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
