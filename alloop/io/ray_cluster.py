"""Connecting to Ray for ``alloop query --engine ray``: no JAX here, so the command line can start Ray first.

Ray starts its processes (a local cluster's GCS, raylet and workers) as new programs, fork-and-exec
from this one; the command line connects before JAX is loaded, so nothing is forked from a process
running JAX's threads. Workers import JAX themselves, each in its own fresh process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

from alloop.errors import UserError

INSTALL = "pip install 'alloop[ray]'"


def require_ray():
    """The ``ray`` module (Ray core: the engine does not use Ray Data); UserError saying how to install it when it is missing."""
    try:
        import ray
    except ImportError:
        raise UserError(f"--engine ray needs Ray, which is not installed: {INSTALL} (or use --engine local)") from None
    return ray


@contextlib.contextmanager
def cluster(address: str | None = None):
    """Ray connected: the running one of this process, else ``address`` (auto, ray://HOST:10001), else a new
    local cluster on this machine's CPUs; a connection made here is closed at the end."""
    ray = require_ray()
    if ray.is_initialized():
        with contextlib.redirect_stdout(sys.stderr):  # Ray prints its notices (a worker died, ...) on stdout: results go there
            yield ray
        return
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # Ray's C++ core logs notices on stderr; errors reach us as exceptions
    try:
        with warnings.catch_warnings():
            # When JAX is loaded already (the Python API), subprocess warns at its fork-and-exec: the child execs at
            # once and runs no JAX code, so the warning does not apply.
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"at {address!r}" if address else "on this machine"
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = (lines[0] if lines else type(e).__name__)[:300]
        raise UserError(f"cannot start or reach a Ray cluster {where} ({why}): check --address, or start one with `ray start --head`") from None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield ray
    finally:
        ray.shutdown()
