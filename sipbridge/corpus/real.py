"""Rebuild the real-audio development corpus from named public sources (local use only).

``scripts/real_corpus [OUT_DIR] [--mirror-root DIR] [--deb-dir DIR] [--offline]`` reads
``bench/real_corpus.json``: the sources (a pinned git commit or Debian package version, its
licence as stated, :mod:`sipbridge.corpus.sources`) and the items, each a sequence of
segments — a file of a source (by path), silence, or a synthesised network tone (ringback) —
with its label and notes on how the label was derived. It converts every file to 8 kHz,
assembles the items and writes ``OUT_DIR/*.wav`` and ``labels.json`` (the format of
:mod:`sipbridge.corpus.detection`; times of the beep and of the greeting's end come from the
segments: a source's own time stamps when given, else the energy envelope). ``OUT_DIR``
defaults to ``bench/real`` (git-ignored): the recordings carry their own licences and are never
committed. Rebuilding is idempotent: files of items no longer listed are removed.

Segment options for a source file: ``from_ms`` / ``to_ms`` (use only that part of it),
``speech: false`` (a tone, e.g. the beep; ``beep: true`` marks it), ``speech_end_ms`` /
``speech_start_ms`` (the source's time stamps of the speech), ``extend_line_ms`` (continue the
recording with its own line after the speech, :func:`extend_line`), ``speech_end_rel_db`` (the
envelope threshold for the speech's end when no time stamp is given, dB below the loudest
10 ms; default -35), ``phone_line: true`` (a microphone recording put through a telephone
channel: 300–3400 Hz and G.711 µ-law, :func:`sipbridge.corpus.sources.phone_line`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from sipbridge.corpus.sources import FS, Fetcher, SourceError, describe, phone_line
from sipbridge.corpus.synth import cadence, ms_of, sil, speech_end, tone, write_wav
from sipbridge.media.analyze import load_audio
from sipbridge.media.frames import FloatArray

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "bench" / "real_corpus.json"
DEFAULT_OUT = ROOT / "bench" / "real"

__all__ = ["SourceError", "build", "extend_line", "main", "speech_clips"]


def _quietest(parts: list[FloatArray], n: int) -> FloatArray:
    """The ``n``-sample window (50 ms steps) with the least energy among ``parts``."""
    best: FloatArray | None = None
    for x in parts:
        for i in range(0, max(1, x.size - n + 1), FS // 20):
            w = x[i : i + n]
            if w.size >= min(n, FS // 10) and (best is None or np.mean(w**2) < np.mean(best**2)):
                best = w
    if best is None:
        raise SourceError("less than 100 ms of line outside the speech: cannot extend it")
    return best


def extend_line(
    x: FloatArray, speech_end_n: int, ms: float, speech_start_n: int | None = None
) -> FloatArray:
    """``x`` followed by ``ms`` more of its own line. Real recordings of a person often stop
    less than a second after the last word, and the detector needs the line that follows. The
    line is the quietest 250 ms of the recording outside its speech (from 200 ms after the
    speech ends, or before it starts when that is known), tiled forwards and backwards so
    the joins do not jump: the line's own noise, without the clicks or bangs that may follow
    the speech."""
    outside = [x[speech_end_n + FS // 5 :]]
    if speech_start_n is not None:
        outside.append(x[: max(0, speech_start_n - FS // 10)])
    line = _quietest(outside, FS // 4)
    need = round(ms * FS / 1000)
    reps = [line if i % 2 == 0 else line[::-1] for i in range(need // line.size + 1)]
    return np.concatenate([x, np.concatenate(reps)[:need]])


def _segment(
    seg: dict[str, Any], fetch: Fetcher, sources: dict[str, dict[str, Any]]
) -> tuple[FloatArray, int | None]:
    """One segment's audio and, when it is speech, where its speech ends (samples)."""
    if "silence_ms" in seg:
        return sil(float(seg["silence_ms"])), None
    if "ringback" in seg:
        kind = seg["ringback"]
        rings: dict[str, tuple[tuple[float, ...], list[float]]] = {
            "us": ((440.0, 480.0), [2000.0, 4000.0]),
            "uk": ((400.0, 450.0), [400.0, 200.0, 400.0, 2000.0]),
        }
        freqs, pat = rings[kind]
        return cadence(freqs, pat, float(seg.get("ms", 6000)), -22.0), None
    if "tone_hz" in seg:
        return tone((float(seg["tone_hz"]),), float(seg.get("ms", 500)), -18.0), None
    src = sources[seg["source"]]
    x = fetch.audio(src, seg["path"])
    if "from_ms" in seg or "to_ms" in seg:
        a = round(float(seg.get("from_ms", 0)) * FS / 1000)
        b = round(float(seg.get("to_ms", x.size * 1000 / FS)) * FS / 1000)
        if not 0 <= a < b <= x.size:
            raise SourceError(f"{seg['path']}: cut {a}..{b} outside its {x.size} samples")
        x = x[a:b]
    if seg.get("phone_line"):
        x = phone_line(x)
    if not seg.get("speech", True):
        return x, None
    # the source's own time stamp (a transcript) when it has one, else the energy envelope
    end = round(float(seg["speech_end_ms"]) * FS / 1000) if "speech_end_ms" in seg else None
    if end is None:
        end = speech_end(x, float(seg.get("speech_end_rel_db", -35.0)))
    if "extend_line_ms" in seg:
        start = (
            round(float(seg["speech_start_ms"]) * FS / 1000) if "speech_start_ms" in seg else None
        )
        x = extend_line(x, end, float(seg["extend_line_ms"]), start)
    return x, end


def _label(item: dict[str, Any], beep_at: int | None, greeting_end: int | None) -> dict[str, Any]:
    lab: dict[str, Any] = {
        "mode": "answer",
        "answered_by": None,
        "sit_code": None,
        "progress": None,
        "ivr_hint": False,
        "hint": None,
        "greeting_end_ms": None,
        "beep_ms": None,
        "sit_start_ms": None,
        **item["label"],
    }
    if lab["answered_by"] in ("human", "machine"):
        lab["greeting_end_ms"] = ms_of(greeting_end) if greeting_end is not None else None
    lab["beep_ms"] = ms_of(beep_at) if beep_at is not None else None
    lab["desc"] = item.get("desc", "")
    lab["notes"] = item.get("notes", "")
    return lab


def build(
    out: Path = DEFAULT_OUT,
    mirror_root: Path | None = None,
    manifest: Path = MANIFEST,
    deb_dir: Path | None = None,
    offline: bool = False,
) -> dict[str, dict[str, Any]]:
    """Assemble the corpus into ``out``; returns the labels (also written to labels.json)."""
    spec = json.loads(manifest.read_text())
    sources: dict[str, dict[str, Any]] = spec["sources"]
    fetch = Fetcher(out / ".cache", mirror_root, deb_dir, offline)
    out.mkdir(parents=True, exist_ok=True)
    labels: dict[str, dict[str, Any]] = {}
    for item in spec["items"]:
        parts: list[FloatArray] = []
        beep_at = greeting_end = None
        for seg in item["segments"]:
            if "source" in seg and seg["source"] not in sources:
                raise SourceError(f"item {item['name']}: unknown source {seg['source']!r}")
            x, end = _segment(seg, fetch, sources)
            start = sum(p.size for p in parts)
            if seg.get("beep"):
                beep_at = start
            if end is not None:
                greeting_end = start + end
            parts.append(x)
        name = f"{item['name']}.wav"
        write_wav(out / name, np.concatenate(parts))
        lab = _label(item, beep_at, greeting_end)
        used = [
            sources[s["source"]] | {"path": s["path"]} for s in item["segments"] if "source" in s
        ]
        lab["sources"] = sorted(
            {f"{describe(s)}:{s.get('root', '')}/{s['path']}".replace(":/", ":") for s in used}
        )
        lab["licences"] = sorted({s["licence"] for s in used})
        labels[name] = lab
    for stale in set(out.glob("*.wav")) - {out / n for n in labels}:
        stale.unlink()
    (out / "labels.json").write_text(json.dumps(labels, indent=1, sort_keys=True))
    speech = out / "speech"
    speech.mkdir(exist_ok=True)
    for old in speech.glob("*.wav"):
        old.unlink()
    for key, src in sources.items():
        for path in src.get("speech_only", []):
            stem = f"{key}-{path.replace('/', '-')}"
            write_wav(
                speech / (stem if stem.endswith(".wav") else f"{stem}.wav"), fetch.audio(src, path)
            )
    return labels


def speech_clips(out: Path = DEFAULT_OUT) -> list[FloatArray]:
    """The real speech (no tones) :func:`build` extracted into ``out/speech`` (the sources'
    ``speech_only`` lists), for the talk-off test; empty when the corpus was not built."""
    return [load_audio(p) for p in sorted((out / "speech").glob("*.wav"))]


def main(argv: list[str] | None = None) -> int:
    """``scripts/real_corpus``: build the corpus; exit 1 naming a source that failed."""
    ap = argparse.ArgumentParser(prog="scripts/real_corpus", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    ap.add_argument(
        "--mirror-root",
        type=Path,
        default=None,
        help="folder of local git mirrors (OWNER+NAME/repo) to read instead of cloning",
    )
    ap.add_argument(
        "--deb-dir",
        type=Path,
        default=None,
        help="folder of downloaded .deb files (default OUT/.cache/deb; apt-get download fills it)",
    )
    ap.add_argument(
        "--offline",
        action="store_true",
        help="never clone or download: a source missing locally is an error",
    )
    ap.add_argument("--manifest", type=Path, default=MANIFEST, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    try:
        labels = build(a.out, a.mirror_root, a.manifest, a.deb_dir, a.offline)
    except SourceError as e:
        print(f"real_corpus: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(labels)} files and labels.json to {a.out}")
    return 0
