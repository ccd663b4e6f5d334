#!/usr/bin/env python3
"""Accuracy on the real-audio corpus alone, per class, with every miss and its reason.

Run: ``.venv/bin/python bench/realscore.py [DIR]`` (also ``bench/dsp.py --real-only``), after
``scripts/real_corpus``. A class is the label's ``answered_by`` (``progress`` for call-progress
tones), split by the kind of item (the name up to its source-specific part: ``wuw_name``,
``ast_vm`` ...). Prints Markdown: a table per class and kind, then the misses (file, expected,
got, the detector's reason, what :func:`sipbridge.corpus.score.check` found wrong), and the
same totals for a fixed held-out split (:func:`split_of`, a hash of the file name): tune
thresholds on ``tune``, report ``held`` separately. Writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sipbridge.corpus import real  # noqa: E402
from sipbridge.corpus.score import (  # noqa: E402
    MID_PAUSE_MIN_MS,
    check,
    class_of,
    speech_end_ms,
)
from sipbridge.media.analyze import analyze_samples, load_audio  # noqa: E402

# what an item is, from its name: the voice/session part is dropped
KINDS = [
    (r"^wuw_name_", "live caller, says their name (phone line)"),
    (r"^wuw_talk_", "live caller, a sentence (phone line)"),
    (r"^hello_", "person says hello… (mic, phone-filtered)"),
    (r"^ast_.*vm_(unavail|busy|beep|ringback|late\d+|longgap)", "voicemail greeting + beep"),
    (r"^ast_.*vm_nobeep", "voicemail greeting, no beep"),
    (r"^ast_.*(intercept|allbusy)", "spoken intercept / all-busy (no SIT)"),
    (r"^ast_.*ivr_", "IVR prompts"),
    (r"^ast_.*(short_|hold_prompt)", "short recorded prompt then silence"),
    (r"^fax_", "fax call recorded from a line"),
]


def kind_of(name: str) -> str:
    for pat, kind in KINDS:
        if re.search(pat, name):
            return kind
    return "other"


def split_of(name: str) -> str:
    """``held`` or ``tune``: half the files by a hash of their name (stable, not chosen)."""
    return "held" if hashlib.sha1(name.encode()).digest()[0] & 1 else "tune"


def run(folder: Path) -> dict[str, Any]:
    labels: dict[str, dict[str, Any]] = json.loads((folder / "labels.json").read_text())
    rows: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    misses: list[dict[str, Any]] = []
    human_lat: list[int] = []
    mid_pause: list[str] = []  # decided in a pause before the transcript's end (counted right)
    splits: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"n": 0, "ok": 0, "machines": 0, "m_as_h": 0, "humans": 0, "h_ok": 0, "lat": []}
    )
    for f, lab in sorted(labels.items()):
        det, _ = analyze_samples(load_audio(folder / f), lab.get("mode", "answer"))
        errs = check(folder / f, lab, det)
        key = (class_of(lab), kind_of(f))
        rows[key][0] += 1
        rows[key][1] += not errs
        sp = splits[split_of(f)]
        sp["n"] += 1
        sp["ok"] += not errs
        if lab["answered_by"] == "human":
            sp["humans"] += 1
            sp["h_ok"] += not errs
        else:
            sp["machines"] += 1
            sp["m_as_h"] += det.answered_by == "human"
        if det.answered_by == lab["answered_by"] == "human" and lab["greeting_end_ms"]:
            end = speech_end_ms(folder / f, lab, det)
            human_lat.append(det.decided_at_ms - end)
            sp["lat"].append(human_lat[-1])
            if end != lab["greeting_end_ms"]:
                mid_pause.append(f)
        if errs:
            misses.append(
                {
                    "file": f,
                    "expected": lab["answered_by"],
                    "got": det.answered_by,
                    "reason": det.reason,
                    "decided_at_ms": det.decided_at_ms,
                    "problems": [e.split(": ", 1)[1] for e in errs],
                    "desc": lab.get("desc", ""),
                }
            )
    return {
        "n": len(labels),
        "rows": rows,
        "misses": misses,
        "human_lat": human_lat,
        "mid_pause": mid_pause,
        "splits": dict(sorted(splits.items())),
    }


def report(r: dict[str, Any]) -> str:
    ok = sum(v[1] for v in r["rows"].values())
    lines = [
        f"Real corpus: {ok}/{r['n']} right.",
        "",
        "| class | kind | files | right |",
        "|---|---|---|---|",
    ]
    by_class: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (cls, kind), (n, good) in sorted(r["rows"].items()):
        lines.append(f"| {cls} | {kind} | {n} | {good} |")
        by_class[cls][0] += n
        by_class[cls][1] += good
    lines.append("")
    lines.append(
        "Per class: " + ", ".join(f"{c} {g}/{n}" for c, (n, g) in sorted(by_class.items())) + "."
    )
    lat = r["human_lat"]
    if lat:
        lines.append(
            f"Human decided after the end of speech (when called human): median "
            f"{np.percentile(lat, 50):.0f} ms, p90 {np.percentile(lat, 90):.0f} ms (n={len(lat)})."
        )
    if r["mid_pause"]:
        lines.append(
            f"Decided human in a pause of {MID_PAUSE_MIN_MS} ms or more before the transcript's "
            f"end (latency from the pause's start): {', '.join(r['mid_pause'])}."
        )
    lines += [
        "",
        "| split | right | humans right | others called human | human after end of speech, "
        "median / p90 (ms) |",
        "|---|---|---|---|---|",
    ]
    for name, sp in r["splits"].items():
        hl = sp["lat"]
        lat_s = (
            f"{np.percentile(hl, 50):.0f} / {np.percentile(hl, 90):.0f} (n={len(hl)})"
            if hl
            else "n/a"
        )
        lines.append(
            f"| {name} | {sp['ok']}/{sp['n']} | {sp['h_ok']}/{sp['humans']} | "
            f"{sp['m_as_h']}/{sp['machines']} | {lat_s} |"
        )
    lines += [
        "",
        "| file | split | expected | got | reason | problems |",
        "|---|---|---|---|---|---|",
    ]
    for m in r["misses"]:
        lines.append(
            f"| {m['file']} | {split_of(m['file'])} | {m['expected']} | {m['got']} | "
            f"{m['reason']} | "
            f"{'; '.join(m['problems'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0]) if args else real.DEFAULT_OUT
    if not (folder / "labels.json").exists():
        print(f"realscore: no corpus in {folder} (run scripts/real_corpus)", file=sys.stderr)
        return 1
    print(report(run(folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
