"""The ``media:`` section: the folder of audio files the API and the config may name, and the
prompt library inside it with its per-file limits. Validated like the rest of the config
(:mod:`sipbridge.config`); the library itself is loaded and checked there.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from sipbridge.callsettings import StrictModel
from sipbridge.media.promptfiles import PROMPT_MAX_BYTES, PROMPT_MAX_S


class MediaConfig(StrictModel):
    # Folder of the audio files the API and the config may name (detection.message_wav):
    # a name is a file in this folder, never a path.
    dir: str | None = None
    # A prompt library (sipbridge.media.promptlib: labels.json or one sub-folder per label),
    # a folder name inside `dir`; loaded and checked at start-up, used by every detector.
    prompt_dir: Annotated[str, Field(max_length=255)] | None = None
    # Each prompt WAV's limits (defaults argued in sipbridge/media/promptfiles.py): a longer
    # or larger file is refused naming it. The workers load the library with the same ones.
    prompt_max_s: Annotated[float, Field(ge=1, le=600)] = PROMPT_MAX_S
    prompt_max_bytes: Annotated[int, Field(ge=1024, le=1024**3)] = PROMPT_MAX_BYTES


__all__ = ["MediaConfig"]
