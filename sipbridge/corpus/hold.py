"""Generate the labelled IVR *hold step* corpus (8 kHz mono 16-bit WAV + labels.json).

Command line: ``sipbridge corpus hold OUT_DIR [--seed N]`` (or ``scripts/gen_hold_corpus.py``).

What a caller hears after the IVR put it on hold, synthesised:

* **hold music** (numpy): a chord progression (I–V–vi–IV and friends) in a random key, voiced
  with harmonics, in one of three styles — ``pad`` (sustained chords), ``piano`` (chords
  re-struck every beat with an exponential decay), ``arp`` (arpeggiated chord notes) — plus a
  melody line (some with vibrato), sometimes percussion-like noise bursts (hi-hat / snare);
  random tempo 60–150 bpm; band-limited to 300–3400 Hz;
* **looping recorded prompts** (espeak-ng, one "studio" voice per file): "Your call is important
  to us…" played 2–3 times between music. The first play follows the music without a pause
  (music ducked under the prompt, crossfaded into it, or cut right into it) — that is how
  hold-queue playlists are produced; later plays sometimes come after a short silence;
* **the live person** (an espeak voice different from the prompt's): after the music stops
  (fade or abrupt cut, 0.25–1.5 s of silence, sometimes a switching click), or interrupting the
  music mid-phrase (abrupt cut, then the agent talks 0.25–0.6 s later — the ACD switches the
  stream and the agent hears the connect tone before talking); with their own room noise
  sometimes; level independent of the music's;
* also silent holds (line noise only), ringback-as-hold, periodic beeps.

Every file goes through a G.711 µ-law round trip after line noise (white/pink, -65..-45 dBFS) is
added. Deterministic for a seed; runs in seconds.

labels.json maps file name -> {
  "person_ms": int | null,   when the person starts speaking (ms from file start); null = none
  "duration_ms": int,
  "prompts_ms": [int],       when each recorded prompt starts (for inspection)
  "desc": "..."
}
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from sipbridge.corpus import synth as gc
from sipbridge.media.frames import SAMPLE_RATE, scale_to_dbfs

FS = SAMPLE_RATE
DEFAULT_SEED = 20240611

PROMPT_VOICES = ["en+f3", "en-us", "en+f2", "en-gb"]
PERSON_VOICES = ["en-gb-scotland", "en+m7", "en-029", "en+m3", "en-gb-x-rp", "en-us-nyc"]
PROMPTS = [
    "Your call is important to us. Please stay on the line.",
    "All of our agents are currently busy. The next available agent will be with you shortly.",
    "Thank you for holding. Your call will be answered in the order it was received.",
    "Did you know you can manage your account online? Visit our website any time.",
]
PERSONS = [
    "Hello, thanks for holding, this is Sam, how can I help you?",
    "Hi, this is Maria in billing. How can I help?",
    "Thank you for waiting, my name is Alex. What can I do for you today?",
    "Hello?",
    "Good afternoon, you're speaking with Jordan.",
    "Hi there, sorry for the wait. Who am I speaking with?",
]

PROGRESSIONS = [(0, 7, 9, 5), (0, 5, 7, 0), (9, 5, 0, 7), (0, 9, 5, 7), (2, 7, 0, 0)]
# chord (semitones above the key root) for each scale-degree offset used in PROGRESSIONS
CHORDS = {0: (0, 4, 7), 2: (2, 5, 9), 5: (5, 9, 12), 7: (7, 11, 14), 9: (9, 12, 16)}
MAJOR = (0, 2, 4, 5, 7, 9, 11)


def bandlimit(x: np.ndarray, lo: float = 300.0, hi: float = 3400.0) -> np.ndarray:
    """Telephone band: FFT mask with 50 Hz raised-cosine edges."""
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(x.size, 1 / FS)
    m = np.clip((f - (lo - 50)) / 100, 0, 1) * np.clip(((hi + 50) - f) / 100, 0, 1)
    m = 0.5 - 0.5 * np.cos(np.pi * m)
    return np.asarray(np.fft.irfft(spec * m, x.size), dtype=np.float64)


def _note(
    f0: float, n: int, env: np.ndarray, harm: tuple[float, ...], vib: float, phase: float
) -> np.ndarray:
    t = np.arange(n) / FS
    inst = f0 * (1 + vib * np.sin(2 * np.pi * 5.5 * t + phase))
    ph = 2 * np.pi * np.cumsum(inst) / FS
    y = np.zeros(n)
    for k, a in enumerate(harm, start=1):
        if f0 * k > 3500:
            break
        y += a * np.sin(k * ph + phase * k)
    return y * env


def synth_music(
    rng: np.random.Generator,
    seconds: float,
    tempo_bpm: float,
    root_hz: float,
    style: str = "pad",
    percussion: bool = False,
    vibrato: bool = False,
    level_dbfs: float = -20.0,
    progression: int = 0,
) -> np.ndarray:
    """Synthetic hold music: chords + melody (+ percussion), band-limited, at ``level_dbfs``."""
    n = int(seconds * FS)
    beat = 60.0 / tempo_bpm
    bar = 4 * beat
    y = np.zeros(n + int((2 * bar + 1) * FS))
    prog = PROGRESSIONS[progression % len(PROGRESSIONS)]
    harm_chord = (1.0, 0.5, 0.33, 0.2, 0.12)
    harm_mel = (1.0, 0.6, 0.4, 0.25, 0.15, 0.1)
    t0 = 0.0
    ci = 0
    while t0 < seconds:
        deg = prog[ci % len(prog)]
        notes = [root_hz * 2 ** (s / 12) for s in CHORDS[deg]]
        bass = root_hz / 2 * 2 ** (CHORDS[deg][0] / 12)
        s0 = int(t0 * FS)
        if style == "pad":
            m = int(bar * FS)
            env = np.minimum(1, np.arange(m) / (0.08 * FS)) * np.minimum(
                1, (m - np.arange(m)) / (0.1 * FS)
            )
            for f in [*notes, bass]:
                y[s0 : s0 + m] += 0.5 * _note(f, m, env, harm_chord, 0.0, rng.uniform(0, 6))
        elif style == "piano":
            for b in range(4):
                m = int(beat * FS)
                s = s0 + int(b * beat * FS)
                env = np.exp(-np.arange(m) / (0.5 * FS)) * np.minimum(1, np.arange(m) / 40)
                for f in [*notes, bass]:
                    y[s : s + m] += 0.5 * _note(f, m, env, harm_chord, 0.0, rng.uniform(0, 6))
        else:  # arp
            seq = [*notes, notes[1] * 2, notes[2], notes[1]]
            for e in range(8):
                m = int(beat / 2 * FS * 1.6)
                s = s0 + int(e * beat / 2 * FS)
                env = np.exp(-np.arange(m) / (0.35 * FS)) * np.minimum(1, np.arange(m) / 40)
                y[s : s + m] += 0.6 * _note(
                    seq[e % len(seq)], m, env, harm_chord, 0.0, rng.uniform(0, 6)
                )
            m = int(bar * FS)
            env = np.minimum(1, np.arange(m) / 400) * np.minimum(1, (m - np.arange(m)) / 400)
            y[s0 : s0 + m] += 0.4 * _note(bass, m, env, harm_chord, 0.0, 0.0)
        # melody: a walk over the scale, one or two notes per beat
        tb = 0.0
        idx = int(rng.integers(7, 12))
        while tb < bar - 1e-6:
            d = beat * float(rng.choice([0.5, 1.0, 1.0, 2.0]))
            d = min(d, bar - tb)
            idx = int(np.clip(idx + rng.integers(-2, 3), 4, 16))
            f = root_hz * 2 * 2 ** ((MAJOR[idx % 7] + 12 * (idx // 7) - 12) / 12)
            m = int(d * FS)
            s = s0 + int(tb * FS)
            env = (
                np.minimum(1, np.arange(m) / 80)
                * np.exp(-np.arange(m) / (1.2 * FS))
                * np.minimum(1, (m - np.arange(m)) / 160)
            )
            y[s : s + m] += 0.8 * _note(
                f, m, env, harm_mel, 0.004 if vibrato else 0.0, rng.uniform(0, 6)
            )
            tb += d
        if percussion:
            for e in range(8):
                s = s0 + int(e * beat / 2 * FS)
                m = int(0.06 * FS)
                hat = rng.standard_normal(m) * np.exp(-np.arange(m) / (0.012 * FS))
                y[s : s + m] += 0.25 * np.diff(np.concatenate([[0.0], hat]))
                if e % 4 == 2:  # snare on beats 2 and 4
                    m2 = int(0.15 * FS)
                    y[s : s + m2] += (
                        0.35 * rng.standard_normal(m2) * np.exp(-np.arange(m2) / (0.04 * FS))
                    )
        t0 += bar
        ci += 1
    out = bandlimit(y[:n])
    return scale_to_dbfs(out, level_dbfs)


def fade(x: np.ndarray, ms: float, out: bool = True) -> np.ndarray:
    m = min(x.size, int(ms * FS / 1000))
    y = x.copy()
    r = np.linspace(1.0, 0.0, m) if out else np.linspace(0.0, 1.0, m)
    if out:
        y[-m:] *= r
    else:
        y[:m] *= r
    return y


def click(level_dbfs: float = -12.0) -> np.ndarray:
    """A switching click: a 2 ms decaying impulse."""
    m = 16
    return 10 ** (level_dbfs / 20) * np.exp(-np.arange(m) / 4.0) * np.sign(np.arange(m) % 2 - 0.5)


def random_music(
    rng: np.random.Generator, r: random.Random, seconds: float, level: float
) -> tuple[np.ndarray, str]:
    style = r.choice(["pad", "piano", "arp"])
    tempo = r.uniform(60, 150)
    root = 130.8 * 2 ** (r.randrange(12) / 12)
    perc = r.random() < 0.4
    vib = r.random() < 0.4
    x = synth_music(rng, seconds, tempo, root, style, perc, vib, level, r.randrange(5))
    return (
        x,
        f"{style} {tempo:.0f}bpm root {root:.0f}Hz{' perc' if perc else ''}"
        f"{' vibrato' if vib else ''}",
    )


def prompt_len(last: np.ndarray, prompt: np.ndarray) -> int:
    """Samples from the prompt's start to the end of ``last`` (the block's final part)."""
    return prompt.size if last.size >= prompt.size else last.size


def prompt_block(
    rng: np.random.Generator, r: random.Random, prompt: np.ndarray, music_level: float, first: bool
) -> tuple[list[np.ndarray], str]:
    """Music then a prompt, joined the way hold playlists do it."""
    mus, md = random_music(rng, r, r.uniform(6, 12), music_level)
    way = r.choice(["duck", "fade", "cut"]) if first else r.choice(["duck", "fade", "cut", "pause"])
    if way == "duck":  # music continues 18-24 dB under the prompt
        bed, _ = random_music(rng, r, prompt.size / FS + 0.5, music_level - r.uniform(18, 24))
        bed = fade(fade(bed[: prompt.size], 200), 150, out=False)
        return [mus, prompt + bed], f"music({md}) ducked under prompt"
    if way == "fade":  # crossfade: the prompt starts during the last 100-300 ms of the fade
        mf = fade(mus, r.uniform(400, 1000))
        ov = int(r.uniform(100, 300) * FS / 1000)
        mixed = np.concatenate([mf[:-ov], mf[-ov:] + prompt[:ov], prompt[ov:]])
        return [mixed], f"music({md}) crossfaded into prompt"
    if way == "cut":
        return [mus, gc.sil(r.uniform(0, 100)), prompt], f"music({md}) cut into prompt"
    return [
        fade(mus, 800),
        gc.sil(r.uniform(400, 1000)),
        prompt,
    ], f"music({md}) pause then prompt (repeat)"


class HoldBuilder:
    def __init__(self, out: Path, seed: int) -> None:
        self.out = out
        self.rng = np.random.default_rng(seed)
        self.r = random.Random(seed)
        self.labels: dict[str, dict[str, Any]] = {}

    def finish(
        self,
        name: str,
        parts: list[np.ndarray],
        person_at: int | None,
        desc: str,
        prompts_at: list[int] | None = None,
    ) -> None:
        """Line noise, µ-law round trip, write; ``person_at`` is a sample index."""
        x = np.concatenate(parts)
        kind = self.r.choice(["white", "pink"])
        lv = self.r.uniform(-65, -45)
        x = x + gc.noise(x.size, kind, self.rng) * 10 ** ((lv - 3) / 20)
        x = gc.codec(x, "ulaw")
        fname = f"{name}.wav"
        gc.write_wav(self.out / fname, x)
        self.labels[fname] = {
            "person_ms": None if person_at is None else gc.ms_of(person_at),
            "duration_ms": gc.ms_of(x.size),
            "prompts_ms": [gc.ms_of(p) for p in prompts_at or []],
            "desc": f"{desc}; {kind} line noise {lv:.0f} dBFS; ulaw",
        }


def generate(out: Path, seed: int = DEFAULT_SEED) -> dict[str, dict[str, Any]]:
    """Generate the hold corpus into ``out``; returns the labels (also in labels.json)."""
    out.mkdir(parents=True, exist_ok=True)
    b = HoldBuilder(out, seed)
    r, rng = b.r, b.rng
    with tempfile.TemporaryDirectory() as td:
        sp = gc.Speech(Path(td))
        preqs = [(p, PROMPT_VOICES[i % len(PROMPT_VOICES)], 150, 50) for i, p in enumerate(PROMPTS)]
        hreqs = [
            (p, v, r.choice([150, 165, 180]), r.choice([35, 50, 65]))
            for p in PERSONS
            for v in PERSON_VOICES[:3]
        ]
        hreqs += [(PERSONS[i % len(PERSONS)], v, 170, 45) for i, v in enumerate(PERSON_VOICES[3:])]
        sp.render_many(preqs + hreqs)

        def person(i: int, level: float) -> tuple[np.ndarray, str]:
            req = hreqs[(i * 5) % len(hreqs)]
            s = scale_to_dbfs(sp.get(*req), level)
            if i % 3 == 1:  # the agent's own room/headset noise, 25-35 dB below the voice
                s = s + gc.noise(s.size, "pink", rng) * 10 ** ((level - r.uniform(25, 35)) / 20)
            return s, f"person '{req[0][:28]}…' voice={req[1]} level={level:.0f}"

        # --- person files ----------
        scenarios = [
            "stop_silence",
            "cut_mid",
            "prompt_then_person",
            "stop_click",
            "silent_hold",
            "ringback_hold",
            "prompt_loop_then_person",
            "beeps_hold",
        ]
        for i in range(18):
            sc = scenarios[i % len(scenarios)]
            mlv = r.uniform(-30, -14)
            plv = float(np.clip(mlv + r.uniform(-8, 8), -34, -10))
            parts: list[np.ndarray] = []
            descs: list[str] = []
            prompts: list[int] = []
            pr = scale_to_dbfs(sp.get(*preqs[i % len(preqs)]), mlv + r.uniform(-2, 2))
            if sc in ("prompt_then_person", "prompt_loop_then_person"):
                for k in range(1 if sc == "prompt_then_person" else 2):
                    p, d = prompt_block(rng, r, pr, mlv, first=k == 0)
                    parts += p
                    prompts.append(sum(q.size for q in parts) - prompt_len(p[-1], pr))
                    descs.append(d)
            if sc == "silent_hold":
                parts.append(gc.sil(r.uniform(8000, 15000)))
                descs.append("silent hold")
            elif sc == "ringback_hold":
                parts.append(
                    gc.cadence((440.0, 480.0), [2000, 4000], r.uniform(8000, 14000), mlv - 3)
                )
                parts.append(gc.sil(r.uniform(300, 900)))
                descs.append("ringback as hold")
            elif sc == "beeps_hold":
                for _ in range(3):
                    parts += [gc.sil(r.uniform(2500, 4000)), gc.tone((1000.0,), 300, mlv)]
                parts.append(gc.sil(r.uniform(600, 1500)))
                descs.append("periodic beeps")
            else:
                mus, md = random_music(rng, r, r.uniform(8, 18), mlv)
                if sc == "cut_mid":
                    parts += [mus, gc.sil(r.uniform(250, 600))]
                    descs.append(f"music({md}) cut mid-phrase")
                elif sc == "stop_click":
                    parts += [
                        mus,
                        gc.sil(r.uniform(100, 300)),
                        click(mlv + 6),
                        gc.sil(r.uniform(300, 1000)),
                    ]
                    descs.append(f"music({md}) stop, click")
                else:
                    parts += [
                        fade(mus, r.uniform(0, 1200)) if r.random() < 0.5 else mus,
                        gc.sil(r.uniform(300, 1500)),
                    ]
                    descs.append(f"music({md}) stop, silence")
            at = sum(p.size for p in parts)
            s, d = person(i, plv)
            parts += [s, gc.sil(2500)]
            descs.append(d)
            b.finish(f"person_{i:02d}_{sc}", parts, at, "; ".join(descs), prompts)

        # --- no-person files (40-60 s) ----------
        for i in range(10):
            mlv = r.uniform(-30, -14)
            total = r.uniform(40, 60) * FS
            parts = []
            descs = []
            prompts = []
            if i < 3:  # music only (loop restarts after a short gap sometimes)
                while sum(p.size for p in parts) < total:
                    mus, md = random_music(rng, r, r.uniform(15, 25), mlv)
                    parts += [mus, gc.sil(r.choice([0, 300, 800]))]
                    descs.append(md)
                desc = "music only: " + ", ".join(descs)
            elif i == 9:
                parts.append(gc.cadence((440.0, 480.0), [2000, 4000], total / 8, mlv))
                desc = "ringback for the whole hold"
            else:  # music + looping prompt
                pr = scale_to_dbfs(sp.get(*preqs[i % len(preqs)]), mlv + r.uniform(-2, 2))
                k = 0
                while sum(p.size for p in parts) < total and k < 4:
                    p, d = prompt_block(rng, r, pr, mlv, first=k == 0)
                    parts += p
                    prompts.append(sum(q.size for q in parts) - prompt_len(p[-1], pr))
                    descs.append(d)
                    k += 1
                mus, md = random_music(rng, r, r.uniform(5, 10), mlv)
                parts.append(mus)
                desc = f"looping prompt x{k}: " + "; ".join(descs)
            b.finish(f"noperson_{i:02d}", parts, None, desc, prompts)

    (out / "labels.json").write_text(json.dumps(b.labels, indent=1, sort_keys=True))
    return b.labels
