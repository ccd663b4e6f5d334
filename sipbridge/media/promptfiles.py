"""The prompt library's folder (``media.prompt_dir``), read as hostile input: which WAVs it
holds and under which label, each label checked against the known set and each WAV bounded in
bytes and duration before it is decoded. Errors are ``ValueError`` naming the file.

Layout: either ``labels.json`` mapping WAV file names to labels, or one sub-folder per label
(``not_in_service/acme-intercept.wav``). WAVs of any encoding that
:func:`~sipbridge.media.analyze.read_wav` reads, at 8 kHz or more (resampled to 8 kHz), mono
or with their channels averaged (record a prompt alone: a two-leg call recording in two
channels would be mixed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sipbridge.media.frames import SAMPLE_RATE, FloatArray

# Labels a deployer may give prompts, and what the detector reports for them (answered_by,
# hint). ``unknown`` names the prompt in the result and applies no action.
LABEL_RESULTS: dict[str, tuple[str, str | None]] = {
    "not_in_service": ("sit", None),  # a spoken intercept: the same outcome as SIT IC
    "intercept": ("sit", None),
    "screening": ("human", "screening"),
    "operator": ("human", "operator"),
    "human": ("human", None),
    "ivr": ("ivr", None),
    "machine": ("machine", None),
    "voicemail": ("machine", None),
    "unknown": ("unknown", None),
}
MAX_LABEL_CHARS = 64
MAX_NAME_CHARS = 128  # a prompt's name: its file name without the extension
# Longest prompt loaded (media.prompt_max_s). The matcher recognises a prompt from about a
# second of it, anywhere in it (a call that joins late), so only the part a call can meet
# matters: carrier intercepts run 5-15 s, screening assistants' greetings 5-9 s, IVR main
# menus up to ~45 s. The index costs memory and start-up time per second of prompt (each
# frame at four alignments): a minute of sound (every frame coded) keeps ~4 MB and takes ~2 s
# of CPU to index (measured here, a shared 2-core machine), in the fork server and every
# worker. 60 s covers any real prompt; an hour-long file dropped in by mistake (~240 MB,
# two minutes of start-up) is refused instead of indexed.
PROMPT_MAX_S = 60.0
# Largest WAV file read (media.prompt_max_bytes), checked before it is opened: 60 s at
# 96 kHz, 24-bit stereo is 35 MB (at 8 kHz, 16-bit mono 1 MB); 64 MiB leaves room for
# metadata chunks. The audio is mapped, not read, and only prompt_max_s of it is decoded;
# the byte cap bounds what a hostile file (a 2 GB WAV, endless chunks) can make us walk.
PROMPT_MAX_BYTES = 64 * 1024 * 1024


def normalise_label(label: str) -> str:
    """A label as the library keys it: case, surrounding blanks and ``-`` or inner blanks
    (for ``_``) do not change its meaning (``Not-In-Service`` is ``not_in_service``)."""
    return "_".join(label.strip().lower().replace("-", " ").split())


def known_label(label: str, where: str) -> str:
    """``label`` normalised; ``ValueError`` naming ``where`` (the file) if it is not one of
    :data:`LABEL_RESULTS` (a typo used to report every match as ``unknown``, silently)."""
    norm = normalise_label(label)
    if norm not in LABEL_RESULTS:
        raise ValueError(
            f"{where}: unknown label {label[:80]!r} (known: {', '.join(LABEL_RESULTS)})"
        )
    return norm


def is_wav(p: Path) -> bool:
    return p.suffix.lower() == ".wav"


def folder_entries(root: Path) -> list[tuple[str, str, Path]]:
    """(name, label as written, path) of every prompt in ``root``; ``ValueError`` for a bad
    labels file, a path outside the folder, a WAV beside the label folders, or none."""
    if not root.is_dir():
        raise ValueError(f"prompt library {root}: not a folder")
    entries: list[tuple[str, str, Path]] = []
    labels_file = root / "labels.json"
    if labels_file.exists():
        try:
            raw = json.loads(labels_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{labels_file}: not a JSON object of file -> label ({e})") from None
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in raw.items()
        ):
            raise ValueError(f"{labels_file}: must map WAV file names to label strings")
        for fname, label in sorted(raw.items()):
            path = (root / fname).resolve()
            if root.resolve() not in path.parents:
                raise ValueError(f"{labels_file}: {fname!r} is outside the library folder")
            entries.append((Path(fname).stem, label, path))
    else:
        loose = sorted(p.name for p in root.iterdir() if p.is_file() and is_wav(p))
        if loose:  # a WAV beside the label folders would be silently ignored
            raise ValueError(
                f"prompt library {root}: {', '.join(loose[:3])} not in a label sub-folder "
                "(put each WAV in one sub-folder per label, or list it in labels.json)"
            )
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            for wav in sorted(p for p in sub.iterdir() if p.is_file() and is_wav(p)):
                entries.append((wav.stem, sub.name, wav))
    if not entries:
        raise ValueError(
            f"prompt library {root}: no prompts (labels.json, or WAVs in one sub-folder per label)"
        )
    return entries


def check_entry(name: str, label: str, path: Path) -> str:
    """The entry's label, normalised; ``ValueError`` naming the file for a name or label
    that is not printable or too long, or a label not in :data:`LABEL_RESULTS`."""
    # a name and a label end up in statuses, CDRs, reasons and logs: printable, short
    if len(label) > MAX_LABEL_CHARS or not label.isprintable():
        raise ValueError(
            f"prompt library: {path}: label {label[:80]!r} must be printable and at "
            f"most {MAX_LABEL_CHARS} characters"
        )
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise ValueError(
            f"prompt library: {str(path)[:300]!r}: name {name[:80]!r} must be "
            f"printable and at most {MAX_NAME_CHARS} characters"
        )
    return known_label(label, f"prompt library: {path}")


def load_prompt_audio(
    path: Path, max_s: float = PROMPT_MAX_S, max_bytes: int = PROMPT_MAX_BYTES
) -> FloatArray:
    """A prompt's WAV as 8 kHz mono samples; ``ValueError`` naming the file when it is
    larger than ``max_bytes``, longer than ``max_s`` (decoding stops just past it), below
    8 kHz, or not a WAV that can be read."""
    from sipbridge.media.analyze import AudioFormatError, read_wav
    from sipbridge.media.frames import resample

    try:
        size = os.stat(path).st_size
    except OSError as e:
        raise ValueError(f"prompt library: {path}: cannot read: {e.strerror or e}") from None
    if size > max_bytes:
        raise ValueError(
            f"prompt library: {path}: {size} bytes, over the {max_bytes}-byte limit "
            "(media.prompt_max_bytes)"
        )
    try:
        x, rate = read_wav(path, max_s + 0.1)
    except AudioFormatError as e:
        raise ValueError(f"prompt library: {e}") from None
    if rate < SAMPLE_RATE:
        # the fingerprint reads 300-3400 Hz: a narrower recording lacks its top bands
        raise ValueError(
            f"prompt library: {path}: sample rate {rate} Hz, below {SAMPLE_RATE} Hz "
            "(the fingerprint needs the whole telephone band, up to 3400 Hz)"
        )
    if x.size > max_s * rate:
        raise ValueError(
            f"prompt library: {path}: longer than {max_s:g} s (media.prompt_max_s; about "
            "a second of a prompt is enough to recognise it)"
        )
    return resample(x, rate, SAMPLE_RATE) if rate != SAMPLE_RATE else x


__all__ = [
    "LABEL_RESULTS",
    "MAX_LABEL_CHARS",
    "MAX_NAME_CHARS",
    "PROMPT_MAX_BYTES",
    "PROMPT_MAX_S",
    "check_entry",
    "folder_entries",
    "is_wav",
    "known_label",
    "load_prompt_audio",
    "normalise_label",
]
