"""IVR hold-step listener (sipbridge.media.hold) over the generated hold corpus."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipbridge.corpus import hold
from sipbridge.media.analyze import load_audio
from sipbridge.media.detect import Detection, DetectionEvent
from sipbridge.media.frames import float_to_pcm16
from sipbridge.media.hold import HoldConfig, HoldListener, config_from_overrides

ROOT = Path(__file__).resolve().parents[3]
MAX_LATENCY_MS = 1500  # decided within 1.5 s of the person's first word


def run(
    x: np.ndarray, config: dict[str, Any] | None = None, chunk: int = 160
) -> tuple[HoldListener, list[DetectionEvent]]:
    """Feed 8 kHz float audio as PCM16 bytes in ``chunk``-sample pieces, to the end or done."""
    hl = HoldListener(config)
    pcm = float_to_pcm16(x).tobytes()
    events: list[DetectionEvent] = []
    step = 2 * chunk
    for i in range(0, len(pcm), step):
        events += hl.feed(pcm[i : i + step])
        if hl.done:
            break
    return hl, events


def _check_person(name: str, hl: HoldListener, person_ms: int) -> str | None:
    r = hl.result()
    if r is None or r.answered_by != "human":
        return f"{name}: no human decision ({r.reason if r else None})"
    lat = r.decided_at_ms - person_ms
    if not 0 <= lat <= MAX_LATENCY_MS:
        return f"{name}: human decided {lat} ms after the person's onset ({r.reason})"
    return None


def test_person_files_decided_within_window(hold_corpus: tuple[Path, dict[str, Any]]) -> None:
    out, labels = hold_corpus
    errors = []
    n = 0
    for name, lab in sorted(labels.items()):
        if lab["person_ms"] is None:
            continue
        n += 1
        hl, events = run(load_audio(out / name))
        err = _check_person(name, hl, lab["person_ms"])
        if err:
            errors.append(err)
            continue
        decisions = [e for e in events if e.kind == "decision"]
        assert len(decisions) == 1 and decisions[0].detection.final
        assert "live speech" in decisions[0].detection.reason
    assert n >= 15
    assert not errors, "\n".join(errors)


def test_no_person_files_never_human(hold_corpus: tuple[Path, dict[str, Any]]) -> None:
    out, labels = hold_corpus
    errors = []
    reasons: dict[str, set[str]] = {}
    for name, lab in sorted(labels.items()):
        if lab["person_ms"] is not None:
            continue
        assert lab["duration_ms"] >= 40_000
        hl, events = run(load_audio(out / name))
        assert hl.now_ms >= lab["duration_ms"] - 20  # ran to the end
        if hl.done or any(e.detection.answered_by == "human" for e in events):
            errors.append(f"{name}: {hl.result()}")
        reasons[name] = {e.detection.reason for e in events}
        # updates only on change: never the same reason twice in a row
        rs = [e.detection.reason for e in events]
        assert all(a != b for a, b in itertools.pairwise(rs)), (name, rs)
        assert all(e.kind == "update" and e.detection.answered_by == "unknown" for e in events)
    assert not errors, "\n".join(errors)
    loops = [n for n, lab in labels.items() if lab["prompts_ms"] and lab["person_ms"] is None]
    assert loops
    for name in loops:  # each looping prompt is recognised as a repeat at least once
        assert "recorded prompt (repeat)" in reasons[name], (name, reasons[name])
    music_only = [n for n, lab in labels.items() if lab["desc"].startswith("music only")]
    for name in music_only:
        assert "music" in reasons[name], (name, reasons[name])
    ring = [n for n, lab in labels.items() if "ringback for the whole" in lab["desc"]]
    for name in ring:
        assert "call-progress tone (ringback)" in reasons[name], (name, reasons[name])


def test_any_chunk_size_same_decision(hold_corpus: tuple[Path, dict[str, Any]]) -> None:
    out, labels = hold_corpus
    name = next(n for n, lab in sorted(labels.items()) if "prompt_then_person" in n)
    x = load_audio(out / name)
    a, _ = run(x, chunk=160)
    b, _ = run(x, chunk=1234)
    ra, rb = a.result(), b.result()
    assert ra is not None and rb is not None
    assert (ra.answered_by, ra.decided_at_ms) == (rb.answered_by, rb.decided_at_ms)


SETTINGS = settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
# Corpus speech is at -34..-10 dBFS: -10 dB keeps it at or above about -44 dBFS. Quieter
# speech (about -45 dBFS over -59 dBFS line noise) is known to be missed at its first
# utterance and decided at the next one, later than 1.5 s.
@given(gain_db=st.floats(-10.0, 8.0), which=st.integers(0, 17))
def test_level_invariance(
    hold_corpus: tuple[Path, dict[str, Any]], gain_db: float, which: int
) -> None:
    """The whole call louder or quieter (a different line/codec gain): same outcome."""
    out, labels = hold_corpus
    persons = sorted(n for n, lab in labels.items() if lab["person_ms"] is not None)
    name = persons[which % len(persons)]
    x = np.clip(load_audio(out / name) * 10 ** (gain_db / 20), -1.0, 0.9999)
    hl, _ = run(x)
    err = _check_person(name, hl, labels[name]["person_ms"])
    assert err is None, f"gain {gain_db:.1f} dB: {err}"


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    tempo=st.floats(55, 170),
    semitone=st.integers(0, 11),
    style=st.sampled_from(["pad", "piano", "arp"]),
    perc=st.booleans(),
    vib=st.booleans(),
    level=st.floats(-34, -10),
    gap_ms=st.sampled_from([0, 400, 1500]),
)
def test_music_never_human(
    seed: int,
    tempo: float,
    semitone: int,
    style: str,
    perc: bool,
    vib: bool,
    level: float,
    gap_ms: int,
) -> None:
    """Hold music in any key/tempo/style — also restarting after a pause — is never a person."""
    rng = np.random.default_rng(seed)
    root = 130.8 * 2 ** (semitone / 12)
    a = hold.synth_music(rng, 9.0, tempo, root, style, perc, vib, level, seed % 5)
    b = hold.synth_music(rng, 9.0, tempo * 1.1, root * 1.5, style, perc, vib, level, seed % 3)
    noise = rng.standard_normal(a.size + b.size + gap_ms * 8) * 10 ** ((level - 40) / 20)
    x = np.concatenate([a, np.zeros(gap_ms * 8), b]) + noise
    hl, events = run(x)
    assert not hl.done, hl.result()
    assert any(e.detection.reason == "music" for e in events)


def test_config_overrides_and_errors() -> None:
    assert config_from_overrides(None) == HoldConfig()
    cfg = config_from_overrides({"decide_after_ms": "900", "match_corr": 0.8})
    assert cfg.decide_after_ms == 900 and cfg.match_corr == 0.8
    assert HoldListener({"pre_gap_ms": 300}).cfg.pre_gap_ms == 300
    with pytest.raises(ValueError, match="'no_such_threshold'") as ei:
        HoldListener({"no_such_threshold": 1})
    assert "decide_after_ms" in str(ei.value)  # lists the valid names
    with pytest.raises(ValueError, match="'decide_after_ms'"):
        HoldListener({"decide_after_ms": "soon"})


def test_max_hold_time_and_feed_after_done() -> None:
    hl = HoldListener({"max_hold_ms": 2000})
    ev = hl.feed(np.zeros(8000 * 3, dtype=np.int16))
    assert hl.done
    r = hl.result()
    assert isinstance(r, Detection)
    assert (r.answered_by, r.reason, r.decided_at_ms) == ("unknown", "max hold time", 2000)
    assert [e.kind for e in ev][-1] == "decision"
    assert hl.feed(np.zeros(160, dtype=np.int16)) == []


def test_silence_reported_and_time_gap_filled() -> None:
    hl = HoldListener()
    ev = hl.feed(b"\x00\x00" * 160, t_ms=0)
    ev += hl.feed(b"\x00\x00" * 160, t_ms=4000)  # 4 s lost: filled with silence
    assert hl.now_ms == 4020
    assert [e.detection.reason for e in ev] == ["silence"]
    assert hl.result() is not None and not hl.done
