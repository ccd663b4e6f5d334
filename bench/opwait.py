#!/usr/bin/env python3
"""How short can the operator wait be? Pauses of machine greetings that look live.

Run: ``.venv/bin/python bench/opwait.py [DIR]`` (the real corpus, ``scripts/real_corpus``;
without it only the generated corpora are measured). Writes nothing.

A long greeting in a live-sounding voice is ``human`` (``hint: operator``) once it has been
silent for ``operator_silence_ms`` (see :mod:`sipbridge.media.thresholds`). A recording that
merely looks live (played into a noisy line whose noise masks its own bed) is saved from that
only when its beep or its next sentence comes sooner. This measures, for every machine greeting
(``machine``/``ivr`` items of the real corpus and of the generated corpora ``detection`` and
``regress``), as it is and mixed into noisy lines (white or pink noise at -64/-56/-48 dBFS, then
G.711 µ-law: the floor is the same under the speech, so the voice reads live):

* whether it reaches the live-voice state (the timeline's ``live_voice``) before a machine
  decision;
* then every pause that starts after a word while it is live: how long until the next word or
  the beep's decision (the beep needs ``beep_min_ms`` of tone) — the wait it needs;
* per candidate wait W (``operator_silence_ms``; lines whose floor is within
  ``operator_clear_db`` of the speech keep ``operator_masked_silence_ms``): how many
  live-looking machines the detector calls human, split by what ended their longest pause:
  the beep (it came later than the wait), more speech (the greeting went on after a long
  pause), nothing (no beep and nothing more: an operator decision at any wait, unless the line
  drops to digital silence after it).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sipbridge.corpus import detection, real, regress  # noqa: E402
from sipbridge.corpus.synth import codec, noise  # noqa: E402
from sipbridge.media.analyze import load_audio  # noqa: E402
from sipbridge.media.detect import DetectionConfig, Detector  # noqa: E402
from sipbridge.media.frames import scale_to_dbfs  # noqa: E402

WAITS_MS = (700, 900, 1000, 1200, 1500)
FLOORS_DBFS = (-64.0, -56.0, -48.0)
# no operator decision at all: the detector runs on to the beep or the machine decision
NO_OPERATOR = replace(
    DetectionConfig(), operator_silence_ms=10**6, operator_masked_silence_ms=10**6
)


def called_human(x: np.ndarray, wait_ms: int) -> bool:
    """Is ``x`` called human with ``operator_silence_ms=wait_ms`` (the rest as shipped)?"""
    det = Detector(replace(DetectionConfig(), operator_silence_ms=wait_ms), keep_timeline=False)
    det.feed(x)
    return det.finish().answered_by == "human"


def needed_wait(x: np.ndarray) -> tuple[bool, float, str]:
    """(looks live?, the longest pause after a word while live, what ended that pause:
    ``speech`` / ``beep`` / ``nothing``)."""
    det = Detector(NO_OPERATOR)
    det.feed(x)
    det.finish()
    tl = [e.t_ms for e in det.timeline if e.kind == "live_voice"]
    if not tl:
        return False, 0.0, ""
    live_at = tl[0]
    ends = [e.t_ms for e in det.timeline if e.kind == "speech_end"]
    starts = [e.t_ms for e in det.timeline if e.kind == "speech_start"]
    decided = [e for e in det.timeline if e.kind == "decision" and e.t_ms >= live_at]
    stop = decided[0].t_ms if decided else None  # a machine decision ends the live state
    beep = bool(decided) and "beep" in str(decided[0].detail.get("reason", ""))
    worst, what = 0.0, ""
    for e in ends:
        if stop is not None and e >= stop:
            break
        nxt = [s for s in starts if s > e]
        cands = [(nxt[0], "speech")] if nxt else []
        if stop is not None:
            cands.append((stop, "beep" if beep else "speech"))
        end, kind = min(cands) if cands else (float("inf"), "nothing")
        if end <= live_at:
            continue  # the pause was over before the voice was judged live
        if end - e > worst:
            worst, what = end - e, kind
    return True, worst, what


def noisy(x: np.ndarray, rng: np.random.Generator) -> Iterator[np.ndarray]:
    for k, floor in enumerate(FLOORS_DBFS):
        kind = ("white", "pink")[k % 2]
        yield codec(x + scale_to_dbfs(noise(x.size, kind, rng), floor), "ulaw")


def machines(real_dir: Path | None, tmp: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(group, audio) for every machine greeting, as is and on noisy lines."""
    rng = np.random.default_rng(12)
    sets: list[tuple[str, Path, dict[str, dict[str, Any]]]] = []
    if real_dir is not None:
        import json

        sets.append(("real", real_dir, json.loads((real_dir / "labels.json").read_text())))
    for name, gen in (("detection", detection.generate), ("regress", regress.generate)):
        out = tmp / name
        sets.append((name, out, gen(out)))
    for name, folder, labels in sets:
        for f, lab in sorted(labels.items()):
            if lab["answered_by"] not in ("machine", "ivr") or lab.get("mode") == "early":
                continue
            x = load_audio(folder / f)
            yield f"{name}, as is", x
            for y in noisy(x, rng):
                yield f"{name}, noisy line", y


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0]) if args else real.DEFAULT_OUT
    real_dir = folder if (folder / "labels.json").exists() else None
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as td:
        for group, x in machines(real_dir, Path(td)):
            live, need, what = needed_wait(x)
            row = rows.setdefault(group, {"n": 0, "live": 0, "need": [], "human": {}})
            row["n"] += 1
            if not live:
                continue
            row["live"] += 1
            row["need"].append(need)
            for w in WAITS_MS:
                if called_human(x, w):
                    row["human"].setdefault(w, []).append(what)
    head = " | ".join(f"W={w}" for w in WAITS_MS)
    print(
        "Machine greetings that look live, called human at operator wait W: total (longest "
        "pause ended by the beep / more speech / nothing).\n"
    )
    print(f"| machines | greetings | look live | {head} |")
    print("|---|---|---|" + "---|" * len(WAITS_MS))
    for group, row in rows.items():
        cells = []
        for w in WAITS_MS:
            h = row["human"].get(w, [])
            by = " / ".join(str(h.count(k)) for k in ("beep", "speech", "nothing"))
            cells.append(f"{len(h)} ({by})")
        print(f"| {group} | {row['n']} | {row['live']} | " + " | ".join(cells) + " |")
    gaps = sorted(n for row in rows.values() for n in row["need"] if n != float("inf"))
    if gaps:
        print(
            f"\nLongest pause of live-looking machines, up to their beep or next word (ms): "
            f"n={len(gaps)}, "
            + ", ".join(f"p{q} {np.percentile(gaps, q):.0f}" for q in (10, 50, 90))
            + "; over each W: "
            + ", ".join(f"{w}: {sum(g > w for g in gaps)}" for w in WAITS_MS)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
