"""Audio frame constants and conversions: PCM16 <-> float, dBFS, G.711 µ-law/A-law, resampling.

Everything here is pure numpy (no pjsua2, no asyncio) so it can run in SIP workers, in the
offline ``analyze`` tool and in tests alike.

Level convention: dBFS follows AES17 — a full-scale sine (peak 1.0) is 0 dBFS, so
``dbfs = 10*log10(2 * mean(x**2))`` for ``x`` in [-1, 1).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 8000
"""Narrowband telephony sample rate (Hz) used by all detectors."""
FRAME_MS = 20
"""Frame length in milliseconds (the usual RTP packetisation time)."""
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 160
"""Samples per frame."""
FRAME_BYTES = FRAME_SAMPLES * 2  # 320 (int16 little-endian)
"""Bytes per frame of 16-bit little-endian linear PCM."""
SILENCE_DBFS = -100.0
"""Level reported for digital silence."""

FloatArray = npt.NDArray[np.float64]
Int16Array = npt.NDArray[np.int16]
UInt8Array = npt.NDArray[np.uint8]

_INV_FS = 1.0 / 32768.0

try:  # numpy >= 2: the pocketfft ufunc behind np.fft.rfft, without its ~3 µs of Python checks
    from numpy.fft import _pocketfft_umath as _pfu  # type: ignore[attr-defined]

    _RFFT_EVEN = _pfu.rfft_n_even
except (ImportError, AttributeError):  # pragma: no cover - other numpy versions
    _RFFT_EVEN = None


def rfft(x: FloatArray) -> npt.NDArray[np.complex128]:
    """``np.fft.rfft(x)`` of a 1-D float64 block of even length (the per-frame spectra)."""
    if _RFFT_EVEN is None or x.size % 2 or x.ndim != 1:
        return np.fft.rfft(x)
    out = np.empty(x.size // 2 + 1, dtype=np.complex128)
    return _RFFT_EVEN(x, 1.0, axes=[(0,), (), (0,)], out=out)


def rfft_into(x: FloatArray, out: npt.NDArray[np.complex128]) -> npt.NDArray[np.complex128]:
    """:func:`rfft` of a 1-D float64 block of even length into ``out`` (``x.size // 2 + 1``
    complex values): the per-frame hot path, without allocating or checking arguments."""
    if _RFFT_EVEN is None:  # pragma: no cover - other numpy versions
        out[:] = np.fft.rfft(x)
        return out
    return _RFFT_EVEN(x, 1.0, out=out)


def pcm16_to_float(data: bytes | bytearray | memoryview | npt.NDArray[np.generic]) -> FloatArray:
    """Convert little-endian int16 PCM bytes (or an int16/float array) to float64 in [-1, 1).

    A float array is returned as float64 unchanged in scale (assumed already in [-1, 1)).
    """
    if isinstance(data, bytes | bytearray | memoryview):
        if len(data) % 2:
            raise ValueError(f"PCM16 data must have an even number of bytes, got {len(data)}")
        return np.frombuffer(data, dtype="<i2").astype(np.float64) * _INV_FS
    arr = np.asarray(data)
    if arr.dtype == np.int16:
        return arr.astype(np.float64) * _INV_FS
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float64, copy=False)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float64) * _INV_FS
    raise TypeError(f"unsupported sample dtype {arr.dtype}")


def float_to_pcm16(x: npt.ArrayLike) -> Int16Array:
    """Convert float samples in [-1, 1) to int16, clipping out-of-range values."""
    y = np.round(np.asarray(x, dtype=np.float64) * 32768.0)
    return np.clip(y, -32768, 32767).astype(np.int16)


def dbfs(x: FloatArray) -> float:
    """Level of float samples in dBFS (full-scale sine = 0 dBFS); -100 for digital silence."""
    if x.size == 0:
        return SILENCE_DBFS
    p = 2.0 * float(np.dot(x, x)) / x.size
    if p <= 1e-10:
        return SILENCE_DBFS
    return 10.0 * math.log10(p)


def scale_to_dbfs(x: FloatArray, level_dbfs: float) -> FloatArray:
    """Return ``x`` scaled so that its overall level is ``level_dbfs``."""
    cur = dbfs(x)
    if cur <= SILENCE_DBFS:
        return x.copy()
    return np.asarray(x * 10.0 ** ((level_dbfs - cur) / 20.0), dtype=np.float64)


# --- G.711 (ITU-T G.711, same bit layout as the classic Sun g711.c reference) -------------------

_SEG_UEND = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_SEG_AEND = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)
_ULAW_BIAS = 0x84


def _as_int32(pcm: npt.ArrayLike) -> npt.NDArray[np.int32]:
    arr = np.asarray(pcm)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError("G.711 encoders take int16 samples; use float_to_pcm16() first")
    return arr.astype(np.int32)


def ulaw_encode(pcm: npt.ArrayLike) -> UInt8Array:
    """Encode int16 samples to G.711 µ-law bytes (as a uint8 array)."""
    v = _as_int32(pcm) >> 2
    neg = v < 0
    v = np.where(neg, -v, v)
    mask = np.where(neg, 0x7F, 0xFF)
    v = np.minimum(v, 8159) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_SEG_UEND, v, side="left")
    uval = (seg << 4) | ((v >> (seg + 1)) & 0xF)
    uval = np.where(seg >= 8, 0x7F, uval)
    return ((uval ^ mask) & 0xFF).astype(np.uint8)


def _ulaw_table() -> Int16Array:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = ((u & 0x0F) << 3) + _ULAW_BIAS
    t = t << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _alaw_table() -> Int16Array:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


_ULAW_DECODE = _ulaw_table()
_ALAW_DECODE = _alaw_table()


def ulaw_decode(data: bytes | npt.ArrayLike) -> Int16Array:
    """Decode G.711 µ-law bytes to int16 samples."""
    idx = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else np.asarray(data)
    return _ULAW_DECODE[idx.astype(np.intp)]


def alaw_encode(pcm: npt.ArrayLike) -> UInt8Array:
    """Encode int16 samples to G.711 A-law bytes (as a uint8 array)."""
    v = _as_int32(pcm) >> 3
    pos = v >= 0
    mask = np.where(pos, 0xD5, 0x55)
    v = np.where(pos, v, -v - 1)
    seg = np.searchsorted(_SEG_AEND, v, side="left")
    shift = np.where(seg < 2, 1, seg)
    aval = (seg << 4) | ((v >> shift) & 0xF)
    aval = np.where(seg >= 8, 0x7F, aval)
    return ((aval ^ mask) & 0xFF).astype(np.uint8)


def alaw_decode(data: bytes | npt.ArrayLike) -> Int16Array:
    """Decode G.711 A-law bytes to int16 samples."""
    idx = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else np.asarray(data)
    return _ALAW_DECODE[idx.astype(np.intp)]


def resample(x: FloatArray, rate_in: int, rate_out: int = SAMPLE_RATE) -> FloatArray:
    """Band-limited resampling of a whole signal via FFT (offline use: files, corpus).

    Spectral truncation/zero-padding; when downsampling everything above the new Nyquist is
    removed, which is the anti-alias filter. Cost O(n log n) on the whole signal.
    """
    if rate_in <= 0 or rate_out <= 0:
        raise ValueError(f"sample rates must be positive, got {rate_in} -> {rate_out}")
    if rate_in == rate_out or x.size == 0:
        return np.asarray(x, dtype=np.float64)
    n_in = x.size
    n_out = max(1, round(n_in * rate_out / rate_in))
    spec = np.fft.rfft(x)
    keep = min(spec.size, n_out // 2 + 1)
    out_spec = np.zeros(n_out // 2 + 1, dtype=np.complex128)
    out_spec[:keep] = spec[:keep]
    y = np.fft.irfft(out_spec, n_out) * (n_out / n_in)
    return np.asarray(y, dtype=np.float64)
