"""Media files named by the API or the config (``detection.message_wav``).

A caller names a *file in the configured media folder* (``media.dir``), never a path: no
directory part, no ``..``, no hidden file, no control characters; the file must exist,
be a regular file, and resolve (symlinks followed) inside the folder. Pure logic plus
``stat``; no SIP stack.
"""

from __future__ import annotations

import re
from pathlib import Path

from sipbridge.errors import MediaFileError

# A plain file name: letters, digits and - _ . + (no separators, no spaces), not hidden.
_NAME_RE = re.compile(r"^[A-Za-z0-9_+\-][A-Za-z0-9_+\-.]{0,254}$")


def check_media_name(name: str, field: str = "message_wav") -> str:
    """Refuse anything that is not a plain file name (before touching the file system)."""
    if not _NAME_RE.match(name) or name in (".", ".."):
        raise MediaFileError(
            field,
            f"{name[:80]!r} is not a file name in the media folder (letters, digits, "
            "- _ . + only; no '/', no '..', not starting with '.')",
        )
    return name


def media_path(media_dir: str | None, name: str, field: str = "message_wav") -> Path:
    """The file ``name`` inside ``media_dir``, checked; :class:`MediaFileError` otherwise."""
    check_media_name(name, field)
    if not media_dir:
        raise MediaFileError(field, "no media folder is configured (set media.dir)")
    root = Path(media_dir).resolve()
    path = (root / name).resolve()
    if path.parent != root:  # a symlink leading out of the folder
        raise MediaFileError(field, f"{name!r} leads outside the media folder")
    if not path.is_file():
        raise MediaFileError(field, f"file {name!r} does not exist in the media folder")
    return path


def media_folder(media_dir: str | None, name: str, field: str = "prompt_dir") -> Path:
    """The sub-folder ``name`` of ``media_dir``, checked like a file name."""
    check_media_name(name, field)
    if not media_dir:
        raise MediaFileError(field, "no media folder is configured (set media.dir)")
    root = Path(media_dir).resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise MediaFileError(field, f"{name!r} leads outside the media folder")
    if not path.is_dir():
        raise MediaFileError(field, f"folder {name!r} does not exist in the media folder")
    return path


__all__ = ["MediaFileError", "check_media_name", "media_folder", "media_path"]
