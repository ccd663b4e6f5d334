"""Media analysis for recipient detection — pure DSP (numpy + webrtcvad, no pjsua2/asyncio).

Modules:

* :mod:`~sipbridge.media.frames` — 8 kHz / 20 ms frame constants, PCM16 <-> float, dBFS,
  G.711 µ-law/A-law codecs, resampling.
* :mod:`~sipbridge.media.tones` — 40 ms Hann spectral features and the Goertzel bank, tone
  runs, fax CNG/CED; :mod:`~sipbridge.media.sit` (SIT decoder, dropout-tolerant) and
  :mod:`~sipbridge.media.cadence` (call-progress cadences as whole-cycle templates).
* :mod:`~sipbridge.media.vad` — webrtcvad + minimum-statistics noise floor + hysteresis.
* :mod:`~sipbridge.media.answer_rules` — the detector's answer-mode rules (human, machine, IVR,
  operator, screening) from the greeting's timing and the line's floor;
* :mod:`~sipbridge.media.liveness` — live voice or recording (noise floor under the speech),
  question intonation at a greeting's end.
* :mod:`~sipbridge.media.promptlib` — prompt library (known prompts by fingerprint) and the
  looping-menu repeat detector.
* :mod:`~sipbridge.media.detect` — :class:`~sipbridge.media.detect.Detector` (streaming,
  ``feed()`` 20 ms frames) producing :class:`~sipbridge.media.result.Detection` results;
  thresholds in :class:`~sipbridge.media.thresholds.DetectionConfig`.
* :mod:`~sipbridge.media.hold` — the IVR hold step's live-person listener (thresholds in
  :mod:`~sipbridge.media.hold_config`, prompt matching in :mod:`~sipbridge.media.match`).
* :mod:`~sipbridge.media.analyze` — offline ``sipbridge analyze FILE.wav`` (``analyze_main``),
  with :mod:`~sipbridge.media.plot` for ``--plot``.

IVR vs voicemail: both are recorded speech; the signal only separates them by what follows the
greeting. A beep → ``machine``; the machine speaking again after a long pause (menu prompts) →
``ivr``; greeting then silence with no beep → ``machine`` with ``ivr_hint=True`` (a beep-less
voicemail and an IVR waiting for DTMF are indistinguishable from audio alone).
"""
