"""Worker start-up with a prompt library, measured in a fresh interpreter (the fork server
is a per-process singleton: a test process may have started one already).

Run: ``python -m tests.preload_probe FOLDER preload|lazy`` prints one JSON object: for the
first process forked (the fork server starts then) and the next ones, the time from
``Process.start()`` to the library being ready in the child, whether the child found it
loaded, and the child's own load time.
"""

from __future__ import annotations

import json
import sys
import time
import wave
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

LABELS = ("ivr", "not_in_service", "screening")


def write_library(folder: Path, n: int = 100, seed: int = 7) -> Path:
    """``n`` speech-like prompts (a gliding harmonic voice in 4 Hz syllables, 1.5-2.5 s,
    8 kHz 16-bit) in one sub-folder per label."""
    rng = np.random.default_rng(seed)
    rate = 8000
    for i in range(n):
        sub = folder / LABELS[i % len(LABELS)]
        sub.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(rate * rng.uniform(1.5, 2.5))) / rate
        f0 = rng.uniform(100, 220) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.3, 1.2) * t))
        phase = 2 * np.pi * np.cumsum(f0) / rate
        voice = sum(np.sin(k * phase) / k for k in range(1, 12))
        syll = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6)), 0, None)
        x = 0.2 * voice * syll + 0.003 * rng.standard_normal(t.size)
        with wave.open(str(sub / f"p{i:03d}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return folder


def probe(folder: str, conn: Connection) -> None:
    """Child: is the library in the worker's cache, and how long until it is ready?"""
    from sipbridge.sip import tap

    t0 = time.perf_counter()
    cached = any(key[0] == folder for key in tap._PROMPT_LIBRARIES)  # (folder, limits)
    lib = tap.prompt_library(folder)
    conn.send(
        {
            "cached": cached,
            "load_s": time.perf_counter() - t0,
            "prompts": len(lib.prompts) if lib else 0,
        }
    )
    conn.close()


def main(folder: str, mode: str, n: int = 4) -> dict[str, Any]:
    from sipbridge.sip.forkserver import worker_context
    from sipbridge.sip.promptpreload import request_preload

    request_preload(folder if mode == "preload" else None)
    ctx = worker_context()
    runs = []
    for _ in range(n):
        parent, child = ctx.Pipe(duplex=False)
        t0 = time.perf_counter()
        p = ctx.Process(target=probe, args=(folder, child), daemon=True)
        p.start()
        child.close()
        got = parent.recv()
        got["ready_s"] = time.perf_counter() - t0
        p.join(10)
        runs.append(got)
    return {"mode": mode, "first": runs[0], "next": runs[1:]}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
