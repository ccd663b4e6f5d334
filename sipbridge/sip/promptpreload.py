"""The prompt library (``media.prompt_dir``) loaded once, in the SIP workers' fork server.

Loading a library reads every WAV and fingerprints it (about 0.3 s of CPU for 100 prompts
here). Loaded lazily in each worker (:func:`sipbridge.sip.tap.prompt_library`), that cost
lands on each worker's first call with detection, the first call of every worker an
elastic pool adds included, and each worker keeps its own copy. Loaded in the fork server
instead, every worker forked from it finds the library in its cache at once and shares
its pages copy-on-write.

The supervisor names the folder in :data:`PRELOAD_ENV` before the pool starts its first
worker (the fork server starts then, with the supervisor's environment); the fork server
imports this module among its preloads (:func:`sipbridge.sip.forkserver.worker_context`)
and loads it. A folder that cannot be loaded is left to the lazy path (which logs nothing
and runs without a library, as it always did: the config check at start-up already
refused a broken folder). A fork server started earlier in the same process (tests) keeps
what it preloaded; a different folder is then loaded lazily, as before.
"""

from __future__ import annotations

import os

from sipbridge.sip.forkserver_init import in_fork_server

PRELOAD_ENV = "SIPBRIDGE_PRELOAD_PROMPTS"
# Its per-WAV limits, "max_s,max_bytes" (media.prompt_max_s, prompt_max_bytes): the calls'
# plans carry the same ones, so the worker finds the library under the key it looks up.
LIMITS_ENV = "SIPBRIDGE_PRELOAD_PROMPT_LIMITS"


def request_preload(folder: str | None, limits: tuple[float, int] | None = None) -> None:
    """Supervisor: have the fork server load ``folder`` with ``limits`` (None: nothing)."""
    if folder:
        os.environ[PRELOAD_ENV] = folder
    else:
        os.environ.pop(PRELOAD_ENV, None)
    if folder and limits is not None:
        os.environ[LIMITS_ENV] = f"{limits[0]!r},{limits[1]}"
    else:
        os.environ.pop(LIMITS_ENV, None)


def _limits() -> list[float | int] | None:
    raw = os.environ.get(LIMITS_ENV, "")
    max_s, _, max_bytes = raw.partition(",")
    try:
        return [float(max_s), int(max_bytes)]
    except ValueError:
        return None


def preload() -> bool:
    """Fork server: load the requested library into the worker's cache; True if loaded."""
    folder = os.environ.get(PRELOAD_ENV)
    if not folder:
        return False
    from sipbridge.sip.tap import prompt_library

    return prompt_library(folder, _limits()) is not None


if in_fork_server():
    preload()


__all__ = ["LIMITS_ENV", "PRELOAD_ENV", "preload", "request_preload"]
