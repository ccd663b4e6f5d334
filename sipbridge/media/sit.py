"""Special information tones (SIT): three-segment tone sequences before intercept announcements.

Telcordia GR-1162 / ANSI T1.401 (North America, eight codes from segment 1's and 2's frequency
and duration) and ITU-T E.180 (950/1400/1800 Hz, no code).

:class:`SitDecoder` works on tone runs (:class:`~sipbridge.media.tones.ToneRun`). Runs of the
same SIT frequency separated by up to :data:`MAX_DROPOUT_MS` of silence are joined into one
segment: jitter-buffer gaps and packet loss under load cut 100–300 ms out of a tone, and a
lost stretch must not lose the sequence.

* **Fast path** (no dropout at segment 1's end): segment 1 complete (200–460 ms) and
  segment 2 held for ``confirm_ms`` → decided ~100 ms into segment 2 (≈ 0.4–0.5 s after the
  SIT starts). Segment 1's frequency and duration plus segment 2's frequency fix the code.
* **Slow path** (segment 1 cut short or lost, or a gap between segments 1 and 2): wait for
  segment 2 to end (segment 3 heard for ``confirm_ms``), then pick the code whose nominal
  segment durations fit the observed ones best: every code pair that shares segment 2's
  frequency differs in segment 1's frequency or in segment 2's duration, so the code is
  still recovered unless the dropout hid segment 1 entirely *and* cut segment 2. Decided
  ≈ 0.65–0.85 s after the SIT starts.
"""

from __future__ import annotations

from dataclasses import dataclass

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
# A SIT whose code a dropout made uncertain is decided (best guess) this long after its first
# segment was heard: within the 700 ms target, by when a clean sequence is always decided.
DEADLINE_MS = 640
# On a tie between two codes (a dropout hid what separates them), prefer the congestion codes:
# a wrong "congestion" costs one retry, a wrong "not in service" drops a working number.
_CONGESTION = frozenset({"RO", "RO'", "NC", "NC'"})
# Segments follow each other within this gap when nothing was lost (Telcordia: no gap;
# ITU: ≤ 30 ms; plus frame quantisation).
MAX_SEG_GAP_MS = 60


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
_MID_MS = (SIT_SHORT_MS + SIT_LONG_MS) // 2  # 327: longer than any short segment


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
            joined = _Seg(
                which,
                last.start_ms,
                run.end_ms,
                last.hz_sum + run.hz_sum,
                last.frames + run.frames,
                last.gaps or run.start_ms - last.end_ms > self.max_gap_ms,
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
        ``now_ms`` (the end of the frame just analysed) lets a sequence whose last segment
        was lost be decided once nothing more can come."""
        if current is None or current.duration_ms < 40:
            segs = self._segs
            s2 = next((s for s in segs if s.which == 2), None)
            if s2 is not None and segs[-1] is s2 and now_ms is not None:
                res = self._seg2_ended(segs, now_ms)
                if res is not None:
                    self._segs = []
                    return res
            if (
                now_ms is not None
                and s2 is not None
                and len(segs) >= 2
                and now_ms - segs[-1].end_ms > MAX_DROPOUT_MS
            ):
                s1 = next((s for s in segs if s.which == 1), None)
                self._segs = []
                # segments 1 and 2 heard, then the sequence stopped: still a SIT
                return self._guess(s1, s2, now_ms, "sequence cut short", clean2=False)
            return None
        segs = self._join(current)
        if len(segs) < 2:
            return None
        res = self._decode(segs, current.end_ms)
        if res is None and current.end_ms - segs[0].start_ms >= DEADLINE_MS:
            # two SIT frequencies in sequence: a SIT for sure; a dropout hid what fixes the
            # code, and the call should not wait for it
            s1 = next((s for s in segs if s.which == 1), None)
            s2 = next((s for s in segs if s.which == 2), None)
            res = self._guess(
                s1,
                s2,
                current.end_ms,
                "dropout; decided at the deadline",
                span=s2 is not None and s2 is not segs[-1],
            )
        if res is not None:
            self._segs = []
        return res

    def _seg2_ended(self, segs: list[_Seg], now_ms: int) -> SitResult | None:
        """Segment 2 just ended short after a short-looking segment 1. Either segment 2 is
        short (and segment 1 may have lost its start) or a dropout cut segment 2 (and segment 1
        is whole, so short): decide now when both readings give the same code."""
        s1 = next((s for s in segs if s.which == 1), None)
        s2 = segs[-1]
        if (
            s1 is None
            or s1.ms >= _MID_MS
            or s2.ms >= _MID_MS
            or s1.gaps
            or (s2.start_ms - s1.end_ms > self.max_gap_ms)
        ):
            return None
        b1 = classify_sit_freq(1, s1.hz)[0]
        b2 = classify_sit_freq(2, s2.hz)[0]
        if b1 is None or b2 is None:
            return None
        whole1 = SIT_CODES[(b1, "S", b2)]
        if whole1[1] != "S":
            return None  # the readings differ (RO/FU, RO'/VC): wait for segment 3
        return self._code(b1, "S", b2, s1, s2, now_ms)

    def _decode(self, segs: list[_Seg], decided_ms: int) -> SitResult | None:
        """Decide once the segments seen fix the code (one dropout at most is assumed: it
        only ever shortens what it hits)."""
        s1 = next((s for s in segs if s.which == 1), None)
        s2 = next((s for s in segs if s.which == 2), None)
        s3 = next((s for s in segs if s.which == 3), None)
        last = segs[-1]
        s2_held = last is s2 and s2 is not None and last.ms >= self.confirm_ms
        s2_done = last is s3 and s3 is not None and s3.ms >= min(40, self.confirm_ms)
        if s2 is None:
            if s1 is not None and s2_done:  # segment 2 lost entirely
                return self._guess(s1, None, decided_ms, "segment 2 lost")
            return None
        b2 = classify_sit_freq(2, s2.hz)[0]
        b1 = classify_sit_freq(1, s1.hz)[0] if s1 is not None else None
        if b2 is None or (s1 is not None and b1 is None):  # an ITU-T E.180 sequence
            if s2_held or s2_done:
                return self._make(
                    "ITU", "ITU-T E.180 special information tone (no code)", s1, s2, decided_ms
                )
            return None
        if s1 is None or b1 is None:  # segment 1 lost: segment 2's duration narrows it down
            if not s2_done or s3 is None:
                return None
            return self._guess(
                None,
                s2,
                decided_ms,
                "segment 1 lost",
                clean2=s3.start_ms - s2.end_ms <= self.max_gap_ms and not s2.gaps,
            )
        boundary_gap = s2.start_ms - s1.end_ms > self.max_gap_ms
        long1 = s1.ms >= _MID_MS  # a dropout only shortens: this is a long segment 1
        if (long1 or (s1.gaps and not boundary_gap)) and (s2_held or s2_done):
            return self._code(b1, "L" if long1 else "S", b2, s1, s2, decided_ms)
        if not boundary_gap:
            # segment 1 looks short: truly short, or long with its start lost. The two codes
            # sharing both frequencies differ in segment 2's duration: let segment 2 say it.
            if last is s2 and s2.ms >= _MID_MS:
                return self._by_seg2(b1, b2, "L", s1, s2, decided_ms)
            if s2_done and s3 is not None:
                if s3.start_ms - s2.end_ms > self.max_gap_ms:  # the dropout cut segment 2
                    return self._code(b1, "S", b2, s1, s2, decided_ms)
                return self._by_seg2(b1, b2, "L" if s2.ms >= _MID_MS else "S", s1, s2, decided_ms)
            return None
        if s2_done and s3 is not None:  # a dropout between segments 1 and 2: the whole span
            return self._guess(s1, s2, decided_ms, "dropout between segments 1 and 2")
        return None

    def _make(
        self,
        code: str,
        meaning: str,
        s1: _Seg | None,
        s2: _Seg | None,
        decided_ms: int,
        dropout: bool = False,
    ) -> SitResult:
        first = s1 or s2
        start = first.start_ms if first is not None else decided_ms
        return SitResult(
            code,
            meaning,
            start,
            decided_ms,
            s1.hz if s1 else 0.0,
            s1.ms if s1 else 0,
            s2.hz if s2 else 0.0,
            dropout,
        )

    def _code(self, b1: str, d1: str, b2: str, s1: _Seg, s2: _Seg, decided_ms: int) -> SitResult:
        code, _, meaning = SIT_CODES[(b1, d1, b2)]
        return self._make(code, meaning, s1, s2, decided_ms, s1.gaps or s2.gaps)

    def _by_seg2(self, b1: str, b2: str, d2: str, s1: _Seg, s2: _Seg, decided_ms: int) -> SitResult:
        for (f1, d1, f2), (code, dd2, meaning) in SIT_CODES.items():
            if (f1, f2, dd2) == (b1, b2, d2):
                return self._make(code, meaning, s1, s2, decided_ms, d1 == "L" and s1.ms < _MID_MS)
        raise AssertionError("SIT code table covers every (seg1 Hz, seg2 Hz, seg2 length)")

    def _guess(
        self,
        s1: _Seg | None,
        s2: _Seg | None,
        decided_ms: int,
        why: str,
        clean2: bool = False,
        span: bool = True,
    ) -> SitResult | None:
        """Best code when a dropout hid part of the sequence: the candidates consistent with
        the frequencies seen, ranked by how well their nominal lengths fit (segments can only
        be shortened) and by the whole span from segment 1 to segment 2's end."""
        b1 = classify_sit_freq(1, s1.hz)[0] if s1 is not None else None
        b2 = classify_sit_freq(2, s2.hz)[0] if s2 is not None else None
        best: tuple[float, str, str] | None = None
        for (f1, d1, f2), (code, d2, meaning) in SIT_CODES.items():
            if (b1 is not None and f1 != b1) or (b2 is not None and f2 != b2):
                continue
            n1, n2 = _NOMINAL_MS[d1], _NOMINAL_MS[d2]
            err = 0.0
            if s1 is not None:
                err += 4.0 * max(0.0, s1.ms - n1 - 30)
            if s2 is not None:
                err += 4.0 * max(0.0, s2.ms - n2 - 30) + (abs(s2.ms - n2) if clean2 else 0.0)
            if span and s1 is not None and s2 is not None:
                err += abs((s2.end_ms - s1.start_ms) - (n1 + n2))
            if code not in _CONGESTION:
                err += 0.5
            if best is None or err < best[0]:
                best = (err, code, meaning)
        if best is None:
            return None
        _, code, meaning = best
        return self._make(
            code, f"{meaning} ({why}; code is a best guess)", s1, s2, decided_ms, True
        )
