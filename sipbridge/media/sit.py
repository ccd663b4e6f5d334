"""Special information tones (SIT): three-segment tone sequences before intercept announcements.

Telcordia GR-1162 / ANSI T1.401 (North America, eight codes from segment 1's and 2's frequency
and duration) and ITU-T E.180 (950/1400/1800 Hz, no code).

:class:`SitDecoder` works on tone runs (:class:`~sipbridge.media.tones.ToneRun`). Runs of the
same SIT frequency separated by up to :data:`MAX_DROPOUT_MS` of silence are joined into one
segment: jitter-buffer gaps and packet loss under load cut 100–300 ms out of a tone, and a
lost stretch must not lose the sequence.

Every frame, each code is read into what was seen: the runs must lie inside that code's
segments (nominal 274/380 ms, ± :data:`LEN_TOL_MS`, plus the runs' measured edge lags), a
run edge next to another segment's run is the real boundary between them, and what the runs
leave unseen must be *one* stretch of at most :data:`MAX_DROPOUT_MS`. That yields, per code,
the window in which the sequence can have started; a hidden segment is inferred from where
the next one starts.

* It is a SIT once two SIT frequencies were heard in order, the later one held
  (``confirm_ms`` for segment 2, 40 ms for segment 3; less after a solid segment, see
  :func:`_held`), and some code fits.
* A loss the jitter buffer concealed (ITU-T G.711 Appendix I) lengthens the run before it by
  up to :data:`PLC_TAIL_MS`; readings allow that when none fits otherwise.
* The code is decided as soon as one code fits: ~0.4–0.6 s after the start without a dropout.
* When a dropout hid what tells codes apart, the decoder waits for more segments, but not
  past :data:`DEADLINE_MS` after the earliest reading's start (the middle of its start
  window; a reading that needs no dropout is preferred as the clock), then takes the best
  guess: congestion codes first (every frequency pair has exactly one congestion code and
  one other), then the reading with the smallest hidden stretch.
* A sequence that stops after two segments is decided once nothing more can come; three
  SIT frequencies in order whose lengths fit no code are decided by frequencies alone.

Out of reach of 700 ms: the second SIT frequency must be seen before the decoder may say
"SIT". A 300 ms dropout from the end of a 380 ms segment 1 hides everything else until
680 ms: until then the audio is one tone and silence, and a single tone is never enough (a
1000 Hz voicemail beep is within 1.5 % of segment 1's 985.2 Hz); the first 40 ms analysis
block full of the next tone ends at 720 ms, decided at 740 ms.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from sipbridge.media.frames import FRAME_MS
from sipbridge.media.tones import ToneRun

# Segment frequencies (Hz). Segment 3 is always 1776.7 Hz, 380 ms.
SIT_SEG1 = {"L": 913.8, "H": 985.2}
SIT_SEG2 = {"L": 1370.6, "H": 1428.5}
SIT_SEG3 = 1776.7
SIT_SHORT_MS = 274
SIT_LONG_MS = 380
# Code table (Telcordia SR-2275 / GR-1162; also the AT&T announcement-system manuals):
#   key = (seg1 freq, seg1 duration, seg2 freq), value = (code, seg2 duration, meaning).
# Segment 1's frequency and duration plus segment 2's frequency already make the eight keys
# unique, so a code is decided ~100 ms into segment 2 (seg2's duration only confirms it).
SIT_CODES: dict[tuple[str, str, str], tuple[str, str, str]] = {
    ("L", "S", "L"): ("IC", "S", "intercept: vacant number / number changed"),
    ("H", "L", "L"): ("VC", "S", "vacant code"),
    ("L", "S", "H"): ("RO", "L", "reorder, intra-LATA (equipment irregularity)"),
    ("H", "S", "L"): ("RO'", "L", "reorder, inter-LATA"),
    ("H", "L", "H"): ("NC", "L", "no circuit, intra-LATA (all trunks busy)"),
    ("L", "L", "L"): ("NC'", "L", "no circuit, inter-LATA"),
    ("H", "S", "H"): ("IO", "S", "ineffective other"),
    ("L", "L", "H"): ("FU", "S", "reserved for future use"),
}
SIT_BELL_TOL = 0.015  # ±1.5 % (generation tolerance is ±0.2 %; allow for line/codec drift)
# ITU-T E.180 SIT: 950/1400/1800 Hz ± 50 Hz, each segment 330 ± 70 ms, gaps ≤ 30 ms.
SIT_ITU = (950.0, 1400.0, 1800.0)
SIT_ITU_TOL_HZ = 50.0
# Silence inside one segment bridged as a dropout (see the module docstring): 300 ms lost plus
# the ~40–60 ms the 40 ms analysis block needs to see the tone again.
MAX_DROPOUT_MS = 380
# A SIT whose code a dropout made uncertain is decided (best guess) this long after the
# earliest reading's start (the middle of its window): one frame inside the 700 ms target.
DEADLINE_MS = 680
# On a tie between two codes (a dropout hid what separates them), prefer the congestion codes:
# a wrong "congestion" costs one retry, a wrong "not in service" drops a working number.
_CONGESTION = frozenset({"RO", "RO'", "NC", "NC'"})
# Segments follow each other within this gap when nothing was lost (Telcordia: no gap;
# ITU: ≤ 30 ms; plus frame quantisation).
MAX_SEG_GAP_MS = 60
# Where a tone run starts and ends against the tone it comes from (40 ms block on 20 ms
# frames, tone edges anywhere in a frame; measured 0..+20 ms and 0..+14 ms), widened 5 ms.
START_LAG_MS = (-5, 25)
END_LAG_MS = (-5, 20)
# How far a segment may be off its nominal length on each edge (switch generators).
LEN_TOL_MS = 10
# A jitter buffer conceals a loss (ITU-T G.711 Appendix I; pjmedia's PLC likewise): the
# last pitch period repeats, fading out within 60 ms, so a tone's run goes on up to 60 ms
# into the loss (past its segment's end when the loss spans a boundary) and what is left
# of the gap can be as short as a boundary's. Read so only when no code fits otherwise.
PLC_TAIL_MS = 60
# Unseen stretches up to this long are the runs' edges, not a dropout.
SLOP_MS = 40
# A segment seen this long at a Bell frequency is a real one (the shortest is 274 ms, its run
# ~20 ms less): after it a shorter hold of the next frequency is enough (see _held).
SOLID_MS = 200
# Nothing heard for this long after a frame or two of segment 2 cut it (see _held): a word
# interrupts the decoder after 100 ms of speech (VadConfig.min_word_ms), plus a frame.
CUT_QUIET_MS = 120


def classify_sit_freq(seg: int, hz: float) -> tuple[str | None, bool]:
    """Classify a SIT segment frequency: ``("L"|"H"|None, itu_match)`` for segment 1 or 2,
    ``("3"|None, itu_match)`` for segment 3.

    Bell/Telcordia low/high are matched within ±1.5 %; the ITU-T E.180 band is ± 50 Hz.
    """
    itu = abs(hz - SIT_ITU[seg - 1]) <= SIT_ITU_TOL_HZ
    if seg == 3:
        return ("3" if abs(hz - SIT_SEG3) <= SIT_BELL_TOL * SIT_SEG3 else None), itu
    table = SIT_SEG1 if seg == 1 else SIT_SEG2
    bell = None
    for name, nominal in table.items():
        if abs(hz - nominal) <= SIT_BELL_TOL * nominal:
            bell = name
    return bell, itu


@dataclass(frozen=True, slots=True)
class SitResult:
    """A decoded SIT: ``code`` is a Telcordia code (IC, VC, RO, RO', NC, NC', IO, FU) or ITU."""

    code: str
    meaning: str
    start_ms: int
    decided_ms: int
    seg1_hz: float
    seg1_ms: int
    seg2_hz: float
    dropout: bool = False


@dataclass(slots=True)
class _Seg:
    """Runs of one SIT segment frequency joined across dropouts."""

    which: int  # 1, 2 or 3
    start_ms: int
    end_ms: int
    hz_sum: float
    frames: int
    gaps: bool = False  # joined across a dropout
    hole: tuple[int, int] | None = None  # the dropout inside the segment

    @property
    def hz(self) -> float:
        return self.hz_sum / self.frames

    @property
    def ms(self) -> int:
        return self.end_ms - self.start_ms


def _which(hz: float) -> int:
    for seg in (1, 2, 3):
        bell, itu = classify_sit_freq(seg, hz)
        if bell or itu:
            return seg
    return 0


_NOMINAL_MS = {"S": SIT_SHORT_MS, "L": SIT_LONG_MS}


@dataclass(frozen=True, slots=True)
class _Fit:
    """One code read into the segments seen: when the sequence can have started
    (``lo_ms``..``hi_ms``) and how long a stretch a dropout must have hidden (0: none)."""

    code: str
    meaning: str
    lo_ms: float
    hi_ms: float
    hidden_ms: float


def _hold_ms(which: int, confirm_ms: int) -> int:
    return confirm_ms if which == 2 else min(40, confirm_ms)


def _solid(s: _Seg) -> bool:
    """A segment that by itself looks like a real SIT segment: seen for :data:`SOLID_MS`
    without a hole, at a Bell frequency (±1.5 %)."""
    return s.ms >= SOLID_MS and s.hole is None and classify_sit_freq(s.which, s.hz)[0] is not None


def _held(segs: list[_Seg], confirm_ms: int, max_gap_ms: int, now_ms: int, last_done: bool) -> bool:
    """Whether a later segment was held long enough to say "SIT" (before any code fits).

    The plain rule: the later segment held ``confirm_ms`` (segment 2) or 40 ms (segment 3).
    A 300 ms dropout can leave less than that of the second SIT frequency before 700 ms, so
    after a *solid* earlier segment (see :func:`_solid`: nothing in speech or music holds
    an exact, off-scale SIT frequency that long) less is enough, each at a Bell frequency:

    * segment 2 after a solid segment 1, anywhere (the gap is the dropout): one frame less
      than ``confirm_ms`` (40 ms by default; a dropout hiding segment 1's end and segment
      2's start leaves segment 2 from ~640 ms);
    * segment 3 *directly* after a solid segment 2: one frame. Segment 2's 1370.6/1428.5 Hz
      lie between musical notes and 1400 Hz beeps (outside ±1.5 %); a steady one turning
      into 1776.7 Hz at once is a SIT (a dropout that hid segment 1 leaves segment 3 from
      ~680 ms);
    * segment 2 *directly* after a solid segment 1, cut after a frame or two and followed
      by :data:`CUT_QUIET_MS` of nothing (no tone run, no word: a word interrupts the
      decoder after 100 ms of speech): the second SIT frequency starting exactly where
      segment 1 ends, then vanishing, is what a jitter-buffer gap does to a SIT; a beep
      does not change frequency at its end (the gap then hides the rest until ~720 ms).

    ``last_done``: the last segment's run has ended (it is not the run in progress).
    Every reading must still fit a code (:meth:`SitDecoder._fit`); the speech-only bench
    (30 min) and the talk-off tests guard these.
    """
    for prev, s in pairwise(segs):
        if s.ms >= _hold_ms(s.which, confirm_ms):
            return True
        if not _solid(prev) or classify_sit_freq(s.which, s.hz)[0] is None:
            continue
        adjacent = s.start_ms - prev.end_ms <= max_gap_ms
        if prev.which == 1 and s.which == 2:
            if s.ms >= max(FRAME_MS, confirm_ms - FRAME_MS):
                return True
            if adjacent and last_done and s is segs[-1] and now_ms - s.end_ms >= CUT_QUIET_MS:
                return True
        if prev.which == 2 and s.which == 3 and adjacent and s.ms >= FRAME_MS:
            return True
    return False


class SitDecoder:
    """Decodes SIT from tone runs (see the module docstring).

    Call :meth:`on_run_end` with each completed run, :meth:`check` with the run in progress
    every frame, and :meth:`interrupt` when something else is heard (speech): segments are
    never joined across it.
    """

    def __init__(self, confirm_ms: int = 100, max_gap_ms: int = MAX_SEG_GAP_MS) -> None:
        self.confirm_ms = confirm_ms
        self.max_gap_ms = max_gap_ms
        self._segs: list[_Seg] = []

    def interrupt(self) -> None:
        """Forget partial sequences (speech or another sound was heard)."""
        self._segs.clear()

    def _join(self, run: ToneRun) -> list[_Seg]:
        """The completed segments with ``run`` joined or appended (not stored)."""
        which = _which(run.hz)
        segs = list(self._segs)
        if which == 0:
            return []
        last = segs[-1] if segs else None
        if last is not None and run.start_ms - last.end_ms > MAX_DROPOUT_MS:
            segs, last = [], None
        if (
            last is not None
            and last.which == which
            and (abs(run.hz - last.hz) <= max(8.0, 0.012 * last.hz))
        ):
            gap = run.start_ms - last.end_ms > self.max_gap_ms
            joined = _Seg(
                which,
                last.start_ms,
                run.end_ms,
                last.hz_sum + run.hz_sum,
                last.frames + run.frames,
                last.gaps or gap,
                (last.end_ms, run.start_ms) if gap else last.hole,
            )
            return [*segs[:-1], joined]
        if last is not None and which <= last.which:
            segs = []
        return [*segs, _Seg(which, run.start_ms, run.end_ms, run.hz_sum, run.frames)][-3:]

    def on_run_end(self, run: ToneRun) -> None:
        """Offer a completed tone run."""
        self._segs = self._join(run)

    def check(self, current: ToneRun | None, now_ms: int | None = None) -> SitResult | None:
        """Check the sequence with the run in progress; returns the decoded SIT once sure.
        ``now_ms`` (the end of the frame just analysed) lets a sequence be decided while a
        dropout hides its end, and once nothing more can come."""
        if current is None:
            if not self._segs or now_ms is None:
                return None
            segs, now = self._segs, now_ms
        else:
            segs, now = self._join(current), current.end_ms
        # two SIT frequencies in order, the later one held: a SIT (the hold keeps a passing
        # tone in speech or music from making one)
        if len(segs) < 2 or not _held(segs, self.confirm_ms, self.max_gap_ms, now, current is None):
            if current is None and len(segs) < 2 and now - segs[-1].end_ms > MAX_DROPOUT_MS:
                self._segs = []
            return None
        stopped = current is None and now - segs[-1].end_ms > MAX_DROPOUT_MS
        res = self._decide(segs, now, stopped)
        if res is not None or stopped:
            self._segs = []
        return res

    def _decide(self, segs: list[_Seg], now_ms: int, stopped: bool) -> SitResult | None:
        s1 = next((s for s in segs if s.which == 1), None)
        s2 = next((s for s in segs if s.which == 2), None)
        b1 = classify_sit_freq(1, s1.hz)[0] if s1 is not None else None
        b2 = classify_sit_freq(2, s2.hz)[0] if s2 is not None else None
        if (s1 is not None and b1 is None) or (s2 is not None and b2 is None):
            # an ITU-T E.180 sequence: no code to read
            return self._make("ITU", "ITU-T E.180 special information tone (no code)", segs, now_ms)
        fits = self._fits(segs, b1, b2, now_ms, stopped)
        if not fits:
            # read as concealed: a jitter buffer fills a loss's first 60 ms (see PLC_TAIL_MS)
            fits = self._fits(segs, b1, b2, now_ms, stopped, plc=True)
        if not fits:
            # the lengths fit no code with one dropout (an off-nominal generator): all three
            # frequencies in order still make a SIT, decided by frequencies alone
            if len(segs) < 3 or segs[-1].ms < _hold_ms(3, self.confirm_ms):
                return None
            fits = self._fits(segs, b1, b2, now_ms, stopped, strict=False)
        codes = {f.code for f in fits}
        if len(codes) == 1:
            f = fits[0]
            return self._make(f.code, f.meaning, segs, now_ms, f.hidden_ms > SLOP_MS)
        # several codes fit: wait for what tells them apart, but not past the deadline
        # counted from the earliest start of a reading that needs no dropout (or of any;
        # the middle of its window: its edges hold every lag and tolerance at once)
        clean = [f for f in fits if f.hidden_ms <= SLOP_MS] or fits
        if not stopped and now_ms < min((f.lo_ms + f.hi_ms) / 2 for f in clean) + DEADLINE_MS:
            return None
        # best guess: congestion first (see _CONGESTION), then the smallest dropout
        f = min(fits, key=lambda f: (f.code not in _CONGESTION, f.hidden_ms))
        why = "sequence cut short" if stopped else "a dropout hid what fixes the code"
        return self._make(f.code, f"{f.meaning} ({why}; code is a best guess)", segs, now_ms, True)

    def _fits(
        self,
        segs: list[_Seg],
        b1: str | None,
        b2: str | None,
        now_ms: int,
        stopped: bool,
        strict: bool = True,
        plc: bool = False,
    ) -> list[_Fit]:
        out = []
        for (f1, d1, f2), (code, d2, meaning) in SIT_CODES.items():
            if (b1 is not None and f1 != b1) or (b2 is not None and f2 != b2):
                continue
            n1, n2 = _NOMINAL_MS[d1], _NOMINAL_MS[d2]
            if not strict:
                out.append(_Fit(code, meaning, 0.0, 0.0, float(MAX_DROPOUT_MS)))
                continue
            fit = self._fit(segs, (n1, n2, SIT_LONG_MS), now_ms, stopped, plc)
            if fit is not None:
                out.append(_Fit(code, meaning, *fit))
        return out

    def _fit(
        self, segs: list[_Seg], n: tuple[int, int, int], now_ms: int, stopped: bool, plc: bool
    ) -> tuple[float, float, float] | None:
        """When a sequence with nominal lengths ``n`` can have started, given the segments
        seen, and the stretch one dropout must have hidden; None when no start fits. A
        sequence that ``stopped`` may lack segment 3, nothing else. ``plc``: read the loss
        as concealed (:data:`PLC_TAIL_MS`): only runs a frame apart meet at a boundary, and
        a run followed by the loss may end that much past its segment."""
        off = (0, n[0], n[0] + n[1])
        bound = FRAME_MS if plc else self.max_gap_ms
        nxt = [t.start_ms for t in segs[1:]] + [now_ms]
        lo, hi = -1e9, 1e9
        for i, s in enumerate(segs):
            a = off[s.which - 1]
            b = a + n[s.which - 1]
            tail = PLC_TAIL_MS if plc and nxt[i] - s.end_ms > bound else 0
            # the run lies within its segment
            hi = min(hi, s.start_ms - a - START_LAG_MS[0] + LEN_TOL_MS)
            lo = max(lo, s.end_ms - b - END_LAG_MS[1] - LEN_TOL_MS - tail)
            # an edge next to another segment's run is the segments' real boundary
            if i > 0 and s.start_ms - segs[i - 1].end_ms <= bound:
                lo = max(lo, s.start_ms - a - START_LAG_MS[1] - LEN_TOL_MS)
            if i + 1 < len(segs) and segs[i + 1].start_ms - s.end_ms <= bound:
                hi = min(hi, s.end_ms - b - END_LAG_MS[0] + LEN_TOL_MS)
        # what the runs leave unseen of the sequence, from its start to the frame just
        # analysed, must be one dropout: holes between or inside the runs, or after them...
        holes: list[tuple[int, int]] = []
        for prev, s in pairwise(segs):
            if s.start_ms - prev.end_ms > bound:
                holes.append((prev.end_ms, s.start_ms))
        holes += [s.hole for s in segs if s.hole is not None]
        end = min(now_ms, int(hi) + off[2] + (0 if stopped else n[2]))
        if end - segs[-1].end_ms > bound:
            holes.append((segs[-1].end_ms, end))
        if len(holes) > 1:
            return None
        # ... or, when there is none of those, before the first run (its start was lost)
        first = segs[0].start_ms - START_LAG_MS[1]
        lo = max(lo, first - (SLOP_MS if holes else MAX_DROPOUT_MS))
        if lo > hi:
            return None
        hidden = holes[0][1] - holes[0][0] if holes else first - hi
        if hidden > MAX_DROPOUT_MS:
            return None
        return lo, hi, max(0.0, hidden)

    def _make(
        self, code: str, meaning: str, segs: list[_Seg], decided_ms: int, dropout: bool = False
    ) -> SitResult:
        s1 = next((s for s in segs if s.which == 1), None)
        s2 = next((s for s in segs if s.which == 2), None)
        return SitResult(
            code,
            meaning,
            segs[0].start_ms,
            decided_ms,
            s1.hz if s1 else 0.0,
            s1.ms if s1 else 0,
            s2.hz if s2 else 0.0,
            dropout or any(s.gaps for s in segs),
        )
