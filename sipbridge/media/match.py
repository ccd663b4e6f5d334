"""Level-invariant matching of band-energy fingerprints (recorded prompts heard again).

Each 20 ms frame is summarised by 12 log band energies over 300–3400 Hz (:data:`N_BANDS`,
:func:`band_matrix` on a 40 ms, 25 Hz-bin power spectrum), clamped from below
(:func:`clamp_bands`). :func:`best_match` slides a template over a history and returns the best
min(envelope correlation, spectral-shape correlation): a replay of the same recording matches
both, other speech or music at most one.
"""

from __future__ import annotations

import math

import numpy as np

from sipbridge.media.frames import FRAME_SAMPLES, SAMPLE_RATE, FloatArray

BLOCK = 2 * FRAME_SAMPLES  # 40 ms analysis block, 25 Hz bins
BIN_HZ = SAMPLE_RATE / BLOCK
LO_BIN = math.ceil(300 / BIN_HZ)  # 12
HI_BIN = math.floor(3400 / BIN_HZ)  # 136
N_BANDS = 12


def band_matrix() -> FloatArray:
    """(bins, bands) summing 25 Hz power bins into 12 log-spaced bands over 300–3400 Hz."""
    edges = np.geomspace(300.0, 3400.0, N_BANDS + 1)
    hz = np.arange(LO_BIN, HI_BIN + 1) * BIN_HZ
    m = np.zeros((hz.size, N_BANDS))
    for b in range(N_BANDS):
        m[(hz >= edges[b]) & (hz < edges[b + 1]), b] = 1.0
    m[-1, -1] = 1.0
    return m


def clamp_bands(bands_db: FloatArray, floor_db: float) -> FloatArray:
    """Fingerprint frame: band levels (dB) lifted to at most ``floor_db`` below the frame's
    strongest band (weak bands carry line noise, not the recording)."""
    return np.maximum(bands_db, max(float(bands_db.max()) - floor_db, -100.0))


def _sliding_pearson(template: FloatArray, history: FloatArray) -> FloatArray:
    """Pearson correlation of ``template`` (n × k) with every n-frame window of ``history``
    (m × k), over the flattened window (each window mean-removed); NaN where the window's
    variance differs from the template's by more than 10× (silence, steady noise)."""
    n, k = template.shape
    t = template - template.mean()
    tv = float(np.sum(t * t))
    m = history.shape[0]
    if tv <= 1e-9:
        return np.full(m - n + 1, np.nan)
    num = np.zeros(m - n + 1)
    for b in range(k):
        num += np.correlate(history[:, b], t[:, b], mode="valid")
    r = np.concatenate([[0.0], np.cumsum(history.sum(axis=1))])
    q = np.concatenate([[0.0], np.cumsum(np.einsum("ij,ij->i", history, history))])
    sw = r[n:] - r[:-n]
    var = (q[n:] - q[:-n]) - sw * sw / (n * k)
    ok = (var > 0.1 * tv) & (var < 10.0 * tv)
    out = np.full(m - n + 1, np.nan)
    out[ok] = num[ok] / np.sqrt(var[ok] * tv)
    return out


def best_match(template: FloatArray, history: FloatArray) -> float:
    """How well ``template`` (frames × bands, dB) matches some earlier stretch of ``history``.

    Two correlations at the same time shift, both level-invariant: the *envelope* (per-frame
    mean band level: syllable rhythm) and the *spectral shape* (bands minus the frame mean:
    formant trajectories). A replay of the same recording matches both; music, another
    voice or other words match at most one (a fade matches an onset's envelope; a steady
    chord has one shape). Returns the best min(envelope, shape) over shifts, or -1."""
    n = template.shape[0]
    if history.shape[0] < n or n < 4:
        return -1.0
    env_t = template.mean(axis=1, keepdims=True)
    env_h = history.mean(axis=1, keepdims=True)
    env = _sliding_pearson(env_t, env_h)
    shape = _sliding_pearson(template - env_t, history - env_h)
    both = np.fmin(env, shape)
    if np.all(np.isnan(both)):
        return -1.0
    return float(np.nanmax(both))
