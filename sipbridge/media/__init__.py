"""Media analysis for recipient detection — pure DSP (numpy + webrtcvad, no pjsua2/asyncio).

Modules:

* :mod:`~sipbridge.media.frames` — 8 kHz / 20 ms frame constants, PCM16 <-> float, dBFS,
  G.711 µ-law/A-law codecs, resampling.
* :mod:`~sipbridge.media.tones` — Goertzel bank and 40 ms Hann spectral features, tone runs,
  SIT decoder (Telcordia codes + ITU), call-progress cadences (US/UK/425/440), fax CNG/CED.
* :mod:`~sipbridge.media.vad` — webrtcvad + minimum-statistics noise floor + hysteresis.
* :mod:`~sipbridge.media.detect` — :class:`~sipbridge.media.detect.Detector` (streaming,
  ``feed()`` 20 ms frames) producing :class:`~sipbridge.media.detect.Detection` results;
  thresholds in :class:`~sipbridge.media.detect.DetectionConfig`.
* :mod:`~sipbridge.media.analyze` — offline ``sipbridge analyze FILE.wav`` (``analyze_main``).

IVR vs voicemail: both are recorded speech; the signal only separates them by what follows the
greeting. A beep → ``machine``; the machine speaking again after a long pause (menu prompts) →
``ivr``; greeting then silence with no beep → ``machine`` with ``ivr_hint=True`` (a beep-less
voicemail and an IVR waiting for DTMF are indistinguishable from audio alone).
"""
