"""Connecting to Ray for ``alloop query --engine ray``: no JAX here, so the command line can start Ray first.

Ray starts its processes (a local cluster's GCS, raylet and workers) as new programs, fork-and-exec
from this one; the command line connects before JAX is loaded, so nothing is forked from a process
running JAX's threads. Workers import JAX themselves, each in its own fresh process.

What Ray prints is kept off the user's screen where alloop reports it itself: its C++ core logs at
level fatal only (errors reach alloop as exceptions), and the notices its driver prints on stdout
(a worker died, a task will be retried) are held back while connected: a query whose actor Ray
restarted says so in one note of its own, a failed one ends in its one error line. Other notices
(a cluster short of resources, ...) still go to stderr, never to stdout, where results go.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import warnings

from alloop.errors import UserError

INSTALL = "pip install 'alloop[ray]'"
NAMESPACE = (
    "alloop"  # actors kept by `query --keep-workers` are named PREFIX + KEY-I in this Ray namespace
)
PREFIX = "alloop-scorer-"
# Ray's notices of a dead worker and of retried tasks: alloop reports those itself (or fails with its own line)
RETRY_NOTICE = re.compile(
    r"worker died or was killed|will be retried|retries remaining|actor is temporarily unavailable"
)
_LEVEL_LINE = re.compile(r"logging\.cc:\d+\]?:? Set ray log level from environment variable")


def require_ray():
    """The ``ray`` module (Ray core: the engine does not use Ray Data); UserError saying how to install it when it is missing."""
    try:
        import ray
    except ImportError:
        raise UserError(
            f"--engine ray needs Ray, which is not installed: {INSTALL} (or use --engine local)"
        ) from None
    return ray


class _Notices(io.TextIOBase):
    """A stand-in for stdout while connected: Ray's retry notices are dropped (alloop reports those itself), any other
    line goes to ``sink`` (stderr)."""

    def __init__(self, sink) -> None:
        self.sink, self.partial = sink, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        for line in lines:
            if not RETRY_NOTICE.search(line):
                self.sink.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        if self.partial and not RETRY_NOTICE.search(self.partial):
            self.sink.write(self.partial)
        self.partial = ""
        self.sink.flush()


@contextlib.contextmanager
def _quiet_level_line():
    """Ray's C++ core announces the log level it read from $RAY_BACKEND_LOG_LEVEL on file descriptor 2, at connecting,
    whatever the level: that line is dropped, anything else written there meanwhile is passed on."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            rest = [
                ln
                for ln in tmp.read().decode(errors="replace").splitlines(keepends=True)
                if not _LEVEL_LINE.search(ln)
            ]
            if rest:
                sys.stderr.write("".join(rest))


@contextlib.contextmanager
def cluster(address: str | None = None):
    """Ray connected: the running one of this process, else ``address`` (auto, ray://HOST:10001), else a new
    local cluster on this machine's CPUs; a connection made here is closed at the end."""
    ray = require_ray()
    if ray.is_initialized():
        with contextlib.redirect_stdout(
            _Notices(sys.stderr)
        ):  # Ray prints its notices on stdout: results go there
            yield ray
        return
    os.environ.setdefault(
        "RAY_BACKEND_LOG_LEVEL", "fatal"
    )  # Ray's C++ core logs notices on stderr; errors reach us as exceptions
    on_term = signal.getsignal(signal.SIGTERM)
    try:
        with warnings.catch_warnings(), _quiet_level_line():
            # When JAX is loaded already (the Python API), subprocess warns at its fork-and-exec: the child execs at
            # once and runs no JAX code, so the warning does not apply.
            warnings.filterwarnings(
                "ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning
            )
            ray.init(
                address=address,
                logging_level=logging.ERROR,
                log_to_driver=False,
                include_dashboard=False,
            )
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"at {address!r}" if address else "on this machine"
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = (lines[0] if lines else type(e).__name__)[:300]
        raise UserError(
            f"cannot start or reach a Ray cluster {where} ({why}): check --address, or start one with `ray start --head`"
        ) from None
    _keep_sigterm(on_term)
    with contextlib.redirect_stdout(
        _Notices(sys.stderr)
    ):  # until Ray's notice thread stops at shutdown
        try:
            yield ray
        finally:
            ray.shutdown()


def _keep_sigterm(handler) -> None:
    """Put back this process's SIGTERM handler, which connecting replaced with Ray's C++ core's.

    Ray's handler prints a stack and kills the process at once, skipping the ``finally`` that shuts
    a local cluster down (its processes lived on). The command line's handler (``cli.main``) unwinds
    like Ctrl-C instead; where the handler is Python's default, Ray's stays.
    """
    if callable(handler) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def release(ray) -> int:
    """End every scoring actor kept on the cluster by ``alloop query --keep-workers`` (``alloop release-workers``); how many."""
    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a.get("namespace") == NAMESPACE and a["name"].startswith(PREFIX)
    ]
    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        except ValueError:  # gone meanwhile
            pass
    return len(names)
