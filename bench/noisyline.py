#!/usr/bin/env python3
"""Recorded prompts that look live: the other side of the operator wait.

Run: ``.venv/bin/python bench/noisyline.py [DIR]`` after ``scripts/real_corpus`` (reads the
real Asterisk prompts in ``DIR/speech``, professional studio recordings). Each prompt of 2–6.5 s
is played into a noisy line (white or pink noise at -64, -56, -48 dBFS: an analog line or a PBX
behind one, whose noise masks the prompt's own bed, so the floor is unchanged under it and the
voice reads *live*), with and without a recorded room bed 25–45 dB under the speech, then a
1 kHz beep ``d`` ms after the last word, G.711 µ-law. A live-looking greeting is ``human``
(``hint: operator``) once it has waited ``operator_silence_ms`` (0.9 s; 1.5 s,
``operator_masked_silence_ms``, when the line's floor is within ``operator_clear_db`` of the
speech) with no beep; this prints, per beep delay, how many such machines were called human:
the cost of deciding a long live greeting sooner (bench/opwait.py: the same per wait on the
corpora's own greetings). ``--quiet`` plays them into quiet lines instead (-74, -70 dBFS),
where only the pink ones (half) read live, by their tilt (``room_tilt_db``). Writes nothing.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sipbridge.corpus import real  # noqa: E402
from sipbridge.corpus.synth import codec, noise, speech_end, tone, trim  # noqa: E402
from sipbridge.media.analyze import load_audio  # noqa: E402
from sipbridge.media.detect import Detector  # noqa: E402
from sipbridge.media.frames import SAMPLE_RATE, scale_to_dbfs  # noqa: E402

DELAYS_MS = (300, 700, 1000, 1200, 1500, 2000)
FLOORS_DBFS = (-64.0, -56.0, -48.0)
# ``--quiet``: lines as quiet as a quiet room (-76..-68 dBFS), where only a floor tilted like
# acoustic noise (pink, half the prompts) reads live (``room_tilt_db``); white reads flat
QUIET_FLOORS_DBFS = (-74.0, -70.0)


def _n(ms: float) -> int:
    return round(ms * SAMPLE_RATE / 1000)


def calls(
    folder: Path, seed: int = 7, floors: tuple[float, ...] = FLOORS_DBFS
) -> list[tuple[int, np.ndarray]]:
    """(beep delay after the last word in ms, audio) for every prompt, floor, bed, delay."""
    rng = np.random.default_rng(seed)
    out: list[tuple[int, np.ndarray]] = []
    clips = sorted((folder / "speech").glob("asterisk-*.wav"))
    for ci, p in enumerate(clips):
        s = trim(load_audio(p))
        if not _n(2000) <= s.size <= _n(6500):
            continue
        for floor in floors:
            for d in DELAYS_MS:
                for bed in (False, True):
                    lvl = rng.uniform(-26, -18)
                    sp = scale_to_dbfs(s, lvl)
                    if bed:  # recorded in a room: its bed 25-45 dB under the speech
                        sp = sp + scale_to_dbfs(
                            noise(sp.size, "pink", rng), lvl - rng.uniform(25, 45)
                        )
                    beep = scale_to_dbfs(tone((1000.0,), 400, -18), lvl)
                    x = np.concatenate(
                        [np.zeros(_n(700)), sp[: speech_end(sp)], np.zeros(_n(d)), beep]
                    )
                    x = np.concatenate([x, np.zeros(_n(2000))])
                    x = x + scale_to_dbfs(noise(x.size, ("white", "pink")[ci % 2], rng), floor)
                    out.append((d, codec(x, "ulaw")))
    return out


def run(folder: Path, floors: tuple[float, ...] = FLOORS_DBFS) -> dict[int, list[int]]:
    """Per beep delay: [calls, called human]."""
    rows: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for d, x in calls(folder, floors=floors):
        det = Detector(keep_timeline=False)
        det.feed(x)
        r = det.finish()
        rows[d][0] += 1
        rows[d][1] += r.answered_by == "human"
    return dict(sorted(rows.items()))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    floors = QUIET_FLOORS_DBFS if "--quiet" in args else FLOORS_DBFS
    args = [a for a in args if a != "--quiet"]
    folder = Path(args[0]) if args else real.DEFAULT_OUT
    if not (folder / "speech").is_dir():
        print(f"noisyline: no corpus in {folder} (run scripts/real_corpus)", file=sys.stderr)
        return 1
    print(f"(line floors {', '.join(f'{f:.0f}' for f in floors)} dBFS)\n")
    print("| beep after the last word (ms) | calls | called human |\n|---|---|---|")
    for d, (n, h) in run(folder, floors).items():
        print(f"| {d} | {n} | {h} ({100 * h / n:.0f} %) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
