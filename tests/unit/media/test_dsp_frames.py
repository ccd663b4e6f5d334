"""PCM/dBFS helpers, G.711 codecs and resampling."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.media.frames import (
    alaw_decode,
    alaw_encode,
    dbfs,
    float_to_pcm16,
    pcm16_to_float,
    resample,
    rfft,
    scale_to_dbfs,
    ulaw_decode,
    ulaw_encode,
)

Encode = Callable[[npt.ArrayLike], npt.NDArray[Any]]
Decode = Callable[[npt.ArrayLike], npt.NDArray[Any]]


def test_dbfs_full_scale_sine_is_zero() -> None:
    t = np.arange(8000) / 8000
    assert dbfs(np.sin(2 * np.pi * 1000 * t)) == pytest.approx(0.0, abs=0.01)
    assert dbfs(0.1 * np.sin(2 * np.pi * 1000 * t)) == pytest.approx(-20.0, abs=0.01)
    assert dbfs(np.zeros(160)) == -100.0


def test_pcm_roundtrip_bytes() -> None:
    x = np.array([0, 1, -1, 32767, -32768, 1234], dtype=np.int16)
    f = pcm16_to_float(x.tobytes())
    assert np.array_equal(float_to_pcm16(f), x)
    with pytest.raises(ValueError):
        pcm16_to_float(b"\x00\x01\x02")


@pytest.mark.parametrize("enc,dec", [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)])
def test_g711_codes_are_fixed_points(enc: Encode, dec: Decode) -> None:
    codes = np.arange(256, dtype=np.uint8)
    lin = dec(codes)
    assert np.array_equal(dec(enc(lin)), lin)
    assert len(set(lin.tolist())) >= 255  # µ-law has +0/-0, A-law none


@pytest.mark.parametrize("enc,dec", [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)])
def test_g711_error_bounds(enc: Encode, dec: Decode) -> None:
    x = np.arange(-32124, 32124, 7, dtype=np.int16)  # inside both codecs' clip level
    y = dec(enc(x)).astype(np.int64)
    xi = x.astype(np.int64)
    err = np.abs(y - xi)
    big = np.abs(xi) > 256
    # logarithmic quantisation: error below ~1/16 (µ-law) / 1/32 (A-law) of the magnitude + step
    assert np.all(err[big] <= np.abs(xi[big]) / 15 + 8)
    assert np.all(err[~big] <= 16)


@pytest.mark.parametrize("enc,dec", [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)])
def test_g711_sine_snr(enc: Encode, dec: Decode) -> None:
    t = np.arange(8000) / 8000
    x = float_to_pcm16(0.3 * np.sin(2 * np.pi * 1004 * t))
    y = dec(enc(x)).astype(np.float64)
    snr = 10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum((y - x) ** 2))
    assert snr > 33  # G.711 gives ~38 dB SNR for mid-level signals


def test_g711_known_values() -> None:
    assert ulaw_encode(np.array([0], dtype=np.int16))[0] == 0xFF
    assert alaw_encode(np.array([0], dtype=np.int16))[0] == 0xD5
    assert ulaw_decode(bytes([0x00]))[0] == -32124
    assert alaw_decode(bytes([0x55]))[0] == -8


@settings(max_examples=30, deadline=None)
@given(st.floats(300, 3000), st.sampled_from([16000, 11025, 22050, 44100, 48000]))
def test_resample_preserves_frequency(f: float, rate: int) -> None:
    t = np.arange(rate // 2) / rate
    y = resample(np.sin(2 * np.pi * f * t), rate, 8000)
    assert y.size == 4000
    spec = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    assert abs(np.argmax(spec) * 8000 / y.size - f) <= 2.5
    assert dbfs(y) == pytest.approx(0.0, abs=0.3)


def test_scale_to_dbfs() -> None:
    x = np.random.default_rng(1).standard_normal(8000)
    assert dbfs(scale_to_dbfs(x, -27.0)) == pytest.approx(-27.0, abs=1e-6)


@pytest.mark.parametrize("n", [320, 640, 321, 2])
def test_rfft_is_numpys(n: int) -> None:
    x = np.random.default_rng(n).standard_normal(n)
    assert np.allclose(rfft(x), np.fft.rfft(x), rtol=1e-12, atol=1e-9)
