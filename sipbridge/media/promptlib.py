"""Prompt library: recognise known recorded prompts by audio fingerprint, and repeated menus.

Deployers put recordings of prompts they meet — a carrier's spoken intercept without SIT, a
screening assistant's greeting, a company's IVR menu — in a folder, each with a label
(``not_in_service``, ``screening``, ``ivr``, ``machine``, ``operator`` …: the known set,
:data:`~sipbridge.media.promptfiles.LABEL_RESULTS`, any other is refused at load). During a
call :class:`PromptMatcher` recognises any of them about a second after it starts playing,
through G.711, level changes, line noise, and when the call joins the prompt late.

Fingerprint (after Haitsma & Kalker's binary sub-fingerprints, tuned to 8 kHz telephony):
every 20 ms frame, the 40 ms Hann power spectrum (the detector's own, 25 Hz bins) is summed in
17 log-spaced bands over 300–3400 Hz; bit *b* of the frame's 16-bit code is the sign of the
change, over 40 ms, of the level difference between bands *b* and *b+1*. Differences of log
energies ignore the level; signs survive G.711 and moderate noise; the code says nothing about
silence (silent frames get no code).

Search: each known prompt is indexed at four sub-frame alignments (0/5/10/15 ms: the call's
frames fall anywhere against the recording's). Every live frame looks its code up — and the
codes with its three least reliable bits flipped — in a hash index; each hit votes for
(prompt, alignment, time offset). An offset with enough votes is verified: the bit error rate
between the last second of live codes and the prompt's codes at that offset must be under
``max_ber`` (unrelated audio sits at 0.5; a noisy replay at 0.15–0.3). Cost per frame: one
16-band matrix product and a few dictionary look-ups, whatever the library's size.

:class:`RepeatDetector` applies the same search to the call's own audio: after DTMF, hearing
what was heard before it (the main menu again) means the IVR went back to its start.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from sipbridge.media.frames import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE, FloatArray, dbfs, rfft
from sipbridge.media.promptfiles import (
    LABEL_RESULTS,
    PROMPT_MAX_BYTES,
    PROMPT_MAX_S,
    check_entry,
    folder_entries,
    known_label,
    load_prompt_audio,
)
from sipbridge.media.promptfiles import normalise_label as normalise_label

BLOCK = 2 * FRAME_SAMPLES
N_BANDS = 17
N_BITS = N_BANDS - 1
SUB_OFFSETS = (0, 40, 80, 120)  # samples: 0, 5, 10, 15 ms
LAG = 2  # frames between the compared band differences (40 ms: non-overlapping blocks)
SILENT_DBFS = -62.0  # frames quieter than this get no code (quiet prompts at -40 dBFS keep theirs)

_POP = np.array([bin(i).count("1") for i in range(1 << N_BITS)], dtype=np.uint8)
UInt16Array = npt.NDArray[np.uint16]


def _band_matrix() -> FloatArray:
    edges = np.geomspace(300.0, 3400.0, N_BANDS + 1)
    hz = np.arange(BLOCK // 2 + 1) * SAMPLE_RATE / BLOCK
    m = np.zeros((hz.size, N_BANDS))
    for b in range(N_BANDS):
        m[(hz >= edges[b]) & (hz < edges[b + 1]), b] = 1.0
    return m


_BANDS = _band_matrix()
# the same bands as index ranges for np.add.reduceat (contiguous bins; the last range ends at
# 3400 Hz): bins of band b are _BAND_STARTS[b] .. _BAND_STARTS[b + 1] - 1
_BAND_STARTS = np.append(
    np.argmax(_BANDS > 0, axis=0), int(np.nonzero(_BANDS[:, -1])[0][-1]) + 1
).astype(np.intp)
_WIN = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(BLOCK) / BLOCK)
_BIT_WEIGHTS = (1 << np.arange(N_BITS)).astype(np.int64)


class CodeStream:
    """Turns per-frame power spectra into 16-bit codes (``None`` for silent frames)."""

    def __init__(self) -> None:
        self._d: list[FloatArray | None] = [None] * LAG

    def push(self, power: FloatArray, level_dbfs: float) -> tuple[int, FloatArray] | None:
        """One frame's 40 ms power spectrum (161 bins) and level → (code, the band-difference
        changes its bits are the signs of; their size is each bit's reliability)."""
        e = np.log10(np.add.reduceat(power, _BAND_STARTS)[:N_BANDS] + 1e-12)
        d = e[:-1] - e[1:]
        old = self._d[0]
        self._d = [*self._d[1:], d if level_dbfs >= SILENT_DBFS else None]
        if old is None or level_dbfs < SILENT_DBFS:
            return None
        diff = d - old
        return int((diff > 0) @ _BIT_WEIGHTS), diff


def spectrum(block: FloatArray) -> FloatArray:
    """Power spectrum of a 40 ms block (Hann), as :class:`~sipbridge.media.tones.ToneAnalyzer`
    computes it."""
    s = rfft(block * _WIN)
    return np.asarray(s.real * s.real + s.imag * s.imag, dtype=np.float64)


def codes_of(x: FloatArray, sub_offset: int = 0) -> list[int | None]:
    """Codes of a whole 8 kHz signal, frames starting ``sub_offset`` samples in."""
    cs = CodeStream()
    out: list[int | None] = []
    prev = np.zeros(FRAME_SAMPLES)
    for i in range(sub_offset, x.size - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        cur = x[i : i + FRAME_SAMPLES]
        r = cs.push(spectrum(np.concatenate([prev, cur])), dbfs(cur))
        out.append(None if r is None else r[0])
        prev = cur
    return out


@dataclass(frozen=True, slots=True)
class Prompt:
    """A known prompt: its name, label and codes at each sub-frame alignment."""

    name: str
    label: str
    duration_ms: int
    codes: tuple[tuple[int | None, ...], ...]


@dataclass(frozen=True, slots=True)
class PromptMatch:
    """A recognised prompt. Times are ms of the stream fed to the matcher."""

    name: str
    label: str
    decided_ms: int
    start_ms: int  # where the prompt's beginning is (or would have been) in the stream
    joined_ms: int  # how far into the prompt the stream's first matched frame was
    ber: float  # bit error rate of the verification (0 = identical)


class PromptLibrary:
    """Known prompts indexed by code. Build with :meth:`add` or :meth:`from_folder`."""

    def __init__(self) -> None:
        self.prompts: list[Prompt] = []
        self.index: dict[int, list[int]] = {}  # code -> postings (see _posting)
        self._arrays: dict[tuple[int, int], npt.NDArray[np.int32]] = {}
        self._search: dict[int, tuple[tuple[int, int], ...]] | None = None

    def search_index(self) -> dict[int, tuple[tuple[int, int], ...]]:
        """The index as the search reads it (built once, after the last :meth:`add`): only
        codes with at most :data:`MAX_POSTINGS` postings, each split into (prompt and alignment
        bits, frame)."""
        if self._search is None:
            self._search = {
                c: tuple((post & ~_K_MASK, post & _K_MASK) for post in posts)
                for c, posts in self.index.items()
                if len(posts) <= MAX_POSTINGS
            }
        return self._search

    def codes_array(self, pid: int, sub: int) -> npt.NDArray[np.int32]:
        """A prompt's codes at one alignment as an array (-1 for silent frames)."""
        arr = self._arrays.get((pid, sub))
        if arr is None:
            arr = np.array(
                [-1 if c is None else c for c in self.prompts[pid].codes[sub]], dtype=np.int32
            )
            self._arrays[(pid, sub)] = arr
        return arr

    def __len__(self) -> int:
        return len(self.prompts)

    def add(self, name: str, label: str, x: FloatArray) -> Prompt:
        """Index an 8 kHz recording under ``name`` with ``label`` (normalised; one of
        :data:`LABEL_RESULTS`, else ``ValueError``)."""
        if not name or not label:
            raise ValueError("a prompt needs a name and a label")
        label = known_label(label, f"prompt {name[:80]!r}")
        pid = len(self.prompts)
        self._search = None
        per_sub = tuple(tuple(codes_of(x, s)) for s in SUB_OFFSETS)
        p = Prompt(name, label, x.size * 1000 // SAMPLE_RATE, per_sub)
        self.prompts.append(p)
        seen: set[tuple[int, int]] = set()
        for sub, codes in enumerate(per_sub):
            for k, c in enumerate(codes):
                # one posting per (code, frame): alignments that give the same code vote for the
                # same offset anyway (verification then uses the first of them)
                if c is not None and (c, k) not in seen:
                    seen.add((c, k))
                    self.index.setdefault(c, []).append(_posting(pid, sub, k))
        return p

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        max_s: float = PROMPT_MAX_S,
        max_bytes: int = PROMPT_MAX_BYTES,
    ) -> PromptLibrary:
        """Load ``folder`` (layout, labels and WAV limits: :mod:`~sipbridge.media.promptfiles`;
        ``max_s`` / ``max_bytes`` bound each WAV). Raises ``ValueError`` naming the file for
        unreadable, oversized or too short audio, an unknown label or a bad labels file."""
        root = Path(folder)
        entries = [
            (name, check_entry(name, label, path), path)
            for name, label, path in folder_entries(root)
        ]
        seen: dict[str, Path] = {}
        for name, _label, path in entries:
            # the result names the prompt: two files of one name could not be told apart
            if name in seen:
                raise ValueError(
                    f"prompt library: {seen[name]} and {path} have the same name {name!r} "
                    "(rename one)"
                )
            seen[name] = path
        lib = cls()
        for name, label, path in entries:
            prompt = lib.add(name, label, load_prompt_audio(path, max_s, max_bytes))
            voiced = sum(c is not None for c in prompt.codes[0])
            if voiced < MIN_PAIRS:
                raise ValueError(
                    f"prompt library: {path}: {voiced * FRAME_MS} ms of sound, too short to be "
                    f"recognised (needs {MIN_PAIRS * FRAME_MS} ms)"
                )
        lib.search_index()  # built here, once (the fork server's copy is shared by the workers)
        return lib

    def matcher(self, max_ber: float = 0.25) -> PromptMatcher:
        """A per-call matcher over this library."""
        return PromptMatcher(self, max_ber=max_ber)


# Bits flipped in the look-ups (2**N_WEAK probes per frame).
N_WEAK = 3
# Postings and vote keys are packed ints: prompt << 24 | alignment << 22 | frame (or the live
# frame's offset against it, biased by 2**21 so a call that joined a prompt late stays
# positive): a tuple per look-up costs more than the whole search.
_SUB_SHIFT = 22
_PID_SHIFT = 24
_K_MASK = (1 << _SUB_SHIFT) - 1
_OFF_BIAS = 1 << 21


def _posting(pid: int, sub: int, k: int) -> int:
    if not 0 <= k < _OFF_BIAS:
        raise ValueError("prompt too long to index (over 11 hours)")
    return (pid << _PID_SHIFT) | (sub << _SUB_SHIFT) | k


# Votes for one (prompt, alignment, offset) before it is verified.
MIN_VOTES = 3
# Frames with a code (sound) in both the call and the prompt that a verification compares at
# least: 0.9 s. A prompt with fewer can never be recognised, so loading one is an error.
MIN_PAIRS = 45
# Look codes up on every VOTE_EVERY-th frame (all frames are kept for verification). With 100
# prompts, 2 (and MIN_VOTES 2) takes the search from ~13 to ~8 µs per frame but misses 1 in 25
# prompts at 20 dB SNR, none at 1 (bench/dsp.py; a shared 2-core machine).
VOTE_EVERY = 1
_RING = 256  # live codes kept (frames): more than any verification window
_PENDING = -2  # a live frame's code not computed yet (see PromptMatcher.push)
_BACKS = np.arange(_RING, dtype=np.int64)
# Codes indexed more often than this (across prompts and alignments) are too common to tell
# prompts apart (steady vowels, noise-like frames): skipped, as in Haitsma & Kalker's search.
MAX_POSTINGS = 8


@dataclass(slots=True)
class PromptMatcher:
    """Streaming search of one call's audio in a :class:`PromptLibrary`.

    Feed it per frame with :meth:`push` (the detector's 40 ms power spectrum) or with
    :meth:`feed` (20 ms of audio). ``min_votes``: code hits at one offset before verifying;
    ``verify_frames``: live frames compared; ``max_ber``: accepted bit error rate.
    """

    lib: PromptLibrary
    min_votes: int = MIN_VOTES
    verify_frames: int = 60
    min_pairs: int = MIN_PAIRS
    max_ber: float = 0.25
    _ring: npt.NDArray[np.int32] = field(
        default_factory=lambda: np.full(_RING, -1, dtype=np.int32)
    )  # live codes by frame (-1: silent, _PENDING: not computed yet)
    # band energies by frame; the extra column takes reduceat's last range (above 3400 Hz)
    _bands: FloatArray = field(default_factory=lambda: np.zeros((_RING, N_BANDS + 1)))
    _ok: list[bool] = field(default_factory=lambda: [False] * _RING)  # frame had a level
    _n: int = 0  # frames pushed
    _votes: dict[int, list[int]] = field(default_factory=dict)  # key -> [n, last, first, checked]
    # the previous generation of votes: keys not voted for in two generations (2 × 2 ×
    # verify_frames) are dropped by swapping dicts, never by scanning them
    _old: dict[int, list[int]] = field(default_factory=dict)
    _prev: FloatArray = field(default_factory=lambda: np.zeros(FRAME_SAMPLES))
    done: PromptMatch | None = None
    _index: dict[int, tuple[tuple[int, int], ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index = self.lib.search_index()

    def feed(self, frame: FloatArray, t_ms: int | None = None) -> PromptMatch | None:
        """One 20 ms frame of 8 kHz float audio."""
        block = np.concatenate([self._prev, frame])
        self._prev = np.asarray(frame, dtype=np.float64)
        return self.push(spectrum(block), dbfs(frame))

    def push(self, power: FloatArray, level_dbfs: float, lookup: bool = True) -> PromptMatch | None:
        """One frame's 40 ms power spectrum and level; returns a match once (then None).

        ``lookup=False`` (the detector's VAD hears no speech in the frame): the frame is kept
        for verification but not searched for. Only its 17 band energies are stored; its code
        is computed when a lookup or a verification needs it (most frames never are)."""
        if self.done is not None or not self.lib.prompts:
            return None
        i = self._n
        j = i % _RING
        ok = level_dbfs >= SILENT_DBFS
        self._ok[j] = ok
        if not ok:
            self._advance(-1)
            return None
        np.add.reduceat(power, _BAND_STARTS, out=self._bands[j])
        if i < LAG or not self._ok[(i - LAG) % _RING]:
            self._advance(-1)  # no band differences 40 ms back: no code (as CodeStream)
            return None
        if not lookup or i % VOTE_EVERY:
            self._advance(_PENDING)
            return None
        # the rest on 2 × 17 plain floats: cheaper than numpy's per-call cost on arrays this size
        now, then = np.log10(self._bands[[j, (i - LAG) % _RING], :N_BANDS] + 1e-12).tolist()
        diff = [(now[b] - now[b + 1]) - (then[b] - then[b + 1]) for b in range(N_BITS)]
        code = 0
        for b, v in enumerate(diff):
            if v > 0.0:
                code |= 1 << b
        self._advance(code)
        return self._search(i, code, diff)

    def step(self, r: tuple[int, FloatArray] | None, lookup: bool = True) -> PromptMatch | None:
        """One frame's code and band-difference changes (from a :class:`CodeStream`), or None
        if silent. ``lookup``: search the index with it (else only keep it)."""
        if self.done is not None:
            return None
        i = self._advance(-1 if r is None else r[0])
        if r is None or not lookup or i % VOTE_EVERY:
            return None
        return self._search(i, *r)

    def _advance(self, code: int) -> int:
        i = self._n
        self._n += 1
        self._ring[i % _RING] = code
        if i % (2 * self.verify_frames) == 0:
            self._old, self._votes = self._votes, {}
        return i

    def _fill(self, frames: npt.NDArray[np.int64]) -> None:
        """Compute the codes of ``frames`` (stream frame numbers) still pending, at once."""
        j = frames % _RING
        pend = self._ring[j] == _PENDING
        if not pend.any():
            return
        jj = j[pend]
        e = np.log10(self._bands[jj, :N_BANDS] + 1e-12)
        ep = np.log10(self._bands[(frames[pend] - LAG) % _RING, :N_BANDS] + 1e-12)
        diff = (e[:, :-1] - e[:, 1:]) - (ep[:, :-1] - ep[:, 1:])
        self._ring[jj] = (diff > 0) @ _BIT_WEIGHTS

    def _search(self, i: int, code: int, diff: FloatArray | list[float]) -> PromptMatch | None:
        # the code and its variants with its least reliable bits flipped: noise flips the
        # bits whose band differences barely changed
        probes = [code]
        size = [abs(v) for v in (diff.tolist() if isinstance(diff, np.ndarray) else diff)]
        for w in sorted(range(N_BITS), key=size.__getitem__)[:N_WEAK]:
            bit = 1 << w
            probes += [c ^ bit for c in probes]
        best: int | None = None
        best_n = self.min_votes - 1
        index = self._index
        votes = self._votes
        old = self._old
        base = i + _OFF_BIAS
        for c in probes:
            postings = index.get(c)
            if postings is None:
                continue
            for hi, k in postings:
                # one int per (prompt, alignment, offset): the posting's prompt/alignment
                # bits and the biased offset of the live frame against the prompt's frame
                key = hi | ((base - k) & _K_MASK)
                v = votes.get(key)
                if v is None:
                    v = old.pop(key, None)
                    if v is None:
                        votes[key] = [1, i, i, 0]
                        continue
                    votes[key] = v
                if v[1] != i:
                    v[0] += 1
                    v[1] = i
                    # verify a candidate again only after two more votes for it
                    if v[0] > best_n and v[0] >= v[3] + 2:
                        best, best_n = key, v[0]
        if best is None:
            return None
        votes[best][3] = best_n
        return self._verify(best, i)

    def _verify(self, key: int, i: int) -> PromptMatch | None:
        pid, sub = key >> _PID_SHIFT, (key >> _SUB_SHIFT) & 3
        off = (key & _K_MASK) - _OFF_BIAS
        ref_all = self.lib.codes_array(pid, sub)
        backs = _BACKS[: min(self.verify_frames, i + 1)]
        ks = i - off - backs
        ok = (ks >= 0) & (ks < ref_all.size)
        self._fill(i - backs[ok])
        live = self._ring[(i - backs[ok]) % _RING]
        ref = ref_all[ks[ok]]
        both = (live >= 0) & (ref >= 0)
        pairs = int(both.sum())
        if pairs < self.min_pairs:
            return None
        ber = float(_POP[(live ^ ref)[both]].sum()) / (pairs * N_BITS)
        if ber > self.max_ber:
            return None
        p = self.lib.prompts[pid]
        first = self._votes[key][2]
        self.done = PromptMatch(
            p.name,
            p.label,
            (i + 1) * FRAME_MS,
            off * FRAME_MS,
            max(0, (first - off) * FRAME_MS),
            round(ber, 3),
        )
        return self.done


@dataclass(frozen=True, slots=True)
class RepeatMatch:
    """Audio heard after :meth:`RepeatDetector.mark` repeats audio heard before it."""

    decided_ms: int
    earlier_ms: int  # where in the stream the repeated audio was first heard
    ber: float


class RepeatDetector:
    """Looping IVR menus: after :meth:`mark` (digits sent), is the same prompt heard again?

    Feed 20 ms frames (:meth:`feed`) or the detector's spectra (:meth:`push`) for the whole
    IVR phase; call :meth:`mark` when DTMF is sent. The codes heard before the mark (up to
    ``history_ms``, of which ``min_ms`` voiced) become a one-prompt library; what follows is
    searched in it. Returns a :class:`RepeatMatch` once. Memory: one int per 20 ms.
    """

    def __init__(self, history_ms: int = 60_000, min_ms: int = 1000, max_ber: float = 0.25) -> None:
        self.history_frames = history_ms // FRAME_MS
        self.min_frames = min_ms // FRAME_MS
        self.max_ber = max_ber
        self._stream = CodeStream()
        self._codes: list[int | None] = []
        self._matcher: PromptMatcher | None = None
        self._n = 0
        self._history_start = 0
        self._prev = np.zeros(FRAME_SAMPLES)
        self.done: RepeatMatch | None = None

    def mark(self) -> bool:
        """Digits were sent now: index what was heard so far (and forget it). False when
        less than ``min_ms`` of it was voiced (nothing to compare with)."""
        codes, self._codes = self._codes, []
        self._history_start = self._n - len(codes)
        if sum(c is not None for c in codes) < self.min_frames:
            self._matcher = None
            return False
        lib = PromptLibrary()
        lib.prompts.append(Prompt("before-digits", "ivr", len(codes) * FRAME_MS, (tuple(codes),)))
        for k, c in enumerate(codes):
            if c is not None:
                lib.index.setdefault(c, []).append(_posting(0, 0, k))
        self._matcher = PromptMatcher(lib, max_ber=self.max_ber)
        return True

    def feed(self, frame: FloatArray) -> RepeatMatch | None:
        """One 20 ms frame of 8 kHz float audio."""
        block = np.concatenate([self._prev, frame])
        self._prev = np.asarray(frame, dtype=np.float64)
        return self.push(spectrum(block), dbfs(frame))

    def push(self, power: FloatArray, level_dbfs: float) -> RepeatMatch | None:
        """One frame's 40 ms power spectrum and level."""
        self._n += 1
        if self.done is not None:
            return None
        r = self._stream.push(power, level_dbfs)
        self._codes.append(None if r is None else r[0])
        if len(self._codes) > self.history_frames:
            del self._codes[0]
        m = self._matcher
        if m is None:
            return None
        hit = m.step(r)
        if hit is None:
            return None
        # the matcher's "prompt" is the history: joined_ms is where in it the repeat begins
        self.done = RepeatMatch(
            self._n * FRAME_MS, self._history_start * FRAME_MS + hit.joined_ms, hit.ber
        )
        return self.done


def label_result(label: str) -> tuple[str, str | None]:
    """(answered_by, hint) reported for a prompt with ``label``."""
    return LABEL_RESULTS.get(label, ("unknown", None))


def bits_flipped(a: Iterable[int | None], b: Iterable[int | None]) -> float:
    """Bit error rate between two code sequences over frames where both have a code."""
    errs = pairs = 0
    for x, y in zip(a, b, strict=False):
        if x is not None and y is not None:
            errs += int(_POP[x ^ y])
            pairs += 1
    return errs / (pairs * N_BITS) if pairs else math.nan
