"""Rebuild the real-audio development corpus from named public sources (local use only).

``scripts/real_corpus [OUT_DIR] [--mirror-root DIR]`` reads ``bench/real_corpus.json``: the
sources (repository, commit, licence) and the items, each a sequence of segments — a file of
a source (by path), silence, or a synthesised network tone (ringback) — and its label. It
fetches each file at its pinned commit (``git show COMMIT:PATH`` from a local mirror when one is
given, else a blob-less clone into ``OUT_DIR/.cache``), converts it to 8 kHz, assembles the
items and writes ``OUT_DIR/*.wav`` and ``labels.json`` (the format of
:mod:`sipbridge.corpus.detection`; times of the beep and of the greeting's end are computed from
the segments). ``OUT_DIR`` defaults to ``bench/real`` (git-ignored): the recordings carry their
own licences and are never committed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from sipbridge.corpus.synth import cadence, ms_of, sil, speech_end, tone, write_wav
from sipbridge.media.analyze import load_audio
from sipbridge.media.frames import FloatArray

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "bench" / "real_corpus.json"
DEFAULT_OUT = ROOT / "bench" / "real"


class SourceError(RuntimeError):
    """A source file could not be fetched; the message names it."""


class Fetcher:
    """Files of pinned repository commits, from a mirror or a blob-less clone (cached)."""

    def __init__(self, cache: Path, mirror_root: Path | None) -> None:
        self.cache = cache
        self.mirror_root = mirror_root
        self._audio: dict[tuple[str, str, str], FloatArray] = {}

    def _git_dir(self, repo: str) -> Path:
        if self.mirror_root is not None:
            m = self.mirror_root / repo.replace("/", "+") / "repo"
            if m.is_dir():
                return m
        d = self.cache / repo.replace("/", "+")
        if not d.is_dir():
            self.cache.mkdir(parents=True, exist_ok=True)
            r = subprocess.run(
                [
                    "git",
                    "clone",
                    "--bare",
                    "--filter=blob:none",
                    "--quiet",
                    f"https://github.com/{repo}.git",
                    str(d),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if r.returncode:
                raise SourceError(f"cannot clone {repo}: {r.stderr.strip()}")
        return d

    def audio(self, repo: str, commit: str, path: str) -> FloatArray:
        key = (repo, commit, path)
        if key not in self._audio:
            r = subprocess.run(
                ["git", "--git-dir", str(self._git_dir(repo)), "show", f"{commit}:{path}"],
                capture_output=True,
                check=False,
            )
            if r.returncode:
                raise SourceError(
                    f"{repo}@{commit[:10]}:{path}: {r.stderr.decode(errors='replace').strip()}"
                )
            with tempfile.NamedTemporaryFile(suffix=".wav") as f:
                f.write(r.stdout)
                f.flush()
                self._audio[key] = load_audio(f.name)
        return self._audio[key]


def _segment(
    seg: dict[str, Any], fetch: Fetcher, sources: dict[str, dict[str, str]]
) -> tuple[FloatArray, bool]:
    """One segment's audio and whether it is speech (for the greeting's end)."""
    if "silence_ms" in seg:
        return sil(float(seg["silence_ms"])), False
    if "ringback" in seg:
        kind = seg["ringback"]
        rings: dict[str, tuple[tuple[float, ...], list[float]]] = {
            "us": ((440.0, 480.0), [2000.0, 4000.0]),
            "uk": ((400.0, 450.0), [400.0, 200.0, 400.0, 2000.0]),
        }
        freqs, pat = rings[kind]
        return cadence(freqs, pat, float(seg.get("ms", 6000)), -22.0), False
    if "tone_hz" in seg:
        return tone((float(seg["tone_hz"]),), float(seg.get("ms", 500)), -18.0), False
    src = sources[seg["source"]]
    return fetch.audio(src["repo"], src["commit"], seg["path"]), bool(seg.get("speech", True))


def build(
    out: Path = DEFAULT_OUT, mirror_root: Path | None = None, manifest: Path = MANIFEST
) -> dict[str, dict[str, Any]]:
    """Assemble the corpus into ``out``; returns the labels (also written to labels.json)."""
    spec = json.loads(manifest.read_text())
    sources: dict[str, dict[str, str]] = spec["sources"]
    fetch = Fetcher(out / ".cache", mirror_root)
    out.mkdir(parents=True, exist_ok=True)
    labels: dict[str, dict[str, Any]] = {}
    for item in spec["items"]:
        parts: list[FloatArray] = []
        beep_at = greeting_end = None
        for seg in item["segments"]:
            x, is_speech = _segment(seg, fetch, sources)
            start = sum(p.size for p in parts)
            if seg.get("beep"):
                beep_at = start
            if is_speech:
                greeting_end = start + speech_end(x)
            parts.append(x)
        audio = np.concatenate(parts)
        name = f"{item['name']}.wav"
        write_wav(out / name, audio)
        lab = {
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
        lab["sources"] = sorted(
            {
                f"{sources[s['source']]['repo']}@{sources[s['source']]['commit'][:10]}:{s['path']}"
                for s in item["segments"]
                if "source" in s
            }
        )
        labels[name] = lab
    (out / "labels.json").write_text(json.dumps(labels, indent=1, sort_keys=True))
    speech = out / "speech"
    speech.mkdir(exist_ok=True)
    for key, src in sources.items():
        for path in src.get("speech_only", []):
            x = fetch.audio(src["repo"], src["commit"], path)
            write_wav(speech / f"{key}-{path.replace('/', '-')}", x)
    return labels


def speech_clips(out: Path = DEFAULT_OUT) -> list[FloatArray]:
    """The real speech (no tones) :func:`build` extracted into ``out/speech`` (the sources'
    ``speech_only`` lists), for the talk-off test; empty when the corpus was not built."""
    return [load_audio(p) for p in sorted((out / "speech").glob("*.wav"))]


def main(argv: list[str] | None = None) -> int:
    """``scripts/real_corpus``: build the corpus; exit 1 naming a source that failed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    ap.add_argument(
        "--mirror-root",
        type=Path,
        default=None,
        help="folder of local git mirrors (OWNER+NAME/repo) to read instead of cloning",
    )
    a = ap.parse_args(argv)
    try:
        labels = build(a.out, a.mirror_root)
    except SourceError as e:
        print(f"real_corpus: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(labels)} files and labels.json to {a.out}")
    return 0
