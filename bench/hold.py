#!/usr/bin/env python3
"""Benchmark of the IVR hold-step listener (sipbridge.media.hold).

Run: ``.venv/bin/python bench/hold.py [--corpus DIR] [--seeds N]``

Over the generated hold corpus (``sipbridge.corpus.hold``; generated into a temp dir
unless ``--corpus`` names one, plus ``--seeds`` extra corpora with other seeds for a wider
sample), frames fed as 320-byte PCM like a SIP worker does:

* CPU per 20 ms frame — median / p99 / mean of per-``feed()`` wall time (every file, to the
  end of the audio or the decision);
* decision latency after the person's onset (median / max), misses (no human decision within
  1.5 s of the onset, or one before it);
* false-person count on the no-person files (music only, music + looping prompt, ringback).

Writes its section of ``bench/RESULTS.md`` between ``<!-- hold:start -->`` / ``<!-- hold:end -->``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results import RESULTS, write_section  # noqa: E402

from sipbridge.corpus import hold  # noqa: E402
from sipbridge.corpus.hold import DEFAULT_SEED  # noqa: E402
from sipbridge.media.analyze import load_audio  # noqa: E402
from sipbridge.media.frames import float_to_pcm16  # noqa: E402
from sipbridge.media.hold import HoldConfig, HoldListener, best_match  # noqa: E402

TARGET_US = 60.0
MAX_LATENCY_MS = 1500


def run_file(path: Path) -> tuple[HoldListener, list[int]]:
    pcm = float_to_pcm16(load_audio(path)).tobytes()
    hl = HoldListener()
    feed = hl.feed
    per: list[int] = []
    pc = time.perf_counter_ns
    for i in range(0, len(pcm) - 319, 320):
        fr = pcm[i : i + 320]
        t0 = pc()
        feed(fr)
        per.append(pc() - t0)
        if hl.done:
            break
    return hl, per


def bench(corpora: list[tuple[str, Path, dict[str, dict[str, Any]]]]) -> dict[str, Any]:
    per: list[int] = []
    lat: list[int] = []
    misses: list[str] = []
    false_person: list[str] = []
    n_person = n_none = 0
    none_audio_s = 0.0
    for tag, out, labels in corpora:
        for name, lab in sorted(labels.items()):
            hl, p = run_file(out / name)
            per += p
            r = hl.result()
            human = r is not None and r.answered_by == "human"
            if lab["person_ms"] is None:
                n_none += 1
                none_audio_s += lab["duration_ms"] / 1000
                if human:
                    false_person.append(f"{tag}/{name}")
                continue
            n_person += 1
            d = (r.decided_at_ms - lab["person_ms"]) if human and r is not None else None
            if d is None or not 0 <= d <= MAX_LATENCY_MS:
                misses.append(f"{tag}/{name} ({d})")
            if d is not None and d >= 0:
                lat.append(d)
    us = np.asarray(per) / 1000.0
    return {
        "frames": us.size,
        "median_us": float(np.median(us)),
        "p99_us": float(np.percentile(us, 99)),
        "mean_us": float(us.mean()),
        "max_us": float(us.max()),
        "lat": lat,
        "misses": misses,
        "false_person": false_person,
        "n_person": n_person,
        "n_none": n_none,
        "none_audio_min": none_audio_s / 60,
    }


def match_cost_ms() -> float:
    """Median cost of one fingerprint search over a full history (default ``history_ms``)."""
    cfg = HoldConfig()
    rng = np.random.default_rng(0)
    hist = rng.standard_normal((cfg.history_ms // 20, 12)) * 8.0 - 40.0
    tpl = rng.standard_normal((cfg.decide_after_ms // 20, 12)) * 8.0 - 40.0
    ts = []
    for _ in range(30):
        t0 = time.perf_counter()
        best_match(tpl, hist)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="hold-step listener benchmark")
    ap.add_argument("--corpus", type=Path, default=None, help="existing hold corpus dir")
    ap.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="extra corpora generated with seeds 1..N (0 = default corpus only)",
    )
    ap.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as td:
        corpora: list[tuple[str, Path, dict[str, dict[str, Any]]]] = []
        if a.corpus is not None and (a.corpus / "labels.json").exists():
            corpora.append(
                ("default", a.corpus, json.loads((a.corpus / "labels.json").read_text()))
            )
        else:
            out = Path(td) / "default"
            corpora.append(("default", out, hold.generate(out, DEFAULT_SEED)))
        for seed in range(1, a.seeds + 1):
            out = Path(td) / f"seed{seed}"
            corpora.append((f"seed{seed}", out, hold.generate(out, seed)))
        res = bench(corpora)
    lat = res["lat"]
    misses = f" ({', '.join(res['misses'])})" if res["misses"] else ""
    false_p = f" ({', '.join(res['false_person'])})" if res["false_person"] else ""
    ok = "meets" if res["median_us"] < TARGET_US else "MISSES"
    lat_s = f"median {statistics.median(lat):.0f}, max {max(lat)} (n={len(lat)})" if lat else "n/a"
    text = f"""## Hold step: live-person listener (`bench/hold.py`)

Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()},
numpy {np.__version__}. `HoldListener` with default thresholds over {len(corpora)} generated
hold corpora (`sipbridge corpus hold`, seeds {DEFAULT_SEED} and 1..{a.seeds}):
{res["n_person"]} person files, {res["n_none"]} no-person files
({res["none_audio_min"]:.0f} min of music, looping prompts and ringback); frames fed as
320-byte PCM like a SIP worker does, {res["frames"]} frames timed.

| metric | value |
|---|---|
| CPU per 20 ms frame, median (wall per `feed()`) | **{res["median_us"]:.1f} µs** \
({ok} the {TARGET_US:.0f} µs target) |
| p99 / mean / max per frame | {res["p99_us"]:.1f} µs / {res["mean_us"]:.1f} µs / \
{res["max_us"] / 1000:.1f} ms |
| one fingerprint search over the full 3 min history (≤ 3 per speech segment) | \
{match_cost_ms():.1f} ms |
| decision latency after the person's onset | {lat_s} |
| person missed or decided outside [onset, onset + {MAX_LATENCY_MS} ms] | \
{len(res["misses"])}/{res["n_person"]}{misses} |
| false "person" on no-person files | **{len(res["false_person"])}/{res["n_none"]}**{false_p} |

The corpora are synthetic (numpy music, espeak-ng voices); real hold audio and real agents
will differ — see the weaknesses listed in `sipbridge/media/hold.py`.
"""
    print(text)
    if not a.no_write:
        write_section("hold", text)
        print(f"updated {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
