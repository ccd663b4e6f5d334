"""Cost of getting a call's audio out of pjsua2 and into detection, per 20 ms frame.

Measures, on this machine:
  * copying a 320-byte frame out of a pjsua2 ``MediaFrame`` the obvious way
    (``bytes(frame.buf)``, SWIG converts element by element) and the way
    ``sipbridge.sip.tap`` does it (one ``ctypes.string_at`` on the vector's storage);
  * the whole per-frame path of a tapped call: copy, queue, drain, detector feed;
and reports each as µs per frame and as % of one core per call (50 frames/s).
Writes its section of bench/RESULTS.md between ``<!-- tap:start -->`` and ``<!-- tap:end -->``.

Run: python bench/tap.py
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pjsua2 as pj

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results import write_section  # noqa: E402

from sipbridge.media.detect import Detector  # noqa: E402
from sipbridge.sip.tap import FAST_COPY, _copy_vector_ctypes, _copy_vector_slow  # noqa: E402

FRAMES_PER_S = 50
N = 20000


def per_call_pct(us_per_frame: float) -> float:
    return us_per_frame * FRAMES_PER_S / 1e6 * 100


def time_per_op(fn: Callable[[], object], n: int = N, reps: int = 7) -> float:
    """Median over ``reps`` runs of the mean µs per call of ``fn``."""
    runs = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(runs)


def main() -> int:
    rng = np.random.default_rng(1)
    pcm = (rng.normal(0, 3000, 160)).astype(np.int16).tobytes()
    frame = pj.MediaFrame()
    vec = pj.ByteVector(len(pcm))
    for i, b in enumerate(pcm):
        vec[i] = b
    frame.buf = vec
    frame.size = len(pcm)
    assert _copy_vector_ctypes(frame.buf) == _copy_vector_slow(frame.buf) == pcm

    slow = time_per_op(lambda: _copy_vector_slow(frame.buf), n=2000)
    fast = time_per_op(lambda: _copy_vector_ctypes(frame.buf))

    # Whole path: speech-like audio through copy -> deque -> drain -> Detector.feed.
    t = np.arange(8000 * 60) / 8000
    audio = (3000 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 4 * t) > 0)).astype(np.int16)
    frames = [audio[i : i + 160].tobytes() for i in range(0, len(audio) - 160, 160)]
    vectors = []
    for f in frames[:500]:
        v = pj.ByteVector(320)
        for i, b in enumerate(f):
            v[i] = b
        vectors.append(v)
    det = Detector(mode="answer", keep_timeline=False)
    q: deque[bytes] = deque(maxlen=250)
    samples = []
    for k in range(len(frames)):
        v = vectors[k % len(vectors)]
        t0 = time.perf_counter()
        q.append(_copy_vector_ctypes(v))
        while q:
            det.feed(q.popleft())
        samples.append((time.perf_counter() - t0) * 1e6)
        if det.done:
            det = Detector(mode="answer", keep_timeline=False)
    whole = statistics.median(samples)

    cores = os.cpu_count()
    rows = [
        ("copy `bytes(frame.buf)` (element by element)", slow),
        ("copy via ctypes on the vector storage (sipbridge.sip.tap)", fast),
        ("whole tapped frame: copy + queue + detector (median)", whole),
    ]
    lines = [
        "## Media tap: frame copy and per-frame analysis cost (`bench/tap.py`)",
        "",
        f"Machine: {platform.machine()}, {cores} cores, Python {platform.python_version()}, "
        f"pjsua2-python (PJSIP 2.15); "
        f"fast copy layout check {'passed' if FAST_COPY else 'FAILED (slow path in use)'}.",
        "",
        "| per 20 ms frame | µs | % of one core per call |",
        "|---|---|---|",
        *[f"| {name} | {us:.2f} | {per_call_pct(us):.3f} % |" for name, us in rows],
        "",
        f"The ctypes copy is {slow / fast:.0f}x cheaper than SWIG's conversion; analysis "
        f"runs only while detection is undecided (the tap is disconnected after the decision).",
    ]
    section = "\n".join(lines)
    print(section)
    write_section("tap", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
