"""Compile once per machine, not once per process: JAX's persistent compilation cache in the user's
cache folder.

Every alloop command is a fresh process, and each used to compile the same XLA programs again (the
SGDF epoch, the CV solves, the scorers): most of a small round's time. ``enable()`` points JAX's own
persistent cache at

    $ALLOOP_CACHE_DIR/jax, else $XDG_CACHE_HOME/alloop/jax, else ~/.cache/alloop/jax

and caches every compiled program, however small or quick to compile (JAX's defaults skip programs
that compiled in under a second). ``ALLOOP_NO_CACHE=1`` turns it off (the test suite does, so tests
never write into a user's home).

Correctness: an entry is found by JAX's cache key, a hash of the program's StableHLO (so every
shape, dtype and constant of the traced function), the compile options, the XLA flags, the backend
and device kind, and the jaxlib version. A change of shapes (more labels, another model), of
alloop's code that changes a traced program, or of the JAX/XLA version gives another key, so a wrong
entry is never reused; a stale entry is simply never hit again. A cache hit loads the executable XLA
compiled before, so the results are bit-identical to compiling anew (tests/test_round_trip.py checks
that query files are byte-identical with and without the cache). A damaged or unreadable entry makes
JAX warn and compile as if it were absent.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

NO_CACHE_ENV = "ALLOOP_NO_CACHE"
DIR_ENV = "ALLOOP_CACHE_DIR"

_enabled: Path | None = None


def cache_root() -> Path | None:
    """alloop's cache folder ($ALLOOP_CACHE_DIR, else $XDG_CACHE_HOME/alloop, else ~/.cache/alloop),
    or None when ``$ALLOOP_NO_CACHE`` is set (to anything but "" or "0"). Compiled programs go to
    its ``jax`` folder, the pools' features (``io/feature_cache.py``) to ``pools``."""
    if os.environ.get(NO_CACHE_ENV, "") not in ("", "0"):
        return None
    if os.environ.get(DIR_ENV):
        return Path(os.environ[DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "alloop"


def cache_dir() -> Path | None:
    """Where the compiled programs are cached, or None when the cache is off."""
    root = cache_root()
    return None if root is None else root / "jax"


def enable() -> Path | None:
    """Point JAX's persistent compilation cache at ``cache_dir()`` (once per process); the folder,
    or None.

    Before JAX is imported it only sets JAX's environment variables (importing nothing); after, it
    updates JAX's config, which covers every compilation from then on. Later calls are free. A
    folder that cannot be created leaves the cache off (alloop works the same, only slower).
    """
    global _enabled
    if _enabled is not None:
        return _enabled
    where = cache_dir()
    if where is None:
        return None
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    settings = {
        "jax_compilation_cache_dir": str(where),
        # alloop's programs compile in 0.05-1 s each: cache them all
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": -1,  # every entry, however small
    }
    if "jax" in sys.modules:  # too late for the environment: set them on the live config
        import jax

        for key, value in settings.items():
            jax.config.update(key, value)
    else:  # JAX reads these when it is imported; a command that never needs JAX never imports it
        for key, value in settings.items():
            os.environ[key.upper()] = str(value)
    _enabled = where
    return where
