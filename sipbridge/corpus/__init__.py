"""Generated, labelled audio corpora for testing and tuning recipient detection.

:mod:`~sipbridge.corpus.detection` (answer and early-media classes) and
:mod:`~sipbridge.corpus.hold` (the IVR hold step), built from :mod:`~sipbridge.corpus.synth`.
A development tool: ``sipbridge corpus {detection,hold} DIR``; speech needs ``espeak-ng``.
"""
