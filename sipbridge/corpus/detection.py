"""Generate sipbridge's own labelled detection corpus (8 kHz mono 16-bit WAV + labels.json).

Command line: ``sipbridge corpus detection OUT_DIR [--seed N]`` (or ``scripts/gen_corpus.py``).

Speech comes from espeak-ng (several voices and speeds); tones and cadences are synthesised
with numpy from the standards' frequencies and timings (with small frequency/duration jitter
inside the standards' tolerances). Files get level variations (-10..-35 dBFS), optional
white/pink noise at a given SNR, and G.711 µ-law / A-law round trips. Deterministic for a seed.

labels.json maps file name -> {
  "mode": "answer" | "early",       detector mode to analyse it with
  "answered_by": ...,               expected final label
  "sit_code", "progress",           expected SIT code / call-progress kind (or null)
  "ivr_hint": bool,                 expected for machine-without-beep
  "greeting_end_ms", "beep_ms",     ground truth (ms from file start) or null
  "sit_start_ms": ...,              ground truth SIT start or null
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

from sipbridge.corpus.synth import (
    FS,
    Speech,
    cadence,
    codec,
    ms_of,
    noise,
    sil,
    speech_end,
    tone,
    write_wav,
)
from sipbridge.media.frames import scale_to_dbfs

DEFAULT_SEED = 20240601

VOICES = ["en-us", "en-gb", "en+f3", "en+m7", "en-gb-scotland", "en+f2", "en-029", "en+m3"]

HUMAN_PHRASES = [
    "Hello?",
    "Hi, this is Sam.",
    "Yeah, hello?",
    "Hello, who's this?",
    "Hi, it's Maria.",
    "Hello.",
    "Yes?",
]
MACHINE_GREETINGS = [
    "Hi, you've reached Sam Carter. I can't come to the phone right now. "
    "Please leave a message after the tone.",
    "Hello. You have reached the voicemail of extension two four one. "
    "Please leave your name, number and a short message, and I will call you back.",
    "The person you are calling is not available. Please record your message after the tone. "
    "When you are finished, hang up.",
    "Thanks for calling Maria. I'm away from my desk at the moment, "
    "so leave a message and I'll get back to you as soon as I can.",
    "Hey, it's Jordan. Leave a message.",
    "You have reached the office of Doctor Patel. Our office hours are nine to five, "
    "Monday to Friday. Please leave a message with your name and number.",
]
IVR_PROMPTS = [
    [
        "Thank you for calling First Union Bank.",
        "For account balances, press one.",
        "For card services, press two.",
        "To speak to an agent, press zero.",
    ],
    [
        "Welcome to City Health appointments.",
        "To book a new appointment, press one.",
        "To change an existing appointment, press two.",
    ],
    [
        "Thanks for calling Acme support.",
        "If you are calling about an order, press one.",
        "For technical help, press two.",
        "For all other questions, please stay on the line.",
    ],
]
ANNOUNCEMENTS = [
    "We're sorry, the number you have dialed is not in service.",
    "All circuits are busy now. Please try your call again later.",
    "Your call cannot be completed as dialed.",
]

SIT_TABLE = {  # code -> (seg1 Hz, seg1 ms, seg2 Hz, seg2 ms), Telcordia GR-1162
    "IC": (913.8, 274, 1370.6, 274),
    "VC": (985.2, 380, 1370.6, 274),
    "RO": (913.8, 274, 1428.5, 380),
    "RO'": (985.2, 274, 1370.6, 380),
    "NC": (985.2, 380, 1428.5, 380),
    "NC'": (913.8, 380, 1370.6, 380),
    "IO": (985.2, 274, 1428.5, 274),
    "FU": (913.8, 380, 1428.5, 274),
}


class Builder:
    def __init__(self, out: Path, seed: int) -> None:
        self.out = out
        self.rng = np.random.default_rng(seed)
        self.r = random.Random(seed)
        self.labels: dict[str, dict[str, Any]] = {}
        self.count = 0

    def finish(
        self,
        name: str,
        x: np.ndarray,
        label: dict[str, Any],
        *,
        noise_kind: str | None = None,
        snr_db: float | None = None,
        ref_level: float | None = None,
        floor_dbfs: float = -70.0,
    ) -> None:
        """Add background noise (SNR vs ``ref_level``) and a floor, codec round trip, write."""
        self.count += 1
        n = x.size
        y = x.copy()
        if noise_kind and snr_db is not None and ref_level is not None:
            y += noise(n, noise_kind, self.rng) * 10 ** ((ref_level - snr_db - 3.0) / 20)
        elif floor_dbfs > -100:
            y += noise(n, "white", self.rng) * 10 ** ((floor_dbfs - 3.0) / 20)
        cod = ["ulaw", "alaw", None][self.count % 3]
        y = codec(y, cod)
        fname = f"{name}.wav"
        write_wav(self.out / fname, y)
        label = {
            "mode": "answer",
            "answered_by": None,
            "sit_code": None,
            "progress": None,
            "ivr_hint": False,
            "greeting_end_ms": None,
            "beep_ms": None,
            "sit_start_ms": None,
            **label,
        }
        label["desc"] = (
            label.get("desc", "")
            + f"; codec={cod or 'pcm'}"
            + (f"; {noise_kind} noise SNR {snr_db} dB" if noise_kind else "")
        )
        self.labels[fname] = label


def generate(out: Path, seed: int = DEFAULT_SEED) -> dict[str, dict[str, Any]]:
    """Generate the corpus into ``out``; returns the labels (also written to labels.json)."""
    out.mkdir(parents=True, exist_ok=True)
    b = Builder(out, seed)
    r = b.r
    with tempfile.TemporaryDirectory() as td:
        sp = Speech(Path(td))
        # --- plan speech requests ----------
        humans = []
        for i in range(14):
            phrase = HUMAN_PHRASES[i % len(HUMAN_PHRASES)]
            humans.append(
                (
                    phrase,
                    VOICES[i % len(VOICES)],
                    r.choice([140, 160, 175, 190]),
                    r.choice([35, 50, 65]),
                )
            )
        machines = []
        for i in range(16):
            g = MACHINE_GREETINGS[i % len(MACHINE_GREETINGS)]
            machines.append(
                (
                    g,
                    VOICES[(i * 3 + 1) % len(VOICES)],
                    r.choice([140, 160, 180]),
                    r.choice([40, 50, 60]),
                )
            )
        ivrs = []
        for i in range(4):
            v, speed = VOICES[(i * 5 + 2) % len(VOICES)], r.choice([150, 165])
            ivrs.append([(p, v, speed, 50) for p in IVR_PROMPTS[i % len(IVR_PROMPTS)]])
        anns = [(a, VOICES[i % len(VOICES)], 160, 50) for i, a in enumerate(ANNOUNCEMENTS)]
        sp.render_many(
            humans + machines + [q for p in ivrs for q in p] + anns + [("Hello?", "en-us", 160, 50)]
        )

        # --- human ----------
        for i, req in enumerate(humans):
            lvl = r.uniform(-35, -12)
            s = scale_to_dbfs(sp.get(*req), lvl)
            lead = r.uniform(150, 1200)
            parts = [sil(lead), s, sil(2400)]
            if i % 4 == 3:  # says hello again after waiting
                parts += [scale_to_dbfs(sp.get("Hello?", "en-us", 160), lvl), sil(1500)]
            else:
                parts.append(sil(1600))
            x = np.concatenate(parts)
            nk = ["white", "pink", None, None][i % 4]
            b.finish(
                f"human_{i:02d}",
                x,
                {
                    "answered_by": "human",
                    "greeting_end_ms": ms_of(int(lead * 8) + speech_end(s)),
                    "desc": f"human '{req[0]}' voice={req[1]} speed={req[2]} level={lvl:.0f} dBFS",
                },
                noise_kind=nk,
                snr_db=r.choice([20, 25, 30]) if nk else None,
                ref_level=lvl,
            )

        # --- machine (+ beep) ----------
        beep_freqs = [440, 600, 850, 1000, 1400, 1800, 1975, 700]
        for i, req in enumerate(machines):
            lvl = r.uniform(-33, -12)
            s = scale_to_dbfs(sp.get(*req), lvl)
            lead = r.uniform(200, 1000)
            seq = [sil(lead), s]
            gend = int(lead * 8) + speech_end(s)
            label: dict[str, Any] = {"answered_by": "machine", "greeting_end_ms": ms_of(gend)}
            if i < 14:
                gap = r.uniform(200, 1200)
                bf = beep_freqs[i % len(beep_freqs)] * r.uniform(0.99, 1.01)
                bl = r.choice([200, 300, 500, 1000])
                blvl = lvl + r.uniform(-8, 4)
                seq += [sil(gap), tone((bf,), bl, blvl), sil(1500)]
                label["beep_ms"] = ms_of(int(lead * 8) + s.size + int(gap * 8))
                desc = f"beep {bf:.0f} Hz {bl} ms at {blvl:.0f} dBFS"
            else:
                seq += [sil(7000)]  # longer than beep_timeout_ms: settled in the audio
                label["ivr_hint"] = True
                desc = "no beep"
            label["desc"] = (
                f"machine greeting {s.size / 8000:.1f}s voice={req[1]} "
                f"speed={req[2]} level={lvl:.0f}; {desc}"
            )
            nk = ["pink", None, "white", None, None][i % 5]
            b.finish(
                f"machine_{i:02d}",
                np.concatenate(seq),
                label,
                noise_kind=nk,
                snr_db=r.choice([20, 25]) if nk else None,
                ref_level=lvl,
            )

        # --- IVR ----------
        for i, prompts in enumerate(ivrs):
            lvl = r.uniform(-28, -14)
            seq = [sil(r.uniform(200, 800))]
            for p in prompts:
                seq += [scale_to_dbfs(sp.get(*p), lvl), sil(r.uniform(1350, 2000))]
            seq.append(sil(2000))
            b.finish(
                f"ivr_{i:02d}",
                np.concatenate(seq),
                {
                    "answered_by": "ivr",
                    "ivr_hint": True,
                    "desc": f"IVR menu of {len(prompts)} prompts voice={prompts[0][1]}",
                },
            )

        # --- fax ----------
        for i in range(3):
            lvl = r.uniform(-30, -12)
            lead = r.uniform(100, 1500)
            x = np.concatenate(
                [sil(lead), cadence((1100.0 * r.uniform(0.99, 1.01),), [500, 3000], 8000, lvl)]
            )
            b.finish(f"fax_cng_{i}", x, {"answered_by": "fax", "desc": f"CNG at {lvl:.0f} dBFS"})
        for i in range(3):
            lvl = r.uniform(-30, -12)
            lead = r.uniform(100, 1500)
            bits = b.rng.integers(0, 2, 300)
            fsk = np.concatenate(
                [tone((1650.0 if bit else 1850.0,), 1000 / 300, lvl, 0) for bit in bits]
            )
            x = np.concatenate(
                [sil(lead), tone((2100.0 + r.uniform(-8, 8),), 3000, lvl), sil(75), fsk, sil(500)]
            )
            b.finish(
                f"fax_ced_{i}", x, {"answered_by": "fax", "desc": f"CED + V.21 at {lvl:.0f} dBFS"}
            )

        # --- silence ----------
        # (longer than initial_silence_ms, 6.5 s)
        b.finish(
            "silence_digital",
            sil(8000),
            {"answered_by": "silence", "desc": "digital silence"},
            floor_dbfs=-120,
        )
        for i, (kind, lv) in enumerate(
            [("white", -65.0), ("pink", -50.0), ("white", -45.0), ("pink", -40.0)]
        ):
            x = noise(8 * FS, kind, b.rng) * 10 ** ((lv - 3) / 20)
            b.finish(
                f"silence_noise_{i}",
                x,
                {"answered_by": "silence", "desc": f"{kind} line noise {lv:.0f} dBFS"},
                floor_dbfs=-120,
            )

        # --- unknown (steady tones nobody classifies) ----------
        b.finish(
            "unknown_dialtone",
            tone((350.0, 440.0), 7000, -22),
            {"answered_by": "unknown", "desc": "continuous US dial tone after answer"},
        )
        b.finish(
            "unknown_hum",
            tone((600.0,), 7000, -25) + tone((1200.0,), 7000, -45),
            {"answered_by": "unknown", "desc": "continuous 600 Hz tone, no speech"},
        )

        # --- SIT ----------
        sit_jobs: list[tuple[str, str]] = [(c, "early") for c in SIT_TABLE] + [
            ("ITU", "early"),
            ("ITU", "early"),
            ("IC", "answer"),
            ("NC", "answer"),
            ("ITU", "answer"),
            ("RO", "early"),
            ("VC", "early"),
        ]
        for i, (code, mode) in enumerate(sit_jobs):
            lvl = r.uniform(-32, -12)
            lead_parts: list[np.ndarray] = [sil(r.uniform(100, 600))]
            if i % 3 == 1 and mode == "early":  # a ringback burst first
                lead_parts += [tone((440.0, 480.0), 2000, lvl - 3), sil(r.uniform(300, 1200))]
            lead_audio = np.concatenate(lead_parts)
            jit = r.uniform(-0.005, 0.005)
            if code == "ITU":
                f = [950 + r.uniform(-10, 10), 1400 + r.uniform(-10, 10), 1800 + r.uniform(-10, 10)]
                d = [330 * r.uniform(0.9, 1.1) for _ in range(3)]
                gaps = [r.uniform(0, 30), r.uniform(0, 30)]
                sit = np.concatenate(
                    [
                        tone((f[0],), d[0], lvl),
                        sil(gaps[0]),
                        tone((f[1],), d[1], lvl),
                        sil(gaps[1]),
                        tone((f[2],), d[2], lvl),
                    ]
                )
            else:
                f1, d1, f2, d2 = SIT_TABLE[code]
                sit = np.concatenate(
                    [
                        tone((f1 * (1 + jit),), d1 * r.uniform(0.97, 1.03), lvl, 2),
                        tone((f2 * (1 + jit),), d2 * r.uniform(0.97, 1.03), lvl, 2),
                        tone((1776.7 * (1 + jit),), 380, lvl, 2),
                    ]
                )
            ann = scale_to_dbfs(sp.get(*anns[i % len(anns)]), lvl + 2)
            x = np.concatenate([lead_audio, sit, sil(r.uniform(50, 300)), ann, sil(500)])
            nk = ["white", None, None, "pink"][i % 4]
            b.finish(
                f"sit_{mode}_{i:02d}_{code.replace(chr(39), 'x')}",
                x,
                {
                    "mode": mode,
                    "answered_by": "sit",
                    "sit_code": code,
                    "sit_start_ms": ms_of(lead_audio.size),
                    "desc": f"SIT {code} at {lvl:.0f} dBFS jitter {jit * 100:.2f}%",
                },
                noise_kind=nk,
                snr_db=25 if nk else None,
                ref_level=lvl,
            )

        # --- call progress (early media) ----------
        cp: list[tuple[str, tuple[float, ...], list[float], str, str]] = [
            ("us_ringback", (440.0, 480.0), [2000, 4000], "ringback", "us"),
            ("us_busy", (480.0, 620.0), [500, 500], "busy", "us"),
            ("us_reorder", (480.0, 620.0), [250, 250], "reorder", "us"),
            ("us_reorder_3020", (480.0, 620.0), [300, 200], "reorder", "us"),
            ("uk_ringback", (400.0, 450.0), [400, 200, 400, 2000], "ringback", "uk"),
            ("uk_busy", (400.0,), [375, 375], "busy", "uk"),
            ("uk_congestion", (400.0,), [400, 350, 225, 525], "reorder", "uk"),
            ("eu425_ringback", (425.0,), [1000, 4000], "ringback", "425"),
            ("eu425_busy", (425.0,), [500, 500], "busy", "425"),
            ("de425_busy", (425.0,), [480, 480], "busy", "425"),
            ("eu425_congestion", (425.0,), [250, 250], "reorder", "425"),
            ("fr440_ringback", (440.0,), [1500, 3500], "ringback", "440"),
        ]
        for i, (name, freqs, pat, kind, region) in enumerate(cp):
            lvl = r.uniform(-30, -14)
            lead = r.uniform(50, 700)
            x = np.concatenate([sil(lead), cadence(freqs, pat, 6000, lvl)])
            nk = [None, "white", None, "pink"][i % 4]
            b.finish(
                f"cp_{name}",
                x,
                {
                    "mode": "early",
                    "answered_by": "unknown",
                    "progress": kind,
                    "progress_region": region,
                    "desc": f"{name} at {lvl:.0f} dBFS/component",
                },
                noise_kind=nk,
                snr_db=25 if nk else None,
                ref_level=lvl,
            )

    (out / "labels.json").write_text(json.dumps(b.labels, indent=1, sort_keys=True))
    return b.labels
