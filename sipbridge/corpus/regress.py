"""Regression corpus for the classes real recordings exposed (issue #12), generated.

Command line: ``sipbridge corpus regress OUT_DIR [--seed N]``. Same ``labels.json`` format as
:mod:`sipbridge.corpus.detection`, plus ``"hint"`` (``operator`` / ``screening`` / null).

What makes a voice *live* or *recorded* here is modelled on the physics the detector relies
on (:mod:`sipbridge.media.liveness`), not on the voices (all are espeak-ng):

* a **live** person speaks in a room: its noise (pink, -58..-46 dBFS) is on the line from the
  answer on, under and between the words;
* a **recorded** greeting (voicemail, recorded on a phone) brings its own room bed, which starts
  100–400 ms before its first word and stops 100–500 ms after its last, on a line that is
  otherwise at comfort-noise level (-75..-70 dBFS) or digitally silent;
* **synthetic** prompts (IVR, carrier announcements, screening assistants) are clean (digital
  silence between words) on a line that carries comfort noise.

Classes: late greetings (2–6 s of silence or comfort noise first), beeps 2–5 s after the
greeting, ringback before a greeting, fax after ringback, 10 dB SNR lines, short recorded or
synthetic prompts (0.5–2 s) then silence against short live answers (also on the lines of
:mod:`sipbridge.corpus.short`), continuous talkers,
operators, screening assistants, SIT and busy/reorder with 100–300 ms dropouts.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from sipbridge.corpus import short
from sipbridge.corpus.detection import SIT_TABLE, VOICES, Builder
from sipbridge.corpus.synth import (
    FS,
    Speech,
    cadence,
    dropout,
    ms_of,
    noise,
    sil,
    speech_end,
    tone,
)
from sipbridge.media.frames import scale_to_dbfs

DEFAULT_SEED = 20261201

GREETINGS = [
    "Hi, you've reached Dana. I can't take your call right now. Leave a message after the beep.",
    "Hello, this is the voicemail of Chris Miller. Please leave your name and number.",
    "You have reached extension four one two. Please leave a message after the tone.",
    "Hey, it's Alex. Leave me a message and I'll call you back.",
]
HELLOS = ["Hello?", "Yeah?", "Hi, who is this?", "Hello, Sam speaking."]
SHORT_PROMPTS = [
    "Please hold.",
    "All circuits are busy now.",
    "Welcome.",
    "Please leave a message.",
    "Goodbye.",
]
CONTINUOUS = [
    "Hello yes this is Sam I was just about to call you back about the order actually",
    "Hi there I'm driving right now so keep it short what is it you need from me today",
]
OPERATORS = [
    "Thank you for calling Harbor Dental, my name is Jenny, how can I help you?",
    "Good afternoon, Acme Plumbing, this is Mike speaking, how may I help you?",
    "Thanks for calling City Motors service department, Laura speaking, what can I do for you?",
]
SCREENING = [
    "Hi, the person you're calling is using a screening service and will get a copy of this "
    "conversation. Go ahead and say your name and why you're calling?",
    "Hello, this call is being screened. Please say your name and the reason for your call?",
]


def _line(n: int, rng: np.random.Generator, cn_dbfs: float | None) -> np.ndarray:
    """The line's own floor: comfort noise at ``cn_dbfs`` or digital silence (None)."""
    if cn_dbfs is None:
        return np.zeros(n)
    return noise(n, "white", rng) * 10 ** ((cn_dbfs - 3.0) / 20)


def _room(n: int, rng: np.random.Generator, level: float) -> np.ndarray:
    return noise(n, "pink", rng) * 10 ** ((level - 3.0) / 20)


class _Gen:
    def __init__(self, out: Path, seed: int, sp: Speech) -> None:
        self.b = Builder(out, seed)
        self.rng = self.b.rng
        self.r = self.b.r
        self.sp = sp

    def say(self, text: str, voice: str, speed: int, level: float, pitch: int = 50) -> np.ndarray:
        return scale_to_dbfs(self.sp.get(text, voice, speed, pitch), level)

    def recorded(self, speech: np.ndarray) -> tuple[np.ndarray, int, int]:
        """A greeting with its own recording bed; returns (audio, speech offset, speech end)."""
        lead = round(self.r.uniform(100, 400) * FS / 1000)
        tail = round(self.r.uniform(100, 500) * FS / 1000)
        bed = _room(lead + speech.size + tail, self.rng, self.r.uniform(-60, -46))
        x = bed.copy()
        x[lead : lead + speech.size] += speech
        return x, lead, lead + speech_end(speech)

    def write(
        self,
        name: str,
        x: np.ndarray,
        label: dict[str, Any],
        cn: float | None = -72.0,
        room: float | None = None,
    ) -> None:
        """Add the line floor (and a live room), write through the corpus builder."""
        y = x + _line(x.size, self.rng, cn)
        if room is not None:
            y += _room(x.size, self.rng, room)
        label = {"hint": None, **label}
        self.b.finish(name, y, label, floor_dbfs=-120)


def generate(out: Path, seed: int = DEFAULT_SEED) -> dict[str, dict[str, Any]]:
    """Generate the regression corpus into ``out``; returns the labels (also labels.json)."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as td:
        sp = Speech(Path(td))
        reqs: list[tuple[str, str, int, int]] = []
        for i, text in enumerate(GREETINGS):
            reqs.append((text, VOICES[i % len(VOICES)], 160, 50))
        for i, h in enumerate(HELLOS):
            reqs.append((h, VOICES[(i + 3) % len(VOICES)], 165, 50))
        for i, t in enumerate(SHORT_PROMPTS):
            reqs.append((t, VOICES[(i + 1) % len(VOICES)], 150, 50))
        for i, t in enumerate(CONTINUOUS):
            reqs.append((t, VOICES[(i + 5) % len(VOICES)], 190, 50))
        for i, t in enumerate(OPERATORS):
            reqs.append((t, VOICES[(i + 2) % len(VOICES)], 175, 50))
        for i, t in enumerate(SCREENING):
            reqs.append((t, VOICES[(i + 4) % len(VOICES)], 165, 50))
        sp.render_many(reqs + short.speech_requests())
        g = _Gen(out, seed, sp)
        _machines(g, reqs)
        _humans(g, reqs)
        _tones(g)
        # short answers and short prompts on the lines that tell them apart (the conditions
        # that do not are measured by bench/dsp.py and listed in the README's limits)
        for cond in ("live_room", "live_cn", "live_dtx", "rec_silent", "clean_silent", "clean_dtx"):
            for k in range(3):
                c = short.one(sp, cond, k, seed)
                g.b.finish(f"short_line_{cond}_{k}", c.audio, dict(c.label), floor_dbfs=-120)
    labels = g.b.labels
    (out / "labels.json").write_text(json.dumps(labels, indent=1, sort_keys=True))
    return labels


def _greeting(g: _Gen, i: int, level: float) -> np.ndarray:
    return g.say(
        GREETINGS[i % len(GREETINGS)], VOICES[i % len(GREETINGS) % len(VOICES)], 160, level
    )


def _machines(g: _Gen, reqs: list[tuple[str, str, int, int]]) -> None:
    r = g.r
    beep_hz = [1000.0, 850.0, 1400.0, 440.0, 1850.0, 600.0]
    for i in range(8):  # late greetings: 2–6 s of digital silence or comfort noise first
        lead = 2000 + 4000 * i / 7
        cn = None if i % 2 else -68.0
        s, _, send = g.recorded(_greeting(g, i, r.uniform(-28, -16)))
        has_beep = i % 4 != 3
        parts = [sil(lead), s, sil(r.uniform(300, 900))]
        gend = round(lead * FS / 1000) + send
        beep_at = sum(p.size for p in parts)
        if has_beep:
            parts += [tone((beep_hz[i % len(beep_hz)],), 400, -18), sil(2000)]
        else:
            parts.append(sil(7000))
        g.write(
            f"late_greeting_{i}",
            np.concatenate(parts),
            {
                "answered_by": "machine",
                "greeting_end_ms": ms_of(gend),
                "beep_ms": ms_of(beep_at) if has_beep else None,
                "ivr_hint": not has_beep,
                "desc": f"greeting after {lead:.0f} ms of {'comfort noise' if cn else 'silence'}",
            },
            cn=cn,
        )
    for i in range(6):  # beeps after 2–5 s of silence
        gap = 2000 + 3000 * i / 5
        s, _, send = g.recorded(_greeting(g, i + 1, r.uniform(-26, -16)))
        parts = [sil(r.uniform(300, 900)), s, sil(gap)]
        beep_at = sum(p.size for p in parts)
        parts += [
            tone((beep_hz[(i + 2) % len(beep_hz)],), r.choice([250, 500, 800]), -20),
            sil(1500),
        ]
        g.write(
            f"beep_late_{i}",
            np.concatenate(parts),
            {
                "answered_by": "machine",
                "greeting_end_ms": ms_of(parts[0].size + send),
                "beep_ms": ms_of(beep_at),
                "desc": f"beep {gap:.0f} ms after the greeting",
            },
        )
    rings: list[tuple[tuple[float, ...], list[float], float]] = [
        ((440.0, 480.0), [2000, 4000], 6000),
        ((400.0, 450.0), [400, 200, 400, 2000], 3000),
        ((425.0,), [1000, 4000], 5000),
        ((440.0,), [1500, 3500], 5000),
    ]
    for i, (f, pat, ms) in enumerate(rings):  # ringback, then the greeting
        ring = cadence(f, pat, ms, -22)
        s, _, send = g.recorded(_greeting(g, i + 2, -20))
        parts = [ring, sil(r.uniform(200, 800)), s, sil(600)]
        beep_at = sum(p.size for p in parts)
        parts += [tone((1000.0,), 400, -18), sil(1500)]
        g.write(
            f"ringback_greeting_{i}",
            np.concatenate(parts),
            {
                "answered_by": "machine",
                "greeting_end_ms": ms_of(parts[0].size + parts[1].size + send),
                "beep_ms": ms_of(beep_at),
                "desc": f"ringback {f} then greeting and beep",
            },
        )
    for i in range(4):  # 10 dB SNR line, recorded greeting and beep
        lvl = r.uniform(-30, -20)
        s, _, send = g.recorded(_greeting(g, i, lvl))
        pre = sil(r.uniform(300, 900))
        parts = [pre, s, sil(700)]
        beep_at = sum(p.size for p in parts)
        parts += [tone((1000.0,), 500, lvl + 2), sil(1500)]
        x = np.concatenate(parts)
        x += noise(x.size, ["white", "pink"][i % 2], g.rng) * 10 ** ((lvl - 10 - 3) / 20)
        g.write(
            f"snr10_machine_{i}",
            x,
            {
                "answered_by": "machine",
                "greeting_end_ms": ms_of(pre.size + send),
                "beep_ms": ms_of(beep_at),
                "desc": f"greeting at {lvl:.0f} dBFS, 10 dB SNR",
            },
        )
    for i, text in enumerate(SHORT_PROMPTS):  # short prompts then silence (no beep)
        speech = g.say(text, VOICES[(i + 1) % len(VOICES)], 150, r.uniform(-24, -16))
        recorded = i % 2 == 0
        if recorded:
            s, _, send = g.recorded(speech)
        else:  # synthetic, on a comfort-noise line
            s, send = speech, speech_end(speech)
        pre = sil(r.uniform(300, 1200))
        g.write(
            f"short_prompt_{i}",
            np.concatenate([pre, s, sil(7000)]),
            {
                "answered_by": "machine",
                "ivr_hint": True,
                "greeting_end_ms": ms_of(pre.size + send),
                "desc": f"{'recorded' if recorded else 'synthetic'} prompt "
                f"{speech.size / FS:.1f} s then silence",
            },
            cn=-72.0,
        )
    for i, text in enumerate(SCREENING):  # screening assistant: synthetic, question, silence
        speech = g.say(text, VOICES[(i + 4) % len(VOICES)], 165, -18)
        pre = sil(r.uniform(400, 1200))
        g.write(
            f"screening_{i}",
            np.concatenate([pre, speech, sil(8000)]),
            {
                "answered_by": "human",
                "hint": "screening",
                "greeting_end_ms": ms_of(pre.size + speech_end(speech)),
                "desc": "screening assistant greeting ending in a question",
            },
            cn=-74.0,
        )


def _humans(g: _Gen, reqs: list[tuple[str, str, int, int]]) -> None:
    r = g.r

    def live(
        name: str,
        text: str,
        voice: str,
        speed: int,
        label: dict[str, Any],
        snr_db: float | None = None,
    ) -> None:
        lvl = r.uniform(-28, -14)
        speech = g.say(text, voice, speed, lvl)
        lead = sil(r.uniform(200, 1000))
        room = lvl - snr_db if snr_db is not None else r.uniform(-58, -46)
        x = np.concatenate([lead, speech, sil(4000)])
        g.write(
            name,
            x,
            {
                "answered_by": "human",
                "greeting_end_ms": ms_of(lead.size + speech_end(speech)),
                **label,
            },
            room=room,
        )

    for i, h in enumerate(HELLOS):
        live(
            f"live_hello_{i}",
            h,
            VOICES[(i + 3) % len(VOICES)],
            165,
            {"desc": f"live '{h}' in a room"},
        )
        live(
            f"snr10_human_{i}",
            h,
            VOICES[(i + 3) % len(VOICES)],
            165,
            {"desc": f"live '{h}', 10 dB SNR"},
            snr_db=10.0,
        )
    for i, t in enumerate(CONTINUOUS):
        live(
            f"continuous_{i}",
            t,
            VOICES[(i + 5) % len(VOICES)],
            190,
            {"hint": "operator", "desc": "live talker, 3+ s without a pause"},
        )
    for i, t in enumerate(OPERATORS):
        live(
            f"operator_{i}",
            t,
            VOICES[(i + 2) % len(VOICES)],
            175,
            {"hint": "operator", "desc": "live receptionist, scripted greeting"},
        )


def _tones(g: _Gen) -> None:
    r = g.r
    for i in range(3):  # fax after ringback: CNG bursts, then CED
        ring = cadence((440.0, 480.0), [2000, 4000], r.choice([2500, 6000]), -22)
        cng = cadence((1100.0,), [500, 3000], 7000, -20)
        x = np.concatenate([ring, sil(300), cng, tone((2100.0,), 3000, -20), sil(500)])
        g.write(f"fax_ringback_{i}", x, {"answered_by": "fax", "desc": "ringback, CNG, CED"})
    for i, code in enumerate(SIT_TABLE):  # SIT with a dropout inside a segment
        f1, d1, f2, d2 = SIT_TABLE[code]
        drop = [100, 200, 300][i % 3]
        lead = r.uniform(200, 600)
        sit = np.concatenate(
            [tone((f1,), d1, -20, 2), tone((f2,), d2, -20, 2), tone((1776.7,), 380, -20, 2)]
        )
        seg_start, seg_ms = [(0, d1), (d1 + d2, 380)][i % 2]
        at = seg_start + max(20.0, (seg_ms - drop) / 2)
        x = np.concatenate([sil(lead), dropout(sit, at, min(drop, seg_ms - 40)), sil(1500)])
        g.write(
            f"sit_dropout_{i}_{code.replace(chr(39), 'x')}",
            x,
            {
                "mode": ["early", "answer"][i % 2],
                "answered_by": "sit",
                "sit_code": code,
                "sit_start_ms": ms_of(round(lead * FS / 1000)),
                "desc": f"SIT {code}, {drop} ms dropout",
            },
        )
    cps: list[tuple[str, tuple[float, ...], list[float], str]] = [
        ("busy", (480.0, 620.0), [500, 500], "us"),
        ("reorder", (480.0, 620.0), [250, 250], "us"),
        ("busy", (425.0,), [500, 500], "425"),
        ("busy", (400.0,), [375, 375], "uk"),
    ]
    for i, (kind, f, pat, region) in enumerate(cps):
        drop = [100, 200, 300, 250][i]
        x = np.concatenate([sil(300), cadence(f, pat, 7000, -20)])
        x = dropout(x, 300 + pat[0] * 0.3, min(drop, pat[0] - 60))
        g.write(
            f"cp_dropout_{kind}_{region}_{i}",
            x,
            {
                "mode": ["early", "answer"][i % 2],
                "answered_by": "unknown",
                "progress": kind,
                "progress_region": region,
                "desc": f"{kind} with a {drop} ms dropout",
            },
        )
