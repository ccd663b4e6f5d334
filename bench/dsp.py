#!/usr/bin/env python3
"""Benchmark of the recipient-detection DSP (sipbridge.media).

Run: ``.venv/bin/python bench/dsp.py [--real DIR] [--frames N] [--no-write] [--real-only]``

* CPU cost per 20 ms frame with every detector enabled (VAD + noise floor, tone bank and run
  tracker, SIT, cadences, fax, beep, liveness, classifier), without and with a prompt library
  of 100 prompts, frames fed as 320-byte PCM like a SIP worker does;
* accuracy and latency on the generated corpora (``sipbridge.corpus.detection`` and
  ``.regress``) and, when it is there, on the real-audio corpus (``scripts/real_corpus``,
  ``bench/real``), side by side;
* speech-only audio (30 min of espeak-ng voices and the real corpus's speech): any
  call-progress or SIT decision counts as a false alarm;
* SIT with a 100–300 ms dropout anywhere: decided as SIT, latency, code;
* prompt library: recognition latency after the prompt's start, misses, false matches.

Writes its section of ``bench/RESULTS.md`` between ``<!-- dsp:start -->`` / ``<!-- dsp:end -->``.
The machine is shared: the load average is printed with the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results import RESULTS, write_section  # noqa: E402

from sipbridge.corpus import detection, real, regress, short  # noqa: E402
from sipbridge.corpus.detection import SIT_TABLE, VOICES  # noqa: E402
from sipbridge.corpus.prompts import render_prompts, sentences  # noqa: E402
from sipbridge.corpus.score import check, speech_end_ms  # noqa: E402
from sipbridge.corpus.synth import (  # noqa: E402
    Speech,
    codec,
    dropout,
    noise,
    plc_dropout,
    sil,
    tone,
    trim,
)
from sipbridge.media.analyze import analyze_samples, load_audio  # noqa: E402
from sipbridge.media.detect import Detection, DetectionConfig, Detector  # noqa: E402
from sipbridge.media.frames import float_to_pcm16, scale_to_dbfs  # noqa: E402
from sipbridge.media.promptlib import PromptLibrary  # noqa: E402

TARGET_US = 40.0


def espeak(text: str, voice: str, speed: int = 165, pitch: int = 50) -> np.ndarray:
    with tempfile.TemporaryDirectory() as td:
        p = Path(td) / "s.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(p), text],
            check=True,
            capture_output=True,
        )
        return trim(load_audio(p))


# --- per-frame cost ------------------------------------------------------------------------

# Timers pushed out of reach: every detector keeps running (only tones can still decide).
NEVER_DECIDE = DetectionConfig(
    total_analysis_ms=10**9,
    initial_silence_ms=10**9,
    max_greeting_ms=10**9,
    max_words=10**9,
    after_greeting_silence_ms=10**9,
)


def bench_frames(
    audio: list[np.ndarray], min_frames: int, prompts: PromptLibrary | None
) -> dict[str, float]:
    """Per-frame cost with all detectors running on every frame (no early stop)."""
    cfg = NEVER_DECIDE
    frames = [float_to_pcm16(x[: x.size // 160 * 160]).tobytes() for x in audio]
    per: list[int] = []
    cpu0 = time.process_time()
    pc = time.perf_counter_ns
    while len(per) < min_frames:
        for pcm in frames:
            det = Detector(cfg, keep_timeline=False, prompts=prompts)
            for i in range(0, len(pcm), 320):
                if det.done:  # a decision ends a call: start another
                    det = Detector(cfg, keep_timeline=False, prompts=prompts)
                fr = pcm[i : i + 320]
                t0 = pc()
                det.feed(fr)
                per.append(pc() - t0)
    cpu = time.process_time() - cpu0
    us = np.asarray(per) / 1000.0
    return {
        "frames": float(us.size),
        "median": float(np.median(us)),
        "p99": float(np.percentile(us, 99)),
        "mean": float(us.mean()),
        "cpu": cpu / us.size * 1e6,
    }


# --- accuracy on labelled corpora ----------------------------------------------------------


def score(out: Path, labels: dict[str, dict[str, Any]]) -> dict[str, Any]:
    wrong: list[str] = []
    human: list[int] = []
    sit: list[int] = []
    beep: list[int] = []
    late_beep: list[int] = []  # beeps 2–5 s after the greeting, greetings after 2–6 s
    machines = machine_as_human = 0
    ivr = ivr_as_operator = 0  # IVR prompts and beep-less prompts (could be an IVR)
    for f, lab in sorted(labels.items()):
        det, _ = analyze_samples(load_audio(out / f), lab.get("mode", "answer"))
        if is_ivr_like(lab):
            ivr += 1
            ivr_as_operator += det.hint == "operator"
        errs = check(out / f, lab, det)
        if errs:
            wrong.append(f)
        if lab["answered_by"] in ("machine", "ivr"):
            machines += 1
            machine_as_human += det.answered_by == "human"
        if (
            det.answered_by == lab["answered_by"] == "human"
            and lab["greeting_end_ms"] is not None
            and lab.get("hint") is None
        ):
            human.append(det.decided_at_ms - speech_end_ms(out / f, lab, det))
        if lab["sit_start_ms"] is not None and det.answered_by == "sit":
            sit.append(det.decided_at_ms - lab["sit_start_ms"])
        if lab["beep_ms"] is not None and det.beep_ms is not None:
            beep.append(abs(det.beep_ms - lab["beep_ms"]))
            if f.startswith("beep_late") or f.startswith("late_greeting"):
                late_beep.append(abs(det.beep_ms - lab["beep_ms"]))
    return {
        "n": len(labels),
        "ok": len(labels) - len(wrong),
        "wrong": wrong,
        "machines": machines,
        "m_as_h": machine_as_human,
        "ivr": ivr,
        "ivr_as_op": ivr_as_operator,
        "human": human,
        "sit": sit,
        "beep": beep,
        "late_beep": late_beep,
    }


def is_ivr_like(lab: dict[str, Any]) -> bool:
    """An IVR's prompt, or a beep-less recorded prompt that could be one (``ivr_hint``)."""
    return lab["answered_by"] == "ivr" or bool(lab.get("ivr_hint"))


# noisy lines for the IVR prompts (as bench/noisyline.py: an analog line or a PBX behind one,
# whose noise masks a prompt's own bed so that its voice reads live)
IVR_LINES = (("white", -64.0), ("pink", -56.0), ("white", -48.0))


def ivr_operator(corpora: list[tuple[str, Path, dict[str, dict[str, Any]]]]) -> dict[str, Any]:
    """The IVR and beep-less prompts of every corpus played into noisy lines
    (:data:`IVR_LINES`, G.711 µ-law): how many are called ``human`` with ``hint: operator``
    (or human at all). On their own lines the corpus rows count them (``score``)."""
    rng = np.random.default_rng(12)
    out: dict[str, Any] = {}
    for name, folder, labels in corpora:
        rows = {k: {"n": 0, "op": 0, "human": 0} for k in ("ivr", "beepless")}
        for f, lab in sorted(labels.items()):
            if not is_ivr_like(lab):
                continue
            row = rows["ivr" if lab["answered_by"] == "ivr" else "beepless"]
            x = load_audio(folder / f)
            for kind, lvl in IVR_LINES:
                y = codec(x + scale_to_dbfs(noise(x.size, kind, rng), lvl), "ulaw")
                det, _ = analyze_samples(y, lab.get("mode", "answer"))
                row["n"] += 1
                row["op"] += det.hint == "operator"
                row["human"] += det.answered_by == "human"
        out[name] = rows
    return out


def ivr_rows(scores: list[tuple[str, dict[str, Any]]], noisy: dict[str, Any]) -> str:
    def cell(r: dict[str, int]) -> str:
        return f"{r['op']}/{r['n']} ({r['human']} human in all)" if r["n"] else "none"

    return "\n".join(
        f"| {name} | {s['ivr_as_op']}/{s['ivr']} | {cell(noisy[name]['ivr'])} "
        f"| {cell(noisy[name]['beepless'])} |"
        for name, s in scores
    )


HEADER = (
    "| corpus | correct | machines called human | human decided after end of speech, "
    "median / p90 (ms) | SIT decided after its start, median / max (ms) | beep onset "
    "error, median / max (ms) |\n|---|---|---|---|---|---|"
)


def cost_row(name: str, fr: dict[str, float]) -> str:
    return (
        f"| {name} | **{fr['median']:.1f} µs** | {fr['p99']:.1f} µs | {fr['mean']:.1f} µs "
        f"| {fr['cpu']:.1f} µs |"
    )


def short_rows(sl: dict[str, Any]) -> str:
    return "\n".join(
        f"| {k}: {SHORT_ABOUT[k]} | {v['human']}/{v['n']} "
        f"({100 * v['human'] / v['n']:.0f} %) | {pct(v['lat'], 50)} / {pct(v['lat'], 90)} |"
        for k, v in sl.items()
    )


def late_beeps(scores: list[tuple[str, dict[str, Any]]]) -> str:
    v = [e for _, s in scores for e in s["late_beep"]]
    return f"median {pct(v, 50)} ms, max {max(v, default=0)} ms (n={len(v)})"


def pct(v: list[int], q: float) -> str:
    return f"{np.percentile(v, q):.0f}" if v else "n/a"


# --- speech-only false alarms ----------------------------------------------------------------


def speech_only(minutes: float, real_clips: list[np.ndarray]) -> dict[str, Any]:
    """Concatenated speech (espeak voices at several pitches, then the real clips), cut into
    20 s calls, analysed in both modes; counts call-progress/SIT decisions."""
    rng = np.random.default_rng(11)
    parts: list[np.ndarray] = []
    total = 0
    texts = sentences(400, 5, words=True)
    i = 0
    while total < minutes * 60 * 8000:
        voice = VOICES[i % len(VOICES)]
        x = espeak(
            texts[i % len(texts)],
            voice,
            int(rng.integers(140, 200)),
            int(rng.choice([20, 50, 80, 99])),
        )
        parts += [scale_to_dbfs(x, float(rng.uniform(-30, -12))), sil(float(rng.uniform(100, 600)))]
        total += x.size
        i += 1
    synth_s = total / 8000
    for c in real_clips:
        parts += [scale_to_dbfs(c, float(rng.uniform(-28, -14))), sil(300)]
    audio = codec(np.concatenate(parts), "ulaw")
    alarms: list[str] = []
    calls = 0
    step = 20 * 8000
    for mode in ("answer", "early"):
        for k in range(0, audio.size - step // 4, step):
            det = Detector(mode=mode, keep_timeline=False)
            det.feed(audio[k : k + step])
            r = det.finish()
            calls += 1
            if r.answered_by == "sit" or r.progress in ("busy", "reorder"):
                alarms.append(f"{mode}@{k // 8000}s: {r.reason}")
    return {
        "synth_min": synth_s / 60,
        "real_min": sum(c.size for c in real_clips) / 8000 / 60,
        "calls": calls,
        "alarms": alarms,
    }


# --- short answers against short prompts ---------------------------------------------------


def short_lines(per_condition: int = 32) -> dict[str, Any]:
    """``sipbridge.corpus.short``: how often each line condition is called human, and how fast
    the live ones are decided after their last word."""
    with tempfile.TemporaryDirectory() as td:
        sp = Speech(Path(td))
        sp.render_many(short.speech_requests())
        out: dict[str, Any] = {}
        for c in short.cases(sp, per_condition, seed=20261202):
            det = Detector(keep_timeline=False)
            det.feed(c.audio)
            r = det.finish()
            row = out.setdefault(c.condition, {"n": 0, "human": 0, "lat": []})
            row["n"] += 1
            if r.answered_by == "human":
                row["human"] += 1
                if r.hint is None:
                    row["lat"].append(r.decided_at_ms - int(c.label["greeting_end_ms"]))  # type: ignore[call-overload]
    return out


def short_end_gaps(per_condition: int = 16) -> dict[str, int]:
    """Live short answers with one 100–300 ms zero-filled gap (lost packets) from 400 ms
    before to 150 ms after their last word: how many are still called human."""
    rnd = random.Random(5)
    out = {"n": 0, "human": 0}
    with tempfile.TemporaryDirectory() as td:
        sp = Speech(Path(td))
        sp.render_many(short.speech_requests())
        for cond in ("live_room", "live_cn", "live_dtx"):
            for k in range(per_condition):
                c = short.one(sp, cond, k, 77)
                end = int(c.label["greeting_end_ms"])  # type: ignore[call-overload]
                for drop in (100, 200, 300):
                    det = Detector(keep_timeline=False)
                    det.feed(dropout(c.audio, rnd.uniform(end - 400, end + 150), drop))
                    out["n"] += 1
                    out["human"] += det.finish().answered_by == "human"
    return out


SHORT_ABOUT = {
    "live_room": "live answer, room noise on the line",
    "live_cn": "live answer, network comfort noise (-80..-66 dBFS)",
    "live_gated": "live answer, endpoint sends digital silence between words",
    "rec_silent": "recorded prompt with its own bed, line otherwise silent",
    "clean_silent": "clean (TTS/studio) prompt, line silent",
    "clean_cn": "clean prompt on a comfort-noise line",
    "rec_cn": "recorded prompt on a comfort-noise line",
    "live_dtx": "live answer, noise suppression + DTX, comfort noise between talkspurts",
    "clean_dtx": "clean prompt sent with DTX, comfort noise between talkspurts",
}


# --- SIT with dropouts ---------------------------------------------------------------------


def sit_dropouts(conceal: Any = dropout) -> dict[str, Any]:
    """Every code with one dropout (``conceal``: zero-filled, or ``plc_dropout``) of each
    length at every 40 ms position; ``late`` lists the cases decided after 700 ms."""
    lat: list[int] = []
    lat300: list[int] = []
    late: list[str] = []
    wrong: list[str] = []
    not_sit = wrong_code = n = 0
    for code, (f1, d1, f2, d2) in SIT_TABLE.items():
        x0 = np.concatenate(
            [
                sil(500),
                tone((f1,), d1, -20, 2),
                tone((f2,), d2, -20, 2),
                tone((1776.7,), 380, -20, 2),
                sil(1000),
            ]
        )
        for drop in (100, 200, 300):
            for at in range(-100, int(d1 + d2 + 380 - 50), 40):
                det = Detector(mode="early", keep_timeline=False)
                det.feed(conceal(x0, 500 + at, drop))
                r: Detection = det.finish()
                n += 1
                if r.answered_by != "sit":
                    not_sit += 1
                    continue
                lat.append(r.decided_at_ms - 500)
                if lat[-1] > 700:
                    late.append(f"{code} {drop} ms at {at} ms: {lat[-1]} ms")
                if drop == 300:
                    lat300.append(r.decided_at_ms - 500)
                if r.sit_code != code:
                    wrong_code += 1
                    wrong.append(f"{code}->{r.sit_code} {drop} ms at {at} ms")
    return {
        "n": n,
        "not_sit": not_sit,
        "wrong_code": wrong_code,
        "lat": lat,
        "lat300": lat300,
        "late": late,
        "wrong": wrong,
    }


# --- prompt library --------------------------------------------------------------------------


def prompt_library(n: int = 100) -> tuple[PromptLibrary, dict[str, Any]]:
    clips = render_prompts(sentences(n, 99))
    lib = PromptLibrary()
    t0 = time.perf_counter()
    for i, c in enumerate(clips):
        lib.add(f"prompt{i:03d}", ["ivr", "not_in_service", "screening"][i % 3], c)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(4)
    lat: list[int] = []
    missed = wrong = 0
    for i in range(n):
        late = float(rng.choice([0, 0, 600, 1500]))
        lvl = float(rng.uniform(-36, -14))
        y = np.concatenate([sil(700), scale_to_dbfs(clips[i], lvl)[int(late * 8) :], sil(800)])
        y = codec(y + noise(y.size, "pink", rng) * 10 ** ((lvl - 20 - 3) / 20), "ulaw")
        # through the detector, as in a call: the index is searched only with speech frames
        det = Detector(NEVER_DECIDE, keep_timeline=False, prompts=lib)
        hit = None
        for k in range(0, y.size - 160, 160):
            det.feed(y[k : k + 160])
            hit = det.result()
            if hit is not None and hit.prompt is not None:
                break
        if hit is None or hit.prompt is None:
            missed += 1
        elif hit.prompt != f"prompt{i:03d}":
            wrong += 1
        else:
            lat.append(hit.decided_at_ms - 700)
    # false matches: other espeak speech (not in the library), half of it made of the words
    # of a small shared vocabulary; the matcher alone, searching with every frame
    false = 0
    for j, t in enumerate(sentences(10, 123) + sentences(10, 321, words=True)):
        y = codec(np.concatenate([sil(300), espeak(t, VOICES[j % len(VOICES)]), sil(300)]), "ulaw")
        m = lib.matcher()
        false += any(m.feed(y[k : k + 160]) is not None for k in range(0, y.size - 160, 160))
    return lib, {
        "n": n,
        "tried": n,
        "missed": missed,
        "wrong": wrong,
        "lat": lat,
        "false": false,
        "build_s": build_s,
        "codes": len(lib.index),
    }


def corpus(gen: Any, tmp: Path, name: str) -> tuple[Path, dict[str, dict[str, Any]]]:
    out = tmp / name
    return out, gen(out)


def _summary(v: Any) -> Any:
    """Latency lists shown as counts and percentiles."""
    if isinstance(v, dict):
        return {k: _summary(x) for k, x in v.items()}
    if isinstance(v, list) and v and isinstance(v[0], int | float):
        return {
            "n": len(v),
            "le700": sum(1 for x in v if x <= 700),
            "median": pct(v, 50),
            "p90": pct(v, 90),
            "max": max(v),
        }
    return v


def _corpora_only(a: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        return {
            name: _summary(score(out, labels))
            for name, out, labels in (
                ("detection", *corpus(detection.generate, tmp, "det")),
                ("regress", *corpus(regress.generate, tmp, "reg")),
            )
        }


def _ivr_only(a: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        corpora = [
            ("detection", *corpus(detection.generate, tmp, "det")),
            ("regress", *corpus(regress.generate, tmp, "reg")),
        ]
        if (a.real / "labels.json").exists():
            corpora.append(("real", a.real, json.loads((a.real / "labels.json").read_text())))
        return ivr_operator(corpora)


def _cpu_only(a: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as td:
        out, labels = corpus(detection.generate, Path(td), "det")
        audio = [load_audio(out / f) for f in sorted(labels)]
    return bench_frames(audio, a.frames, None)


ONLY = {
    "corpora": _corpora_only,
    "speech": lambda a: speech_only(
        a.speech_min, real.speech_clips(a.real) if (a.real / "labels.json").exists() else []
    ),
    "sit": lambda a: _summary({"zero": sit_dropouts(), "plc": sit_dropouts(plc_dropout)}),
    "short": lambda a: _summary(short_lines()),
    "shortgap": lambda a: short_end_gaps(),
    "cpu": _cpu_only,
    "ivr": _ivr_only,
}


def run_only(names: list[str], a: argparse.Namespace) -> int:
    """Run some sections only and print their raw numbers (RESULTS.md is left alone)."""
    for name in names:
        t0 = time.perf_counter()
        res = ONLY[name](a)
        print(f"== {name} ({time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f})")
        print(json.dumps(res, indent=1, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="recipient-detection DSP benchmark")
    ap.add_argument(
        "--real",
        type=Path,
        default=real.DEFAULT_OUT,
        help="real corpus folder (scripts/real_corpus); skipped when absent",
    )
    ap.add_argument("--frames", type=int, default=60_000, help="frames to time (min)")
    ap.add_argument("--speech-min", type=float, default=30.0, help="minutes of espeak speech")
    ap.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    ap.add_argument(
        "--real-only",
        action="store_true",
        help="only the real corpus's accuracy, per class with every miss (bench/realscore.py)",
    )
    ap.add_argument(
        "--only",
        default="",
        help=f"comma-separated sections to run and print (no write): {', '.join(ONLY)}",
    )
    a = ap.parse_args(argv)
    if a.real_only:
        import realscore

        return realscore.main([str(a.real)])
    if a.only:
        return run_only(a.only.split(","), a)
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        corpora = [
            ("generated: detection", *corpus(detection.generate, tmp, "det")),
            ("generated: regress (#12 classes)", *corpus(regress.generate, tmp, "reg")),
        ]
        has_real = (a.real / "labels.json").exists()
        if has_real:
            corpora.append(
                ("real (bench/real)", a.real, json.loads((a.real / "labels.json").read_text()))
            )
        scores = [(name, score(out, labels)) for name, out, labels in corpora]
        ivr_noisy = ivr_operator(corpora)
        audio = [load_audio(corpora[0][1] / f) for f in sorted(corpora[0][2])]
        lib, pl = prompt_library()
        fr0 = bench_frames(audio, a.frames, None)
        fr1 = bench_frames(audio, a.frames, lib)
    real_clips = real.speech_clips(a.real) if has_real else []
    so = speech_only(a.speech_min, real_clips)
    sd = sit_dropouts()
    sdp = sit_dropouts(plc_dropout)
    shl = short_lines()
    gaps = short_end_gaps()
    load1 = os.getloadavg()

    rows = []
    for name, s in scores:
        rows.append(
            f"| {name} | {s['ok']}/{s['n']} ({100 * s['ok'] / s['n']:.1f} %) | "
            f"{s['m_as_h']}/{s['machines']} | {pct(s['human'], 50)} / "
            f"{pct(s['human'], 90)} (n={len(s['human'])}) | {pct(s['sit'], 50)} / "
            f"{max(s['sit'], default=0) if s['sit'] else 'n/a'} | "
            f"{pct(s['beep'], 50)} / {max(s['beep'], default=0) if s['beep'] else 'n/a'}"
            " |"
        )
    wrong = "\n".join(f"- {name}: {', '.join(s['wrong'])}" for name, s in scores if s["wrong"])
    sl = sd["lat"]
    # VC/RO' and FU/RO differ only in where segment 1 ends (see the text)
    pair = [w for w in sd["wrong"] if w.split()[0] in ("VC->RO'", "FU->RO")]
    other = [w for w in sd["wrong"] if w not in pair]
    other_plc = [w for w in sdp["wrong"] if w.split()[0] not in ("VC->RO'", "FU->RO")]
    text = f"""## DSP: recipient detection (`bench/dsp.py`)

Machine: {platform.machine()}, {os.cpu_count()} cores shared with other test runs (load average
{load0[0]:.1f} at start, {load1[0]:.1f} at end: timings are noisy), Python
{platform.python_version()}, numpy {np.__version__}.

### Accuracy and latency, generated and real corpora side by side

{HEADER}
{chr(10).join(rows)}

Targets: ≥ 98 % correct, machines called human ≤ 1 %, human ≤ 800 ms median / ≤ 1000 ms p90,
SIT ≤ 700 ms, beep ±100 ms. The generated corpora's operators and screening assistants (their
labels carry the hint) wait 0.9 s (1.5 s on lines whose noise is within 20 dB of the speech)
and 2 s of silence and are not in their human latency column; the real corpus's labels carry
no hint: its column counts every person called human, operators included.
{"The real corpus was not present (run scripts/real_corpus)." if not has_real else ""}
Misses:
{wrong or "- none"}

Beeps after long silences (regress `beep_late_*`: beep 2–5 s after the greeting,
`late_greeting_*`: greeting after 2–6 s of silence): onset error {late_beeps(scores)}.

The real corpus is {len(corpora[-1][2]) if has_real else 0} files (`bench/real_corpus.json`):
Asterisk prompt packs in 8 voices (professional recordings of real voicemail greetings with and
without beep, spoken intercepts and IVR prompts), live callers on landline, cell and speaker
phones (WUW Corpus II: names and sentences, with transcripts), people saying hello (microphone
recordings put through a phone channel) and one fax call recorded from a line. No real SIT
intercept recording was found: SIT is covered by generated audio only. Per class, with every
miss: `bench/dsp.py --real-only`.

### IVR prompts called `operator`

IVR prompts and beep-less recorded prompts (labels `ivr`, or `machine` with `ivr_hint`: menus,
logins, spoken intercepts, short prompts, beep-less mailboxes) called `human` with
`hint: operator`, on their own lines and played into noisy lines (white or pink noise at -64,
-56 and -48 dBFS, µ-law: the noise masks a prompt's own bed, so the floor is unchanged under
its words and the voice reads live; each prompt once per line). An operator is a live-looking
long greeting followed by `operator_silence_ms` of silence: a prompt that pauses that long
before speaking again, on a line where it reads live, is taken for one.

| corpus | own line | noisy lines: IVR menus (`ivr`) | noisy lines: beep-less prompts |
|---|---|---|---|
{ivr_rows(scores, ivr_noisy)}

### Short answers against short prompts (0.5–2 s, then silence)

`sipbridge.corpus.short`, {sum(v["n"] for v in shl.values())} calls (espeak-ng voices, G.711
µ-law and A-law in turn, -30..-14 dBFS). A recording is told from a live voice by the line
around it: a short greeting followed by 120 ms of digital silence is a recording
(`recorded_line_dbfs`), as is one whose noise floor changed under it.

| line condition | called human | human decided after end of speech, median / p90 (ms) |
|---|---|---|
{short_rows(shl)}

A clean prompt sent with DTX is told by its talkspurt's own digital silence before the
line's comfort noise resumes. The machine rows in which a recording is still called human
are the limit of what the line tells: a clean prompt with comfort noise mixed in under its
words sounds exactly like a live voice with noise suppression. The `live_gated` row is the
price of the digital-silence rule (endpoints that send digital silence between words without
comfort noise); `recorded_line_dbfs: -120` turns both rules off. Live answers (room,
comfort noise, DTX) with one 100–300 ms zero-filled gap from 400 ms before to 150 ms after
their last word: {gaps["human"]}/{gaps["n"]} called human (a gap that swallows the end of
the word reads as a prompt's own digital silence).

### Speech-only audio (no call-progress or SIT decision allowed)

{so["synth_min"]:.1f} min of espeak-ng speech (8 voices, pitch settings up to the highest) and
{so["real_min"]:.1f} min of real recorded speech, G.711 µ-law, cut into {so["calls"]} 20 s calls
analysed in answer and early mode: **{len(so["alarms"])} call-progress/SIT decisions**
{("(" + "; ".join(so["alarms"][:5]) + ")") if so["alarms"] else ""}.

### SIT with one 100–300 ms dropout anywhere in the sequence

{sd["n"]} cases (8 codes × 3 dropout lengths × every 40 ms position), the lost audio
zero-filled: SIT recognised in {sd["n"] - sd["not_sit"]}; decided ≤ 700 ms after its start in
{sum(1 for v in sl if v <= 700)} ({100 * sum(1 for v in sl if v <= 700) / max(1, len(sl)):.0f}
%), median {pct(sl, 50)} ms, p90 {pct(sl, 90)} ms, max {max(sl, default=0)} ms (300 ms dropouts
only: {sum(1 for v in sd["lat300"] if v <= 700)}/{len(sd["lat300"])} within 700 ms, p90
{pct(sd["lat300"], 90)} ms); code exact in
{len(sl) - sd["wrong_code"]} ({100 * (len(sl) - sd["wrong_code"]) / max(1, len(sl)):.1f} %).
The loss concealed instead as ITU-T G.711 Appendix I does (the last pitch period repeated,
fading out within 60 ms): recognised in {sdp["n"] - sdp["not_sit"]} of {sdp["n"]}, ≤ 700 ms in
{sum(1 for v in sdp["lat"] if v <= 700)}, max {max(sdp["lat"], default=0)} ms, code exact in
{len(sdp["lat"]) - sdp["wrong_code"]} (besides VC/RO' and FU/RO, explained below:
{"; ".join(other_plc) or "none"}; the concealed tail of a short segment 2 carries it past
its end, as a long one would).

After a *solid* segment (≥ 200 ms at a Bell frequency) the decoder needs less of the next
one than the plain holds (segment 2 held 60 ms, segment 3 40 ms): segment 2 held 40 ms;
segment 3's first frame directly after segment 2; one or two frames of segment 2 directly
after segment 1, cut by the dropout and followed by 120 ms of nothing (`_held` in
`sipbridge/media/sit.py`; the speech-only audio above is the guard).
Decided after 700 ms (zero-filled): {"; ".join(sd["late"]) or "none"}. Out of reach for any
decoder that needs a second SIT frequency: a 300 ms dropout from segment 1's end at 380 ms
hides everything until 680 ms; until then the audio is one tone at segment 1's frequency and
silence, which a voicemail beep also is (1000 Hz is within 1.5 % of 985.2 Hz), and the first
40 ms analysis block full of the next tone ends at 720 ms (decided once held 40 ms).
Of the {sd["wrong_code"]} wrong codes, {len(pair)} are VC read as RO' or FU as RO: the same
two frequencies and the same 654 ms before segment 3, differing only in where segment 1 ends
(274 or 380 ms); a dropout covering that boundary to within a frame leaves nothing to tell
them apart, and the best guess (the reason says so) takes the congestion code (a retry) over
"not in service". The rest lose segment 1 entirely
({"; ".join(other) or "none"}).
Without a dropout every code is decided within ~0.6 s (generated corpus above).

### Prompt library ({pl["n"]} prompts)

Index: {pl["codes"]} distinct codes, built in {pl["build_s"]:.1f} s. {pl["tried"]} prompts
played through pink noise at 20 dB SNR, µ-law, -36..-14 dBFS, half of them joined 0.6–1.5 s
late, through the detector (index searched with speech frames): recognised
{pl["tried"] - pl["missed"] - pl["wrong"]}, missed {pl["missed"]},
wrong prompt {pl["wrong"]}; decided {pct(pl["lat"], 50)} ms (median) / {pct(pl["lat"], 90)} ms
(p90) after the prompt started playing. False matches on 20 other utterances: {pl["false"]}.

### CPU per 20 ms frame (all detectors, `feed()` wall time)

| | median | p99 | mean | process CPU / frame |
|---|---|---|---|---|
{cost_row("no prompt library", fr0)}
{cost_row("100 prompts loaded", fr1)}

Target {TARGET_US:.0f} µs per frame: {"met" if fr1["median"] < TARGET_US else "MISSED"} (median,
{int(fr1["frames"])} frames of corpus audio). The p99 holds the rare heavier frames (a pitch
track at a greeting's end, a fingerprint verification). On a loaded machine compare with
main in the same moment: `bench/dsp_ab.py` (section below).
"""
    print(text)
    if not a.no_write:
        write_section("dsp", text)
        print(f"updated {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
