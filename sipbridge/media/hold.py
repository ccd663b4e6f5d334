"""IVR hold step: stay silent on hold until a *live person* speaks (pure DSP, no pjsua2/asyncio).

After the IVR menu, the carrier leg plays hold music, silence, looping recorded prompts
("Your call is important to us…"), ringback or beeps. :class:`HoldListener` decides, from audio
alone, when a live person starts talking, so the worker can bridge the AI agent.

Per 20 ms frame (8 kHz) it computes, from one 40 ms Hann spectrum (25 Hz bins):

* **level** (dBFS) and the **speech gate** of :class:`~sipbridge.media.vad.SpeechTracker`
  (webrtcvad + noise floor + hysteresis) — which, like every VAD, also fires on music;
* **steady tones**: single-tone purity (beeps) and call-progress pairs (Goertzel bank, as in
  :mod:`~sipbridge.media.tones`): ringback/beeps are never speech;
* **stable spectral peaks** (the music detector): a bin in 300–3400 Hz is a *peak* when it is a
  local maximum well above the frame's mean log power; each bin keeps a persistence counter.
  Notes hold their partials at a fixed frequency for hundreds of ms (chords for whole bars),
  so several peaks persist ≥ 200 ms. Speech pitch glides continuously (intonation, jitter)
  and formants move every syllable, so a harmonic stays in one 25 Hz bin only briefly, and
  rarely two at once. A frame with ``min_stable_peaks`` such peaks is *tonal* (music);
* **music context**: from a tonal frame on, sound counts as "music" until a *quiet* gap
  (``quiet_gap_ms`` at ``quiet_drop_db`` below the music): a prompt that runs on from the
  music without a pause is attached to it; a person speaks after the stream stopped;
* **fingerprint**: 12 log band energies (300–3400 Hz), kept for the last ``history_ms``.

Speech *segments* are runs of VAD words separated by less than ``segment_gap_ms`` (a short
first word such as "Hi," is merged with what follows). A segment is judged after
``decide_after_ms`` (or when it ends):

* **music** — a large share of its frames are tonal (notes under/inside the segment);
* **recorded prompt (follows music)** — it began less than ``pre_gap_ms`` after the music
  context. Playlists join music and prompts without a pause (crossfade, cut, or music ducked
  under the prompt); when an agent picks up, the ACD switches the stream, the music stops, and
  the agent, who first hears a connect tone, speaks a few hundred ms later;
* **recorded prompt (repeat)** — its first 0.4–0.8 s match audio heard at least
  ``min_repeat_ms`` earlier (:func:`best_match`: envelope and spectral-shape correlation at
  the best time shift, level-invariant): the same recording played again;
* **recorded prompt (continues)** — it starts within ``prompt_continue_ms`` of a segment
  judged to be a (speech) prompt: a sentence pause inside a recording;
* otherwise, with ``min_speech_ms`` of VAD speech, syllabic modulation (frame levels spanning
  ``min_depth_db``), ``min_snr_db`` above the noise floor, no tones: a **live person** →
  ``human`` decision, typically 0.7–0.9 s after the person's first word.

Intermediate ``update`` events (``answered_by="unknown"``) report what is heard: ``music``,
``recorded prompt (...)``, ``call-progress tone (...)``, ``beep/tone``, ``silence`` — one per
change.

Known weaknesses (audio alone cannot settle them):

* before any music, speech within ``first_prompt_window_ms`` of the hold step's start is
  judged by what follows it: music or a tone → the IVR's one-off "please hold while we connect
  your call"; ``first_prompt_wait_ms`` of silence → a person (who waits for an answer). A
  person who speaks first is decided ~0.9 s after their words end instead of ~0.8 s after they
  start;
* the *first* play of a recorded prompt that starts after a real pause *later* on hold (music
  fades to silence, then the prompt) looks like a person: nothing has repeated yet and
  nothing joins it to the music. Its repeats are recognised;
* a person who starts talking less than ``pre_gap_ms`` after the music stops, or over the
  music, is taken for a prompt for that utterance; they are decided at their next utterance
  after a pause of ``prompt_continue_ms`` or more;
* music without stable partials (pure percussion, heavy vibrato/chorus, noise-like pads) is
  not seen as music; if VAD takes it for speech after a pause it could read as a person;
* a person on a line with music-like background (radio) may be judged "music".

Usage::

    hl = HoldListener({"decide_after_ms": 900})
    for frame in frames:                      # 20 ms, 8 kHz, 16-bit
        for ev in hl.feed(frame):
            ...                               # ev.kind: "update" | "decision"
        if hl.done:
            break
    hl.result()                               # Detection(answered_by="human", ...)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sipbridge.media.cadence import best_cp_signature
from sipbridge.media.detect import AnsweredBy, Detection, DetectionEvent
from sipbridge.media.feeder import FrameFeeder
from sipbridge.media.frames import (
    FRAME_MS,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    FloatArray,
    dbfs,
)
from sipbridge.media.hold_config import HoldConfig, config_from_overrides
from sipbridge.media.match import HI_BIN, LO_BIN, N_BANDS, band_matrix, best_match, clamp_bands
from sipbridge.media.tones import CP_BLOCK, CP_FREQS, GoertzelBank
from sipbridge.media.vad import SpeechTracker, VadConfig

_BLOCK = 2 * FRAME_SAMPLES  # 40 ms analysis block, 25 Hz bins
_TONEHI_BIN = math.floor(2200 * _BLOCK / SAMPLE_RATE)  # single tones (beeps): 300–2200 Hz
_RING_NAMES = {"us_ring": "ringback", "uk_ring": "ringback"}


@dataclass(slots=True)
class _Segment:
    start_ms: int
    last_speech_ms: int
    attached: bool  # began within pre_gap_ms of music
    music_gap_ms: int  # from the end of the last music frame to the start
    floor_dbfs: float  # speech-gate noise floor at the start
    continues: bool  # began within prompt_continue_ms of a prompt
    fp_start: int  # index of its first frame in the fingerprint history
    levels: list[float]
    tonal: int = 0
    tone: int = 0
    speech: int = 0
    next_k: int = 0  # template length (frames) of the next fingerprint check
    verdict: str | None = None  # None while undecided; "person", "music", "prompt", ...
    best_corr: float = -1.0


class HoldListener(FrameFeeder):
    """Streaming hold-step listener; feed 20 ms frames of 8 kHz 16-bit audio.

    ``config`` overrides :class:`HoldConfig` fields by name (unknown names → ``ValueError``).
    ``feed`` accepts PCM16 bytes or an int16/float array of any length (buffered into 20 ms
    frames); ``t_ms`` is the time of the chunk's first sample from the start of the hold step
    (a forward gap is filled with silence). Returns the events produced by the chunk.
    """

    def __init__(
        self, config: dict[str, Any] | None = None, *, keep_timeline: bool = False
    ) -> None:
        self.cfg = config_from_overrides(config)
        self.keep_timeline = keep_timeline
        self.timeline: list[tuple[int, str, dict[str, Any]]] = []
        self._cp_win = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(CP_BLOCK) / CP_BLOCK)
        self._cp_block = np.zeros(CP_BLOCK)
        self._bank = GoertzelBank(CP_FREQS, CP_BLOCK, self._cp_win)
        self._cp_norm = (
            2.0 * float(np.dot(self._cp_win, self._cp_win)) / float(self._cp_win.sum()) ** 2
        )
        self._speech = SpeechTracker(VadConfig())
        self._win = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(_BLOCK) / _BLOCK)
        self._block = np.zeros(_BLOCK)
        self._bands = band_matrix()
        self._pers = np.zeros(HI_BIN - LO_BIN + 1, dtype=np.int32)
        # capped so a note that ends stops counting as stable within 2 frames
        self._pers_cap = self.cfg.stable_frames + 4
        super().__init__()
        self._reported = ""
        # recent history (for back-filling a segment's first frames): ring of 16 frames
        self._hist: list[tuple[FloatArray, float, bool, bool, bool, int, bool]] = []
        self._tonal_ring = np.zeros(50, dtype=bool)  # last second
        self._ring_i = 0
        self._tonal_count = 0
        self._last_music_ms = -(10**9)
        self._last_sound_ms = 0
        self._tone_run = 0
        self._tone_sig: str | None = None
        self._seg: _Segment | None = None
        self._prompt_end_ms = -(10**9)
        self._prefix: _Segment | None = None
        self._last_tonal_ms = -(10**9)
        self._music_ctx = False
        self._quiet_run = 0
        self._music_ref = -100.0  # level of tonal (music) frames, dBFS
        self._run_start = 0
        self._run_gap = 99
        self._restart = False
        self._music_heard = False  # any music (tonal frames) or call-progress tone yet
        self._first_seg: _Segment | None = None  # a would-be person heard before any music
        self._first_last_ms = 0  # the last speech of it (and of what followed it)
        # fingerprint history: every frame's clamped band levels, written twice so the last
        # ``history_ms`` are always one contiguous slice
        self._fp_n = max(1, self.cfg.history_ms // FRAME_MS)
        self._fp = np.zeros((2 * self._fp_n, N_BANDS))
        self._fp_count = 0

    # -- public API ---------------------------------------------------------------------------

    # -- internals ----------------------------------------------------------------------------

    def _note(self, t_ms: int, kind: str, **detail: Any) -> None:
        if self.keep_timeline:
            self.timeline.append((t_ms, kind, detail))

    def _emit(
        self,
        t_end: int,
        events: list[DetectionEvent],
        answered_by: AnsweredBy,
        reason: str,
        final: bool,
    ) -> None:
        det = Detection(answered_by=answered_by, decided_at_ms=t_end, final=final, reason=reason)
        self._result = det
        if final:
            self._done = True
        events.append(DetectionEvent("decision" if final else "update", t_end, det))
        self._note(t_end, "decision" if final else "update", reason=reason)

    def _report(self, what: str, t_end: int, events: list[DetectionEvent]) -> None:
        if what != self._reported:
            self._reported = what
            self._emit(t_end, events, "unknown", what, final=False)

    def _process(self, pcm: bytes, x: FloatArray | None, events: list[DetectionEvent]) -> None:
        if x is None:
            x = np.frombuffer(pcm, dtype="<i2") * (1.0 / 32768.0)
        cfg = self.cfg
        t = self._t
        t_end = t + FRAME_MS
        self._t = t_end
        level = dbfs(x)
        # --- tones (call progress, beeps) ----------
        # 40 ms Hann spectrum (25 Hz bins), as ToneAnalyzer's, computed once for everything
        blk = self._block
        blk[:FRAME_SAMPLES] = blk[FRAME_SAMPLES:]
        blk[FRAME_SAMPLES:] = x
        cb = self._cp_block
        cb[:-FRAME_SAMPLES] = cb[FRAME_SAMPLES:]
        cb[-FRAME_SAMPLES:] = x
        spec = np.fft.rfft(blk * self._win)
        pf = spec.real * spec.real + spec.imag * spec.imag
        sig = None
        is_tone = False
        if level >= cfg.tone_min_dbfs:
            # single steady tone: purity of the strongest 300–2200 Hz bin and its neighbours
            # (see tones.ToneAnalyzer); call-progress pairs from the Goertzel bank (80 ms)
            total = float(pf[1:-1].sum()) + 1e-20
            k = int(pf[LO_BIN : _TONEHI_BIN + 1].argmax()) + LO_BIN
            purity = float(pf[k - 1] + pf[k] + pf[k + 1]) / total
            cw = cb * self._cp_win
            e = float(np.dot(cw, cw)) + 1e-20
            sig = best_cp_signature(self._bank.power(cb) * (self._cp_norm / e), 0.7, 6.0)
            is_tone = sig is not None or purity >= cfg.tone_purity
        # --- stable peaks and bands ----------
        p = pf[LO_BIN : HI_BIN + 1] + 1e-12
        lp = np.log10(p)  # bels; thresholds below converted from dB
        pers = self._pers
        if level >= cfg.tone_min_dbfs:
            thr = max(
                float(lp.mean()) + cfg.peak_db / 10.0, float(lp.max()) - cfg.peak_range_db / 10.0
            )
            mid = lp[1:-1]
            pk = (mid > lp[:-2]) & (mid >= lp[2:]) & (mid > thr)
            # a peak extends its run; a miss costs 3 frames (a drum hit or a codec glitch
            # does not reset a sustained note, a glide away from the bin soon does); the run
            # is capped at stable_frames + 4 so a note that stops stops counting in 2 frames
            inner = pers[1:-1]
            inner[:] = np.where(pk, np.minimum(inner + 1, self._pers_cap), np.maximum(inner - 3, 0))
            n_stable = int(np.count_nonzero(inner >= cfg.stable_frames))
        else:
            pers[:] = 0
            n_stable = 0
        tonal = n_stable >= cfg.min_stable_peaks and not is_tone
        bands = 10.0 * np.log10(p @ self._bands)
        # --- speech gate ----------
        sp = self._speech
        ev = sp.update(pcm, level, is_tone, t)
        speech = sp.last_speech
        fpb = clamp_bands(bands, cfg.fp_floor_db)
        k = self._fp_count % self._fp_n
        self._fp[k] = fpb
        self._fp[k + self._fp_n] = fpb
        self._fp_count += 1
        # music *context*: from a tonal frame on, sound counts as music until a quiet gap —
        # playlists run music into prompts without one, a person speaks after one
        # quiet = well below the music that was playing (or digital/near silence): the
        # line's noise after the hold stream stops, not a ducked music bed under a prompt
        # (music level: peak hold of tonal frames, decaying 1 dB/s, so a fade-out does not
        # drag the reference down to the line noise)
        self._music_ref = (
            level if tonal and level > self._music_ref - 0.02 else (self._music_ref - 0.02)
        )
        quiet = level < max(self._music_ref - cfg.quiet_drop_db, cfg.quiet_dbfs)
        if tonal:
            self._music_ctx = True
            self._last_tonal_ms = t_end
        if quiet:
            self._quiet_run += 1
            if self._quiet_run * FRAME_MS >= cfg.quiet_gap_ms:
                self._music_ctx = False
        else:
            self._quiet_run = 0
        music_sound = tonal or (self._music_ctx and not quiet)
        if music_sound:
            self._last_music_ms = t_end
        if not quiet or speech or tonal or is_tone:
            self._last_sound_ms = t_end
        if speech:
            if self._run_gap > 2:
                self._run_start = t
            self._run_gap = 0
        else:
            self._run_gap += 1
        ring = self._tonal_ring
        self._tonal_count += int(tonal) - int(ring[self._ring_i])
        ring[self._ring_i] = tonal
        self._ring_i = (self._ring_i + 1) % ring.size
        self._hist.append((fpb, level, tonal, is_tone, speech, t_end, music_sound))
        if len(self._hist) > 16:
            self._hist.pop(0)
        # --- tones report ----------
        if is_tone:
            self._tone_run += 1
            if sig is not None:
                self._tone_sig = sig
        else:
            self._tone_run = 0
        # --- segments ----------
        seg = self._seg
        if seg is None:
            if ev == SpeechTracker.WORD_START:
                seg = self._start_segment(sp.word_start_ms, t_end)
            elif self._restart and speech and sp.in_word:
                seg = self._start_segment(self._run_start, t_end)
            if not sp.in_word:
                self._restart = False
        else:
            seg.levels.append(level)
            seg.tonal += tonal
            seg.tone += is_tone
            seg.speech += speech
        if seg is not None:
            if sp.in_word:  # confirmed words only: isolated VAD blips in noise don't count
                seg.last_speech_ms = t_end
            if seg.verdict is None:
                self._judge(seg, t_end, events)
                if self._done:
                    return
            if seg.tonal >= cfg.music_share * len(seg.levels) and (
                t_end - self._last_tonal_ms >= cfg.pre_gap_ms
            ):
                # the music under/in this segment stopped: what follows is judged afresh,
                # unless sound ran on from the music with no quiet gap (a playlist item)
                self._end_segment(seg)
                self._restart = True
                if music_sound:
                    self._prompt_end_ms = t_end
            elif t_end - seg.last_speech_ms >= cfg.segment_gap_ms and not sp.in_word:
                if seg.verdict is None:
                    self._judge(seg, t_end, events, final=True)
                    if self._done:
                        return
                self._end_segment(seg)
        # --- what we hear (updates) ----------
        steady_tone = self._tone_run * FRAME_MS >= 200  # ringback, a beep (not a vowel)
        if self._first_seg is not None:
            # music after the deferred speech: tonal frames outside it, or a new segment that
            # is music (a stray tonal frame inside steady speech is not music)
            cur = self._seg
            music_after = tonal and (
                cur is None
                or (cur.verdict != "pending" and cur.tonal >= cfg.music_share * len(cur.levels))
            )
            self._resolve_pending(music_after or steady_tone, speech or sp.in_word, t_end, events)
            if self._done:
                return
        if tonal or steady_tone:
            self._music_heard = True
        if self._seg is None:
            share = self._tonal_count / self._tonal_ring.size
            if share >= cfg.music_report_share:
                self._report("music", t_end, events)
            elif self._tone_run * FRAME_MS >= 400:
                kind = _RING_NAMES.get(self._tone_sig or "", "tone")
                self._report(
                    f"call-progress tone ({kind})" if self._tone_sig else "beep/tone", t_end, events
                )
            elif t_end - self._last_sound_ms >= cfg.silence_report_ms:
                self._report("silence", t_end, events)
        if t_end >= cfg.max_hold_ms:
            self._emit(t_end, events, "unknown", "max hold time", final=True)

    def _start_segment(self, start_ms: int, t_end: int) -> _Segment:
        cfg = self.cfg
        back = max(1, min(len(self._hist), (t_end - start_ms) // FRAME_MS))
        hist = self._hist[-back:]
        # music heard just before the onset: look at frames before the back-filled part
        pre_music = self._music_gap(start_ms)
        prefix, self._prefix = self._prefix, None
        seg = _Segment(
            start_ms=start_ms,
            last_speech_ms=t_end,
            fp_start=self._fp_count - back,
            attached=pre_music < cfg.pre_gap_ms,
            music_gap_ms=pre_music,
            floor_dbfs=self._speech.floor_dbfs or -100.0,
            continues=start_ms - self._prompt_end_ms < cfg.prompt_continue_ms,
            levels=[h[1] for h in hist],
            tonal=sum(h[2] for h in hist),
            tone=sum(h[3] for h in hist),
            speech=sum(h[4] for h in hist),
        )
        if prefix is not None and start_ms - prefix.last_speech_ms < cfg.prompt_continue_ms:
            # a short first word ("Hi,") then a pause: one utterance, judged from its start
            seg.start_ms, seg.fp_start = prefix.start_ms, prefix.fp_start
            seg.attached = seg.attached or prefix.attached
            seg.continues = seg.continues or prefix.continues
            seg.levels = prefix.levels + seg.levels
            seg.tonal += prefix.tonal
            seg.tone += prefix.tone
            seg.speech += prefix.speech
        self._seg = seg
        self._note(
            start_ms,
            "segment_start",
            attached=seg.attached,
            continues=seg.continues,
            since_music=pre_music,
        )
        return seg

    def _music_gap(self, start_ms: int) -> int:
        """Time from the end of the last tonal (music) frame to ``start_ms``."""
        lim = start_ms + FRAME_MS
        for h in reversed(self._hist):
            if h[5] <= lim and h[6]:
                return start_ms - h[5]
        if self._last_music_ms <= lim:
            return start_ms - self._last_music_ms
        # the only music since is inside the segment; before it, none within the history
        return start_ms - (self._hist[0][5] - FRAME_MS)

    def _judge(
        self, seg: _Segment, t_end: int, events: list[DetectionEvent], final: bool = False
    ) -> None:
        """Judge a segment; ``final`` when it has just ended (judge what there is)."""
        cfg = self.cfg
        n = len(seg.levels)
        all_levels = seg.levels  # (with the trailing pause: a word then silence modulates)
        if final:  # drop the trailing pause (segment_gap_ms of it) from the statistics
            drop = min(n - 1, cfg.segment_gap_ms // FRAME_MS)
            seg.levels = seg.levels[: n - drop]
            n = len(seg.levels)
        elapsed = t_end - seg.start_ms
        if not seg.attached and max(seg.levels) < seg.floor_dbfs + cfg.min_snr_db:
            if final or elapsed >= cfg.decide_until_ms:
                seg.verdict = "noise"  # VAD blips on line noise, not a sound of its own
            return
        kmax = cfg.decide_after_ms // FRAME_MS
        since = self._fp_count - seg.fp_start  # frames from its start (pauses included)
        k = min(since, kmax)
        speechy = seg.tonal < cfg.music_share * n
        if elapsed >= cfg.min_match_ms and (k >= seg.next_k or final) and speechy:
            # three checks (at 400, 600 and 800 ms by default) keep the cost down
            seg.next_k = k + (kmax - cfg.min_match_ms // FRAME_MS) // 2 if k < kmax else 1 << 30
            # audio heard at least min_repeat_ms before this segment started
            skip = since + cfg.min_repeat_ms // FRAME_MS
            avail = min(self._fp_count - skip, self._fp_n - skip)
            if avail > k:
                first = seg.fp_start % self._fp_n
                end = self._fp_count % self._fp_n + self._fp_n - skip
                c = best_match(self._fp[first : first + k], self._fp[end - avail : end])
                seg.best_corr = max(seg.best_corr, c)
                if c >= cfg.match_corr:
                    self._verdict(seg, "prompt", "recorded prompt (repeat)", t_end, events)
                    return
        if not final and (elapsed < cfg.decide_after_ms or (speechy and seg.next_k <= kmax)):
            return
        if (
            final
            and n * FRAME_MS < cfg.min_match_ms
            and not ((seg.attached or seg.continues) and seg.speech * FRAME_MS >= cfg.min_word_ms)
        ):
            seg.verdict = "short"  # too short to judge (a click, a note's tail, "uh")
            return
        tonal_share = seg.tonal / n
        if tonal_share >= cfg.music_share:
            over = seg.speech * FRAME_MS >= cfg.min_speech_ms and tonal_share < 0.6
            self._verdict(
                seg,
                "prompt" if over else "music",
                "recorded prompt (over music)" if over else "music",
                t_end,
                events,
            )
            return
        if seg.attached:
            self._verdict(seg, "prompt", "recorded prompt (follows music)", t_end, events)
            return
        if seg.continues:
            self._verdict(seg, "prompt", "recorded prompt (continues)", t_end, events)
            return
        if seg.tone / n >= cfg.tone_share:
            if elapsed >= cfg.decide_until_ms:
                self._verdict(seg, "tone", "beep/tone", t_end, events)
            return
        lv = np.sort(np.asarray(all_levels))
        depth = float(lv[(9 * (lv.size - 1)) // 10] - lv[(lv.size - 1) // 10])
        if seg.speech * FRAME_MS >= cfg.min_speech_ms and depth >= cfg.min_depth_db:
            if self._first_seg is not None or (
                not self._music_heard and seg.start_ms < cfg.first_prompt_window_ms
            ):
                # nothing but this speech on hold yet: a person, or the one-off "please hold"
                # prompt before the music? What follows tells (see first_prompt_wait_ms).
                seg.verdict = "pending"
                self._first_seg = self._first_seg or seg
                self._first_last_ms = seg.last_speech_ms
                self._note(t_end, "pending", start=seg.start_ms)
                return
            self._note(
                t_end,
                "person",
                depth=round(depth, 1),
                corr=round(seg.best_corr, 3),
                tonal=round(tonal_share, 3),
            )
            seg.verdict = "person"
            since = seg.music_gap_ms
            ctx = f"{since} ms after music" if since < 10**8 else "no music before"
            self._emit(
                t_end,
                events,
                "human",
                f"live speech from {seg.start_ms} ms ({ctx}; {seg.speech * FRAME_MS} ms "
                f"speech, {depth:.0f} dB syllabic depth, tonal {tonal_share:.2f}, "
                f"best match with earlier audio {seg.best_corr:.2f})",
                final=True,
            )
            return
        if final:
            seg.verdict = "short"  # ended without enough speech to call it a person
        elif elapsed >= cfg.decide_until_ms:
            self._verdict(seg, "other", "unclear sound", t_end, events)

    def _resolve_pending(
        self, music_or_tone: bool, speaking: bool, t_end: int, events: list[DetectionEvent]
    ) -> None:
        """A would-be person heard before any music: music or a tone after it makes it the
        one-off prompt; silence after it, a person waiting for an answer."""
        seg = self._first_seg
        assert seg is not None
        if music_or_tone:
            self._first_seg = None
            self._verdict(
                seg, "prompt", "recorded prompt (one-off, before the music)", t_end, events
            )
            self._prompt_end_ms = -(10**9)  # music follows: nothing continues this prompt
            return
        if self._seg is not None:
            self._first_last_ms = max(self._first_last_ms, self._seg.last_speech_ms)
        last = max(seg.last_speech_ms, self._first_last_ms)
        if speaking or self._seg is not None or t_end - last < self.cfg.first_prompt_wait_ms:
            return
        self._first_seg = None
        seg.verdict = "person"
        self._note(t_end, "person", pending_from=seg.start_ms)
        self._emit(
            t_end,
            events,
            "human",
            f"live speech from {seg.start_ms} ms, before any music, then "
            f"{t_end - last} ms of silence (no music or tone followed it)",
            final=True,
        )

    def _verdict(
        self, seg: _Segment, verdict: str, reason: str, t_end: int, events: list[DetectionEvent]
    ) -> None:
        seg.verdict = verdict
        self._note(
            t_end,
            "verdict",
            verdict=verdict,
            reason=reason,
            corr=round(seg.best_corr, 3),
            tonal=round(seg.tonal / len(seg.levels), 3),
        )
        self._report(reason, t_end, events)

    def _end_segment(self, seg: _Segment) -> None:
        cfg = self.cfg
        self._seg = None
        n = len(seg.levels)
        self._note(seg.last_speech_ms, "segment_end", verdict=seg.verdict, frames=n)
        if seg.verdict == "short" and not seg.attached:
            self._prefix = seg
        if seg.verdict == "prompt" and seg.tonal <= cfg.continue_max_tonal * max(1, n):
            self._prompt_end_ms = seg.last_speech_ms


__all__ = ["HoldConfig", "HoldListener", "best_match", "clamp_bands", "config_from_overrides"]
