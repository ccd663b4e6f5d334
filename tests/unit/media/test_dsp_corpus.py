"""Every labelled corpus file is classified correctly, within the timing targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sipbridge.media.analyze import analyze_wav

CLASSES = ["human", "machine", "ivr", "fax", "silence", "unknown", "sit", "progress"]

SIT_MAX_LATENCY_MS = 700  # decided within 700 ms of the SIT's start
HUMAN_MAX_LATENCY_MS = 1000  # decided within 1 s after the greeting ends
BEEP_TOL_MS = 100  # beep onset located within ±100 ms
GREETING_END_TOL_MS = 300


def _class_of(label: dict[str, Any]) -> str:
    return "progress" if label["progress"] else str(label["answered_by"])


def _check(path: Path, lab: dict[str, Any]) -> list[str]:
    det, _ = analyze_wav(path, mode=lab["mode"])
    errs: list[str] = []
    got = (det.answered_by, det.sit_code, det.progress)
    exp = (lab["answered_by"], lab["sit_code"], lab["progress"])
    if got != exp:
        return [f"{path.name}: expected {exp}, got {got} ({det.reason})"]
    if lab["progress"] and det.progress_region != lab["progress_region"]:
        errs.append(f"{path.name}: region {det.progress_region} != {lab['progress_region']}")
    if lab["sit_start_ms"] is not None:
        lat = det.decided_at_ms - lab["sit_start_ms"]
        if not 0 < lat <= SIT_MAX_LATENCY_MS:
            errs.append(f"{path.name}: SIT decided {lat} ms after its start")
    if lab["answered_by"] == "human":
        lat = det.decided_at_ms - lab["greeting_end_ms"]
        if not 0 <= lat <= HUMAN_MAX_LATENCY_MS:
            errs.append(f"{path.name}: human decided {lat} ms after greeting end")
        if det.greeting_end_ms is None or abs(det.greeting_end_ms - lab["greeting_end_ms"]) > \
                GREETING_END_TOL_MS:
            errs.append(f"{path.name}: greeting end {det.greeting_end_ms} vs "
                        f"{lab['greeting_end_ms']}")
    if lab["answered_by"] == "machine":
        if not det.final:
            errs.append(f"{path.name}: machine result not final")
        if lab["beep_ms"] is not None:
            if det.beep_ms is None or abs(det.beep_ms - lab["beep_ms"]) > BEEP_TOL_MS:
                errs.append(f"{path.name}: beep at {det.beep_ms}, expected {lab['beep_ms']}")
            if det.greeting_end_ms is None or abs(det.greeting_end_ms - lab["greeting_end_ms"]) \
                    > GREETING_END_TOL_MS:
                errs.append(f"{path.name}: greeting end {det.greeting_end_ms} vs "
                            f"{lab['greeting_end_ms']}")
        else:
            if det.beep_ms is not None:
                errs.append(f"{path.name}: false beep at {det.beep_ms}")
            if det.ivr_hint != lab["ivr_hint"]:
                errs.append(f"{path.name}: ivr_hint {det.ivr_hint}")
    if lab["answered_by"] in ("human", "silence", "fax", "sit", "unknown", "ivr") and \
            det.beep_ms is not None:
        errs.append(f"{path.name}: unexpected beep at {det.beep_ms}")
    return errs


def test_corpus_covers_every_class(corpus: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    _, labels = corpus
    present = {_class_of(v) for v in labels.values()}
    assert present == set(CLASSES)
    codes = {v["sit_code"] for v in labels.values() if v["sit_code"]}
    assert {"IC", "VC", "RO", "NC", "ITU"} <= codes
    regions = {v.get("progress_region") for v in labels.values() if v["progress"]}
    assert {"us", "uk", "425"} <= regions
    assert len(labels) >= 60


@pytest.mark.parametrize("cls", CLASSES)
def test_corpus_class(cls: str, corpus: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    out, labels = corpus
    files = [(f, lab) for f, lab in sorted(labels.items()) if _class_of(lab) == cls]
    assert files, f"no {cls} files in corpus"
    errs = [e for f, lab in files for e in _check(out / f, lab)]
    assert not errs, "\n".join(errs)
